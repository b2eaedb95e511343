//! An HTTP/3 client for tests that is not ours: aioquic (Python), driven by
//! `h3client.py` with a JSON job.

use std::{path::Path, process::Command};

use serde_json::{Value, json};

/// A UDP port free right now (the node binds it next).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the aioquic client with `requests`; its JSON answers.
pub fn h3(port: u16, ca: &Path, requests: Value) -> Vec<Value> {
    h3_job(port, ca, requests, json!({}))
}

/// `h3` with more job options (`report_retry`, say) merged in.
pub fn h3_job(port: u16, ca: &Path, requests: Value, options: Value) -> Vec<Value> {
    let mut job = json!({
        "host": "127.0.0.1", "port": port, "sni": "app.test",
        "ca": ca.display().to_string(), "requests": requests,
    });
    for (k, v) in options.as_object().expect("options") {
        job[k] = v.clone();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/support/h3client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(job.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "aioquic client (pip install aioquic; `cargo xtask test` installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("client output")
}

//! Intent prediction against a real node and origin: attack-like requests are
//! classified as such, reach the origin labelled, and raise the client's threat score
//! until it is challenged; benign browsing does not; a client cannot label itself; a
//! request without a timely prediction goes on without one (and a counter says so); a
//! model that is not one is a configuration error.

use edge_tests::{
    origin::Origin,
    proxy::{Proxy, Reply, curl, start_config},
};

fn node(origin: &Origin, intent: &str) -> Proxy {
    start_config(&format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n\
         [threat]\nchallenge_threshold = 40\nhalf_life = \"1h\"\n\n\
         [intent]\nenabled = true\n{intent}\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n{}",
        origin.addr,
        edge_tests::proxy::admin_section(),
    ))
}

/// What the origin was told (`x-intent: …` in the echoed request).
fn told(r: &Reply, header: &str) -> Option<String> {
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{header}: ")))
        .map(String::from)
}

const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/124.0.0.0 Safari/537.36";

fn browse(p: &Proxy, src: &str, path: &str) -> Reply {
    curl(
        p,
        "app.test",
        path,
        &[
            "--interface",
            src,
            "-A",
            CHROME,
            "-H",
            "Accept: text/html,application/xhtml+xml",
            "-H",
            "Accept-Language: en-US,en;q=0.9",
            "-H",
            "Cookie: session=abc123",
            "-H",
            "Referer: https://app.test/",
            "-H",
            "Sec-Fetch-Mode: navigate",
            "-H",
            "Sec-Fetch-Site: same-origin",
            "-H",
            "Sec-Ch-Ua: \"Chromium\";v=\"124\"",
        ],
    )
}

#[test]
fn attacks_are_labelled_and_raise_the_score_and_browsing_does_not() {
    let origin = Origin::start("o");
    let p = node(&origin, "timeout = \"500ms\"");
    // A browsing client: never an attack, never challenged.
    for path in [
        "/",
        "/products/shoes",
        "/products/shoes/red-42",
        "/about",
        "/",
    ]
    .repeat(4)
    {
        let r = browse(&p, "127.0.0.2", path);
        assert_eq!(r.status, 200, "{path}: {}", r.headers);
        let class = told(&r, "x-intent").expect("a prediction");
        assert!(
            ["browse", "purchase"].contains(&class.as_str()),
            "{path}: {class}"
        );
    }
    // A client claiming its own label is overruled.
    let r = curl(
        &p,
        "app.test",
        "/search?q=1%27%20OR%20%271%27%3D%271",
        &[
            "--interface",
            "127.0.0.3",
            "-A",
            "sqlmap/1.7.2",
            "-H",
            "X-Intent: browse",
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        told(&r, "x-intent").as_deref(),
        Some("attack"),
        "{}",
        r.body
    );
    let confidence: f32 = told(&r, "x-intent-confidence").unwrap().parse().unwrap();
    assert!(confidence >= 0.8, "{confidence}");
    // Two more attacks (15 each): over the challenge threshold of 40.
    for path in [
        "/../../etc/passwd",
        "/index.php?id=%3Cscript%3Ealert(1)%3C/script%3E",
    ] {
        let r = curl(
            &p,
            "app.test",
            path,
            &["--interface", "127.0.0.3", "-A", "sqlmap/1.7.2"],
        );
        assert_eq!(
            told(&r, "x-intent").as_deref(),
            Some("attack"),
            "{path}: {}",
            r.body
        );
    }
    let r = browse(&p, "127.0.0.3", "/");
    assert_eq!(
        r.status, 403,
        "the attacker is challenged now: {}",
        r.headers
    );
    assert!(r.body.contains("id=\"edge-challenge\""));
    // The browsing client is not.
    assert_eq!(browse(&p, "127.0.0.2", "/").status, 200);
    assert!(
        p.metric("edge_intent_predictions_total{outcome=\"attack\"}")
            .unwrap()
            >= 3.0
    );
    assert!(
        p.metric("edge_intent_predictions_total{outcome=\"browse\"}")
            .unwrap()
            >= 1.0
    );
}

#[test]
fn requests_go_on_without_a_timely_prediction() {
    // A valid model that needs far longer than the 1 ms the node waits.
    let dir = std::env::temp_dir().join(edge_tests::unique("edge-intent-"));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("slow.onnx");
    let made = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/support/slow_model.py"
        ))
        .arg(&model)
        .status()
        .expect("python3");
    assert!(
        made.success(),
        "writing the slow model (needs the onnx Python package)"
    );
    let origin = Origin::start("o");
    let p = node(
        &origin,
        &format!("timeout = \"1ms\"\nmodel = \"{}\"", model.display()),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let r = curl(&p, "app.test", "/x", &["-H", "X-Intent: browse"]);
    assert_eq!(r.status, 200);
    assert_eq!(
        told(&r, "x-intent"),
        None,
        "no prediction, and no client label"
    );
    assert!(
        p.metric("edge_intent_predictions_total{outcome=\"skipped_timeout\"}")
            .unwrap()
            >= 1.0,
        "{}",
        p.metrics()
    );
}

#[test]
fn a_model_that_is_not_one_is_a_configuration_error() {
    let dir = std::env::temp_dir().join(edge_tests::unique("edge-intent-"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.onnx"), b"not a model").unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[intent]\nenabled = true\nmodel = \"{}\"\n",
            dir.join("bad.onnx").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(edge_tests::edge_node_bin())
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("intent") && err.contains("bad.onnx"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn features_are_taken_from_the_request_as_the_client_sent_it() {
    // The model learnt from requests with every header the client sent: the header
    // count, Authorization and the rest are read before the node removes or consumes
    // any. Two first requests from two sources, the second with four more headers that
    // the node removes before forwarding (hop-by-hop, and a forwarding header only the
    // node may set): the model sees a different request.
    let origin = Origin::start("a");
    let p = node(&origin, "");
    let plain = curl(
        &p,
        "app.test",
        "/products?page=2",
        &["--interface", "127.0.0.21", "-A", CHROME],
    );
    let more = curl(
        &p,
        "app.test",
        "/products?page=2",
        &[
            "--interface",
            "127.0.0.22",
            "-A",
            CHROME,
            "-H",
            "Connection: keep-alive, x-hop",
            "-H",
            "X-Hop: 1",
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            "-H",
            "Forwarded: for=203.0.113.9",
        ],
    );
    let (a, b) = (
        told(&plain, "x-intent-confidence").expect("a prediction"),
        told(&more, "x-intent-confidence").expect("a prediction"),
    );
    assert_ne!(a, b, "the model saw both requests alike");
    // And the origin still gets none of them.
    assert!(
        !more.body.contains("x-hop") && !more.body.contains("203.0.113.9"),
        "{}",
        more.body
    );
}

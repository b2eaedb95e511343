//! The security benchmark, three parts, one RESULTS.md section:
//! 1. the per-request cost of the auth, rate-limit, threat and challenge code and of the
//!    shield's guards (HTTP/2 frame-flood guard per frame, request target, cache key)
//!    (criterion medians, read from target/criterion after `cargo bench --bench phases`);
//! 2. end-to-end requests per second through the node with auth off, HS256 and RS256
//!    (wrk, interleaved rounds, medians), against the built-in demo origin so the
//!    phases are what differs;
//! 3. the time from a client crossing the drop threshold to its packets being dropped:
//!    the node runs in a network namespace with XDP on a veth; a client fails auth until
//!    it crosses; the source is polled in the pinned trie.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args as ClapArgs;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

use crate::{
    proxy::{Proc, Sample, Workdir, free_port, parse_wrk, raise_nofile, run_client},
    report, sys,
};

#[derive(ClapArgs)]
pub struct Args {
    /// Interleaved rounds of the end-to-end runs (and trials of the escalation).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Write the section into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

const SECRET: &str = "benchmark-secret-of-at-least-32-bytes";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

/// The criterion benchmarks, in report order, with what each measures.
const PHASES: [(&str, &str); 17] = [
    (
        "auth_phase_hs256_repeat_token",
        "auth phase, HS256, a token seen before (cache)",
    ),
    (
        "auth_phase_rs256_repeat_token",
        "auth phase, RS256, a token seen before (cache)",
    ),
    (
        "auth_phase_es256_repeat_token",
        "auth phase, ES256, a token seen before (cache)",
    ),
    (
        "jwt_first_sight_hs256",
        "HS256 signature + claims, first sight of a token",
    ),
    (
        "jwt_first_sight_rs256",
        "RS256 (2048-bit) signature + claims, first sight",
    ),
    (
        "jwt_first_sight_es256",
        "ES256 signature + claims, first sight",
    ),
    (
        "rate_limit_phase_hot_key",
        "rate-limit phase, a key seen before",
    ),
    (
        "rate_limit_phase_new_key",
        "rate-limit phase, a new key every request",
    ),
    ("threat_signal", "threat signal (decay + add)"),
    ("threat_standing", "threat standing (every request)"),
    ("challenge_clearance_check", "clearance cookie check (HMAC)"),
    (
        "h2_guard_read_per_frame",
        "HTTP/2 frame-flood guard, per frame read (a page load: HEADERS, DATA, WINDOW_UPDATE; 16 KiB reads)",
    ),
    (
        "h2_unguarded_read_per_frame",
        "the same reads without the guard",
    ),
    (
        "h2_guard_write_per_frame",
        "HTTP/2 frame-flood guard, per 16 KiB DATA frame written",
    ),
    (
        "canonical_path_clean",
        "request target, already canonical (`/products/shoes/red-42`)",
    ),
    (
        "canonical_path_messy",
        "request target made canonical (`/a/./b/../c//%7Euser/x`)",
    ),
    (
        "cache_key",
        "cache key (scheme, host, path, two query parameters; SHA-256)",
    ),
];

fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

/// The median of a criterion benchmark, ns.
pub(crate) fn criterion_median(name: &str) -> Result<f64> {
    let path = criterion_dir().join(name).join("new/estimates.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} (run `cargo bench -p edge-bench --bench phases`)",
            path.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["median"]["point_estimate"]
        .as_f64()
        .context("no median in estimates.json")
}

pub(crate) fn fmt_ns(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else if ns < 10.0 {
        format!("{ns:.1} ns")
    } else {
        format!("{ns:.0} ns")
    }
}

fn token(alg: Algorithm) -> Result<String> {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        _ => EncodingKey::from_rsa_pem(&std::fs::read(format!("{FIXTURES}/rsa.key"))?)?,
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": "bench", "roles": ["reader"], "exp": exp});
    Ok(encode(&Header::new(alg), &claims, &key)?)
}

/// GET / with `host` and an optional bearer token: the status.
pub(crate) fn probe(addr: SocketAddr, host: &str, token: Option<&str>) -> Result<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    out.get(9..12)
        .and_then(|c| c.parse().ok())
        .context("no status")
}

/// The node with three routes to the demo origin: no auth, HS256, RS256.
fn start_node(dir: &Path) -> Result<(Proc, SocketAddr)> {
    let listen = free_port()?;
    let text = format!(
        "[node]\nid = \"bench\"\n\n[log]\nlevel = \"warn\"\n\n[xdp]\nmode = \"off\"\n\n\
         [http]\nlisten = [\"{listen}\"]\n\n[threat]\nenabled = false\n\n\
         [[jwt_provider]]\nname = \"hs\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n\n\
         [[jwt_provider]]\nname = \"rs\"\nalgorithms = [\"RS256\"]\npublic_key_file = \"{FIXTURES}/rsa.pub\"\n\n\
         [[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\n\
         [[route]]\nhosts = [\"open.bench\"]\nupstream = \"demo\"\n\n\
         [[route]]\nhosts = [\"hs.bench\"]\nupstream = \"demo\"\n[route.auth]\nprovider = \"hs\"\n\n\
         [[route]]\nhosts = [\"rs.bench\"]\nupstream = \"demo\"\n[route.auth]\nprovider = \"rs\"\n"
    );
    let conf = dir.join("edge-node.toml");
    std::fs::write(&conf, text)?;
    let bin = edge_tests::edge_node_bin();
    let mut cmd = Command::new(&bin);
    cmd.env_remove("RUST_LOG").arg("-c").arg(&conf).arg("run");
    let mut p = Proc::spawn("edge-node", cmd, dir.join("edge-node.log"))?;
    let start = Instant::now();
    while probe(listen, "open.bench", None).ok() != Some(200) {
        p.check_alive()?;
        if start.elapsed() > Duration::from_secs(20) {
            bail!("edge-node does not serve:\n{}", p.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((p, listen))
}

struct E2eCase {
    name: &'static str,
    host: &'static str,
    token: Option<String>,
}

fn end_to_end(args: &Args) -> Result<Vec<(String, Vec<Sample>)>> {
    raise_nofile();
    let dir = Workdir(std::env::temp_dir().join(format!("edge-bench-sec-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let (_node, addr) = start_node(&dir.0)?;
    let cases = [
        E2eCase {
            name: "auth off",
            host: "open.bench",
            token: None,
        },
        E2eCase {
            name: "HS256 token",
            host: "hs.bench",
            token: Some(token(Algorithm::HS256)?),
        },
        E2eCase {
            name: "RS256 token",
            host: "rs.bench",
            token: Some(token(Algorithm::RS256)?),
        },
    ];
    for c in &cases {
        let status = probe(addr, c.host, c.token.as_deref())?;
        if status != 200 {
            bail!("{}: status {status}", c.name);
        }
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
    for round in 0..args.rounds {
        // Rotate the order each round: no case always runs first.
        for k in 0..cases.len() {
            let i = (k + round) % cases.len();
            let c = &cases[i];
            let mut wrk = vec![
                "-t2".to_string(),
                "-c32".into(),
                format!("-d{}s", args.seconds),
                "--latency".into(),
                "-H".into(),
                format!("Host: {}", c.host),
            ];
            if let Some(t) = &c.token {
                wrk.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
            }
            wrk.push(format!("http://{addr}/"));
            let out = run_client(&dir.0, "wrk", &wrk, Duration::from_secs(args.seconds + 30))?;
            let s = parse_wrk(&out)?;
            eprintln!(
                "round {round} {}: {:.0} req/s, p99 {:.2} ms",
                c.name, s.rps, s.p99_ms
            );
            samples[i].push(s);
        }
    }
    Ok(cases
        .iter()
        .map(|c| c.name.to_string())
        .zip(samples)
        .collect())
}

/// Trials of: a fresh client address fails auth until it crosses the drop threshold;
/// the time from the crossing response to its source appearing in the pinned trie (from
/// then on the XDP program drops its packets), and a check that its next SYN is dropped.
fn escalation(trials: usize) -> Result<Vec<f64>> {
    use edge_tests::{
        BpfFs,
        netns::{Netns, veth},
        node::Node,
    };
    let client = Netns::new("bsc");
    let server = Netns::new("bss");
    let (client_if, server_if) = veth(&client, "10.232.0.2/24", &server, "10.232.0.1/24");
    let sources: Vec<String> = (0..trials)
        .map(|i| format!("10.232.0.{}", 10 + i))
        .collect();
    for s in &sources {
        client.ip(&["addr", "add", &format!("{s}/24"), "dev", &client_if]);
    }
    let fs = BpfFs::new();
    let config = format!(
        "[xdp]\nmode = \"auto\"\ninterfaces = [\"{server_if}\"]\npin_root = \"{}\"\ndrop_threshold = 50\n\n\
         [log]\nlevel = \"warn\"\n\n[http]\nlisten = [\"10.232.0.1:8080\"]\n\n\
         [threat]\nchallenge_threshold = 0\nblock_ttl = \"10m\"\n[threat.weights]\nauth_failure = 11.0\n\n\
         [[jwt_provider]]\nname = \"idp\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n\n\
         [[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\n\
         [[route]]\nhosts = [\"*\"]\nupstream = \"demo\"\n[route.auth]\nprovider = \"idp\"\n",
        fs.path().display()
    );
    let node = Node::start(&config, Some(&server));
    if !node.wait_running(Duration::from_secs(20)) {
        bail!("node did not start:\n{}", node.log());
    }
    let maps = edge_node::xdp::PinnedMaps::open(&fs.pin_dir())?;
    let to: SocketAddr = "10.232.0.1:8080".parse()?;
    let mut latencies = Vec::new();
    for src in &sources {
        let ip: std::net::IpAddr = src.parse()?;
        // Four failures stay under 50 (11 each, less a little decay); the fifth crosses.
        let mut crossed_at = None;
        for i in 0..5 {
            let status = client.enter(|| -> Result<u16> {
                let mut s = edge_tests::connect_from(src, to, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET / HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer junk\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0))
            })?;
            if status != 401 {
                bail!("{src} request {i}: status {status}");
            }
            if i == 4 {
                crossed_at = Some(Instant::now());
            }
        }
        let t0 = crossed_at.context("no crossing")?;
        let deadline = t0 + Duration::from_secs(5);
        loop {
            if maps.rule(ip).is_some_and(|r| r.score >= 50) {
                latencies.push(t0.elapsed().as_secs_f64() * 1e6);
                break;
            }
            if Instant::now() > deadline {
                bail!("{src} never reached the trie:\n{}", node.log());
            }
            std::hint::spin_loop();
        }
        let before = maps.counters()?[edge_common::Reason::DropThreat as usize].packets;
        let dropped =
            client.enter(|| edge_tests::connect_from(src, to, Duration::from_millis(500)).is_err());
        let after = maps.counters()?[edge_common::Reason::DropThreat as usize].packets;
        if !dropped || after <= before {
            bail!("{src}: escalated but its SYN was not dropped by XDP");
        }
    }
    drop(node);
    Ok(latencies)
}

pub fn run(args: Args) -> Result<()> {
    let mut phases = Vec::new();
    for (name, what) in PHASES {
        phases.push((name, what, criterion_median(name)?));
    }
    let e2e = end_to_end(&args)?;
    let mut esc = escalation(args.rounds.max(5) * 2)?;
    let mut body = String::new();
    body.push_str("## Security phases: cost per request, auth on and off, escalation latency\n\n");
    body.push_str(&format!(
        "Machine: {} CPUs, kernel {}. Command: `cargo xtask bench security` (criterion \
         `cargo bench -p edge-bench --bench phases`, then `edge-bench security --rounds {} --seconds {}`). \
         wrk {}.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sys::kernel_release(),
        args.rounds,
        args.seconds,
        sys::version("wrk", "-v").lines().next().unwrap_or("?"),
    ));
    body.push_str("### Per-request cost of the phases (criterion medians, one core)\n\n| what | median |\n| --- | ---: |\n");
    for (name, what, ns) in &phases {
        body.push_str(&format!("| {what} (`{name}`) | {} |\n", fmt_ns(*ns)));
    }
    body.push_str(
        "\nA client repeats its token with every request: the node verifies a token's \
         signature once and keeps the result (at most 5 min, never past `exp`), so the \
         repeat cost is what steady traffic pays; first sight pays the signature check. \
         The HTTP/2 guard's rows are per frame, not per request (a request is a few frames \
         each way): its own cost is the guarded read less the same read without it.\n\n",
    );
    body.push_str(&format!(
        "### End to end: one node, the built-in demo origin, wrk -t2 -c32, {} rounds of {} s, medians\n\n\
         | route | req/s | p50 | p99 | vs auth off |\n| --- | ---: | ---: | ---: | ---: |\n",
        args.rounds, args.seconds
    ));
    let med = |v: &[Sample], f: fn(&Sample) -> f64| -> f64 {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        sys::median(&mut x)
    };
    let base = med(&e2e[0].1, |s| s.rps);
    for (name, samples) in &e2e {
        let rps = med(samples, |s| s.rps);
        body.push_str(&format!(
            "| {name} | {rps:.0} | {:.2} ms | {:.2} ms | {:.2}× |\n",
            med(samples, |s| s.p50_ms),
            med(samples, |s| s.p99_ms),
            rps / base
        ));
    }
    esc.sort_by(f64::total_cmp);
    let p = |q: f64| esc[((esc.len() - 1) as f64 * q).round() as usize];
    body.push_str(&format!(
        "\n### From crossing the drop threshold to packets dropped at the NIC\n\n\
         {} trials, each a fresh client address in a network namespace failing auth until \
         its fifth failure crosses `xdp.drop_threshold`; time from that response to the \
         source's score in the pinned trie (the XDP program drops from then on; each \
         trial then checks that the client's next SYN is dropped and counted as \
         `drop_threat`): median **{:.0} µs**, min {:.0} µs, max {:.0} µs.\n",
        esc.len(),
        p(0.5),
        esc[0],
        esc[esc.len() - 1],
    ));
    println!("{body}");
    if args.write {
        report::write_section("security", &body)?;
    }
    Ok(())
}

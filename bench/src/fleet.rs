//! The fleet (issue 21), two parts, one RESULTS.md section:
//!
//! 1. Propagation: three nodes in a network namespace, each with its XDP program on its
//!    own veth, sharing one redis-server (the fixture of the fleet tests,
//!    `edge_tests::fleet`). Per trial a fresh client address fails auth once at node a
//!    (`auth_failure` weighs more than `xdp.drop_threshold`, so that first failure
//!    escalates); the time from reading that 401 to the source being in node b's and node
//!    c's pinned trie (their XDP programs drop it from then on), both polled from this
//!    process, one clock for all. Each trial then checks that b drops the client's next
//!    SYN and counts it as `drop_threat`.
//! 2. Rate limits: one node (release, XDP off, threat off) on the built-in demo origin
//!    with four routes, one rate limit each: `scope = "local"` and `scope = "fleet"`, on a
//!    hot key (the route; a limit never reached, so a lease covers 50 ms of it and Redis
//!    is asked rarely) and on spread keys (`header:x-user`, 10 000 users picked at random
//!    by wrk, 50/s each: a user's lease rarely outlives its last request, so most
//!    requests ask Redis). wrk -t2 -c32, interleaved rounds, medians. Every run must be
//!    all 2xx (the limit admitted everything: the work measured is counting); Redis'
//!    EVALSHA count must move by the fleet runs and stay put during the local ones
//!    (heartbeats are hourly here), and the node must never have fallen back to its
//!    local share.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args as ClapArgs;

use crate::{
    proxy::{CpuSnapshot, Proc, Sample, Workdir, free_port, parse_wrk, raise_nofile, run_client},
    report, sys,
};

#[derive(ClapArgs)]
pub struct Args {
    /// Propagation trials (fresh client addresses; at most 150).
    #[arg(long, default_value_t = 100)]
    trials: usize,
    /// Interleaved rounds of the rate-limit runs.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Write the section into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

/// The issue's goal: request throughput with fleet rate limits, against local ones.
const TARGET_RATIO: f64 = 0.9;
const USERS: usize = 10_000;

/// Per trial: µs from the escalating 401 at a to the source in b's trie, and in c's.
fn propagation(trials: usize) -> Result<Vec<[f64; 2]>> {
    use edge_tests::{
        fleet::{Backend, Fleet},
        redis::Redis,
    };
    ensure!((1..=150).contains(&trials), "--trials is 1 to 150");
    let f = Fleet::with(
        "fleet benchmark",
        |t| Redis::start(t).map(Backend::Server),
        "[threat.weights]\nauth_failure = 60.0\n",
    )
    .context("redis-server is missing")?;
    let maps: Vec<_> = (0..3).map(|n| f.maps(n)).collect();
    let mut out = Vec::new();
    for i in 0..trials {
        let src = format!("10.242.0.{}", 100 + i);
        f.client
            .ip(&["addr", "add", &format!("{src}/32"), "dev", "lo"]);
        let ip: std::net::IpAddr = src.parse()?;
        let status = f.call(0, &src)?;
        let t0 = Instant::now();
        ensure!(status == 401, "{src} at node a: status {status}");
        let mut seen = [None, None];
        while seen.iter().any(Option::is_none) {
            for (k, n) in [1, 2].into_iter().enumerate() {
                if seen[k].is_none() && maps[n].rule(ip).is_some() {
                    seen[k] = Some(t0.elapsed().as_secs_f64() * 1e6);
                }
            }
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("{src} never reached every node's trie:\n{}", f.logs());
            }
            // Polling leaves the cores to the nodes and Redis (2 cores here).
            std::thread::sleep(Duration::from_micros(50));
        }
        let before = f.threat_drops(1);
        let dropped = f
            .dropped_within(1, &src, Duration::from_millis(1))
            .is_some();
        ensure!(
            dropped && f.threat_drops(1) > before,
            "{src}: in node b's trie but its SYN was not dropped by XDP"
        );
        out.push([seen[0].unwrap_or_default(), seen[1].unwrap_or_default()]);
    }
    Ok(out)
}

/// A rate-limited route of the rate-limit part.
struct Case {
    name: &'static str,
    host: &'static str,
    /// Keyed by user (`header:x-user`, wrk picking a user per request), not the route.
    spread: bool,
    fleet: bool,
}

const CASES: [Case; 4] = [
    Case {
        name: "hot key, local",
        host: "local-hot.bench",
        spread: false,
        fleet: false,
    },
    Case {
        name: "hot key, fleet",
        host: "fleet-hot.bench",
        spread: false,
        fleet: true,
    },
    Case {
        name: "10 000 keys, local",
        host: "local-keys.bench",
        spread: true,
        fleet: false,
    },
    Case {
        name: "10 000 keys, fleet",
        host: "fleet-keys.bench",
        spread: true,
        fleet: true,
    },
];

/// A random user per request, for `HOST`.
const USERS_LUA: &str = r#"local n = 0
function setup(thread)
  n = n + 1
  thread:set("id", n)
end
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0) * 7919)
end
function request()
  return wrk.format("GET", "/", { ["Host"] = "HOST", ["x-user"] = tostring(math.random(1, USERS)) })
end
"#;

fn start_node(dir: &Path, redis: &str) -> Result<(Proc, SocketAddr)> {
    let listen = free_port()?;
    let mut text = format!(
        "[node]\nid = \"bench\"\n\n[log]\nlevel = \"warn\"\n\n[xdp]\nmode = \"off\"\n\n\
         [xdp.rate]\nsyn_per_sec = 0\n\n[http]\nlisten = [\"{listen}\"]\n\n\
         [threat]\nenabled = false\n\n[fleet]\nredis = \"{redis}\"\nheartbeat = \"1h\"\n\n\
         [[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\n"
    );
    for c in &CASES {
        let (key, rate) = if c.spread {
            (
                "header:x-user",
                "per_second = 50.0\nburst = 50\nmax_keys = 100000",
            )
        } else {
            ("route", "per_second = 1000000.0\nburst = 100000")
        };
        text.push_str(&format!(
            "[[route]]\nhosts = [\"{}\"]\nupstream = \"demo\"\n\
             [[route.rate_limit]]\nkey = \"{key}\"\n{rate}\nscope = \"{}\"\n\n",
            c.host,
            if c.fleet { "fleet" } else { "local" }
        ));
    }
    let conf = dir.join("edge-node.toml");
    std::fs::write(&conf, text)?;
    let bin = edge_tests::edge_node_bin();
    let mut cmd = Command::new(&bin);
    cmd.env_remove("RUST_LOG").arg("-c").arg(&conf).arg("run");
    let mut p = Proc::spawn("edge-node", cmd, dir.join("edge-node.log"))?;
    let start = Instant::now();
    while crate::security::probe(listen, CASES[0].host, None).ok() != Some(200) {
        p.check_alive()?;
        if start.elapsed() > Duration::from_secs(20) {
            bail!("edge-node does not serve:\n{}", p.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((p, listen))
}

/// Redis' count of EVALSHA calls (each a fleet rate-limit decision).
fn evalsha_calls(redis: &edge_tests::redis::Redis) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Per case: the rounds' samples and the EVALSHA calls per request of each run.
fn rate_limits(args: &Args) -> Result<Vec<(Vec<Sample>, Vec<f64>)>> {
    raise_nofile();
    let dir =
        Workdir(std::env::temp_dir().join(format!("edge-bench-fleet-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let redis = edge_tests::redis::Redis::start("fleet benchmark").context("redis-server")?;
    let (node, addr) = start_node(&dir.0, &redis.url())?;
    let pid = node.child.id() as i32;
    for c in CASES.iter().filter(|c| c.spread) {
        std::fs::write(
            dir.0.join(format!("{}.lua", c.host)),
            USERS_LUA
                .replace("HOST", c.host)
                .replace("USERS", &USERS.to_string()),
        )?;
    }
    let mut out: Vec<(Vec<Sample>, Vec<f64>)> = CASES.iter().map(|_| Default::default()).collect();
    for round in 0..args.rounds {
        for k in 0..CASES.len() {
            let i = (k + round) % CASES.len();
            let c = &CASES[i];
            let mut wrk = vec![
                "-t2".to_string(),
                "-c32".into(),
                format!("-d{}s", args.seconds),
                "--latency".into(),
            ];
            if c.spread {
                wrk.extend([
                    "-s".into(),
                    dir.0.join(format!("{}.lua", c.host)).display().to_string(),
                ]);
            } else {
                wrk.extend(["-H".into(), format!("Host: {}", c.host)]);
            }
            wrk.push(format!("http://{addr}/"));
            let calls = evalsha_calls(&redis);
            let cpu = CpuSnapshot::take(pid);
            let text = run_client(&dir.0, "wrk", &wrk, Duration::from_secs(args.seconds + 30))?;
            let mut s = parse_wrk(&text)?;
            cpu.charge(pid, &mut s);
            let calls = evalsha_calls(&redis) - calls;
            let requests = s.rps * args.seconds as f64;
            ensure!(
                s.errors == 0,
                "{}: {} requests refused or failed: the limit must admit everything",
                c.name,
                s.errors
            );
            // Heartbeats are hourly here: EVALSHA calls are rate-limit decisions.
            ensure!(
                (calls > 0) == c.fleet,
                "{}: {calls} EVALSHA calls in Redis during the run",
                c.name
            );
            ensure!(
                !node.log_tail().contains("applies its share"),
                "{}: the node fell back to its local share (Redis unreachable)",
                c.name
            );
            eprintln!(
                "round {round} {}: {:.0} req/s, p99 {:.2} ms, {:.1} µs CPU/req, {:.3} Redis calls/req",
                c.name,
                s.rps,
                s.p99_ms,
                s.cpu_us_per_req,
                calls as f64 / requests
            );
            out[i].0.push(s);
            out[i].1.push(calls as f64 / requests);
        }
    }
    drop(node);
    Ok(out)
}

/// The `q` quantile of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

pub fn run(args: Args) -> Result<()> {
    let trials = propagation(args.trials)?;
    let limits = rate_limits(&args)?;
    let mut body = String::new();
    body.push_str("## Fleet: propagation to every node's NIC, fleet rate limits\n\n");
    body.push_str(&format!(
        "Machine: {} CPUs, kernel {}, {}. Command: `cargo xtask bench fleet` \
         (`edge-bench fleet --trials {} --rounds {} --seconds {}`). wrk {}.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sys::kernel_release(),
        sys::version("redis-server", "--version")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        args.trials,
        args.rounds,
        args.seconds,
        sys::version("wrk", "-v").lines().next().unwrap_or("?"),
    ));
    let mut every: Vec<f64> = trials.iter().map(|t| t[0].max(t[1])).collect();
    let mut b: Vec<f64> = trials.iter().map(|t| t[0]).collect();
    let mut c: Vec<f64> = trials.iter().map(|t| t[1]).collect();
    for v in [&mut every, &mut b, &mut c] {
        v.sort_by(f64::total_cmp);
    }
    body.push_str(&format!(
        "### From an escalation on one node to the drop at the others' NICs\n\n\
         Three nodes, XDP on their own veths, one redis-server, all on this machine. {} \
         trials, each a fresh client address failing auth once at node a (the failure \
         crosses `xdp.drop_threshold`); time from reading that 401 to the source in the \
         pinned trie of b and of c (each trial then checks that b drops the client's SYN, \
         counted as `drop_threat`). Target: 100 ms at p99.\n\n\
         | | p50 | p99 | max |\n| --- | ---: | ---: | ---: |\n",
        trials.len()
    ));
    for (name, v) in [
        ("node b", &b),
        ("node c", &c),
        ("every node (the later of b and c)", &every),
    ] {
        body.push_str(&format!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            quantile(v, 0.5) / 1e3,
            quantile(v, 0.99) / 1e3,
            v[v.len() - 1] / 1e3
        ));
    }
    body.push_str(&format!(
        "\n### Requests per second with fleet rate limits against local ones\n\n\
         One node, the built-in demo origin, wrk -t2 -c32, {} rounds of {} s, medians; \
         a local redis-server. Nothing is refused (every run all 2xx): the cost measured \
         is counting. Hot key: one key (the route), a lease covers 50 ms of its limit. \
         10 000 keys: `header:x-user` from a random user per request, 50/s each, so a \
         user's lease has mostly lapsed by its next request and the node asks Redis. \
         Target: fleet ≥ {TARGET_RATIO}× local.\n\n\
         | route | req/s | p50 | p99 | node CPU per request | Redis calls per request | fleet / local |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        args.rounds, args.seconds
    ));
    let med = |v: &[Sample], f: fn(&Sample) -> f64| -> f64 {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        sys::median(&mut x)
    };
    let mut verdicts = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let (samples, calls) = &limits[i];
        let rps = med(samples, |s| s.rps);
        let ratio = if case.fleet {
            let local = med(&limits[i - 1].0, |s| s.rps);
            let r = rps / local;
            verdicts.push((case.name, r));
            format!("{r:.2}×")
        } else {
            String::new()
        };
        let mut calls = calls.clone();
        body.push_str(&format!(
            "| {} | {rps:.0} | {:.2} ms | {:.2} ms | {:.1} µs | {:.3} | {ratio} |\n",
            case.name,
            med(samples, |s| s.p50_ms),
            med(samples, |s| s.p99_ms),
            med(samples, |s| s.cpu_us_per_req),
            sys::median(&mut calls),
        ));
    }
    body.push('\n');
    for (name, r) in verdicts {
        body.push_str(&format!(
            "- {name}: {r:.2}× local, target {TARGET_RATIO}×: **{}**.\n",
            if r >= TARGET_RATIO { "met" } else { "not met" }
        ));
    }
    println!("{body}");
    if args.write {
        report::write_section("fleet", &body)?;
    }
    Ok(())
}

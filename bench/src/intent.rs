//! The personalization and intent benchmark, one RESULTS.md section:
//! 1. inference latency per request, p50 and p99 of calls timed one by one, and the
//!    criterion medians (`cargo bench -p edge-bench --bench intent`): feature
//!    extraction, one run of the shipped model, and the round trip through the
//!    inference pool that a request makes;
//! 2. end-to-end requests per second through a node with personalization (an A/B
//!    experiment whose variant B rewrites the page's HTML) and intent prediction on,
//!    against the same node with both off, in front of the built-in demo origin (an HTML
//!    page) so these phases are what differs; wrk, interleaved rounds, medians.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args as ClapArgs;

use crate::{
    proxy::{Proc, Sample, Workdir, free_port, parse_wrk, raise_nofile, run_client},
    report,
    security::{fmt_ns, probe},
    sys,
};

#[derive(ClapArgs)]
pub struct Args {
    /// Interleaved rounds of the end-to-end runs.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The output of `cargo bench -p edge-bench --bench intent` (its PERCENTILES lines).
    #[arg(long)]
    criterion_log: Option<std::path::PathBuf>,
    /// Write the section into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

/// The criterion cases, in report order, with what each measures.
const CASES: [(&str, &str); 4] = [
    ("intent_features", "feature extraction (41 features)"),
    ("intent_model_run", "one tract run of the shipped model"),
    (
        "intent_pool_round_trip",
        "queue → inference thread → answer (what a request waits; one request at a time)",
    ),
    (
        "personalize_html_rewrite",
        "variant B's rewrite of a 300-byte page (lol_html set-up included)",
    ),
];

/// `PERCENTILES name p50_ns=… p99_ns=…` lines of the criterion bench's output.
fn percentiles(log: &str, name: &str) -> Option<(f64, f64)> {
    log.lines().find_map(|l| {
        let rest = l.strip_prefix("PERCENTILES ")?;
        let mut parts = rest.split_whitespace();
        if parts.next()? != name {
            return None;
        }
        let mut p50 = None;
        let mut p99 = None;
        for kv in parts {
            if let Some(v) = kv.strip_prefix("p50_ns=") {
                p50 = v.parse().ok();
            }
            if let Some(v) = kv.strip_prefix("p99_ns=") {
                p99 = v.parse().ok();
            }
        }
        Some((p50?, p99?))
    })
}

/// What a node runs besides proxying.
#[derive(Clone, Copy)]
struct Features {
    personalize: bool,
    intent: bool,
}

const CONFIGS: [(&str, Features); 4] = [
    (
        "both off",
        Features {
            personalize: false,
            intent: false,
        },
    ),
    (
        "personalization on",
        Features {
            personalize: true,
            intent: false,
        },
    ),
    (
        "intent on",
        Features {
            personalize: false,
            intent: true,
        },
    ),
    (
        "both on",
        Features {
            personalize: true,
            intent: true,
        },
    ),
];

/// A node in front of the demo origin, with an A/B experiment (variant B rewrites the
/// page) and intent prediction as `f` says.
fn start_node(dir: &Path, f: Features) -> Result<(Proc, SocketAddr)> {
    let listen = free_port()?;
    let extra = if f.personalize {
        "[route.experiment]\nname = \"hero\"\n\
         [[route.experiment.variant]]\nname = \"a\"\nweight = 50\n\
         [[route.experiment.variant]]\nname = \"b\"\nweight = 50\n\
         [[route.experiment.variant.rewrite]]\nselector = \"h1\"\nset_text = \"Variant B\"\n\
         [[route.experiment.variant.rewrite]]\nselector = \"head\"\nappend_html = \"<script>window.v='b'</script>\"\n"
    } else {
        ""
    };
    let intent = if f.intent {
        "[intent]\nenabled = true\n"
    } else {
        ""
    };
    let name = format!("{}-{}", f.personalize, f.intent);
    let text = format!(
        "[node]\nid = \"bench\"\n\n[log]\nlevel = \"warn\"\n\n[xdp]\nmode = \"off\"\n\n\
         [http]\nlisten = [\"{listen}\"]\n\n[threat]\nenabled = false\n\n{intent}\n\
         [[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\n\
         [[route]]\nhosts = [\"shop.bench\"]\nupstream = \"demo\"\n{extra}"
    );
    let conf = dir.join(format!("edge-node-{name}.toml"));
    std::fs::write(&conf, text)?;
    let bin = edge_tests::edge_node_bin();
    let mut cmd = Command::new(&bin);
    cmd.env_remove("RUST_LOG").arg("-c").arg(&conf).arg("run");
    let mut p = Proc::spawn("edge-node", cmd, dir.join(format!("edge-node-{name}.log")))?;
    let start = Instant::now();
    while probe(listen, "shop.bench", None).ok() != Some(200) {
        p.check_alive()?;
        if start.elapsed() > Duration::from_secs(20) {
            bail!("edge-node does not serve:\n{}", p.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((p, listen))
}

/// wrk against one node: no cookie, so every request is assigned (half of them get the
/// rewritten page) and classified.
fn end_to_end(args: &Args) -> Result<Vec<Vec<Sample>>> {
    raise_nofile();
    let dir =
        Workdir(std::env::temp_dir().join(format!("edge-bench-intent-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); CONFIGS.len()];
    for round in 0..args.rounds {
        for k in 0..CONFIGS.len() {
            // Rotate the order each round: no configuration always runs first.
            let i = (k + round) % CONFIGS.len();
            let (name, f) = CONFIGS[i];
            let (node, addr) = start_node(&dir.0, f)?;
            let wrk = vec![
                "-t2".to_string(),
                "-c32".into(),
                format!("-d{}s", args.seconds),
                "--latency".into(),
                "-H".into(),
                "Host: shop.bench".into(),
                "-H".into(),
                "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0 Safari/537.36".into(),
                "-H".into(),
                "Accept: text/html".into(),
                "-H".into(),
                "Accept-Language: en-US".into(),
                format!("http://{addr}/products/shoes?page=2"),
            ];
            let out = run_client(&dir.0, "wrk", &wrk, Duration::from_secs(args.seconds + 30))?;
            drop(node);
            let s = parse_wrk(&out)?;
            eprintln!(
                "round {round} {name}: {:.0} req/s, p99 {:.2} ms",
                s.rps, s.p99_ms
            );
            samples[i].push(s);
        }
    }
    Ok(samples)
}

pub fn run(args: Args) -> Result<()> {
    let log = match &args.criterion_log {
        Some(p) => std::fs::read_to_string(p).with_context(|| p.display().to_string())?,
        None => String::new(),
    };
    let e2e = end_to_end(&args)?;
    let mut body = String::new();
    body.push_str(
        "## Personalization and intent prediction: inference latency, throughput on and off\n\n",
    );
    body.push_str(&format!(
        "Machine: {} CPUs, kernel {}. Command: `cargo xtask bench intent` (criterion \
         `cargo bench -p edge-bench --bench intent`, then `edge-bench intent --rounds {} \
         --seconds {}`). wrk {}.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sys::kernel_release(),
        args.rounds,
        args.seconds,
        sys::version("wrk", "-v").lines().next().unwrap_or("?"),
    ));
    body.push_str(
        "### Inference latency per request (one core; p50/p99 of 20 000 calls timed one by \
         one, and criterion's median)\n\n| what | p50 | p99 | criterion median |\n\
         | --- | ---: | ---: | ---: |\n",
    );
    for (name, what) in CASES {
        let (p50, p99) = percentiles(&log, name).unwrap_or((f64::NAN, f64::NAN));
        let median = crate::security::criterion_median(name)
            .map(fmt_ns)
            .unwrap_or_else(|_| "n/a".into());
        body.push_str(&format!(
            "| {what} (`{name}`) | {} | {} | {median} |\n",
            fmt_ns(p50),
            fmt_ns(p99)
        ));
    }
    body.push_str(&format!(
        "\n### End to end: the built-in demo origin (an HTML page), wrk -t2 -c32 without \
         cookies (every request assigned, half of them rewritten, all classified), {} \
         rounds of {} s, the nodes run one after the other, medians\n\n\
         | node | req/s | p50 | p99 | vs off |\n| --- | ---: | ---: | ---: | ---: |\n",
        args.rounds, args.seconds
    ));
    let med = |v: &[Sample], f: fn(&Sample) -> f64| -> f64 {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        sys::median(&mut x)
    };
    let base = med(&e2e[0], |s| s.rps);
    for ((name, _), samples) in CONFIGS.iter().zip(&e2e) {
        let rps = med(samples, |s| s.rps);
        body.push_str(&format!(
            "| {name} | {rps:.0} | {:.2} ms | {:.2} ms | {:.2}× |\n",
            med(samples, |s| s.p50_ms),
            med(samples, |s| s.p99_ms),
            rps / base
        ));
    }
    println!("{body}");
    if args.write {
        report::write_section("intent", &body)?;
    }
    Ok(())
}

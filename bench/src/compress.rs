//! Compression (issue 20): CPU per compressed response and the compression ratio, for
//! edge-node's `[compression]` against nginx's gzip module and the brotli filter module
//! (Debian's `libnginx-mod-http-brotli-filter`, ngx_brotli), both proxying the same
//! origin, on the same HTML page and JSON document, at the same levels (gzip 5, brotli
//! 4: edge-node's defaults).
//!
//! - Contenders: edge-node compressing every response as it streams (no cache); edge-node
//!   with `[route.cache]`, where a hit is compressed once per coding and the result kept
//!   (what a cached page costs); nginx `proxy_pass` with `gzip on` / `brotli on`, which
//!   compresses every response (nginx keeps no compressed copy of a proxied answer).
//!   zstd is edge-node's alone (Debian's nginx has no zstd module): reported without a
//!   peer.
//! - The origin is nginx serving the two files with `Cache-Control: public` (so the
//!   cached contender may keep them); every contender proxies it over keep-alive.
//! - Load: wrk, 2 threads, 32 connections, `Accept-Encoding` naming one coding; rounds
//!   interleave the contenders (bench/src/proxy.rs); medians over rounds. CPU per
//!   response is the contender's own (all its processes, user + system) over the run.
//! - Each contender is checked to have done the work: before the rounds, every cell's
//!   answer carries the coding asked for and decodes (curl) to the origin's exact bytes;
//!   every run has no errors; in every run edge-node's `edge_compressed_responses_total`
//!   moved by at least the responses wrk measured.

use std::{net::SocketAddr, path::Path, process::Command};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    proxy::{
        Cell, Client, Kind, Medians, Proc, Target, Timing, Workdir, cpu_model, fmt_ms, free_port,
        interleaved, measure_path, medians_of, origin_root, raise_nofile, start_edge_node_with,
        start_nginx_with, start_origin, wait_serving,
    },
    report, sys,
};

const CONNECTIONS: usize = 32;
const GZIP_LEVEL: u32 = 5;
const BROTLI_LEVEL: u32 = 4;
const ADMIN_TOKEN: &str = "bench-compress-token";
/// The brotli filter module as Debian installs it.
const BROTLI_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so";

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each measures every contender in every cell once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of unmeasured load before each run (same client, same contender).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Write the report into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

/// The documents: a page of articles and an API answer, text that compresses as real
/// pages do (words from a vocabulary, repeated markup), from a fixed-seed generator.
const DOCS: [(&str, &str); 2] = [("page.html", "HTML, 96 KiB"), ("data.json", "JSON, 64 KiB")];
const CODINGS: [&str; 3] = ["gzip", "br", "zstd"];

fn documents(www: &Path) -> Result<()> {
    const WORDS: [&str; 48] = [
        "edge", "node", "cache", "request", "latency", "origin", "browser", "region", "packet",
        "shield", "route", "header", "stream", "token", "session", "profile", "page", "image",
        "script", "style", "server", "client", "network", "policy", "market", "travel", "weather",
        "sport", "music", "garden", "kitchen", "river", "mountain", "city", "story", "review",
        "price", "order", "account", "message", "morning", "evening", "summer", "winter", "green",
        "silver", "quick", "quiet",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut word = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (WORDS[(x % WORDS.len() as u64) as usize], x)
    };
    let mut html = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Edge news</title>\
         <link rel=\"stylesheet\" href=\"/static/site.css\"></head><body>\n<main class=\"feed\">\n",
    );
    let mut n = 0u64;
    while html.len() < 96 * 1024 {
        n += 1;
        let (a, r) = word();
        let (b, _) = word();
        html.push_str(&format!(
            "<article class=\"card\" id=\"post-{n}\" data-score=\"{}\">\n  <h2><a href=\"/posts/{n}/{a}-{b}\">The {a} of the {b}</a></h2>\n  <p class=\"meta\">By <a href=\"/authors/{}\">author {}</a> · {} min read</p>\n  <p>",
            r % 1000,
            r % 97,
            r % 97,
            1 + r % 12
        ));
        for _ in 0..(20 + r % 30) {
            html.push_str(word().0);
            html.push(' ');
        }
        html.push_str("</p>\n</article>\n");
    }
    html.push_str("</main></body></html>\n");
    std::fs::write(www.join("page.html"), html)?;

    let mut json = String::from("{\"items\":[");
    let mut n = 0u64;
    while json.len() < 64 * 1024 {
        n += 1;
        let (a, r) = word();
        let (b, _) = word();
        if n > 1 {
            json.push(',');
        }
        json.push_str(&format!(
            "{{\"id\":{n},\"name\":\"{a} {b}\",\"email\":\"{a}.{b}{}@example.com\",\"active\":{},\"score\":{}.{},\"tags\":[\"{}\",\"{}\"],\"region\":\"{}\"}}",
            r % 1000,
            r % 2 == 0,
            r % 100,
            r % 10,
            word().0,
            word().0,
            ["eu-west", "us-east", "ap-south"][(r % 3) as usize]
        ));
    }
    json.push_str("],\"next\":null}\n");
    std::fs::write(www.join("data.json"), json)?;
    Ok(())
}

/// What one contender answered for a document in a coding: the encoded size.
fn check_answer(addr: SocketAddr, doc: &str, coding: &str, original: &[u8]) -> Result<usize> {
    let url = format!("http://{addr}/{doc}");
    let ae = format!("Accept-Encoding: {coding}");
    let head = sys::run(
        "curl",
        &["-s", "-o", "/dev/null", "-D", "-", "-H", &ae, &url],
    )?;
    let encoding = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-encoding:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    ensure!(
        encoding == coding,
        "{url} with {ae}: content-encoding {encoding:?}\n{head}"
    );
    let raw = Command::new("curl")
        .args(["-s", "-H", &ae, &url])
        .output()?
        .stdout;
    let decoded = Command::new("curl")
        .args(["-s", "--compressed", "-H", &ae, &url])
        .output()?
        .stdout;
    ensure!(
        decoded == original,
        "{url} with {ae} does not decode to the origin's {} bytes (got {})",
        original.len(),
        decoded.len()
    );
    ensure!(raw.len() < original.len(), "{url} with {ae}: not smaller");
    Ok(raw.len())
}

fn start_nginx_compressing(dir: &Path, origin: SocketAddr) -> Result<(Proc, Target)> {
    if !Path::new(BROTLI_MODULE).is_file() {
        bail!("{BROTLI_MODULE} missing: apt-get install libnginx-mod-http-brotli-filter");
    }
    let (h1, h2) = (free_port()?, free_port()?);
    // The levels edge-node runs with; both modules compress every proxied response of a
    // listed type (text/html always) and stream it out.
    let http = format!(
        "upstream origin {{\n server {origin};\n keepalive 256;\n}}\n\
         gzip on;\n gzip_comp_level {GZIP_LEVEL};\n gzip_min_length 512;\n gzip_proxied any;\n\
         gzip_types application/json;\n gzip_vary on;\n\
         brotli on;\n brotli_comp_level {BROTLI_LEVEL};\n brotli_min_length 512;\n\
         brotli_types application/json;\n\
         server {{\n listen {h1};\n listen {h2} http2;\n\
         location / {{\n  proxy_pass http://origin;\n  proxy_http_version 1.1;\n  \
         proxy_set_header Connection \"\";\n }}\n}}"
    );
    let main = format!("load_module {BROTLI_MODULE};\n");
    let mut p = start_nginx_with(dir, "nginx-compress", &main, &http)?;
    wait_serving(&mut p, h1)?;
    let pid = p.child.id() as i32;
    Ok((
        p,
        Target {
            kind: Kind::Nginx,
            h1,
            h2,
            pid,
        },
    ))
}

fn start_edge(dir: &Path, origin: SocketAddr, cached: bool) -> Result<(Proc, Target, SocketAddr)> {
    std::fs::create_dir_all(dir)?;
    let admin = free_port()?;
    let route = if cached {
        "[[route]]\nhosts = [\"*\"]\nupstream = \"origin\"\n[route.cache]\n"
    } else {
        "[[route]]\nhosts = [\"*\"]\nupstream = \"origin\"\n"
    };
    let extra = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\n\
         [compression]\ngzip_level = {GZIP_LEVEL}\nbrotli_level = {BROTLI_LEVEL}\n"
    );
    let (p, t) = start_edge_node_with(dir, origin, route, &extra)?;
    Ok((p, t, admin))
}

/// The sum of `edge_compressed_responses_total` in a node's /metrics.
fn compressed_total(admin: SocketAddr) -> Result<f64> {
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let text = sys::run(
        "curl",
        &["-s", "-H", &auth, &format!("http://{admin}/metrics")],
    )?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("edge_compressed_responses_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

pub fn run(args: Args) -> Result<()> {
    raise_nofile();
    let dir = Workdir(std::env::temp_dir().join(edge_tests::unique("edge-bench-compress-")));
    std::fs::create_dir_all(&dir.0)?;
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let (origin_proc, origin) = start_origin(
        &dir.0,
        " types { text/html html; application/json json; }\n \
         add_header Cache-Control \"public, max-age=3600\";\n",
    )?;
    let www = origin_root(&dir.0);
    documents(&www)?;
    std::fs::set_permissions(&www, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    let (edge_proc, edge, edge_admin) = start_edge(&dir.0.join("stream"), origin.h1, false)?;
    let (cached_proc, cached, cached_admin) = start_edge(&dir.0.join("cached"), origin.h1, true)?;
    let (nginx_proc, nginx) = start_nginx_compressing(&dir.0, origin.h1)?;
    let targets = [&edge, &cached, &nginx];
    let names = [
        "edge-node (every response compressed)",
        "edge-node [route.cache] (compressed once, kept)",
        "nginx gzip / brotli modules",
    ];

    // Cells: document × coding. Every contender's answer is checked first.
    struct CellSpec {
        doc: &'static str,
        what: &'static str,
        coding: &'static str,
        original: usize,
        sizes: [Option<usize>; 3],
    }
    let mut cells = Vec::new();
    for (doc, what) in DOCS {
        let original = std::fs::read(www.join(doc))?;
        for coding in CODINGS {
            let mut sizes = [None; 3];
            for (i, t) in targets.iter().enumerate() {
                if coding == "zstd" && t.kind == Kind::Nginx {
                    continue;
                }
                // Twice: the cached contender's first answer is the miss.
                check_answer(t.h1, doc, coding, &original)?;
                sizes[i] = Some(
                    check_answer(t.h1, doc, coding, &original)
                        .with_context(|| names[i].to_string())?,
                );
            }
            cells.push(CellSpec {
                doc,
                what,
                coding,
                original: original.len(),
                sizes,
            });
        }
    }
    let labels: Vec<String> = cells
        .iter()
        .map(|c| format!("{} ({}), {}", c.doc, c.what, c.coding))
        .collect();
    let timing = Timing {
        rounds: args.rounds,
        seconds: args.seconds,
        warmup: args.warmup,
    };
    let cell = Cell {
        client: Client::Wrk,
        size: "page.html",
        conns: CONNECTIONS,
    };
    let admins = [Some(edge_admin), Some(cached_admin), None];
    let mut procs = [origin_proc, edge_proc, cached_proc, nginx_proc];
    let samples = interleaved(&mut procs, args.rounds, &labels, &names, |c, i| {
        let spec = &cells[c];
        if spec.sizes[i].is_none() {
            return Ok(None);
        }
        let extra = vec![
            "-H".to_string(),
            format!("Accept-Encoding: {}", spec.coding),
        ];
        let before = admins[i].map(compressed_total).transpose()?;
        let s = measure_path(&dir.0, cell, targets[i], spec.doc, &extra, timing)?;
        ensure!(s.errors == 0, "{} errors on {}", s.errors, names[i]);
        // An edge contender compressed (or served a kept compressed copy for) every
        // response of this run: its counter moved at least as far as wrk's requests.
        if let (Some(admin), Some(before)) = (admins[i], before) {
            let counted = compressed_total(admin)? - before;
            let sent = s.rps * args.seconds as f64;
            ensure!(
                counted >= 0.95 * sent,
                "{} on {}: edge_compressed_responses_total moved {counted}, wrk measured {sent:.0}",
                names[i],
                labels[c]
            );
        }
        Ok(Some(s))
    })?;

    let mut out = String::new();
    out.push_str(&format!(
        "## Compression: CPU per compressed response against nginx's gzip and brotli modules\n\n\
         `cargo xtask bench compression` · {} rounds × {} s (+{} s warm-up) per run, wrk \
         (HTTP/1.1 keep-alive, 2 threads, {CONNECTIONS} connections, one `Accept-Encoding`) \
         on 127.0.0.1 · {} · kernel {} · nginx {} with the brotli filter module {}.\n\n\
         Levels: gzip {GZIP_LEVEL}, brotli {BROTLI_LEVEL} on both (edge-node's defaults; \
         nginx set to them); zstd level 3 is edge-node's alone (Debian's nginx has no zstd \
         module). Every contender proxies the same nginx origin; its answers were checked to \
         carry the coding asked for and to decode to the origin's bytes, and edge-node's \
         compression counter to cover every response measured. CPU is the contender's own \
         (user + system, all its processes) per response; \"cached\" is edge-node serving a \
         `[route.cache]` hit whose compressed copy it kept (nginx proxying has no such copy: \
         it compresses each response).\n\n",
        args.rounds,
        args.seconds,
        args.warmup,
        cpu_model(),
        sys::kernel_release(),
        sys::version("nginx", "-v"),
        sys::deb_version("libnginx-mod-http-brotli-filter"),
    ));
    out.push_str(
        "| document, coding | contender | bytes (ratio) | req/s | p99 | CPU µs/response | CPU vs nginx |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut summary = Vec::new();
    for (c, spec) in cells.iter().enumerate() {
        let med: Vec<Option<Medians>> = (0..3).map(|i| medians_of(&samples[c][i])).collect();
        let nginx_cpu = med[2].as_ref().map(|m| m.cpu_us_per_req);
        for i in 0..3 {
            let (Some(m), Some(bytes)) = (&med[i], spec.sizes[i]) else {
                continue;
            };
            let vs = match (i, nginx_cpu) {
                (0 | 1, Some(n)) => format!("{:.2}×", m.cpu_us_per_req / n),
                _ => "—".into(),
            };
            out.push_str(&format!(
                "| {} ({}), {} | {} | {} ({:.1}×) | {:.0} | {} | {:.1} | {} |\n",
                spec.doc,
                spec.what,
                spec.coding,
                names[i],
                bytes,
                spec.original as f64 / bytes as f64,
                m.rps,
                fmt_ms(m.p99_ms),
                m.cpu_us_per_req,
                vs
            ));
            if i == 0
                && let Some(n) = nginx_cpu
            {
                summary.push((labels[c].clone(), m.cpu_us_per_req / n));
            }
        }
    }
    out.push_str(
        "\nCPU vs nginx below 1.00× means edge-node spends less CPU per compressed response \
         than nginx does for the same document, coding and level.\n",
    );
    if !summary.is_empty() {
        let worst = summary
            .iter()
            .map(|(_, r)| *r)
            .fold(f64::NEG_INFINITY, f64::max);
        out.push_str(&format!(
            "\nStreamed (no cache), edge-node's CPU per response against nginx's: {} (worst {:.2}×).\n",
            summary
                .iter()
                .map(|(l, r)| format!("{l} {r:.2}×"))
                .collect::<Vec<_>>()
                .join("; "),
            worst
        ));
    }
    println!("{out}");
    if args.write {
        report::write_section("compression", &out)?;
    }
    Ok(())
}

//! HTTP/3 against HTTP/2 and HTTP/1.1 on the same route of the same node, same run: the
//! node serves TLS (h2, http/1.1) and QUIC (h3) with one certificate and answers from
//! its built-in demo origin (so the protocols are what differs). Load: h2load (HTTP/2
//! over TLS), wrk (HTTP/1.1 over TLS) and this crate's own HTTP/3 client (quinn + h3),
//! each with the same connections and, for the multiplexed two, the same streams per
//! connection. Interleaved rounds, medians of req/s, p50, p99.

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    path::Path,
    process::Command,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use bytes::Buf;
use clap::Args as ClapArgs;

use crate::{
    proxy::{
        Proc, Sample, Workdir, free_port, parse_h2load, parse_wrk, raise_nofile, run_client,
        tree_cpu_seconds,
    },
    report, sys,
};

#[derive(ClapArgs)]
pub struct Args {
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections (each client), and streams per connection for h2 and h3.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    streams: usize,
    #[arg(long)]
    write: bool,
    /// Run one protocol only (h1, h2 or h3), to profile it; nothing is written.
    #[arg(long, value_parser = ["h1", "h2", "h3"])]
    only: Option<String>,
}

fn start_node(dir: &Path) -> Result<(Proc, SocketAddr, SocketAddr)> {
    let tcp = free_port()?;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let text = format!(
        "[node]\nid = \"bench\"\n\n[log]\nlevel = \"warn\"\n\n[xdp]\nmode = \"off\"\n\n\
         [http]\nlisten = []\ntls_listen = [\"{tcp}\"]\nh3_listen = [\"{udp}\"]\nh3_retry_above = 100000\n\n\
         [threat]\nenabled = false\n\n\
         [[certificate]]\nhosts = [\"bench.test\"]\ncert = \"{d}/leaf.crt\"\nkey = \"{d}/leaf.key\"\n\n\
         [[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\n[[route]]\nhosts = [\"*\"]\nupstream = \"demo\"\n",
        d = dir.display()
    );
    let conf = dir.join("edge-node.toml");
    std::fs::write(&conf, text)?;
    let mut cmd = Command::new(edge_tests::edge_node_bin());
    cmd.env_remove("RUST_LOG").arg("-c").arg(&conf).arg("run");
    let mut p = Proc::spawn("edge-node", cmd, dir.join("edge-node.log"))?;
    let start = Instant::now();
    while std::net::TcpStream::connect(tcp).is_err() {
        p.check_alive()?;
        if start.elapsed() > Duration::from_secs(20) {
            bail!("edge-node does not listen:\n{}", p.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((p, tcp, udp))
}

/// The HTTP/3 load: `connections` QUIC connections, `streams` requests in flight on
/// each, for `seconds`; every request's latency recorded. Like wrk and h2load, the
/// client runs one event loop per thread (two), each with its share of the
/// connections, so no request's wake-up crosses threads.
fn h3_load(
    addr: SocketAddr,
    ca: &Path,
    connections: usize,
    streams: usize,
    seconds: u64,
) -> Result<Sample> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?);
    let warmup = Duration::from_secs(1);
    let measure_from = Instant::now() + warmup;
    let end = measure_from + Duration::from_secs(seconds);
    const THREADS: usize = 2;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let mine = connections / THREADS + usize::from(t < connections % THREADS);
            let quic = quic.clone();
            std::thread::spawn(move || -> Result<(Vec<f64>, u64)> {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(h3_thread(addr, quic, mine, streams, measure_from, end))
            })
        })
        .collect();
    let (mut l, mut errors) = (Vec::new(), 0);
    for t in threads {
        let (lat, errs) = t
            .join()
            .map_err(|_| anyhow::anyhow!("an HTTP/3 client thread panicked"))??;
        l.extend(lat);
        errors += errs;
    }
    if l.is_empty() {
        bail!("no HTTP/3 request succeeded");
    }
    l.sort_by(f64::total_cmp);
    let pick = |q: f64| l[((q * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1];
    Ok(Sample {
        rps: l.len() as f64 / seconds as f64,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        errors,
        ..Default::default()
    })
}

/// One client thread's connections: latencies of the requests started after
/// `measure_from`, and how many of those failed.
async fn h3_thread(
    addr: SocketAddr,
    quic: Arc<quinn::crypto::rustls::QuicClientConfig>,
    connections: usize,
    streams: usize,
    measure_from: Instant,
    end: Instant,
) -> Result<(Vec<f64>, u64)> {
    let latencies = Rc::new(RefCell::new(Vec::<f64>::new()));
    let errors = Rc::new(Cell::new(0u64));
    let local = tokio::task::LocalSet::new();
    let mut endpoints = Vec::with_capacity(connections);
    let mut drivers = Vec::new();
    let mut loops = Vec::new();
    for _ in 0..connections {
        // One UDP socket per connection, as every real client has its own: the node's
        // SO_REUSEPORT sockets spread connections by 4-tuple, so connections sharing
        // one client socket would all land on a single worker.
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(quic.clone()));
        let conn = endpoint.connect(addr, "bench.test")?.await?;
        endpoints.push(endpoint);
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        drivers.push(local.spawn_local(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        }));
        for _ in 0..streams {
            let mut send = send.clone();
            let (lat, errs) = (latencies.clone(), errors.clone());
            loops.push(local.spawn_local(async move {
                while Instant::now() < end {
                    let t = Instant::now();
                    let req = http::Request::get("https://bench.test/")
                        .body(())
                        .expect("request");
                    let ok = async {
                        let mut s = send.send_request(req).await?;
                        s.finish().await?;
                        let resp = s.recv_response().await?;
                        while let Some(mut chunk) = s.recv_data().await? {
                            chunk.advance(chunk.remaining());
                        }
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                            resp.status().is_success(),
                        )
                    }
                    .await;
                    if t >= measure_from {
                        match ok {
                            Ok(true) => lat.borrow_mut().push(t.elapsed().as_secs_f64() * 1e3),
                            _ => errs.set(errs.get() + 1),
                        }
                    }
                }
            }));
        }
    }
    // Bounded: every stream loop ends at `end`; the drivers end when the endpoints close.
    local
        .run_until(async {
            let _ = tokio::time::timeout_at((end + Duration::from_secs(5)).into(), async {
                for l in loops {
                    let _ = l.await;
                }
            })
            .await;
            for endpoint in &endpoints {
                endpoint.close(0u32.into(), b"done");
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                for d in drivers {
                    let _ = d.await;
                }
            })
            .await;
        })
        .await;
    let l = latencies.borrow().clone();
    Ok((l, errors.get()))
}

pub fn run(args: Args) -> Result<()> {
    raise_nofile();
    let dir = Workdir(std::env::temp_dir().join(format!("edge-bench-h3-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    edge_tests::tls_origin::make_ca_and_leaf(&dir.0, &["bench.test"]);
    let (node, tcp, udp) = start_node(&dir.0)?;
    let node_pid = node.child.id() as i32;
    let ca = dir.0.join("ca.crt");
    let names = [
        "HTTP/1.1 (wrk, TLS)",
        "HTTP/2 (h2load, TLS)",
        "HTTP/3 (quinn + h3)",
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); 3];
    let url = format!("https://bench.test:{}/", tcp.port());
    for round in 0..args.rounds {
        for k in 0..3 {
            let i = (k + round) % 3;
            if args
                .only
                .as_deref()
                .is_some_and(|p| p != ["h1", "h2", "h3"][i])
            {
                continue;
            }
            let cpu0 = tree_cpu_seconds(node_pid);
            let mut s = match i {
                0 => {
                    // wrk has no resolver override: it gets the address, with the SNI
                    // and Host of bench.test from the URL it is given through -H.
                    let wrk = vec![
                        "-t2".to_string(),
                        format!("-c{}", args.connections),
                        format!("-d{}s", args.seconds),
                        "--latency".into(),
                        "-H".into(),
                        "Host: bench.test".into(),
                        format!("https://127.0.0.1:{}/", tcp.port()),
                    ];
                    parse_wrk(&run_client(
                        &dir.0,
                        "wrk",
                        &wrk,
                        Duration::from_secs(args.seconds + 30),
                    )?)?
                }
                1 => {
                    let log = dir.0.join("h2load.log");
                    let h2 = vec![
                        format!("-c{}", args.connections),
                        format!("-m{}", args.streams),
                        "-t2".into(),
                        "--warm-up-time=1".into(),
                        "-D".into(),
                        args.seconds.to_string(),
                        "--connect-to".into(),
                        format!("127.0.0.1:{}", tcp.port()),
                        "--log-file".into(),
                        log.display().to_string(),
                        url.clone(),
                    ];
                    let out = run_client(
                        &dir.0,
                        "h2load",
                        &h2,
                        Duration::from_secs(args.seconds + 30),
                    )?;
                    parse_h2load(&out, &std::fs::read_to_string(&log)?)?
                }
                _ => h3_load(udp, &ca, args.connections, args.streams, args.seconds)?,
            };
            // The node's own CPU per request: what each protocol costs the server, apart
            // from how heavy each load generator is. h2load and the h3 client warm up
            // for a second at about the measured rate.
            let warm = if i == 0 { 0.0 } else { 1.0 };
            let cpu = tree_cpu_seconds(node_pid) - cpu0;
            s.cpu_us_per_req = cpu * 1e6 / (s.rps * (args.seconds as f64 + warm)).max(1.0);
            eprintln!(
                "round {round} {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {}, node CPU {:.1} µs/req",
                names[i], s.rps, s.p50_ms, s.p99_ms, s.errors, s.cpu_us_per_req
            );
            samples[i].push(s);
        }
    }
    let med = |v: &[Sample], f: fn(&Sample) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        sys::median(&mut x)
    };
    if args.only.is_some() {
        return Ok(());
    }
    let h2 = med(&samples[1], |s| s.rps);
    let h3 = med(&samples[2], |s| s.rps);
    let mut body = format!(
        "## HTTP/3 against HTTP/2 and HTTP/1.1 (one node, TLS, the built-in demo origin)\n\n\
         Machine: {} CPUs, kernel {}. Command: `cargo xtask bench h3` ({} interleaved rounds of {} s, \
         {} connections, {} streams per connection for HTTP/2 and HTTP/3; wrk has one request \
         in flight per connection). Medians. \"node CPU\" is the node's own CPU time per request (all three load generators run \
         on the same two cores and weigh differently). The HTTP/3 client is this crate's (quinn + h3, \
         ring): like `wrk -t2` and `h2load -t2`, two threads with one event loop each and their share \
         of the connections, and one UDP socket per connection as every real client has (connections \
         sharing one socket would share one 4-tuple, so the node's SO_REUSEPORT sockets would put them \
         all on one worker).\n\n\
         | protocol | req/s | p50 | p99 | errors | node CPU µs/req |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sys::kernel_release(),
        args.rounds,
        args.seconds,
        args.connections,
        args.streams,
    );
    for (name, v) in names.iter().zip(&samples) {
        body.push_str(&format!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {:.1} |\n",
            med(v, |s| s.rps),
            med(v, |s| s.p50_ms),
            med(v, |s| s.p99_ms),
            med(v, |s| s.errors as f64),
            med(v, |s| s.cpu_us_per_req),
        ));
    }
    body.push_str(&format!(
        "\nHTTP/3 / HTTP/2 throughput: **{:.2}×** (target ≥ 0.7×: {}).\n",
        h3 / h2,
        if h3 / h2 >= 0.7 { "met" } else { "not met" }
    ));
    println!("{body}");
    if args.write {
        report::write_section("h3", &body)?;
    }
    Ok(())
}

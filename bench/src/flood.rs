//! A flood over a veth pair into a namespace, filtered by each contender in turn.
//!
//! The rig (shared/docs/BENCHMARKING.md): the sender's veth in one namespace, the
//! receiver's in another; the receiver's NAPI is threaded and its kthread pinned to CPU 1
//! (so CPU 1 is "the RX queue"), GRO on at the receiver, TSO off at the sender. The
//! generator is BPF_PROG_RUN in XDP live-frames mode running an XDP_TX program on the
//! sender's veth, pinned to CPU 0: every frame goes straight into the receiver's ring.
//! With the receive core saturated, what a filter achieves is what it costs: packets the
//! receiver processed per second, and the receive core's ns per packet (its kthread's CPU
//! time over the packets it processed).

use std::{
    io::{BufRead, BufReader, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use edge_common::Reason;
use edge_node::xdp::PinnedMaps;
use edge_tests::{BpfFs, netns::Netns, netns::veth, node::Node, packet};

use crate::{cost::BENCH_PROGS, report, sys};

const RX_ADDR: &str = "10.232.0.1";
const FLOOD_SRC: [u8; 4] = [10, 232, 0, 10];
const LEGIT_SRC: &str = "10.232.0.11";
const LEGIT_PORT: u16 = 8080;
const GEN_CPU: usize = 0;
const RX_CPU: usize = 1;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each measures every contender once, in the same order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measurement window per contender, seconds (after a warm-up second).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Only contenders whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Write the report into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    NoFilter,
    IptablesRaw,
    NftIngress,
    XdpFilterGeneric,
    XdpFilterNative,
    BareDrop,
    EdgeGenericBlock,
    EdgeNativeBlock,
    EdgeNativeBudget,
}

impl Contender {
    const ALL: [Contender; 9] = [
        Contender::NoFilter,
        Contender::IptablesRaw,
        Contender::NftIngress,
        Contender::XdpFilterGeneric,
        Contender::XdpFilterNative,
        Contender::BareDrop,
        Contender::EdgeGenericBlock,
        Contender::EdgeNativeBlock,
        Contender::EdgeNativeBudget,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::NoFilter => "no filter",
            Contender::IptablesRaw => "iptables raw PREROUTING DROP",
            Contender::NftIngress => "nftables netdev ingress drop",
            Contender::XdpFilterGeneric => "xdp-filter generic",
            Contender::XdpFilterNative => "xdp-filter native",
            Contender::BareDrop => "bare eth+IPv4 XDP_DROP native (floor)",
            Contender::EdgeGenericBlock => "edge-node generic, block prefix",
            Contender::EdgeNativeBlock => "edge-node native, block prefix",
            Contender::EdgeNativeBudget => "edge-node native, packet budget",
        }
    }
}

struct Rig {
    sender: Netns,
    rx: Netns,
    rx_if: String,
    fs: BpfFs,
    frame: Vec<u8>,
    gen_ifindex: u32,
}

/// What a contender leaves running while it is measured.
enum Active {
    None,
    Ebpf(Box<Ebpf>),
    Node(Box<Node>),
}

fn mac(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let out =
        String::from_utf8_lossy(&ns.ip(&["-j", "link", "show", "dev", dev]).stdout).into_owned();
    let addr = out
        .split("\"address\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("no MAC address")?;
    let mut m = [0u8; 6];
    for (i, part) in addr.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(m)
}

impl Rig {
    fn new() -> Result<Self> {
        let sender = Netns::new("fgen");
        let rx = Netns::new("frx");
        let (gen_if, rx_if) = veth(&sender, "10.232.0.10/24", &rx, &format!("{RX_ADDR}/24"));
        sender.ip(&["addr", "add", &format!("{LEGIT_SRC}/24"), "dev", &gen_if]);
        rx.exec(&["ethtool", "-K", &rx_if, "gro", "on"]);
        sender.exec(&["ethtool", "-K", &gen_if, "tso", "off"]);
        rx.exec(&[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{rx_if}/threaded"),
        ]);
        // Neighbour entries, so legitimate traffic needs no ARP under load.
        let rx_mac = mac(&rx, &rx_if)?;
        let gen_mac = mac(&sender, &gen_if)?;
        let fmt_mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        sender.ip(&[
            "neigh",
            "replace",
            RX_ADDR,
            "lladdr",
            &fmt_mac(rx_mac),
            "dev",
            &gen_if,
        ]);
        for a in ["10.232.0.10", LEGIT_SRC] {
            rx.ip(&[
                "neigh",
                "replace",
                a,
                "lladdr",
                &fmt_mac(gen_mac),
                "dev",
                &rx_if,
            ]);
        }
        // The flood frame: UDP from FLOOD_SRC to the receiver's address, 64 bytes.
        let mut frame = packet::v4(&[], &packet::V4::from(FLOOD_SRC), &packet::udp(9));
        frame[0..6].copy_from_slice(&rx_mac);
        frame[6..12].copy_from_slice(&gen_mac);
        frame[30..34].copy_from_slice(&[10, 232, 0, 1]);
        frame.resize(60, 0);
        let gen_ifindex = sender.enter(|| edge_node::xdp::loader::ifindex(&gen_if))?;
        Ok(Self {
            sender,
            rx,
            rx_if,
            fs: BpfFs::new(),
            frame,
            gen_ifindex,
        })
    }

    fn xdp_filter(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", self.rx.name.as_str(), "xdp-filter"];
        all.extend_from_slice(args);
        let bpffs = self.fs.path().to_str().unwrap().to_string();
        sys::run_env("ip", &all, &[("LIBXDP_BPFFS", &bpffs)])
    }

    fn in_rx(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", self.rx.name.as_str(), program];
        all.extend_from_slice(args);
        sys::run("ip", &all)
    }

    /// An edge-node in the receiving namespace: it serves the legitimate client over HTTP
    /// (its demo origin, host legit.test) and, per `xdp`, filters the flood or not.
    fn node_config(&self, xdp: &str) -> String {
        format!(
            "[http]\nlisten = [\"{RX_ADDR}:{LEGIT_PORT}\"]\n\n[[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\n\
             [[route]]\nhosts = [\"legit.test\"]\nupstream = \"demo\"\n\n{xdp}\n"
        )
    }

    fn edge_config(&self, mode: &str, budget: bool) -> String {
        let (block, rate) = if budget {
            ("[]", "packets_per_sec = 1000\npackets_burst = 1000")
        } else {
            ("[\"10.232.0.10/32\"]", "")
        };
        self.node_config(&format!(
            "[xdp]\nmode = \"{mode}\"\nstrict = true\ninterfaces = [\"{}\"]\npin_root = \"{}\"\n\
             allow = [\"192.0.2.0/24\"]\nblock = {block}\n[xdp.rate]\n{rate}\n",
            self.rx_if,
            self.fs.path().display()
        ))
    }

    fn start_node(&self, config: &str) -> Result<Node> {
        let node = Node::start(config, Some(&self.rx));
        if !node.wait_running(Duration::from_secs(20)) {
            bail!("edge-node did not start:\n{}", node.log());
        }
        Ok(node)
    }

    fn setup(&self, c: Contender) -> Result<Active> {
        let src = "10.232.0.10";
        Ok(match c {
            Contender::NoFilter => Active::None,
            Contender::IptablesRaw => {
                self.in_rx(
                    "iptables",
                    &["-t", "raw", "-A", "PREROUTING", "-s", src, "-j", "DROP"],
                )?;
                Active::None
            }
            Contender::NftIngress => {
                let rules = format!(
                    "table netdev edgebench {{\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority -500;\n    ip saddr {src} drop\n  }}\n}}\n",
                    self.rx_if
                );
                let file = std::env::temp_dir().join(edge_tests::unique("edge-bench-nft-"));
                std::fs::write(&file, rules)?;
                let r = self.in_rx("nft", &["-f", file.to_str().unwrap()]);
                let _ = std::fs::remove_file(&file);
                r?;
                Active::None
            }
            Contender::XdpFilterGeneric | Contender::XdpFilterNative => {
                let mode = if c == Contender::XdpFilterGeneric {
                    "skb"
                } else {
                    "native"
                };
                self.xdp_filter(&["load", "-m", mode, &self.rx_if])?;
                self.xdp_filter(&["ip", src, "-m", "src"])?;
                Active::None
            }
            Contender::BareDrop => {
                let rx_if = self.rx_if.clone();
                let ebpf = self.rx.enter(move || -> Result<Ebpf> {
                    let mut ebpf = EbpfLoader::new().load(BENCH_PROGS)?;
                    let prog: &mut Xdp = ebpf
                        .program_mut("bench_drop_v4")
                        .context("prog")?
                        .try_into()?;
                    prog.load()?;
                    prog.attach(&rx_if, XdpMode::Driver)?;
                    Ok(ebpf)
                })?;
                Active::Ebpf(Box::new(ebpf))
            }
            Contender::EdgeGenericBlock
            | Contender::EdgeNativeBlock
            | Contender::EdgeNativeBudget => {
                let mode = if c == Contender::EdgeGenericBlock {
                    "generic"
                } else {
                    "native"
                };
                let cfg = self.edge_config(mode, c == Contender::EdgeNativeBudget);
                Active::Node(Box::new(self.start_node(&cfg)?))
            }
        })
    }

    fn teardown(&self, c: Contender, active: Active) -> Result<()> {
        match active {
            Active::Node(mut node) => node.stop(),
            Active::Ebpf(ebpf) => drop(ebpf),
            Active::None => {}
        }
        match c {
            Contender::IptablesRaw => {
                self.in_rx("iptables", &["-t", "raw", "-F", "PREROUTING"])?;
            }
            Contender::NftIngress => {
                self.in_rx("nft", &["delete", "table", "netdev", "edgebench"])?;
            }
            Contender::XdpFilterGeneric | Contender::XdpFilterNative => {
                self.xdp_filter(&["unload", &self.rx_if])?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Frames the receiving veth took off its ring (ethtool's per-queue counter).
    fn rx_processed(&self) -> Result<u64> {
        let out = self.in_rx("ethtool", &["-S", &self.rx_if])?;
        let mut total = 0;
        for line in out.lines() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("rx_queue_0_xdp_packets:") {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
        Ok(total)
    }

    fn napi_thread(&self) -> Result<i32> {
        let prefix = format!("napi/{}", self.rx_if);
        sys::find_kthread(&prefix)
            .with_context(|| format!("no {prefix} kthread (threaded NAPI off?)"))
    }
}

/// Runs the live-frames generator on CPU 0 in the sender's namespace until `stop`.
/// Returns the frames it sent and for how long it ran.
fn spawn_generator(rig: &Rig, stop: Arc<AtomicBool>) -> thread::JoinHandle<Result<(u64, f64)>> {
    let ns_path = format!("/var/run/netns/{}", rig.sender.name);
    let frame = rig.frame.clone();
    let ifindex = rig.gen_ifindex;
    thread::spawn(move || -> Result<(u64, f64)> {
        let f = std::fs::File::open(&ns_path)?;
        // SAFETY: valid namespace fd; affects this thread only.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        sys::pin_to_cpu(0, GEN_CPU)?;
        let mut ebpf = EbpfLoader::new().load(BENCH_PROGS)?;
        let prog: &mut Xdp = ebpf
            .program_mut("bench_tx")
            .context("bench_tx")?
            .try_into()?;
        prog.load()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The ingress device is where XDP_TX transmits.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut runs = 0u64;
        let repeat = 2_000_000;
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let opts = TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            };
            prog.test_run(opts).context("live-frames BPF_PROG_RUN")?;
            runs += u64::from(repeat);
        }
        Ok((runs, started.elapsed().as_secs_f64()))
    })
}

/// A keep-alive HTTP/1.1 client from a legitimate source, asking edge-node (in the
/// receiving namespace) for its demo page while the flood runs: requests served.
struct Legit {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    client: Option<thread::JoinHandle<()>>,
}

impl Legit {
    /// Starts the client thread in the sender's namespace. It (re)connects whenever the
    /// flood costs it its connection: packets lost to a full ring are lost before any
    /// filter runs, whatever the filter.
    fn start(rig: &Rig) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let ns_path = format!("/var/run/netns/{}", rig.sender.name);
        let (st, sv) = (stop.clone(), served.clone());
        let client = thread::spawn(move || {
            let Ok(f) = std::fs::File::open(&ns_path) else {
                return;
            };
            // SAFETY: valid namespace fd; affects this thread only.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0
            {
                return;
            }
            let to = std::net::SocketAddr::from((
                RX_ADDR.parse::<std::net::Ipv4Addr>().expect("ipv4"),
                LEGIT_PORT,
            ));
            while !st.load(Ordering::Relaxed) {
                let Ok(sock) = edge_tests::connect_from(LEGIT_SRC, to, Duration::from_millis(500))
                else {
                    continue;
                };
                let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
                let mut reader = BufReader::new(sock.try_clone().expect("clone"));
                let mut w = sock;
                while !st.load(Ordering::Relaxed) {
                    if w.write_all(b"GET / HTTP/1.1\r\nHost: legit.test\r\n\r\n")
                        .is_err()
                    {
                        break;
                    }
                    match read_response(&mut reader) {
                        Some(200) => {
                            sv.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            }
        });
        Ok(Self {
            stop,
            served,
            client: Some(client),
        })
    }
}

impl Drop for Legit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.client.take() {
            let _ = c.join();
        }
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body; its status.
fn read_response(r: &mut impl BufRead) -> Option<u16> {
    let mut line = String::new();
    // Retry reads that time out while the flood delays packets, within a bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    while line.is_empty() {
        if Instant::now() > deadline {
            return None;
        }
        match r.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(_) => continue,
        }
    }
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).ok()?;
    Some(status)
}

struct Sample {
    /// What the generator offered (frames per second over its whole run).
    offered_pps: f64,
    pps: f64,
    ns_per_packet: f64,
    rx_cpu_busy: f64,
    served_per_sec: f64,
    /// For edge-node: drops its own counters saw, per second (a cross-check).
    edge_drops_pps: Option<f64>,
}

fn measure(rig: &Rig, c: Contender, seconds: f64) -> Result<Sample> {
    let active = rig.setup(c)?;
    // Peers filter, edge-node (without XDP) serves the legitimate client.
    let mut http_node = match active {
        Active::Node(_) => None,
        _ => Some(rig.start_node(&rig.node_config("[xdp]\nmode = \"off\"\n"))?),
    };
    let result = (|| -> Result<Sample> {
        // NAPI may be re-created when XDP attaches: find and pin its thread now.
        let napi = rig.napi_thread()?;
        sys::pin_to_cpu(napi, RX_CPU)?;
        let legit = Legit::start(rig)?;
        let stop = Arc::new(AtomicBool::new(false));
        let generator = spawn_generator(rig, stop.clone());
        thread::sleep(Duration::from_secs(1));
        let maps = matches!(
            c,
            Contender::EdgeGenericBlock | Contender::EdgeNativeBlock | Contender::EdgeNativeBudget
        )
        .then(|| PinnedMaps::open(&rig.fs.pin_dir()))
        .transpose()?;
        let edge_drops = |m: &Option<PinnedMaps>| -> Result<u64> {
            let Some(m) = m else { return Ok(0) };
            let c = m.counters()?;
            Ok(c[Reason::DropBlocked as usize].packets + c[Reason::DropRate as usize].packets)
        };
        let (p0, r0, s0, d0, t0) = (
            rig.rx_processed()?,
            sys::task_runtime_ns(napi)?,
            legit.served.load(Ordering::Relaxed),
            edge_drops(&maps)?,
            Instant::now(),
        );
        thread::sleep(Duration::from_secs_f64(seconds));
        let (p1, r1, s1, d1, t1) = (
            rig.rx_processed()?,
            sys::task_runtime_ns(napi)?,
            legit.served.load(Ordering::Relaxed),
            edge_drops(&maps)?,
            Instant::now(),
        );
        stop.store(true, Ordering::Relaxed);
        let (frames, gen_secs) = generator.join().expect("generator thread")?;
        drop(legit);
        let secs = (t1 - t0).as_secs_f64();
        let packets = (p1 - p0).max(1) as f64;
        Ok(Sample {
            offered_pps: frames as f64 / gen_secs,
            pps: packets / secs,
            ns_per_packet: (r1 - r0) as f64 / packets,
            rx_cpu_busy: (r1 - r0) as f64 / 1e9 / secs,
            served_per_sec: (s1 - s0) as f64 / secs,
            edge_drops_pps: maps.as_ref().map(|_| (d1 - d0) as f64 / secs),
        })
    })();
    if let Some(n) = http_node.as_mut() {
        n.stop();
    }
    rig.teardown(c, active)?;
    result
}

pub fn run(args: Args) -> Result<()> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("the flood rig needs two CPUs (generator and receiver)");
    }
    let rig = Rig::new()?;
    let contenders: Vec<Contender> = Contender::ALL
        .into_iter()
        .filter(|c| {
            args.only
                .as_ref()
                .is_none_or(|o| c.name().contains(o.as_str()))
        })
        .collect();
    let mut samples: Vec<Vec<Sample>> = contenders.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (i, c) in contenders.iter().enumerate() {
            let s = measure(&rig, *c, args.seconds).with_context(|| c.name())?;
            eprintln!(
                "round {}: {:<40} offered {:>8.0} pkt/s, processed {:>8.0} pkt/s {:>5.0} ns/pkt  rx cpu {:>4.0}%  legit {:>5.0} req/s{}",
                round + 1,
                c.name(),
                s.offered_pps,
                s.pps,
                s.ns_per_packet,
                s.rx_cpu_busy * 100.0,
                s.served_per_sec,
                s.edge_drops_pps
                    .map(|d| format!("  (edge drops {d:.0}/s)"))
                    .unwrap_or_default()
            );
            samples[i].push(s);
        }
    }
    let med = |i: usize, f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples[i].iter().map(f).collect();
        sys::median(&mut v)
    };
    let idx = |c: Contender| contenders.iter().position(|x| *x == c);
    let mut md = String::from("## XDP flood over veth (drop rate and receive-core cost)\n\n");
    md.push_str(&format!(
        "Command: `cargo xtask bench xdp-flood` ({} rounds, {} s windows after 1 s warm-up, \
         contenders interleaved). Kernel {}; {}; {}; {}. Rig: veth pair between two \
         namespaces; receiver NAPI threaded and pinned to CPU {RX_CPU}, GRO on; sender TSO \
         off; generator = BPF_PROG_RUN live frames running XDP_TX on the sender's veth, \
         pinned to CPU {GEN_CPU}; 60-byte UDP frames from one source. \"packets/s\" = frames \
         the receiving veth processed per second (ethtool `rx_queue_0_xdp_packets`), all of \
         them dropped by the filter under test (for \"no filter\" the stack discards them); \
         \"ns/packet\" = CPU time of the receive NAPI kthread per frame. \"legit req/s\" = \
         HTTP requests edge-node served meanwhile (its demo page, HTTP/1.1 keep-alive) \
         to a client from another source; with the peers, edge-node runs without XDP and \
         the peer filters. edge-node runs \
         the real daemon with all features on (allow list, block list, threat threshold, \
         per-source budgets).\n\n",
        args.rounds,
        args.seconds,
        sys::kernel_release(),
        sys::deb_version("iptables"),
        sys::deb_version("nftables"),
        sys::deb_version("xdp-tools"),
    ));
    md.push_str("| contender | offered/s | packets/s | ns/packet | rx core busy | legit req/s |\n|---|---:|---:|---:|---:|---:|\n");
    for (i, c) in contenders.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.0} |\n",
            c.name(),
            med(i, |s| s.offered_pps),
            med(i, |s| s.pps),
            med(i, |s| s.ns_per_packet),
            med(i, |s| s.rx_cpu_busy * 100.0),
            med(i, |s| s.served_per_sec),
        ));
    }
    if let Some(e) = idx(Contender::EdgeNativeBlock) {
        let edge = med(e, |s| s.pps);
        md.push('\n');
        for (peer, target) in [
            (Contender::IptablesRaw, 5.0),
            (Contender::XdpFilterNative, 1.5),
            (Contender::BareDrop, 0.7),
        ] {
            if let Some(p) = idx(peer) {
                let ratio = edge / med(p, |s| s.pps);
                md.push_str(&format!(
                    "- edge-node native block drops / {}: **{ratio:.2}×** (target ≥ {target}×: {})\n",
                    peer.name(),
                    if ratio >= target { "met" } else { "NOT met" }
                ));
            }
        }
    }
    println!("{md}");
    if args.write {
        report::write_section("xdp-flood", &md)?;
    }
    Ok(())
}

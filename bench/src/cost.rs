//! Per-packet cost of each verdict path, measured by the kernel itself: BPF_PROG_TEST_RUN
//! with a large repeat count reports the average ns per run of the verified, JIT-compiled
//! program on one crafted packet. Every program runs through the same tool
//! (`bpftool prog run`), interleaved round by round, against the floor (an empty XDP_PASS
//! program) and the peer (xdp-filter from Debian's xdp-tools) on the same packets.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::{EbpfLoader, programs::Xdp};
use edge_node::xdp::{PinnedMaps, XdpSettings, loader};
use edge_tests::{
    BpfFs,
    netns::Netns,
    packet::{self, TCP_SYN, V4},
};
use ipnet::IpNet;

use crate::{report, sys};

pub static BENCH_PROGS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-progs"));

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each runs every case once, in the same order.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Runs per measurement (the kernel reports the average).
    #[arg(long, default_value_t = 2_000_000)]
    repeat: u32,
    /// Write the report into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Family {
    V4,
    V6,
}

/// What edge-node's maps and config must hold for a case.
#[derive(Clone, Copy)]
enum EdgeState {
    Generous,
    PacketBudget1,
    SynBudget1,
}

struct Case {
    family: Family,
    program: &'static str,
    path: &'static str,
    prog_id: u32,
    packet: Vec<u8>,
    expect: u32,
    edge_state: Option<EdgeState>,
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn v4(src: [u8; 4], syn: bool) -> Vec<u8> {
    let l4 = if syn {
        packet::tcp(TCP_SYN)
    } else {
        packet::udp(53)
    };
    packet::v4(&[], &V4::from(src), &l4)
}

fn v6(last: u16, syn: bool) -> Vec<u8> {
    let l4 = if syn {
        packet::tcp(TCP_SYN)
    } else {
        packet::udp(53)
    };
    let mut a = [0u8; 16];
    a[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0x00, 0xaa]);
    a[14..16].copy_from_slice(&last.to_be_bytes());
    packet::v6(&[], a, &[], &l4)
}

fn edge_settings(state: EdgeState) -> XdpSettings {
    let mut s = XdpSettings {
        drop_threshold: 100,
        ..XdpSettings::default()
    };
    // Budgets on but out of reach: the pass path still pays for its bucket update.
    s.rate.packets_per_sec = 1_000_000_000;
    s.rate.packets_burst = 1_000_000_000;
    s.rate.syn_per_sec = 1_000_000_000;
    s.rate.syn_burst = 1_000_000_000;
    s.rate.quic_per_sec = 1_000_000_000;
    s.rate.quic_burst = 1_000_000_000;
    match state {
        EdgeState::Generous => {}
        EdgeState::PacketBudget1 => {
            s.rate.packets_per_sec = 1;
            s.rate.packets_burst = 1;
        }
        EdgeState::SynBudget1 => {
            s.rate.syn_per_sec = 1;
            s.rate.syn_burst = 1;
        }
    }
    s
}

/// `bpftool prog run` of one packet: (return value, average ns).
fn prog_run(id: u32, packet: &Path, repeat: u32) -> Result<(u32, f64)> {
    let out = sys::run(
        "bpftool",
        &[
            "prog",
            "run",
            "id",
            &id.to_string(),
            "data_in",
            packet.to_str().unwrap(),
            "repeat",
            &repeat.to_string(),
        ],
    )?;
    // "Return value: 1, duration (average): 24ns"
    let ret = out
        .split("Return value:")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("bpftool output: {out}"))?;
    let ns = out
        .split("(average):")
        .nth(1)
        .and_then(|s| s.trim().trim_end_matches("ns").trim().parse().ok())
        .with_context(|| format!("bpftool output: {out}"))?;
    Ok((ret, ns))
}

pub fn run(args: Args) -> Result<()> {
    let fs = BpfFs::new();
    // edge-node's program, with its maps in a private bpffs.
    let mut edge = loader::load(&fs.pin_dir())?;
    let edge_id = loader::program(&mut edge)?.info()?.id();
    let mut maps = PinnedMaps::open(&fs.pin_dir())?;
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    maps.allow(net("192.0.2.0/24"))?;
    maps.allow(net("2001:db8:aa::100/120"))?;
    maps.block(net("203.0.113.0/24"), None)?;
    maps.block(net("2001:db8:aa::200/120"), None)?;
    maps.set_score("198.51.100.7".parse()?, 200, None)?;
    maps.set_score("2001:db8:aa::300".parse()?, 200, None)?;

    // The floors.
    let mut floors = EbpfLoader::new().load(BENCH_PROGS)?;
    let mut ids = BTreeMap::new();
    for name in ["bench_pass", "bench_drop_v4"] {
        let prog: &mut Xdp = floors.program_mut(name).context(name)?.try_into()?;
        prog.load()?;
        ids.insert(name, prog.info()?.id());
    }

    // The peer: xdp-filter attached (generic) to a veth in a namespace of our own, its
    // pinned state in our private bpffs.
    let ns = Netns::new("xfc");
    ns.ip(&["link", "add", "xf0", "type", "veth", "peer", "name", "xf1"]);
    ns.ip(&["link", "set", "xf0", "up"]);
    ns.ip(&["link", "set", "xf1", "up"]);
    let bpffs = fs.path().to_str().unwrap().to_string();
    let xdp_filter = |args: &[&str]| -> Result<String> {
        let mut all = vec!["netns", "exec", &ns.name, "xdp-filter"];
        all.extend_from_slice(args);
        sys::run_env("ip", &all, &[("LIBXDP_BPFFS", &bpffs)])
    };
    xdp_filter(&["load", "-m", "skb", "xf0"])?;
    for addr in ["203.0.113.10", "2001:db8:aa::200"] {
        xdp_filter(&["ip", addr, "-m", "src"])?;
    }
    let link = sys::run("ip", &["-n", &ns.name, "-j", "link", "show", "dev", "xf0"])?;
    let xf_id: u32 = link
        .split("\"prog\":{\"id\":")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no xdp-filter program on xf0: {link}"))?;

    let mut cases = Vec::new();
    let mut add = |family, program, path, prog_id, packet, expect, edge_state| {
        cases.push(Case {
            family,
            program,
            path,
            prog_id,
            packet,
            expect,
            edge_state,
        })
    };
    use EdgeState::*;
    use Family::*;
    for fam in [V4, V6] {
        let (plain, allowed, blocked, scored, syn) = match fam {
            V4 => (
                v4([198, 18, 0, 1], false),
                v4([192, 0, 2, 1], false),
                v4([203, 0, 113, 10], false),
                v4([198, 51, 100, 7], false),
                v4([198, 18, 0, 3], true),
            ),
            V6 => (
                v6(0x0001, false),
                v6(0x0101, false),
                v6(0x0200, false),
                v6(0x0300, false),
                v6(0x0003, true),
            ),
        };
        add(
            fam,
            "empty XDP_PASS (floor)",
            "pass",
            ids["bench_pass"],
            plain.clone(),
            XDP_PASS,
            None,
        );
        if fam == V4 {
            add(
                fam,
                "bare eth+IPv4 XDP_DROP",
                "drop",
                ids["bench_drop_v4"],
                blocked.clone(),
                XDP_DROP,
                None,
            );
        }
        add(
            fam,
            "xdp-filter",
            "pass (not listed)",
            xf_id,
            plain.clone(),
            XDP_PASS,
            None,
        );
        add(
            fam,
            "xdp-filter",
            "deny (source listed)",
            xf_id,
            blocked.clone(),
            XDP_DROP,
            None,
        );
        add(
            fam,
            "edge-node",
            "pass (no rule, budgets charged)",
            edge_id,
            plain.clone(),
            XDP_PASS,
            Some(Generous),
        );
        add(
            fam,
            "edge-node",
            "pass (allow prefix)",
            edge_id,
            allowed,
            XDP_PASS,
            Some(Generous),
        );
        add(
            fam,
            "edge-node",
            "drop (block prefix)",
            edge_id,
            blocked,
            XDP_DROP,
            Some(Generous),
        );
        add(
            fam,
            "edge-node",
            "drop (threat score)",
            edge_id,
            scored,
            XDP_DROP,
            Some(Generous),
        );
        add(
            fam,
            "edge-node",
            "drop (packet budget)",
            edge_id,
            plain,
            XDP_DROP,
            Some(PacketBudget1),
        );
        add(
            fam,
            "edge-node",
            "drop (SYN budget)",
            edge_id,
            syn,
            XDP_DROP,
            Some(SynBudget1),
        );
    }

    let dir = tempdir()?;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..args.rounds {
        for (i, case) in cases.iter().enumerate() {
            if let Some(state) = case.edge_state {
                maps.set_config(&edge_settings(state).kernel_config())?;
            }
            let file = dir.join(format!("case{i}.bin"));
            std::fs::write(&file, &case.packet)?;
            let (ret, ns) = prog_run(case.prog_id, &file, args.repeat)?;
            if ret != case.expect {
                bail!(
                    "{} {:?} {}: returned {ret}, expected {}",
                    case.program,
                    case.family,
                    case.path,
                    case.expect
                );
            }
            samples[i].push(ns);
        }
        eprintln!("round {}/{} done", round + 1, args.rounds);
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = xdp_filter(&["unload", "xf0"]);
    let _ = std::fs::remove_dir_all(&dir);

    let medians: Vec<f64> = samples.iter_mut().map(|s| sys::median(s)).collect();
    let mut md = String::new();
    md.push_str("## XDP per-packet cost (BPF_PROG_TEST_RUN)\n\n");
    md.push_str(&format!(
        "Command: `cargo xtask bench xdp-cost` (rounds {}, repeat {} per measurement). \
         Kernel {}, {}, xdp-filter from {}. Each cell is the median over the rounds of the \
         kernel's average ns per run of one crafted packet (`bpftool prog run … repeat`); \
         every program runs through the same tool, interleaved. edge-node runs with all \
         features on (allow, block, threat, rate limits; the pass path pays for its \
         bucket updates). xdp-filter is attached in skb mode with all its features \
         (`xdpfilt_alw_all`), the source listed with `xdp-filter ip … -m src`.\n\n",
        args.rounds,
        args.repeat,
        sys::kernel_release(),
        sys::version("bpftool", "--version"),
        sys::deb_version("xdp-tools"),
    ));
    md.push_str(
        "| family | program | path | ns/packet | vs empty program |\n|---|---|---|---:|---:|\n",
    );
    for fam in [V4, V6] {
        let floor = cases
            .iter()
            .zip(&medians)
            .find(|(c, _)| c.family == fam && c.prog_id == ids["bench_pass"])
            .map(|(_, m)| *m)
            .unwrap_or(f64::NAN);
        for (c, m) in cases.iter().zip(&medians).filter(|(c, _)| c.family == fam) {
            md.push_str(&format!(
                "| {:?} | {} | {} | {m:.0} | {:.2}× |\n",
                c.family,
                c.program,
                c.path,
                m / floor
            ));
        }
    }
    // The headline ratios: edge-node's drop paths against xdp-filter's deny path.
    md.push('\n');
    for fam in [V4, V6] {
        let get = |program: &str, path: &str| {
            cases
                .iter()
                .zip(&medians)
                .find(|(c, _)| c.family == fam && c.program == program && c.path == path)
                .map(|(_, m)| *m)
        };
        if let (Some(edge), Some(peer)) = (
            get("edge-node", "drop (block prefix)"),
            get("xdp-filter", "deny (source listed)"),
        ) {
            md.push_str(&format!(
                "- {fam:?}: edge-node block drop {edge:.0} ns vs xdp-filter deny {peer:.0} ns: {:.2}× the peer's cost\n",
                edge / peer
            ));
        }
    }
    println!("{md}");
    if args.write {
        report::write_section("xdp-cost", &md)?;
    }
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(edge_tests::unique("edge-bench-"));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

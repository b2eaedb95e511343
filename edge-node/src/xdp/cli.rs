//! `edge-node xdp …`: the operator's view of a running node's pinned maps.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use edge_common::{AttachMode, Counter, REASON_COUNT, Reason, XdpConfig, flags};
use ipnet::IpNet;

use super::{
    addr::remaining,
    maps::{Counters, Listing, PinnedMaps},
    settings::pin_dir,
};

#[derive(Debug, Args)]
pub struct XdpArgs {
    /// bpffs directory of the node's pinned maps (default: xdp.pin_root of the config).
    #[arg(long, global = true)]
    pub pin_root: Option<PathBuf>,
    #[command(subcommand)]
    pub command: XdpCommand,
}

#[derive(Debug, Subcommand)]
pub enum XdpCommand {
    /// Interfaces, attach mode, program id, configuration and counters.
    Status,
    /// Drop every packet from a prefix (an address means /32 or /128).
    Block {
        cidr: String,
        /// Lift the block after this long (e.g. 30s, 10m, 2h).
        #[arg(long)]
        ttl: Option<humantime::Duration>,
    },
    /// Remove a block.
    Unblock { cidr: String },
    /// Never drop a prefix (management networks).
    Allow { cidr: String },
    /// Remove an allow entry.
    Unallow { cidr: String },
    /// Set a source's threat score (0 clears it).
    Score {
        ip: IpAddr,
        score: u32,
        /// Forget the score after this long.
        #[arg(long)]
        ttl: Option<humantime::Duration>,
    },
    /// Allow and block prefixes and scored sources.
    List,
    /// Live packets per second of every verdict.
    Top {
        /// Time between samples.
        #[arg(long, default_value = "1s")]
        interval: humantime::Duration,
        /// Stop after this many samples (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address.
pub fn parse_cidr(s: &str) -> Result<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => bail!("{s:?} is neither an address nor a prefix (like 10.0.0.0/8)"),
    }
}

pub fn run(args: XdpArgs, config_pin_root: PathBuf) -> Result<()> {
    let root = args.pin_root.unwrap_or(config_pin_root);
    let dir = pin_dir(&root);
    let mut maps = PinnedMaps::open(&dir)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        XdpCommand::Status => write!(out, "{}", status(&maps)?)?,
        XdpCommand::Block { cidr, ttl } => {
            let net = parse_cidr(&cidr)?;
            maps.block(net, ttl.map(Into::into))?;
            writeln!(out, "blocked {net}{}", ttl_text(ttl))?;
        }
        XdpCommand::Unblock { cidr } => {
            let net = parse_cidr(&cidr)?;
            if !maps.unblock(net)? {
                bail!("{net} was not blocked");
            }
            writeln!(out, "unblocked {net}")?;
        }
        XdpCommand::Allow { cidr } => {
            let net = parse_cidr(&cidr)?;
            maps.allow(net)?;
            writeln!(out, "allowed {net}")?;
        }
        XdpCommand::Unallow { cidr } => {
            let net = parse_cidr(&cidr)?;
            if !maps.unallow(net)? {
                bail!("{net} was not in the allow list");
            }
            writeln!(out, "removed {net} from the allow list")?;
        }
        XdpCommand::Score { ip, score, ttl } => {
            maps.set_score(ip, score, ttl.map(Into::into))?;
            let threshold = maps.config()?.drop_threshold;
            let effect = if threshold != 0 && score >= threshold {
                " (at or above the drop threshold: dropped)"
            } else {
                ""
            };
            writeln!(out, "score of {ip} = {score}{}{effect}", ttl_text(ttl))?;
        }
        XdpCommand::List => write!(out, "{}", listing(&maps.list()?))?,
        XdpCommand::Top { interval, count } => {
            drop(out);
            top(&maps, interval.into(), count)?;
        }
    }
    Ok(())
}

fn ttl_text(ttl: Option<humantime::Duration>) -> String {
    ttl.map(|t| format!(" for {t}")).unwrap_or_default()
}

fn expiry_text(expires_at_ns: u64) -> String {
    match remaining(expires_at_ns) {
        None => "never".into(),
        Some(d) if d.is_zero() => "expired".into(),
        Some(d) => humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string(),
    }
}

pub fn status(maps: &PinnedMaps) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "pinned maps: {}", maps.dir().display())?;
    let records = maps.attach_records()?;
    let live: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    if records.is_empty() {
        writeln!(s, "interfaces: none attached (userspace enforcement)")?;
    } else {
        writeln!(
            s,
            "{:<16} {:>7} {:<8} {:>8} {:<9} persistent",
            "interface", "ifindex", "mode", "prog id", "running"
        )?;
        for r in &records {
            let name = super::loader::ifname(r.ifindex).unwrap_or_else(|| "(gone)".into());
            let mode = match r.mode {
                m if m == AttachMode::Native as u32 => "native",
                m if m == AttachMode::Generic as u32 => "generic",
                _ => "none",
            };
            let running = if live.contains(&r.prog_id) {
                "yes"
            } else {
                "NO"
            };
            let persistent = if r.persistent != 0 { "yes" } else { "no" };
            writeln!(
                s,
                "{name:<16} {:>7} {mode:<8} {:>8} {running:<9} {persistent}",
                r.ifindex, r.prog_id
            )?;
        }
    }
    write!(s, "{}", config_text(&maps.config()?))?;
    write!(s, "{}", counters_text(&maps.counters()?))?;
    Ok(s)
}

fn config_text(c: &XdpConfig) -> String {
    let mut on = Vec::new();
    for (bit, name) in [
        (flags::ALLOW, "allow"),
        (flags::BLOCK, "block"),
        (flags::THREAT, "threat"),
        (flags::RATE_LIMIT, "rate-limit"),
        (flags::DROP_MALFORMED, "drop-malformed"),
        (flags::DEBUG_LOG, "debug-log"),
    ] {
        if c.flags & bit != 0 {
            on.push(name);
        }
    }
    let rate = |p: &edge_common::BucketParams| match 1_000_000_000u64.checked_div(p.interval_ns) {
        None => "unlimited".to_string(),
        Some(per_sec) => format!("{per_sec}/s burst {}", p.limit_ns / p.interval_ns),
    };
    let ports = &c.quic_ports[..(c.quic_port_count as usize).min(c.quic_ports.len())];
    format!(
        "features: {}\ndrop threshold: {}\nper-source budgets: packets {}, tcp syn {}, quic {} (udp ports {:?})\n",
        if on.is_empty() {
            "none".into()
        } else {
            on.join(", ")
        },
        c.drop_threshold,
        rate(&c.packets),
        rate(&c.tcp_syn),
        rate(&c.quic),
        ports
    )
}

fn counters_text(c: &Counters) -> String {
    let mut s = format!("{:<20} {:>14} {:>16}\n", "verdict", "packets", "bytes");
    for r in Reason::ALL {
        let Counter { packets, bytes } = c[r as usize];
        s.push_str(&format!("{:<20} {packets:>14} {bytes:>16}\n", r.name()));
    }
    s
}

pub(crate) fn listing(l: &Listing) -> String {
    let mut s = String::from("allow:\n");
    for n in &l.allow {
        s.push_str(&format!("  {n}\n"));
    }
    s.push_str("block:                                   expires in\n");
    for (n, e) in &l.block {
        s.push_str(&format!("  {:<40} {}\n", n.to_string(), expiry_text(*e)));
    }
    s.push_str("scores:                                  score  expires in\n");
    for (net, score, e) in &l.scores {
        // A host as its address; an IPv6 source prefix (xdp.ipv6_source_prefix) as such.
        let source = if net.prefix_len() == net.max_prefix_len() {
            net.addr().to_string()
        } else {
            net.to_string()
        };
        s.push_str(&format!("  {source:<40} {score:>5}  {}\n", expiry_text(*e)));
    }
    s
}

fn top(maps: &PinnedMaps, interval: Duration, count: Option<u64>) -> Result<()> {
    if interval.is_zero() {
        bail!("--interval must be positive");
    }
    let mut prev = maps.counters().context("reading counters")?;
    let mut at = Instant::now();
    let mut n = 0u64;
    loop {
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
        let now = maps.counters()?;
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        let mut line = String::new();
        for r in Reason::ALL {
            let d = now[r as usize]
                .packets
                .saturating_sub(prev[r as usize].packets);
            if d > 0 || r == Reason::Pass {
                line.push_str(&format!("{}={:.0}/s ", r.name(), d as f64 / secs));
            }
        }
        let dropped: u64 = Reason::ALL
            .iter()
            .filter(|r| r.is_drop())
            .map(|r| {
                now[*r as usize]
                    .packets
                    .saturating_sub(prev[*r as usize].packets)
            })
            .sum();
        println!("dropped={:.0}/s {line}", dropped as f64 / secs);
        prev = now;
        n += 1;
    }
}

const _: () = assert!(REASON_COUNT as usize == Reason::ALL.len());

//! `[xdp]` configuration and its translation into the kernel's [`XdpConfig`].

use std::path::PathBuf;

use anyhow::{Result, bail};
use edge_common::{ABI_VERSION, BucketParams, MAX_QUIC_PORTS, XdpConfig, flags};
use ipnet::IpNet;
use serde::Deserialize;

/// How the program is attached.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModeSetting {
    /// Native where the driver supports it, else generic; if neither works the node keeps
    /// running with userspace enforcement and a loud warning.
    #[default]
    Auto,
    /// Driver (native) mode only.
    Native,
    /// Generic (skb) mode only.
    #[serde(alias = "skb")]
    Generic,
    /// Do not load XDP: userspace enforcement only.
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpSettings {
    #[serde(default)]
    pub mode: ModeSetting,
    /// Refuse to start unless the program is attached to every interface.
    #[serde(default)]
    pub strict: bool,
    /// Interfaces to attach to.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// bpffs directory for pinned maps and links (a `v<ABI>` folder is made inside).
    #[serde(default = "default_pin_root")]
    pub pin_root: PathBuf,
    /// Keep the program attached (pinned link) while edge-node is stopped or restarting.
    #[serde(default)]
    pub keep_attached: bool,
    /// Threat score at or above which a source's packets are dropped (0 = never).
    #[serde(default = "default_drop_threshold")]
    pub drop_threshold: u32,
    /// Drop truncated/malformed packets instead of passing them to the kernel stack.
    #[serde(default)]
    pub drop_malformed: bool,
    /// Log every drop from inside the program (aya-log). Costs per packet: debugging only.
    #[serde(default)]
    pub debug_log: bool,
    /// Prefixes that are never dropped (management networks).
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Prefixes that are always dropped.
    #[serde(default)]
    pub block: Vec<IpNet>,
    /// Leading bits of an IPv6 source address that name the source for budgets and
    /// threat scores (in the kernel and in userspace): a host usually has a whole /64 to
    /// rotate through. 32..=128; IPv4 sources are always per address.
    #[serde(default = "default_ipv6_source_prefix")]
    pub ipv6_source_prefix: u8,
    #[serde(default)]
    pub rate: RateSettings,
}

/// Per-source packet budgets. A rate of 0 disables that budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSettings {
    #[serde(default = "default_packets_per_sec")]
    pub packets_per_sec: u64,
    #[serde(default = "default_packets_burst")]
    pub packets_burst: u64,
    #[serde(default = "default_syn_per_sec")]
    pub syn_per_sec: u64,
    #[serde(default = "default_syn_burst")]
    pub syn_burst: u64,
    #[serde(default = "default_quic_per_sec")]
    pub quic_per_sec: u64,
    #[serde(default = "default_quic_burst")]
    pub quic_burst: u64,
    /// UDP ports whose datagrams count against the QUIC budget (at most 8).
    #[serde(default = "default_quic_ports")]
    pub quic_ports: Vec<u16>,
}

fn default_pin_root() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/edge-node")
}
fn default_drop_threshold() -> u32 {
    100
}
/// A /64 is what one subscriber line or host usually gets.
pub const DEFAULT_IPV6_SOURCE_PREFIX: u8 = 64;
fn default_ipv6_source_prefix() -> u8 {
    DEFAULT_IPV6_SOURCE_PREFIX
}
// Generous enough for a client downloading at line rate (ACKs), tight enough to stop a
// single source flooding.
fn default_packets_per_sec() -> u64 {
    50_000
}
fn default_packets_burst() -> u64 {
    100_000
}
fn default_syn_per_sec() -> u64 {
    100
}
fn default_syn_burst() -> u64 {
    200
}
fn default_quic_per_sec() -> u64 {
    20_000
}
fn default_quic_burst() -> u64 {
    40_000
}
fn default_quic_ports() -> Vec<u16> {
    vec![443]
}

impl Default for RateSettings {
    fn default() -> Self {
        Self {
            packets_per_sec: default_packets_per_sec(),
            packets_burst: default_packets_burst(),
            syn_per_sec: default_syn_per_sec(),
            syn_burst: default_syn_burst(),
            quic_per_sec: default_quic_per_sec(),
            quic_burst: default_quic_burst(),
            quic_ports: default_quic_ports(),
        }
    }
}

impl Default for XdpSettings {
    fn default() -> Self {
        Self {
            mode: ModeSetting::default(),
            strict: false,
            interfaces: Vec::new(),
            pin_root: default_pin_root(),
            keep_attached: false,
            drop_threshold: default_drop_threshold(),
            drop_malformed: false,
            debug_log: false,
            allow: Vec::new(),
            block: Vec::new(),
            ipv6_source_prefix: default_ipv6_source_prefix(),
            rate: RateSettings::default(),
        }
    }
}

impl XdpSettings {
    pub fn validate(&self) -> Result<()> {
        if self.rate.quic_ports.len() > MAX_QUIC_PORTS {
            bail!(
                "rate.quic_ports lists {} ports, at most {MAX_QUIC_PORTS} are supported",
                self.rate.quic_ports.len()
            );
        }
        if !(32..=128).contains(&self.ipv6_source_prefix) {
            bail!(
                "ipv6_source_prefix = {} is outside 32..=128",
                self.ipv6_source_prefix
            );
        }
        if self.strict && self.mode == ModeSetting::Off {
            bail!("strict = true with mode = \"off\" can never start");
        }
        if self.strict && self.interfaces.is_empty() {
            bail!("strict = true needs at least one entry in interfaces");
        }
        for iface in &self.interfaces {
            if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('/') {
                bail!("interfaces: {iface:?} is not a valid interface name");
            }
        }
        if !self.pin_root.is_absolute() {
            bail!("pin_root must be an absolute path");
        }
        Ok(())
    }

    /// The versioned directory holding this node's pinned maps.
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(&self.pin_root)
    }

    /// The configuration the kernel program reads.
    pub fn kernel_config(&self) -> XdpConfig {
        let r = &self.rate;
        let mut f = flags::ALLOW | flags::BLOCK;
        if self.drop_threshold != 0 {
            f |= flags::THREAT;
        }
        if r.packets_per_sec != 0 || r.syn_per_sec != 0 || r.quic_per_sec != 0 {
            f |= flags::RATE_LIMIT;
        }
        if self.drop_malformed {
            f |= flags::DROP_MALFORMED;
        }
        if self.debug_log {
            f |= flags::DEBUG_LOG;
        }
        let mut quic_ports = [0u16; MAX_QUIC_PORTS];
        for (slot, port) in quic_ports.iter_mut().zip(&r.quic_ports) {
            *slot = *port;
        }
        XdpConfig {
            flags: f,
            drop_threshold: self.drop_threshold,
            quic_port_count: r.quic_ports.len().min(MAX_QUIC_PORTS) as u32,
            ipv6_source_prefix: u32::from(self.ipv6_source_prefix),
            quic_ports,
            packets: BucketParams::from_rate(r.packets_per_sec, r.packets_burst),
            tcp_syn: BucketParams::from_rate(r.syn_per_sec, r.syn_burst),
            quic: BucketParams::from_rate(r.quic_per_sec, r.quic_burst),
            bucket_seed: 0,
        }
    }
}

/// `<root>/v<ABI_VERSION>`.
pub fn pin_dir(root: &std::path::Path) -> PathBuf {
    root.join(format!("v{ABI_VERSION}"))
}

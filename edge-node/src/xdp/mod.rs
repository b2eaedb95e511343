//! The kernel half as seen from userspace: load and attach the XDP program, keep its
//! pinned maps in sync with the configuration, forward its logs, and fall back to
//! userspace enforcement (loudly) where XDP cannot run. The only module that uses aya.

pub mod addr;
pub mod cli;
pub mod enforce;
pub mod loader;
pub mod maps;
pub mod settings;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;
use ipnet::IpNet;
use tokio::{io::unix::AsyncFd, task::JoinHandle};
use tracing::{error, info, warn};

pub use enforce::{KernelPolicy, SourcePolicy, UserspacePolicy};
pub use loader::Attachment;
pub use maps::PinnedMaps;
pub use settings::{ModeSetting, XdpSettings};

/// Who enforces the source policy, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// The program runs on every configured interface.
    Kernel,
    /// Packets are not filtered in the kernel; userspace checks each connection.
    Userspace { reason: String },
}

pub type SharedPolicy = Arc<Mutex<Box<dyn SourcePolicy>>>;

/// The running XDP side of a node.
pub struct XdpHandle {
    loaded: Option<Loaded>,
    policy: SharedPolicy,
    enforcement: Enforcement,
    /// Allow/block entries that came from the config file (replaced on reload).
    config_allow: BTreeSet<IpNet>,
    config_block: BTreeSet<IpNet>,
    /// Seed of the kernel's bucket-slot hash: random, kept across restarts (read back from
    /// the pinned config) so the buckets stay valid.
    bucket_seed: u64,
}

/// A random u64 from the kernel's generator.
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: valid buffer of 8 bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        // Never 0: 0 would mean "no seed yet" on the next start.
        crate::clock::now_ns() | 1
    }
}

struct Loaded {
    // Owns the program and its non-persistent links: dropping it detaches them.
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    keep_attached: bool,
    pin_dir: std::path::PathBuf,
    log_task: Option<JoinHandle<()>>,
    /// Links this program owns unpinned (no keep_attached): an upgrade pins them first.
    owned_links: Vec<(String, aya::programs::xdp::XdpLinkId)>,
}

impl XdpHandle {
    /// Loads and attaches per `settings`. In auto mode every failure degrades to
    /// userspace enforcement with an error-level log; in strict mode it is an error.
    pub fn start(settings: &XdpSettings, trusted_proxies: &[IpNet]) -> Result<Self> {
        let mut bucket_seed = random_seed();
        let (loaded, policy, enforcement) = match Self::start_kernel(settings, &mut bucket_seed) {
            Ok((loaded, maps)) => {
                let missing = settings.interfaces.len() - loaded.attachments.len();
                let enforcement = if loaded.attachments.is_empty() {
                    Enforcement::Userspace {
                        reason: if settings.interfaces.is_empty() {
                            "no interfaces configured (xdp.interfaces)".into()
                        } else {
                            "XDP could not attach to any configured interface".into()
                        },
                    }
                } else if missing > 0 {
                    Enforcement::Userspace {
                        reason: format!("XDP attached to only some interfaces ({missing} failed)"),
                    }
                } else {
                    Enforcement::Kernel
                };
                let attached = enforcement == Enforcement::Kernel;
                let policy: Box<dyn SourcePolicy> = Box::new(KernelPolicy::new(maps, attached));
                (Some(loaded), policy, enforcement)
            }
            Err(e) => {
                if settings.strict {
                    return Err(e.context("XDP is required (xdp.strict = true)"));
                }
                let policy: Box<dyn SourcePolicy> =
                    Box::new(UserspacePolicy::new(settings.kernel_config()));
                (
                    None,
                    policy,
                    Enforcement::Userspace {
                        reason: format!("{e:#}"),
                    },
                )
            }
        };
        if settings.strict && enforcement != Enforcement::Kernel {
            bail!(
                "XDP is required (xdp.strict = true) but not attached everywhere: {enforcement:?}"
            );
        }
        match &enforcement {
            Enforcement::Kernel => info!("source policy enforced in the kernel (XDP)"),
            // Nothing asked for: the embedded default and nodes that filter elsewhere.
            Enforcement::Userspace { .. } if settings.interfaces.is_empty() => info!(
                "XDP not in use (no xdp.interfaces configured): the source policy is \
                 enforced in userspace; name interfaces to filter at the NIC"
            ),
            Enforcement::Userspace { reason } => error!(
                %reason,
                "XDP NOT ACTIVE: packets are not filtered at the NIC; edge-node enforces the source policy in userspace"
            ),
        }
        let mut handle = Self {
            loaded,
            policy: Arc::new(Mutex::new(policy)),
            enforcement,
            config_allow: BTreeSet::new(),
            config_block: BTreeSet::new(),
            bucket_seed,
        };
        // Entries an earlier run took from its config file are this file's to keep or
        // drop: a prefix removed from the file must not outlive a restart.
        {
            let policy = handle.policy.lock().expect("policy lock");
            let (allow, block) = policy.configured()?;
            handle.config_allow = allow.into_iter().collect();
            handle.config_block = block.into_iter().collect();
        }
        handle.apply(settings, trusted_proxies)?;
        Ok(handle)
    }

    fn start_kernel(settings: &XdpSettings, bucket_seed: &mut u64) -> Result<(Loaded, PinnedMaps)> {
        if settings.mode == ModeSetting::Off {
            bail!("xdp.mode = \"off\"");
        }
        let pin_dir = settings.pin_dir();
        let mut ebpf = loader::load(&pin_dir)?;
        let mut maps = PinnedMaps::open(&pin_dir)?;
        let previous = maps.config()?.bucket_seed;
        if previous != 0 {
            *bucket_seed = previous;
        }
        // Configure before attaching so the first packet already sees the policy.
        let mut config = settings.kernel_config();
        config.bucket_seed = *bucket_seed;
        maps.set_config(&config)?;
        let log_task = spawn_log_forwarder(&mut ebpf);
        loader::forget_unlisted(&mut maps, &settings.interfaces)?;
        let mut attachments = Vec::new();
        let mut owned_links = Vec::new();
        for iface in &settings.interfaces {
            match loader::attach(&mut ebpf, &mut maps, settings, iface) {
                Ok((a, link)) => {
                    if let Some(id) = link {
                        owned_links.push((iface.clone(), id));
                    }
                    attachments.push(a)
                }
                Err(e) if settings.strict => return Err(e),
                Err(e) => {
                    error!(interface = %iface, error = %format!("{e:#}"), "XDP attach failed")
                }
            }
        }
        Ok((
            Loaded {
                ebpf,
                attachments,
                keep_attached: settings.keep_attached,
                pin_dir,
                log_task,
                owned_links,
            },
            maps,
        ))
    }

    /// Applies (re)loaded settings: the kernel config and the config-owned allow/block
    /// entries. Entries added at run time (CLI, policy engine) are left alone. Trusted
    /// proxies (`http.trusted_proxies`) are allowed too: one carries many clients, and
    /// a per-source budget at the NIC would drop them all for its traffic.
    pub fn apply(&mut self, settings: &XdpSettings, trusted_proxies: &[IpNet]) -> Result<()> {
        let mut policy = self.policy.lock().expect("policy lock");
        let allow: BTreeSet<IpNet> = settings
            .allow
            .iter()
            .chain(trusted_proxies)
            .map(IpNet::trunc)
            .collect();
        let block: BTreeSet<IpNet> = settings.block.iter().map(IpNet::trunc).collect();
        for gone in self.config_allow.difference(&allow) {
            policy.unallow(*gone)?;
        }
        for gone in self.config_block.difference(&block) {
            policy.unblock(*gone)?;
        }
        for net in &allow {
            policy.allow_configured(*net).context("allow from config")?;
        }
        for net in &block {
            policy.block_configured(*net).context("block from config")?;
        }
        // The kernel config last: a failure above leaves the running thresholds alone.
        let mut config = settings.kernel_config();
        config.bucket_seed = self.bucket_seed;
        policy.set_config(&config)?;
        self.config_allow = allow;
        self.config_block = block;
        Ok(())
    }

    pub fn policy(&self) -> SharedPolicy {
        self.policy.clone()
    }

    /// The kernel's counters, readable without the policy's lock (none without the
    /// program loaded).
    pub fn stats_reader(&self) -> Option<maps::StatsReader> {
        let loaded = self.loaded.as_ref()?;
        maps::StatsReader::open(&loaded.pin_dir)
            .inspect_err(|e| tracing::warn!(error = %format!("{e:#}"), "XDP counters unreadable"))
            .ok()
    }

    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    pub fn attachments(&self) -> &[Attachment] {
        self.loaded.as_ref().map_or(&[], |l| &l.attachments)
    }

    /// Once the node runs: links taken over from a pin without keep_attached are this
    /// process's alone again (the pin kept them attached while it started; a crash later
    /// detaches them, as keep_attached = false says).
    pub fn settle(&mut self) {
        if let Some(l) = &self.loaded {
            for (iface, _) in &l.owned_links {
                loader::unpin_owned(&l.pin_dir, iface);
            }
        }
    }

    /// Before an upgrade: every link attached to the program is pinned, so the new
    /// process takes it over and nothing detaches when this one exits.
    pub fn prepare_handover(&mut self) -> Result<()> {
        let Some(l) = self.loaded.as_mut() else {
            return Ok(());
        };
        for (iface, id) in std::mem::take(&mut l.owned_links) {
            loader::pin_for_handover(&mut l.ebpf, &l.pin_dir, &iface, id)?;
        }
        Ok(())
    }

    /// After an upgrade: the new process runs the pinned links and maps. Nothing is
    /// detached, unpinned or forgotten; the log forwarder stops and the program's handle
    /// goes.
    pub fn handed_over(mut self) {
        if let Some(loaded) = self.loaded.take() {
            if let Some(task) = &loaded.log_task {
                task.abort();
            }
            info!("XDP left to the new process: links and maps stay pinned");
        }
    }

    /// Detaches (unless keep_attached) and stops forwarding logs. Maps stay pinned, so
    /// blocks and scores are there for the next start.
    pub fn shutdown(mut self) -> Result<()> {
        let Some(loaded) = self.loaded.take() else {
            return Ok(());
        };
        if let Some(task) = &loaded.log_task {
            task.abort();
        }
        let mut maps = PinnedMaps::open(&loaded.pin_dir)?;
        for att in &loaded.attachments {
            loader::detach(&mut maps, att, loaded.keep_attached)?;
        }
        // Dropping the program releases the links that were not pinned: detached.
        drop(loaded.ebpf);
        Ok(())
    }
}

/// Forwards aya-log records from the program into edge-node's log (tracing).
fn spawn_log_forwarder(ebpf: &mut Ebpf) -> Option<JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "XDP log forwarding unavailable");
            return None;
        }
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return None;
    };
    Some(handle.spawn(async move {
        // SAFETY: the logger owns the ring buffer's fd, which therefore stays open for as
        // long as the AsyncFd (which owns the logger) is registered.
        let Ok(mut fd) =
            (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
        else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

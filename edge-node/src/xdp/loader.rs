//! Loading the embedded program, pinning its maps, attaching it to interfaces and
//! detaching it again. The only place that drives aya's program API.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use edge_common::{AttachMode, AttachRecord, PROGRAM_NAME};
use tracing::{info, warn};

use super::{
    maps::PinnedMaps,
    settings::{ModeSetting, XdpSettings},
};

/// The XDP object built by build.rs (empty when built with EDGE_NODE_NO_XDP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edge-xdp"));

/// The embedded object, if this binary was built with one.
pub fn object() -> Option<&'static [u8]> {
    (!OBJECT.is_empty()).then_some(OBJECT)
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `dir` exists on a bpffs, mounting bpffs at /sys/fs/bpf if needed.
pub fn prepare_pin_dir(dir: &Path) -> Result<()> {
    if !is_bpffs(Path::new("/sys/fs/bpf")) && dir.starts_with("/sys/fs/bpf") {
        let src = CString::new("bpf").expect("static");
        let target = CString::new("/sys/fs/bpf").expect("static");
        // SAFETY: valid C strings; mounting bpffs has no other preconditions.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "bpffs is not mounted at /sys/fs/bpf and mounting it failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if !is_bpffs(dir) {
        bail!(
            "{} is not on a bpffs (mount -t bpf bpf <dir>)",
            dir.display()
        );
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Loads and verifies the program; its maps are pinned in `pin_dir`, and maps already
/// pinned there (from an earlier run) are reused, so blocks and scores survive restarts.
pub fn load(pin_dir: &Path) -> Result<Ebpf> {
    let object = object().ok_or_else(|| {
        anyhow!("this edge-node was built without its XDP program (EDGE_NODE_NO_XDP=1)")
    })?;
    prepare_pin_dir(pin_dir)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(object)
        .context("loading the XDP object (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
    program(&mut ebpf)?
        .load()
        .context("the kernel rejected the XDP program")?;
    Ok(ebpf)
}

pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| anyhow!("object has no program {PROGRAM_NAME}"))?;
    Ok(prog.try_into()?)
}

/// Removes the pinned maps and links of `pin_dir` (used by tests and `xdp purge`).
pub fn unpin_all(pin_dir: &Path) -> Result<()> {
    if pin_dir.exists() {
        fs::remove_dir_all(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    }
    Ok(())
}

/// One interface the program is attached to.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    pub prog_id: u32,
    /// Link pinned in bpffs: stays attached while edge-node is down.
    pub persistent: bool,
}

fn link_pin_path(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join("links").join(interface)
}

pub fn ifindex(interface: &str) -> Result<u32> {
    let c = CString::new(interface).context("interface name")?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no such interface: {interface}");
    }
    Ok(idx)
}

pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buffer of IF_NAMESIZE bytes as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Set by a process started by an upgrade (`App::inherit`): see `attach`.
pub static INHERITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Attaches the loaded program to `interface` in the configured mode. A link pinned by an
/// earlier run (keep_attached) or by a node handing over to this one (an upgrade) is
/// taken over atomically: the link is updated to this program, no packet goes
/// unfiltered, and the pin stays (a process that dies while starting leaves the
/// program attached). Returns the link's id while this program owns it unpinned (what
/// an upgrade must pin before handing over).
pub fn attach(
    ebpf: &mut Ebpf,
    maps: &mut PinnedMaps,
    settings: &XdpSettings,
    interface: &str,
) -> Result<(Attachment, Option<aya::programs::xdp::XdpLinkId>)> {
    let ifindex = ifindex(interface)?;
    let pin_path = link_pin_path(maps.dir(), interface);
    let prev_mode = maps
        .attach_records()?
        .into_iter()
        .find(|r| r.ifindex == ifindex)
        .map(|r| r.mode);
    let xdp = program(ebpf)?;
    let prog_id = xdp.info()?.id();

    let mut taken_over = None;
    if pin_path.exists() {
        match take_over(xdp, &pin_path) {
            Ok(id) => taken_over = Some(id),
            // A process taking over from an upgrade leaves the pin alone: it is what
            // keeps the running node's program attached, and that node serves on.
            Err(e) if INHERITING.load(std::sync::atomic::Ordering::Relaxed) => {
                return Err(e.context(format!(
                    "upgrade: cannot take over the pinned XDP link of {interface} (the running node keeps it)"
                )));
            }
            Err(e) => {
                warn!(interface, error = %format!("{e:#}"), "could not take over the pinned XDP link; attaching anew");
                let _ = fs::remove_file(&pin_path);
            }
        }
    }
    let mut owned = None;
    let mut persistent = false;
    let was_taken_over = taken_over.is_some();
    let mode = if let Some(link_id) = taken_over {
        // Still pinned: persistent when the configuration keeps it attached; otherwise
        // this program owns it and `unpin_owned` removes the pin once the node runs.
        persistent = settings.keep_attached;
        if !persistent {
            owned = Some(link_id);
        }
        match prev_mode {
            Some(m) if m == AttachMode::Native as u32 => AttachMode::Native,
            _ => AttachMode::Generic,
        }
    } else {
        let (link_id, mode) = attach_fresh(xdp, interface, settings.mode)?;
        if settings.keep_attached {
            let link = xdp.take_link(link_id)?;
            match FdLink::try_from(link) {
                Ok(fd_link) => {
                    pin(fd_link, &pin_path)?;
                    persistent = true;
                }
                Err(e) => {
                    warn!(interface, error = %e, "kernel attached XDP through netlink; keep_attached needs bpf links (Linux 5.9+)");
                }
            }
        } else {
            owned = Some(link_id);
        }
        mode
    };

    let rec = AttachRecord {
        ifindex,
        mode: mode as u32,
        prog_id,
        persistent: persistent as u32,
        attached_at_ns: crate::clock::now_ns(),
    };
    maps.record_attach(rec)?;
    info!(interface, ifindex, mode = ?mode, prog_id, persistent, taken_over = was_taken_over, "XDP program attached");
    Ok((
        Attachment {
            interface: interface.to_string(),
            ifindex,
            mode,
            prog_id,
            persistent,
        },
        owned,
    ))
}

/// Pins `link` at `pin_path`; the pin keeps the program attached, the handle may go.
fn pin(link: FdLink, pin_path: &Path) -> Result<()> {
    if let Some(parent) = pin_path.parent() {
        fs::create_dir_all(parent)?;
    }
    let _ = fs::remove_file(pin_path);
    let pinned = link
        .pin(pin_path)
        .with_context(|| format!("pinning the link at {}", pin_path.display()))?;
    drop(pinned);
    Ok(())
}

/// Before an upgrade: pins the link this program owns on `interface`, so the new process
/// takes it over (an unpinned link would detach when this process exits, and a second
/// XDP link on the interface is refused). Shutting down without handing over still
/// detaches it (`detach` unpins what is not persistent).
pub fn pin_for_handover(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    interface: &str,
    link_id: aya::programs::xdp::XdpLinkId,
) -> Result<()> {
    let link = program(ebpf)?.take_link(link_id)?;
    let fd_link = FdLink::try_from(link).map_err(|e| {
        anyhow!("XDP on {interface} is attached through netlink, not a bpf link (Linux 5.9+): it cannot be handed over ({e})")
    })?;
    pin(fd_link, &link_pin_path(pin_dir, interface))
}

/// Removes the pin of a link this program owns (one taken over without keep_attached):
/// the link is the program's again, and goes when the process does.
pub fn unpin_owned(pin_dir: &Path, interface: &str) {
    let _ = fs::remove_file(link_pin_path(pin_dir, interface));
}

/// Updates the pinned link to this program; the pin stays where it is.
fn take_over(xdp: &mut Xdp, pin_path: &Path) -> Result<aya::programs::xdp::XdpLinkId> {
    let fd_link: FdLink = PinnedLink::from_pin(pin_path)?.into();
    let link = XdpLink::try_from(fd_link)?;
    Ok(xdp.attach_to_link(link)?)
}

fn attach_fresh(
    xdp: &mut Xdp,
    interface: &str,
    mode: ModeSetting,
) -> Result<(aya::programs::xdp::XdpLinkId, AttachMode)> {
    match mode {
        ModeSetting::Native => Ok((
            xdp.attach(interface, XdpMode::Driver)
                .with_context(|| format!("native XDP on {interface}"))?,
            AttachMode::Native,
        )),
        ModeSetting::Generic => Ok((
            xdp.attach(interface, XdpMode::Skb)
                .with_context(|| format!("generic XDP on {interface}"))?,
            AttachMode::Generic,
        )),
        ModeSetting::Auto => match xdp.attach(interface, XdpMode::Driver) {
            Ok(id) => Ok((id, AttachMode::Native)),
            Err(native) => {
                let id = xdp.attach(interface, XdpMode::Skb).with_context(|| {
                    format!("neither native ({native}) nor generic XDP on {interface}")
                })?;
                warn!(
                    interface,
                    "native XDP unavailable ({native}); running in generic mode"
                );
                Ok((id, AttachMode::Generic))
            }
        },
        ModeSetting::Off => bail!("xdp.mode is off"),
    }
}

/// Detaches from `att` (unless it is persistent and `keep` is set) and forgets it.
pub fn detach(maps: &mut PinnedMaps, att: &Attachment, keep: bool) -> Result<()> {
    if att.persistent && keep {
        info!(interface = %att.interface, "leaving XDP attached (keep_attached)");
        return Ok(());
    }
    let pin_path = link_pin_path(maps.dir(), &att.interface);
    if pin_path.exists() {
        // Unpinning drops the last reference: the kernel detaches the program.
        let link = PinnedLink::from_pin(&pin_path)?.unpin()?;
        drop(link);
    }
    maps.forget_attach(att.ifindex)?;
    info!(interface = %att.interface, "XDP program detached");
    Ok(())
}

/// Detaches and forgets interfaces an earlier run attached to (pinned links, attach
/// records) that the configuration no longer lists.
pub fn forget_unlisted(maps: &mut PinnedMaps, interfaces: &[String]) -> Result<()> {
    let links = maps.dir().join("links");
    if let Ok(entries) = fs::read_dir(&links) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !interfaces.contains(&name) {
                // Unpinning drops the last reference: the kernel detaches the program.
                let released = PinnedLink::from_pin(entry.path())
                    .map_err(anyhow::Error::from)
                    .and_then(|l| Ok(l.unpin()?));
                match released {
                    Ok(link) => drop(link),
                    Err(e) => {
                        warn!(interface = %name, error = %format!("{e:#}"), "cannot release a pinned XDP link")
                    }
                }
                let _ = fs::remove_file(entry.path());
                info!(interface = %name, "detached: no longer in xdp.interfaces");
            }
        }
    }
    let listed: Vec<u32> = interfaces.iter().filter_map(|i| ifindex(i).ok()).collect();
    for rec in maps.attach_records()? {
        if !listed.contains(&rec.ifindex) {
            maps.forget_attach(rec.ifindex)?;
        }
    }
    Ok(())
}

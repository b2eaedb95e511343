//! Shared test support: the privilege gate, private bpffs mounts, throw-away network
//! namespaces, crafted packets, and the edge-node binary.

pub mod netns;
pub mod node;
pub mod packet;

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// True when the test may use privileged operations. Outside CI a non-root run skips
/// loudly; with CI=true a skip is a failure.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{test}: needs root (BPF, netns), and CI=true forbids skipping privileged tests"
    );
    eprintln!(
        "\n!!!!!!!! SKIPPED {test}: needs root (BPF programs, network namespaces). \
         Run `sudo -E cargo xtask test` to include it. !!!!!!!!\n"
    );
    false
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// A private bpffs mounted in a temporary directory, unmounted and removed on drop.
/// Tests pin their maps here, never in the system's /sys/fs/bpf.
pub struct BpfFs {
    path: PathBuf,
}

impl BpfFs {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique("edge-bpffs-"));
        std::fs::create_dir_all(&path).expect("create bpffs dir");
        let c = |s: &str| CString::new(s).unwrap();
        let target = c(path.to_str().unwrap());
        // SAFETY: valid C strings.
        let rc = unsafe {
            libc::mount(
                c("bpf").as_ptr(),
                target.as_ptr(),
                c("bpf").as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount bpffs: {}", std::io::Error::last_os_error());
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The versioned pin directory edge-node uses below this root.
    pub fn pin_dir(&self) -> PathBuf {
        edge_node::xdp::settings::pin_dir(&self.path)
    }
}

impl Default for BpfFs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let target = CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: valid C string; MNT_DETACH so a lingering fd cannot keep it busy.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The edge-node binary cargo built beside this executable (a test in
/// `target/<profile>/deps/`, or a tool in `target/<profile>/`); `EDGE_NODE_BIN` overrides.
pub fn edge_node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGE_NODE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    for candidate in [dir.join("edge-node"), dir.parent().expect("target dir").join("edge-node")] {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "edge-node is not built next to {}: run the tests with `cargo xtask test` \
         (or `cargo build -p edge-node` first)",
        exe.display()
    );
}

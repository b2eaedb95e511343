//! Shared test support: the privilege gate, private bpffs mounts, throw-away network
//! namespaces, crafted packets, and the edge-node binary.

pub mod fleet;
pub mod h3;
pub mod jwt;
pub mod netns;
pub mod node;
pub mod origin;
pub mod packet;
pub mod proxy;
pub mod redis;
pub mod tls_origin;

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

/// A loopback port free a moment ago (another process may take it before it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory under the system's temporary one, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(name));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    for candidate in [
        dir.join("edge-node"),
        dir.parent().expect("target dir").join("edge-node"),
    ] {
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

/// One `GET /` (Host `app.test`, the bearer `auth`) from `src` on a fresh connection:
/// `Err` when the connection could not even be made (SYN dropped), else the status (0
/// when the server closed it unanswered).
pub fn http_from(src: &str, to: std::net::SocketAddr, auth: &str) -> std::io::Result<u16> {
    http_from_with(src, to, auth, "")
}

/// [`http_from`] with `extra` header lines (each ending in CRLF).
pub fn http_from_with(
    src: &str,
    to: std::net::SocketAddr,
    auth: &str,
    extra: &str,
) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut s = connect_from(src, to, std::time::Duration::from_millis(700))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let _ = write!(
        s,
        "GET / HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {auth}\r\n{extra}Connection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Ok(out
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// A TCP connection from source address `src` (IPv4) with a connect timeout: std can
/// neither bind before connecting nor time out a connect from a chosen address.
pub fn connect_from(
    src: &str,
    to: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let src: std::net::Ipv4Addr = src.parse().unwrap();
    // SAFETY: plain socket/bind calls with valid arguments; the fd is owned by TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(src).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(rc, 0, "bind {src}");
        let stream = std::net::TcpStream::from_raw_fd(fd);
        // Connect with a timeout through a non-blocking connect and poll.
        stream.set_nonblocking(true)?;
        let std::net::SocketAddr::V4(v4) = to else {
            unreachable!()
        };
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &dst as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(std::io::Error::last_os_error());
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let n = libc::poll(&mut pfd, 1, timeout.as_millis() as i32);
        if n <= 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ));
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

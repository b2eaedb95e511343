//! Zero-downtime binary upgrade: the running node starts the binary at its path on disk
//! (the replaced file) with its own arguments and hands it every listening socket; the
//! new process adopts them instead of binding, takes over the pinned XDP link and maps,
//! and says it is ready; only then does the old one stop accepting and drain.
//!
//! The sockets travel by inheritance, like nginx's binary upgrade and systemd's
//! `LISTEN_FDS`: the old process is the one that starts the new one, so the sockets
//! exist in the new process before it runs a line of code, with no rendezvous socket to
//! name, secure or clean up (Pingora passes them with SCM_RIGHTS over a unix socket
//! because its new process is started by someone else). In the child, between fork and
//! exec, FD_CLOEXEC is cleared on exactly the handed-over descriptors; the parent's copies
//! keep it, so nothing else the node starts inherits them. `EDGE_NODE_UPGRADE_FDS` names
//! them: `kind@configured-address=fd` joined by `;` (kinds `http`, `https`, `admin`,
//! `h3`; an h3 address has one UDP socket per worker, so it may appear several times).
//! `EDGE_NODE_UPGRADE_READY` is the write end of a pipe: the new process writes one byte
//! once its accept loops run. EOF first means it died; nothing within
//! [`READY_TIMEOUT`] means it is stopped. Either way the old process keeps serving.

use std::{
    ffi::OsString,
    io::{Read as _, Write as _},
    net::SocketAddr,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::process::CommandExt as _,
    },
    path::PathBuf,
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tracing::{info, warn};

pub const FDS_ENV: &str = "EDGE_NODE_UPGRADE_FDS";
pub const READY_ENV: &str = "EDGE_NODE_UPGRADE_READY";

/// How long the new process may take from exec to accepting (config, certificates,
/// functions' compilation, XDP load).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a handed-over socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Https,
    Admin,
    H3,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Https => "https",
            Kind::Admin => "admin",
            Kind::H3 => "h3",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "http" => Kind::Http,
            "https" => Kind::Https,
            "admin" => Kind::Admin,
            "h3" => Kind::H3,
            _ => return None,
        })
    }
}

/// A listening socket the running node hands over: what it serves, the address the
/// configuration named (port 0 included: the new process matches on that), its fd.
#[derive(Debug, Clone, Copy)]
pub struct Socket {
    pub kind: Kind,
    pub configured: SocketAddr,
    pub fd: RawFd,
}

static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Records the path of the running binary. Call first thing in `main`: later, once the
/// file has been replaced, the kernel names the running image `… (deleted)`, and the
/// upgrade must start the file now at that path.
pub fn record_exe() {
    EXE.get_or_init(|| {
        // The path it was started by (made absolute now, symlinks kept): a deploy that
        // points a symlink at a new release upgrades to that release. `current_exe`
        // (the resolved file) only when started through PATH.
        let invoked = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .filter(|p| p.components().count() > 1)
            .and_then(|p| std::path::absolute(p).ok())
            .filter(|p| p.is_file());
        invoked.or_else(|| {
            std::env::current_exe().ok().map(|p| {
                let s = p.as_os_str().to_string_lossy();
                match s.strip_suffix(" (deleted)") {
                    Some(orig) => PathBuf::from(orig),
                    None => p,
                }
            })
        })
    });
}

/// The binary the upgrade starts and its arguments (the running process's own).
pub fn successor_command() -> Result<(PathBuf, Vec<OsString>)> {
    record_exe();
    let exe = EXE
        .get()
        .cloned()
        .flatten()
        .ok_or_else(|| anyhow!("the path of the running binary is unknown"))?;
    Ok((exe, std::env::args_os().skip(1).collect()))
}

/// Sockets handed over by the process this one replaces.
pub struct Inherited {
    sockets: Vec<(Kind, SocketAddr, Option<OwnedFd>)>,
    ready: Option<OwnedFd>,
}

impl Inherited {
    /// Takes the handed-over sockets named in the environment (and removes the
    /// variables, so nothing this process starts sees them). `None` without them.
    ///
    /// Call while the process has one thread (first thing in `main`).
    pub fn from_env() -> Result<Option<Self>> {
        let (Some(fds), Some(ready)) = (std::env::var_os(FDS_ENV), std::env::var_os(READY_ENV))
        else {
            return Ok(None);
        };
        // SAFETY: called from main before any other thread exists (documented above).
        unsafe {
            std::env::remove_var(FDS_ENV);
            std::env::remove_var(READY_ENV);
        }
        let fds = fds.to_string_lossy().into_owned();
        let ready: RawFd = ready
            .to_string_lossy()
            .parse()
            .with_context(|| format!("{READY_ENV} is not a file descriptor"))?;
        let mut sockets = Vec::new();
        // Descriptors named twice, or the standard streams, are a broken (or hostile)
        // environment: adopting one would give it two owners.
        let mut seen = std::collections::HashSet::from([ready]);
        if ready < 3 {
            anyhow::bail!("{READY_ENV} names fd {ready}, a standard stream");
        }
        for entry in fds.split(';').filter(|e| !e.is_empty()) {
            let parsed = (|| {
                let (kind, rest) = entry.split_once('@')?;
                let (addr, fd) = rest.rsplit_once('=')?;
                Some((
                    Kind::parse(kind)?,
                    addr.parse().ok()?,
                    fd.parse::<RawFd>().ok()?,
                ))
            })();
            let (kind, addr, fd) =
                parsed.ok_or_else(|| anyhow!("{FDS_ENV}: cannot read {entry:?}"))?;
            if fd < 3 || !seen.insert(fd) {
                anyhow::bail!("{FDS_ENV}: fd {fd} is a standard stream or named twice");
            }
            sockets.push((kind, addr, Some(adopt_fd(fd)?)));
        }
        Ok(Some(Self {
            sockets,
            ready: Some(adopt_fd(ready)?),
        }))
    }

    /// The TCP listener handed over for `configured` (the address the configuration
    /// names), if there is one and it is listening where it should.
    pub fn tcp(&mut self, kind: Kind, configured: SocketAddr) -> Option<std::net::TcpListener> {
        let fd = self.take(kind, configured, socket2::Type::STREAM)?;
        let l = std::net::TcpListener::from(fd);
        if let Err(e) = l.set_nonblocking(true) {
            warn!(addr = %configured, error = %e, "handed-over listener unusable; binding anew");
            return None;
        }
        Some(l)
    }

    /// Every UDP socket handed over for the HTTP/3 address `configured`.
    pub fn udp(&mut self, configured: SocketAddr) -> Vec<std::net::UdpSocket> {
        let mut out = Vec::new();
        while let Some(fd) = self.take(Kind::H3, configured, socket2::Type::DGRAM) {
            let s = std::net::UdpSocket::from(fd);
            if s.set_nonblocking(true).is_ok() {
                out.push(s);
            }
        }
        out
    }

    fn take(&mut self, kind: Kind, configured: SocketAddr, ty: socket2::Type) -> Option<OwnedFd> {
        for (k, addr, slot) in &mut self.sockets {
            if *k != kind || *addr != configured || slot.is_none() {
                continue;
            }
            let fd = slot.take()?;
            let sock = socket2::SockRef::from(&fd);
            let local = sock.local_addr().ok().and_then(|a| a.as_socket());
            // A TCP socket must be listening (an fd number the old process reused for
            // an accepted connection is not a listener).
            let listening = ty != socket2::Type::STREAM || sock.is_listener().unwrap_or(false);
            let fits = listening
                && sock.r#type().is_ok_and(|t| t == ty)
                && local.is_some_and(|l| {
                    l.ip() == configured.ip()
                        && (configured.port() == 0 || l.port() == configured.port())
                });
            if fits {
                info!(kind = kind.as_str(), addr = ?local, "adopted a handed-over socket");
                return Some(fd);
            }
            warn!(kind = kind.as_str(), addr = %configured, local = ?local, "handed-over socket does not match its address; closed");
        }
        None
    }

    /// Closes what the configuration no longer listens on (the old process keeps its
    /// copies until it has drained).
    pub fn close_unclaimed(&mut self) {
        for (kind, addr, slot) in &mut self.sockets {
            if slot.take().is_some() {
                info!(kind = kind.as_str(), %addr, "handed-over socket no longer configured; closed");
            }
        }
    }

    /// Tells the old process that this one accepts: it stops accepting and drains.
    pub fn ready(&mut self) -> Result<()> {
        let fd = self
            .ready
            .take()
            .ok_or_else(|| anyhow!("ready already reported"))?;
        let mut pipe = std::fs::File::from(fd);
        pipe.write_all(b"R")
            .context("telling the old process we are ready")?;
        Ok(())
    }
}

/// Takes ownership of an inherited descriptor and sets FD_CLOEXEC on it again.
fn adopt_fd(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: fcntl on a plain integer; an invalid fd reports EBADF.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc == -1 {
        bail!(
            "inherited fd {fd} is not open: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the fd is open (checked above) and was handed to this process to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts `exe args` with `sockets` handed over and waits (on a blocking thread) until
/// it reports ready: its pid. On failure the new process is gone (stopped or reaped)
/// and the error says why.
pub async fn start_successor(
    exe: PathBuf,
    args: Vec<OsString>,
    sockets: Vec<Socket>,
    timeout: Duration,
) -> Result<u32> {
    tokio::task::spawn_blocking(move || start_blocking(exe, args, sockets, timeout))
        .await
        .map_err(|e| anyhow!("upgrade task: {e}"))?
}

fn start_blocking(
    exe: PathBuf,
    args: Vec<OsString>,
    sockets: Vec<Socket>,
    timeout: Duration,
) -> Result<u32> {
    let mut ends = [0 as RawFd; 2];
    // SAFETY: valid out-array of two fds.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let spec = sockets
        .iter()
        .map(|s| format!("{}@{}={}", s.kind.as_str(), s.configured, s.fd))
        .collect::<Vec<_>>()
        .join(";");
    let mut keep: Vec<RawFd> = sockets.iter().map(|s| s.fd).collect();
    keep.push(write_end.as_raw_fd());
    let mut cmd = Command::new(&exe);
    cmd.args(&args)
        .env(FDS_ENV, &spec)
        .env(READY_ENV, write_end.as_raw_fd().to_string());
    // SAFETY: only fcntl, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &keep {
                let flags = libc::fcntl(*fd, libc::F_GETFD);
                if flags == -1 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id();
    info!(pid, exe = %exe.display(), sockets = sockets.len(), "upgrade: new process started; waiting for it to accept");
    // Only the child's copy is left: its exit reads as EOF.
    drop(write_end);
    let mut pipe = std::fs::File::from(read_end);
    let deadline = Instant::now() + timeout;
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break Some(Err(e));
        }
        if n == 0 {
            continue;
        }
        let mut b = [0u8; 1];
        break Some(pipe.read(&mut b));
    };
    match ready {
        Some(Ok(1)) => Ok(pid),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the new process (pid {pid}) did not report ready within {}s; it was stopped",
                timeout.as_secs()
            )
        }
        Some(Ok(_)) | Some(Err(_)) => {
            // EOF: it exited (or is exiting) before it was ready.
            let start = Instant::now();
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if start.elapsed() < Duration::from_secs(5) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        break child.wait().ok();
                    }
                }
            };
            let status = status.map_or_else(|| "an unknown status".into(), |s| s.to_string());
            bail!(
                "the new process (pid {pid}) exited ({status}) before it was ready; its log says why"
            )
        }
    }
}

/// `edge-node upgrade`: asks the node running with this configuration to upgrade,
/// through its admin API (`POST /upgrade`, with the configured token), and waits for the
/// outcome: the new process's pid, or the reason it failed (an error).
pub fn request(admin: SocketAddr, token: &str) -> Result<String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream};
    let mut at = admin;
    // A wildcard address listens on loopback too.
    if at.ip().is_unspecified() {
        at.set_ip(match at.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let mut stream =
        TcpStream::connect_timeout(&at, Duration::from_secs(5)).with_context(|| {
            format!(
                "cannot reach the node's admin API at {at} (is it running with this configuration?)"
            )
        })?;
    stream.set_read_timeout(Some(READY_TIMEOUT + Duration::from_secs(15)))?;
    write!(
        stream,
        "POST /upgrade HTTP/1.1\r\nHost: {at}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("reading the node's answer")?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("unexpected answer from the admin API: {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .trim()
        .to_string();
    match status {
        200 => Ok(body),
        401 => bail!("the admin API refused the token (401)"),
        _ => bail!("{body} ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> (PathBuf, Vec<OsString>) {
        ("/bin/sh".into(), vec!["-c".into(), script.into()])
    }

    #[tokio::test]
    async fn ready_once_the_new_process_writes_its_byte_with_the_sockets_inherited() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = l.as_raw_fd();
        let socket = Socket {
            kind: Kind::Http,
            configured: "127.0.0.1:0".parse().unwrap(),
            fd,
        };
        // The child sees the listener open at the same number, and the spec naming it.
        let (exe, args) = sh(&format!(
            "test -e /proc/self/fd/{fd} && [ \"${FDS_ENV}\" = \"http@127.0.0.1:0={fd}\" ] && \
             printf R > /proc/self/fd/${READY_ENV} && sleep 1"
        ));
        let pid = start_successor(exe, args, vec![socket], Duration::from_secs(10))
            .await
            .unwrap();
        assert!(pid > 0);
        // This process's copy still has FD_CLOEXEC: nothing else it starts inherits it.
        // SAFETY: fcntl on an fd this test owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[tokio::test]
    async fn a_new_process_that_exits_before_ready_is_an_error_with_its_status() {
        let (exe, args) = sh("exit 3");
        let e = start_successor(exe, args, vec![], Duration::from_secs(10))
            .await
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("exited") && e.contains("3"), "{e}");
    }

    #[tokio::test]
    async fn a_new_process_that_never_reports_ready_is_stopped() {
        let (exe, args) = sh("sleep 30");
        let e = start_successor(exe, args, vec![], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("did not report ready"), "{e:#}");
    }

    #[tokio::test]
    async fn a_binary_that_is_not_there_is_an_error() {
        let e = start_successor(
            "/nonexistent/edge-node".into(),
            vec![],
            vec![],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("cannot start"), "{e:#}");
    }
}

//! A real HTTP/1.1 origin for tests: keep-alive, Content-Length bodies, and a body that
//! echoes what it received (method, path, headers, body size), counting its requests.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

pub struct Origin {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Status of `GET /healthz` (health checks).
    pub health_status: Arc<AtomicU16>,
    /// Milliseconds every other request waits before its answer.
    delay_ms: Arc<AtomicU64>,
    /// When not 0, every other request is answered with this status (an origin failing).
    pub fail_status: Arc<AtomicU16>,
    /// Conditional requests answered with 304 (they count as hits too).
    pub not_modified: Arc<AtomicUsize>,
    /// Every request served, as "METHOD path", in arrival order.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// TCP connections accepted (keep-alive reuse keeps this low).
    pub connections: Arc<AtomicUsize>,
    /// TCP connections open now.
    pub open: Arc<AtomicUsize>,
}

/// What the serving threads share.
#[derive(Clone)]
struct Shared {
    name: String,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    health_status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    fail_status: Arc<AtomicU16>,
    not_modified: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    /// Starts an origin on 127.0.0.1 (ephemeral port) named `name`.
    pub fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts an origin on `addr` (a port an origin that was killed used: it comes back).
    pub fn start_on(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).expect("bind origin");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            name: name.to_string(),
            hits: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            health_status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            fail_status: Arc::new(AtomicU16::new(0)),
            not_modified: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let origin = Self {
            addr,
            hits: shared.hits.clone(),
            stop: shared.stop.clone(),
            health_status: shared.health_status.clone(),
            delay_ms: shared.delay_ms.clone(),
            fail_status: shared.fail_status.clone(),
            not_modified: shared.not_modified.clone(),
            seen: shared.seen.clone(),
            connections: connections.clone(),
            open: open.clone(),
        };
        thread::spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        connections.fetch_add(1, Ordering::Relaxed);
                        open.fetch_add(1, Ordering::Relaxed);
                        let (shared, open) = (shared.clone(), open.clone());
                        thread::spawn(move || {
                            serve(conn, &shared);
                            open.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        origin
    }

    /// Stops listening and closes every connection: the origin is dead.
    pub fn kill(self) -> SocketAddr {
        self.stop.store(true, Ordering::Relaxed);
        // Let the accept loop notice and drop the listener.
        thread::sleep(Duration::from_millis(50));
        self.addr
    }

    /// How many requests for exactly "METHOD path" were served.
    pub fn served(&self, request: &str) -> usize {
        let seen = self.seen.lock().expect("seen");
        seen.iter().filter(|r| *r == request).count()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// TCP connections open now (the node has not closed them).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn not_modified(&self) -> usize {
        self.not_modified.load(Ordering::Relaxed)
    }

    /// Holds every response back this long from now on.
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(conn: TcpStream, shared: &Shared) {
    let (name, hits) = (&shared.name, &shared.hits);
    conn.set_nonblocking(false).ok();
    let idle_poll = Some(Duration::from_millis(100));
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut w = conn;
    loop {
        // Short waits between requests, so a killed origin closes its idle keep-alive
        // connections soon; a request once started gets 10 s.
        w.set_read_timeout(idle_poll).ok();
        let mut request_line = String::new();
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            match reader.read_line(&mut request_line) {
                Ok(0) => return,
                Ok(_) => break,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue;
                }
                Err(_) => return,
            }
        }
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        w.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut headers = Vec::new();
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end().to_string();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if k.eq_ignore_ascii_case("transfer-encoding")
                    && v.to_ascii_lowercase().contains("chunked")
                {
                    chunked = true;
                }
                headers.push(format!("{}: {}", k.to_ascii_lowercase(), v.trim()));
            }
        }
        // `early=1` in the query: answer before reading the request body (as an origin
        // refusing an upload does), then read it and stay on the connection.
        if request_line.contains("early=1") && !chunked {
            hits.fetch_add(1, Ordering::Relaxed);
            let resp = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nearly\n";
            let mut body = vec![0u8; length];
            if w.write_all(resp.as_bytes()).is_err() || reader.read_exact(&mut body).is_err() {
                return;
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("");
            shared
                .seen
                .lock()
                .expect("seen")
                .push(format!("POST {path} body={}", body.len()));
            continue;
        }
        let body = if chunked {
            match read_chunked(&mut reader) {
                Some(b) => b,
                None => return,
            }
        } else {
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if path == "/healthz" {
            let status = shared.health_status.load(Ordering::Relaxed);
            let resp = format!("HTTP/1.1 {status} Health\r\ncontent-length: 0\r\n\r\n");
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        hits.fetch_add(1, Ordering::Relaxed);
        shared
            .seen
            .lock()
            .expect("seen")
            .push(format!("{method} {path}"));
        let delay = shared.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay));
        }
        let fail = shared.fail_status.load(Ordering::Relaxed);
        if fail != 0 {
            let resp = format!(
                "HTTP/1.1 {fail} Failing\r\ncontent-length: 7\r\nx-origin: {name}\r\n\r\nfailed\n"
            );
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let text = format!(
            "origin={name}\nmethod={method}\npath={path}\nbody={}\n{}\n",
            body.len(),
            headers.join("\n")
        );
        // Response headers a test asks for in the query: `cc=` (Cache-Control), `cdncc=`
        // (CDN-Cache-Control), `location=`, `size=` (body bytes), `vary=`,
        // `tag=` (Surrogate-Key), `ctag=` (Cache-Tag), `cookie=` (Set-Cookie), `cookie304=` (Set-Cookie on a 304 only), `etag=` (a validator: a matching If-None-Match gets 304), `hints=N` (N 103 Early Hints first).
        let mut extra = String::new();
        let mut extra_304 = String::new();
        let mut etag = None;
        let mut html = false;
        let mut size = 0usize;
        let mut body_delay = 0u64;
        let mut close = false;
        let mut status = 200u16;
        let mut hints = 0usize;
        if let Some((_, q)) = path.split_once('?') {
            for pair in q.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = v
                    .replace("%3D", "=")
                    .replace("%2C", ",")
                    .replace("%20", " ")
                    .replace("%22", "\"");
                match k {
                    "cc" => extra.push_str(&format!("cache-control: {v}\r\n")),
                    "cdncc" => extra.push_str(&format!("cdn-cache-control: {v}\r\n")),
                    "location" => extra.push_str(&format!("location: {v}\r\n")),
                    "vary" => extra.push_str(&format!("vary: {v}\r\n")),
                    // An origin's own cache's verdict (it is not the node's).
                    "xcache" => extra.push_str(&format!("x-cache: {v}\r\n")),
                    "tag" => extra.push_str(&format!("surrogate-key: {v}\r\n")),
                    "ctag" => extra.push_str(&format!("cache-tag: {v}\r\n")),
                    "cookie" => extra.push_str(&format!("set-cookie: {v}\r\n")),
                    // A cookie set only on the 304 of a revalidation.
                    "cookie304" => extra_304.push_str(&format!("set-cookie: {v}\r\n")),
                    "html" => html = true,
                    // A body padded to at least this many bytes.
                    "size" => size = v.parse().unwrap_or(0),
                    // Half the body, a pause of this many ms, the rest.
                    "body_delay" => body_delay = v.parse().unwrap_or(0),
                    // Close the connection after this response without saying so (as an
                    // origin's keep-alive timeout does).
                    "close" => close = true,
                    // Answer with this status (the body as usual).
                    "status" => status = v.parse().unwrap_or(200),
                    // This many 103 (Early Hints) responses first, 50 ms apart.
                    "hints" => hints = v.parse().unwrap_or(0),
                    "etag" => {
                        extra.push_str(&format!("etag: \"{v}\"\r\n"));
                        etag = Some(format!("\"{v}\""));
                    }
                    _ => {}
                }
            }
        }
        // The same two as path segments, for clients that send no query: `/status-404`,
        // `/no-store` (Cache-Control: no-store).
        let bare = path.split('?').next().unwrap_or("");
        for seg in bare.split('/') {
            if let Some(code) = seg.strip_prefix("status-") {
                status = code.parse().unwrap_or(status);
            }
            if seg == "no-store" {
                extra.push_str("cache-control: no-store\r\n");
            }
        }
        let inm = headers
            .iter()
            .find_map(|h| h.strip_prefix("if-none-match: "));
        if let (Some(etag), Some(inm)) = (&etag, inm)
            && inm.split(',').any(|t| t.trim() == etag)
        {
            shared.not_modified.fetch_add(1, Ordering::Relaxed);
            let resp =
                format!("HTTP/1.1 304 Not Modified\r\nx-origin: {name}\r\n{extra}{extra_304}\r\n");
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let n = hits.load(Ordering::Relaxed);
        let text = if text.len() < size {
            let pad = size - text.len();
            format!("{text}{}", ".".repeat(pad))
        } else {
            text
        };
        // `html=1`: the same text inside a small HTML page (personalization rewrites it).
        let (content_type, text) = if html {
            (
                "text/html; charset=utf-8",
                format!(
                    "<html><head><title>t</title></head><body><h1 class=\"hero\">Original</h1>\
                     <pre>{text}</pre></body></html>"
                ),
            )
        } else {
            ("text/plain", text)
        };
        let resp = format!(
            "HTTP/1.1 {status} Status\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-origin: {name}\r\nx-hit: {n}\r\n{extra}\r\n{text}",
            text.len()
        );
        for i in 0..hints {
            let hint = format!(
                "HTTP/1.1 103 Early Hints\r\nlink: </style-{i}.css>; rel=preload; as=style\r\n\
                 x-origin-secret: {i}\r\n\r\n"
            );
            if w.write_all(hint.as_bytes())
                .and_then(|()| w.flush())
                .is_err()
            {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let (first, rest) = resp.as_bytes().split_at(resp.len() - text.len() / 2);
        if w.write_all(first).and_then(|()| w.flush()).is_err() {
            return;
        }
        if body_delay > 0 {
            thread::sleep(Duration::from_millis(body_delay));
        }
        if w.write_all(rest).is_err() || close {
            return;
        }
    }
}

/// A chunked body (RFC 9112 7.1); `None` if the connection broke or the framing is bad.
fn read_chunked(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let size = line.trim_end().split(';').next()?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if r.read_line(&mut t).ok()? == 0 {
                    return None;
                }
                if t.trim_end().is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).ok()?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).ok()?;
        if &crlf != b"\r\n" {
            return None;
        }
    }
}

//! An origin built on hyper that speaks HTTP/1.1 and HTTP/2 (prior knowledge over TCP,
//! or ALPN over TLS), answering with the protocol version and TLS server name it saw:
//! for the node's HTTP/2 and TLS toward origins. And the openssl-made certificates.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

pub struct HyperOrigin {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HyperOrigin {
    /// Serves on 127.0.0.1; with `tls` = (cert, key) PEM files, over TLS.
    pub fn start(name: &str, tls: Option<(&Path, &Path)>) -> Self {
        let acceptor = tls.map(|(cert, key)| {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let name = name.to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (stream, _) = tokio::select! {
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                        _ = &mut rx => break,
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let (name, acceptor) = (name.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        match acceptor {
                            None => serve(TokioIo::new(stream), name, None).await,
                            Some(a) => {
                                let Ok(tls) = a.accept(stream).await else {
                                    return;
                                };
                                let sni = tls.get_ref().1.server_name().map(str::to_string);
                                serve(TokioIo::new(tls), name, sni).await
                            }
                        }
                    });
                }
            });
        });
        Self {
            addr,
            connections,
            stop: Some(tx),
        }
    }
}

impl Drop for HyperOrigin {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn serve<I>(io: I, name: String, sni: Option<String>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let text = format!(
            "origin={name}\nversion={:?}\nsni={}\npath={}\n",
            req.version(),
            sni.as_deref().unwrap_or("-"),
            req.uri().path()
        );
        async move { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text)))) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

/// Runs openssl with `args` in `dir`; panics with its error output on failure.
pub fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.crt`) and a leaf it signed for `names` (`leaf.crt`, `leaf.key`) in `dir`.
pub fn make_ca_and_leaf(dir: &Path, names: &[&str]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=edge test CA",
    ]);
    openssl(&ca, dir);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-keyout", "leaf.key", "-out", "leaf.csr", "-subj"]);
    let cn = format!("/CN={}", names[0]);
    csr.push(&cn);
    openssl(&csr, dir);
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    std::fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "leaf.crt",
            "-extfile",
            "leaf.ext",
        ],
        dir,
    );
}

//! How a pool reaches its origins: this crate's HTTP/1.1 keep-alive pool for plain
//! origins, hyper's client (with its own trust roots and server name) for TLS and HTTP/2.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tracing::warn;

use super::{
    Pool, UpstreamSettings,
    h1pool::{ExchangeError, H1Pool, PooledBody},
    settings::OriginProtocol,
};
use crate::error::Body;

type OriginClient = Client<HttpsConnector<HttpConnector>, Body>;

/// How a pool reaches its origins. Either way one connection pool serves all workers.
#[derive(Clone)]
pub(super) enum Clients {
    /// Plain HTTP/1.1: this crate's keep-alive pool (the proxy's hot path), which
    /// prefers connections on the requesting worker's own thread.
    Plain(Arc<H1Pool>),
    /// TLS or HTTP/2 origins: one general client and keep-alive pool for every worker
    /// (an HTTP/2 origin sees one multiplexed connection, not one per core).
    General(Box<OriginClient>),
}

type OriginResponse = Response<Either<PooledBody, Incoming>>;

impl Clients {
    /// One exchange with the server `req`'s URI names.
    pub(super) async fn request(
        &self,
        req: Request<Body>,
    ) -> Result<OriginResponse, ExchangeError> {
        match self {
            Self::Plain(pool) => Ok(pool.request(req).await?.map(Either::Left)),
            Self::General(client) => match client.request(req).await {
                Ok(r) => Ok(r.map(Either::Right)),
                Err(e) => Err(ExchangeError {
                    connect: e.is_connect(),
                    source: Box::new(e),
                }),
            },
        }
    }
}

fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    // The https connector wraps it: let it take https:// URIs.
    http.enforce_http(false);
    http
}

impl Pool {
    fn builder() -> hyper_util::client::legacy::Builder {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        b
    }

    /// Clients of its own: HTTP/2 (prior knowledge or ALPN), or TLS with the pool's
    /// trust roots and server name.
    pub(super) fn dedicated_clients(&self, s: &UpstreamSettings) -> Result<Clients> {
        let mut roots = rustls::RootCertStore::empty();
        if s.tls {
            match &s.tls_ca_file {
                Some(path) => {
                    for cert in CertificateDer::pem_file_iter(path)
                        .with_context(|| format!("cannot read tls_ca_file {}", path.display()))?
                    {
                        let cert = cert
                            .with_context(|| format!("tls_ca_file {}: bad PEM", path.display()))?;
                        roots.add(cert).with_context(|| {
                            format!("tls_ca_file {}: not a CA certificate", path.display())
                        })?;
                    }
                }
                None => {
                    let native = rustls_native_certs::load_native_certs();
                    for e in &native.errors {
                        warn!(error = %e, "reading the system's CA certificates");
                    }
                    let (added, _) = roots.add_parsable_certificates(native.certs);
                    if added == 0 {
                        anyhow::bail!(
                            "tls = true but the system has no CA certificates: set tls_ca_file"
                        );
                    }
                }
            }
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = match s.protocol {
            OriginProtocol::Http2 => vec![b"h2".to_vec()],
            OriginProtocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        let http = http_connector(self.connect_timeout);
        let connector = match &s.tls_server_name {
            Some(name) => HttpsConnector::new(
                http,
                tls,
                s.tls,
                Arc::new(FixedServerNameResolver::new(ServerName::try_from(
                    name.clone(),
                )?)),
            ),
            None => HttpsConnector::new(
                http,
                tls,
                s.tls,
                Arc::new(hyper_rustls::DefaultServerNameResolver::default()),
            ),
        };
        let mut b = Self::builder();
        if s.protocol == OriginProtocol::Http2 {
            b.http2_only(true);
        }
        Ok(Clients::General(Box::new(b.build(connector))))
    }
}

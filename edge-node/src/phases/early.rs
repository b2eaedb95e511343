//! Early phase: the client behind trusted proxies, the request's one authority and its
//! canonical target, then header hygiene before anything trusts a header. With nothing
//! to do (a clean request) it only records the host.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use ipnet::IpNet;

use std::sync::Arc;

use hyper::body::Body as _;

use crate::{
    error::{Body, EdgeError, ErrorKind},
    headers,
    intent::Intent,
    policy::{Signal, ThreatEngine},
    request::{Flow, Phase, PhaseFuture, RequestCtx},
    target::PathSettings,
};

/// The early phase: the client, the authority and the canonical target; the intent
/// model's features (taken from the request as the client sent it); header hygiene;
/// a declared body over the limit; probes of blocked paths.
pub struct EarlyPhase {
    pub trusted_proxies: Vec<IpNet>,
    pub path_policy: PathSettings,
    pub max_body_bytes: u64,
    pub threat: Arc<ThreatEngine>,
    pub intent: Option<Arc<Intent>>,
}

impl Phase for EarlyPhase {
    fn name(&self) -> &'static str {
        "early"
    }

    fn early_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> PhaseFuture<'a> {
        Box::pin(std::future::ready(
            self.check(ctx, req).map(|()| Flow::Continue),
        ))
    }
}

impl EarlyPhase {
    fn check(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Result<(), EdgeError> {
        // Taken before hygiene removes the hop-by-hop headers that carry it.
        if let Some(upgrade) = super::upgrade::requested(req) {
            ctx.state.put(upgrade);
        }
        on_request(ctx, req, &self.trusted_proxies, self.path_policy)?;
        // The intent model learnt from requests as clients send them: their features
        // are taken before any header is removed (on the canonical target).
        if let Some(i) = &self.intent {
            ctx.intent_features =
                Some(i.features(req.method(), req.uri(), req.headers(), ctx.client_ip));
        }
        strip_client_headers(req.headers_mut());
        if self.max_body_bytes != 0
            && let Some(len) = req.body().size_hint().exact()
            && len > self.max_body_bytes
        {
            return Err(EdgeError::new(
                ErrorKind::PayloadTooLarge,
                format!("body of {len} bytes, limit {}", self.max_body_bytes),
            ));
        }
        // Routes, role rules and blocked paths match the path without segment
        // parameters (and without case where configured).
        if let std::borrow::Cow::Owned(p) =
            crate::target::match_form(req.uri().path(), self.path_policy)
        {
            ctx.match_path = Some(p);
        }
        // What a probe's signal may do is the policy's decision (`policy::Source`).
        if self
            .threat
            .is_blocked_path(ctx.match_path(req.uri().path()))
        {
            self.threat.signal(ctx.source(), Signal::BlockedPath);
            return Err(EdgeError::new(
                ErrorKind::NoRoute,
                "probe of a blocked path",
            ));
        }
        Ok(())
    }
}

/// Who the client is: the socket peer, or, when the peer is a trusted proxy, the
/// rightmost address of its forwarding chain that is not itself a trusted proxy (entries
/// further left could have been written by anyone). The chain is X-Forwarded-For, or
/// else the `for=` of `Forwarded` (RFC 7239); the scheme is X-Forwarded-Proto, or the
/// `proto=` of the element that named the client.
fn client_behind_proxies<B>(ctx: &mut RequestCtx, req: &Request<B>, trusted: &[IpNet]) {
    let peer = ctx.client.ip();
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return;
    }
    ctx.peer_trusted = true;
    let headers = req.headers();
    let values = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let chain: Vec<String> = crate::headers::list(headers, "x-forwarded-for")
        .map(str::to_string)
        .collect();
    let hop_scheme = ctx.scheme;
    let x_proto = headers
        .get(headers::X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let proto = if !chain.is_empty() {
        // X-Forwarded-For: a client's own Forwarded is not the proxy's; it is replaced.
        let ips: Vec<Option<IpAddr>> = chain.iter().map(|e| e.parse().ok()).collect();
        if let Some(ip) = rightmost_untrusted(&ips, trusted).and_then(|i| ips[i]) {
            ctx.client_ip = ip;
        }
        ctx.forwarded_chain = Some(chain.join(", "));
        x_proto
    } else {
        let elements = forwarded_elements(&values("forwarded"));
        if elements.is_empty() {
            // Neither chain: the peer is the client; the proxy may still say how it
            // was reached.
            return finish(ctx, headers, x_proto);
        }
        let ips: Vec<Option<IpAddr>> = elements.iter().map(|e| e.for_ip).collect();
        let mut proto = None;
        if let Some(i) = rightmost_untrusted(&ips, trusted)
            && let Some(ip) = ips[i]
        {
            ctx.client_ip = ip;
            proto = elements[i].proto.clone();
        }
        // The proxy's elements go on, with this hop's appended (pipeline); and
        // X-Forwarded-For toward the origin carries the same chain.
        ctx.forwarded_elements = Some((
            elements
                .iter()
                .map(|e| e.raw.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            hop_scheme,
        ));
        ctx.forwarded_chain = Some(
            ips.iter()
                .map(|ip| ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        );
        // The proto= of the element that named the client, not a header the client may
        // have sent through a proxy that only speaks Forwarded.
        proto
    };
    finish(ctx, headers, proto);
}

/// The scheme and host a trusted proxy reported for the client.
fn finish(ctx: &mut RequestCtx, headers: &HeaderMap, proto: Option<String>) {
    if let Some(p) = proto {
        match p.to_ascii_lowercase().as_str() {
            "https" => ctx.scheme = "https",
            "http" => ctx.scheme = "http",
            _ => {}
        }
    }
    ctx.forwarded_host = headers
        .get(headers::X_FORWARDED_HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(normalize_host);
}

/// Which entry of a forwarding chain is the client: the rightmost address that is not
/// a trusted proxy. `None` when an entry on the way is not an address (stop believing
/// the chain there) or every one is trusted.
fn rightmost_untrusted(chain: &[Option<IpAddr>], trusted: &[IpNet]) -> Option<usize> {
    for (i, entry) in chain.iter().enumerate().rev() {
        match entry {
            Some(ip) if trusted.iter().any(|n| n.contains(ip)) => continue,
            Some(_) => return Some(i),
            None => return None,
        }
    }
    None
}

/// One element of a `Forwarded` header: as written, its `for=` address and `proto=`.
struct ForwardedElement {
    raw: String,
    for_ip: Option<IpAddr>,
    proto: Option<String>,
}

/// The elements of `Forwarded` values. An element that names a parameter twice is not
/// believed (its `for` is no address).
fn forwarded_elements(value: &str) -> Vec<ForwardedElement> {
    crate::headers::split_unquoted(value, ',')
        .0
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|raw| {
            let mut element = ForwardedElement {
                raw: raw.to_string(),
                for_ip: None,
                proto: None,
            };
            let mut seen = Vec::new();
            let mut repeated = false;
            for pair in crate::headers::split_unquoted(raw, ';').0 {
                let Some((k, v)) = pair.split_once('=') else {
                    continue;
                };
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                repeated |= seen.contains(&k);
                match k.as_str() {
                    "for" => element.for_ip = forwarded_node_ip(v),
                    "proto" => element.proto = Some(v.to_string()),
                    _ => {}
                }
                seen.push(k);
            }
            if repeated {
                element.for_ip = None;
                element.proto = None;
            }
            element
        })
        .collect()
}

/// The address of a `for=` node (`192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:80`);
/// `None` for `unknown`, obfuscated identifiers and garbage.
fn forwarded_node_ip(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    node.parse()
        .ok()
        .or_else(|| node.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()))
}

pub fn on_request<B>(
    ctx: &mut RequestCtx,
    req: &mut Request<B>,
    trusted: &[IpNet],
    path_policy: PathSettings,
) -> Result<(), EdgeError> {
    client_behind_proxies(ctx, req, trusted);
    ctx.validated = req
        .extensions()
        .get::<crate::request::EarlyData>()
        .is_none();
    ctx.induced = induced(req.headers());
    ctx.host = request_host(req)?;
    canonicalize_target(req, path_policy)?;
    Ok(())
}

/// Whether a browser may have sent the request on another site's behalf: its Fetch
/// Metadata says the request did not come from the site itself or from the user
/// (`same-origin`, `none`). Browsers set `Sec-Fetch-Site` and pages cannot change it.
/// A client may claim it falsely; that only caps what its own probes can earn it
/// (`policy::Source::induced`).
fn induced(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_some_and(|v| !matches!(v.as_bytes(), b"same-origin" | b"none"))
}

/// Header hygiene, once the request's facts are taken (`on_request`, and the intent
/// features, which the model learnt from requests as clients sent them): hop-by-hop
/// headers go, and so do the client's copies of headers only the node may set.
pub fn strip_client_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    strip_node_owned(headers);
}

/// The host of the one authority of a request (RFC 9112 3.2, RFC 9113 8.3.1), lower-case
/// without port: the request target's when it has one (absolute form in HTTP/1.1,
/// `:authority` in HTTP/2 and HTTP/3), else `Host`. More than one `Host` is refused; so is a `Host` that names another host
/// than an HTTP/2 or HTTP/3 request's `:authority`, and userinfo. The target's authority
/// replaces `Host` (its port too), so routing, the cache key and the origin see the
/// same one.
fn request_host<B>(req: &mut Request<B>) -> Result<String, EdgeError> {
    let bad = |why: String| EdgeError::new(ErrorKind::BadRequest, why);
    let normalized =
        |raw: &str| normalize_host(raw).ok_or_else(|| bad(format!("bad Host {raw:?}")));
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(bad("more than one Host".into()));
    }
    let Some(target) = req.uri().authority().cloned() else {
        let host = host.ok_or_else(|| bad("no Host".into()))?;
        let host = host.to_str().map_err(|_| bad("Host is not ASCII".into()))?;
        if host.contains('@') {
            return Err(bad("userinfo in Host".into()));
        }
        return normalized(host);
    };
    if target.as_str().contains('@') {
        return Err(bad("userinfo in the request target".into()));
    }
    let target_host = normalized(target.as_str())?;
    let origin_form_protocol = matches!(
        req.version(),
        http::Version::HTTP_09 | http::Version::HTTP_10 | http::Version::HTTP_11
    );
    if !origin_form_protocol
        && let Some(h) = &host
        && h.to_str().ok().and_then(normalize_host).as_ref() != Some(&target_host)
    {
        return Err(bad("Host differs from :authority".into()));
    }
    // The target's authority is the Host the origin gets, port included, whatever the
    // client wrote in Host (the key is made from the target's). An HTTP/2 or HTTP/3
    // request without Host gets it with the forwarding headers.
    let replace = match &host {
        Some(h) => h.as_bytes() != target.as_str().as_bytes(),
        None => origin_form_protocol,
    };
    if replace {
        let value = HeaderValue::from_str(target.as_str())
            .map_err(|_| bad("request target authority is not a header value".into()))?;
        req.headers_mut().insert(header::HOST, value);
    }
    Ok(target_host)
}

/// Replaces the request's path with its canonical form (`crate::target`); what cannot
/// be made canonical is the client's 400.
pub fn canonicalize_target<B>(req: &mut Request<B>, policy: PathSettings) -> Result<(), EdgeError> {
    if req.method() == http::Method::OPTIONS && req.uri().path() == "*" {
        return Ok(());
    }
    let canonical = match crate::target::canonical_path(req.uri().path(), policy) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => return Err(EdgeError::new(ErrorKind::BadRequest, e.to_string())),
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| EdgeError::new(ErrorKind::BadRequest, "unparsable request target"))?,
    );
    *req.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| EdgeError::new(ErrorKind::BadRequest, "unparsable request target"))?;
    Ok(())
}

/// Lower-case host without port; `None` if it is not a plausible host.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        let end = rest.find(']')?;
        &raw[..end + 2]
    } else {
        raw.rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(raw, |(h, _)| h)
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    valid.then_some(host)
}

/// Removes hop-by-hop headers, including those a `Connection` header names.
pub use crate::headers::removed_before_routing;

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the names present is cheaper than
    // looking up every hop-by-hop name in the map.
    let (mut connection, mut any) = (false, false);
    for k in headers.keys() {
        connection |= k == header::CONNECTION;
        any |= k == header::TRANSFER_ENCODING || crate::headers::HOP_BY_HOP.contains(k);
    }
    if connection {
        let named: Vec<HeaderName> = crate::headers::list(headers, header::CONNECTION)
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    if any {
        for n in &crate::headers::HOP_BY_HOP {
            headers.remove(n);
        }
        headers.remove(header::TRANSFER_ENCODING);
    }
}

fn strip_node_owned(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            crate::headers::NODE_OWNED.contains(&k)
                || crate::headers::NODE_OWNED_PREFIXES
                    .iter()
                    .any(|p| k.starts_with(p))
        })
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(
            normalize_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("a b"), None);
        assert_eq!(normalize_host(""), None);
    }

    #[test]
    fn spoofable_and_hop_headers_go() {
        let mut req = Request::builder()
            .uri("/")
            .header("host", "x.test")
            .header("connection", "close, x-secret")
            .header("x-secret", "1")
            .header("x-user-id", "admin")
            .header("X-Forwarded-For", "1.2.3.4")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap());
        on_request(&mut ctx, &mut req, &[], PathSettings::default()).unwrap();
        strip_client_headers(req.headers_mut());
        let h = req.headers();
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none());
        assert!(h.get("x-user-id").is_none() && h.get("x-forwarded-for").is_none());
        assert_eq!(h.get("accept").unwrap(), "*/*");
        assert_eq!(ctx.host, "x.test");
    }
}

#[cfg(test)]
mod authority_tests {
    use super::*;

    #[test]
    fn an_http2_host_with_another_port_is_replaced_by_the_authority() {
        let mut req = Request::builder()
            .version(http::Version::HTTP_2)
            .uri("https://victim.test/x")
            .header("host", "victim.test:1337")
            .body(())
            .unwrap();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap());
        on_request(&mut ctx, &mut req, &[], PathSettings::default()).unwrap();
        assert_eq!(req.headers()["host"], "victim.test");
        let mut req = Request::builder()
            .version(http::Version::HTTP_2)
            .uri("https://victim.test/x")
            .header("host", "evil.test")
            .body(())
            .unwrap();
        assert!(on_request(&mut ctx, &mut req, &[], PathSettings::default()).is_err());
    }
}

#[cfg(test)]
mod trusted_tests {
    use super::*;

    fn ctx_for(peer: &str, xff: &str, trusted: &[&str]) -> RequestCtx {
        let mut req = Request::builder()
            .uri("/")
            .header("host", "x.test")
            .header("x-forwarded-for", xff)
            .body(())
            .unwrap();
        let mut ctx = RequestCtx::new(peer.parse().unwrap());
        let nets: Vec<IpNet> = trusted.iter().map(|n| n.parse().unwrap()).collect();
        on_request(&mut ctx, &mut req, &nets, PathSettings::default()).unwrap();
        ctx
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_hops() {
        // Untrusted peer: its header is ignored.
        let c = ctx_for("203.0.113.5:1", "6.6.6.6", &["10.0.0.0/8"]);
        assert_eq!(c.client_ip.to_string(), "203.0.113.5");
        assert!(c.forwarded_chain.is_none());
        // Trusted peer: the rightmost untrusted entry is the client.
        let c = ctx_for(
            "10.0.0.2:1",
            "6.6.6.6, 198.51.100.9, 10.0.0.7",
            &["10.0.0.0/8"],
        );
        assert_eq!(c.client_ip.to_string(), "198.51.100.9");
        assert_eq!(
            c.forwarded_chain.as_deref(),
            Some("6.6.6.6, 198.51.100.9, 10.0.0.7")
        );
    }
}

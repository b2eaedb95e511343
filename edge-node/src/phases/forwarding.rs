//! The headers the node sets toward an origin: the forwarding chain (X-Forwarded-*,
//! Forwarded), Via, and Host for HTTP/2 and HTTP/3 requests (which carry it as
//! :authority). The cache sets them before it looks up when a stored answer varies on
//! one of them (so `Vary` variants match the request as the origin gets it); the proxy
//! sets them otherwise.

use http::{HeaderValue, Request, header};

use crate::{headers, request::RequestCtx};

/// Sets the forwarding headers once per request.
pub fn set<B>(ctx: &mut RequestCtx, req: &mut Request<B>) {
    if std::mem::replace(&mut ctx.forwarding_set, true) {
        return;
    }
    let proto = ctx.scheme;
    let req_version = req.version();
    let authority = req.uri().authority().cloned();
    let headers = req.headers_mut();
    // The forwarding chain: what a trusted proxy reported, plus the peer; from anyone
    // else only the peer (the early phase removed their copies).
    let peer = ctx.client.ip().to_string();
    let xff = match &ctx.forwarded_chain {
        Some(chain) => format!("{chain}, {peer}"),
        None => peer,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(headers::X_FORWARDED_FOR, v);
    }
    headers.insert(headers::X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    // Traced: the origin continues the node's trace, under the exchange's span; a
    // tracestate belongs to the parent's trace, kept only when that parent was taken.
    if let Some(t) = &mut ctx.trace {
        headers.insert(headers::TRACEPARENT, t.exchange_started());
        if t.parent.is_none() {
            headers.remove(headers::TRACESTATE);
        }
    }
    if let Ok(v) = HeaderValue::from_str(ctx.forwarded_host.as_deref().unwrap_or(&ctx.host)) {
        headers.insert(headers::X_FORWARDED_HOST, v);
    }
    let node_for = |ip: std::net::IpAddr| {
        if ip.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.to_string()
        }
    };
    // A trusted proxy's elements stay, and this hop's is appended (RFC 7239 5.1);
    // otherwise one element names the client.
    let forwarded = match &ctx.forwarded_elements {
        Some((elements, hop_proto)) => format!(
            "{elements}, for={};proto={hop_proto};host={}",
            node_for(ctx.client.ip()),
            ctx.host
        ),
        None => format!(
            "for={};proto={proto};host={}",
            node_for(ctx.client_ip),
            ctx.host
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, v);
    }
    headers.append(header::VIA, HeaderValue::from_static(via(req_version)));
    // HTTP/2 requests carry the host as :authority; origins get a Host header.
    if !headers.contains_key(header::HOST)
        && let Some(a) = authority
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        headers.insert(header::HOST, v);
    }
}

/// This hop's `Via` element for a message of `version`.
pub fn via(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_3 => "3 edge-node",
        http::Version::HTTP_2 => "2 edge-node",
        http::Version::HTTP_10 => "1.0 edge-node",
        _ => "1.1 edge-node",
    }
}

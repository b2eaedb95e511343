//! Compression (`[compression]`, `compress` per route) against a real node and origin,
//! with curl decoding what it gets: the coding the client's `Accept-Encoding` (q-values)
//! picks, what is never compressed (short bodies, cookies, opted-out routes), the headers
//! that change with the body (`Vary`, a weak `ETag`, no `Content-Length`), and cached
//! answers compressed once per coding, then served from the kept copy.

use edge_tests::{
    origin::Origin,
    proxy::{Proxy, Reply, admin_section, curl, start_config},
};

fn node(origin: &Origin) -> Proxy {
    start_config(&format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n{admin}\n\
         [compression]\nmin_bytes = 2000\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{addr}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n\
         [[route]]\nhosts = [\"cached.test\"]\nupstream = \"app\"\n[route.cache]\n\
         [[route]]\nhosts = [\"plain.test\"]\nupstream = \"app\"\ncompress = false\n",
        admin = admin_section(),
        addr = origin.addr,
    ))
}

/// GET (or `extra` args) with `Accept-Encoding: accept`, decoded by curl.
fn get(p: &Proxy, host: &str, path: &str, accept: &str, extra: &[&str]) -> Reply {
    let ae = format!("Accept-Encoding: {accept}");
    let mut args = vec!["--compressed", "-H", ae.as_str()];
    args.extend_from_slice(extra);
    curl(p, host, path, &args)
}

fn header(r: &Reply, name: &str) -> Option<String> {
    r.headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.trim().to_string())
}

#[test]
fn responses_are_compressed_by_what_the_client_accepts() {
    let origin = Origin::start("app");
    let p = node(&origin);
    let big = "/page?size=6000&etag=v1";
    let plain = curl(&p, "app.test", big, &[]);
    assert_eq!(plain.status, 200);
    assert!(plain.body.len() >= 6000);
    // Without Accept-Encoding: as the origin sent it, but saying it could vary.
    assert_eq!(header(&plain, "content-encoding"), None);
    assert_eq!(header(&plain, "vary").as_deref(), Some("accept-encoding"));
    assert_eq!(header(&plain, "etag").as_deref(), Some("\"v1\""));
    for (accept, coding) in [
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip, br", "br"),
        ("gzip", "gzip"),
        ("br;q=0.2, gzip;q=0.5", "gzip"),
        ("*", "zstd"),
        ("zstd;q=0, *;q=0.1", "br"),
    ] {
        let r = get(&p, "app.test", big, accept, &[]);
        assert_eq!(
            header(&r, "content-encoding").as_deref(),
            Some(coding),
            "{accept}: {}",
            r.headers
        );
        assert_eq!(header(&r, "content-length"), None, "{accept}");
        assert_eq!(
            header(&r, "etag").as_deref(),
            Some("w/\"v1\""),
            "{accept}: a weak validator"
        );
        // curl decoded it: the origin's body, byte for byte (the origin echoes the
        // request's headers, so compare what does not depend on them).
        assert!(
            r.body
                .starts_with("origin=app\nmethod=GET\npath=/page?size=6000&etag=v1\n"),
            "{accept}"
        );
        assert_eq!(
            r.body.len(),
            plain.body.len(),
            "{accept}: padded to the same size"
        );
    }
    // Nothing acceptable, or nothing at all: identity.
    for accept in ["identity", "deflate", "*;q=0", "br;q=0, gzip;q=0, zstd;q=0"] {
        let r = get(&p, "app.test", big, accept, &[]);
        assert_eq!(header(&r, "content-encoding"), None, "{accept}");
    }
    // Short bodies, answers that set a cookie (BREACH), routes that opted out: as sent.
    let short = get(&p, "app.test", "/short", "br", &[]);
    assert_eq!(header(&short, "content-encoding"), None);
    assert_eq!(header(&short, "vary").as_deref(), Some("accept-encoding"));
    let cookie = get(&p, "app.test", "/c?size=6000&cookie=s%3D1", "br", &[]);
    assert_eq!(header(&cookie, "content-encoding"), None);
    // BREACH: an answer to a credentialed request is this client's alone: as it is,
    // unless the origin marks it public.
    let auth = get(
        &p,
        "app.test",
        big,
        "br",
        &["-H", "Authorization: Bearer t0k3n"],
    );
    assert_eq!(header(&auth, "content-encoding"), None);
    let public = get(
        &p,
        "app.test",
        "/pub?size=6000&cc=public%2C%20max-age%3D0",
        "br",
        &["-H", "Authorization: Bearer t0k3n"],
    );
    assert_eq!(header(&public, "content-encoding").as_deref(), Some("br"));
    let opted_out = get(&p, "plain.test", big, "br", &[]);
    assert_eq!(header(&opted_out, "content-encoding"), None);
    assert_eq!(header(&opted_out, "vary"), None);
    // HEAD says what GET would send.
    let head = get(&p, "app.test", big, "br", &["-I"]);
    assert_eq!(
        header(&head, "content-encoding").as_deref(),
        Some("br"),
        "{}",
        head.headers
    );
    assert_eq!(header(&head, "content-length"), None);
}

#[test]
fn cached_answers_are_compressed_once_per_coding() {
    let origin = Origin::start("app");
    let p = node(&origin);
    let path = "/doc?size=8000&cc=max-age%3D60";
    let identity = curl(&p, "cached.test", path, &[]);
    assert_eq!(identity.status, 200);
    let mut bodies = Vec::new();
    for accept in ["br", "br", "br", "gzip", "gzip"] {
        let r = get(&p, "cached.test", path, accept, &[]);
        assert_eq!(
            header(&r, "content-encoding").as_deref(),
            Some(accept),
            "{}",
            r.headers
        );
        assert_eq!(
            header(&r, "x-cache").as_deref(),
            Some("hit"),
            "{}",
            r.headers
        );
        bodies.push(r.body);
    }
    assert!(
        bodies.iter().all(|b| *b == identity.body),
        "every copy decodes to the stored one"
    );
    assert_eq!(origin.hits(), 1, "one origin request for all of them");
    let count = |coding: &str, how: &str| {
        p.metric(&format!(
            "edge_compressed_responses_total{{encoding=\"{coding}\",how=\"{how}\"}}"
        ))
        .unwrap_or(0.0)
    };
    assert_eq!((count("br", "stored"), count("br", "reused")), (1.0, 2.0));
    assert_eq!(
        (count("gzip", "stored"), count("gzip", "reused")),
        (1.0, 1.0)
    );
    // A revalidation of the compressed answer: the 304 carries its weak validator and
    // Vary.
    let tagged = "/tagged?size=8000&cc=max-age%3D60&etag=t1";
    let first = get(&p, "cached.test", tagged, "br", &[]);
    assert_eq!(header(&first, "etag").as_deref(), Some("w/\"t1\""));
    let revalidated = get(
        &p,
        "cached.test",
        tagged,
        "br",
        &["-H", "If-None-Match: W/\"t1\""],
    );
    assert_eq!(revalidated.status, 304);
    assert_eq!(header(&revalidated, "etag").as_deref(), Some("w/\"t1\""));
    assert_eq!(
        header(&revalidated, "vary").as_deref(),
        Some("accept-encoding")
    );
    // The cache keeps the identity copy: a client without Accept-Encoding gets it.
    let again = curl(&p, "cached.test", path, &[]);
    assert_eq!(header(&again, "content-encoding"), None);
    assert_eq!(again.body, identity.body);
}

//! The edge cache against a real origin that counts its hits: freshness from the origin's
//! Cache-Control, Age, no-store, variants, HEAD from a stored GET, request coalescing,
//! a poisoning attempt through an unkeyed header, revalidation (ETag, 304), clients'
//! conditional and Range requests, stale-while-revalidate, stale-if-error, purges, and
//! the regional tier in a real redis-server shared by two nodes.

use std::time::Duration;

use edge_tests::{
    origin::Origin,
    proxy::{Proxy, Reply, curl, eventually, start_config},
    redis::Redis,
};

fn node(origin: &Origin, route_cache: &str) -> Proxy {
    node_with(origin, route_cache, "")
}

/// A node in front of `origin` with `[route.cache]` settings and more config (`extra`).
fn node_with(origin: &Origin, route_cache: &str, extra: &str) -> Proxy {
    start_config(&format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n[threat]\nenabled = false\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n[route.cache]\n{route_cache}\n{}\n{extra}\n",
        origin.addr,
        edge_tests::proxy::admin_section(),
    ))
}

/// `n` clients asking for `path` at the same time; their replies.
fn at_once(p: &Proxy, n: usize, path: &str) -> Vec<Reply> {
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..n)
            .map(|_| s.spawn(|| curl(p, "app.test", path, &[])))
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

fn header(r: &Reply, name: &str) -> String {
    r.headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or("")
        .trim()
        .to_ascii_uppercase()
}

#[test]
fn fresh_responses_are_served_from_the_cache_and_the_rest_is_not() {
    let origin = Origin::start("a");
    let p = node(&origin, "");
    let get = |path: &str, args: &[&str]| curl(&p, "app.test", path, args);

    let first = get("/page?cc=max-age%3D60", &[]);
    assert_eq!(
        (first.status, header(&first, "x-cache").as_str()),
        (200, "MISS")
    );
    assert_eq!(
        header(&first, "cache-status"),
        "EDGE-NODE; FWD=MISS; STORED"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let second = get("/page?cc=max-age%3D60", &[]);
    assert_eq!(header(&second, "x-cache"), "HIT", "{}", second.headers);
    assert_eq!(second.body, first.body);
    assert!(
        header(&second, "age").parse::<u64>().unwrap() >= 1,
        "{}",
        second.headers
    );
    assert!(header(&second, "cache-status").starts_with("EDGE-NODE; HIT; TTL="));
    assert_eq!(origin.hits(), 1);
    // The query is part of the key, in any parameter order.
    let reordered = get("/page?x=1&cc=max-age%3D60", &[]);
    assert_eq!(header(&reordered, "x-cache"), "MISS");
    assert_eq!(
        header(&get("/page?cc=max-age%3D60&x=1", &[]), "x-cache"),
        "HIT"
    );
    // HEAD is answered from the stored GET, without a body.
    let head = get("/page?cc=max-age%3D60", &["-I"]);
    assert_eq!(
        (head.status, header(&head, "x-cache").as_str()),
        (200, "HIT")
    );
    // A client asking for a fresh answer bypasses the stored one.
    let fresh = get("/page?cc=max-age%3D60", &["-H", "Cache-Control: no-cache"]);
    assert_eq!(header(&fresh, "x-cache"), "BYPASS");
    assert_eq!(
        header(&fresh, "cache-status"),
        "EDGE-NODE; FWD=REQUEST; STORED"
    );
    // no-store, private, no lifetime: never stored.
    for cc in ["no-store", "private%2Cmax-age%3D60", "no-cache"] {
        let before = origin.hits();
        for _ in 0..2 {
            let r = get(&format!("/n?cc={cc}"), &[]);
            assert_eq!(header(&r, "x-cache"), "MISS", "{cc}");
        }
        assert_eq!(origin.hits(), before + 2, "{cc}");
    }
    let before = origin.hits();
    get("/plain", &[]);
    get("/plain", &[]);
    assert_eq!(
        origin.hits(),
        before + 2,
        "no freshness, no default_ttl: not stored"
    );
    // Expired entries are fetched again.
    get("/short?cc=max-age%3D1", &[]);
    std::thread::sleep(Duration::from_millis(2100));
    let again = get("/short?cc=max-age%3D1", &[]);
    assert_eq!(header(&again, "x-cache"), "EXPIRED");
    assert_eq!(
        header(&again, "cache-status"),
        "EDGE-NODE; FWD=STALE; STORED"
    );
}

#[test]
fn a_cookie_the_origin_withholds_reaches_only_the_client_that_fetched() {
    let origin = Origin::start("a");
    let p = node(&origin, "");
    let get = |path: &str| curl(&p, "app.test", path, &[]);
    let cookie = |r: &Reply| {
        r.headers
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .count()
    };
    // private="Set-Cookie" (RFC 9111 5.2.2.7) and no-cache="Set-Cookie" (5.2.2.4): the
    // response may be shared without the cookie.
    for (n, cc) in [
        "max-age%3D60%2C%20private%3D%22Set-Cookie%22",
        "no-cache%3D%22set-cookie%22%2C%20max-age%3D60",
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/withheld-{n}?cc={cc}&cookie=session%3Dalice");
        let first = get(&path);
        assert_eq!(header(&first, "x-cache"), "MISS", "{}", first.headers);
        assert_eq!(cookie(&first), 1, "the fetching client gets its cookie");
        let second = get(&path);
        assert_eq!(header(&second, "x-cache"), "HIT", "{}", second.headers);
        assert_eq!(
            cookie(&second),
            0,
            "another client got the cookie:\n{}",
            second.headers
        );
        assert_eq!(second.body, first.body);
    }
    assert_eq!(origin.hits(), 2);
    // Unqualified, with a cookie: not stored at all.
    for _ in 0..2 {
        let r = get("/cookie?cc=max-age%3D60&cookie=session%3Dbob");
        assert_eq!(header(&r, "x-cache"), "MISS");
        assert_eq!(cookie(&r), 1);
    }
    assert_eq!(origin.hits(), 4);
}

#[test]
fn a_cookie_on_a_revalidations_304_is_not_kept_for_others() {
    let origin = Origin::start("a");
    // Within stale-while-revalidate the stored copy answers others at once.
    let p = node(&origin, "stale_while_revalidate = \"60s\"");
    let get = |path: &str| curl(&p, "app.test", path, &[]);
    let cookie = |r: &Reply| r.headers.to_ascii_lowercase().contains("set-cookie:");
    let path = "/reval?cc=max-age%3D1&etag=v1&cookie304=session%3Ddave";
    let first = get(path);
    assert_eq!(header(&first, "x-cache"), "MISS");
    assert!(!cookie(&first));
    std::thread::sleep(Duration::from_millis(1100));
    // Expired: answered stale while a background request revalidates; the origin's 304
    // sets a cookie for that request.
    let stale = get(path);
    assert_eq!(header(&stale, "x-cache"), "STALE", "{}", stale.headers);
    assert!(eventually(Duration::from_secs(10), || origin
        .not_modified()
        >= 1));
    std::thread::sleep(Duration::from_millis(200));
    // The refreshed copy (kept to be revalidated: a cookie makes it unshareable) still
    // answers others within the window, without that cookie.
    let later = get(path);
    assert_eq!(header(&later, "x-cache"), "STALE", "{}", later.headers);
    assert!(
        !cookie(&later),
        "another client got the 304's cookie:\n{}",
        later.headers
    );
    assert_eq!(later.body, first.body);
}

#[test]
fn a_clients_own_limits_on_age_and_only_if_cached_are_honoured() {
    let origin = Origin::start("a");
    let p = node(&origin, "");
    let get = |path: &str, cc: &str| {
        let h = format!("Cache-Control: {cc}");
        let args: &[&str] = if cc.is_empty() { &[] } else { &["-H", &h] };
        curl(&p, "app.test", path, args)
    };
    let path = "/limits?cc=max-age%3D60";
    assert_eq!(header(&get(path, ""), "x-cache"), "MISS");
    std::thread::sleep(Duration::from_millis(1100));
    // Fresh for the cache (60 s), too old for a client that accepts 1 s: fetched again
    // for it (RFC 9111 5.2.1.1), and the new copy is stored.
    let strict = get(path, "max-age=1");
    assert_eq!(header(&strict, "x-cache"), "BYPASS", "{}", strict.headers);
    assert_eq!(origin.hits(), 2);
    let hit = get(path, "max-age=30");
    assert_eq!(header(&hit, "x-cache"), "HIT", "{}", hit.headers);
    // min-fresh (5.2.1.3): a copy with less than that left goes to the origin.
    assert_eq!(header(&get(path, "min-fresh=30"), "x-cache"), "HIT");
    assert_eq!(header(&get(path, "min-fresh=120"), "x-cache"), "BYPASS");
    assert_eq!(origin.hits(), 3);
    // only-if-cached (5.2.1.7): the stored copy, or 504 without asking the origin.
    let cached = get(path, "only-if-cached");
    assert_eq!(
        (cached.status, header(&cached, "x-cache").as_str()),
        (200, "HIT")
    );
    let absent = get("/not-stored-yet?cc=max-age%3D60", "only-if-cached");
    assert_eq!(absent.status, 504, "{}", absent.headers);
    let refused = get(path, "no-cache, only-if-cached");
    assert_eq!(
        refused.status, 504,
        "no-cache cannot be met from the cache alone"
    );
    assert_eq!(origin.hits(), 3, "only-if-cached reached the origin");
    // Every answer is counted by its X-Cache, whichever worker gave it.
    for (outcome, n) in [("HIT", 3.0), ("BYPASS", 2.0), ("MISS", 3.0), ("STALE", 0.0)] {
        let sample = format!("edge_cache_results_total{{outcome=\"{outcome}\"}}");
        assert_eq!(p.metric(&sample), Some(n), "{sample}");
    }
}

#[test]
fn variants_keys_and_poisoning() {
    let origin = Origin::start("a");
    let p = node(&origin, "key_headers = [\"x-lang\"]");
    let get = |args: &[&str]| curl(&p, "app.test", "/v?cc=max-age%3D60&vary=x-lang", args);
    let en = get(&["-H", "X-Lang: en"]);
    let de = get(&["-H", "X-Lang: de"]);
    assert_eq!(header(&en, "x-cache"), "MISS");
    assert_eq!(header(&de, "x-cache"), "MISS");
    let en2 = get(&["-H", "X-Lang: en"]);
    assert_eq!(header(&en2, "x-cache"), "HIT");
    assert!(en2.body.contains("x-lang: en") && !en2.body.contains("x-lang: de"));
    // A client's X-Forwarded-Host is the node's to set: it never reaches the origin.
    let spoofed = curl(
        &p,
        "app.test",
        "/f?cc=max-age%3D60",
        &["-H", "X-Forwarded-Host: evil.example"],
    );
    assert!(!spoofed.body.contains("evil"), "{}", spoofed.body);
    assert!(
        spoofed.body.contains("x-forwarded-host: app.test"),
        "{}",
        spoofed.body
    );
    // Poisoning through headers an origin reflects without declaring Vary: a route with
    // `strip_unkeyed` forwards nothing outside the key on cacheable requests, so they
    // cannot shape what everyone else gets.
    let p = node(&origin, "key_headers = [\"x-lang\"]\nstrip_unkeyed = true");
    let evil = curl(
        &p,
        "app.test",
        "/p?cc=max-age%3D60",
        &[
            "-H",
            "X-Forwarded-Host: evil.example",
            "-H",
            "X-Evil: <script>",
            "-H",
            "Cookie: session=attacker",
        ],
    );
    assert!(
        !evil.body.contains("evil")
            && !evil.body.contains("script")
            && !evil.body.contains("attacker"),
        "{}",
        evil.body
    );
    let victim = curl(&p, "app.test", "/p?cc=max-age%3D60", &[]);
    assert_eq!(header(&victim, "x-cache"), "HIT");
    assert_eq!(victim.body, evil.body);
}

#[test]
fn concurrent_misses_make_one_origin_request() {
    let origin = Origin::start("a");
    origin.set_delay_ms(500);
    let p = node(&origin, "");
    let replies = at_once(&p, 10, "/hot?cc=max-age%3D60");
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(origin.hits(), 1, "10 concurrent misses, one origin request");
    let labels: Vec<String> = replies.iter().map(|r| header(r, "x-cache")).collect();
    assert_eq!(
        labels.iter().filter(|l| *l == "MISS").count(),
        1,
        "{labels:?}"
    );
    assert!(replies.iter().all(|r| r.body == replies[0].body));

    // A response that cannot be stored: for a while, misses for its key go straight to
    // the origin instead of queueing behind one another ("hit-for-pass").
    let nostore = "/nostore?cc=no-store";
    let first = curl(&p, "app.test", nostore, &[]);
    assert_eq!(header(&first, "cache-status"), "EDGE-NODE; FWD=MISS");
    let before = origin.hits();
    let replies = at_once(&p, 6, nostore);
    assert_eq!(origin.hits(), before + 6);
    for r in &replies {
        assert_eq!(
            header(r, "cache-status"),
            "EDGE-NODE; FWD=MISS; DETAIL=UNCACHEABLE",
            "none waited for another"
        );
    }
    let hits = origin.hits();

    // Waiters stream the response while it arrives: the origin sends half the body,
    // pauses, then the rest; the nine waiters are answered from that very response.
    origin.set_delay_ms(300);
    let path = "/slow?cc=max-age%3D60&body_delay=500";
    let replies = at_once(&p, 10, path);
    assert_eq!(origin.hits(), hits + 1);
    let statuses: Vec<String> = replies.iter().map(|r| header(r, "cache-status")).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| *s == "EDGE-NODE; HIT; COLLAPSED")
            .count(),
        9,
        "{statuses:?}"
    );
    assert!(
        replies
            .iter()
            .all(|r| r.status == 200 && r.body == replies[0].body)
    );
    assert_eq!(header(&curl(&p, "app.test", path, &[]), "x-cache"), "HIT");
}

#[test]
fn waiters_give_up_after_the_lock_timeout_and_a_failed_fetch_releases_them() {
    // A waiter that has waited lock_timeout fetches on its own.
    let origin = Origin::start("a");
    origin.set_delay_ms(2500);
    let p = node_with(&origin, "", "[cache]\nlock_timeout = \"200ms\"\n");
    let replies = at_once(&p, 4, "/slow?cc=max-age%3D60");
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(origin.hits(), 4, "each waiter fetched after 200 ms");

    // The fetch everyone waits for fails (the origin closes without answering): the
    // waiters are released at once, long before a lock_timeout of a minute, and each
    // tries on its own.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::thread::spawn(move || {
        use std::io::Read;
        let mut n = 0;
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // At most 8 connections, at most 20 s.
        while n < 8 && std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut c, _)) => {
                    n += 1;
                    c.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf);
                    std::thread::sleep(Duration::from_millis(400));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            if n >= 4 {
                break;
            }
        }
        n
    });
    let q = start_config(&format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n[threat]\nenabled = false\n\n\
         [cache]\nlock_timeout = \"60s\"\n\n\
         [[upstream]]\nname = \"broken\"\nservers = [\"{addr}\"]\n\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"broken\"\n[route.cache]\n"
    ));
    let replies = at_once(&q, 4, "/doc?cc=max-age%3D60");
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().all(|s| *s == 502 || *s == 503),
        "every client answered (a waiter left waiting would time out: 0): {statuses:?}"
    );
    assert_eq!(
        accepted.join().unwrap(),
        4,
        "the waiters fetched on their own"
    );
}

#[test]
fn routes_told_apart_by_a_header_keep_their_cached_answers_apart() {
    let stable = Origin::start("stable");
    let canary = Origin::start("canary");
    let p = start_config(&format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n[threat]\nenabled = false\n\n\
         [[upstream]]\nname = \"stable\"\nservers = [\"{}\"]\n\n\
         [[upstream]]\nname = \"canary\"\nservers = [\"{}\"]\n\n\
         [[route]]\nhosts = [\"app.test\"]\nheaders = {{ \"x-canary\" = \"1\" }}\nupstream = \"canary\"\n[route.cache]\n\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"stable\"\n[route.cache]\n",
        stable.addr, canary.addr
    ));
    let page = "/home?cc=max-age%3D600";
    let from = |r: &Reply| header(r, "x-origin").to_ascii_lowercase();
    let c = curl(&p, "app.test", page, &["-H", "X-Canary: 1"]);
    assert_eq!(
        (from(&c).as_str(), header(&c, "x-cache").as_str()),
        ("canary", "MISS")
    );
    // The canary's stored answer is not the stable route's.
    let s = curl(&p, "app.test", page, &[]);
    assert_eq!(
        (from(&s).as_str(), header(&s, "x-cache").as_str()),
        ("stable", "MISS")
    );
    assert_eq!(header(&curl(&p, "app.test", page, &[]), "x-cache"), "HIT");
    let c = curl(&p, "app.test", page, &["-H", "X-Canary: 1"]);
    assert_eq!(
        (from(&c).as_str(), header(&c, "x-cache").as_str()),
        ("canary", "HIT")
    );
}

#[test]
fn purge_by_url_prefix_tag_and_everything() {
    let origin = Origin::start("a");
    let p = node(&origin, "");
    let get = |path: &str| header(&curl(&p, "app.test", path, &[]), "x-cache");
    let paths = [
        "/img/a?cc=max-age%3D600&tag=product-1",
        "/img/b?cc=max-age%3D600&tag=product-2",
        "/doc/c?cc=max-age%3D600&tag=product-1",
        "/doc/d?cc=max-age%3D600",
    ];
    for path in paths {
        assert_eq!(get(path), "MISS");
        assert_eq!(get(path), "HIT");
    }
    // Surrogate keys are the cache's business, not the client's.
    let r = curl(&p, "app.test", paths[0], &[]);
    assert!(!r.headers.contains("surrogate-key"), "{}", r.headers);
    // By tag: both product-1 pages, nothing else.
    assert_eq!(
        p.admin("POST", "/cache/purge?tag=product-1"),
        (200, "purged 2\n".into())
    );
    assert_eq!(get(paths[0]), "MISS");
    assert_eq!(get(paths[2]), "MISS");
    assert_eq!(get(paths[1]), "HIT");
    // Cache-Tag works as Surrogate-Key does (comma- or space-separated keys).
    let tagged = "/img/t?cc=max-age%3D600&ctag=promo,summer";
    assert_eq!(get(tagged), "MISS");
    assert_eq!(get(tagged), "HIT");
    assert_eq!(
        p.admin("POST", "/cache/purge?tag=summer"),
        (200, "purged 1\n".into())
    );
    assert_eq!(get(tagged), "MISS");
    // By prefix.
    assert_eq!(
        p.admin("POST", "/cache/purge?prefix=http://app.test/img/")
            .0,
        200
    );
    assert_eq!(get(paths[1]), "MISS");
    assert_eq!(get(paths[3]), "HIT");
    // By URL, spelled as clients may: host case, the default port, the query's order.
    let e = "/doc/e?tag=x&cc=max-age%3D600";
    assert_eq!(get(e), "MISS");
    assert_eq!(get(e), "HIT");
    assert_eq!(
        p.admin(
            "POST",
            "/cache/purge?url=http%3A%2F%2FAPP.test%3A80%2Fdoc%2Fe%3Fcc%3Dmax-age%253D600%26tag%3Dx"
        ),
        (200, "purged 1\n".into())
    );
    assert_eq!(get(e), "MISS");
    assert_eq!(get(paths[3]), "HIT");
    assert_eq!(p.admin("POST", "/cache/purge?url=/doc/e").0, 400);
    // Everything.
    assert_eq!(p.admin("POST", "/cache/purge?all=1").0, 200);
    assert_eq!(get(paths[3]), "MISS");
    assert_eq!(p.admin("POST", "/cache/purge").0, 400);
}

#[test]
fn purges_name_urls_as_the_nodes_path_policy_spells_them() {
    let origin = Origin::start("a");
    // Paths kept as sent: `//` and `%2F` are part of what the origin serves.
    let p = node_with(
        &origin,
        "",
        "[http.path]\nmerge_slashes = false\nescaped_slashes = \"keep\"\n",
    );
    let get = |path: &str| header(&curl(&p, "app.test", path, &[]), "x-cache");
    let (doubled, escaped) = (
        "/files//c?cc=max-age%3D600",
        "/files/a%2Fb?cc=max-age%3D600",
    );
    for path in [doubled, escaped, "/files/c?cc=max-age%3D600"] {
        assert_eq!(get(path), "MISS");
        assert_eq!(get(path), "HIT");
    }
    // The URLs as stored: under the default policy the first would name /files/c and
    // the second would be refused.
    assert_eq!(
        p.admin(
            "POST",
            "/cache/purge?url=http%3A%2F%2Fapp.test%2Ffiles%2F%2Fc%3Fcc%3Dmax-age%253D600"
        ),
        (200, "purged 1\n".into())
    );
    assert_eq!(
        p.admin(
            "POST",
            "/cache/purge?url=http%3A%2F%2Fapp.test%2Ffiles%2Fa%252Fb%3Fcc%3Dmax-age%253D600"
        ),
        (200, "purged 1\n".into())
    );
    assert_eq!(get(doubled), "MISS");
    assert_eq!(get(escaped), "MISS");
    assert_eq!(get("/files/c?cc=max-age%3D600"), "HIT");
}

#[test]
fn the_memory_tier_stays_within_max_bytes() {
    let origin = Origin::start("a");
    // Room for about ten of these small responses (body, headers and bookkeeping).
    let p = node_with(&origin, "", "[cache]\nmax_bytes = 16384\n");
    let path = |i: usize| format!("/obj/{i}?cc=max-age%3D600&pad={}", "x".repeat(600));
    for i in 0..60 {
        assert_eq!(
            header(&curl(&p, "app.test", &path(i), &[]), "x-cache"),
            "MISS"
        );
    }
    let before = origin.hits();
    let hits = (0..60)
        .filter(|&i| header(&curl(&p, "app.test", &path(i), &[]), "x-cache") == "HIT")
        .count();
    assert!(
        hits <= 16,
        "{hits} of 60 objects of ~1.5 KB still held in 16 KiB"
    );
    assert_eq!(origin.hits(), before + 60 - hits);
}

#[test]
fn stale_copies_answer_when_the_origin_fails() {
    let origin = Origin::start("a");
    let p = node(&origin, "");
    let with = "/s?cc=max-age%3D1%2Cstale-if-error%3D60";
    let without = "/t?cc=max-age%3D1";
    let stored = curl(&p, "app.test", with, &[]);
    assert_eq!(header(&stored, "x-cache"), "MISS");
    assert_eq!(
        header(&curl(&p, "app.test", without, &[]), "x-cache"),
        "MISS"
    );
    std::thread::sleep(Duration::from_millis(1200));
    // The origin goes away: the copy whose response allowed it answers, stale.
    origin.kill();
    let stale = curl(&p, "app.test", with, &[]);
    assert_eq!(
        (stale.status, header(&stale, "x-cache").as_str()),
        (200, "STALE"),
        "{}",
        p.node.log()
    );
    assert_eq!(stale.body, stored.body);
    assert!(p.node.log().contains("serving a stale copy"));
    // Without stale-if-error, the failure is the client's answer.
    assert_eq!(curl(&p, "app.test", without, &[]).status, 502);
}

#[test]
fn an_origin_answering_5xx_gets_the_stale_copy_served_in_its_place() {
    let origin = Origin::start("a");
    // The route's default window: the response itself says nothing about stale use.
    let p = node(&origin, "stale_if_error = \"60s\"");
    let path = "/page?cc=max-age%3D1";
    let stored = curl(&p, "app.test", path, &[]);
    assert_eq!(header(&stored, "x-cache"), "MISS");
    std::thread::sleep(Duration::from_millis(1200));
    origin
        .fail_status
        .store(503, std::sync::atomic::Ordering::Relaxed);
    let stale = curl(&p, "app.test", path, &[]);
    assert_eq!(
        (stale.status, header(&stale, "x-cache").as_str()),
        (200, "STALE"),
        "{}",
        stale.body
    );
    assert_eq!(stale.body, stored.body);
    // A URL without a stored copy gets the origin's failure as it is.
    let fresh = curl(&p, "app.test", "/other?cc=max-age%3D1", &[]);
    assert_eq!((fresh.status, fresh.body.as_str()), (503, "failed\n"));
}

#[test]
fn route_stale_defaults_never_override_an_origin_that_forbids_stale_copies() {
    let origin = Origin::start("a");
    let p = node(
        &origin,
        "stale_if_error = \"60s\"\nstale_while_revalidate = \"60s\"",
    );
    // (path, what a stale request gets once the copy expired and the origin is gone)
    let cases = [
        // The route's default window applies.
        ("/plain?cc=max-age%3D1", "STALE"),
        // RFC 9111 4.2.4: must-revalidate, proxy-revalidate and s-maxage forbid it.
        ("/must?cc=max-age%3D1%2Cmust-revalidate", "5xx"),
        ("/proxy?cc=max-age%3D1%2Cproxy-revalidate", "5xx"),
        ("/shared?cc=s-maxage%3D1", "5xx"),
        // Even with the origin's own stale-if-error: must-revalidate is never ignored.
        (
            "/explicit?cc=max-age%3D1%2Cmust-revalidate%2Cstale-if-error%3D60",
            "5xx",
        ),
    ];
    for (path, _) in cases {
        let r = curl(&p, "app.test", path, &[]);
        assert_eq!(
            (r.status, header(&r, "x-cache").as_str()),
            (200, "MISS"),
            "{path}"
        );
        let r = curl(&p, "app.test", path, &[]);
        assert_eq!(header(&r, "x-cache"), "HIT", "{path}");
    }
    std::thread::sleep(Duration::from_millis(1200));
    origin.kill();
    for (path, expected) in cases {
        let r = curl(&p, "app.test", path, &[]);
        // 502 while the dead origin is still in rotation, 503 once it was ejected.
        let got = match r.status {
            200 => header(&r, "x-cache"),
            502 | 503 => "5xx".to_string(),
            s => s.to_string(),
        };
        assert_eq!(got, expected, "{path}: {}", r.body);
    }
}

/// The x-hit header: which origin hit produced a body.
fn origin_hit(r: &Reply) -> String {
    header(r, "x-hit")
}

#[test]
fn expired_copies_are_revalidated_and_clients_get_304_and_ranges() {
    let origin = Origin::start("a");
    let p = node(&origin, "");
    let get = |path: &str, args: &[&str]| curl(&p, "app.test", path, args);
    let path = "/r?cc=max-age%3D1&etag=v1";
    let first = get(path, &[]);
    assert_eq!(header(&first, "x-cache"), "MISS");
    assert_eq!(header(&first, "etag"), "\"V1\"");
    std::thread::sleep(Duration::from_millis(1200));
    // Expired: a conditional request to the origin; its 304 refreshes the copy.
    let revalidated = get(path, &[]);
    assert_eq!(
        (revalidated.status, header(&revalidated, "x-cache").as_str()),
        (200, "EXPIRED"),
        "{}",
        revalidated.headers
    );
    assert_eq!(
        header(&revalidated, "cache-status"),
        "EDGE-NODE; FWD=STALE; FWD-STATUS=304; STORED"
    );
    assert_eq!(origin.not_modified(), 1);
    assert_eq!(
        revalidated.body, first.body,
        "the stored body, not a new one"
    );
    assert_eq!(header(&get(path, &[]), "x-cache"), "HIT", "fresh again");
    assert_eq!(origin.hits(), 2);

    // Clients' conditional requests are answered from the copy.
    let cond = get(path, &["-H", "If-None-Match: \"v1\""]);
    assert_eq!(
        (cond.status, header(&cond, "x-cache").as_str()),
        (304, "HIT")
    );
    assert!(cond.body.is_empty());
    let other = get(path, &["-H", "If-None-Match: \"v0\""]);
    assert_eq!(
        (other.status, other.body.as_str()),
        (200, first.body.as_str())
    );
    assert_eq!(origin.hits(), 2, "neither reached the origin");

    // Ranges of the stored body.
    let len = first.body.len();
    let part = get(path, &["-H", "Range: bytes=0-9"]);
    assert_eq!(part.status, 206);
    assert_eq!(header(&part, "content-range"), format!("BYTES 0-9/{len}"));
    assert_eq!(part.body, first.body[..10]);
    let tail = get(path, &["-H", "Range: bytes=-5"]);
    assert_eq!(
        (tail.status, tail.body.as_str()),
        (206, &first.body[len - 5..])
    );
    let beyond = get(path, &["-H", &format!("Range: bytes={len}-")]);
    assert_eq!(beyond.status, 416);
    assert_eq!(header(&beyond, "content-range"), format!("BYTES */{len}"));
    let if_range = get(path, &["-H", "Range: bytes=0-9", "-H", "If-Range: \"v0\""]);
    assert_eq!(
        (if_range.status, if_range.body.len()),
        (200, len),
        "If-Range differs"
    );
    assert_eq!(origin.hits(), 2);

    // A Range miss: the client gets its part, the whole body is stored.
    let part = get("/big?cc=max-age%3D60", &["-H", "Range: bytes=5-14"]);
    assert_eq!(
        (part.status, header(&part, "x-cache").as_str()),
        (206, "MISS"),
        "{}",
        part.headers
    );
    assert!(eventually(Duration::from_secs(5), || {
        header(&get("/big?cc=max-age%3D60", &[]), "x-cache") == "HIT"
    }));
    let whole = get("/big?cc=max-age%3D60", &[]);
    assert_eq!(part.body, whole.body[5..15]);
    assert_eq!(origin.hits(), 3);

    // no-cache with a validator: stored, and revalidated on every use.
    let nc = "/nc?cc=no-cache&etag=n1";
    let stored = get(nc, &[]);
    assert_eq!(header(&stored, "x-cache"), "MISS");
    for i in 0..2 {
        let again = get(nc, &[]);
        assert_eq!(header(&again, "x-cache"), "EXPIRED");
        assert_eq!(again.body, stored.body);
        assert_eq!(origin.not_modified(), 2 + i);
    }
}

#[test]
fn stale_while_revalidate_answers_from_the_copy_and_refreshes_it() {
    let origin = Origin::start("a");
    let p = node(&origin, "");
    let path = "/w?cc=max-age%3D1%2Cstale-while-revalidate%3D60";
    let first = curl(&p, "app.test", path, &[]);
    assert_eq!(
        (
            header(&first, "x-cache").as_str(),
            origin_hit(&first).as_str()
        ),
        ("MISS", "1")
    );
    std::thread::sleep(Duration::from_millis(1200));
    // Expired but within stale-while-revalidate: the old copy answers, a background
    // request refreshes it.
    let stale = curl(&p, "app.test", path, &[]);
    assert_eq!(
        (
            stale.status,
            header(&stale, "x-cache").as_str(),
            origin_hit(&stale).as_str()
        ),
        (200, "STALE", "1"),
        "{}",
        stale.headers
    );
    assert!(
        eventually(Duration::from_secs(5), || origin.hits() == 2),
        "the background refresh reached the origin"
    );
    assert!(eventually(Duration::from_secs(5), || {
        let r = curl(&p, "app.test", path, &[]);
        header(&r, "x-cache") == "HIT" && origin_hit(&r) == "2"
    }));
    assert_eq!(origin.hits(), 2, "one refresh");
    // The route's default applies when the response names none.
    let q = node(&origin, "stale_while_revalidate = \"60s\"");
    let plain = "/d?cc=max-age%3D1";
    assert_eq!(header(&curl(&q, "app.test", plain, &[]), "x-cache"), "MISS");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        header(&curl(&q, "app.test", plain, &[]), "x-cache"),
        "STALE"
    );
}

#[test]
fn the_regional_tier_is_shared_by_nodes_and_optional() {
    let Some(mut redis) = Redis::start("the_regional_tier_is_shared_by_nodes_and_optional") else {
        return;
    };
    let origin = Origin::start("a");
    let regional = format!(
        "[cache.regional]\nurl = \"{}\"\ntimeout = \"500ms\"\nprefix = \"t\"",
        redis.url()
    );
    let a = node_with(&origin, "", &regional);
    let b = node_with(&origin, "", &regional);
    let path = "/g?cc=max-age%3D60&tag=shared";
    let first = curl(&a, "app.test", path, &[]);
    assert_eq!(header(&first, "x-cache"), "MISS");
    assert!(
        eventually(Duration::from_secs(5), || redis.keys("t:e:*").len() == 1),
        "stored in Redis: {:?}",
        redis.keys("t:*")
    );
    // Node b has never seen it: Redis answers, not the origin; then b's memory does.
    let from_redis = curl(&b, "app.test", path, &[]);
    assert_eq!(
        (from_redis.status, header(&from_redis, "x-cache").as_str()),
        (200, "REGIONAL-HIT"),
        "{}",
        b.node.log()
    );
    assert_eq!(from_redis.body, first.body);
    assert_eq!(header(&curl(&b, "app.test", path, &[]), "x-cache"), "HIT");
    assert_eq!(origin.hits(), 1);

    // A purge on a reaches Redis, and b's memory through the purge channel.
    let (status, text) = a.admin("POST", "/cache/purge?tag=shared");
    assert_eq!((status, text.as_str()), (200, "purged 1\nregional 1\n"));
    assert!(redis.keys("t:e:*").is_empty());
    assert!(
        eventually(Duration::from_secs(5), || {
            header(&curl(&b, "app.test", path, &[]), "x-cache") == "MISS"
        }),
        "b still answers from memory: {}",
        b.node.log()
    );
    assert_eq!(origin.hits(), 2);
    assert!(
        eventually(Duration::from_secs(5), || redis.keys("t:e:*").len() == 1),
        "b stored it again"
    );
    let c = node_with(&origin, "", &regional);
    assert_eq!(
        header(&curl(&c, "app.test", path, &[]), "x-cache"),
        "REGIONAL-HIT"
    );
    assert_eq!(origin.hits(), 2);
    let (status, _) = c.admin("POST", "/cache/purge?all=1");
    assert_eq!(status, 200);
    assert!(redis.keys("t:*").is_empty(), "{:?}", redis.keys("t:*"));

    // Redis goes away: tier 2 is skipped, clients never see an error.
    redis.kill();
    assert_eq!(header(&curl(&a, "app.test", path, &[]), "x-cache"), "MISS");
    let other = curl(&a, "app.test", "/h?cc=max-age%3D60", &[]);
    assert_eq!(
        (other.status, header(&other, "x-cache").as_str()),
        (200, "MISS")
    );
    assert_eq!(
        header(&curl(&a, "app.test", "/h?cc=max-age%3D60", &[]), "x-cache"),
        "HIT"
    );
    let (status, _) = a.admin("POST", "/cache/purge?all=1");
    assert_eq!(status, 502, "an incomplete purge says so");
}

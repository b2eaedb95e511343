//! A/B personalization against a real node and origin: assignment frequencies follow the
//! weights, the cookie keeps a browser in its variant, authenticated users get the same
//! variant on every request, the origin is told the variant (a client cannot choose it
//! with the header), variant B's HTML is rewritten while A's is not, and cached pages of
//! the two variants stay apart.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

use edge_tests::{
    origin::Origin,
    proxy::{Proxy, curl, start_config},
};

const HEAD: &str = "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n\
                    [threat]\nenabled = false\n";

const SECRET: &str = "personalize-test-secret-0123456789abcdef";

fn node(origin: &Origin, route_extra: &str, experiment: &str) -> Proxy {
    start_config(&format!(
        "{HEAD}\n[[jwt_provider]]\nname = \"hs\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n\
         \n[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         \n[[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n{route_extra}\n\
         [route.experiment]\nname = \"hero\"\n{experiment}\n{}",
        origin.addr,
        edge_tests::proxy::admin_section(),
    ))
}

/// One keep-alive HTTP/1.1 connection (thousands of requests without a process each).
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

struct Answer {
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The variant the origin was told (`x-variant: …` in the echoed request).
    fn origin_variant(&self) -> &str {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix("x-variant: "))
            .unwrap_or("")
    }
}

impl Client {
    fn new(p: &Proxy) -> Self {
        let s = TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn get(&mut self, path: &str, extra: &str) -> Answer {
        write!(
            self.writer,
            "GET {path} HTTP/1.1\r\nHost: app.test\r\n{extra}\r\n"
        )
        .unwrap();
        let mut status = String::new();
        self.reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .expect("a sized body")
            .1
            .parse()
            .unwrap();
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).unwrap();
        Answer {
            headers,
            body: String::from_utf8(body).unwrap(),
        }
    }
}

const WEIGHTED: &str = "[[route.experiment.variant]]\nname = \"a\"\nweight = 80\n\
                        [[route.experiment.variant]]\nname = \"b\"\nweight = 20\n";

#[test]
fn assignment_follows_the_weights_sticks_and_reaches_the_origin() {
    let origin = Origin::start("o");
    let p = node(&origin, "", WEIGHTED);
    let mut c = Client::new(&p);
    let n = 500;
    let mut b = 0;
    for _ in 0..n {
        let r = c.get("/page", "");
        let cookie = r.header("set-cookie").expect("a new client gets a cookie");
        let variant = cookie
            .strip_prefix("edge-ab-hero=")
            .and_then(|c| c.split(';').next())
            .unwrap();
        assert!(
            cookie.ends_with("; Path=/; Max-Age=2592000; SameSite=Lax"),
            "{cookie}"
        );
        assert_eq!(
            r.origin_variant(),
            variant,
            "the origin is told the variant"
        );
        b += usize::from(variant == "b");
    }
    // 20% of 500 is 100, σ ≈ 9: ±35 is almost 4σ.
    assert!((65..=135).contains(&b), "{b} of {n} in b (weight 20%)");

    // The cookie keeps a browser in its variant; no new cookie.
    for variant in ["a", "b"] {
        for _ in 0..20 {
            let r = c.get("/page", &format!("Cookie: x=1; edge-ab-hero={variant}\r\n"));
            assert_eq!(r.origin_variant(), variant);
            assert_eq!(r.header("set-cookie"), None);
        }
    }
    // A client cannot pick its variant with the header the origin reads.
    let r = c.get("/page", "Cookie: edge-ab-hero=a\r\nX-Variant: b\r\n");
    assert_eq!(r.origin_variant(), "a");
    // An unknown variant in the cookie is replaced.
    let r = c.get("/page", "Cookie: edge-ab-hero=zzz\r\n");
    assert!(r.header("set-cookie").is_some());
    assert!(["a", "b"].contains(&r.origin_variant()));
}

fn token(sub: &str) -> String {
    edge_tests::jwt::hs256(sub, &[], SECRET)
}

#[test]
fn authenticated_users_get_the_same_variant_everywhere() {
    let origin = Origin::start("o");
    let experiment = "[[route.experiment.variant]]\nname = \"a\"\nweight = 50\n\
                      [[route.experiment.variant]]\nname = \"b\"\nweight = 50\n";
    let route = "[route.auth]\nprovider = \"hs\"\nmode = \"optional\"\n";
    let p1 = node(&origin, route, experiment);
    let p2 = node(&origin, route, experiment);
    let mut seen = std::collections::HashSet::new();
    for i in 0..16 {
        let auth = format!("Authorization: Bearer {}\r\n", token(&format!("user-{i}")));
        let first = Client::new(&p1)
            .get("/page", &auth)
            .origin_variant()
            .to_string();
        // The same user, with or without a cookie, on either node: the same variant.
        for p in [&p1, &p2, &p1] {
            let mut c = Client::new(p);
            assert_eq!(c.get("/page", &auth).origin_variant(), first, "user-{i}");
            let other = if first == "a" { "b" } else { "a" };
            let with_cookie = format!("{auth}Cookie: edge-ab-hero={other}\r\n");
            let r = c.get("/page", &with_cookie);
            assert_eq!(
                r.origin_variant(),
                first,
                "the user id wins over the cookie"
            );
            assert!(
                r.header("set-cookie").unwrap().contains(&first),
                "cookie corrected"
            );
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "16 users spread over both variants");
}

#[test]
fn variant_b_html_is_rewritten_and_cached_pages_stay_apart() {
    let origin = Origin::start("o");
    let experiment = "[[route.experiment.variant]]\nname = \"a\"\nweight = 1\n\
        [[route.experiment.variant]]\nname = \"b\"\nweight = 1\n\
        [[route.experiment.variant.rewrite]]\nselector = \"h1.hero\"\nset_text = \"Variant B <now>\"\n\
        [[route.experiment.variant.rewrite]]\nselector = \"head\"\nappend_html = \"<script>window.variant='b'</script>\"\n";
    let p = node(
        &origin,
        "[route.cache]\ndefault_ttl = \"60s\"\n",
        experiment,
    );
    let get = |variant: &str| {
        curl(
            &p,
            "app.test",
            "/landing?html=1",
            &["-H", &format!("Cookie: edge-ab-hero={variant}")],
        )
    };
    let a = get("a");
    let b = get("b");
    assert!(
        a.headers.contains("x-cache: miss") && b.headers.contains("x-cache: miss"),
        "{}\n{}",
        a.headers,
        b.headers
    );
    assert!(
        a.body.contains("<h1 class=\"hero\">Original</h1>") && !a.body.contains("<script>"),
        "{}",
        a.body
    );
    assert!(
        b.body
            .contains("<h1 class=\"hero\">Variant B &lt;now&gt;</h1>")
            && b.body
                .contains("<script>window.variant='b'</script></head>")
            && !b.body.contains("Original"),
        "{}",
        b.body
    );
    // Asked for an uncompressed page, so it could be rewritten.
    assert!(b.body.contains("accept-encoding: identity"), "{}", b.body);
    // Cached per variant: each gets its own page back.
    let (a2, b2) = (get("a"), get("b"));
    assert!(a2.headers.contains("x-cache: hit") && b2.headers.contains("x-cache: hit"));
    assert_eq!(
        (a2.body.as_str(), b2.body.as_str()),
        (a.body.as_str(), b.body.as_str())
    );
    assert_eq!(origin.hits(), 2);
}

#[test]
fn the_cookie_is_secure_over_tls() {
    let dir = std::env::temp_dir().join(edge_tests::unique("edge-ab-tls-"));
    std::fs::create_dir_all(&dir).unwrap();
    edge_tests::tls_origin::make_ca_and_leaf(&dir, &["app.test"]);
    let origin = Origin::start("o");
    let node = edge_tests::node::Node::start(
        &format!(
            "[xdp]\nmode = \"off\"\n[http]\nlisten = []\ntls_listen = [\"127.0.0.1:0\"]\n\
             [[certificate]]\nhosts = [\"app.test\"]\ncert = \"{d}/leaf.crt\"\nkey = \"{d}/leaf.key\"\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{o}\"]\n\
             [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n\
             [route.experiment]\nname = \"hero\"\n{WEIGHTED}",
            d = dir.display(),
            o = origin.addr
        ),
        None,
    );
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let port = node
        .logged_addr("https listening")
        .expect("https address")
        .port();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(dir.join("ca.crt"))
        .args(["--resolve", &format!("app.test:{port}:127.0.0.1")])
        .arg(format!("https://app.test:{port}/page"))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.starts_with("edge-ab-hero=")
            && cookie.trim_end().ends_with("; samesite=lax; secure"),
        "{cookie}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

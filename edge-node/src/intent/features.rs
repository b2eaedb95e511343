//! Request-intent features: the fixed-length `f32` vector the intent model reads.
//!
//! This is the serving-side twin of `intent-model/features.py`; both follow the
//! table in `intent-model/README.md` ("Feature specification"). The model was
//! trained on the Python output, so any drift here silently degrades it: change
//! both files together and regenerate `intent-model/test_vectors.json`.
//!
//! Everything works on bytes (lengths are UTF-8 byte lengths, lower-casing is
//! ASCII-only) so that no input, valid or hostile, can panic, and so that the
//! two implementations agree bit for bit. Each value is computed in `f64` and
//! rounded once to `f32`, as the Python side does.

/// Length of the vector returned by [`extract`]; the model's input width.
pub const FEATURE_COUNT: usize = 41;

/// The model's output classes, in the order of its `probabilities` columns.
pub const CLASSES: [&str; 5] = ["browse", "purchase", "api", "scraper", "attack"];

/// Feature names in vector order (for logs and debugging; same as the README).
pub const FEATURE_NAMES: [&str; FEATURE_COUNT] = [
    "method_get",
    "method_head",
    "method_post",
    "method_put",
    "method_delete",
    "method_patch",
    "method_options",
    "method_other",
    "path_len_log",
    "path_depth_log",
    "query_params_log",
    "query_len_log",
    "tok_traversal",
    "tok_xss",
    "tok_sqli",
    "tok_sensitive_file",
    "tok_log4shell",
    "tok_cms_probe",
    "tok_ctrl_char",
    "tok_cmd_injection",
    "ua_attack_token",
    "path_static_asset",
    "path_api",
    "path_commerce",
    "path_login",
    "path_listing",
    "hdr_cookie",
    "hdr_authorization",
    "hdr_referer",
    "hdr_accept_language",
    "hdr_accept",
    "hdr_content_type",
    "hdr_browser_fetch",
    "hdr_x_requested_with",
    "header_count_log",
    "ua_browser",
    "ua_crawler",
    "ua_scripting",
    "ua_scanner",
    "ua_missing",
    "recent_rate_log",
];

/// What the proxy knows about a request when it classifies it.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Request method as received (matched case-sensitively, as HTTP does).
    pub method: &'a str,
    /// Raw path, still percent-encoded.
    pub path: &'a str,
    /// Raw query without the `?`, still percent-encoded; `None` if absent.
    pub query: Option<&'a str>,
    /// Names of the headers present (any case; duplicates count in the total).
    pub header_names: &'a [&'a str],
    /// `User-Agent` value, if the request had one.
    pub user_agent: Option<&'a str>,
    /// The client's requests per second over the last ~10 s.
    pub recent_rate: f32,
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

// Token lists: lower-case ASCII, matched as byte substrings of the decoded,
// lower-cased path and query (see the README for which list applies where).
const TRAVERSAL: &[&str] = &["../", "..\\", "..;/"];
const XSS: &[&str] = &[
    "<script",
    "javascript:",
    "onerror=",
    "onload=",
    "onmouseover=",
    "<svg",
    "<iframe",
    "<img",
    "alert(",
    "document.cookie",
];
const SQLI: &[&str] = &[
    "union select",
    "union all select",
    "union/**/select",
    "' or ",
    "\" or ",
    "' and ",
    " or 1=1",
    "'='",
    "sleep(",
    "benchmark(",
    "information_schema",
    "waitfor delay",
    "@@version",
    "' --",
    "'--",
    "';",
    "pg_sleep",
    "extractvalue(",
    "load_file(",
];
const SENSITIVE_FILE: &[&str] = &[
    "/etc/passwd",
    "/etc/shadow",
    "/etc/hosts",
    "/proc/self",
    "win.ini",
    "boot.ini",
    "/windows/system32",
];
const LOG4SHELL: &[&str] = &[
    "${jndi:", "${${", "${lower:", "${upper:", "${env:", "${::-", "${sys:", "${date:",
];
const CMS_PROBE: &[&str] = &[
    ".php",
    "wp-admin",
    "wp-login",
    "wp-content",
    "wp-includes",
    "xmlrpc",
    "/.env",
    "/.git",
    "/.svn",
    "/.hg",
    "/.ht",
    "/.aws",
    "/.ssh",
    "/.ds_store",
    "phpmyadmin",
    "/cgi-bin",
    ".asp",
    "/actuator",
    "/server-status",
    "/config.json",
    ".sql",
    ".bak",
    "/vendor/phpunit",
    "/solr/",
    "/console",
    "/manager/html",
    "/boaform",
    "/hnap1",
];
const CMD_INJECTION: &[&str] = &[
    ";cat ",
    "|cat ",
    "$(",
    "`",
    ";wget ",
    "|wget ",
    ";curl ",
    "|curl ",
    "wget http",
    "curl http",
    "/bin/sh",
    "/bin/bash",
    "cmd.exe",
    ";id;",
    "|id",
    "&&",
    "nc -e",
    ";ls ",
    "|ls ",
    "() {",
];
/// Lists whose tokens also flag a User-Agent (attack payloads are often sent there).
const UA_ATTACK: [&[&str]; 6] = [
    TRAVERSAL,
    XSS,
    SQLI,
    SENSITIVE_FILE,
    LOG4SHELL,
    CMD_INJECTION,
];

const STATIC_EXT: &[&str] = &[
    "css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "webp", "avif", "svg", "ico", "bmp",
    "woff", "woff2", "ttf", "otf", "eot", "mp4", "webm", "mp3", "ogg", "wav",
];
const API_PREFIX: &[&str] = &["/api/", "/v1/", "/v2/", "/v3/", "/graphql", "/rest/"];
const COMMERCE: &[&str] = &[
    "cart", "checkout", "order", "payment", "/pay", "basket", "purchase",
];
const LOGIN: &[&str] = &[
    "login", "signin", "sign-in", "logon", "/auth", "password", "/session",
];
const LISTING: &[&str] = &[
    "product",
    "/item",
    "catalog",
    "categor",
    "/search",
    "listing",
    "/shop",
    "/collections",
    "sitemap",
];
const PAGINATION_PARAMS: &[&str] = &["page", "p", "pg", "offset", "start", "cursor", "skip"];

const UA_SCANNER: &[&str] = &[
    "sqlmap",
    "nikto",
    "nmap",
    "masscan",
    "zgrab",
    "nuclei",
    "acunetix",
    "wpscan",
    "dirbuster",
    "gobuster",
    "feroxbuster",
    "ffuf",
    "nessus",
    "openvas",
    "burp",
    "havij",
    "w3af",
    "zmeu",
    "netsparker",
    "jorgee",
    "l9explore",
    "fuzz",
];
const UA_SCRIPTING: &[&str] = &[
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "httpx",
    "aiohttp",
    "go-http-client",
    "java/",
    "okhttp",
    "apache-httpclient",
    "libwww-perl",
    "lwp::",
    "node-fetch",
    "axios/",
    "undici",
    "scrapy",
    "ruby",
    "guzzle",
    "php/",
    "postmanruntime",
    "insomnia",
    "httpie",
    "powershell",
    "reqwest",
    "http.rb",
    "faraday",
    "restsharp",
    "dart:io",
    "cpp-httplib",
];
const UA_CRAWLER: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "facebookexternalhit",
    "archiver",
    "mediapartners",
    "feedfetcher",
];
const UA_BROWSER_PREFIX: &[&str] = &["mozilla/", "opera/"];

/// Rates above this are treated as this (keeps the feature bounded).
const RATE_CAP: f32 = 10000.0;

/// Index of the first user-agent class slot (browser, crawler, scripting, scanner, missing).
const UA_SLOT: usize = 35;

/// Decodes `%XX` (two hex digits) once; an invalid or truncated escape stays
/// as-is. With `plus_as_space` (queries), `+` becomes a space. Never fails.
fn percent_decode(raw: &[u8], plus_as_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%'
            && i + 2 < raw.len()
            && let (Some(hi), Some(lo)) = (hex_val(raw[i + 1]), hex_val(raw[i + 2]))
        {
            out.push((hi << 4) | lo);
            i += 3;
            continue;
        }
        out.push(if plus_as_space && b == b'+' { b' ' } else { b });
        i += 1;
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decoded, then ASCII-lower-cased: what token lists are matched against.
fn normalize(raw: &[u8], plus_as_space: bool) -> Vec<u8> {
    let mut v = percent_decode(raw, plus_as_space);
    v.make_ascii_lowercase();
    v
}

/// Byte-substring test. Checks the first byte before comparing the rest: a request is
/// scanned for some hundred tokens, and most positions fail on their first byte.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if hay.len() < needle.len() {
        return false;
    }
    let last_start = hay.len() - needle.len();
    hay[..=last_start]
        .iter()
        .enumerate()
        .any(|(i, &b)| b == first && &hay[i + 1..i + needle.len()] == rest)
}

fn any_in(hay: &[u8], tokens: &[&str]) -> bool {
    tokens.iter().any(|t| contains(hay, t.as_bytes()))
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// `ln(1 + n)` of a count or length: compresses heavy tails into a few units.
fn log_count(n: usize) -> f64 {
    (n as f64).ln_1p()
}

/// Removes spaces and tabs at both ends (only those two, exactly as the spec says).
fn trim_space_tab(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// Slot (0 browser, 1 crawler, 2 scripting, 3 scanner, 4 missing) of a
/// normalized user agent, or `None` for an unrecognised one. First match wins,
/// so e.g. a Googlebot UA that starts with `Mozilla/` is a crawler.
fn ua_class(ua: &[u8]) -> Option<usize> {
    if ua.is_empty() {
        Some(4)
    } else if any_in(ua, UA_SCANNER) {
        Some(3)
    } else if any_in(ua, UA_SCRIPTING) {
        Some(2)
    } else if any_in(ua, UA_CRAWLER) {
        Some(1)
    } else if UA_BROWSER_PREFIX
        .iter()
        .any(|p| ua.starts_with(p.as_bytes()))
    {
        Some(0)
    } else {
        None
    }
}

/// Computes the feature vector of one request (see the README's table).
pub fn extract(facts: &RequestFacts<'_>) -> [f32; FEATURE_COUNT] {
    let mut v = [0.0f64; FEATURE_COUNT];

    let method_slot = METHODS.iter().position(|m| *m == facts.method).unwrap_or(7);
    v[method_slot] = 1.0;

    let raw_path = facts.path.as_bytes();
    let raw_query = facts.query.unwrap_or("").as_bytes();
    let path = normalize(raw_path, false);
    let query = normalize(raw_query, true);

    v[8] = log_count(raw_path.len());
    v[9] = log_count(path.split(|&b| b == b'/').filter(|s| !s.is_empty()).count());
    let pieces: Vec<&[u8]> = raw_query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .collect();
    v[10] = log_count(pieces.len());
    v[11] = log_count(raw_query.len());

    let in_either = |tokens: &[&str]| flag(any_in(&path, tokens) || any_in(&query, tokens));
    v[12] = in_either(TRAVERSAL);
    v[13] = in_either(XSS);
    v[14] = in_either(SQLI);
    v[15] = in_either(SENSITIVE_FILE);
    v[16] = in_either(LOG4SHELL);
    v[17] = flag(any_in(&path, CMS_PROBE));
    v[18] = flag(
        path.iter()
            .chain(query.iter())
            .any(|&b| b < 0x20 || b == 0x7f),
    );
    v[19] = in_either(CMD_INJECTION);

    let ua = facts
        .user_agent
        .map(|u| trim_space_tab(u.as_bytes()).to_ascii_lowercase())
        .unwrap_or_default();
    v[20] = flag(UA_ATTACK.iter().any(|list| any_in(&ua, list)));

    let last_seg = path.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
    if let Some(dot) = last_seg.iter().rposition(|&b| b == b'.') {
        let ext = &last_seg[dot + 1..];
        v[21] = flag(STATIC_EXT.iter().any(|e| e.as_bytes() == ext));
    }
    v[22] = flag(path == b"/api" || API_PREFIX.iter().any(|p| path.starts_with(p.as_bytes())));
    v[23] = flag(any_in(&path, COMMERCE));
    v[24] = flag(any_in(&path, LOGIN));
    let paginated = pieces.iter().any(|piece| {
        let name = piece.split(|&b| b == b'=').next().unwrap_or(&[]);
        let name = normalize(name, true);
        PAGINATION_PARAMS
            .iter()
            .any(|p| p.as_bytes() == name.as_slice())
    });
    v[25] = flag(any_in(&path, LISTING) || paginated);

    let has = |name: &str| {
        facts
            .header_names
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    };
    let has_prefix = |prefix: &str| {
        facts.header_names.iter().any(|h| {
            h.len() >= prefix.len()
                && h.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        })
    };
    v[26] = flag(has("cookie"));
    v[27] = flag(has("authorization") || has("x-api-key"));
    v[28] = flag(has("referer"));
    v[29] = flag(has("accept-language"));
    v[30] = flag(has("accept"));
    v[31] = flag(has("content-type"));
    v[32] = flag(has_prefix("sec-fetch-") || has_prefix("sec-ch-ua"));
    v[33] = flag(has("x-requested-with"));
    v[34] = log_count(facts.header_names.len());

    if let Some(slot) = ua_class(&ua) {
        v[UA_SLOT + slot] = 1.0;
    }

    // NaN and non-positive rates count as 0; `f32::clamp` would keep a NaN.
    let rate = facts.recent_rate;
    let rate = if rate.is_nan() || rate <= 0.0 {
        0.0
    } else {
        rate.min(RATE_CAP)
    };
    v[40] = f64::from(rate).ln_1p();

    v.map(|x| x as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(method: &'a str, path: &'a str, query: Option<&'a str>) -> RequestFacts<'a> {
        RequestFacts {
            method,
            path,
            query,
            header_names: &[],
            user_agent: None,
            recent_rate: 0.0,
        }
    }

    fn feature(v: &[f32; FEATURE_COUNT], name: &str) -> f32 {
        v[FEATURE_NAMES
            .iter()
            .position(|n| *n == name)
            .expect("known feature")]
    }

    #[test]
    fn encoded_traversal_sets_traversal_and_file_flags() {
        let v = extract(&facts("GET", "/static/..%2F..%2fetc%2Fpasswd", None));
        assert_eq!(feature(&v, "tok_traversal"), 1.0);
        assert_eq!(feature(&v, "tok_sensitive_file"), 1.0);
        assert_eq!(feature(&v, "tok_sqli"), 0.0);
    }

    #[test]
    fn decoding_is_done_once() {
        // %252e decodes to "%2e", not ".", so double encoding is not a traversal.
        let v = extract(&facts("GET", "/a/%252e%252e%252fetc", None));
        assert_eq!(feature(&v, "tok_traversal"), 0.0);
    }

    #[test]
    fn invalid_escapes_do_not_panic_and_stay_literal() {
        for p in ["%", "%%", "%4", "%zz", "/%G1%", "/a%", "%%41"] {
            let v = extract(&facts("GET", p, Some(p)));
            assert!(v.iter().all(|x| x.is_finite()));
        }
        assert_eq!(percent_decode(b"%%41%4g%4", false), b"%A%4g%4");
        assert_eq!(percent_decode(b"a+b%2B", true), b"a b+");
        assert_eq!(percent_decode(b"a+b", false), b"a+b");
    }

    #[test]
    fn empty_request_is_mostly_zero() {
        let v = extract(&facts("", "", None));
        assert_eq!(feature(&v, "method_other"), 1.0);
        assert_eq!(feature(&v, "ua_missing"), 1.0);
        assert_eq!(v.iter().filter(|x| **x != 0.0).count(), 2);
    }

    #[test]
    fn sqli_in_query_with_plus_and_mixed_case() {
        let v = extract(&facts("GET", "/search", Some("q=1%27+UnIoN+SeLeCt+1,2--")));
        assert_eq!(feature(&v, "tok_sqli"), 1.0);
        assert_eq!(feature(&v, "path_listing"), 1.0);
        assert_eq!(feature(&v, "query_params_log"), (1.0f64).ln_1p() as f32);
    }

    #[test]
    fn nul_and_crlf_are_control_chars() {
        assert_eq!(
            feature(&extract(&facts("GET", "/a%00.jpg", None)), "tok_ctrl_char"),
            1.0
        );
        assert_eq!(
            feature(
                &extract(&facts("GET", "/", Some("x=%0d%0aSet-Cookie"))),
                "tok_ctrl_char"
            ),
            1.0
        );
    }

    #[test]
    fn user_agent_classes_and_precedence() {
        let class_of = |ua: Option<&str>| {
            let mut f = facts("GET", "/", None);
            f.user_agent = ua;
            let v = extract(&f);
            v[UA_SLOT..UA_SLOT + 5].iter().position(|x| *x == 1.0)
        };
        let chrome =
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36";
        assert_eq!(class_of(Some(chrome)), Some(0));
        assert_eq!(
            class_of(Some("Mozilla/5.0 (compatible; Googlebot/2.1)")),
            Some(1)
        );
        assert_eq!(class_of(Some("python-requests/2.31.0")), Some(2));
        assert_eq!(class_of(Some("Mozilla/5.0 zgrab/0.x")), Some(3));
        assert_eq!(class_of(Some(" \t ")), Some(4));
        assert_eq!(class_of(None), Some(4));
        assert_eq!(class_of(Some("ShopApp/4.2 (iOS 17)")), None);
    }

    #[test]
    fn log4shell_in_user_agent() {
        let mut f = facts("GET", "/", None);
        f.user_agent = Some("${jndi:ldap://x.example/a}");
        assert_eq!(feature(&extract(&f), "ua_attack_token"), 1.0);
    }

    #[test]
    fn headers_are_case_insensitive_and_counted() {
        let names = ["Cookie", "SEC-FETCH-MODE", "accept", "accept"];
        let mut f = facts("POST", "/cart/add", None);
        f.header_names = &names;
        let v = extract(&f);
        assert_eq!(feature(&v, "hdr_cookie"), 1.0);
        assert_eq!(feature(&v, "hdr_browser_fetch"), 1.0);
        assert_eq!(feature(&v, "hdr_accept"), 1.0);
        assert_eq!(feature(&v, "hdr_referer"), 0.0);
        assert_eq!(feature(&v, "header_count_log"), (4.0f64).ln_1p() as f32);
        assert_eq!(feature(&v, "path_commerce"), 1.0);
    }

    #[test]
    fn odd_rates_are_bounded() {
        let rate_of = |r: f32| {
            let mut f = facts("GET", "/", None);
            f.recent_rate = r;
            feature(&extract(&f), "recent_rate_log")
        };
        assert_eq!(rate_of(f32::NAN), 0.0);
        assert_eq!(rate_of(-3.0), 0.0);
        assert_eq!(rate_of(f32::INFINITY), (10000.0f64).ln_1p() as f32);
        assert_eq!(rate_of(1.0), (1.0f64).ln_1p() as f32);
    }

    #[test]
    fn non_ascii_and_huge_inputs_do_not_panic() {
        let huge = "/é%".repeat(20_000);
        let v = extract(&facts("GËT", &huge, Some("ü=%FF%fe&&=")));
        assert_eq!(feature(&v, "method_other"), 1.0);
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn static_asset_extension_is_on_the_last_segment() {
        assert_eq!(
            feature(
                &extract(&facts("GET", "/assets/App.CSS", None)),
                "path_static_asset"
            ),
            1.0
        );
        assert_eq!(
            feature(
                &extract(&facts("GET", "/file.css/view", None)),
                "path_static_asset"
            ),
            0.0
        );
        assert_eq!(
            feature(
                &extract(&facts("GET", "/img/.png", None)),
                "path_static_asset"
            ),
            1.0
        );
    }
}

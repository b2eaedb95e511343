"""Request-intent feature extraction (Python reference implementation).

This module and ``edge-node/src/intent/features.rs`` implement the same
specification, written down in ``README.md`` ("Feature specification").  The
model is trained on what this file produces and served on what the Rust file
produces, so any change here must be made there too (and the test vectors
regenerated with ``make_vectors.py``).

Everything works on bytes: strings are encoded as UTF-8 first, lengths are
byte lengths, lower-casing is ASCII-only and substring tests are byte tests.
Each feature is computed in float64 and rounded once to float32 at the end, as
the Rust side does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

CLASSES = ("browse", "purchase", "api", "scraper", "attack")

FEATURE_NAMES = (
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
)
FEATURE_COUNT = len(FEATURE_NAMES)  # 41

METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS")

# Token lists: all lower-case ASCII; matched as byte substrings.
TRAVERSAL = (b"../", b"..\\", b"..;/")
XSS = (
    b"<script", b"javascript:", b"onerror=", b"onload=", b"onmouseover=",
    b"<svg", b"<iframe", b"<img", b"alert(", b"document.cookie",
)
SQLI = (
    b"union select", b"union all select", b"union/**/select", b"' or ",
    b"\" or ", b"' and ", b" or 1=1", b"'='", b"sleep(", b"benchmark(",
    b"information_schema", b"waitfor delay", b"@@version", b"' --", b"'--",
    b"';", b"pg_sleep", b"extractvalue(", b"load_file(",
)
SENSITIVE_FILE = (
    b"/etc/passwd", b"/etc/shadow", b"/etc/hosts", b"/proc/self", b"win.ini",
    b"boot.ini", b"/windows/system32",
)
LOG4SHELL = (
    b"${jndi:", b"${${", b"${lower:", b"${upper:", b"${env:", b"${::-",
    b"${sys:", b"${date:",
)
CMS_PROBE = (
    b".php", b"wp-admin", b"wp-login", b"wp-content", b"wp-includes",
    b"xmlrpc", b"/.env", b"/.git", b"/.svn", b"/.hg", b"/.ht", b"/.aws",
    b"/.ssh", b"/.ds_store", b"phpmyadmin", b"/cgi-bin", b".asp",
    b"/actuator", b"/server-status", b"/config.json", b".sql", b".bak",
    b"/vendor/phpunit", b"/solr/", b"/console", b"/manager/html",
    b"/boaform", b"/hnap1",
)
CMD_INJECTION = (
    b";cat ", b"|cat ", b"$(", b"`", b";wget ", b"|wget ", b";curl ",
    b"|curl ", b"wget http", b"curl http", b"/bin/sh", b"/bin/bash",
    b"cmd.exe", b";id;", b"|id", b"&&", b"nc -e", b";ls ", b"|ls ", b"() {",
)
UA_ATTACK = TRAVERSAL + XSS + SQLI + SENSITIVE_FILE + LOG4SHELL + CMD_INJECTION

STATIC_EXT = (
    b"css", b"js", b"mjs", b"map", b"png", b"jpg", b"jpeg", b"gif", b"webp",
    b"avif", b"svg", b"ico", b"bmp", b"woff", b"woff2", b"ttf", b"otf",
    b"eot", b"mp4", b"webm", b"mp3", b"ogg", b"wav",
)
API_PREFIX = (b"/api/", b"/v1/", b"/v2/", b"/v3/", b"/graphql", b"/rest/")
COMMERCE = (b"cart", b"checkout", b"order", b"payment", b"/pay", b"basket", b"purchase")
LOGIN = (b"login", b"signin", b"sign-in", b"logon", b"/auth", b"password", b"/session")
LISTING = (
    b"product", b"/item", b"catalog", b"categor", b"/search", b"listing",
    b"/shop", b"/collections", b"sitemap",
)
PAGINATION_PARAMS = (b"page", b"p", b"pg", b"offset", b"start", b"cursor", b"skip")

UA_SCANNER = (
    b"sqlmap", b"nikto", b"nmap", b"masscan", b"zgrab", b"nuclei",
    b"acunetix", b"wpscan", b"dirbuster", b"gobuster", b"feroxbuster",
    b"ffuf", b"nessus", b"openvas", b"burp", b"havij", b"w3af", b"zmeu",
    b"netsparker", b"jorgee", b"l9explore", b"fuzz",
)
UA_SCRIPTING = (
    b"curl/", b"wget/", b"python-requests", b"python-urllib", b"httpx",
    b"aiohttp", b"go-http-client", b"java/", b"okhttp", b"apache-httpclient",
    b"libwww-perl", b"lwp::", b"node-fetch", b"axios/", b"undici",
    b"scrapy", b"ruby", b"guzzle", b"php/", b"postmanruntime", b"insomnia",
    b"httpie", b"powershell", b"reqwest", b"http.rb", b"faraday",
    b"restsharp", b"dart:io", b"cpp-httplib",
)
UA_CRAWLER = (
    b"bot", b"crawl", b"spider", b"slurp", b"facebookexternalhit",
    b"archiver", b"mediapartners", b"feedfetcher",
)
UA_BROWSER_PREFIX = (b"mozilla/", b"opera/")

RATE_CAP = 10000.0

_HEX = b"0123456789abcdefABCDEF"


@dataclass
class RequestFacts:
    """What the proxy knows about one request when it classifies it."""

    method: str
    path: str
    query: Optional[str] = None
    header_names: Sequence[str] = field(default_factory=tuple)
    user_agent: Optional[str] = None
    recent_rate: float = 0.0


def _utf8(s: str) -> bytes:
    # Rust strings are always valid UTF-8; surrogatepass only keeps Python
    # from raising on strings Rust could never receive.
    return s.encode("utf-8", "surrogatepass")


def percent_decode(raw: bytes, plus_as_space: bool) -> bytes:
    """Decode once: ``%XX`` (two hex digits) -> byte; anything else as-is."""
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25 and i + 2 < n and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
            continue
        if plus_as_space and b == 0x2B:
            out.append(0x20)
        else:
            out.append(b)
        i += 1
    return bytes(out)


def _any_in(hay: bytes, tokens: Sequence[bytes]) -> bool:
    return any(t in hay for t in tokens)


def _log1p(n: float) -> float:
    return math.log1p(n)


def _f32(x: float) -> float:
    """Round a Python float to the nearest float32 (inf when out of range)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def _trim_space_tab(b: bytes) -> bytes:
    return b.strip(b" \t")


def normalize_ua(user_agent: Optional[str]) -> bytes:
    """UTF-8, spaces/tabs trimmed at both ends, ASCII-lower-cased; b"" if absent."""
    if user_agent is None:
        return b""
    return _trim_space_tab(_utf8(user_agent)).lower()


def ua_class(ua: bytes) -> int:
    """Class of a normalized UA: 0 browser, 1 crawler, 2 scripting, 3 scanner,
    4 missing, -1 other (no one-hot slot set)."""
    if not ua:
        return 4
    if _any_in(ua, UA_SCANNER):
        return 3
    if _any_in(ua, UA_SCRIPTING):
        return 2
    if _any_in(ua, UA_CRAWLER):
        return 1
    if ua.startswith(UA_BROWSER_PREFIX):
        return 0
    return -1


def extract(f: RequestFacts) -> np.ndarray:
    """Feature vector (float32, length FEATURE_COUNT) for one request."""
    v = [0.0] * FEATURE_COUNT

    method = _utf8(f.method)
    v[METHODS.index(method) if method in METHODS else 7] = 1.0

    raw_path = _utf8(f.path)
    raw_query = _utf8(f.query) if f.query is not None else b""
    path = percent_decode(raw_path, False).lower()
    query = percent_decode(raw_query, True).lower()

    v[8] = _log1p(len(raw_path))
    v[9] = _log1p(sum(1 for seg in path.split(b"/") if seg))
    pieces = [p for p in raw_query.split(b"&") if p]
    v[10] = _log1p(len(pieces))
    v[11] = _log1p(len(raw_query))

    def in_either(tokens: Sequence[bytes]) -> float:
        return 1.0 if _any_in(path, tokens) or _any_in(query, tokens) else 0.0

    v[12] = in_either(TRAVERSAL)
    v[13] = in_either(XSS)
    v[14] = in_either(SQLI)
    v[15] = in_either(SENSITIVE_FILE)
    v[16] = in_either(LOG4SHELL)
    v[17] = 1.0 if _any_in(path, CMS_PROBE) else 0.0
    v[18] = 1.0 if any(b < 0x20 or b == 0x7F for b in path + query) else 0.0
    v[19] = in_either(CMD_INJECTION)

    ua = normalize_ua(f.user_agent)
    v[20] = 1.0 if _any_in(ua, UA_ATTACK) else 0.0

    last_seg = path.rsplit(b"/", 1)[-1]
    if b"." in last_seg:
        v[21] = 1.0 if last_seg.rsplit(b".", 1)[1] in STATIC_EXT else 0.0
    v[22] = 1.0 if path == b"/api" or path.startswith(API_PREFIX) else 0.0
    v[23] = 1.0 if _any_in(path, COMMERCE) else 0.0
    v[24] = 1.0 if _any_in(path, LOGIN) else 0.0
    names = [percent_decode(p.split(b"=", 1)[0], True).lower() for p in pieces]
    v[25] = 1.0 if _any_in(path, LISTING) or any(n in PAGINATION_PARAMS for n in names) else 0.0

    headers = [_utf8(h).lower() for h in f.header_names]
    hs = set(headers)
    v[26] = 1.0 if b"cookie" in hs else 0.0
    v[27] = 1.0 if b"authorization" in hs or b"x-api-key" in hs else 0.0
    v[28] = 1.0 if b"referer" in hs else 0.0
    v[29] = 1.0 if b"accept-language" in hs else 0.0
    v[30] = 1.0 if b"accept" in hs else 0.0
    v[31] = 1.0 if b"content-type" in hs else 0.0
    v[32] = 1.0 if any(h.startswith((b"sec-fetch-", b"sec-ch-ua")) for h in headers) else 0.0
    v[33] = 1.0 if b"x-requested-with" in hs else 0.0
    v[34] = _log1p(len(headers))

    cls = ua_class(ua)
    if cls >= 0:
        v[35 + cls] = 1.0

    r = _f32(float(f.recent_rate))
    if math.isnan(r) or r <= 0.0:
        r = 0.0
    elif r > RATE_CAP:
        r = RATE_CAP
    v[40] = _log1p(r)

    return np.array(v, dtype=np.float64).astype(np.float32)


def extract_many(facts: Sequence[RequestFacts]) -> np.ndarray:
    out = np.empty((len(facts), FEATURE_COUNT), dtype=np.float32)
    for i, f in enumerate(facts):
        out[i] = extract(f)
    return out

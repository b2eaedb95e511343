//! Personalize phase (routes with `[route.experiment]`): an A/B experiment. Every client
//! gets a variant, by the experiment's weights: from its user id when authenticated
//! (deterministic, the same on every node), else from its sticky cookie, else at random
//! (and the cookie is set). The origin learns the variant in a header (the client's copy
//! is replaced); the cache keeps variants apart (the variant is part of the key); the
//! variant's HTML rewrites are applied with lol_html while the page streams. Routes
//! without an experiment: nothing.
//!
//! `assign`: which variant a request gets and how it sticks; `rewrite`: the variant's
//! HTML edits.

mod assign;
mod rewrite;

use std::{sync::Arc, time::Duration};

use anyhow::{Result, bail};
use http::{HeaderName, HeaderValue, Response};
use lol_html::Selector;
use serde::Deserialize;

use crate::{
    error::Body,
    request::{Flow, Phase, PhaseFuture, Reply, RequestCtx},
};
use rewrite::Rewrite;

/// The personalize phase: the request's variant (told to the origin, part of the cache
/// key), the variant's HTML edits on what the origin answers (before the cache keeps
/// it), and the sticky cookie on every response.
pub struct PersonalizePhase {
    /// Per route (by index).
    pub routes: Vec<Option<Arc<Experiment>>>,
}

/// The experiment and variant of a request.
struct Assigned(Arc<Experiment>, Assignment);

impl Phase for PersonalizePhase {
    fn name(&self) -> &'static str {
        "personalize"
    }

    fn request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut http::Request<Body>,
    ) -> PhaseFuture<'a> {
        if let Some(e) = ctx.route_index().and_then(|i| self.routes[i].as_ref()) {
            let a = e.assign(req.headers(), ctx.user.as_deref());
            e.forward(a, req.headers_mut());
            ctx.variant = Some(e.variant_name(a).to_string());
            ctx.state.put(Assigned(e.clone(), a));
        }
        Box::pin(std::future::ready(Ok(Flow::Continue)))
    }

    fn origin_response(&self, ctx: &mut RequestCtx, reply: Reply) -> Reply {
        match ctx.state.get::<Assigned>() {
            Some(Assigned(e, a)) => reply.map(|resp| e.rewrite(*a, resp)),
            None => reply,
        }
    }

    fn response(&self, ctx: &mut RequestCtx, resp: &mut Response<Body>) {
        if let Some(Assigned(e, a)) = ctx.state.get::<Assigned>() {
            e.set_cookie(*a, resp, ctx.scheme == "https");
        }
    }
}

/// `[route.experiment]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSettings {
    /// Names the experiment (in the default cookie name and the user hash).
    pub name: String,
    /// The sticky cookie (default `edge-ab-NAME`).
    #[serde(default)]
    pub cookie: Option<String>,
    /// How long the cookie keeps a browser in its variant.
    #[serde(default = "default_cookie_max_age", with = "crate::duration")]
    pub cookie_max_age: Duration,
    /// The request header that tells the origin the variant (a client's copy is replaced).
    #[serde(default = "default_header")]
    pub header: String,
    /// `[[route.experiment.variant]]`, at least one.
    pub variant: Vec<VariantSettings>,
}

fn default_cookie_max_age() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_header() -> String {
    "x-variant".into()
}

/// `[[route.experiment.variant]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSettings {
    /// Letters, digits, `-` and `_` (it goes into a cookie and a header).
    pub name: String,
    /// Relative share of the clients.
    pub weight: u32,
    /// `[[route.experiment.variant.rewrite]]`: edits of this variant's HTML pages.
    #[serde(default)]
    pub rewrite: Vec<RewriteSettings>,
}

/// One edit of the elements a CSS selector matches: exactly one action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSettings {
    pub selector: String,
    /// Replace the element's content with text (escaped).
    #[serde(default)]
    pub set_text: Option<String>,
    /// Replace the element's content with HTML.
    #[serde(default)]
    pub set_html: Option<String>,
    /// Replace the whole element with HTML.
    #[serde(default)]
    pub replace_html: Option<String>,
    /// Insert HTML at the start / end of the element's content, or before / after it.
    #[serde(default)]
    pub prepend_html: Option<String>,
    #[serde(default)]
    pub append_html: Option<String>,
    #[serde(default)]
    pub before_html: Option<String>,
    #[serde(default)]
    pub after_html: Option<String>,
    /// Set attribute `set_attribute` to `value`.
    #[serde(default)]
    pub set_attribute: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    /// Remove the element and its content.
    #[serde(default)]
    pub remove: bool,
}

struct Variant {
    name: String,
    value: HeaderValue,
    weight: u32,
    rewrites: Arc<[Rewrite]>,
}

pub struct Experiment {
    name: String,
    cookie: String,
    max_age: u64,
    header: HeaderName,
    variants: Vec<Variant>,
    total_weight: u64,
}

/// The variant a request was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub variant: usize,
    /// The client's cookie does not say it yet: the response sets it.
    pub set_cookie: bool,
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Experiment {
    pub fn new(s: &ExperimentSettings) -> Result<Self> {
        if !valid_token(&s.name) {
            bail!(
                "experiment name {:?}: letters, digits, - and _ only",
                s.name
            );
        }
        let cookie = s
            .cookie
            .clone()
            .unwrap_or_else(|| format!("edge-ab-{}", s.name));
        if !valid_token(&cookie) {
            bail!(
                "experiment {}: cookie {cookie:?} is not a valid name",
                s.name
            );
        }
        if s.variant.is_empty() {
            bail!("experiment {}: needs at least one variant", s.name);
        }
        let mut variants: Vec<Variant> = Vec::new();
        for v in &s.variant {
            if !valid_token(&v.name) {
                bail!(
                    "experiment {}: variant name {:?}: letters, digits, - and _ only",
                    s.name,
                    v.name
                );
            }
            if variants.iter().any(|o| o.name == v.name) {
                bail!("experiment {}: variant {} twice", s.name, v.name);
            }
            let rewrites = v
                .rewrite
                .iter()
                .map(|r| {
                    let selector: Selector = r.selector.parse().map_err(|e| {
                        anyhow::anyhow!(
                            "experiment {} variant {}: selector {:?}: {e}",
                            s.name,
                            v.name,
                            r.selector
                        )
                    })?;
                    let action = r.action().map_err(|e| {
                        anyhow::anyhow!(
                            "experiment {} variant {} selector {:?}: {e}",
                            s.name,
                            v.name,
                            r.selector
                        )
                    })?;
                    Ok(Rewrite {
                        selector: Arc::new(selector),
                        action,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            variants.push(Variant {
                value: HeaderValue::from_str(&v.name)?,
                name: v.name.clone(),
                weight: v.weight,
                rewrites: rewrites.into(),
            });
        }
        let total_weight: u64 = variants.iter().map(|v| u64::from(v.weight)).sum();
        if total_weight == 0 {
            bail!("experiment {}: the weights add up to 0", s.name);
        }
        Ok(Self {
            name: s.name.clone(),
            cookie,
            max_age: s.cookie_max_age.as_secs(),
            header: HeaderName::from_bytes(s.header.as_bytes())?,
            variants,
            total_weight,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, header};
    use http_body_util::BodyExt;
    use hyper::body::Frame;

    use super::*;
    use crate::error::{BoxError, full};

    fn experiment(toml_text: &str) -> Result<Experiment> {
        let s: ExperimentSettings = toml::from_str(toml_text)?;
        Experiment::new(&s)
    }

    const AB: &str = r#"
        name = "hero"
        [[variant]]
        name = "a"
        weight = 1
        [[variant]]
        name = "b"
        weight = 3
        [[variant.rewrite]]
        selector = "h1.hero"
        set_text = "New <headline>"
        [[variant.rewrite]]
        selector = "head"
        append_html = "<script>var v='b'</script>"
        [[variant.rewrite]]
        selector = "a#buy"
        set_attribute = "href"
        value = "/checkout-b"
        [[variant.rewrite]]
        selector = ".old"
        remove = true
    "#;

    async fn body_of(resp: Response<Body>) -> String {
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    fn html(page: &'static str, ct: &str) -> Response<Body> {
        // Split in two frames inside a tag: the rewriter must handle chunk boundaries.
        let (a, b) = page.split_at(page.len() / 2);
        let frames = futures_util::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(a.as_bytes()))),
            Ok(Frame::data(Bytes::from_static(b.as_bytes()))),
        ]);
        let mut r = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(frames)));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_static("\"x\""));
        r
    }

    const PAGE: &str = "<html><head><title>t</title></head><body><h1 class=\"hero\">Old</h1>\
        <p class=\"old\">gone</p><a id=\"buy\" href=\"/checkout\">buy</a></body></html>";

    #[tokio::test]
    async fn variant_b_is_rewritten_while_streaming_and_a_is_not() {
        let e = experiment(AB).unwrap();
        let b = Assignment {
            variant: 1,
            set_cookie: true,
        };
        let out = e.rewrite(b, html(PAGE, "text/html; charset=utf-8"));
        assert_eq!(out.headers()[header::ETAG], "W/\"x\"");
        let text = body_of(out).await;
        assert!(
            text.contains("<h1 class=\"hero\">New &lt;headline&gt;</h1>"),
            "{text}"
        );
        assert!(text.contains("<script>var v='b'</script></head>"), "{text}");
        assert!(text.contains("href=\"/checkout-b\""), "{text}");
        assert!(!text.contains("gone"), "{text}");
        let a = Assignment {
            variant: 0,
            set_cookie: false,
        };
        assert_eq!(body_of(e.rewrite(a, html(PAGE, "text/html"))).await, PAGE);
        // Not HTML, or another charset: untouched.
        assert_eq!(body_of(e.rewrite(b, html(PAGE, "text/plain"))).await, PAGE);
        assert_eq!(
            body_of(e.rewrite(b, html(PAGE, "text/html; charset=iso-8859-1"))).await,
            PAGE
        );
        let mut gz = html(PAGE, "text/html");
        gz.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(body_of(e.rewrite(b, gz)).await, PAGE);
        let _ = full("");
    }

    #[test]
    fn assignment_by_cookie_user_and_weight() {
        let e = experiment(AB).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; edge-ab-hero=a"),
        );
        assert_eq!(
            e.assign(&h, None),
            Assignment {
                variant: 0,
                set_cookie: false
            }
        );
        // An unknown variant in the cookie is reassigned.
        h.insert(header::COOKIE, HeaderValue::from_static("edge-ab-hero=zzz"));
        assert!(e.assign(&h, None).set_cookie);
        // Users: the same variant every time, whatever the cookie says.
        let empty = HeaderMap::new();
        let u = e.assign(&empty, Some("alice"));
        for _ in 0..10 {
            assert_eq!(e.assign(&h, Some("alice")).variant, u.variant);
        }
        let counts = (0..4000).fold([0usize; 2], |mut c, _| {
            c[e.assign(&empty, None).variant] += 1;
            c
        });
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
        // Bad configurations are refused with the reason.
        for (bad, why) in [
            (
                "name = \"x y\"\n[[variant]]\nname=\"a\"\nweight=1",
                "letters",
            ),
            ("name = \"x\"\nvariant = []", "at least one"),
            (
                "name = \"x\"\n[[variant]]\nname=\"a\"\nweight=0",
                "add up to 0",
            ),
            (
                "name = \"x\"\n[[variant]]\nname=\"a\"\nweight=1\n[[variant.rewrite]]\nselector=\"h1[\"\nremove=true",
                "selector",
            ),
            (
                "name = \"x\"\n[[variant]]\nname=\"a\"\nweight=1\n[[variant.rewrite]]\nselector=\"h1\"\nremove=true\nset_text=\"t\"",
                "one action",
            ),
        ] {
            let err = experiment(bad).err().expect(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn cookies_are_sticky_and_secure_on_tls() {
        let e = experiment(AB).unwrap();
        let mut resp = Response::new(full(""));
        let a = Assignment {
            variant: 1,
            set_cookie: true,
        };
        e.set_cookie(a, &mut resp, true);
        assert_eq!(
            resp.headers()[header::SET_COOKIE],
            "edge-ab-hero=b; Path=/; Max-Age=2592000; SameSite=Lax; Secure"
        );
    }
}

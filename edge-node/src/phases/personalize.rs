//! Personalize phase (routes with `[route.experiment]`): an A/B experiment. Every client
//! gets a variant, by the experiment's weights: from its user id when authenticated
//! (deterministic, the same on every node), else from its sticky cookie, else at random
//! (and the cookie is set). The origin learns the variant in a header (the client's copy
//! is replaced); the cache keeps variants apart (the variant is part of the key); the
//! variant's HTML rewrites are applied with lol_html while the page streams. Routes
//! without an experiment: nothing.

use std::{
    borrow::Cow,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Result, bail};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use lol_html::{
    OutputSink, Selector,
    html_content::ContentType,
    send::{ElementContentHandlers, HtmlRewriter, Settings},
};
use serde::Deserialize;
use sync_wrapper::SyncWrapper;
use tracing::debug;

use crate::{
    error::{Body, BoxError},
    hash::stable_hash,
    request::{Flow, Phase, PhaseFuture, Reply, RequestCtx},
};

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

#[derive(Debug, Clone)]
enum Action {
    SetText(String),
    SetHtml(String),
    Replace(String),
    Prepend(String),
    Append(String),
    Before(String),
    After(String),
    SetAttribute(String, String),
    Remove,
}

struct Rewrite {
    selector: Arc<Selector>,
    action: Action,
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

impl RewriteSettings {
    fn action(&self) -> Result<Action> {
        let mut actions = Vec::new();
        let text = |v: &Option<String>| v.clone();
        if let Some(v) = text(&self.set_text) {
            actions.push(Action::SetText(v));
        }
        if let Some(v) = text(&self.set_html) {
            actions.push(Action::SetHtml(v));
        }
        if let Some(v) = text(&self.replace_html) {
            actions.push(Action::Replace(v));
        }
        if let Some(v) = text(&self.prepend_html) {
            actions.push(Action::Prepend(v));
        }
        if let Some(v) = text(&self.append_html) {
            actions.push(Action::Append(v));
        }
        if let Some(v) = text(&self.before_html) {
            actions.push(Action::Before(v));
        }
        if let Some(v) = text(&self.after_html) {
            actions.push(Action::After(v));
        }
        match (&self.set_attribute, &self.value) {
            (Some(name), Some(value)) => {
                actions.push(Action::SetAttribute(name.clone(), value.clone()))
            }
            (None, None) => {}
            _ => bail!("set_attribute and value go together"),
        }
        if self.remove {
            actions.push(Action::Remove);
        }
        match actions.len() {
            1 => Ok(actions.pop().expect("one")),
            0 => bail!(
                "no action (set_text, set_html, replace_html, prepend_html, append_html, \
                 before_html, after_html, set_attribute + value, remove)"
            ),
            _ => bail!("one action per rewrite, found {}", actions.len()),
        }
    }
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

    /// The variant whose share of `0..total_weight` holds `point`.
    fn bucket(&self, point: u64) -> usize {
        let mut point = point % self.total_weight;
        for (i, v) in self.variants.iter().enumerate() {
            if point < u64::from(v.weight) {
                return i;
            }
            point -= u64::from(v.weight);
        }
        self.variants.len() - 1
    }

    fn by_name(&self, name: &str) -> Option<usize> {
        self.variants
            .iter()
            .position(|v| v.name == name && v.weight > 0)
    }

    /// Gives the request its variant: by user id when authenticated, else by its cookie,
    /// else at random by weight.
    pub fn assign(&self, headers: &HeaderMap, user: Option<&str>) -> Assignment {
        let from_cookie =
            crate::headers::cookie(headers, &self.cookie).and_then(|v| self.by_name(v));
        let variant = match (user, from_cookie) {
            (Some(user), _) => {
                self.bucket(stable_hash(format!("{}\n{user}", self.name).as_bytes()))
            }
            (None, Some(v)) => v,
            (None, None) => self.bucket(fastrand::u64(..)),
        };
        Assignment {
            variant,
            set_cookie: from_cookie != Some(variant),
        }
    }

    pub fn variant_name(&self, a: Assignment) -> &str {
        &self.variants[a.variant].name
    }

    /// The request headers `forward` sets.
    pub fn forwarded_headers(&self) -> [HeaderName; 2] {
        [self.header.clone(), header::ACCEPT_ENCODING]
    }

    /// Tells the origin the variant; asks for an uncompressed body when the variant's
    /// pages are rewritten (lol_html reads plain HTML).
    pub fn forward(&self, a: Assignment, headers: &mut HeaderMap) {
        headers.insert(self.header.clone(), self.variants[a.variant].value.clone());
        if !self.variants[a.variant].rewrites.is_empty() {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
    }

    /// The sticky cookie for a new assignment (`Secure` when the client came over TLS).
    pub fn set_cookie(&self, a: Assignment, resp: &mut Response<Body>, secure: bool) {
        if !a.set_cookie {
            return;
        }
        let cookie = format!(
            "{}={}; Path=/; Max-Age={}; SameSite=Lax{}",
            self.cookie,
            self.variants[a.variant].name,
            self.max_age,
            if secure { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    /// Applies the variant's rewrites to an HTML response while it streams. Anything
    /// else (not `text/html`, compressed, another charset) passes unchanged.
    pub fn rewrite(&self, a: Assignment, resp: Response<Body>) -> Response<Body> {
        let rewrites = &self.variants[a.variant].rewrites;
        if rewrites.is_empty() {
            return resp;
        }
        let h = resp.headers();
        let content_type = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut params = content_type.split(';').map(str::trim);
        let html = params.next() == Some("text/html");
        let utf8 = params
            .filter_map(|p| p.strip_prefix("charset="))
            .all(|c| matches!(c.trim_matches('"'), "utf-8" | "utf8" | "us-ascii"));
        let encoded = h
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        if !html || !utf8 || encoded {
            if html {
                debug!(experiment = %self.name, %content_type, encoded, "HTML not rewritten (charset or encoding)");
            }
            return resp;
        }
        let (mut parts, body) = resp.into_parts();
        // The body changes: its length is unknown, and a strong validator would lie.
        parts.headers.remove(header::CONTENT_LENGTH);
        if let Some(etag) = parts.headers.get(header::ETAG).cloned()
            && !etag.as_bytes().starts_with(b"W/")
        {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                parts.headers.insert(header::ETAG, v);
            }
        }
        Response::from_parts(parts, HtmlRewrite::body(body, rewrites.clone()))
    }
}

/// Where the rewriter writes: a buffer the body drains after every chunk.
struct Sink(Arc<Mutex<BytesMut>>);

impl OutputSink for Sink {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        self.0.lock().expect("sink").extend_from_slice(chunk);
    }
}

fn handlers(rewrites: &Arc<[Rewrite]>) -> Settings<'static, 'static> {
    let mut settings = Settings::new_send();
    for (i, r) in rewrites.iter().enumerate() {
        let rewrites = rewrites.clone();
        let handler = ElementContentHandlers::default().element(
            move |el: &mut lol_html::send::Element<'_, '_>| {
                let html = ContentType::Html;
                match &rewrites[i].action {
                    Action::SetText(t) => el.set_inner_content(t, ContentType::Text),
                    Action::SetHtml(t) => el.set_inner_content(t, html),
                    Action::Replace(t) => el.replace(t, html),
                    Action::Prepend(t) => el.prepend(t, html),
                    Action::Append(t) => el.append(t, html),
                    Action::Before(t) => el.before(t, html),
                    Action::After(t) => el.after(t, html),
                    Action::SetAttribute(n, v) => el.set_attribute(n, v)?,
                    Action::Remove => el.remove(),
                }
                Ok(())
            },
        );
        settings =
            settings.append_element_content_handler((Cow::Owned((*r.selector).clone()), handler));
    }
    settings
}

struct RewriteState {
    inner: Body,
    rewriter: Option<HtmlRewriter<'static, Sink>>,
    out: Arc<Mutex<BytesMut>>,
}

/// An HTML body rewritten as it streams.
struct HtmlRewrite(SyncWrapper<RewriteState>);

impl HtmlRewrite {
    fn body(inner: Body, rewrites: Arc<[Rewrite]>) -> Body {
        let out = Arc::new(Mutex::new(BytesMut::new()));
        let rewriter = HtmlRewriter::new(handlers(&rewrites), Sink(out.clone()));
        BodyExt::boxed(HtmlRewrite(SyncWrapper::new(RewriteState {
            inner,
            rewriter: Some(rewriter),
            out,
        })))
    }
}

impl RewriteState {
    fn take(&self) -> Option<Bytes> {
        let mut out = self.out.lock().expect("sink");
        (!out.is_empty()).then(|| out.split().freeze())
    }
}

impl HttpBody for HtmlRewrite {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let st = self.0.get_mut();
        loop {
            let Some(rewriter) = st.rewriter.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut st.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        rewriter
                            .write(&data)
                            .map_err(|e| format!("rewriting HTML: {e}"))?;
                        if let Some(out) = st.take() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    // Trailers pass unchanged.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    let rewriter = st.rewriter.take().expect("checked");
                    rewriter.end().map_err(|e| format!("rewriting HTML: {e}"))?;
                    return Poll::Ready(st.take().map(|b| Ok(Frame::data(b))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::full;

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

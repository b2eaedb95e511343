//! The variant's HTML edits (lol_html), applied while the page streams.

use std::{
    borrow::Cow,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use anyhow::{Result, bail};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use lol_html::{
    OutputSink, Selector,
    html_content::ContentType,
    send::{ElementContentHandlers, HtmlRewriter, Settings},
};
use sync_wrapper::SyncWrapper;
use tracing::debug;

use super::{Assignment, Experiment, RewriteSettings};
use crate::error::{Body, BoxError};

#[derive(Debug, Clone)]
pub(super) enum Action {
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

pub(super) struct Rewrite {
    pub(super) selector: Arc<Selector>,
    pub(super) action: Action,
}

impl RewriteSettings {
    pub(super) fn action(&self) -> Result<Action> {
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

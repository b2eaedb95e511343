//! A request's variant: from its user id when authenticated (the same on every node),
//! else from its sticky cookie, else at random by weight; told to the origin, and the
//! cookie set for a new assignment.

use http::{HeaderMap, HeaderName, HeaderValue, Response, header};

use super::{Assignment, Experiment};
use crate::{error::Body, hash::stable_hash};

impl Experiment {
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
}

//! Auth phase: a route's JWT policy. `required`: no valid token → 401 with
//! `WWW-Authenticate`; `optional`: no token is fine, a bad one is not. Roles per path
//! prefix (and, optionally, method): a valid token without one of them → 403, and no
//! token → 401 in either mode. The origin gets the identity in
//! headers the node alone sets. With no `[route.auth]` the phase does nothing.

use std::{collections::HashMap, sync::Arc};

use anyhow::{Result, bail};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::Deserialize;

use crate::{
    auth::{AuthError, Identity, JwtProvider, has_any_role},
    error::{Body, EdgeError, ErrorKind},
    policy::{Signal, ThreatEngine},
    request::{Flow, Phase, PhaseFuture, RequestCtx},
};

/// The auth phase: before routing, every provider's identity headers go (a route may
/// match on headers, never on ones a client forged); then the route's policy.
pub struct AuthPhase {
    /// Per route (by index).
    pub routes: Vec<Option<RouteAuth>>,
    /// Identity headers of every provider: removed from every request, whatever its route.
    pub identity_headers: Vec<HeaderName>,
    pub threat: Arc<ThreatEngine>,
}

/// The `Authorization` a request to a WebSocket (rooms) route came with, before the
/// phase removed it.
pub struct Presented(pub http::HeaderValue);

impl Phase for AuthPhase {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn early_request<'a>(
        &'a self,
        _ctx: &'a mut RequestCtx,
        req: &'a mut http::Request<Body>,
    ) -> PhaseFuture<'a> {
        for h in &self.identity_headers {
            req.headers_mut().remove(h);
        }
        Box::pin(std::future::ready(Ok(Flow::Continue)))
    }

    fn request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut http::Request<Body>,
    ) -> PhaseFuture<'a> {
        let Some(auth) = ctx.route_index().and_then(|i| self.routes[i].as_ref()) else {
            return Box::pin(std::future::ready(Ok(Flow::Continue)));
        };
        Box::pin(async move {
            let path = ctx.match_path(req.uri().path()).to_string();
            let method = req.method().clone();
            // A room member may be relayed to the node owning its room, which checks
            // the same token again (`rooms::relay`): the handler gets it back.
            if ctx.route.as_ref().is_some_and(|r| r.websocket)
                && let Some(v) = req.headers().get(http::header::AUTHORIZATION)
            {
                ctx.state.put(Presented(v.clone()));
            }
            match auth.check(req.headers_mut(), &path, &method).await {
                Ok(identity) => {
                    ctx.user = identity.map(|i| i.sub);
                    Ok(Flow::Continue)
                }
                Err((e, failed)) => {
                    if failed {
                        self.threat.signal(ctx.source(), Signal::AuthFailure);
                    }
                    Err(e)
                }
            }
        })
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Required,
    Optional,
    Off,
}

/// `[route.auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthSettings {
    /// The `[[jwt_provider]]` (its name).
    pub provider: String,
    #[serde(default)]
    pub mode: AuthMode,
    /// Roles required under path prefixes (the longest matching prefix applies).
    #[serde(default)]
    pub roles: Vec<RoleRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    pub path_prefix: String,
    /// The methods the rule covers (empty: all); `GET` covers `HEAD`.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The token needs at least one of these.
    pub any_of: Vec<String>,
}

impl RoleRule {
    fn covers(&self, path: &str, method: &http::Method) -> bool {
        // HEAD reads what GET reads; a CONNECT reaching a route is a WebSocket join
        // (RFC 8441), which HTTP/1.1 makes with GET.
        let method = if method == http::Method::HEAD || method == http::Method::CONNECT {
            "GET"
        } else {
            method.as_str()
        };
        crate::target::path_under(path, &self.path_prefix)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }
}

/// The auth policy of one route.
pub struct RouteAuth {
    provider: Arc<JwtProvider>,
    mode: AuthMode,
    roles: Vec<RoleRule>,
    user_header: HeaderName,
    roles_header: HeaderName,
}

impl RouteAuth {
    pub fn new(
        s: &RouteAuthSettings,
        providers: &HashMap<String, Arc<JwtProvider>>,
    ) -> Result<Option<Self>> {
        if s.mode == AuthMode::Off {
            return Ok(None);
        }
        let Some(provider) = providers.get(&s.provider) else {
            bail!(
                "route auth names jwt_provider {:?}, which is not defined",
                s.provider
            );
        };
        for rule in &s.roles {
            if let Some(m) = rule.methods.iter().find(|m| {
                http::Method::from_bytes(m.as_bytes()).is_err()
                    || **m != m.to_ascii_uppercase()
                    || ["HEAD", "CONNECT"].contains(&m.as_str())
            }) {
                bail!(
                    "route auth: roles for {:?}: {m:?} is not a method to name (upper case, \
                     e.g. \"PUT\"; GET covers HEAD and WebSocket CONNECT)",
                    rule.path_prefix
                );
            }
        }
        let mut roles = s.roles.clone();
        // Longest prefix first.
        roles.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        Ok(Some(Self {
            user_header: HeaderName::from_bytes(provider.settings.user_header.as_bytes())?,
            roles_header: HeaderName::from_bytes(provider.settings.roles_header.as_bytes())?,
            provider: provider.clone(),
            mode: s.mode,
            roles,
        }))
    }

    fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        if let Some(v) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            let (scheme, token) = v.split_once(' ')?;
            return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
        }
        let name = self.provider.settings.cookie.as_deref()?;
        crate::headers::cookie(headers, name)
    }

    /// Checks the request; on success the identity (if any) is in the origin-bound
    /// headers. `Err` is the response, plus whether it counts as a failed auth.
    pub async fn check(
        &self,
        headers: &mut HeaderMap,
        path: &str,
        method: &http::Method,
    ) -> Result<Option<Identity>, (EdgeError, bool)> {
        headers.remove(&self.user_header);
        headers.remove(&self.roles_header);
        let verified = match self.token(headers) {
            None => Err(AuthError::Missing),
            Some(t) => self.provider.verify(t).await,
        };
        // The token is for the node; the origin gets the identity instead.
        headers.remove(header::AUTHORIZATION);
        // The one rule that decides this request's roles: the longest prefix covering
        // its method. Under it a token is needed whatever the mode (else leaving the
        // token out would be the way past the rule).
        let rule = self.roles.iter().find(|r| r.covers(path, method));
        let identity = match verified {
            Ok(id) => id,
            Err(AuthError::Missing) if self.mode == AuthMode::Optional && rule.is_none() => {
                return Ok(None);
            }
            Err(e) => {
                let (challenge, failed) = match &e {
                    AuthError::Missing => ("Bearer realm=\"edge-node\"".to_string(), false),
                    AuthError::Invalid(_) => (
                        "Bearer realm=\"edge-node\", error=\"invalid_token\"".to_string(),
                        true,
                    ),
                };
                let err = EdgeError::new(ErrorKind::Unauthorized, format!("{e:?}"))
                    .with_header(header::WWW_AUTHENTICATE, challenge);
                return Err((err, failed));
            }
        };
        if let Some(rule) = rule
            && !has_any_role(&identity.roles, &rule.any_of)
        {
            return Err((
                EdgeError::new(
                    ErrorKind::Forbidden,
                    format!("{} lacks any of {:?} for {path}", identity.sub, rule.any_of),
                ),
                false,
            ));
        }
        if let Ok(v) = HeaderValue::from_str(&identity.sub) {
            headers.insert(self.user_header.clone(), v);
        }
        if let Ok(v) = HeaderValue::from_str(&identity.roles.join(",")) {
            headers.insert(self.roles_header.clone(), v);
        }
        Ok(Some(identity))
    }
}

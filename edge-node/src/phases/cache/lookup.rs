//! The lookup: the in-memory tier, then the fill lock (concurrent misses for one key make
//! one origin request; the others wait for it, bounded by `cache.lock_timeout`, stream
//! its answer as it arrives, or take a stale copy), then the regional tier.

use std::{sync::Arc, time::Instant};

use http::{HeaderMap, HeaderName, Method, Request, header};

use super::{
    CLIENT_CONDITIONALS, CacheFetch, CacheStep, RouteCache,
    respond::{not_cached, respond, respond_streaming},
};
use crate::cache::{Fill, FillState, Lookup, Store, policy};

impl RouteCache {
    /// Looks the request (with the node's own headers already set, as the origin would
    /// get it, so stored `Vary` variants match) up in the tiers, and strips what is not
    /// forwarded (`strip`; it is forwarded as it is left).
    pub async fn lookup<B>(
        &self,
        store: &Arc<Store>,
        scheme: &str,
        req: &mut Request<B>,
        variant: Option<&str>,
        forwarded_host: Option<&str>,
        keep: &[HeaderName],
    ) -> CacheStep {
        let method = req.method().clone();
        let key = self.key(scheme, req, variant, forwarded_host);
        // What the client asked of caches, before its unkeyed headers go.
        let mut asked = policy::directives(req.headers());
        if self.ignore_client_no_cache {
            // The origin is protected from clients' reloads: their no-cache, max-age=0
            // and Pragma do not force a fetch (nginx's, varnish's and Cloudflare's
            // default). Their no-store and stricter limits still hold.
            asked.no_cache = false;
            if asked.max_age == Some(0) {
                asked.max_age = None;
            }
        }
        // (Pragma is read from the headers: none when clients' reloads are ignored.)
        let pragma_from = if self.ignore_client_no_cache {
            &HeaderMap::new()
        } else {
            req.headers()
        };
        let serve = policy::may_serve_from_cache(&method, pragma_from, &asked);
        // The client set limits on a stored answer's age: a copy past them is fetched
        // again, never answered stale meanwhile.
        let limited = asked.max_age.is_some() || asked.min_fresh.is_some();
        let mut client = HeaderMap::new();
        for h in CLIENT_CONDITIONALS {
            for v in req.headers().get_all(&h) {
                client.append(h.clone(), v.clone());
            }
        }
        let mut fetch = CacheFetch {
            key,
            // Only a forwarded request needs it (to store the answer): a hit skips it.
            url: String::new(),
            guard: None,
            label: "BYPASS",
            asked: req.headers().get(header::CACHE_CONTROL).cloned(),
            client,
            stale: None,
            refresh_in_background: false,
            passed: false,
        };
        self.strip(req.headers_mut(), keep);
        if !serve {
            if asked.only_if_cached {
                return CacheStep::Answer(not_cached(), "MISS");
            }
            fetch.url = Self::url(scheme, req);
            return CacheStep::Forward(fetch);
        }
        fetch.label = "MISS";
        let mut waited = false;
        loop {
            let now = Instant::now();
            match store.lookup(&fetch.key, req.headers(), now) {
                Lookup::Hit(e) if e.satisfies(&asked, now) => {
                    return CacheStep::Answer(
                        respond(&e, &method, now, "HIT", &fetch.client),
                        "HIT",
                    );
                }
                // Fresh, but older than this client accepts: revalidated for it.
                Lookup::Hit(e) => {
                    fetch.label = "BYPASS";
                    fetch.stale = Some(e);
                }
                Lookup::Stale(e) => {
                    fetch.label = "EXPIRED";
                    fetch.stale = Some(e);
                }
                Lookup::Miss => {}
            }
            if asked.only_if_cached {
                return CacheStep::Answer(not_cached(), "MISS");
            }
            if waited {
                break;
            }
            // Its last response could not be stored: no point queueing behind another.
            if store.is_uncacheable(&fetch.key) {
                fetch.passed = true;
                break;
            }
            // A HEAD's answer is never stored: it neither fetches for nor waits on others.
            if method == Method::HEAD {
                break;
            }
            match store.fill(&fetch.key) {
                Fill::Leader(guard) => {
                    fetch.guard = Some(guard);
                    // The regional tier, before the origin: another node may hold it.
                    if let Some(regional) = &store.regional
                        && let Some(e) = regional.lookup(&fetch.key, req.headers()).await
                    {
                        let e = Arc::new(e);
                        if e.is_fresh(now) && e.satisfies(&asked, now) {
                            store.insert_local(&fetch.key, e.clone());
                            return CacheStep::Answer(
                                respond(&e, &method, now, "REGIONAL-HIT", &fetch.client),
                                "REGIONAL-HIT",
                            );
                        }
                        if fetch.stale.is_none() {
                            fetch.label = "EXPIRED";
                            fetch.stale = Some(e);
                        }
                    }
                    fetch.refresh_in_background = !limited
                        && fetch
                            .stale
                            .as_ref()
                            .is_some_and(|e| e.usable_while_revalidating(now));
                    break;
                }
                Fill::Follower(mut rx) => {
                    // Someone is refreshing it: a copy within stale-while-revalidate
                    // answers now.
                    if !limited
                        && let Some(e) = &fetch.stale
                        && e.usable_while_revalidating(now)
                    {
                        return CacheStep::Answer(
                            respond(e, &method, now, "STALE", &fetch.client),
                            "STALE",
                        );
                    }
                    // Otherwise wait (bounded) for the request already fetching it: its
                    // response streams to us as it arrives, or it ends and we look
                    // again (still missing: fetch too).
                    let deadline = tokio::time::Instant::from_std(crate::duration::instant_after(
                        std::time::Instant::now(),
                        store.lock_timeout,
                    ));
                    let state = tokio::time::timeout_at(
                        deadline,
                        rx.wait_for(|s| !matches!(s, FillState::Pending)),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|s| s.clone());
                    if let Some(FillState::Streaming(partial)) = state {
                        if fetch.client.is_empty() && partial.matches(req.headers()) {
                            return CacheStep::Answer(respond_streaming(&partial, &method), "HIT");
                        }
                        // Conditional or Range requests are answered from the stored
                        // copy once it is complete.
                        let _ = tokio::time::timeout_at(
                            deadline,
                            rx.wait_for(|s| matches!(s, FillState::Done)),
                        )
                        .await;
                    }
                    waited = true;
                }
            }
        }
        fetch.url = Self::url(scheme, req);
        CacheStep::Forward(fetch)
    }
}

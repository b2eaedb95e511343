//! Keeps each ACME certificate: a stored one is served at once (no CA contacted); a
//! missing, unusable or due one is ordered in the background; failures are retried
//! with capped exponential backoff while the current certificate (if any) stays in use.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{
    AcmeCert, AcmeState, ChallengeKind, challenge_cert,
    fleet::Fleet,
    store::{Issued, Store, parse},
};
use crate::metrics::Metrics;

/// A certificate from the fleet's Redis may start this much in our future.
const SHARED_SKEW: Duration = Duration::from_secs(300);
/// The longest-lived certificate taken from the fleet (publicly trusted ones: 398 days).
const MAX_SHARED_LIFETIME: Duration = Duration::from_secs(398 * 86_400);
/// The first retry after a failed order; doubled on every failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// One order, from new-order to the downloaded certificate, at most.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the CA may take to validate the challenges.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest sleep between two looks at the clock (a suspended machine, a clock
/// stepped forward).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How often a node waiting for another's order looks for its result.
const FLEET_POLL: Duration = Duration::from_secs(1);

/// The running certificate keepers, one task per certificate.
pub struct Manager {
    state: Arc<AcmeState>,
    store: Store,
    metrics: Arc<Metrics>,
    /// Accounts by directory URL, shared by the certificates of one CA.
    accounts: Arc<tokio::sync::Mutex<HashMap<String, Account>>>,
    tasks: Mutex<HashMap<AcmeCert, JoinHandle<()>>>,
    /// Redis clients by URL (`acme.redis`).
    fleets: Mutex<HashMap<String, Arc<Fleet>>>,
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Manager {
    pub fn new(state: Arc<AcmeState>, data_dir: &Path, metrics: Arc<Metrics>) -> Self {
        // instant-acme's client with a custom root builds its rustls configuration on
        // the process' provider: ours (ring), whatever else the dependency graph enables.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            state,
            store: Store::new(data_dir),
            metrics,
            accounts: Default::default(),
            tasks: Default::default(),
            fleets: Default::default(),
        }
    }

    /// Ends every order and renewal (the node handed over to an upgrade); certificates
    /// in use stay served.
    pub fn stop(&self) {
        for (_, t) in crate::sync::lock(&self.tasks).drain() {
            t.abort();
        }
    }

    /// Keeps exactly `plans`: a certificate whose settings did not change keeps its
    /// task; a new one has its stored certificate served at once (before this returns)
    /// and a task to order or renew it; a removed one's task ends.
    pub fn apply(&self, plans: &[AcmeCert]) {
        self.state.set_names(plans);
        self.state.prune();
        let fleets = {
            let mut fleets = crate::sync::lock(&self.fleets);
            fleets.retain(|url, _| plans.iter().any(|p| p.redis.as_ref() == Some(url)));
            for url in plans.iter().filter_map(|p| p.redis.as_ref()) {
                if fleets.contains_key(url) {
                    continue;
                }
                match Fleet::connect(url) {
                    Ok(f) => {
                        fleets.insert(url.clone(), Arc::new(f));
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "ACME fleet unavailable; ordering alone")
                    }
                }
            }
            self.state.set_fleets(fleets.values().cloned().collect());
            fleets.clone()
        };
        let mut tasks = crate::sync::lock(&self.tasks);
        tasks.retain(|plan, task| {
            let keep = plans.contains(plan);
            if !keep {
                task.abort();
            }
            keep
        });
        for plan in plans {
            if tasks.contains_key(plan) {
                continue;
            }
            let current = match self.store.load(plan) {
                Ok(Some(i)) if i.not_after > SystemTime::now() => {
                    info!(names = ?plan.names, serial = %i.serial, expires = %humantime::format_rfc3339_seconds(i.not_after), "stored ACME certificate in use");
                    self.state.install(&plan.names, i.key.clone());
                    self.metrics.acme_expiry(&plan.names[0], i.not_after);
                    Some(i)
                }
                Ok(Some(i)) => {
                    info!(names = ?plan.names, expired = %humantime::format_rfc3339_seconds(i.not_after), "stored ACME certificate has expired; ordering a new one");
                    None
                }
                Ok(None) => None,
                Err(e) => {
                    warn!(names = ?plan.names, error = %format!("{e:#}"), "stored ACME certificate unusable; ordering a new one");
                    None
                }
            };
            let keeper = Keeper {
                fleet: plan.redis.as_ref().and_then(|u| fleets.get(u).cloned()),
                plan: plan.clone(),
                state: self.state.clone(),
                store: self.store.clone(),
                metrics: self.metrics.clone(),
                accounts: self.accounts.clone(),
            };
            tasks.insert(plan.clone(), tokio::spawn(keeper.run(current)));
        }
    }
}

struct Keeper {
    fleet: Option<Arc<Fleet>>,
    plan: AcmeCert,
    state: Arc<AcmeState>,
    store: Store,
    metrics: Arc<Metrics>,
    accounts: Arc<tokio::sync::Mutex<HashMap<String, Account>>>,
}

impl Keeper {
    async fn run(self, mut current: Option<Issued>) {
        let names = &self.plan.names;
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0u32;
        loop {
            if let Some(c) = &current {
                let at = c.renew_at(self.plan.renew_before);
                if let Ok(wait) = at.duration_since(SystemTime::now()) {
                    tokio::time::sleep(wait.min(MAX_SLEEP)).await;
                    continue;
                }
                info!(?names, serial = %c.serial, "ACME certificate due for renewal");
            }
            let mut locked = false;
            if let Some(f) = &self.fleet {
                match self.shared_by_fleet(f, current.as_ref()).await {
                    Ok(Some(issued)) => {
                        for n in names {
                            self.state.remove_alpn(n);
                        }
                        self.metrics.acme_expiry(&names[0], issued.not_after);
                        self.state.install(names, issued.key.clone());
                        info!(?names, serial = %issued.serial, expires = %humantime::format_rfc3339_seconds(issued.not_after), "ACME certificate taken from the fleet and in use");
                        current = Some(issued);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(?names, error = %format!("{e:#}"), "ACME fleet: shared certificate unreadable")
                    }
                }
                match f.lock(&self.plan).await {
                    Ok(true) => locked = true,
                    Ok(false) => {
                        // Another node orders: answer its TLS-ALPN-01 challenges here
                        // too (the CA may reach this node), and look again shortly.
                        self.mirror_alpn(f).await;
                        tokio::time::sleep(FLEET_POLL).await;
                        continue;
                    }
                    Err(e) => {
                        warn!(?names, error = %format!("{e:#}"), "ACME fleet lock unavailable; ordering alone")
                    }
                }
            }
            let result = tokio::time::timeout(ORDER_TIMEOUT, self.obtain())
                .await
                .unwrap_or_else(|_| Err(anyhow!("the order took longer than {ORDER_TIMEOUT:?}")));
            if locked && let Some(f) = &self.fleet {
                // After a failure the fleet waits out this node's backoff, and a
                // moment more: the failing node, whose lock it still is, retries first.
                let hold = if result.is_ok() {
                    Duration::ZERO
                } else {
                    backoff + FLEET_POLL * 2
                };
                if let Err(e) = f.unlock(&self.plan, hold).await {
                    warn!(?names, error = %format!("{e:#}"), "ACME fleet: releasing the lock failed (it expires)");
                }
            }
            match result {
                Ok(issued) => {
                    self.metrics.acme_order(true);
                    self.metrics.acme_expiry(&names[0], issued.not_after);
                    self.state.install(names, issued.key.clone());
                    info!(?names, serial = %issued.serial, expires = %humantime::format_rfc3339_seconds(issued.not_after), "ACME certificate obtained and in use");
                    // A certificate already due when it arrives (a clock far off the
                    // CA's, or lifetimes shorter than renew_before) must not make the
                    // loop order again at once: it waits as after a failure.
                    let due = issued.renew_at(self.plan.renew_before) <= SystemTime::now();
                    current = Some(issued);
                    if due {
                        warn!(?names, retry_in = ?backoff, "ACME certificate due for renewal on arrival: is this node's clock right?");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    } else {
                        backoff = FIRST_BACKOFF;
                        failures = 0;
                    }
                }
                Err(e) => {
                    self.metrics.acme_order(false);
                    failures += 1;
                    warn!(
                        ?names,
                        error = %format!("{e:#}"),
                        failures,
                        retry_in = ?backoff,
                        serving = current.as_ref().map_or("nothing (handshakes for these names are refused)", |_| "the current certificate"),
                        "ACME order failed"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The fleet's certificate, when it is usable and newer than `current`: stored
    /// here too, so that a restart without Redis serves it.
    async fn shared_by_fleet(&self, f: &Fleet, current: Option<&Issued>) -> Result<Option<Issued>> {
        let Some((chain, key)) = f.cert(&self.plan).await? else {
            return Ok(None);
        };
        let issued = parse(chain.as_bytes(), key.as_bytes(), &self.plan.names)
            .context("the certificate shared in Redis")?;
        // Whoever wrote it, it must be one a CA could have issued now: valid now (give
        // or take clock skew) and no longer-lived than publicly trusted certificates.
        let now = SystemTime::now();
        let lifetime = issued
            .not_after
            .duration_since(issued.not_before)
            .unwrap_or_default();
        if issued.not_before > now + SHARED_SKEW
            || issued.not_after <= now
            || lifetime > MAX_SHARED_LIFETIME
        {
            anyhow::bail!(
                "the certificate shared in Redis is not valid now or lives longer than {} days",
                MAX_SHARED_LIFETIME.as_secs() / 86_400
            );
        }
        let fresh = issued.renew_at(self.plan.renew_before) > SystemTime::now();
        let newer =
            current.is_none_or(|c| c.serial != issued.serial && c.not_after < issued.not_after);
        if !fresh || !newer {
            return Ok(None);
        }
        self.store.save(&self.plan, &chain, &key)?;
        Ok(Some(issued))
    }

    /// TLS-ALPN-01 answers another node put up, served here as well.
    async fn mirror_alpn(&self, f: &Fleet) {
        if self.plan.challenge != ChallengeKind::TlsAlpn01 {
            return;
        }
        for n in &self.plan.names {
            match f.alpn(n).await {
                Ok(Some(digest)) => match challenge_cert(n, &digest) {
                    Ok(k) => self.state.add_alpn(n, k),
                    Err(e) => {
                        warn!(name = %n, error = %format!("{e:#}"), "ACME fleet: challenge certificate")
                    }
                },
                Ok(None) => self.state.remove_alpn(n),
                Err(_) => {}
            }
        }
    }

    /// The ACME account for the plan's directory: the stored one, or a new one
    /// (stored).
    async fn account(&self) -> Result<Account> {
        let plan = &self.plan;
        let mut accounts = self.accounts.lock().await;
        if let Some(a) = accounts.get(&plan.directory) {
            return Ok(a.clone());
        }
        let builder = || match &plan.directory_ca {
            Some(p) => Account::builder_with_root(p)
                .with_context(|| format!("HTTP client trusting {}", p.display())),
            None => Account::builder().context("HTTP client"),
        };
        let stored = match self.store.account(&plan.directory)? {
            Some(json) => match serde_json::from_str::<AccountCredentials>(&json) {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(directory = %plan.directory, error = %e, "stored ACME account unreadable; creating a new account");
                    None
                }
            },
            None => None,
        };
        let account = match stored {
            Some(creds) => builder()?
                .from_credentials(creds)
                .await
                .with_context(|| format!("ACME directory {}", plan.directory))?,
            None => {
                let contact: Vec<&str> = plan.contact.iter().map(String::as_str).collect();
                let (account, creds) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        plan.directory.clone(),
                        None,
                    )
                    .await
                    .with_context(|| format!("creating an account at {}", plan.directory))?;
                let json = serde_json::to_string(&creds).context("serializing the account")?;
                self.store.save_account(&plan.directory, &json)?;
                info!(directory = %plan.directory, id = account.id(), "ACME account created");
                account
            }
        };
        accounts.insert(plan.directory.clone(), account.clone());
        Ok(account)
    }

    /// One order: challenges answered, validated, finalized, downloaded, stored.
    async fn obtain(&self) -> Result<Issued> {
        let plan = &self.plan;
        let account = self.account().await?;
        let ids: Vec<Identifier> = plan
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .context("creating the order")?;
        let mut answers = Answers {
            state: &self.state,
            http: Vec::new(),
            alpn: Vec::new(),
        };
        let kind = match plan.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(a) = authorizations.next().await {
                let mut a = a.context("fetching an authorization")?;
                let ident = a.identifier().to_string();
                match a.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    s => bail!("the authorization for {ident} is {s:?}"),
                }
                let mut ch = a.challenge(kind.clone()).with_context(|| {
                    format!(
                        "the CA offers no {} challenge for {ident}",
                        plan.challenge.as_str()
                    )
                })?;
                let ka = ch.key_authorization();
                match plan.challenge {
                    ChallengeKind::Http01 => {
                        self.state.add_http(&ch.token, ka.as_str());
                        answers.http.push(ch.token.clone());
                        // Redis away: this node answers alone (the CA may reach it).
                        if let Some(f) = &self.fleet
                            && let Err(e) = f.put_http(&ch.token, ka.as_str()).await
                        {
                            warn!(%ident, error = %format!("{e:#}"), "ACME fleet: challenge not shared; answered by this node only");
                        }
                    }
                    ChallengeKind::TlsAlpn01 => {
                        self.state
                            .add_alpn(&ident, challenge_cert(&ident, ka.digest().as_ref())?);
                        answers.alpn.push(ident.clone());
                        if let Some(f) = &self.fleet
                            && let Err(e) = f.put_alpn(&ident, ka.digest().as_ref()).await
                        {
                            warn!(%ident, error = %format!("{e:#}"), "ACME fleet: challenge not shared; answered by this node only");
                        }
                    }
                }
                ch.set_ready()
                    .await
                    .with_context(|| format!("{ident}: telling the CA the challenge is ready"))?;
            }
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(VALIDATION_TIMEOUT);
        match order.poll_ready(&retry).await {
            Ok(OrderStatus::Ready) => {}
            Ok(status) => bail!(
                "validation failed (order {status:?}): {}",
                why(&mut order)
                    .await
                    .unwrap_or_else(|| "the CA gave no reason".into())
            ),
            // The order's own problem, or (more precise) the challenges'.
            Err(e) => bail!(
                "validation failed: {}",
                why(&mut order).await.unwrap_or_else(|| e.to_string())
            ),
        }
        if let Some(f) = &self.fleet {
            f.clear_challenges(&answers.http, &answers.alpn).await;
        }
        drop(answers);
        let key_pem = order.finalize().await.context("finalizing the order")?;
        let chain = order
            .poll_certificate(&RetryPolicy::default())
            .await
            .context("downloading the certificate")?;
        let issued = parse(chain.as_bytes(), key_pem.as_bytes(), &plan.names)
            .context("the certificate the CA issued")?;
        self.store.save(plan, &chain, &key_pem)?;
        if let Some(f) = &self.fleet
            && let Err(e) = f.put_cert(plan, &chain, &key_pem).await
        {
            warn!(names = ?plan.names, error = %format!("{e:#}"), "ACME fleet: sharing the certificate failed");
        }
        Ok(issued)
    }
}

/// The challenges' errors, as the CA reports them.
async fn why(order: &mut Order) -> Option<String> {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let Ok(mut a) = a else { continue };
        if a.refresh().await.is_err() {
            continue;
        }
        let ident = a.identifier().to_string();
        for c in &a.challenges {
            if let Some(p) = &c.error {
                reasons.push(format!("{ident}: {p}"));
            }
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Challenge answers an order put up; taken down when the order is done, however it
/// ends.
struct Answers<'a> {
    state: &'a AcmeState,
    http: Vec<String>,
    alpn: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for t in &self.http {
            self.state.remove_http(t);
        }
        for n in &self.alpn {
            self.state.remove_alpn(n);
        }
    }
}

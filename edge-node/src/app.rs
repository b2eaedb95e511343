//! The running node: configuration, the XDP side, and the lifecycle (signals, reload,
//! shutdown).

use std::path::PathBuf;

use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use std::sync::{Arc, RwLock};

use sd_notify::NotifyState;

use crate::{
    admin::{self, Metrics},
    config::{Config, LogFormat},
    pipeline::{Pipeline, retained::Retained},
    policy::ThreatEngine,
    server::{self, tls},
    upgrade::{self, Inherited},
    upstream::Pool,
    xdp::{Enforcement, XdpHandle},
};

/// Lines the log writer holds while stderr is slow; past them lines are dropped (and
/// counted in the writer), never waited for.
const LOG_BUFFER_LINES: usize = 64 * 1024;

/// Sets up logging once: text or JSON, `RUST_LOG` over the configured level. Records
/// from the `log` crate (aya, aya-log's forwarded XDP logs) arrive through tracing-log.
/// Lines are written by a thread of their own: a slow or stuck reader of stderr (a
/// journal under pressure, a pipe nobody drains) costs log lines, never requests. Keep
/// the guard: dropping it flushes what is left.
pub fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.clone()));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("edge-log")
        .finish(std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

pub struct App {
    config: Config,
    config_path: Option<PathBuf>,
    /// The listening sockets of the process this one replaces (an upgrade).
    inherited: Option<Inherited>,
}

/// What the admin API's `POST /upgrade` waits for: the new process's pid, or why not.
pub type UpgradeRequest = admin::UpgradeRequest;

impl App {
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Self {
        Self {
            config,
            config_path,
            inherited: None,
        }
    }

    /// Adopts the sockets a running node handed over (`upgrade::Inherited::from_env`)
    /// instead of binding, and tells that node when this one accepts.
    pub fn inherit(mut self, inherited: Option<Inherited>) -> Self {
        if inherited.is_some() {
            crate::xdp::loader::INHERITING.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.inherited = inherited;
        self
    }

    /// Runs until SIGINT or SIGTERM; SIGHUP (or `POST /reload` on the admin API)
    /// reloads the configuration (a bad one is refused and the running one stays);
    /// SIGUSR2 (or `POST /upgrade`, `edge-node upgrade`) hands the listeners to the
    /// binary now on disk and drains once it accepts (see `upgrade`).
    pub async fn run(mut self) -> Result<()> {
        // Signal handlers before anything else: a SIGHUP right after READY (systemd may
        // send one) must reload, not kill the process with the default action.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        let mut inherited = self.inherited.take();
        if inherited.is_some() {
            info!("upgrade: adopting the listening sockets of the running node");
        }
        // Listeners first: a taken port fails the start before anything is attached.
        let listeners = server::bind(&self.config.http, inherited.as_mut()).await?;
        // JWKS keys, verified tokens, rate-limit buckets and ACME certificates outlive
        // reloads.
        let retained = Arc::new(Retained::default());
        let acme_plans = self.config.acme_plan()?;
        retained.acme.set_names(&acme_plans);
        let tls: Option<tls::SharedTls> =
            if self.config.http.tls_listen.is_empty() && self.config.http.h3_listen.is_empty() {
                None
            } else {
                Some(Arc::new(RwLock::new(tls::build(
                    &self.config.certificate,
                    &retained.acme,
                )?)))
            };
        let workers = server::Workers::start(server::workers::default_count())?;
        let h3_endpoints = match &tls {
            Some(t) => server::h3::bind(&self.config.http, t, workers.len(), inherited.as_mut())?,
            None => Vec::new(),
        };
        let admin_token = self.config.admin.token()?;
        let admin_listener = match &admin_token {
            Some(_) => Some(admin::bind(&self.config.admin, inherited.as_mut()).await?),
            None => {
                info!("admin API off: set admin.token or admin.token_file to enable it");
                None
            }
        };
        // What the configuration no longer listens on closes here (the old process
        // keeps its copy until it has drained).
        if let Some(i) = inherited.as_mut() {
            i.close_unclaimed();
        }
        // What an upgrade of this process hands over.
        let mut handover: Vec<upgrade::Socket> = listeners
            .iter()
            .map(|b| upgrade::Socket {
                kind: if b.tls {
                    upgrade::Kind::Https
                } else {
                    upgrade::Kind::Http
                },
                configured: b.configured,
                fd: b.listener.as_raw_fd(),
            })
            .collect();
        handover.extend(h3_endpoints.iter().map(|e| e.handover()));
        if let Some(l) = &admin_listener {
            handover.push(upgrade::Socket {
                kind: upgrade::Kind::Admin,
                configured: self.config.admin.listen,
                fd: l.as_raw_fd(),
            });
        }
        let pool = Pool::new(self.config.http.upstream_connect_timeout, workers.len());
        let metrics = Arc::new(Metrics::new(pool.registry.clone()));
        let mut xdp = XdpHandle::start(&self.config.xdp, &self.config.http.trusted_proxies)?;
        let policy = xdp.policy();
        // Scores outlive reloads; escalations are written into the source policy (the
        // kernel's maps, or the userspace tables when XDP is not active).
        let threat = Arc::new(ThreatEngine::new(
            &self.config.threat,
            self.config.xdp.drop_threshold,
            Some(policy.clone()),
        ));
        // The fleet: heartbeats, and the threat stream.
        if self.config.fleet.redis.is_some() && self.config.node.id == "edge-1" {
            warn!(
                "node.id is the default (edge-1): give each node of a fleet its own, or fleet status and logs cannot tell them apart"
            );
        }
        let _heartbeats = match &self.config.fleet.redis {
            Some(_) => Some(crate::fleet::members::start(
                &self.config.fleet,
                &self.config.node.id,
            )?),
            None => None,
        };
        if self.config.fleet.shares_threats() {
            let feed = crate::fleet::threats::ThreatFeed::start(
                &self.config.fleet,
                &self.config.node.id,
                policy.clone(),
                self.config.fleet_guard(),
                metrics.clone(),
            )?;
            let cleared = Arc::downgrade(&threat);
            feed.on_clear(Box::new(move |ip| {
                if let Some(t) = cleared.upgrade() {
                    t.clear(ip);
                }
            }));
            threat.share_with(feed);
        }
        let userspace_policy = match xdp.enforcement() {
            Enforcement::Kernel => None,
            Enforcement::Userspace { .. } => Some(policy.clone()),
        };
        // The cache outlives reloads too.
        let cache = crate::cache::Store::new(&self.config.cache)?;
        cache.set_path_policy(self.config.http.path);
        cache.listen_for_purges();
        let first = Pipeline::new(
            &self.config,
            pool.clone(),
            metrics.clone(),
            threat.clone(),
            userspace_policy.clone(),
            cache.clone(),
            &retained,
        )?;
        first.start_background();
        // Stored ACME certificates are in force before the first connection is taken;
        // missing or due ones are ordered in the background.
        let acme = crate::acme::Manager::new(
            retained.acme.clone(),
            &self.config.storage.dir,
            metrics.clone(),
        );
        acme.apply(&acme_plans);
        // Functions: what `PUT /functions/<name>` may replace.
        retained
            .functions
            .set_deployable(&self.config.functions, &self.config.function);
        let pipeline: server::SharedPipeline = Arc::new(arc_swap::ArcSwap::from_pointee(first));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // Every listener is supervised: one that ends while the node runs is reported by
        // `/healthz` (and logged), never silently gone.
        let listener_health = Arc::new(server::ListenerHealth::default());
        let mut servers: Vec<_> = listeners
            .into_iter()
            .map(|b| {
                let name = format!(
                    "{} {}",
                    if b.tls { "https" } else { "http" },
                    b.listener
                        .local_addr()
                        .map_or_else(|_| "?".into(), |a| a.to_string())
                );
                let task = server::spawn(
                    b.listener,
                    if b.tls { tls.clone() } else { None },
                    pipeline.clone(),
                    self.config.http.clone(),
                    workers.clone(),
                    stop_rx.clone(),
                );
                listener_health.supervise(name, task, stop_rx.clone())
            })
            .collect();
        if let Some(t) = &tls {
            for ep in h3_endpoints {
                let name = format!("h3 {}", ep.name());
                let task = server::h3::spawn(
                    ep,
                    t.clone(),
                    pipeline.clone(),
                    self.config.http.clone(),
                    &workers,
                    stop_rx.clone(),
                );
                servers.push(listener_health.supervise(name, task, stop_rx.clone()));
            }
        }
        let mut cert_stamp = tls::stamp(&self.config.certificate);
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<admin::ReloadRequest>(4);
        let (upgrade_tx, mut upgrade_rx) = tokio::sync::mpsc::channel::<UpgradeRequest>(4);
        let mut admin_task = None;
        if let (Some(l), Some(token)) = (admin_listener, admin_token) {
            let state = admin::AdminState {
                token: token.into(),
                metrics: metrics.clone(),
                policy: policy.clone(),
                stats: xdp.stats_reader().map(Arc::new),
                listeners: listener_health.clone(),
                threat: threat.clone(),
                cache: cache.clone(),
                reload: reload_tx,
                upgrade: upgrade_tx,
                functions: retained.functions.clone(),
                deploying: Default::default(),
                upload_timeout: admin::UPLOAD_TIMEOUT,
                draining: stop_rx.clone(),
            };
            admin_task = Some(admin::spawn(l, state));
        }
        let shared = Shared {
            pool: pool.clone(),
            metrics: metrics.clone(),
            threat: threat.clone(),
            userspace_policy,
            cache: cache.clone(),
            retained,
            acme,
        };
        info!(node = %self.config.node.id, enforcement = ?xdp.enforcement(), "edge-node running");
        match inherited.as_mut() {
            // Not the service's main process yet: the old one names this one (MAINPID)
            // once told that it accepts.
            Some(i) => {
                // The old process gone meanwhile (killed): this one serves all the same.
                if let Err(e) = i.ready() {
                    warn!(error = %format!("{e:#}"), "upgrade: the old process is gone; serving on");
                }
                info!(
                    pid = std::process::id(),
                    "upgrade: accepting on the handed-over sockets; the old process drains"
                );
            }
            None => notify(&[NotifyState::Ready, NotifyState::Status("serving")]),
        }
        drop(inherited);
        xdp.settle();
        let mut upgraded = None;
        // Expired blocks and scores no longer apply; sweeping them keeps the source trie
        // (and `xdp list`) to what is in force.
        let mut sweep = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = sweep.tick() => {
                    // Renewed certificate files take effect without a reload.
                    let now = tls::stamp(&self.config.certificate);
                    if now != cert_stamp {
                        cert_stamp = now;
                        if let Some(t) = &tls {
                            match tls::build(&self.config.certificate, &shared.retained.acme) {
                                Ok(c) => {
                                    *t.write().expect("tls lock") = c;
                                    info!("certificates reloaded (files changed)");
                                }
                                Err(e) => error!(error = %format!("{e:#}"), "changed certificates refused; keeping the loaded ones"),
                            }
                        }
                    }
                    // Map syscalls under a lock: keep them off the async workers.
                    let p = policy.clone();
                    let purged = tokio::task::spawn_blocking(move || p.lock().expect("policy lock").purge_expired())
                        .await
                        .unwrap_or_else(|e| Err(anyhow::anyhow!("sweep task: {e}")));
                    match purged {
                        Ok(0) => {}
                        Ok(n) => info!(purged = n, "expired blocks and scores removed"),
                        Err(e) => error!(error = %format!("{e:#}"), "sweeping expired entries failed"),
                    }
                }
                _ = usr2.recv() => {
                    if let Ok(pid) = self.upgrade(&handover, &shared, &mut xdp).await {
                        upgraded = Some(pid);
                        break;
                    }
                }
                Some(reply) = upgrade_rx.recv() => {
                    let result = self.upgrade(&handover, &shared, &mut xdp).await;
                    let _ = reply.send(result.as_ref().map(|p| *p).map_err(|e| format!("{e:#}")));
                    if let Ok(pid) = result {
                        upgraded = Some(pid);
                        break;
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
                // A reload reads files, loads certificates and models and writes maps:
                // blocking work, kept off the runtime's workers (health checks, the
                // admin API and the background refreshes go on meanwhile).
                _ = hup.recv() => {
                    let _ = tokio::task::block_in_place(|| {
                        self.reload(&shared, &pipeline, tls.as_ref(), &mut xdp)
                    });
                }
                Some(reply) = reload_rx.recv() => {
                    let result = tokio::task::block_in_place(|| {
                        self.reload(&shared, &pipeline, tls.as_ref(), &mut xdp)
                    });
                    let _ = reply.send(result.map_err(|e| format!("{e:#}")));
                }
            }
        }
        if upgraded.is_some() {
            // The new process answers the admin API now (`/readyz` here would say
            // "draining" to half the probes).
            // The answer to the `POST /upgrade` that got us here is written first.
            if let Some(a) = admin_task.take() {
                a.stop().await;
            }
            // Certificates are the new process's to order now: the CA reaches it, and
            // two orders for one name would only fail each other's validations.
            shared.acme.stop();
            info!("upgrade: stopped accepting; draining requests in flight");
        } else {
            info!("shutting down: draining requests in flight");
            notify(&[NotifyState::Stopping]);
        }
        let _ = stop_tx.send(true);
        for s in servers {
            let _ = s.await;
        }
        if let Some(a) = admin_task {
            a.stop().await;
        }
        // Rooms' write-behind states, then writes acknowledged within
        // storage.sync_window, reach the disk before the exit.
        shared.retained.flush_rooms().await;
        shared.retained.flush_store();
        // Whatever outlived the drain (tunnels, idle origin connections) ends with them.
        drop(workers);
        match upgraded {
            Some(pid) => {
                xdp.handed_over();
                info!(
                    new_pid = pid,
                    "upgrade: drain finished; the old process exits"
                );
            }
            None => xdp.shutdown()?,
        }
        Ok(())
    }

    /// Starts the binary on disk with this process's arguments and listening sockets
    /// and waits until it accepts: its pid. On failure (it does not start, exits, or is
    /// not ready within `upgrade::READY_TIMEOUT`) this process serves on, untouched.
    async fn upgrade(
        &mut self,
        handover: &[upgrade::Socket],
        shared: &Shared,
        xdp: &mut XdpHandle,
    ) -> Result<u32> {
        let result = async {
            // The store is one process's at a time (its file is locked): the new
            // process could not start, so say why without trying.
            if let Some(path) = shared.retained.open_store() {
                anyhow::bail!(
                    "the store {} is in use (storage: KV, rooms) and cannot be opened by a \
                     second process while this one serves; restart the node instead",
                    path.display()
                );
            }
            let (exe, args) = upgrade::successor_command()?;
            info!(exe = %exe.display(), sockets = handover.len(), "upgrade: handing the listeners over to a new process");
            xdp.prepare_handover()
                .context("pinning the XDP links for the new process")?;
            upgrade::start_successor(exe, args, handover.to_vec(), upgrade::READY_TIMEOUT).await
        }
        .await;
        match &result {
            Ok(pid) => {
                info!(new_pid = pid, "upgrade: new process ready");
                // Under systemd the new process becomes the service's main process.
                notify(&[
                    NotifyState::MainPid(*pid),
                    NotifyState::Status("upgraded; the old process drains"),
                ]);
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "upgrade failed; this process keeps serving")
            }
        }
        result
    }

    /// Re-reads the configuration and swaps it in; on any error the running one stays.
    fn reload(
        &mut self,
        shared: &Shared,
        pipeline: &server::SharedPipeline,
        tls: Option<&tls::SharedTls>,
        xdp: &mut XdpHandle,
    ) -> Result<()> {
        // systemd (Type=notify, or notify-reload) waits for READY=1 again.
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        notify(&states);
        let result = (|| -> Result<()> {
            let (new, source) = Config::load(self.config_path.as_deref())
                .inspect_err(|e| error!(error = %format!("{e:#}"), "new configuration refused; keeping the running one"))?;
            let acme_plans = new.acme_plan()
                .inspect_err(|e| error!(error = %format!("{e:#}"), "reload failed; keeping the running configuration"))?;
            // The resolver reads which names ACME keeps from the shared state: built
            // against the new names, swapped back if the reload fails below.
            let acme = &shared.retained.acme;
            let old_names = acme.names();
            acme.set_names(&acme_plans);
            let certs = match tls {
                Some(_) => Some(tls::build(&new.certificate, acme)),
                None => None,
            }
            .transpose()
            .inspect_err(|e| {
                acme.restore_names(old_names.clone());
                error!(error = %format!("{e:#}"), "reload failed; keeping the running configuration")
            })?;
            let p = Pipeline::new(
                &new,
                shared.pool.clone(),
                shared.metrics.clone(),
                shared.threat.clone(),
                shared.userspace_policy.clone(),
                shared.cache.clone(),
                &shared.retained,
            )
            .and_then(|p| {
                xdp.apply(&new.xdp, &new.http.trusted_proxies)
                    .map(|()| p)
            })
                .inspect_err(|e| {
                    acme.restore_names(old_names.clone());
                    error!(error = %format!("{e:#}"), "reload failed; keeping the running configuration")
                })?;
            shared.acme.apply(&acme_plans);
            // New requests take the new routes; requests in flight finish on the
            // pipeline they started with.
            p.start_background();
            pipeline.store(Arc::new(p));
            shared.cache.set_path_policy(new.http.path);
            shared
                .retained
                .functions
                .set_deployable(&new.functions, &new.function);
            if let (Some(t), Some(c)) = (tls, certs) {
                *t.write().expect("tls lock") = c;
            }
            info!(%source, "configuration reloaded");
            warn_restart_only(&self.config, &new);
            self.config = new;
            Ok(())
        })();
        notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
        result
    }
}

/// `edge-node check`: beyond what `Config::load` validated, what only loading shows:
/// every function's component compiles, links and exports the wasi:http/proxy world.
/// The compiled code goes to the functions' disk cache, so the start that follows
/// (systemd's ExecStartPre runs `check`) loads instead of compiling.
pub fn check(config: &Config) -> Result<()> {
    crate::functions::Runtime::default().check(&config.functions, &config.function)
}

/// What lives across reloads and every pipeline shares.
struct Shared {
    pool: Pool,
    metrics: Arc<Metrics>,
    threat: Arc<ThreatEngine>,
    userspace_policy: Option<crate::xdp::SharedPolicy>,
    cache: Arc<crate::cache::Store>,
    retained: Arc<Retained>,
    /// Keeps the certificates obtained over ACME.
    acme: crate::acme::Manager,
}

/// Keys that only take effect at start: say so instead of pretending they were applied.
fn warn_restart_only(old: &Config, new: &Config) {
    let (a, b) = (&old.xdp, &new.xdp);
    for (key, changed) in [
        ("xdp.mode", a.mode != b.mode),
        ("xdp.strict", a.strict != b.strict),
        ("xdp.interfaces", a.interfaces != b.interfaces),
        ("xdp.pin_root", a.pin_root != b.pin_root),
        ("xdp.keep_attached", a.keep_attached != b.keep_attached),
        ("node.id", old.node.id != new.node.id),
        (
            "cache.max_bytes",
            old.cache.max_bytes != new.cache.max_bytes,
        ),
        ("cache.regional", old.cache.regional != new.cache.regional),
        (
            "threat.max_tracked",
            old.threat.max_tracked != new.threat.max_tracked,
        ),
        ("http.listen", old.http.listen != new.http.listen),
        ("http.h3_listen", old.http.h3_listen != new.http.h3_listen),
        (
            "http.tls_listen",
            old.http.tls_listen != new.http.tls_listen,
        ),
        ("admin.listen", old.admin.listen != new.admin.listen),
        ("fleet", old.fleet != new.fleet),
        (
            "admin.token",
            old.admin.token != new.admin.token || old.admin.token_file != new.admin.token_file,
        ),
    ] {
        if changed {
            warn!(
                key,
                "changed by the reload but takes effect only at the next restart"
            );
        }
    }
}

/// Tells systemd (when it started us with NOTIFY_SOCKET) about the service's state.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "sd_notify failed");
    }
}

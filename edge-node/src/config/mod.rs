//! The node's configuration: one TOML file, every key documented in
//! `edge-node.example.toml`, unknown keys rejected, defaults that run a working node.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

pub mod admin;
pub mod http_settings;

pub use admin::AdminSettings;
pub use http_settings::HttpSettings;

use crate::{
    phases::{geo::GeoSettings, route::RouteSettings},
    tls::CertificateSettings,
    upstream::UpstreamSettings,
    xdp::XdpSettings,
};

/// The embedded default: what `edge-node` runs with when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeSettings,
    #[serde(default)]
    pub xdp: XdpSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    /// `[[upstream]]` pools.
    #[serde(default)]
    pub upstream: Vec<UpstreamSettings>,
    /// `[[route]]`s, first match wins.
    #[serde(default)]
    pub route: Vec<RouteSettings>,
    /// Client regions.
    #[serde(default)]
    pub geo: GeoSettings,
    /// `[[certificate]]`s for the TLS listeners, chosen by SNI.
    #[serde(default)]
    pub certificate: Vec<CertificateSettings>,
    /// `[acme]`: defaults for certificates obtained over ACME; with a directory, also
    /// a certificate for every route host no `[[certificate]]` serves.
    #[serde(default)]
    pub acme: Option<crate::acme::AcmeSettings>,
    /// `[[jwt_provider]]`s routes authenticate against.
    #[serde(default)]
    pub jwt_provider: Vec<crate::auth::JwtProviderSettings>,
    /// Threat scoring and escalation.
    #[serde(default)]
    pub threat: crate::policy::ThreatSettings,
    /// The proof-of-work challenge.
    #[serde(default)]
    pub challenge: crate::phases::challenge::ChallengeSettings,
    /// The in-memory cache tier (routes opt in with `[route.cache]`).
    #[serde(default)]
    pub cache: crate::cache::CacheSettings,
    /// Responses compressed by what clients accept (on by default).
    #[serde(default)]
    pub compression: crate::phases::compress::CompressionSettings,
    /// Intent prediction (an ONNX model; off unless enabled).
    #[serde(default)]
    pub intent: crate::intent::IntentSettings,
    /// What all functions share (cache directory, instance pool).
    #[serde(default)]
    pub functions: crate::functions::FunctionsSettings,
    /// `[[function]]`s: WebAssembly components (wasi:http/proxy).
    #[serde(default)]
    pub function: Vec<crate::functions::FunctionSettings>,
    /// Where durable state lives (the KV store).
    #[serde(default)]
    pub storage: crate::kv::StorageSettings,
    /// `[[kv]]` namespaces, served by routes with `handler = { kv = "name" }`.
    #[serde(default)]
    pub kv: Vec<crate::kv::KvSettings>,
    /// `[[rooms]]`: real-time rooms over WebSockets (`handler = { rooms = "name" }`).
    #[serde(default)]
    pub rooms: Vec<crate::rooms::RoomsSettings>,
    /// `[[graphql]]`: schemas over KV and upstreams (`handler = { graphql = "name" }`).
    #[serde(default)]
    pub graphql: Vec<crate::graphql::GraphqlSettings>,
    /// OpenTelemetry traces over OTLP (off without an endpoint).
    #[serde(default)]
    pub traces: crate::otel::TraceSettings,
    /// What a fleet of nodes shares through Redis (off without `redis`).
    #[serde(default)]
    pub fleet: crate::fleet::FleetSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Identifies this node in responses, logs and the fleet.
    #[serde(default = "default_node_id")]
    pub id: String,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            id: default_node_id(),
        }
    }
}

fn default_node_id() -> String {
    "edge-1".to_string()
}

impl Config {
    /// What other nodes' events must leave alone: `xdp.allow` and the trusted proxies
    /// (never stopped from afar), and this file's blocks.
    pub fn fleet_guard(&self) -> crate::fleet::threats::Guarded {
        crate::fleet::threats::Guarded {
            protected: self
                .xdp
                .allow
                .iter()
                .chain(&self.http.trusted_proxies)
                .copied()
                .collect(),
            configured: self.xdp.block.clone(),
        }
    }
}

impl NodeSettings {
    /// The id is sent as `X-Node-Id` on every response: a header token, kept short.
    pub fn validate(&self) -> Result<()> {
        let id = &self.id;
        if id.is_empty() || id.len() > 64 {
            bail!("node.id must be 1 to 64 bytes long (is {})", id.len());
        }
        let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if !id.bytes().all(tchar) {
            bail!(
                "node.id {id:?} may only hold letters, digits and !#$%&'*+-.^_`|~ (an HTTP token)"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `edge_node=debug`, ...); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_string()
}

/// Where a configuration came from, for messages.
#[derive(Debug, Clone)]
pub enum Source {
    Embedded,
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Embedded => f.write_str("<embedded default>"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Config {
    /// Loads and validates `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<(Self, Source)> {
        match path {
            None => Ok((
                Self::parse(EMBEDDED_DEFAULT, &Source::Embedded)?,
                Source::Embedded,
            )),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))?;
                let source = Source::File(p.to_path_buf());
                Ok((Self::parse(&text, &source)?, source))
            }
        }
    }

    /// Parses and validates TOML text. Errors name the key and the line.
    pub fn parse(text: &str, source: &Source) -> Result<Self> {
        let mut config: Config = match toml::from_str(text) {
            Ok(c) => c,
            // toml's message already carries line, column and the offending key.
            Err(e) => bail!("{source}: {e}"),
        };
        config.complete();
        if let Err(e) = config.validate() {
            // Point at the key when it is written, else at the table the value is in.
            let line = e
                .downcast_ref::<Table>()
                .and_then(|t| {
                    let table = t.line_in(text)?;
                    let key = key_line(text, t.name, table, &e.root_cause().to_string());
                    Some(key.unwrap_or(table))
                })
                .map_or_else(String::new, |l| format!(" line {l}:"));
            bail!("{source}:{line} {e:#}");
        }
        Ok(config)
    }

    /// Every certificate the configuration keeps over ACME: the `[[certificate]]`s with
    /// `acme`, then (with a global `[acme]` that names a directory) one for each exact
    /// route host that no `[[certificate]]` serves.
    pub fn acme_plan(&self) -> Result<Vec<crate::acme::AcmeCert>> {
        let config = self;
        let global = config.acme.as_ref();
        let mut out = Vec::new();
        for c in &config.certificate {
            if let Some(own) = &c.acme {
                out.push(crate::acme::AcmeCert::resolve(&c.hosts, own, global)?);
            }
        }
        if let Some(g) = global
            && g.directory.is_some()
        {
            let served = |h: &str| {
                config.certificate.iter().flat_map(|c| &c.hosts).any(|n| {
                    let n = n.to_ascii_lowercase();
                    n == h
                        || n.strip_prefix("*.").is_some_and(|s| {
                            h.len() > s.len() + 1
                                && h.ends_with(s)
                                && h.as_bytes()[h.len() - s.len() - 1] == b'.'
                        })
                })
            };
            let mut seen = Vec::new();
            for r in &config.route {
                for h in &r.hosts {
                    let h = h.to_ascii_lowercase();
                    // A host with a port is matched without it.
                    let h = h
                        .rsplit_once(':')
                        .map_or(h.as_str(), |(n, _)| n)
                        .to_string();
                    if h.starts_with("*.")
                        || h.parse::<std::net::IpAddr>().is_ok()
                        || served(&h)
                        || seen.contains(&h)
                    {
                        continue;
                    }
                    seen.push(h.clone());
                    out.push(
                        crate::acme::AcmeCert::resolve(
                            std::slice::from_ref(&h),
                            &crate::acme::AcmeSettings::default(),
                            Some(g),
                        )
                        .with_context(|| format!("route host {h:?} (certificate from [acme])"))?,
                    );
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for c in &out {
            for n in &c.names {
                if !names.insert(n.clone()) {
                    bail!("acme: {n:?} is in two certificates obtained over ACME");
                }
            }
        }
        Ok(out)
    }

    /// Settings implied by others: the HTTP/3 ports are QUIC ports, so the XDP UDP
    /// budget covers them and a flood against them dies at the NIC.
    pub fn complete(&mut self) {
        for a in &self.http.h3_listen {
            if !self.xdp.rate.quic_ports.contains(&a.port()) && a.port() != 0 {
                self.xdp.rate.quic_ports.push(a.port());
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.node.validate().context(Table::one("node"))?;
        self.xdp
            .validate()
            .context("in [xdp]")
            .context(Table::one("xdp"))?;
        let admin_on = self
            .admin
            .token()
            .context("in [admin]")
            .context(Table::one("admin"))?
            .is_some();
        self.http.validate().context(Table::one("http"))?;
        if admin_on
            && let Some(taken) = self
                .http
                .listen
                .iter()
                .chain(&self.http.tls_listen)
                .find(|a| http_settings::addresses_overlap(**a, self.admin.listen))
        {
            return Err(anyhow::anyhow!(
                "admin.listen {} is also an http.listen / http.tls_listen address ({taken})",
                self.admin.listen
            )
            .context(Table::one("admin")));
        }
        self.threat.validate().context(Table::one("threat"))?;
        for (i, c) in self.certificate.iter().enumerate() {
            c.validate().context(Table::nth("certificate", i))?;
            if let Some(own) = &c.acme {
                crate::acme::AcmeCert::resolve(&c.hosts, own, self.acme.as_ref())
                    .context(Table::nth("certificate", i))?;
            }
        }
        let acme = self.acme_plan().context(Table::one("acme"))?;
        for p in &acme {
            let (needs, key) = match p.challenge {
                crate::acme::ChallengeKind::Http01 => (&self.http.listen, "http.listen"),
                crate::acme::ChallengeKind::TlsAlpn01 => (&self.http.tls_listen, "http.tls_listen"),
            };
            if needs.is_empty() {
                return Err(anyhow::anyhow!(
                    "acme.challenge {} for {} needs a listener in {key}: the CA connects there",
                    p.challenge.as_str(),
                    p.names[0]
                )
                .context(Table::one("http")));
            }
        }
        if !self.http.h3_listen.is_empty() && self.certificate.is_empty() && acme.is_empty() {
            bail!("http.h3_listen needs at least one [[certificate]]");
        }
        if !self.http.tls_listen.is_empty() || !self.certificate.is_empty() {
            // Loads the files: a missing or mismatched key is a config error, not a
            // failed handshake later.
            let state = std::sync::Arc::new(crate::acme::AcmeState::default());
            state.set_names(&acme);
            crate::tls::build(&self.certificate, &state).context("in [[certificate]]")?;
        }
        self.geo.open_db().context(Table::one("geo"))?;
        self.challenge.validate().context(Table::one("challenge"))?;
        self.intent.validate().context(Table::one("intent"))?;
        self.compression
            .validate()
            .context(Table::one("compression"))?;
        self.traces.validate().context(Table::one("traces"))?;
        self.fleet.validate().context(Table::one("fleet"))?;
        if self.intent.enabled {
            // Loads the model: a missing or broken file is a config error.
            crate::intent::load(self.intent.model.as_deref())
                .context("in [intent]")
                .context(Table::one("intent"))?;
        }
        if self.http.path.fold_case {
            // Requests are matched lower-cased: a prefix with capitals would never match.
            for (i, r) in self.route.iter().enumerate() {
                let roles = r
                    .auth
                    .iter()
                    .flat_map(|a| a.roles.iter().map(|x| &x.path_prefix));
                if let Some(p) = std::iter::once(&r.path_prefix)
                    .chain(roles)
                    .find(|p| p.bytes().any(|b| b.is_ascii_uppercase()))
                {
                    return Err(anyhow::anyhow!(
                        "route {}: path prefix {p:?} has capitals, but http.path.fold_case \
                         matches requests in lower case",
                        r.display_name()
                    )
                    .context(Table::nth("route", i)));
                }
            }
        }
        for (i, r) in self.route.iter().enumerate() {
            if let Some(e) = &r.experiment {
                crate::phases::personalize::Experiment::new(e)
                    .with_context(|| format!("route {}: [route.experiment]", r.display_name()))
                    .context(Table::nth("route", i))?;
            }
        }
        let mut providers = std::collections::HashSet::new();
        for (i, p) in self.jwt_provider.iter().enumerate() {
            let at = || Table::nth("jwt_provider", i);
            p.validate().context(at())?;
            if !providers.insert(p.name.as_str()) {
                return Err(
                    anyhow::anyhow!("jwt_provider {} is defined twice", p.name).context(at())
                );
            }
        }
        for (i, r) in self.route.iter().enumerate() {
            if let Some(a) = &r.auth
                && a.mode != crate::phases::auth::AuthMode::Off
                && !providers.contains(a.provider.as_str())
            {
                return Err(anyhow::anyhow!(
                    "route {}: auth names jwt_provider {:?}, which is not defined",
                    r.display_name(),
                    a.provider
                )
                .context(Table::nth("route", i)));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.upstream.iter().enumerate() {
            let at = || Table::nth("upstream", i);
            u.validate().context(at())?;
            if !names.insert(u.name.as_str()) {
                return Err(anyhow::anyhow!("upstream {} is defined twice", u.name).context(at()));
            }
        }
        crate::functions::validate(&self.functions, &self.function, &self.upstream, &self.kv)
            .map_err(|(i, e)| {
                e.context(i.map_or(Table::one("functions"), |i| Table::nth("function", i)))
            })?;
        self.storage.validate().context(Table::one("storage"))?;
        let mut namespaces = std::collections::HashSet::new();
        for (i, k) in self.kv.iter().enumerate() {
            let at = || Table::nth("kv", i);
            k.validate().context(at())?;
            if !namespaces.insert(k.name.as_str()) {
                return Err(anyhow::anyhow!("kv {} is defined twice", k.name).context(at()));
            }
        }
        let mut rooms = std::collections::HashSet::new();
        for (i, k) in self.rooms.iter().enumerate() {
            let at = || Table::nth("rooms", i);
            k.validate().context(at())?;
            if !rooms.insert(k.name.as_str()) {
                return Err(anyhow::anyhow!("rooms {} is defined twice", k.name).context(at()));
            }
        }
        let kv_names: Vec<String> = self.kv.iter().map(|k| k.name.clone()).collect();
        let upstream_names: Vec<String> = self.upstream.iter().map(|u| u.name.clone()).collect();
        let function_names: Vec<String> = self.function.iter().map(|f| f.name.clone()).collect();
        let mut schemas = std::collections::HashSet::new();
        for (i, g) in self.graphql.iter().enumerate() {
            let at = || Table::nth("graphql", i);
            g.validate(&kv_names, &upstream_names, &function_names)
                .context(at())?;
            if !schemas.insert(g.name.as_str()) {
                return Err(anyhow::anyhow!("graphql {} is defined twice", g.name).context(at()));
            }
        }
        for (i, r) in self.route.iter().enumerate() {
            let at = || Table::nth("route", i);
            r.validate().context(at())?;
            if self.fleet.redis.is_none() && r.rate_limit.iter().any(|l| l.fleet_scoped()) {
                return Err(anyhow::anyhow!(
                    "route {}: a rate_limit with scope = \"fleet\" needs fleet.redis",
                    r.display_name()
                )
                .context(at()));
            }
            let missing = match &r.handler {
                crate::phases::route::HandlerSettings::Graphql(n) => {
                    (!schemas.contains(n.as_str())).then_some(("graphql", n))
                }
                crate::phases::route::HandlerSettings::Kv(n) => {
                    (!namespaces.contains(n.as_str())).then_some(("kv", n))
                }
                crate::phases::route::HandlerSettings::Rooms(n) => {
                    (!rooms.contains(n.as_str())).then_some(("rooms", n))
                }
                _ => None,
            };
            if let Some((table, name)) = missing {
                return Err(anyhow::anyhow!(
                    "route {}: handler names {table} {name:?}, which is not defined (no \
                     [[{table}]] of that name)",
                    r.display_name()
                )
                .context(at()));
            }
            for u in r.pools() {
                if !names.contains(u) {
                    return Err(anyhow::anyhow!(
                        "route {} names upstream {u:?}, which is not defined",
                        r.display_name()
                    )
                    .context(at()));
                }
            }
            let handler = match &r.handler {
                crate::phases::route::HandlerSettings::Function(f) => Some(("handler", f)),
                _ => None,
            };
            let uses = [
                handler,
                r.request_filter.as_ref().map(|f| ("request_filter", f)),
                r.response_filter.as_ref().map(|f| ("response_filter", f)),
            ];
            for (key, f) in uses.into_iter().flatten() {
                if !self.function.iter().any(|d| &d.name == f) {
                    return Err(anyhow::anyhow!(
                        "route {}: {key} names function {f:?}, which is not defined \
                         (no [[function]] of that name)",
                        r.display_name()
                    )
                    .context(at()));
                }
            }
        }
        Ok(())
    }
}

/// The line (1-based) of the key a validation message starts with (`http.max_body_bytes
/// …`, `threat.weights.auth_failure = …`, `rate.quic_ports …`), written in table `top`
/// (whose header is on line `table`) or its sub-tables: the first `<last segment> =`
/// before the header of another table.
fn key_line(text: &str, top: &str, table: usize, message: &str) -> Option<usize> {
    let key = message.split_whitespace().next()?;
    let (_, leaf) = key.rsplit_once('.')?;
    if leaf.is_empty() || !leaf.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    for (n, line) in text.lines().enumerate().skip(table) {
        let line = line.trim_start();
        if let Some(header) = line.strip_prefix('[') {
            let name = header.trim_start_matches('[').split(']').next()?.trim();
            if name != top && !name.starts_with(&format!("{top}.")) {
                return None;
            }
            continue;
        }
        if line
            .strip_prefix(leaf)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(n + 1);
        }
    }
    None
}

/// The table a validation error is about: the `index`-th `[[name]]`, or `[name]`.
#[derive(Debug)]
struct Table {
    name: &'static str,
    index: Option<usize>,
}

impl Table {
    fn one(name: &'static str) -> Self {
        Self { name, index: None }
    }

    fn nth(name: &'static str, index: usize) -> Self {
        Self {
            name,
            index: Some(index),
        }
    }

    /// The line (1-based) of the table's header in `text`: `[[name]]` counted in order,
    /// or the first `[name]` / `[name.…]`. None when it is not written as a header
    /// (inline, or all defaults).
    fn line_in(&self, text: &str) -> Option<usize> {
        let headers = text.lines().enumerate().filter_map(|(n, line)| {
            let line = line.trim_start();
            let inner = match self.index {
                Some(_) => line.strip_prefix("[[")?.split("]]").next()?,
                None => line
                    .strip_prefix('[')
                    .filter(|l| !l.starts_with('['))?
                    .split(']')
                    .next()?,
            };
            let inner = inner.trim();
            let ours = match self.index {
                Some(_) => inner == self.name,
                None => {
                    inner == self.name
                        || inner
                            .strip_prefix(self.name)
                            .is_some_and(|r| r.starts_with('.'))
                }
            };
            ours.then_some(n + 1)
        });
        match self.index {
            Some(i) => headers.into_iter().nth(i),
            None => headers.into_iter().next(),
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "[[{}]] number {}", self.name, i + 1),
            None => write!(f, "[{}]", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let (c, _) = Config::load(None).unwrap();
        assert_eq!(c.node.id, "edge-1");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::parse(
            "[node]\nid = \"a\"\n\n[xdp]\nmoode = \"auto\"\n",
            &Source::Embedded,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("moode"), "{msg}");
        assert!(msg.contains("line 5"), "{msg}");
    }

    #[test]
    fn http3_ports_join_the_xdp_quic_budget() {
        // HTTP/3 needs a certificate.
        let err = Config::parse(
            "[http]\nh3_listen = [\"127.0.0.1:8443\"]\n",
            &Source::Embedded,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("certificate"), "{err:#}");
        let mut c: Config =
            toml::from_str("[http]\nh3_listen = [\"127.0.0.1:8443\", \"[::1]:443\"]\n").unwrap();
        c.complete();
        assert_eq!(c.xdp.rate.quic_ports, vec![443, 8443]);
        assert_eq!(c.xdp.kernel_config().quic_ports[..2], [443, 8443]);
    }

    #[test]
    fn invalid_values_are_rejected() {
        for (text, needle) in [
            ("[xdp]\nmode = \"turbo\"\n", "turbo"),
            ("[xdp]\nallow = [\"10.0.0.0/33\"]\n", "10.0.0.0/33"),
            (
                "[xdp.rate]\nquic_ports = [1,2,3,4,5,6,7,8,9]\n",
                "quic_ports",
            ),
            ("[node]\nid = \"\"\n", "node.id"),
            ("[xdp]\nipv6_source_prefix = 31\n", "ipv6_source_prefix"),
            ("[xdp]\nipv6_source_prefix = 129\n", "ipv6_source_prefix"),
        ] {
            let err = Config::parse(text, &Source::Embedded).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(needle), "{text}: {msg}");
        }
    }

    #[test]
    fn invalid_values_found_after_parsing_name_their_table_and_line() {
        let text = "[node]\nid = \"a\"\n\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:80\"]\n\n\
                    [[route]]\nhosts = [\"a.test\"]\nupstream = \"app\"\n\n\
                    [[route]]\nhosts = [\"b.test\"]\npath_prefix = \"api\"\nupstream = \"app\"\n";
        let msg = format!("{:#}", Config::parse(text, &Source::Embedded).unwrap_err());
        assert!(msg.contains("line 12:"), "{msg}");
        assert!(
            msg.contains("[[route]] number 2") && msg.contains("path_prefix"),
            "{msg}"
        );
        let text = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[xdp]\nmode = \"auto\"\n\n[xdp.rate]\nquic_ports = [1,2,3,4,5,6,7,8,9]\n";
        let msg = format!("{:#}", Config::parse(text, &Source::Embedded).unwrap_err());
        assert!(
            msg.contains("line 8:") && msg.contains("quic_ports"),
            "the key's own line: {msg}"
        );
    }

    #[test]
    fn nonsense_values_name_their_key_and_line() {
        for (text, key, line) in [
            (
                "[threat]
enabled = true
half_life = \"0s\"
",
                "threat.half_life",
                3,
            ),
            (
                "[threat]
half_life = \"60s\"

[threat.weights]
rate_limited = 1.0
auth_failure = -5.0
",
                "threat.weights.auth_failure",
                6,
            ),
            (
                "[log]
level = \"info\"
[http]
max_concurrent_streams = 0
",
                "http.max_concurrent_streams",
                4,
            ),
        ] {
            let msg = format!("{:#}", Config::parse(text, &Source::Embedded).unwrap_err());
            assert!(
                msg.contains(&format!("line {line}:")) && msg.contains(key),
                "{msg}"
            );
        }
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example in the repository documents every key: it must parse, and its values
    /// must be the defaults it claims.
    #[test]
    fn example_config_parses_and_shows_the_defaults() {
        let text = include_str!("../../../edge-node.example.toml");
        let c = Config::parse(text, &Source::Embedded).unwrap();
        let d = Config::parse("", &Source::Embedded).unwrap();
        assert_eq!(c.xdp.kernel_config(), d.xdp.kernel_config());
        assert_eq!(c.xdp.pin_root, d.xdp.pin_root);
        assert_eq!(c.node.id, d.node.id);
        assert_eq!(format!("{:?}", c.http), format!("{:?}", d.http));
        // The example's pool and route are the embedded default's.
        let (e, _) = Config::load(None).unwrap();
        assert_eq!(c.upstream.len(), e.upstream.len());
        assert_eq!(c.route[0].hosts, e.route[0].hosts);
        // Every upstream key the example sets is the default.
        let minimal = Config::parse(
            "[[upstream]]\nname = \"demo\"\nregion = \"local\"\nbuiltin = \"demo\"\n",
            &Source::Embedded,
        )
        .unwrap();
        assert_eq!(
            format!("{:?}", c.upstream[0]),
            format!("{:?}", minimal.upstream[0])
        );
        assert_eq!(format!("{:?}", c.geo), format!("{:?}", d.geo));
        assert_eq!(format!("{:?}", c.threat), format!("{:?}", d.threat));
        assert_eq!(format!("{:?}", c.challenge), format!("{:?}", d.challenge));
        assert_eq!(format!("{:?}", c.cache), format!("{:?}", d.cache));
        assert_eq!(c.compression, d.compression);
        assert_eq!(c.traces, d.traces);
        assert_eq!(c.fleet, d.fleet);
    }
}

//! GraphQL over edge data: a schema in SDL (`[[graphql]] schema`), whose root fields
//! resolve from a KV key template (`user(id) → users "user:{id}"`), an upstream JSON
//! request (`posts(limit) → GET api /posts?limit={limit}`, through the node's pools)
//! or a function (`POST /<field>` with the arguments as JSON); upstream answers are kept
//! in the node's cache as their `Cache-Control` allows (`cached_get`);
//! every other field reads the property of its name from its parent's JSON. async-graphql's
//! dynamic schema executes it, with depth, complexity and alias limits, introspection on
//! or off, and automatic persisted queries.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use async_graphql::{
    Value,
    dynamic::{
        Field, FieldFuture, FieldValue, InputValue, Object, ResolverContext, Schema, TypeRef,
    },
    parser::types::{BaseType, Type, TypeKind, TypeSystemDefinition},
};
use http::{Request, StatusCode, header};
use serde::Deserialize;

use crate::{
    functions::Functions,
    kv::Namespace,
    upstream::{Pool, Upstream},
};

/// `[[graphql]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlSettings {
    /// What routes name it by (`handler = { graphql = "name" }`).
    pub name: String,
    /// The schema, in SDL: object types, the built-in scalars, lists and non-null; the
    /// root is `Query` (or what `schema { query: … }` names).
    pub schema: PathBuf,
    /// Resolvers of root fields; a root field without one resolves to null.
    #[serde(default)]
    pub resolver: Vec<ResolverSettings>,
    /// Deepest selection nesting accepted.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Highest complexity (one per field selected) accepted.
    #[serde(default = "default_max_complexity")]
    pub max_complexity: usize,
    /// Most aliases in one document (each alias can repeat a costly field).
    #[serde(default = "default_max_aliases")]
    pub max_aliases: usize,
    /// Largest request body (413 beyond).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Whether `__schema` / `__type` are answered.
    #[serde(default)]
    pub introspection: bool,
    /// Automatic persisted queries (Apollo's APQ: a client sends the hash alone once
    /// the node has seen the query), which makes GET queries short and cacheable.
    #[serde(default = "yes")]
    pub persisted_queries: bool,
    /// `Cache-Control: max-age` of successful GET answers (0: `no-cache`); `private`
    /// on routes with `[route.auth]`.
    #[serde(default, with = "crate::duration")]
    pub get_max_age: Duration,
    /// Resolver calls (KV reads, upstream requests) one request may make; a field
    /// repeated without aliases or through fragments counts each time.
    #[serde(default = "default_max_resolver_calls")]
    pub max_resolver_calls: usize,
}

fn default_max_resolver_calls() -> usize {
    20
}

fn default_max_depth() -> usize {
    10
}
fn default_max_complexity() -> usize {
    500
}
fn default_max_aliases() -> usize {
    30
}
fn default_max_body_bytes() -> u64 {
    64 << 10
}
fn yes() -> bool {
    true
}

/// `[[graphql.resolver]]`: one root field, and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverSettings {
    /// `Query.<field>`.
    pub field: String,
    /// A `[[kv]]` namespace, and the key template (`"user:{id}"`: the field's `id`
    /// argument); the value is read as JSON (a non-JSON value as a string).
    #[serde(default)]
    pub kv: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    /// An `[[upstream]]`, and the path template (`"/posts?limit={limit}"`, arguments
    /// percent-encoded); a GET whose 200 JSON body is the value.
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// A `[[function]]`: called with `POST /<field>`, the arguments as a JSON object;
    /// its 200 body is the value (JSON, or else a string), a 404 is null.
    #[serde(default)]
    pub function: Option<String>,
}

/// What is escaped of an argument put into an upstream path: everything but the
/// unreserved characters (RFC 3986), so `/`, `?`, `&`, `#` and `%` stay data.
const ARG: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Largest upstream (or function) JSON a resolver reads.
const MAX_UPSTREAM_JSON: usize = 4 << 20;

impl GraphqlSettings {
    /// The keys, the names they refer to, and the schema file itself (read and built).
    pub fn validate(
        &self,
        kv: &[String],
        upstreams: &[String],
        functions: &[String],
    ) -> Result<()> {
        let n = &self.name;
        crate::kv::check_name("graphql", n)?;
        if self.max_depth == 0
            || self.max_complexity == 0
            || self.max_body_bytes == 0
            || self.max_resolver_calls == 0
        {
            bail!(
                "graphql {n}: max_depth, max_complexity, max_body_bytes and \
                 max_resolver_calls must be above 0"
            );
        }
        for r in &self.resolver {
            match (&r.kv, &r.key, &r.upstream, &r.path, &r.function) {
                (None, None, None, None, Some(f)) => {
                    if !functions.contains(f) {
                        bail!(
                            "graphql {n}: resolver {}: no [[function]] named {f:?}",
                            r.field
                        );
                    }
                }
                (Some(ns), Some(_), None, None, None) => {
                    if !kv.contains(ns) {
                        bail!("graphql {n}: resolver {}: no [[kv]] named {ns:?}", r.field);
                    }
                }
                (None, None, Some(up), Some(path), None) => {
                    if !upstreams.contains(up) {
                        bail!(
                            "graphql {n}: resolver {}: no [[upstream]] named {up:?}",
                            r.field
                        );
                    }
                    if !path.starts_with('/') {
                        bail!("graphql {n}: resolver {}: path must start with /", r.field);
                    }
                }
                _ => bail!(
                    "graphql {n}: resolver {}: give kv and key, upstream and path, or function",
                    r.field
                ),
            }
        }
        Graphql::build(self, Arc::default()).map(drop)
    }
}

/// Where a resolver reads.
enum Source {
    Kv { namespace: String, key: String },
    Upstream { upstream: String, path: String },
    Function { function: String },
}

/// What the resolvers reach (none of it when a configuration is only checked).
#[derive(Default)]
pub struct Backends {
    pub namespaces: HashMap<String, Arc<Namespace>>,
    /// The node's cache: upstream answers that may be stored are, under
    /// `http://<upstream>/<path>` (purged like any URL).
    pub cache: Option<Arc<crate::cache::Store>>,
    pub functions: Option<Arc<Functions>>,
    pub pool: Option<Pool>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
}

/// Per request (request data): the client its upstream calls are made for, and the
/// resolver calls it has left.
pub struct RequestData {
    pub client: std::net::IpAddr,
    pub calls_left: std::sync::atomic::AtomicUsize,
}

/// One `[[graphql]]`, built: the executable schema and its limits.
pub struct Graphql {
    pub settings: GraphqlSettings,
    pub schema: Schema,
}

/// The shape of a field's type: which fields are objects (their values stay JSON).
#[derive(Clone)]
enum Shape {
    Leaf,
    Object,
    List(Box<Shape>),
}

fn shape(ty: &Type, objects: &[String]) -> Shape {
    match &ty.base {
        BaseType::Named(n) if objects.iter().any(|o| o == n.as_str()) => Shape::Object,
        BaseType::Named(_) => Shape::Leaf,
        BaseType::List(inner) => Shape::List(Box::new(shape(inner, objects))),
    }
}

fn type_ref(ty: &Type) -> TypeRef {
    let base = match &ty.base {
        BaseType::Named(n) => TypeRef::Named(n.to_string().into()),
        BaseType::List(inner) => TypeRef::List(Box::new(type_ref(inner))),
    };
    if ty.nullable {
        base
    } else {
        TypeRef::NonNull(Box::new(base))
    }
}

/// A JSON value as the field's type wants it (`None`: null).
fn field_value(v: serde_json::Value, shape: &Shape) -> Option<FieldValue<'static>> {
    if v.is_null() {
        return None;
    }
    Some(match shape {
        Shape::Object => FieldValue::owned_any(v),
        Shape::Leaf => FieldValue::value(Value::from_json(v).ok()?),
        Shape::List(inner) => match v {
            serde_json::Value::Array(items) => FieldValue::list(
                items
                    .into_iter()
                    .map(|i| field_value(i, inner).unwrap_or(FieldValue::NULL)),
            ),
            _ => return None,
        },
    })
}

/// `template` with `{arg}` replaced by the field's arguments (`encode`: percent-encoded).
fn fill(template: &str, ctx: &ResolverContext<'_>, encode: bool) -> async_graphql::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| async_graphql::Error::new("unclosed { in a template"))?;
        let name = &rest[open + 1..open + close];
        let text = match ctx.args.get(name).map(|a| a.as_value().clone()) {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Boolean(b)) => b.to_string(),
            Some(Value::Enum(e)) => e.to_string(),
            _ => String::new(),
        };
        if encode {
            // An argument is one segment or value: it never walks the path.
            if text == "." || text == ".." {
                return Err(async_graphql::Error::new(format!(
                    "argument {name} is not a name"
                )));
            }
            out.extend(percent_encoding::utf8_percent_encode(&text, ARG));
        } else {
            out.push_str(&text);
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

async fn read(
    source: &Source,
    backends: &Backends,
    ctx: &ResolverContext<'_>,
) -> async_graphql::Result<serde_json::Value> {
    let data = ctx.data_opt::<RequestData>();
    if let Some(d) = data {
        let left = d.calls_left.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| n.checked_sub(1),
        );
        if left.is_err() {
            return Err(async_graphql::Error::new(
                "the query makes more resolver calls than max_resolver_calls",
            ));
        }
    }
    match source {
        Source::Kv { namespace, key } => {
            let key = fill(key, ctx, false)?;
            let ns = backends
                .namespaces
                .get(namespace)
                .ok_or_else(|| async_graphql::Error::new("no such namespace"))?;
            let entry = ns.read(&key).await.map_err(|e| {
                tracing::warn!(namespace, error = %e, "graphql: store read failed");
                async_graphql::Error::new("the store could not be read")
            })?;
            Ok(match entry {
                None => serde_json::Value::Null,
                Some(e) => serde_json::from_slice(&e.value).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&e.value).into_owned())
                }),
            })
        }
        Source::Upstream { upstream, path } => {
            let path = fill(path, ctx, true)?;
            let (Some(pool), Some(upstream)) = (&backends.pool, backends.upstreams.get(upstream))
            else {
                return Err(async_graphql::Error::new("no such upstream"));
            };
            let client = data.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |d| d.client);
            let Some(body) = cached_get(backends, pool, upstream, &path, client).await? else {
                return Ok(serde_json::Value::Null);
            };
            serde_json::from_slice(&body).map_err(|_| {
                async_graphql::Error::new(format!("upstream {} sent no JSON", upstream.name))
            })
        }
        Source::Function { function } => {
            let functions = backends
                .functions
                .as_ref()
                .ok_or_else(|| async_graphql::Error::new("no functions"))?;
            let args: serde_json::Map<String, serde_json::Value> = ctx
                .args
                .iter()
                .filter_map(|(name, v)| {
                    Some((name.to_string(), v.as_value().clone().into_json().ok()?))
                })
                .collect();
            let body =
                serde_json::to_vec(&args).map_err(|e| async_graphql::Error::new(e.to_string()))?;
            let client = data.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |d| d.client);
            let field = ctx.field().name();
            let req = Request::post(format!(
                "/{}",
                percent_encoding::utf8_percent_encode(field, ARG)
            ))
            .header(header::HOST, "graphql")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(crate::error::full(body))
            .map_err(|e| async_graphql::Error::new(e.to_string()))?;
            let resp = functions.handle(function, req, client).await.map_err(|e| {
                async_graphql::Error::new(format!("function {function}: {:?}", e.kind))
            })?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(serde_json::Value::Null);
            }
            if resp.status() != StatusCode::OK {
                return Err(async_graphql::Error::new(format!(
                    "function {function} answered {}",
                    resp.status().as_u16()
                )));
            }
            let body = crate::body::read_bounded(resp.into_body(), MAX_UPSTREAM_JSON as u64)
                .await
                .map_err(|_| {
                    async_graphql::Error::new(format!(
                        "function {function}: body unreadable or too large"
                    ))
                })?;
            Ok(serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
            }))
        }
    }
}

/// `GET <path>` from `upstream` through the node's pools, answered from the node's cache
/// while a stored answer is fresh; a 200 the response's `Cache-Control` lets a shared
/// cache keep is stored (RFC 9111 rules, no default lifetime). `None`: a 404.
async fn cached_get(
    backends: &Backends,
    pool: &Pool,
    upstream: &Upstream,
    path: &str,
    client: std::net::IpAddr,
) -> async_graphql::Result<Option<bytes::Bytes>> {
    use crate::cache::{Entry, Lookup, policy};
    let req = Request::get(path)
        .header(header::HOST, upstream.name.as_str())
        .header(header::ACCEPT, "application/json")
        .body(crate::error::empty())
        .map_err(|e| async_graphql::Error::new(e.to_string()))?;
    let (target_path, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    // The URL alone would be a proxy route's key for a request with that Host: a
    // client could read or plant the resolver's answer. The resolver's field keeps
    // them apart (a purge by URL still finds both).
    let mut material = crate::cache::url_material("http", &upstream.name, target_path, query);
    material.field(b'G', b"graphql-resolver");
    let key = material.finish();
    let now = std::time::Instant::now();
    if let Some(cache) = &backends.cache
        && let Lookup::Hit(e) = cache.lookup(&key, req.headers(), now)
        && e.status == StatusCode::OK
    {
        return Ok(Some(e.body.clone()));
    }
    let request_headers = req.headers().clone();
    let resp = pool.send(upstream, req, true, client).await.map_err(|e| {
        async_graphql::Error::new(format!("upstream {}: {:?}", upstream.name, e.kind))
    })?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        other => {
            return Err(async_graphql::Error::new(format!(
                "upstream {} answered {}",
                upstream.name,
                other.as_u16()
            )));
        }
    }
    let (parts, body) = resp.into_parts();
    let body = crate::body::read_bounded(body, MAX_UPSTREAM_JSON as u64)
        .await
        .map_err(|_| {
            async_graphql::Error::new(format!(
                "upstream {}: body unreadable or too large",
                upstream.name
            ))
        })?;
    let lifetime = policy::storable(
        &http::Method::GET,
        &request_headers,
        parts.status,
        &parts.headers,
        policy::RoutePolicy::default(),
        std::time::SystemTime::now(),
    );
    if let (Some(cache), Some(lifetime)) = (&backends.cache, lifetime)
        && !lifetime.is_zero()
    {
        let vary = crate::headers::list(&parts.headers, header::VARY)
            .filter_map(|f| http::HeaderName::from_bytes(f.as_bytes()).ok())
            .map(|name| {
                let v = request_headers.get(&name).cloned();
                (name, v)
            })
            .collect();
        cache.insert(
            &key,
            Entry {
                status: parts.status,
                initial_age: policy::initial_age(&parts.headers),
                headers: parts.headers,
                body: body.clone(),
                stored_at: now,
                lifetime,
                stale_if_error: std::time::Duration::ZERO,
                stale_while_revalidate: std::time::Duration::ZERO,
                vary,
                url: crate::cache::canonical_parts("http", &upstream.name, target_path, query),
                key: key.material.clone(),
                tags: Vec::new(),
            },
        );
    }
    Ok(Some(body))
}

impl Graphql {
    /// Reads and builds the schema of `s`; errors name the file and the type or field.
    pub fn build(s: &GraphqlSettings, backends: Arc<Backends>) -> Result<Self> {
        let sdl = std::fs::read_to_string(&s.schema)
            .with_context(|| format!("graphql {}: reading {}", s.name, s.schema.display()))?;
        let doc = async_graphql::parser::parse_schema(&sdl)
            .map_err(|e| anyhow!("graphql {}: {}: {e}", s.name, s.schema.display()))?;
        let mut query_name = "Query".to_string();
        let mut objects = Vec::new();
        for def in &doc.definitions {
            match def {
                TypeSystemDefinition::Schema(sch) => {
                    if let Some(q) = &sch.node.query {
                        query_name = q.node.to_string();
                    }
                    if sch.node.mutation.is_some() || sch.node.subscription.is_some() {
                        bail!(
                            "graphql {}: only queries are served (no mutation or subscription)",
                            s.name
                        );
                    }
                }
                TypeSystemDefinition::Type(t) => match &t.node.kind {
                    TypeKind::Object(o) => {
                        objects.push((t.node.name.node.to_string(), o.fields.clone()))
                    }
                    TypeKind::Scalar => {}
                    _ => bail!(
                        "graphql {}: type {}: only object types and scalars are supported",
                        s.name,
                        t.node.name.node
                    ),
                },
                TypeSystemDefinition::Directive(_) => {}
            }
        }
        let names: Vec<String> = objects.iter().map(|(n, _)| n.clone()).collect();
        if !names.contains(&query_name) {
            bail!("graphql {}: no type {query_name} (the query root)", s.name);
        }
        let mut sources: HashMap<String, Arc<Source>> = HashMap::new();
        for r in &s.resolver {
            let Some(field) = r.field.strip_prefix(&format!("{query_name}.")) else {
                bail!(
                    "graphql {}: resolver field {:?} is not {query_name}.<field>",
                    s.name,
                    r.field
                );
            };
            let source = match (&r.kv, &r.key, &r.upstream, &r.path) {
                _ if r.function.is_some() => Source::Function {
                    function: r.function.clone().unwrap_or_default(),
                },
                (Some(ns), Some(key), _, _) => Source::Kv {
                    namespace: ns.clone(),
                    key: key.clone(),
                },
                (_, _, Some(up), Some(path)) => Source::Upstream {
                    upstream: up.clone(),
                    path: path.clone(),
                },
                _ => bail!("graphql {}: resolver {}: no source", s.name, r.field),
            };
            sources.insert(field.to_string(), Arc::new(source));
        }
        let mut builder = Schema::build(&query_name, None, None)
            .limit_depth(s.max_depth)
            .limit_complexity(s.max_complexity)
            .limit_recursive_depth(s.max_depth.max(32));
        if !s.introspection {
            builder = builder.disable_introspection();
        }
        if s.persisted_queries {
            builder = builder.extension(
                async_graphql::extensions::apollo_persisted_queries::ApolloPersistedQueries::new(
                    // Parsed documents are kept: few, since a large one is large.
                    async_graphql::extensions::apollo_persisted_queries::LruCacheStorage::new(256),
                ),
            );
        }
        for (name, fields) in &objects {
            let mut object = Object::new(name.as_str());
            for f in fields {
                let f = &f.node;
                let field_name = f.name.node.to_string();
                let field_shape = shape(&f.ty.node, &names);
                let root_source = (name == &query_name)
                    .then(|| sources.remove(&field_name))
                    .flatten();
                let backends = backends.clone();
                let key = field_name.clone();
                let mut field = Field::new(field_name.as_str(), type_ref(&f.ty.node), move |ctx| {
                    let source = root_source.clone();
                    let backends = backends.clone();
                    let field_shape = field_shape.clone();
                    let key = key.clone();
                    FieldFuture::new(async move {
                        let v = match &source {
                            Some(src) => read(src, &backends, &ctx).await?,
                            None => match ctx.parent_value.downcast_ref::<serde_json::Value>() {
                                Some(parent) => parent.get(&key).cloned().unwrap_or_default(),
                                None => serde_json::Value::Null,
                            },
                        };
                        Ok(field_value(v, &field_shape))
                    })
                });
                for arg in &f.arguments {
                    let arg = &arg.node;
                    field = field.argument(InputValue::new(
                        arg.name.node.to_string(),
                        type_ref(&arg.ty.node),
                    ));
                }
                object = object.field(field);
            }
            builder = builder.register(object);
        }
        if let Some(field) = sources.keys().next() {
            bail!(
                "graphql {}: a resolver names {query_name}.{field}, which the schema does not have",
                s.name
            );
        }
        let schema = builder
            .finish()
            .map_err(|e| anyhow!("graphql {}: {}: {e}", s.name, s.schema.display()))?;
        Ok(Self {
            settings: s.clone(),
            schema,
        })
    }
}

/// Aliases in a query document (a field asked for many times under other names).
pub fn aliases(query: &str) -> Option<usize> {
    use async_graphql::parser::types::{Selection, SelectionSet};
    fn count(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|s| match &s.node {
                Selection::Field(f) => {
                    usize::from(f.node.alias.is_some()) + count(&f.node.selection_set.node)
                }
                Selection::InlineFragment(i) => count(&i.node.selection_set.node),
                // Fragments are counted where they are defined.
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let doc = async_graphql::parser::parse_query(query).ok()?;
    let ops: usize = doc
        .operations
        .iter()
        .map(|(_, op)| count(&op.node.selection_set.node))
        .sum();
    let frags: usize = doc
        .fragments
        .values()
        .map(|f| count(&f.node.selection_set.node))
        .sum();
    Some(ops + frags)
}

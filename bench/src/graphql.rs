//! GraphQL over KV (issue 17): "a query resolving from KV, req/s and p99, against the
//! same data served by a KV GET". One node with a `[[kv]]` namespace of N JSON user
//! records and a `[[graphql]]` schema whose `Query.user(id)` resolves from the key
//! `user:{id}` of that namespace; wrk POSTs the query (a random id per request, in the
//! variables) to the GraphQL route, and GETs `/kv/user:<id>` (a random id) from the KV
//! route of the same node, in the same run, interleaved; 32 and 256 connections.
//!
//! - Every answer is checked by the wrk script itself (`response()`): 200, the record's
//!   `email` in the body, no `errors`; the bad ones are counted as errors. Before the
//!   rounds a sample of ids is read both ways (the GraphQL answer must be exactly
//!   `{"data":{"user":<the record>}}`), three of them with curl, and two controls: a
//!   missing id answers `{"data":{"user":null}}`, a query naming an unknown field
//!   answers `errors` (so the check does see one).
//! - "CPU µs/req" is the node process' CPU time during the run ÷ the run's requests.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

use crate::{
    kv::{Http, parse_wrk_totals},
    proxy::{
        Medians, Sample, Workdir, cpu_model, fmt_ms, free_port, interleaved, medians_of, parse_wrk,
        raise_nofile, run_client, tree_cpu_split,
    },
    report,
    rooms::spawn_node,
    sys,
};

const CLIENT_THREADS: usize = 2;
const SCHEMA: &str = "type Query {\n  user(id: ID!): User\n}\n\n\
                      type User {\n  id: ID\n  name: String\n  email: String\n}\n";
const QUERY: &str = "query User($id: ID!) { user(id: $id) { id name email } }";

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each measures both requests in every cell once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of unmeasured load before each run (same client, same request).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Connections, one cell each.
    #[arg(long, value_delimiter = ',', default_value = "32,256")]
    connections: Vec<usize>,
    /// User records in the namespace (all filled before measuring).
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Write the report into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

fn record(i: usize) -> Value {
    json!({
        "id": i.to_string(),
        "name": format!("User {i}"),
        "email": format!("user{i}@example.com"),
    })
}

fn query_body(id: &str) -> String {
    json!({"query": QUERY, "variables": {"id": id}}).to_string()
}

fn node_config(listen: SocketAddr, admin: SocketAddr, data: &Path, schema: &Path) -> String {
    // As the KV benchmark runs it (log level warn, XDP off, no SYN budget, threat off;
    // `[route.auth]` optional without role rules makes the KV route writable for the
    // fill), plus the GraphQL route; the [[graphql]] limits are the defaults.
    format!(
        "[node]\nid = \"bench\"\n\n[log]\nlevel = \"warn\"\n\n\
         [http]\nlisten = [\"{listen}\"]\n\n\
         [admin]\nlisten = \"{admin}\"\ntoken = \"{}\"\n\n\
         [xdp]\nmode = \"off\"\n\n[xdp.rate]\nsyn_per_sec = 0\n\n\
         [threat]\nenabled = false\n\n\
         [storage]\ndir = \"{}\"\nsync_window = \"1s\"\n\n\
         [[jwt_provider]]\nname = \"bench\"\nalgorithms = [\"HS256\"]\n\
         secret = \"a-benchmark-secret-of-at-least-32-bytes\"\n\n\
         [[kv]]\nname = \"users\"\n\n\
         [[graphql]]\nname = \"api\"\nschema = \"{}\"\n\
         [[graphql.resolver]]\nfield = \"Query.user\"\nkv = \"users\"\nkey = \"user:{{id}}\"\n\n\
         [[route]]\nhosts = [\"*\"]\npath_prefix = \"/graphql\"\nhandler = {{ graphql = \"api\" }}\n\n\
         [[route]]\nhosts = [\"*\"]\npath_prefix = \"/kv\"\nhandler = {{ kv = \"users\" }}\n\
         [route.auth]\nprovider = \"bench\"\nmode = \"optional\"\n",
        crate::rooms::ADMIN_TOKEN,
        data.display(),
        schema.display(),
    )
}

const COMMON_LUA: &str = r#"local users = USERS
local n = 0
local threads = {}
function setup(thread)
  n = n + 1
  thread:set("id", n)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0) * 7919)
  good = 0
  bad = 0
end
-- Every answer: 200, the record's email, no GraphQL errors.
function response(status, headers, body)
  if status == 200 and string.find(body, '"email"', 1, true) and not string.find(body, '"errors"', 1, true) then
    good = good + 1
  else
    bad = bad + 1
  end
end
function done(summary, latency, requests)
  local g, b = 0, 0
  for _, t in ipairs(threads) do
    g = g + t:get("good")
    b = b + t:get("bad")
  end
  io.write(string.format("checked: %d good, %d bad\n", g, b))
end
"#;

const KV_LUA: &str = r#"
function request()
  return wrk.format("GET", string.format("/kv/user:%d", math.random(0, users - 1)))
end
"#;

const GRAPHQL_LUA: &str = r#"
local headers = { ["Content-Type"] = "application/json" }
function request()
  local body = string.format('{"query":"QUERY","variables":{"id":"%d"}}', math.random(0, users - 1))
  return wrk.format("POST", "/graphql", headers, body)
end
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Req {
    Graphql,
    Kv,
}

impl Req {
    fn name(self) -> &'static str {
        match self {
            Req::Graphql => "GraphQL POST `user(id)` (from KV)",
            Req::Kv => "KV GET `/kv/user:<id>`",
        }
    }

    fn script(self) -> &'static str {
        match self {
            Req::Graphql => "graphql.lua",
            Req::Kv => "kv.lua",
        }
    }
}

/// What the runs' own checks saw, for the report.
#[derive(Default)]
struct Checks {
    good: [u64; 2],
    bad: [u64; 2],
    /// Bytes read per answer (headers included), smallest over the runs.
    bytes_per_answer: [f64; 2],
}

/// "checked: G good, B bad" from the script's done().
fn parse_checked(out: &str) -> Option<(u64, u64)> {
    let rest = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("checked:"))?;
    let mut it = rest.split(',').map(|p| {
        p.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
    });
    Some((it.next()??, it.next()??))
}

fn wrk(dir: &Path, req: Req, conns: usize, addr: SocketAddr, seconds: u64) -> Result<String> {
    let args = vec![
        format!("-t{CLIENT_THREADS}"),
        format!("-c{conns}"),
        format!("-d{seconds}s"),
        "--latency".into(),
        "-s".into(),
        dir.join(req.script()).display().to_string(),
        format!("http://{addr}/"),
    ];
    run_client(dir, "wrk", &args, Duration::from_secs(seconds + 30))
}

fn measure(
    dir: &Path,
    req: Req,
    conns: usize,
    addr: SocketAddr,
    pid: i32,
    args: &Args,
    checks: &mut Checks,
) -> Result<Sample> {
    if args.warmup > 0 {
        wrk(dir, req, conns, addr, args.warmup)?;
    }
    let (u0, s0) = tree_cpu_split(pid);
    let out = wrk(dir, req, conns, addr, args.seconds)?;
    let (u1, s1) = tree_cpu_split(pid);
    let mut s = parse_wrk(&out)?;
    let (requests, bytes) = parse_wrk_totals(&out).context("wrk's totals line")?;
    ensure!(requests > 0, "wrk made no request:\n{out}");
    let (good, bad) = parse_checked(&out).with_context(|| format!("no check counts:\n{out}"))?;
    let k = req as usize;
    checks.good[k] += good;
    checks.bad[k] += bad;
    let per = bytes / requests as f64;
    if checks.bytes_per_answer[k] == 0.0 || per < checks.bytes_per_answer[k] {
        checks.bytes_per_answer[k] = per;
    }
    s.errors += bad;
    s.cpu_us_per_req = ((u1 - u0) + (s1 - s0)) * 1e6 / requests as f64;
    s.system_us_per_req = (s1 - s0) * 1e6 / requests as f64;
    Ok(s)
}

/// PUTs every user record, from `threads` keep-alive connections.
fn fill(addr: SocketAddr, users: usize, threads: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<()> {
                    let mut c = Http::connect(addr)?;
                    for i in (t..users).step_by(threads) {
                        ensure!(Instant::now() < deadline, "filling took over 300 s");
                        let body = record(i).to_string();
                        let a = c.request_typed(
                            "PUT",
                            &format!("/kv/user:{i}"),
                            "application/json",
                            Some(body.as_bytes()),
                        )?;
                        ensure!(a.status == 201, "PUT user:{i} answered {}", a.status);
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panic"))))
    })
}

/// What was seen before the rounds.
struct Sampled {
    checked: usize,
    graphql_answer: String,
    kv_answer: String,
    curl_answers: Vec<String>,
    missing: String,
    unknown_field: String,
}

/// Every `step`-th user both ways: the KV GET answers the record, the GraphQL POST
/// `{"data":{"user":<the record>}}` without errors; a few with curl; the controls.
fn sample(addr: SocketAddr, users: usize, step: usize) -> Result<Sampled> {
    let mut c = Http::connect(addr)?;
    let mut checked = 0;
    let (mut graphql_answer, mut kv_answer) = (String::new(), String::new());
    for i in (0..users).step_by(step.max(1)) {
        let a = c.request_typed("GET", &format!("/kv/user:{i}"), "", None)?;
        let got: Value = serde_json::from_slice(&a.body).context("KV value is not JSON")?;
        ensure!(
            a.status == 200 && got == record(i),
            "GET /kv/user:{i} answered {} {got}",
            a.status
        );
        let body = query_body(&i.to_string());
        let a = c.request_typed(
            "POST",
            "/graphql",
            "application/json",
            Some(body.as_bytes()),
        )?;
        let v: Value = serde_json::from_slice(&a.body).context("GraphQL answer is not JSON")?;
        ensure!(
            a.status == 200 && v == json!({"data": {"user": record(i)}}),
            "GraphQL user({i}) answered {} {v}",
            a.status
        );
        if checked == 0 {
            graphql_answer = v.to_string();
            kv_answer = got.to_string();
        }
        checked += 1;
    }
    // With curl, as a client would.
    let mut curl_answers = Vec::new();
    for i in [0, users / 2, users - 1] {
        let out = sys::run(
            "curl",
            &[
                "-s",
                "--max-time",
                "10",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &query_body(&i.to_string()),
                &format!("http://{addr}/graphql"),
            ],
        )?;
        let v: Value = serde_json::from_str(&out).with_context(|| format!("curl: {out}"))?;
        ensure!(
            v.get("errors").is_none() && v["data"]["user"] == record(i),
            "curl user({i}): {out}"
        );
        curl_answers.push(out.trim().to_string());
    }
    // Controls: a missing id is null, an unknown field is an error.
    let body = query_body(&users.to_string());
    let a = c.request_typed(
        "POST",
        "/graphql",
        "application/json",
        Some(body.as_bytes()),
    )?;
    let missing = String::from_utf8_lossy(&a.body).trim().to_string();
    let v: Value = serde_json::from_str(&missing)?;
    ensure!(
        v == json!({"data": {"user": null}}),
        "a missing user answered {missing}"
    );
    let body = json!({"query": "{ user(id: \"1\") { id phone } }"}).to_string();
    let a = c.request_typed(
        "POST",
        "/graphql",
        "application/json",
        Some(body.as_bytes()),
    )?;
    let unknown_field = String::from_utf8_lossy(&a.body).trim().to_string();
    ensure!(
        unknown_field.contains("\"errors\""),
        "an unknown field answered {unknown_field}"
    );
    Ok(Sampled {
        checked,
        graphql_answer,
        kv_answer,
        curl_answers,
        missing,
        unknown_field,
    })
}

pub fn run(args: Args) -> Result<()> {
    raise_nofile();
    ensure!(args.users > 0, "--users must be above 0");
    let dir = Workdir(std::env::temp_dir().join(edge_tests::unique("edge-bench-graphql-")));
    std::fs::create_dir_all(&dir.0)?;
    let users = args.users.to_string();
    std::fs::write(
        dir.0.join(Req::Kv.script()),
        format!("{}{KV_LUA}", COMMON_LUA.replace("USERS", &users)),
    )?;
    // The query inside a Lua string inside JSON: its quotes stay as they are (none).
    ensure!(!QUERY.contains('"') && !QUERY.contains('\''));
    std::fs::write(
        dir.0.join(Req::Graphql.script()),
        format!(
            "{}{}",
            COMMON_LUA.replace("USERS", &users),
            GRAPHQL_LUA.replace("QUERY", QUERY)
        ),
    )?;
    let schema = dir.0.join("schema.graphql");
    std::fs::write(&schema, SCHEMA)?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let (http, admin) = (free_port()?, free_port()?);
    let data = dir.0.join("data");
    let node = spawn_node(
        &dir.0,
        "edge-node",
        &node_config(http, admin, &data, &schema),
        http,
        admin,
        ("/kv?limit=1", 200),
    )?;
    let pid = node.child.id() as i32;
    let t = Instant::now();
    fill(http, args.users, 16)?;
    eprintln!(
        "{} users filled in {:.1} s",
        args.users,
        t.elapsed().as_secs_f64()
    );
    let sampled = sample(http, args.users, 50)?;
    eprintln!(
        "{} users read back both ways; GraphQL: {}",
        sampled.checked, sampled.graphql_answer
    );

    let labels: Vec<String> = args
        .connections
        .iter()
        .map(|c| format!("{c} connections"))
        .collect();
    let reqs = [Req::Graphql, Req::Kv];
    let names: Vec<&str> = reqs.iter().map(|r| r.name()).collect();
    let mut checks = Checks::default();
    let mut procs = vec![node];
    let samples = interleaved(&mut procs, args.rounds, &labels, &names, |c, i| {
        measure(
            &dir.0,
            reqs[i],
            args.connections[c],
            http,
            pid,
            &args,
            &mut checks,
        )
        .map(Some)
    })?;
    drop(procs);
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let md = render(
        &args,
        &labels,
        &names,
        &samples,
        &checks,
        &sampled,
        (&load_before, &load_after),
    );
    println!("{md}");
    if args.write {
        report::write_section("graphql", &md)?;
    }
    Ok(())
}

fn loadavg(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn render(
    args: &Args,
    labels: &[String],
    names: &[&str],
    samples: &[Vec<Vec<Sample>>],
    checks: &Checks,
    sampled: &Sampled,
    load: (&str, &str),
) -> String {
    let edge_version = sys::version(edge_tests::edge_node_bin().to_str().unwrap_or(""), "-V");
    let commit = sys::run("git", &["rev-parse", "--short", "HEAD"])
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut md = String::from("## GraphQL over KV against the KV GET of the same record\n\n");
    md.push_str(&format!(
        "Command: `cargo xtask bench graphql` ({} rounds; each run {} s measured after a {} s \
         warm-up with the same client; the two requests interleaved, their order rotating \
         each round). Machine: {} CPUs ({}), kernel {}; load average {} at the start, {} at \
         the end. Versions: {edge_version} (commit {commit}); {}.\n\n",
        args.rounds,
        args.seconds,
        args.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        sys::kernel_release(),
        loadavg(load.0),
        loadavg(load.1),
        sys::version("wrk", "-v"),
    ));
    md.push_str(&format!(
        "Setup, all on 127.0.0.1 and sharing the cores with the load generator. One \
         edge-node (release build, `[log] level = \"warn\"`, XDP off, `[threat] enabled = \
         false`, `[storage] sync_window = \"1s\"`) with a `[[kv]]` namespace `users` \
         (default limits) holding {users} JSON records `user:0` … `user:{last}` like \
         `{kv}` (`Content-Type: application/json`), served two ways: a KV route \
         (`path_prefix = \"/kv\"`, `handler = {{ kv = \"users\" }}`) and a GraphQL route \
         (`path_prefix = \"/graphql\"`, `handler = {{ graphql = \"api\" }}`) whose \
         `[[graphql]]` (default limits: depth, complexity, aliases, resolver calls, \
         persisted queries on, introspection off) has the schema `type Query {{ user(id: \
         ID!): User }} type User {{ id: ID name: String email: String }}` and the resolver \
         `Query.user` → `kv = \"users\"`, `key = \"user:{{id}}\"`. Clients: `wrk \
         -t{CLIENT_THREADS} -cN -dS --latency -s script` (HTTP/1.1 keep-alive), a random \
         id per request: `POST /graphql` with `{{\"query\":\"{QUERY}\",\"variables\":\
         {{\"id\":\"<id>\"}}}}` (`Content-Type: application/json`), or `GET /kv/user:<id>`. \
         The script checks every answer (200, the record's `email` in the body, no \
         `errors`); \"errors\" sums over the rounds the answers that failed that check, \
         non-2xx answers and socket errors. \"CPU µs/req\" is the node process' CPU time \
         (user + system, in brackets the system part) during the run ÷ the run's \
         requests. Cells are medians over the rounds.\n\n",
        users = args.users,
        last = args.users - 1,
        kv = sampled.kv_answer,
    ));
    let mut summary = String::new();
    for (c, label) in labels.iter().enumerate() {
        let m: Vec<Option<Medians>> = samples[c].iter().map(|v| medians_of(v)).collect();
        md.push_str(&format!("### {label}\n\n"));
        md.push_str(
            "| request | req/s | p50 | p99 | CPU µs/req (system) | errors | req/s ÷ KV GET |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        let kv = m[1];
        for (i, (name, mm)) in names.iter().zip(&m).enumerate() {
            let Some(x) = mm else {
                md.push_str(&format!("| {name} | n/a | | | | | |\n"));
                continue;
            };
            let ratio = match kv {
                Some(k) if i != 1 => format!("{:.2}×", x.rps / k.rps),
                _ => String::new(),
            };
            md.push_str(&format!(
                "| {name} | {:.0} | {} | {} | {:.1} ({:.1}) | {} | {ratio} |\n",
                x.rps,
                fmt_ms(x.p50_ms),
                fmt_ms(x.p99_ms),
                x.cpu_us_per_req,
                x.system_us_per_req,
                x.errors
            ));
        }
        md.push('\n');
        if let (Some(g), Some(k)) = (m[0], kv) {
            summary.push_str(&format!(
                "- {label}: GraphQL ÷ KV GET **{:.2}×** req/s; p99 {} vs {}; CPU {:.1} vs {:.1} \
                 µs/req (the query costs {:.1} µs more, {:.2}× the GET)\n",
                g.rps / k.rps,
                fmt_ms(g.p99_ms),
                fmt_ms(k.p99_ms),
                g.cpu_us_per_req,
                k.cpu_us_per_req,
                g.cpu_us_per_req - k.cpu_us_per_req,
                g.cpu_us_per_req / k.cpu_us_per_req,
            ));
        }
    }
    if !summary.is_empty() {
        md.push_str(&format!("### GraphQL against KV GET\n\n{summary}\n"));
    }
    md.push_str("### What was checked\n\n");
    md.push_str(&format!(
        "- The fill answered 201 for all {} records; every 50th ({} ids) read back both \
         ways before the rounds: the KV GET answered 200 with the record, the GraphQL POST \
         exactly `{}` (for `user:0`), without `errors`.\n\
         - With curl (`curl -s -X POST -H 'Content-Type: application/json' --data-binary \
         … /graphql`), ids 0, {}, {}: {}.\n\
         - Controls: a missing id answered `{}`; a query naming a field the schema lacks \
         answered `{}`.\n",
        args.users,
        sampled.checked,
        sampled.graphql_answer,
        args.users / 2,
        args.users - 1,
        sampled
            .curl_answers
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", "),
        sampled.missing,
        sampled.unknown_field,
    ));
    for (i, name) in names.iter().enumerate() {
        md.push_str(&format!(
            "- {name}: the script checked {} answers good and {} bad over all runs \
             (warm-ups not counted); at least {:.0} bytes read per answer (headers included).\n",
            checks.good[i], checks.bad[i], checks.bytes_per_answer[i],
        ));
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_line() {
        let out = "Requests/sec: 1.0\nchecked: 12345 good, 2 bad\n";
        assert_eq!(parse_checked(out), Some((12345, 2)));
        assert_eq!(parse_checked("nothing"), None);
    }

    #[test]
    fn query_body_is_json() {
        let v: Value = serde_json::from_str(&query_body("7")).unwrap();
        assert_eq!(v["variables"]["id"], "7");
        assert_eq!(v["query"], QUERY);
    }
}

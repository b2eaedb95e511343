//! The node's KV through `wasi:keyvalue` (0.2.0-draft), from an HTTP handler. The
//! bucket is `?bucket=<name>` (default `users`); the path says what to do:
//!
//! - `GET /get/<key>`: 200 and the value, or 404 `absent`;
//! - `PUT /set/<key>` (the body is the value), `PUT /fill/<key>?size=<n>` (n bytes of
//!   `x`), `DELETE /del/<key>`: 204;
//! - `GET /exists/<key>`: `true` / `false`;
//! - `POST /incr/<key>?by=<n>`: the new number;
//! - `GET /list`: every key, one a line, paging through the host's cursors (the pages
//!   in `x-pages`); `GET /cursor?c=<n>`: one page from a cursor of the guest's making;
//! - `GET /spin?n=<n>`: `exists` n times, or until an error: `<count> <why it stopped>`;
//! - `POST /set-many` (body: `key=value` lines), `GET /get-many?keys=a,b` (`key=value`
//!   or `key absent` lines), `POST /delete-many?keys=a,b`: 204.
//!
//! A `wasi:keyvalue` error is the answer: 404 `no-such-store`, 403 `access-denied`,
//! 500 `other: <what the host said>`, each as `kv error: …`.

use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

mod bindings {
    wit_bindgen::generate!({
        path: "../../../edge-node/wit/keyvalue",
        world: "wasi:keyvalue/imports",
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

struct Kv;

type Answer = Result<(u16, Vec<(String, String)>, Vec<u8>), store::Error>;

fn ok(status: u16, body: impl Into<Vec<u8>>) -> Answer {
    Ok((status, Vec::new(), body.into()))
}

fn serve(req: &IncomingRequest) -> Answer {
    let bucket_name = guest::query(req, "bucket").unwrap_or_else(|| "users".into());
    let path = guest::path(req);
    let (op, key) = match path.trim_start_matches('/').split_once('/') {
        Some((op, key)) => (op.to_string(), key.to_string()),
        None => (path.trim_start_matches('/').to_string(), String::new()),
    };
    let method = req.method();
    let bucket = store::open(&bucket_name)?;
    match (&method, op.as_str()) {
        (Method::Get, "get") => match bucket.get(&key)? {
            Some(v) => ok(200, v),
            None => ok(404, "absent\n"),
        },
        (Method::Put, "set") => {
            bucket.set(&key, &guest::read_body(req))?;
            ok(204, "")
        }
        (Method::Put, "fill") => {
            let n: usize = guest::query(req, "size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            bucket.set(&key, &vec![b'x'; n])?;
            ok(204, "")
        }
        (Method::Delete, "del") => {
            bucket.delete(&key)?;
            ok(204, "")
        }
        (Method::Get, "exists") => ok(200, bucket.exists(&key)?.to_string()),
        (Method::Post, "incr") => {
            let by: u64 = guest::query(req, "by")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            ok(200, atomics::increment(&bucket, &key, by)?.to_string())
        }
        (Method::Get, "list") => {
            let (mut keys, mut pages, mut cursor) = (Vec::new(), 0, None);
            loop {
                let page = bucket.list_keys(cursor)?;
                pages += 1;
                keys.extend(page.keys);
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let body: String = keys.iter().map(|k| format!("{k}\n")).collect();
            Ok((
                200,
                vec![("x-pages".into(), pages.to_string())],
                body.into(),
            ))
        }
        (Method::Get, "cursor") => {
            let c = guest::query(req, "c").and_then(|s| s.parse().ok());
            let page = bucket.list_keys(c)?;
            ok(200, page.keys.join("\n"))
        }
        (Method::Get, "spin") => {
            // Asks until the host says no (or n times): how many it answered, and why
            // it stopped.
            let n: u64 = guest::query(req, "n")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let mut done = 0;
            let mut why = String::from("done");
            while done < n {
                match bucket.exists("spin") {
                    Ok(_) => done += 1,
                    Err(e) => {
                        why = format!("{e:?}");
                        break;
                    }
                }
            }
            ok(200, format!("{done} {why}"))
        }
        (Method::Post, "set-many") => {
            let body = String::from_utf8(guest::read_body(req)).unwrap_or_default();
            let pairs: Vec<(String, Vec<u8>)> = body
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            batch::set_many(&bucket, &pairs)?;
            ok(204, "")
        }
        (Method::Get, "get-many") => {
            let keys = query_keys(req);
            let got = batch::get_many(&bucket, &keys)?;
            let mut body = String::new();
            for (k, v) in keys.iter().zip(got) {
                match v {
                    Some((_, v)) => {
                        body.push_str(&format!("{k}={}\n", String::from_utf8_lossy(&v)))
                    }
                    None => body.push_str(&format!("{k} absent\n")),
                }
            }
            ok(200, body)
        }
        (Method::Post, "delete-many") => {
            batch::delete_many(&bucket, &query_keys(req))?;
            ok(204, "")
        }
        _ => ok(400, "unknown operation\n"),
    }
}

fn query_keys(req: &IncomingRequest) -> Vec<String> {
    guest::query(req, "keys")
        .unwrap_or_default()
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect()
}

impl wasi::exports::http::incoming_handler::Guest for Kv {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        match serve(&req) {
            Ok((status, headers, body)) => {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .chain([("content-type", "text/plain")])
                    .collect();
                guest::respond(out, status, &headers, &body);
            }
            Err(e) => {
                let (status, what) = match e {
                    store::Error::NoSuchStore => (404, "no-such-store".to_string()),
                    store::Error::AccessDenied => (403, "access-denied".to_string()),
                    store::Error::Other(why) => (500, format!("other: {why}")),
                };
                guest::respond(
                    out,
                    status,
                    &[("content-type", "text/plain")],
                    format!("kv error: {what}\n").as_bytes(),
                );
            }
        }
    }
}

wasi::http::proxy::export!(Kv);

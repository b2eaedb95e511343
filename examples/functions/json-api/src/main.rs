//! A JSON API answered from two upstreams at once.
//!
//! `GET /profile/<id>` asks the `users` upstream for `/users/<id>` and the `orders`
//! upstream for `/orders?user=<id>` (both at the same time) and answers
//! `{"user": ..., "orders": ...}`. Grant both upstreams to the function (`upstreams =
//! ["users", "orders"]`); other names can be set with the `USERS` and `ORDERS` env.

use serde_json::{Value, json};
use wstd::http::{Body, Client, Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, Error> {
    let Some(id) = req
        .uri()
        .path()
        .strip_prefix("/profile/")
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
    else {
        return answer(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    };
    let users = std::env::var("USERS").unwrap_or_else(|_| "users".into());
    let orders = std::env::var("ORDERS").unwrap_or_else(|_| "orders".into());
    let (user, orders) = futures_lite::future::zip(
        fetch(&format!("http://{users}/users/{id}")),
        fetch(&format!("http://{orders}/orders?user={id}")),
    )
    .await;
    match (user, orders) {
        (Ok(Some(user)), Ok(Some(orders))) => {
            answer(StatusCode::OK, &json!({"user": user, "orders": orders}))
        }
        (Ok(None), _) => answer(StatusCode::NOT_FOUND, &json!({"error": "no_such_user"})),
        (user, orders) => {
            for e in [user.err(), orders.err()].into_iter().flatten() {
                eprintln!("upstream call failed: {e:#}");
            }
            answer(
                StatusCode::BAD_GATEWAY,
                &json!({"error": "upstream_failed"}),
            )
        }
    }
}

/// GET `url` as JSON: `None` for a 404.
async fn fetch(url: &str) -> Result<Option<Value>, Error> {
    let req = Request::get(url)
        .header("accept", "application/json")
        .body(Body::empty())?;
    let mut resp = Client::new().send(req).await?;
    match resp.status() {
        StatusCode::NOT_FOUND => Ok(None),
        s if s.is_success() => Ok(Some(resp.body_mut().json::<Value>().await?)),
        s => Err(Error::msg(format!("{url}: status {s}"))),
    }
}

fn answer(status: StatusCode, value: &Value) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from_json(value)?)?)
}

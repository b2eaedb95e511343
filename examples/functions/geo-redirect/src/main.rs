//! Sends each visitor to the site of their country.
//!
//! The country comes from a request header: `X-Geo-Country` (set by the node or a
//! load balancer in front of it) or `CF-IPCountry` (Cloudflare). Configure, as the
//! function's `env`:
//! - `REDIRECTS = "DE=https://de.example.com,FR=https://fr.example.com"`
//! - `DEFAULT_REDIRECT = "https://www.example.com"` (optional: else 404)
//!
//! The path and query are kept: `/shop?x=1` from Germany goes to
//! `https://de.example.com/shop?x=1`.

use wstd::http::{Body, Error, Request, Response, StatusCode};

const COUNTRY_HEADERS: [&str; 2] = ["x-geo-country", "cf-ipcountry"];

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, Error> {
    let country = COUNTRY_HEADERS
        .iter()
        .find_map(|h| req.headers().get(*h))
        .and_then(|v| v.to_str().ok())
        .map(|c| c.trim().to_ascii_uppercase());
    let target = country
        .as_deref()
        .and_then(site_for)
        .or_else(|| std::env::var("DEFAULT_REDIRECT").ok());
    let Some(base) = target else {
        let who = country.unwrap_or_else(|| "unknown".into());
        return Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("content-type", "text/plain")
            .body(format!("no site for country {who}\n").into())?);
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("{}{path}", base.trim_end_matches('/'));
    Ok(Response::builder()
        .status(StatusCode::FOUND)
        .header("location", location)
        // The answer depends on these headers: caches must keep one per country.
        .header("vary", COUNTRY_HEADERS.join(", "))
        .body(Body::empty())?)
}

/// The site configured for `country` in REDIRECTS.
fn site_for(country: &str) -> Option<String> {
    let table = std::env::var("REDIRECTS").ok()?;
    table
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(c, _)| c.trim().eq_ignore_ascii_case(country))
        .map(|(_, site)| site.trim().to_string())
}

//! The request phases, in the order the pipeline runs them. Each documents what it does
//! when it has nothing to do.

pub mod acme;
pub mod auth;
pub mod cache;
pub mod challenge;
pub mod compress;
pub mod early;
pub mod filter;
pub mod forwarding;
pub mod geo;
pub mod infer;
pub mod personalize;
pub mod rate_limit;
pub mod route;
pub mod upgrade;

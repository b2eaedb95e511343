//! What every phase shares: the request's context ([`RequestCtx`]), the phase and handler
//! interface ([`Phase`], [`Handler`]) and the edge's timings (Server-Timing). Phases and
//! handlers depend on this module; the pipeline that runs them sits above both.

mod ctx;
mod phase;
pub mod timing;
pub mod trace;

pub use ctx::{EarlyData, PhaseState, RequestCtx, RouteInfo};
pub use phase::{Flow, Handler, HandlerFuture, Phase, PhaseFuture, Reply};

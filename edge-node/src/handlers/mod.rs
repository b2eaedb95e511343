//! What answers a route's requests once the phases let them through (`handler = …` on
//! a route): the proxy (cache and upstream pools), the demo page, and functions.

pub mod demo;
pub mod function;
pub mod proxy;

pub use demo::DemoHandler;
pub use function::FunctionHandler;
pub use proxy::ProxyHandler;

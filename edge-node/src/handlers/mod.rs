//! What answers a route's requests once the phases let them through (`handler = …` on
//! a route): the proxy (cache and upstream pools), the demo page, functions and KV
//! namespaces.

pub mod demo;
pub mod function;
pub mod kv;
pub mod proxy;

pub use demo::DemoHandler;
pub use function::FunctionHandler;
pub use kv::KvHandler;
pub use proxy::ProxyHandler;

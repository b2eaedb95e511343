//! What answers a route's requests once the phases let them through (`handler = …` on
//! a route): the proxy (cache and upstream pools), the demo page, functions, KV
//! namespaces, rooms and GraphQL.

pub mod demo;
pub mod function;
pub mod graphql;
pub mod kv;
pub mod proxy;
pub mod rooms;

pub use demo::DemoHandler;
pub use function::FunctionHandler;
pub use graphql::GraphqlHandler;
pub use kv::KvHandler;
pub use proxy::ProxyHandler;
pub use rooms::RoomsHandler;

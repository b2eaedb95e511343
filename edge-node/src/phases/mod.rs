//! The request phases, in the order the pipeline runs them. Each documents what it does
//! when it has nothing to do.

pub mod early;
pub mod geo;
pub mod route;
pub mod upgrade;

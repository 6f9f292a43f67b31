//! The Pingora side: a thin `ProxyHttp` ([`gateway`]) whose decisions are the pure functions of
//! [`route`] (which route, may it pass) and [`headers`] (what the upstream sees).

pub mod drain;
pub mod gateway;
pub mod headers;
pub mod limit;
pub mod route;

pub use gateway::{Gateway, GatewayState};

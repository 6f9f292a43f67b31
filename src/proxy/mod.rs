//! The Pingora side: a thin `ProxyHttp` ([`gateway`]) whose decisions are the pure functions of
//! [`route`] (which route, may it pass) and [`headers`] (what the upstream sees), running under
//! one [`snapshot`] of the configuration per request.

pub mod access;
pub mod batch;
pub mod drain;
pub mod fast;
pub mod gateway;
pub mod headers;
pub mod keepalive;
pub mod limit;
pub mod pool;
pub mod request_id;
pub mod route;
pub mod snapshot;

pub use gateway::Gateway;
pub use snapshot::{Live, Snapshot};

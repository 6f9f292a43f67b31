//! One version of the configuration file, as the proxy uses it: the route table, the gateway's
//! endpoint paths, the identity headers and limits, and the services this version selected (the
//! auth service, rate-limit counters). Immutable once built; published through [`Live`] so that
//! a reload swaps it whole. Each request loads it once and keeps it to the end, so a reload never
//! changes the rules under a request in flight. The services are shared with the next snapshot
//! whenever the sections they follow did not change (see `app::build_snapshot`).

use super::headers::IdentityHeaders;
use super::limit::PerMinute;
use super::route::RouteTable;
use crate::auth::endpoints::Endpoint;
use crate::auth::{Apps, Login};
use crate::config::Config;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::SystemTime;

pub struct Snapshot {
    /// 1 at start-up, one more per successful reload.
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// The configuration it was built from.
    pub config: Arc<Config>,
    pub routes: RouteTable,
    /// The gateway's own endpoints, by path.
    endpoints: Vec<(String, Endpoint)>,
    pub identity: IdentityHeaders,
    /// The mini programs and their auth services (the first is the default).
    pub apps: Apps,
    pub login_limit: Arc<PerMinute>,
    pub phone_limit: Arc<PerMinute>,
}

/// The snapshot in force; `load_full()` once per request.
pub type Live = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    pub fn new(
        generation: u64,
        config: Arc<Config>,
        routes: RouteTable,
        apps: Apps,
        login_limit: Arc<PerMinute>,
        phone_limit: Arc<PerMinute>,
    ) -> Self {
        let a = &config.auth;
        let endpoints = [
            (&a.login_path, Endpoint::Login),
            (&a.verify_path, Endpoint::Verify),
            (&a.refresh_path, Endpoint::Refresh),
            (&a.logout_path, Endpoint::Logout),
            (&a.phone_path, Endpoint::Phone),
            (&a.decrypt_path, Endpoint::Decrypt),
            (&a.jwks_path, Endpoint::Jwks),
        ]
        .into_iter()
        .map(|(path, e)| (path.clone(), e))
        .collect();
        let identity = IdentityHeaders::new(
            a.identity_header.clone(),
            a.unionid_header.clone(),
            a.phone_header.clone(),
            a.appid_header.clone(),
        );
        Snapshot {
            generation,
            loaded_at: SystemTime::now(),
            config,
            routes,
            endpoints,
            identity,
            apps,
            login_limit,
            phone_limit,
        }
    }

    /// The first (default) app's auth service: what does not depend on the caller's app (the
    /// session store's health, for one).
    pub fn login(&self) -> &Arc<Login> {
        self.apps.first()
    }

    /// Which gateway endpoint a path names, if any.
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        self.endpoints
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, e)| *e)
    }

    /// The per-client limit of an endpoint that spends WeChat quota.
    pub fn limit_of(&self, endpoint: Endpoint) -> Option<&PerMinute> {
        match endpoint {
            Endpoint::Login => Some(&self.login_limit),
            Endpoint::Phone => Some(&self.phone_limit),
            _ => None,
        }
    }
}

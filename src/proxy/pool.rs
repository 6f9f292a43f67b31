//! A route's upstream pool: Pingora's load balancer (round robin, or Ketama consistent hashing
//! for `openid_hash`) over the route's upstreams, with active health checks (Pingora's
//! `HttpHealthCheck` / `TcpHealthCheck`, run by the `upstream health` background service),
//! passive marking (a connect failure takes an upstream out for [`PASSIVE_DOWN`]), and host
//! names resolved again every `server.resolve_interval` through the balancer's service discovery.
//!
//! What must outlive a reload lives in a [`Lineage`], carried from one snapshot's route to the
//! next while the route's upstreams and checks are unchanged: Pingora's health registry (the
//! active health of every address), each address's [`Upstream`] state (passive marks, requests
//! in flight) and the check schedule. A reload that changes only other keys keeps all of it; one
//! that adds an upstream keeps the health of the others.

use crate::config::{Balance, HealthCheckConfig, HostPort, RouteConfig};
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, HealthRegistry, LoadBalancer};
use pingora::prelude::*;
use pingora::upstreams::peer::{BasicPeer, HttpPeer};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a connect failure keeps an upstream out of rotation (without active checks, the
/// only way back; with them, a check may also take it out for longer).
pub const PASSIVE_DOWN: Duration = Duration::from_secs(5);

/// How many steps a selection may take around the ring (Ketama) or the list before it gives up.
const MAX_STEPS: usize = 256;

/// One upstream address: which configured upstream it came from, and what the gateway has seen
/// of it. Carried in the Pingora `Backend`'s extensions.
pub struct Upstream {
    pub addr: SocketAddr,
    /// The configured upstream (`host:port`, as written) this address was resolved from.
    pub origin: String,
    origin_index: usize,
    /// The TLS server name, for `https://` upstreams.
    pub sni: Option<String>,
    /// Unix ms until which a connect failure keeps it out.
    down_until_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Upstream {
    fn up_at(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Relaxed) <= now_ms
    }

    /// Requests in flight to it from this instance.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Whether a connect failure keeps it out now.
    pub fn passively_down(&self) -> bool {
        !self.up_at(now_ms())
    }
}

/// A request in flight to an upstream (counted for `least_requests` and the status page).
pub struct InFlightUpstream(Arc<Upstream>);

impl InFlightUpstream {
    fn enter(upstream: Arc<Upstream>) -> Self {
        upstream.in_flight.fetch_add(1, Relaxed);
        InFlightUpstream(upstream)
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlightUpstream {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Milliseconds on a monotonic clock (from the first call), for passive marks.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

fn state_of(backend: &Backend) -> Option<&Arc<Upstream>> {
    backend.ext.get::<Arc<Upstream>>()
}

/// What a route's pool keeps across reloads, as long as the route's upstream keys are unchanged.
pub struct Lineage {
    /// The keys this lineage was made for: a route whose keys differ starts a new one.
    key: LineageKey,
    registry: Arc<HealthRegistry>,
    /// Every address's state, by address (shared by each snapshot's discovery).
    upstreams: Mutex<HashMap<SocketAddr, Arc<Upstream>>>,
    /// When the next health-check pass and the next resolution are due.
    next_check: Mutex<Instant>,
    next_resolve: Mutex<Instant>,
    busy_checking: AtomicBool,
    busy_resolving: AtomicBool,
    resolve_interval: Duration,
}

#[derive(PartialEq, Eq)]
struct LineageKey {
    route: String,
    health_check: Option<HealthCheckConfig>,
    upstreams: Vec<HostPort>,
    upstream_host: Option<String>,
    upstream_ca: Option<std::path::PathBuf>,
}

impl LineageKey {
    fn of(c: &RouteConfig) -> Self {
        LineageKey {
            route: c.name.clone(),
            health_check: c.health_check.clone(),
            upstreams: c.upstreams.clone(),
            upstream_host: c.upstream_host.clone(),
            upstream_ca: c.upstream_ca.clone(),
        }
    }
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Hash(LoadBalancer<Consistent>),
    /// Round robin's backends, chosen by fewest in flight.
    Least(LoadBalancer<RoundRobin>, AtomicUsize),
}

/// A route's upstreams and how one is chosen.
pub struct Pool {
    balancer: Balancer,
    lineage: Arc<Lineage>,
    health_check: Option<HealthCheckConfig>,
    /// Some upstream is a host name (to resolve again from time to time).
    has_names: bool,
}

impl Pool {
    /// The pool for `config`, whose upstreams resolved to `resolved` (one list per upstream).
    /// The previous snapshot's pool for the same route hands over its lineage when the route's
    /// upstream keys are unchanged; with other upstreams, the health of the addresses both have is
    /// still kept (Pingora's registry is keyed by address).
    pub fn new(
        config: &RouteConfig,
        resolved: &[Vec<SocketAddr>],
        roots: Option<Arc<pingora::protocols::tls::CaType>>,
        previous: Option<&Pool>,
        resolve_interval: Duration,
    ) -> Result<Self, String> {
        let key = LineageKey::of(config);
        let lineage = match previous {
            Some(p) if p.lineage.key == key => p.lineage.clone(),
            _ => {
                let same_checks = previous.filter(|p| {
                    let k = &p.lineage.key;
                    k.route == key.route
                        && k.health_check == key.health_check
                        && k.upstream_host == key.upstream_host
                        && k.upstream_ca == key.upstream_ca
                });
                let registry = match same_checks {
                    Some(p) => p.lineage.registry.clone(),
                    None => {
                        let registry = Arc::new(HealthRegistry::new());
                        if let Some(hc) = &config.health_check {
                            registry.set_health_check(Box::new(Probe::new(config, hc, roots)));
                        }
                        registry
                    }
                };
                let upstreams = same_checks
                    .map(|p| lock(&p.lineage.upstreams).clone())
                    .unwrap_or_default();
                let now = Instant::now();
                Arc::new(Lineage {
                    key,
                    registry,
                    upstreams: Mutex::new(upstreams),
                    next_check: Mutex::new(now),
                    next_resolve: Mutex::new(now + resolve_interval),
                    busy_checking: AtomicBool::new(false),
                    busy_resolving: AtomicBool::new(false),
                    resolve_interval,
                })
            }
        };
        let discovery = Resolver {
            upstreams: config.upstreams.clone(),
            lineage: lineage.clone(),
            seed: Mutex::new(Some(resolved.to_vec())),
            last: Mutex::new(resolved.to_vec()),
        };
        let backends =
            Backends::new_with_health_registry(Box::new(discovery), lineage.registry.clone());
        let balancer = match config.lb {
            Balance::RoundRobin => Balancer::RoundRobin(LoadBalancer::from_backends(backends)),
            Balance::OpenidHash => Balancer::Hash(LoadBalancer::from_backends(backends)),
            Balance::LeastRequests => {
                Balancer::Least(LoadBalancer::from_backends(backends), AtomicUsize::new(0))
            }
        };
        let pool = Pool {
            balancer,
            lineage,
            health_check: config.health_check.clone(),
            has_names: config
                .upstreams
                .iter()
                .any(|hp| hp.host.parse::<IpAddr>().is_err()),
        };
        // The first discovery returns the addresses resolved beforehand: it does not wait.
        use futures::FutureExt;
        pool.update()
            .now_or_never()
            .ok_or_else(|| format!("route {:?}: upstreams not ready", config.name))?
            .map_err(|e| format!("route {:?}: {e}", config.name))?;
        Ok(pool)
    }

    async fn update(&self) -> Result<()> {
        match &self.balancer {
            Balancer::RoundRobin(lb) | Balancer::Least(lb, _) => lb.update().await,
            Balancer::Hash(lb) => lb.update().await,
        }
    }

    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) | Balancer::Least(lb, _) => lb.backends(),
            Balancer::Hash(lb) => lb.backends(),
        }
    }

    /// The upstream for a request whose balancing key is `key` (ignored unless hashing), skipping
    /// unhealthy ones, ones a connect failure took out, and the `tried` ones. `None`: none is up.
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<InFlightUpstream> {
        let now = now_ms();
        let accept = |b: &Backend, healthy: bool| {
            healthy
                && state_of(b).is_some_and(|s| s.up_at(now))
                && !tried.iter().any(|t| b.addr.as_inet() == Some(t))
        };
        // One upstream, the common case, leaves nothing to choose: Pingora's selection would
        // still hash it into a set and clone it, its extensions included (four allocations per
        // request).
        let backends = self.backends();
        let all = backends.get_backend();
        if all.len() == 1 {
            let only = all.iter().next()?;
            if !accept(only, self.healthy(backends, only)) {
                return None;
            }
            return state_of(only).cloned().map(InFlightUpstream::enter);
        }
        let chosen = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_STEPS, accept),
            Balancer::Hash(lb) => lb.select_with(key, MAX_STEPS, accept),
            Balancer::Least(_, turn) => {
                // Ties go round robin: the scan starts one further each time.
                let start = turn.fetch_add(1, Relaxed);
                let n = all.len().max(1);
                all.iter()
                    .enumerate()
                    .filter(|(_, b)| accept(b, self.healthy(backends, b)))
                    .min_by_key(|(i, b)| {
                        let load = state_of(b).map_or(usize::MAX, |s| s.in_flight());
                        (load, (i + n - start % n) % n)
                    })
                    .map(|(_, b)| b.clone())
            }
        }?;
        state_of(&chosen).cloned().map(InFlightUpstream::enter)
    }

    /// Whether active checks count `backend` healthy: always without them (nothing runs a check
    /// or disables a backend then), which spares each request hashing it into Pingora's
    /// readiness map (~670 instructions).
    fn healthy(&self, backends: &Backends, backend: &Backend) -> bool {
        self.health_check.is_none() || backends.ready(backend)
    }

    /// Whether some upstream besides the `tried` ones is in rotation (worth a retry).
    pub fn any_other_up(&self, tried: &[SocketAddr]) -> bool {
        let now = now_ms();
        let backends = self.backends();
        backends.get_backend().iter().any(|b| {
            self.healthy(backends, b)
                && state_of(b).is_some_and(|s| s.up_at(now) && !tried.contains(&s.addr))
        })
    }

    /// A connect to `addr` failed: out of rotation for [`PASSIVE_DOWN`].
    pub fn mark_failed(&self, addr: &SocketAddr) {
        if let Some(u) = lock(&self.lineage.upstreams).get(addr) {
            let until = now_ms() + PASSIVE_DOWN.as_millis() as u64;
            u.down_until_ms.store(until, Relaxed);
        }
    }

    /// Every current address with its state and whether active checks count it healthy
    /// (always, without them).
    pub fn members(&self) -> Vec<(Arc<Upstream>, bool)> {
        let backends = self.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|b| Some((state_of(b)?.clone(), self.healthy(backends, b))))
            .collect()
    }

    /// Run what is due now (a health-check pass, a resolution), one of each at a time per
    /// lineage. Called by the `upstream health` background service.
    pub fn run_due(self: Arc<Self>, now: Instant) {
        let lineage = &self.lineage;
        let checks_due = self.health_check.as_ref().filter(|_| {
            *lock(&lineage.next_check) <= now && !lineage.busy_checking.swap(true, Relaxed)
        });
        if let Some(hc) = checks_due {
            let pool = self.clone();
            let interval = hc.interval;
            tokio::spawn(async move {
                pool.lineage.registry.run_health_check(true).await;
                *lock(&pool.lineage.next_check) = Instant::now() + interval;
                pool.lineage.busy_checking.store(false, Relaxed);
            });
        }
        let resolve_due = self.has_names
            && *lock(&lineage.next_resolve) <= now
            && !lineage.busy_resolving.swap(true, Relaxed);
        if resolve_due {
            *lock(&lineage.next_resolve) = now + lineage.resolve_interval;
            let pool = self.clone();
            tokio::spawn(async move {
                if let Err(e) = pool.update().await {
                    tracing::warn!("re-resolving upstreams failed: {e}");
                }
                pool.lineage.busy_resolving.store(false, Relaxed);
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Service discovery for a route: the configured upstreams, host names resolved again on each
/// call (the first call returns the addresses resolved at load). A name that fails to resolve
/// keeps its previous addresses: a DNS outage does not empty the pool.
struct Resolver {
    upstreams: Vec<HostPort>,
    lineage: Arc<Lineage>,
    seed: Mutex<Option<Vec<Vec<SocketAddr>>>>,
    last: Mutex<Vec<Vec<SocketAddr>>>,
}

#[async_trait]
impl ServiceDiscovery for Resolver {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let seeded = lock(&self.seed).take();
        let resolved = match seeded {
            Some(addrs) => addrs,
            None => {
                let previous = lock(&self.last).clone();
                let mut fresh = Vec::with_capacity(self.upstreams.len());
                for (hp, before) in self.upstreams.iter().zip(previous) {
                    if hp.host.parse::<IpAddr>().is_ok() {
                        fresh.push(before);
                        continue;
                    }
                    let found = tokio::net::lookup_host((hp.host.as_str(), hp.port)).await;
                    match found.map(|it| it.collect::<Vec<_>>()) {
                        Ok(list) if !list.is_empty() => {
                            if list != before {
                                tracing::info!(
                                    "upstream {hp} now resolves to {}",
                                    list.iter()
                                        .map(ToString::to_string)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                );
                            }
                            fresh.push(list)
                        }
                        other => {
                            let why = other.err().map_or("no address".into(), |e| e.to_string());
                            tracing::warn!(
                                "cannot resolve upstream {hp} ({why}): keeping its addresses"
                            );
                            fresh.push(before);
                        }
                    }
                }
                fresh
            }
        };
        *lock(&self.last) = resolved.clone();
        let mut states = lock(&self.lineage.upstreams);
        let mut backends = BTreeSet::new();
        let mut seen = Vec::new();
        for (index, (hp, addrs)) in self.upstreams.iter().zip(&resolved).enumerate() {
            for addr in addrs {
                if seen.contains(addr) {
                    continue;
                }
                seen.push(*addr);
                let state = states
                    .entry(*addr)
                    .or_insert_with(|| {
                        Arc::new(Upstream {
                            addr: *addr,
                            origin: hp.to_string(),
                            origin_index: index,
                            sni: hp.tls.then(|| hp.host.clone()),
                            down_until_ms: AtomicU64::new(0),
                            in_flight: AtomicUsize::new(0),
                        })
                    })
                    .clone();
                let mut backend = Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(*addr),
                    weight: 1,
                    ext: Default::default(),
                };
                backend.ext.insert(state);
                backends.insert(backend);
            }
        }
        states.retain(|addr, _| seen.contains(addr));
        Ok((backends, HashMap::new()))
    }
}

/// The active check of one route: per configured upstream, Pingora's HTTP check (`GET path`,
/// any 2xx passes) or TCP connect check, with that upstream's TLS name and trust roots.
struct Probe {
    route: String,
    per_origin: Vec<Box<dyn HealthCheck + Send + Sync>>,
    unhealthy_after: usize,
    healthy_after: usize,
}

impl Probe {
    fn new(
        c: &RouteConfig,
        hc: &HealthCheckConfig,
        roots: Option<Arc<pingora::protocols::tls::CaType>>,
    ) -> Self {
        let per_origin = c
            .upstreams
            .iter()
            .map(|hp| -> Box<dyn HealthCheck + Send + Sync> {
                let sni = if hp.tls {
                    hp.host.clone()
                } else {
                    String::new()
                };
                match &hc.path {
                    Some(path) => {
                        let host = c.upstream_host.clone().unwrap_or_else(|| hp.to_string());
                        let mut check = HttpHealthCheck::new(&host, hp.tls);
                        check.peer_template = HttpPeer::new("0.0.0.0:1", hp.tls, sni);
                        check.peer_template.options.connection_timeout = Some(hc.timeout);
                        check.peer_template.options.read_timeout = Some(hc.timeout);
                        check.peer_template.options.total_connection_timeout = Some(hc.timeout);
                        check.peer_template.options.ca = roots.clone();
                        if let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), None) {
                            let _ = req.insert_header("host", &host);
                            let _ = req.insert_header("user-agent", "wxgate-health-check");
                            check.req = req;
                        }
                        check.validator = Some(Box::new(|resp: &ResponseHeader| {
                            match resp.status.is_success() {
                                true => Ok(()),
                                false => Error::e_explain(
                                    ErrorType::CustomCode("status", resp.status.as_u16()),
                                    "health check answered outside 2xx",
                                ),
                            }
                        }));
                        Box::new(check)
                    }
                    None => {
                        let mut check = TcpHealthCheck::new();
                        check.peer_template = BasicPeer::new("0.0.0.0:1");
                        check.peer_template.sni = sni;
                        check.peer_template.options.connection_timeout = Some(hc.timeout);
                        check.peer_template.options.total_connection_timeout = Some(hc.timeout);
                        check.peer_template.options.ca = roots.clone();
                        check
                    }
                }
            })
            .collect();
        Probe {
            route: c.name.clone(),
            per_origin,
            unhealthy_after: hc.unhealthy_after as usize,
            healthy_after: hc.healthy_after as usize,
        }
    }
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> Result<()> {
        let check = state_of(target).and_then(|s| self.per_origin.get(s.origin_index));
        match check {
            Some(check) => check.check(target).await,
            None => Error::e_explain(ErrorType::InternalError, "upstream without a check"),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let (addr, origin) = state_of(target)
            .map(|s| (s.addr.to_string(), s.origin.clone()))
            .unwrap_or_default();
        match healthy {
            true => tracing::info!(
                route = self.route,
                upstream = addr,
                origin,
                "upstream passes its health checks again: back in rotation"
            ),
            false => tracing::warn!(
                route = self.route,
                upstream = addr,
                origin,
                "upstream fails its health checks: out of rotation"
            ),
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("route {:?} upstream {}", self.route, target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        match success {
            true => self.healthy_after,
            false => self.unhealthy_after,
        }
    }
}

/// The background service behind every route's pool: runs each due health-check pass and
/// resolution for the routes of the live snapshot (so routes added by a reload get theirs), and
/// every few seconds forgets the rate-limit buckets that are full again and closes the fast
/// path's idle upstream connections that expired or that their upstream closed.
pub struct UpstreamHealth {
    pub live: super::Live,
}

/// How often the service looks for due work (the granularity of `interval`s).
const TICK: Duration = Duration::from_millis(100);
/// How often idle rate-limit buckets are dropped.
const FORGET_EVERY: Duration = Duration::from_secs(5);

#[async_trait]
impl pingora::services::background::BackgroundService for UpstreamHealth {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut last_forget = Instant::now();
        loop {
            let snap = self.live.load_full();
            let now = Instant::now();
            for route in snap.routes.iter() {
                route.pool.clone().run_due(now);
            }
            if now.duration_since(last_forget) >= FORGET_EVERY {
                last_forget = now;
                for limiter in snap.routes.iter().filter_map(|r| r.limiter.as_ref()) {
                    limiter.forget_idle();
                }
                // The fast path's idle upstream connections that expired or were closed.
                super::fast::IDLE.sweep(now);
            }
            drop(snap);
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_upstream, RouteAuth};

    fn config(upstreams: &[&str]) -> RouteConfig {
        let upstreams = upstreams
            .iter()
            .map(|u| parse_upstream(u).unwrap())
            .collect();
        RouteConfig::with_defaults("/", upstreams, RouteAuth::None)
    }

    fn addrs(pool: &Pool) -> Vec<String> {
        let mut v: Vec<String> = pool
            .members()
            .iter()
            .map(|(u, _)| format!("{} {}", u.origin, u.addr))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn names_are_resolved_again_and_keep_their_addresses_when_dns_fails() {
        let c = config(&[
            "localhost:7001",
            "no-such-host.invalid:7002",
            "10.9.9.9:7003",
        ]);
        // As resolved at load (here: made up, so that the change shows).
        let at_load = vec![
            vec!["10.0.0.1:7001".parse().unwrap()],
            vec!["10.0.0.2:7002".parse().unwrap()],
            vec!["10.9.9.9:7003".parse().unwrap()],
        ];
        let pool = Pool::new(&c, &at_load, None, None, Duration::from_secs(1)).unwrap();
        assert_eq!(
            addrs(&pool),
            [
                "10.9.9.9:7003 10.9.9.9:7003",
                "localhost:7001 10.0.0.1:7001",
                "no-such-host.invalid:7002 10.0.0.2:7002"
            ]
        );
        pool.update().await.unwrap();
        let now = addrs(&pool);
        assert!(
            now.contains(&"localhost:7001 127.0.0.1:7001".to_string()),
            "{now:?}"
        );
        assert!(!now.iter().any(|a| a.contains("10.0.0.1")), "{now:?}");
        assert!(
            now.contains(&"no-such-host.invalid:7002 10.0.0.2:7002".to_string()),
            "a failed lookup keeps the addresses: {now:?}"
        );
        assert!(now.contains(&"10.9.9.9:7003 10.9.9.9:7003".to_string()));
    }
}

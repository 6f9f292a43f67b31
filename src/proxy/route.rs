//! Routes: which upstream app a request goes to, and whether it needs a token.
//! A route matches on a path prefix today; host, method and per-route policy fit in [`Route`]
//! without changing how the table is searched (most specific first).

use crate::config::{RouteAuth, RouteConfig};
use crate::reply::Reject;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::upstreams::peer::HttpPeer;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct Route {
    pub name: String,
    pub prefix: String,
    /// The upstreams as configured (`host:port`), for the status page.
    pub upstreams_text: Vec<String>,
    /// Its series in `wxgate_requests_total` and `wxgate_upstream_duration_seconds`.
    pub metrics: crate::metrics::RouteMetrics,
    pub auth: RouteAuth,
    /// Inject the caller's verified phone number.
    pub forward_phone: bool,
    upstreams: LoadBalancer<RoundRobin>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Route {
    /// A route with its upstreams' addresses, resolved beforehand (never here: no DNS on the
    /// request path, and none while holding up a reload's swap).
    pub fn new(c: &RouteConfig, addrs: &[SocketAddr]) -> Result<Self, String> {
        let upstreams = LoadBalancer::try_from_iter(addrs.iter().copied())
            .map_err(|e| format!("route {:?}: {e}", c.name))?;
        Ok(Route {
            name: c.name.clone(),
            prefix: c.prefix.clone(),
            upstreams_text: c.upstreams.iter().map(ToString::to_string).collect(),
            metrics: crate::metrics::RouteMetrics::new(&c.name),
            auth: c.auth,
            forward_phone: c.forward_phone,
            upstreams,
            connect_timeout: c.connect_timeout,
            read_timeout: c.read_timeout,
        })
    }

    /// The next upstream (round-robin), with this route's timeouts.
    pub fn peer(&self) -> Option<HttpPeer> {
        let backend = self.upstreams.select(b"", 256)?;
        let mut peer = HttpPeer::new(backend, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Some(peer)
    }
}

/// Routes, most specific (longest prefix) first.
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// Every route, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// The longest prefix that matches `path` (a path as [`route_path`] returns it).
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| path.starts_with(r.prefix.as_str()))
    }
}

/// The path routes are matched against: percent-decoded, so `/%61pi/` is `/api/` as the upstream
/// will see it; and refused when it has `.`/`..` segments (also encoded, also with `\`), so that a
/// public prefix cannot reach a protected one once the upstream normalises the path.
pub fn route_path(raw: &str) -> Result<Cow<'_, str>, Reject> {
    let decoded = if raw.contains('%') {
        percent_encoding::percent_decode_str(raw).decode_utf8_lossy()
    } else {
        Cow::Borrowed(raw)
    };
    let has_dot_segment = decoded
        .split(['/', '\\'])
        .any(|segment| segment == "." || segment == "..");
    if has_dot_segment {
        return Err(Reject::BadPath);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, auth: RouteAuth) -> Route {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        Route::new(
            &RouteConfig {
                name: prefix.into(),
                prefix: prefix.into(),
                upstreams: vec![crate::config::parse_host_port("127.0.0.1:9").unwrap()],
                auth,
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                forward_phone: false,
            },
            &[addr],
        )
        .unwrap()
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route("/", RouteAuth::None),
            route("/api/", RouteAuth::Required),
            route("/api/public/", RouteAuth::None),
        ])
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table();
        assert_eq!(t.find("/api/public/x").unwrap().prefix, "/api/public/");
        assert_eq!(t.find("/api/private").unwrap().prefix, "/api/");
        assert_eq!(t.find("/api/").unwrap().prefix, "/api/");
        assert_eq!(t.find("/api").unwrap().prefix, "/");
        assert_eq!(t.find("/other").unwrap().prefix, "/");
    }

    #[test]
    fn no_match() {
        let t = RouteTable::new(vec![route("/api/", RouteAuth::Required)]);
        assert!(t.find("/").is_none());
        assert!(t.find("/apix").is_none());
    }

    #[test]
    fn paths_are_decoded_for_matching() {
        assert_eq!(route_path("/%61pi/x").unwrap(), "/api/x");
        assert_eq!(route_path("/api/x").unwrap(), "/api/x");
        assert!(matches!(route_path("/api/x"), Ok(Cow::Borrowed(_))));
        assert_eq!(route_path("/a%ZZ").unwrap(), "/a%ZZ");
        assert!(route_path("/a%ff").is_ok());
    }

    #[test]
    fn dot_segments_are_refused() {
        for p in [
            "/api/public/../private",
            "/api/public/%2e%2e/private",
            "/api/public/%2E%2E%2Fprivate",
            "/api/public/..\\private",
            "/./api",
            "/api/..",
        ] {
            assert_eq!(route_path(p), Err(Reject::BadPath), "{p}");
        }
        for p in ["/api/..foo", "/api/.well-known/x", "/a...b"] {
            assert!(route_path(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn peers_round_robin() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let r = Route::new(
            &RouteConfig {
                name: "x".into(),
                prefix: "/".into(),
                upstreams: addrs
                    .iter()
                    .map(|a| crate::config::parse_host_port(&a.to_string()).unwrap())
                    .collect(),
                auth: RouteAuth::None,
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(2),
                forward_phone: false,
            },
            &addrs,
        )
        .unwrap();
        let a = r.peer().unwrap();
        let b = r.peer().unwrap();
        assert_ne!(a._address, b._address);
        assert_eq!(a.options.read_timeout, Some(Duration::from_secs(2)));
    }
}

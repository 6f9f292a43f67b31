//! Routes: which upstream app a request goes to, and whether it needs a token.
//! A route matches on its host (when it has one) and a path prefix; among the routes that match,
//! the longest prefix wins, and a route for the request's host wins over one for any host.
//! The pure steps a route applies to a request (host, stripped target, the WebSocket token
//! parameter) are here too, tested without a session.

use crate::config::{HostMatch, RouteAuth, RouteConfig};
use crate::reply::Reject;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::upstreams::peer::HttpPeer;
use std::borrow::Cow;
use std::collections::HashMap;
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
    pub host: Option<HostMatch>,
    pub strip_prefix: bool,
    /// WebSocket upgrades allowed, with this idle timeout.
    pub websocket: Option<Duration>,
    upstreams: LoadBalancer<RoundRobin>,
    /// For `https://` upstreams: address -> SNI (the upstream's host name).
    tls: HashMap<SocketAddr, String>,
    /// Trust roots for them (`upstream_ca` and the system's); `None`: the system's.
    roots: Option<Arc<pingora::protocols::tls::CaType>>,
    /// The `Host` header the upstream gets instead of the client's.
    pub upstream_host: Option<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Route {
    /// A route with its upstreams' addresses, resolved beforehand (never here: no DNS on the
    /// request path, and none while holding up a reload's swap).
    pub fn new(c: &RouteConfig, resolved: &[Vec<SocketAddr>]) -> Result<Self, String> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut tls = HashMap::new();
        for (hp, found) in c.upstreams.iter().zip(resolved) {
            for a in found {
                if !addrs.contains(a) {
                    addrs.push(*a);
                }
                if hp.tls {
                    tls.insert(*a, hp.host.clone());
                }
            }
        }
        let upstreams = LoadBalancer::try_from_iter(addrs.iter().copied())
            .map_err(|e| format!("route {:?}: {e}", c.name))?;
        let roots = match &c.upstream_ca {
            Some(path) => Some(
                crate::tls::upstream_roots(path)
                    .map_err(|e| format!("route {:?}: upstream_ca: {e}", c.name))?,
            ),
            None => None,
        };
        Ok(Route {
            name: c.name.clone(),
            prefix: c.prefix.clone(),
            upstreams_text: c.upstreams.iter().map(ToString::to_string).collect(),
            metrics: crate::metrics::RouteMetrics::new(&c.name),
            auth: c.auth,
            forward_phone: c.forward_phone,
            host: c.host.clone(),
            strip_prefix: c.strip_prefix,
            websocket: c.websocket,
            upstreams,
            tls,
            roots,
            upstream_host: c.upstream_host.clone(),
            connect_timeout: c.connect_timeout,
            read_timeout: c.read_timeout,
        })
    }

    /// The next upstream (round-robin), with this route's timeouts; for an upgraded
    /// (WebSocket) connection, reads wait up to the route's idle timeout instead.
    pub fn peer(&self, upgrade: bool) -> Option<HttpPeer> {
        let backend = self.upstreams.select(b"", 256)?;
        // Most routes have no https:// upstream: no lookup for them.
        let sni = match self.tls.is_empty() {
            true => None,
            false => backend
                .addr
                .as_inet()
                .and_then(|a| self.tls.get(a))
                .cloned(),
        };
        let tls = sni.is_some();
        let mut peer = HttpPeer::new(backend, tls, sni.unwrap_or_default());
        if tls {
            peer.options.ca = self.roots.clone();
        }
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = match (upgrade, self.websocket) {
            (true, Some(idle)) => Some(idle),
            _ => Some(self.read_timeout),
        };
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
        // Longest prefix first; at equal length, a route for a host before one for any host.
        routes.sort_by_key(|r| (std::cmp::Reverse(r.prefix.len()), r.host.is_none()));
        RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// Every route, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// The route for `host` (lowercase, no port; `None` when the request named none) whose
    /// prefix is the longest that matches `path` (a path as [`route_path`] returns it).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            path.starts_with(r.prefix.as_str())
                && match (&r.host, host) {
                    (None, _) => true,
                    (Some(want), Some(host)) => want.matches(host),
                    (Some(_), None) => false,
                }
        })
    }
}

/// The host a request names (`Host`, or the `:authority` of h2), lowercase, without its port.
pub fn request_host(authority: Option<&str>, host_header: Option<&[u8]>) -> Option<String> {
    let raw = match authority {
        Some(a) => a,
        None => std::str::from_utf8(host_header?).ok()?,
    };
    let raw = raw.trim();
    let host = if let Some(v6) = raw.strip_prefix('[') {
        &v6[..v6.find(']')?]
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The request target with `prefix` removed from the raw path (the query kept, never an empty
/// path). Only a path that starts with the prefix as sent is rewritten: one that matched only
/// once percent-decoded is refused, so that what is forwarded is what routing checked.
pub fn strip_prefix(path: &str, query: Option<&str>, prefix: &str) -> Result<String, Reject> {
    let rest = path.strip_prefix(prefix).ok_or(Reject::EncodedPrefix)?;
    let mut target = String::with_capacity(rest.len() + 2 + query.map_or(0, str::len));
    if !rest.starts_with('/') {
        target.push('/');
    }
    target.push_str(rest);
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    Ok(target)
}

/// A query without its `token` parameters (a WebSocket client's token, never forwarded), and
/// the first token's value.
pub fn take_token_param(query: &str) -> (Option<String>, String) {
    let mut token = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let name = pair.split('=').next().unwrap_or("");
        if name == "token" {
            if token.is_none() {
                let value = pair.split_once('=').map_or("", |(_, v)| v);
                token = Some(
                    percent_encoding::percent_decode_str(&value.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned(),
                );
            }
        } else if !pair.is_empty() {
            kept.push(pair);
        }
    }
    (token, kept.join("&"))
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
                host: None,
                strip_prefix: false,
                websocket: None,
                upstream_ca: None,
                upstream_host: None,
            },
            &[vec![addr]],
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
        assert_eq!(
            t.find(None, "/api/public/x").unwrap().prefix,
            "/api/public/"
        );
        assert_eq!(t.find(None, "/api/private").unwrap().prefix, "/api/");
        assert_eq!(t.find(None, "/api/").unwrap().prefix, "/api/");
        assert_eq!(t.find(None, "/api").unwrap().prefix, "/");
        assert_eq!(t.find(None, "/other").unwrap().prefix, "/");
    }

    #[test]
    fn no_match() {
        let t = RouteTable::new(vec![route("/api/", RouteAuth::Required)]);
        assert!(t.find(None, "/").is_none());
        assert!(t.find(None, "/apix").is_none());
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
                host: None,
                strip_prefix: false,
                websocket: None,
                upstream_ca: None,
                upstream_host: None,
            },
            &addrs.iter().map(|a| vec![*a]).collect::<Vec<_>>(),
        )
        .unwrap();
        let a = r.peer(false).unwrap();
        let b = r.peer(false).unwrap();
        assert_ne!(a._address, b._address);
        assert_eq!(a.options.read_timeout, Some(Duration::from_secs(2)));
    }

    fn on_host(prefix: &str, host: &str) -> Route {
        let mut r = route(prefix, RouteAuth::None);
        r.name = format!("{host}{prefix}");
        r.host = Some(match host.strip_prefix("*.") {
            Some(s) => HostMatch::Subdomains(s.into()),
            None => HostMatch::Exact(host.into()),
        });
        r
    }

    #[test]
    fn hosts_then_longest_prefix() {
        let t = RouteTable::new(vec![
            route("/", RouteAuth::None),
            route("/api/", RouteAuth::None),
            on_host("/api/", "shop.example.com"),
            on_host("/", "*.staff.example.com"),
        ]);
        let name = |host: Option<&str>, path: &str| t.find(host, path).map(|r| r.name.clone());
        assert_eq!(
            name(Some("shop.example.com"), "/api/x").unwrap(),
            "shop.example.com/api/"
        );
        assert_eq!(name(Some("other.example.com"), "/api/x").unwrap(), "/api/");
        assert_eq!(name(None, "/api/x").unwrap(), "/api/");
        assert_eq!(
            name(Some("a.staff.example.com"), "/x").unwrap(),
            "*.staff.example.com/"
        );
        // A longer prefix for any host beats a shorter one for this host.
        assert_eq!(
            name(Some("a.staff.example.com"), "/api/x").unwrap(),
            "/api/"
        );
        assert_eq!(name(Some("staff.example.com"), "/x").unwrap(), "/");
        assert_eq!(name(Some("xstaff.example.com"), "/x").unwrap(), "/");
    }

    #[test]
    fn request_host_drops_port_and_case() {
        assert_eq!(
            request_host(None, Some(b"API.Example.com:8443")).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            request_host(Some("h2.example.com:443"), Some(b"x")).as_deref(),
            Some("h2.example.com")
        );
        assert_eq!(
            request_host(None, Some(b"[::1]:3000")).as_deref(),
            Some("::1")
        );
        assert_eq!(
            request_host(None, Some(b"example.com.")).as_deref(),
            Some("example.com")
        );
        assert_eq!(request_host(None, None), None);
        assert_eq!(request_host(None, Some(b"")), None);
    }

    #[test]
    fn strip_prefix_keeps_query_and_a_path() {
        assert_eq!(
            strip_prefix("/shop/orders", Some("x=1&y=2"), "/shop/"),
            Ok("/orders?x=1&y=2".into())
        );
        assert_eq!(strip_prefix("/shop/", None, "/shop/"), Ok("/".into()));
        assert_eq!(strip_prefix("/shop", None, "/shop"), Ok("/".into()));
        assert_eq!(
            strip_prefix("/shop/a%20b", None, "/shop"),
            Ok("/a%20b".into())
        );
        assert_eq!(strip_prefix("/shopping", None, "/shop"), Ok("/ping".into()));
        // Matched only once decoded: refused, never forwarded unchecked.
        assert_eq!(
            strip_prefix("/%73hop/x", None, "/shop/"),
            Err(Reject::EncodedPrefix)
        );
    }

    #[test]
    fn token_parameter_is_taken_out() {
        assert_eq!(
            take_token_param("token=abc&room=1"),
            (Some("abc".into()), "room=1".into())
        );
        assert_eq!(
            take_token_param("room=1&token=a%2Eb&token=c"),
            (Some("a.b".into()), "room=1".into())
        );
        assert_eq!(take_token_param("room=1"), (None, "room=1".into()));
        assert_eq!(
            take_token_param("tokens=1&token"),
            (Some(String::new()), "tokens=1".into())
        );
    }
}

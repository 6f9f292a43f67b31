//! Routes: which upstream app a request goes to, and whether it needs a token.
//! A route matches on its host (when it has one) and a path prefix; among the routes that match,
//! the longest prefix wins, and a route for the request's host wins over one for any host.
//! The pure steps a route applies to a request (host, stripped target, the WebSocket token
//! parameter) are here too, tested without a session.

use super::limit::RouteLimiter;
use super::pool::{Pool, Upstream};
use crate::config::{Balance, HostMatch, RouteAuth, RouteConfig};
use crate::reply::Reject;
use pingora::upstreams::peer::HttpPeer;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
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
    /// The upstreams, their health and how one is chosen (`lb`).
    pub pool: Arc<Pool>,
    pub lb: Balance,
    /// Other upstreams tried after a connect failure.
    pub retries: u32,
    /// `rate_limit`, when set.
    pub limiter: Option<Arc<RouteLimiter>>,
    /// Only tokens of these appids (`apps`, resolved from names by the snapshot's builder).
    pub apps: Option<Vec<Arc<str>>>,
    /// WeChat Cloud Hosting's identity headers instead of `[auth]`'s (`identity_headers`,
    /// resolved against `auth.identity_headers` by the snapshot's builder).
    pub cloudhosting: bool,
    /// Trust roots for them (`upstream_ca` and the system's); `None`: the system's.
    roots: Option<Arc<pingora::protocols::tls::CaType>>,
    /// The `Host` header the upstream gets instead of the client's.
    pub upstream_host: Option<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
    upstream_idle_timeout: Duration,
}

impl Route {
    /// A route with its upstreams' addresses, resolved beforehand (never here: no DNS on the
    /// request path, and none while holding up a reload's swap). `previous` is the route of the
    /// same name in the running snapshot: its upstream health and rate-limit buckets carry over
    /// while their keys are unchanged.
    pub fn new(
        c: &RouteConfig,
        resolved: &[Vec<SocketAddr>],
        previous: Option<&Route>,
        resolve_interval: Duration,
    ) -> Result<Self, String> {
        let roots = match &c.upstream_ca {
            Some(path) => Some(
                crate::tls::upstream_roots(path)
                    .map_err(|e| format!("route {:?}: upstream_ca: {e}", c.name))?,
            ),
            None => None,
        };
        let pool = Pool::new(
            c,
            resolved,
            roots.clone(),
            previous.map(|p| &*p.pool),
            resolve_interval,
        )?;
        let limiter = c
            .rate_limit
            .map(|limit| match previous.and_then(|p| p.limiter.as_ref()) {
                Some(l) if l.config() == limit => l.clone(),
                _ => Arc::new(RouteLimiter::new(limit)),
            });
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
            pool: Arc::new(pool),
            lb: c.lb,
            retries: c.retries,
            limiter,
            apps: None,
            cloudhosting: false,
            roots,
            upstream_host: c.upstream_host.clone(),
            connect_timeout: c.connect_timeout,
            read_timeout: c.read_timeout,
            upstream_idle_timeout: c.upstream_idle_timeout,
        })
    }

    /// What `openid_hash` hashes: the caller's openid, or on a public route the client address.
    /// Empty (unused) for the other policies. Pure.
    pub fn balance_key<'a>(
        &self,
        openid: Option<&'a str>,
        client: impl FnOnce() -> Option<IpAddr>,
    ) -> Cow<'a, [u8]> {
        match (self.lb, openid) {
            (Balance::OpenidHash, Some(openid)) => Cow::Borrowed(openid.as_bytes()),
            (Balance::OpenidHash, None) => match client() {
                Some(IpAddr::V4(v4)) => Cow::Owned(v4.octets().to_vec()),
                Some(IpAddr::V6(v6)) => Cow::Owned(v6.octets().to_vec()),
                None => Cow::Borrowed(b""),
            },
            _ => Cow::Borrowed(b""),
        }
    }

    /// The peer for `upstream`, with this route's timeouts and TLS settings; for an upgraded
    /// (WebSocket) connection, reads wait up to the route's idle timeout instead.
    pub fn peer(&self, upstream: &Upstream, upgrade: bool) -> HttpPeer {
        let tls = upstream.sni.is_some();
        let mut peer = HttpPeer::new(upstream.addr, tls, upstream.sni.clone().unwrap_or_default());
        if tls {
            peer.options.ca = self.roots.clone();
        }
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = match (upgrade, self.websocket) {
            (true, Some(idle)) => Some(idle),
            _ => Some(self.read_timeout),
        };
        peer.options.idle_timeout = Some(self.upstream_idle_timeout);
        peer
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
pub fn request_host<'a>(
    authority: Option<&'a str>,
    host_header: Option<&'a [u8]>,
) -> Option<std::borrow::Cow<'a, str>> {
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
    if host.is_empty() {
        None
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(host.to_ascii_lowercase().into())
    } else {
        // The usual case: already lowercase, borrowed (no copy per request).
        Some(host.into())
    }
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
/// will see it; and refused when it has `.`/`..` segments (also encoded, also with `\`, also
/// with `;` parameters as in `..;`), so that a public prefix cannot reach a protected one once
/// the upstream normalises the path (see also [`normalised_path`]).
pub fn route_path(raw: &str) -> Result<Cow<'_, str>, Reject> {
    let decoded = if raw.contains('%') {
        percent_encoding::percent_decode_str(raw).decode_utf8_lossy()
    } else {
        Cow::Borrowed(raw)
    };
    let has_dot_segment = decoded.split(['/', '\\']).any(|segment| {
        let name = segment.split(';').next().unwrap_or("");
        name == "." || name == ".."
    });
    if has_dot_segment {
        return Err(Reject::BadPath("dot_segment"));
    }
    Ok(decoded)
}

/// The path as upstreams that normalise it see it: repeated `/` merged (nginx's
/// `merge_slashes`) and `;` parameters taken off each segment (Java servlet containers);
/// `None` when that changes nothing. Pure.
pub fn normalised_path(path: &str) -> Option<String> {
    if !path.contains("//") && !path.contains(';') {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        let name = segment.split(';').next().unwrap_or("");
        if i > 0 && name.is_empty() && !out.ends_with('/') {
            out.push('/');
        } else if i > 0 && !name.is_empty() {
            if !out.ends_with('/') {
                out.push('/');
            }
            out.push_str(name);
        }
    }
    if path.ends_with('/') && !out.ends_with('/') {
        out.push('/');
    }
    if out.is_empty() {
        out.push('/');
    }
    (out != path).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, auth: RouteAuth) -> Route {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let upstreams = vec![crate::config::parse_host_port("127.0.0.1:9").unwrap()];
        let c = RouteConfig::with_defaults(prefix, upstreams, auth);
        Route::new(&c, &[vec![addr]], None, Duration::from_secs(30)).unwrap()
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
            assert!(matches!(route_path(p), Err(Reject::BadPath(_))), "{p}");
        }
        for p in [
            "/api/..foo",
            "/api/.well-known/x",
            "/a...b",
            "/a;b/c",
            "/a%2Fb",
        ] {
            assert!(route_path(p).is_ok(), "{p}");
        }
        for p in ["/public/..;/api/x", "/public/%2e%2e;x/api"] {
            assert_eq!(route_path(p), Err(Reject::BadPath("dot_segment")), "{p}");
        }
        // An encoded slash is decoded for matching: `/%2Fapi` reads `//api`, which
        // `normalised_path` then reads as `/api`.
        assert_eq!(route_path("/%2Fapi/x").unwrap(), "//api/x");
    }

    #[test]
    fn paths_as_normalising_upstreams_read_them() {
        assert_eq!(normalised_path("/api/x"), None);
        assert_eq!(normalised_path("//api/x").as_deref(), Some("/api/x"));
        assert_eq!(normalised_path("/api//x//").as_deref(), Some("/api/x/"));
        assert_eq!(normalised_path("/api;/x").as_deref(), Some("/api/x"));
        assert_eq!(
            normalised_path("/api;jsessionid=1/x;y=2").as_deref(),
            Some("/api/x")
        );
        assert_eq!(normalised_path("//").as_deref(), Some("/"));
        assert_eq!(normalised_path("/;x").as_deref(), Some("/"));
    }

    fn pool_route(ports: &[u16], lb: Balance, previous: Option<&Route>) -> Route {
        let addrs: Vec<SocketAddr> = ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect();
        let upstreams = addrs
            .iter()
            .map(|a| crate::config::parse_host_port(&a.to_string()).unwrap())
            .collect();
        let mut c = RouteConfig::with_defaults("/", upstreams, RouteAuth::None);
        c.name = "x".into();
        c.lb = lb;
        c.read_timeout = Duration::from_secs(2);
        c.upstream_idle_timeout = Duration::from_millis(1500);
        let resolved: Vec<_> = addrs.iter().map(|a| vec![*a]).collect();
        Route::new(&c, &resolved, previous, Duration::from_secs(30)).unwrap()
    }

    fn pick(r: &Route, key: &str, tried: &[SocketAddr]) -> Option<u16> {
        let key = r.balance_key(Some(key), || None);
        r.pool.select(&key, tried).map(|u| u.upstream().addr.port())
    }

    #[test]
    fn round_robin_alternates_and_peers_carry_the_timeouts() {
        let r = pool_route(&[1, 2], Balance::RoundRobin, None);
        let (a, b) = (pick(&r, "", &[]).unwrap(), pick(&r, "", &[]).unwrap());
        assert_ne!(a, b);
        let held = r.pool.select(b"", &[]).unwrap();
        let peer = r.peer(held.upstream(), false);
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(2)));
        assert_eq!(peer.options.idle_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            held.upstream().in_flight(),
            1,
            "held while the request runs"
        );
        let upstream = held.upstream().clone();
        drop(held);
        assert_eq!(upstream.in_flight(), 0);
    }

    #[test]
    fn openid_hash_sticks_spreads_and_moves_a_third_when_one_is_added() {
        let two = pool_route(&[1, 2], Balance::OpenidHash, None);
        let users: Vec<String> = (0..300).map(|i| format!("o-user-{i}")).collect();
        let before: Vec<u16> = users.iter().map(|u| pick(&two, u, &[]).unwrap()).collect();
        for (u, port) in users.iter().zip(&before) {
            assert_eq!(
                pick(&two, u, &[]),
                Some(*port),
                "the same user, the same upstream"
            );
        }
        let on_1 = before.iter().filter(|p| **p == 1).count();
        assert!(
            (90..=210).contains(&on_1),
            "spread over both: {on_1} of 300"
        );
        let three = pool_route(&[1, 2, 3], Balance::OpenidHash, Some(&two));
        let after: Vec<u16> = users
            .iter()
            .map(|u| pick(&three, u, &[]).unwrap())
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(
            (50..=150).contains(&moved),
            "about a third moves: {moved} of 300"
        );
        assert!(
            before.iter().zip(&after).all(|(a, b)| a == b || *b == 3),
            "users only move to the new upstream"
        );
        // Public routes hash the client address.
        let key = three.balance_key(None, || Some("192.0.2.7".parse().unwrap()));
        assert_eq!(&*key, &[192, 0, 2, 7]);
    }

    #[test]
    fn a_failed_upstream_is_skipped_and_all_down_is_none() {
        let r = pool_route(&[1, 2], Balance::OpenidHash, None);
        let first = pick(&r, "o-someone", &[]).unwrap();
        let other = if first == 1 { 2 } else { 1 };
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        // A retry does not go back to the upstream it tried.
        assert_eq!(pick(&r, "o-someone", &[addr(first)]), Some(other));
        assert!(r.pool.any_other_up(&[addr(first)]));
        assert!(!r.pool.any_other_up(&[addr(first), addr(other)]));
        r.pool.mark_failed(&addr(first));
        assert_eq!(
            pick(&r, "o-someone", &[]),
            Some(other),
            "moves while it is down"
        );
        r.pool.mark_failed(&addr(other));
        assert_eq!(pick(&r, "o-someone", &[]), None, "every upstream down");
        // A reload with the same upstreams keeps what was seen of them.
        let reloaded = pool_route(&[1, 2], Balance::OpenidHash, Some(&r));
        assert_eq!(pick(&reloaded, "o-someone", &[]), None);
    }

    #[test]
    fn least_requests_picks_the_least_busy() {
        let r = pool_route(&[1, 2, 3], Balance::LeastRequests, None);
        let a = r.pool.select(b"", &[]).unwrap();
        let b = r.pool.select(b"", &[]).unwrap();
        let c = r.pool.select(b"", &[]).unwrap();
        let mut ports = [
            a.upstream().addr.port(),
            b.upstream().addr.port(),
            c.upstream().addr.port(),
        ];
        ports.sort();
        assert_eq!(ports, [1, 2, 3], "one each");
        let busy = b.upstream().addr.port();
        drop(b);
        let d = r.pool.select(b"", &[]).unwrap();
        assert_eq!(d.upstream().addr.port(), busy, "the only idle one");
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

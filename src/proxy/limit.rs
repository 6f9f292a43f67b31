//! Who the client is (behind trusted proxies), and how often it may make the gateway call WeChat,
//! so that a flood cannot burn the app's WeChat quota (errcode 45011).

use crate::config::RouteRateLimit;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use pingora_limits::rate::Rate;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// The client's address: the peer, unless the peer is a trusted proxy; then the right-most
/// address in `X-Forwarded-For` that is not a trusted proxy (what the nearest untrusted hop said
/// cannot be forged by the client; anything further left can). Malformed entries stop the walk.
/// `forwarded_for` yields the header's values; it is called only for a trusted peer, so an
/// untrusted one costs no header lookup.
pub fn client_ip<'a, I>(
    peer: IpAddr,
    forwarded_for: impl FnOnce() -> I,
    trusted: &[IpNet],
) -> IpAddr
where
    I: DoubleEndedIterator<Item = &'a str>,
{
    if !is_trusted(&peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for().rev().flat_map(|v| v.rsplit(',')) {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip, trusted) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// Whether `ip` is one of `server.trusted_proxies`.
pub fn is_trusted(ip: &IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64 (one subscriber).
pub fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1) | (1 << 32),
    }
}

/// Calls per client per minute, in fixed memory whatever the number of clients.
pub struct PerMinute {
    limit: u32,
    rate: Rate,
}

impl PerMinute {
    /// `limit` calls a minute per client; 0 means unlimited.
    pub fn new(limit: u32) -> Self {
        PerMinute {
            limit,
            // 4 x 16384 counters: collisions stay rare with many thousands of clients.
            rate: Rate::new_with_estimator_config(Duration::from_secs(60), 4, 16384),
        }
    }

    /// Calls a minute per client (0: unlimited).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Count one call; `false` when the client is over its limit.
    pub fn allow(&self, client: IpAddr) -> bool {
        if self.limit == 0 {
            return true;
        }
        self.rate.observe(&client_key(client), 1) <= self.limit as isize
    }
}

/// The key a user is counted under on a route with `rate_limit`: a hash of the app and the
/// openid, apart from every [`client_key`] (bit 127 set).
pub fn openid_key(appid: &str, openid: &str) -> u128 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    appid.hash(&mut hasher);
    openid.hash(&mut hasher);
    (1u128 << 127) | u128::from(hasher.finish())
}

/// A route's `rate_limit`: a token bucket per key (governor's GCRA, which is a token bucket
/// without a refill task). An entry lives only while its bucket is not full again: the
/// `upstream health` service calls [`Self::forget_idle`] every few seconds, so memory follows
/// the users active in the last `burst / rate` seconds, not every user ever seen.
pub struct RouteLimiter {
    config: RouteRateLimit,
    buckets: DefaultKeyedRateLimiter<u128>,
}

impl RouteLimiter {
    pub fn new(config: RouteRateLimit) -> Self {
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let every = config.per / config.count.max(1);
        let quota = Quota::with_period(every.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        RouteLimiter {
            config,
            buckets: DefaultKeyedRateLimiter::keyed(quota),
        }
    }

    pub fn config(&self) -> RouteRateLimit {
        self.config
    }

    /// Take a token for `key`; without one, `Err(seconds until there is one)`, rounded up.
    pub fn check(&self, key: u128) -> Result<(), u64> {
        self.buckets.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Drop the buckets that are full again (indistinguishable from new ones).
    pub fn forget_idle(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }

    /// Keys with a bucket now.
    pub fn keys(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_claim() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), || ["1.2.3.4"].into_iter(), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("203.0.113.9"), || [].into_iter(), &[]),
            ip("203.0.113.9")
        );
        let unread =
            || -> std::array::IntoIter<&str, 0> { panic!("an untrusted peer's header read") };
        assert_eq!(
            client_ip(ip("203.0.113.9"), unread, &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        // client, then a trusted hop: the client is the right-most untrusted address.
        let xff = ["6.6.6.6, 198.51.100.7, 10.1.2.3"];
        assert_eq!(
            client_ip(ip("127.0.0.1"), || xff.into_iter(), &trusted),
            ip("198.51.100.7")
        );
        // Several headers are one list, in order.
        let xff = ["6.6.6.6", "198.51.100.7", "10.1.2.3"];
        assert_eq!(
            client_ip(ip("10.9.9.9"), || xff.into_iter(), &trusted),
            ip("198.51.100.7")
        );
        // Only trusted hops: the left-most of them.
        assert_eq!(
            client_ip(ip("10.9.9.9"), || ["10.1.1.1"].into_iter(), &trusted),
            ip("10.1.1.1")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.9.9.9"), || [].into_iter(), &trusted),
            ip("10.9.9.9")
        );
        // Garbage stops the walk at the last good hop.
        let xff = ["6.6.6.6, garbage, 10.1.2.3"];
        assert_eq!(
            client_ip(ip("10.9.9.9"), || xff.into_iter(), &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_ip(ip("10.9.9.9"), || ["2001:db8::1"].into_iter(), &trusted),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        assert_eq!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_ne!(client_key(ip("0.0.0.1")), client_key(ip("::1")));
    }

    #[test]
    fn limits_per_client() {
        let limit = PerMinute::new(3);
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        assert!((0..3).all(|_| limit.allow(a)));
        assert!(!limit.allow(a));
        assert!(limit.allow(b));
        let off = PerMinute::new(0);
        assert!((0..1000).all(|_| off.allow(a)));
    }

    fn rate(count: u32, per: u64, burst: u32) -> RouteLimiter {
        RouteLimiter::new(RouteRateLimit {
            count,
            per: Duration::from_secs(per),
            burst,
        })
    }

    #[test]
    fn route_limits_are_per_key_with_a_burst() {
        let limit = rate(2, 60, 3);
        let alice = openid_key("wx1", "o-alice");
        let bob = openid_key("wx1", "o-bob");
        assert!((0..3).all(|_| limit.check(alice).is_ok()), "the burst");
        let wait = limit.check(alice).unwrap_err();
        assert!((1..=30).contains(&wait), "one token every 30 s: {wait}");
        assert!(limit.check(bob).is_ok(), "another user is not limited");
        assert!(limit.check(client_key(ip("192.0.2.1"))).is_ok());
        assert_ne!(openid_key("wx1", "o-alice"), openid_key("wx1", "o-bob"));
        assert_ne!(openid_key("wx1", "x") >> 127, client_key(ip("::1")) >> 127);
    }

    #[test]
    fn route_limit_buckets_refill_and_are_forgotten() {
        let limit = rate(1000, 1, 1);
        let key = openid_key("wx1", "o-1");
        assert!(limit.check(key).is_ok());
        assert!(limit.check(key).is_err());
        std::thread::sleep(Duration::from_millis(5));
        assert!(limit.check(key).is_ok(), "one token per ms");
        assert_eq!(limit.keys(), 1);
        std::thread::sleep(Duration::from_millis(5));
        limit.forget_idle();
        assert_eq!(limit.keys(), 0, "a full bucket is forgotten");
    }
}

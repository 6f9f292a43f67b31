//! The gateway's Prometheus metrics: one registry for the process, named per Prometheus
//! conventions (base units, `_total` counters). Label values come from the configuration (route
//! names) or from fixed sets (reasons, errcodes, API names), never from a request's path or user.

use crate::wechat::WechatError;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;
use std::time::Duration;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub auth_rejections: IntCounterVec,
    pub logins: IntCounterVec,
    pub wechat_requests: IntCounterVec,
    pub wechat_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub store_errors: IntCounter,
    pub session_store_up: IntGaugeVec,
    pub auth_legacy: IntCounter,
    pub user_revocations: IntCounterVec,
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    pub build_info: IntGaugeVec,
    pub in_flight: IntGauge,
    pub rate_limited: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    pub upstream_connect_failures: IntCounterVec,
    pub fast_path_requests: IntCounterVec,
    pub relay_requests: IntCounterVec,
    pub relay_duration: HistogramVec,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Latency buckets in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Register a metric built from constant names: neither step can fail.
#[allow(clippy::expect_used)]
fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<T>,
) -> T {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
    register(registry, HistogramVec::new(opts, labels))
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new("wxgate_build_info", "Always 1; the version is a label."),
                &["version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            requests: counter_vec(
                r,
                "wxgate_requests_total",
                "Requests answered on the public listener, by route (or gateway endpoint) and status.",
                &["route", "status"],
            ),
            auth_rejections: counter_vec(
                r,
                "wxgate_auth_rejections_total",
                "Requests refused for their token (10119 missing, 10200 with its reason).",
                &["reason"],
            ),
            logins: counter_vec(
                r,
                "wxgate_logins_total",
                "Logins at the login endpoint, by result: ok, or the code answered.",
                &["result"],
            ),
            wechat_requests: counter_vec(
                r,
                "wxgate_wechat_requests_total",
                "Calls to WeChat's API, by API and errcode (0: success; unreachable, timeout, bad_response).",
                &["api", "errcode"],
            ),
            wechat_duration: histogram_vec(
                r,
                "wxgate_wechat_request_duration_seconds",
                "Time WeChat's API took to answer.",
                &["api"],
            ),
            upstream_duration: histogram_vec(
                r,
                "wxgate_upstream_duration_seconds",
                "Time from choosing an upstream to its response header, by route.",
                &["route"],
            ),
            store_errors: register(
                r,
                IntCounter::new(
                    "wxgate_session_store_errors_total",
                    "Session store operations that failed (unreachable, timed out, refused).",
                ),
            ),
            session_store_up: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "wxgate_session_store_up",
                        "1 while the session store answers (revocations in step), by form: memory, redis, redis-sentinel, redis-cluster.",
                    ),
                        &["form"],
                ),
            ),
            auth_legacy: register(
                r,
                IntCounter::new(
                    "wxgate_auth_legacy_total",
                    "Requests authenticated by another backend's token ([[jwt.accept]]), cached or not.",
                ),
            ),
            user_revocations: counter_vec(
                r,
                "wxgate_user_revocations_total",
                "Users revoked (every session ended) by an operator, by whether their logins were also blocked.",
                &["blocked"],
            ),
            reloads: counter_vec(
                r,
                "wxgate_config_reloads_total",
                "Configuration reloads, by result (ok, error).",
                &["result"],
            ),
            last_reload_success: register(
                r,
                Gauge::new(
                    "wxgate_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful configuration load (start-up or reload).",
                ),
            ),
            build_info,
            in_flight: register(
                r,
                IntGauge::new("wxgate_requests_in_flight", "Requests being answered now."),
            ),
            rate_limited: counter_vec(
                r,
                "wxgate_rate_limited_total",
                "Requests refused by a route's rate_limit (429 10429), by route.",
                &["route"],
            ),
            upstream_healthy: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "wxgate_upstream_healthy",
                        "1 while an upstream address is in rotation (passing health checks, no recent connect failure), else 0.",
                    ),
                    &["route", "upstream"],
                ),
            ),
            upstream_connect_failures: counter_vec(
                r,
                "wxgate_upstream_connect_failures_total",
                "Connections to an upstream that failed (each takes it out of rotation for a few seconds), by route and upstream.",
                &["route", "upstream"],
            ),
            fast_path_requests: counter_vec(
                r,
                "wxgate_fast_path_requests_total",
                "Requests sent upstream by the fast path (the others took Pingora's full proxy path), by upstream connection: `reused` (idle, kept alive) or `new`.",
                &["connection"],
            ),
            relay_requests: counter_vec(
                r,
                "wxgate_relay_requests_total",
                "Calls through the WeChat API relay, by allowed path (`other` for refused ones) and errcode (0: success; WeChat's errcode; unreachable, timeout, bad_response; refused).",
                &["path", "errcode"],
            ),
            relay_duration: histogram_vec(
                r,
                "wxgate_relay_request_duration_seconds",
                "Time a relayed call took, token fetch and retry included, by allowed path.",
                &["path"],
            ),
            registry,
        }
    }

    /// Set `wxgate_upstream_healthy` from the routes' pools, dropping the series of addresses
    /// no route has any more. Called before each scrape: nothing per request.
    pub fn set_upstream_health<'a>(&self, members: impl Iterator<Item = (&'a str, String, bool)>) {
        self.upstream_healthy.reset();
        for (route, upstream, healthy) in members {
            self.upstream_healthy
                .with_label_values(&[route, &upstream])
                .set(i64::from(healthy));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding our own families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// One call to WeChat's API and how it ended.
    pub fn wechat_request(&self, api: &str, took: Duration, outcome: Result<(), &WechatError>) {
        let errcode;
        let label = match outcome {
            Ok(()) => "0",
            Err(WechatError::Api(code)) => {
                errcode = code.to_string();
                errcode.as_str()
            }
            Err(WechatError::Unreachable) => "unreachable",
            Err(WechatError::Timeout) => "timeout",
            Err(WechatError::BadResponse) => "bad_response",
        };
        self.wechat_requests.with_label_values(&[api, label]).inc();
        self.wechat_duration
            .with_label_values(&[api])
            .observe(took.as_secs_f64());
    }

    /// The value of one counter series, for the status page (0 when never incremented).
    pub fn sum_of(&self, family: &str, label: Option<(&str, &str)>) -> u64 {
        let mut total = 0.0;
        for mf in self.registry.gather() {
            if mf.name() != family {
                continue;
            }
            for m in mf.get_metric() {
                let matches = label.is_none_or(|(name, value)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == name && l.value() == value)
                });
                if matches {
                    total += m.get_counter().get_value();
                }
            }
        }
        total as u64
    }

    /// Every series of a counter family as (labels, value), for the status page.
    pub fn series(&self, family: &str) -> Vec<(Vec<(String, String)>, u64)> {
        let mut out = Vec::new();
        for mf in self.registry.gather() {
            if mf.name() != family {
                continue;
            }
            for m in mf.get_metric() {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                out.push((labels, m.get_counter().get_value() as u64));
            }
        }
        out
    }
}

/// A route's series, resolved once per route instead of a label lookup per request.
pub struct RouteMetrics {
    name: String,
    /// The statuses most answers have, each series created on first use.
    common: [(u16, std::sync::OnceLock<IntCounter>); 16],
    pub upstream: prometheus::Histogram,
    pub rate_limited: IntCounter,
}

const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504,
];

impl RouteMetrics {
    pub fn new(name: &str) -> Self {
        RouteMetrics {
            name: name.to_string(),
            common: COMMON_STATUSES.map(|s| (s, std::sync::OnceLock::new())),
            upstream: METRICS.upstream_duration.with_label_values(&[name]),
            rate_limited: METRICS.rate_limited.with_label_values(&[name]),
        }
    }

    /// One request answered with `status` (`status_text`: its digits).
    pub fn count(&self, status: u16, status_text: &str) {
        let series = || {
            METRICS
                .requests
                .with_label_values(&[&self.name, status_text])
        };
        match self.common.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.get_or_init(series).inc(),
            None => series().inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_conventional_names() {
        let m = Metrics::new();
        m.requests.with_label_values(&["api", "200"]).inc();
        m.wechat_request(
            "jscode2session",
            Duration::from_millis(3),
            Err(&WechatError::Api(40029)),
        );
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"wxgate_requests_total{route="api",status="200"} 1"#));
        assert!(text
            .contains(r#"wxgate_wechat_requests_total{api="jscode2session",errcode="40029"} 1"#));
        assert!(text.contains("wxgate_wechat_request_duration_seconds_bucket"));
        assert!(text.contains(&format!(
            r#"wxgate_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        )));
        assert_eq!(m.sum_of("wxgate_requests_total", Some(("route", "api"))), 1);
        assert_eq!(m.sum_of("wxgate_requests_total", None), 1);
    }
}

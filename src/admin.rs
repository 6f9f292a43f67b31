//! The operator's listener (`[admin] listen`): `GET /metrics` (Prometheus), `GET /healthz`
//! (the process answers), `GET /readyz` (config loaded, session store reachable, revocations
//! synced) and `GET /`, a plain HTML status page. Its own requests are not counted as traffic.

use crate::metrics::METRICS;
use crate::proxy::drain::InFlight;
use crate::proxy::Live;
use crate::reply::{self, Reject};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// Where the configuration came from and how its last (re)load went.
pub struct ReloadStatus {
    pub source: String,
    started: Instant,
    last: Mutex<LastLoad>,
}

struct LastLoad {
    at: SystemTime,
    outcome: Result<u64, String>,
}

impl ReloadStatus {
    pub fn new(source: String) -> Self {
        ReloadStatus {
            source,
            started: Instant::now(),
            last: Mutex::new(LastLoad {
                at: SystemTime::now(),
                outcome: Ok(1),
            }),
        }
    }

    pub fn record(&self, outcome: Result<u64, String>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = LastLoad {
            at: SystemTime::now(),
            outcome,
        };
    }
}

pub struct AdminApp {
    live: Live,
    status: std::sync::Arc<ReloadStatus>,
    in_flight: InFlight,
}

impl AdminApp {
    pub fn new(live: Live, status: std::sync::Arc<ReloadStatus>, in_flight: InFlight) -> Self {
        AdminApp {
            live,
            status,
            in_flight,
        }
    }

    /// Why the gateway should not get traffic now, if it should not.
    fn not_ready(&self) -> Option<&'static str> {
        let snap = self.live.load();
        let revocations = snap.login.revocations();
        if !revocations.is_ready() {
            return Some("revocations_not_synced");
        }
        if revocations.store_down(snap.login.now_ms()) {
            return Some("session_store_unreachable");
        }
        None
    }

    fn status_page(&self) -> String {
        let snap = self.live.load();
        let mut html = String::with_capacity(8 * 1024);
        let uptime = self.status.started.elapsed().as_secs();
        let (last_at, last_outcome) = {
            let last = self.status.last.lock().unwrap_or_else(|p| p.into_inner());
            (
                humantime::format_rfc3339_seconds(last.at).to_string(),
                match &last.outcome {
                    Ok(generation) => format!("ok (generation {generation})"),
                    Err(e) => format!("refused: {e}"),
                },
            )
        };
        let total = METRICS.sum_of("wxgate_requests_total", None);
        let _ = write!(
            html,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>wxgate</title><style>body{{font-family:sans-serif;margin:2em}}\
             table{{border-collapse:collapse;margin:0.5em 0 1.5em}}\
             td,th{{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left}}</style>\
             </head><body>\n<h1>wxgate</h1>\n<p>version {version} · up {uptime} · \
             requests answered <span id=\"requests-total\">{total}</span> · in flight {in_flight}</p>\n\
             <p>configuration <code>{source}</code>, generation {generation}, \
             last (re)load {last_at}: <span id=\"last-reload\">{outcome}</span> · appid {appid} · \
             {store} session store</p>\n",
            version = env!("CARGO_PKG_VERSION"),
            uptime = humantime::format_duration(std::time::Duration::from_secs(uptime)),
            in_flight = self.in_flight.count(),
            source = escape(&self.status.source),
            generation = snap.generation,
            outcome = escape(&last_outcome),
            appid = escape(&snap.config.wechat.appid),
            store = if snap.login.sessions().store.is_shared() {
                "redis"
            } else {
                "memory"
            },
        );
        html.push_str(
            "<h2>Routes</h2>\n<table id=\"routes\"><tr><th>name</th><th>prefix</th>\
             <th>auth</th><th>upstreams</th><th>requests</th></tr>\n",
        );
        for route in snap.routes.iter() {
            let _ = writeln!(
                html,
                "<tr data-route=\"{name}\"><td>{name}</td><td><code>{prefix}</code></td>\
                 <td>{auth}</td><td>{upstreams}</td><td class=\"requests\">{n}</td></tr>",
                name = escape(&route.name),
                prefix = escape(&route.prefix),
                auth = match route.auth {
                    crate::config::RouteAuth::Required => "token",
                    crate::config::RouteAuth::None => "public",
                },
                upstreams = escape(&route.upstreams_text.join(", ")),
                n = METRICS.sum_of("wxgate_requests_total", Some(("route", &route.name))),
            );
        }
        html.push_str(
            "</table>\n<h2>Upstreams</h2>\n<table id=\"upstreams\"><tr><th>route</th>\
             <th>upstream</th><th>address</th><th>state</th><th>in flight</th></tr>\n",
        );
        for route in snap.routes.iter() {
            for (upstream, passes_checks) in route.pool.members() {
                let state = upstream_state(passes_checks, upstream.passively_down());
                let _ = writeln!(
                    html,
                    "<tr data-route=\"{route}\" data-upstream=\"{addr}\"><td>{route}</td>\
                     <td>{origin}</td><td>{addr}</td><td class=\"state\">{state}</td>\
                     <td>{in_flight}</td></tr>",
                    route = escape(&route.name),
                    origin = escape(&upstream.origin),
                    addr = upstream.addr,
                    in_flight = upstream.in_flight(),
                );
            }
        }
        html.push_str("</table>\n<h2>Counters</h2>\n");
        for (family, title) in [
            ("wxgate_requests_total", "Requests by route and status"),
            ("wxgate_auth_rejections_total", "Tokens refused, by reason"),
            ("wxgate_logins_total", "Logins, by result"),
            ("wxgate_wechat_requests_total", "WeChat API calls"),
            ("wxgate_session_store_errors_total", "Session store errors"),
            ("wxgate_config_reloads_total", "Configuration reloads"),
            (
                "wxgate_rate_limited_total",
                "Requests over a route's rate_limit",
            ),
            (
                "wxgate_upstream_connect_failures_total",
                "Failed connections to upstreams",
            ),
        ] {
            let series = METRICS.series(family);
            let _ = writeln!(
                html,
                "<h3>{title}</h3><table class=\"counter\" data-metric=\"{family}\">"
            );
            if series.is_empty() {
                html.push_str("<tr><td>none yet</td></tr>\n");
            }
            for (labels, value) in series {
                let labels = if labels.is_empty() {
                    "all".to_string()
                } else {
                    labels
                        .iter()
                        .map(|(k, v)| format!("{k}={}", escape(v)))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let _ = writeln!(html, "<tr><td>{labels}</td><td>{value}</td></tr>");
            }
            html.push_str("</table>\n");
        }
        html.push_str("<p><a href=\"/metrics\">/metrics</a> · <a href=\"/readyz\">/readyz</a></p>\n</body></html>\n");
        html
    }
}

/// An upstream's state on the status page: `healthy` only when it is in rotation.
fn upstream_state(passes_checks: bool, passively_down: bool) -> &'static str {
    match (passes_checks, passively_down) {
        (true, false) => "healthy",
        (false, _) => "unhealthy (failing health checks)",
        (true, true) => "down (connect failed moments ago)",
    }
}

/// Set `wxgate_upstream_healthy` from the live routes' pools.
fn refresh_upstream_health(snap: &crate::proxy::Snapshot) {
    let members: Vec<_> = snap
        .routes
        .iter()
        .flat_map(|route| {
            route.pool.members().into_iter().map(|(upstream, passes)| {
                (
                    route.name.as_str(),
                    upstream.addr.to_string(),
                    passes && !upstream.passively_down(),
                )
            })
        })
        .collect();
    METRICS.set_upstream_health(members.into_iter());
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store");
    if status == 405 {
        builder = builder.header(http::header::ALLOW, "GET, HEAD");
    }
    builder.body(body).unwrap_or_default()
}

const JSON: &str = "application/json; charset=utf-8";

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
            return response(405, JSON, Reject::MethodNotAllowed.body().to_vec());
        }
        match req.uri.path() {
            "/metrics" => {
                METRICS.in_flight.set(self.in_flight.count() as i64);
                refresh_upstream_health(&self.live.load());
                response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    METRICS.render(),
                )
            }
            "/healthz" => response(
                200,
                JSON,
                reply::success("ok", serde_json::json!({})).to_vec(),
            ),
            "/readyz" => match self.not_ready() {
                None => response(
                    200,
                    JSON,
                    reply::success("ready", serde_json::json!({})).to_vec(),
                ),
                Some(reason) => response(
                    503,
                    JSON,
                    serde_json::json!({"code": "10503", "message": "not ready", "reason": reason})
                        .to_string()
                        .into_bytes(),
                ),
            },
            "/" => response(
                200,
                "text/html; charset=utf-8",
                self.status_page().into_bytes(),
            ),
            _ => response(404, JSON, Reject::NoRoute.body().to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_html() {
        assert_eq!(
            super::escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}

//! The operator's listener (`[admin] listen`): `GET /metrics` (Prometheus), `GET /healthz`
//! (the process answers), `GET /readyz` (config loaded, session store reachable, revocations
//! synced) and `GET /`, a plain HTML status page. Its own requests are not counted as traffic.
//! `POST /sessions/revoke` ends every session of a user (`wxgate revoke` calls it); with
//! `[admin] token` set it wants that token as `Authorization: Bearer`.

use crate::metrics::METRICS;
use crate::proxy::drain::InFlight;
use crate::proxy::Live;
use crate::reply::{self, Reject, TokenProblem};
use crate::secret::Secret;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

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
        for app in snap.apps.iter() {
            let revocations = app.login.revocations();
            if !revocations.is_ready() {
                return Some("revocations_not_synced");
            }
            if revocations.store_down(app.login.now_ms()) {
                return Some("session_store_unreachable");
            }
        }
        None
    }

    /// Each app's session store: form, addresses (never a password) and whether it answers.
    fn stores(&self) -> Vec<serde_json::Value> {
        let snap = self.live.load();
        snap.apps
            .iter()
            .map(|app| {
                let location = app.login.sessions().store.location();
                let reachable = !app.login.revocations().store_down(app.login.now_ms());
                METRICS
                    .session_store_up
                    .with_label_values(&[location.form])
                    .set(i64::from(reachable));
                serde_json::json!({
                    "appid": &**app.login.appid(),
                    "form": location.form,
                    "addresses": location.addresses,
                    "reachable": reachable,
                })
            })
            .collect()
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
             <span id=\"session-store\">{store}</span> session store, \
             <span id=\"session-store-reachable\">{reachable}</span></p>\n",
            version = env!("CARGO_PKG_VERSION"),
            uptime = humantime::format_duration(std::time::Duration::from_secs(uptime)),
            in_flight = self.in_flight.count(),
            source = escape(&self.status.source),
            generation = snap.generation,
            outcome = escape(&last_outcome),
            appid = escape(&snap.config.appids().join(", ")),
            store = escape(&snap.login().sessions().store.location().to_string()),
            reachable = if snap.login().revocations().store_down(snap.login().now_ms()) {
                "unreachable"
            } else {
                "reachable"
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
            (
                "wxgate_relay_requests_total",
                "Calls through the WeChat API relay",
            ),
            ("wxgate_session_store_errors_total", "Session store errors"),
            (
                "wxgate_auth_legacy_total",
                "Requests with another backend's token ([[jwt.accept]])",
            ),
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

const JSON: &str = crate::reply::JSON_CONTENT_TYPE;

/// The path of the endpoint that revokes a user.
pub const REVOKE_PATH: &str = "/sessions/revoke";
/// The longest block `POST /sessions/revoke` and `wxgate revoke --block` accept.
pub const MAX_BLOCK: Duration = Duration::from_secs(365 * 24 * 3600);
/// A revoke request is one small JSON object.
const MAX_REVOKE_BODY: usize = 4096;

/// What `POST /sessions/revoke` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeRequest {
    pub openid: String,
    /// Refuse the user's logins for this long.
    pub block: Option<Duration>,
    /// The mini program (openids are per app); default: the first configured.
    pub appid: Option<String>,
}

/// A block's duration as written (`"1h"`, `"7d"`): more than nothing, at most [`MAX_BLOCK`].
pub fn parse_block(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("block {text:?} is not a duration such as \"1h\" ({e})"))?;
    if d.is_zero() {
        return Err(format!("block {text:?} must be longer than 0s"));
    }
    if d > MAX_BLOCK {
        return Err(format!("block {text:?} is longer than 365d"));
    }
    Ok(d)
}

/// An openid as WeChat writes them (28 characters of base64url), with room to spare; nothing
/// that could not be one, so that a key or a log line never carries a stray byte.
pub fn check_openid(openid: &str) -> Result<(), String> {
    let ok = !openid.is_empty()
        && openid.len() <= 128
        && openid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err("openid must be 1 to 128 characters of A-Z, a-z, 0-9, '-' and '_'".into())
    }
}

/// The body of `POST /sessions/revoke`: `{"openid": "...", "block": "1h"}` (`block` optional).
pub fn parse_revoke_request(body: &[u8]) -> Result<RevokeRequest, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        openid: Option<String>,
        block: Option<String>,
        appid: Option<String>,
    }
    const SHAPE: &str =
        r#"the body must be a JSON object {"openid": "...", "block": "1h"} (block optional)"#;
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("{SHAPE}: {e}"))?;
    let openid = raw
        .openid
        .ok_or_else(|| format!("openid is missing; {SHAPE}"))?;
    check_openid(&openid)?;
    let block = raw.block.as_deref().map(parse_block).transpose()?;
    Ok(RevokeRequest {
        openid,
        block,
        appid: raw.appid,
    })
}

/// Whether `authorization` carries the admin token as a bearer token. Both sides are hashed
/// first, so the comparison takes the same time whatever the token's length or content.
pub fn check_admin_token(authorization: Option<&[u8]>, token: &Secret) -> Result<(), Reject> {
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .ok_or(Reject::TokenMissing)?;
    let a = Sha256::digest(presented);
    let b = Sha256::digest(token.expose().as_bytes());
    let differ = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    if differ == 0 {
        Ok(())
    } else {
        Err(Reject::Token(TokenProblem::BadSignature))
    }
}

/// A rejection as the admin listener answers it, with the headers that belong to it.
fn rejected(r: &Reject, allow: Option<&'static str>) -> Response<Vec<u8>> {
    let mut resp = response(r.status(), JSON, r.body().to_vec());
    for (name, value) in r.headers(allow) {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// A 400 whose message says what was wrong with the request (an operator reads it).
fn bad_request(message: &str) -> Response<Vec<u8>> {
    let code = Reject::BadBody.parts().code;
    let body = serde_json::json!({"code": code, "message": message, "reason": "bad_request"});
    response(400, JSON, body.to_string().into_bytes())
}

impl AdminApp {
    /// `POST /sessions/revoke`.
    async fn revoke(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::POST {
            return rejected(&Reject::MethodNotAllowed, Some("POST"));
        }
        let snap = self.live.load_full();
        if let Some(token) = &snap.config.admin.token {
            // Exactly one `Authorization`: with two, which one counts is anyone's guess.
            let mut all = req.headers.get_all(http::header::AUTHORIZATION).iter();
            let authorization = match (all.next(), all.next()) {
                (Some(v), None) => Some(v.as_bytes()),
                _ => None,
            };
            if let Err(r) = check_admin_token(authorization, token) {
                return rejected(&r, None);
            }
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_REVOKE_BODY {
                        return rejected(&Reject::BodyTooLarge, None);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return bad_request(&format!("cannot read the body: {e}")),
            }
        }
        let request = match parse_revoke_request(&body) {
            Ok(r) => r,
            Err(message) => return bad_request(&message),
        };
        let login = match request.appid.as_deref() {
            None => snap.login(),
            Some(appid) => match snap.apps.by_appid(appid) {
                Some(app) => &app.login,
                None => return bad_request(&format!("appid {appid:?} is not configured")),
            },
        };
        match login
            .revoke_user(&request.openid, request.block, snap.config.log.openid)
            .await
        {
            Ok(revoked) => response(200, JSON, reply::success("revoked", revoked).to_vec()),
            Err(r) => rejected(&r, None),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().uri.path() == REVOKE_PATH {
            return self.revoke(session).await;
        }
        let req = session.req_header();
        if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
            return response(405, JSON, Reject::MethodNotAllowed.body().to_vec());
        }
        match req.uri.path() {
            "/metrics" => {
                METRICS.in_flight.set(self.in_flight.count() as i64);
                self.stores();
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
            "/readyz" => {
                let stores = self.stores();
                match self.not_ready() {
                    None => response(
                        200,
                        JSON,
                        reply::success("ready", serde_json::json!({ "session_stores": stores }))
                            .to_vec(),
                    ),
                    Some(reason) => response(
                        503,
                        JSON,
                        serde_json::json!({"code": "10503", "message": "not ready",
                            "reason": reason, "session_stores": stores})
                        .to_string()
                        .into_bytes(),
                    ),
                }
            }
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
    use super::*;

    #[test]
    fn revoke_requests() {
        let ok = |body: &str| parse_revoke_request(body.as_bytes());
        assert_eq!(
            ok(r#"{"openid": "o-abc_1"}"#),
            Ok(RevokeRequest {
                openid: "o-abc_1".into(),
                block: None,
                appid: None,
            })
        );
        assert_eq!(
            ok(r#"{"openid": "o1", "block": "1h"}"#).unwrap().block,
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            ok(r#"{"openid": "o1", "block": "365d"}"#).unwrap().block,
            Some(MAX_BLOCK)
        );
        for (body, needle) in [
            ("", "JSON object"),
            ("not json", "JSON object"),
            ("[]", "JSON object"),
            ("{}", "openid is missing"),
            (r#"{"openid": 5}"#, "JSON object"),
            (r#"{"openid": ""}"#, "1 to 128"),
            (r#"{"openid": "a b"}"#, "1 to 128"),
            (r#"{"openid": "o1", "extra": 1}"#, "unknown field"),
            (r#"{"openid": "o1", "block": "soon"}"#, "not a duration"),
            (r#"{"openid": "o1", "block": "0s"}"#, "longer than 0s"),
            (r#"{"openid": "o1", "block": "366d"}"#, "longer than 365d"),
        ] {
            let e = ok(body).expect_err(body);
            assert!(e.contains(needle), "{body}: {e}");
        }
        let long = format!(r#"{{"openid": "{}"}}"#, "o".repeat(129));
        assert!(ok(&long).is_err());
    }

    #[test]
    fn admin_token_is_a_bearer_token() {
        let token = Secret::new("0123456789abcdef0123456789abcdef");
        let check = |h: Option<&str>| check_admin_token(h.map(str::as_bytes), &token);
        assert_eq!(
            check(Some("Bearer 0123456789abcdef0123456789abcdef")),
            Ok(())
        );
        assert_eq!(check(None), Err(Reject::TokenMissing));
        assert_eq!(check(Some("Bearer ")), Err(Reject::TokenMissing));
        assert_eq!(check(Some("Basic abc")), Err(Reject::TokenMissing));
        for wrong in [
            "Bearer 0123456789abcdef0123456789abcdeX",
            "Bearer 0123456789abcdef",
            "Bearer 0123456789abcdef0123456789abcdef0",
        ] {
            assert_eq!(
                check(Some(wrong)),
                Err(Reject::Token(TokenProblem::BadSignature)),
                "{wrong}"
            );
        }
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            super::escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}

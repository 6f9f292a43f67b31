//! The WeChat API relay (`[relay] listen`): upstream apps call WeChat's own paths here, with no
//! access token, and the relay adds the app's one shared token (see `wechat::access_token`), so
//! no app ever fetches, holds or invalidates a token. It also serves as a forward proxy for
//! `http://api.weixin.qq.com/...` (absolute-form targets, or `Host: api.weixin.qq.com`), so
//! code written for WeChat Cloud Hosting's open API service runs unchanged with `HTTP_PROXY`.
//!
//! A Pingora listening service, like the admin listener, but implementing `HttpServerApp`
//! itself: Pingora's `ServeHttp` glue logs the request target, query included, when an answer
//! cannot be written, and the relay never logs query strings. WeChat's answer is buffered (they
//! are small; a wxacode PNG is tens of KiB). A call refused for its token (40001/42001) is
//! retried once with a new token when its body was kept whole (up to [`MAX_KEPT_BODY`]); a larger
//! body is streamed to WeChat as it arrives (up to [`MAX_BODY`], 413 beyond) and its call is not
//! retried. The token and the query string are never logged; the path is logged only once it is
//! in `relay.allow`.

use crate::auth::Login;
use crate::config::RelayConfig;
use crate::metrics::METRICS;
use crate::proxy::request_id::{self, request_id};
use crate::proxy::{Live, Snapshot};
use crate::reply::Reject;
use crate::secret::Secret;
use crate::wechat::{RelayBody, Relayed, WechatError};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderValue, Response, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The host an app's code calls; as a forward proxy the relay serves no other.
pub const WECHAT_HOST: &str = "api.weixin.qq.com";
/// The header every relay answer carries (as Cloud Hosting's open API service does), so that an
/// app can tell the relay answered: the request id.
pub const SEQID_HEADER: &str = "x-openapi-seqid";
/// Picks the mini program when several are configured (default: the first).
pub const APPID_HEADER: &str = "x-wx-appid";
/// The largest request body kept whole, so that a call refused for its token can be sent again;
/// WeChat's JSON APIs take far less.
pub const MAX_KEPT_BODY: usize = 1024 * 1024;
/// The largest request body relayed at all (streamed past [`MAX_KEPT_BODY`]): WeChat's media
/// uploads take up to 10 MB.
pub const MAX_BODY: u64 = 16 * 1024 * 1024;
/// How long the relay waits for a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Query parameters the app may have sent that carry a token of its own: removed.
const TOKEN_PARAMS: [&str; 2] = ["access_token", "cloudbase_access_token"];
/// What stays unescaped of the token in the query (WeChat's tokens are URL-safe anyway).
const TOKEN_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub struct RelayApp {
    live: Live,
    /// The main listeners' header deadline and idle timeout.
    options: HttpServerOptions,
}

impl RelayApp {
    pub fn new(live: Live, options: HttpServerOptions) -> Self {
        RelayApp { live, options }
    }
}

/// Whether `peer` may call the relay.
pub fn client_allowed(peer: Option<IpAddr>, relay: &RelayConfig) -> Result<(), Reject> {
    match peer {
        Some(ip) if relay.allow_from.iter().any(|net| net.contains(&ip)) => Ok(()),
        _ => Err(Reject::RelayClientNotAllowed),
    }
}

/// The allowed path a request names. An absolute-form target (`GET http://api.weixin.qq.com/...`,
/// as sent through `HTTP_PROXY`; `raw_target` is the request line's target as sent, Pingora's
/// `uri` keeping only its path and query) must name WeChat's host; any other target is WeChat's
/// path as it is (the `Host` header does not matter). Paths match `relay.allow` exactly,
/// undecoded. Pure.
pub fn allowed_path<'a>(
    raw_target: &[u8],
    uri: &http::Uri,
    relay: &'a RelayConfig,
) -> Result<&'a str, Reject> {
    let lower = raw_target
        .iter()
        .take(8)
        .map(u8::to_ascii_lowercase)
        .collect::<Vec<_>>();
    if lower.starts_with(b"http://") || lower.starts_with(b"https://") {
        let target = http::Uri::try_from(raw_target).map_err(|_| Reject::RelayHostNotAllowed)?;
        let host = target.authority().map(|a| a.host()).unwrap_or_default();
        if !host.eq_ignore_ascii_case(WECHAT_HOST) {
            return Err(Reject::RelayHostNotAllowed);
        }
    }
    relay
        .allow
        .iter()
        .find(|p| *p == uri.path())
        .map(String::as_str)
        .ok_or(Reject::RelayPathNotAllowed)
}

/// The query without any token parameter the app sent (names compared percent-decoded), the
/// rest kept exactly as written. Pure.
pub fn without_tokens(query: Option<&str>) -> String {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            !TOKEN_PARAMS.contains(&name.as_ref())
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The path and query sent to WeChat: the app's, with our token added.
pub fn with_token(path: &str, query: &str, token: &Secret) -> String {
    let token = percent_encoding::utf8_percent_encode(token.expose(), TOKEN_ESCAPE);
    if query.is_empty() {
        format!("{path}?access_token={token}")
    } else {
        format!("{path}?{query}&access_token={token}")
    }
}

/// WeChat's `errcode` in a JSON answer (0 when it has none), `None` for any other answer (a
/// PNG, say). Only the field is read: the body passes on untouched. Pure.
pub fn errcode_of(body: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Errcode {
        #[serde(default)]
        errcode: i64,
    }
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'{' || body.len() > 64 * 1024 {
        return None;
    }
    serde_json::from_slice::<Errcode>(body)
        .ok()
        .map(|e| e.errcode)
}

/// The app a relay request is for: `X-WX-APPID` names it, else the first.
pub fn app_of<'a>(
    snap: &'a Snapshot,
    appid: Option<&HeaderValue>,
) -> Result<&'a Arc<Login>, Reject> {
    match appid {
        None => Ok(snap.apps.first()),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|appid| snap.apps.by_appid(appid.trim()))
            .map(|app| &app.login)
            .ok_or(Reject::UnknownApp),
    }
}

/// What became of one relay request, for the answer, the metrics and the log line.
struct Outcome {
    /// The allowed path, once it is known to be one.
    path: Option<String>,
    errcode: String,
    retried: bool,
}

impl RelayApp {
    async fn relay(
        &self,
        session: &mut ServerSession,
        snap: &Snapshot,
        relay: &RelayConfig,
        outcome: &mut Outcome,
    ) -> Result<Relayed, Reject> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        client_allowed(peer, relay)?;
        let req = session.req_header();
        if req.method == http::Method::CONNECT {
            // HTTPS through the proxy would hide the path; apps call http://api.weixin.qq.com.
            return Err(Reject::MethodNotAllowed);
        }
        let path = allowed_path(req.raw_path(), &req.uri, relay)?;
        outcome.path = Some(path.to_string());
        let login = app_of(snap, req.headers.get(APPID_HEADER))?.clone();
        let method = req.method.clone();
        let query = without_tokens(req.uri.query());
        let content_type = req.headers.get(http::header::CONTENT_TYPE).cloned();
        let declared = declared_length(session);
        let read = read_body(session, declared).await?;
        let tokens = login.access_tokens();
        let call = Call {
            method,
            path,
            query: &query,
            content_type: content_type.as_ref(),
            timeout: relay.timeout,
        };
        let token = tokens.get().await.map_err(|e| outcome.failed(e))?;
        let answer = match read {
            Read::Whole(body) => {
                let kept = RelayBody::Kept(body.clone());
                let mut answer = call
                    .send(&login, &token, kept)
                    .await
                    .map_err(|e| outcome.failed(e))?;
                if matches!(errcode_of(&answer.body), Some(40001 | 42001)) {
                    // Refused for the token: drop it everywhere, fetch one (single-flight,
                    // shared through the store) and send once more. The body was kept whole.
                    tracing::info!("relay: access token refused by WeChat; fetching a new one");
                    tokens.invalidate(&token).await;
                    outcome.retried = true;
                    let token = tokens.get().await.map_err(|e| outcome.failed(e))?;
                    answer = call
                        .send(&login, &token, RelayBody::Kept(body))
                        .await
                        .map_err(|e| outcome.failed(e))?;
                }
                answer
            }
            Read::Started(first) => {
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let rest = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                let first_len = first.len() as u64;
                let body = futures::stream::once(async move { Ok(first) }).chain(rest);
                let streamed = RelayBody::Streamed {
                    body: reqwest::Body::wrap_stream(body),
                    length: declared,
                };
                let (answer, pumped) = tokio::join!(
                    call.send(&login, &token, streamed),
                    pump(session, first_len, tx)
                );
                pumped?;
                let answer = answer.map_err(|e| outcome.failed(e))?;
                if matches!(errcode_of(&answer.body), Some(40001 | 42001)) {
                    // The body is gone: the answer passes on, the next call gets a new token.
                    tracing::info!(
                        "relay: access token refused by WeChat; not retried (body streamed)"
                    );
                    tokens.invalidate(&token).await;
                }
                answer
            }
        };
        outcome.errcode = errcode_of(&answer.body).unwrap_or(0).to_string();
        Ok(answer)
    }
}

/// One relayed call, sent with a token (once, or twice after a token refusal).
struct Call<'a> {
    method: http::Method,
    path: &'a str,
    query: &'a str,
    content_type: Option<&'a HeaderValue>,
    timeout: Duration,
}

impl Call<'_> {
    async fn send(
        &self,
        login: &Login,
        token: &Secret,
        body: RelayBody,
    ) -> Result<Relayed, WechatError> {
        let target = with_token(self.path, self.query, token);
        login
            .wechat()
            .relay(
                self.method.clone(),
                target,
                self.content_type,
                body,
                self.timeout,
            )
            .await
    }
}

/// What was read of a request body: all of it, or its first part with more to come.
enum Read {
    Whole(Bytes),
    Started(Bytes),
}

fn declared_length(session: &ServerSession) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Pass the rest of a body on as it arrives, [`MAX_BODY`] in all at most. WeChat answering
/// before reading it all (the receiver dropped) ends it quietly.
async fn pump(
    session: &mut ServerSession,
    mut read: u64,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), Reject> {
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                read += chunk.len() as u64;
                if read > MAX_BODY {
                    let _ = tx.send(Err(std::io::Error::other("body too large"))).await;
                    return Err(Reject::BodyTooLarge);
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::debug!("relay: reading a request body failed: {e}");
                let _ = tx.send(Err(std::io::Error::other("body failed"))).await;
                return Err(Reject::BadRequest { status: 400 });
            }
        }
    }
}

/// Read the body until it ends, or until more than [`MAX_KEPT_BODY`] bytes came (the rest is
/// then streamed); a declared length over [`MAX_BODY`] is refused before anything is read.
async fn read_body(session: &mut ServerSession, declared: Option<u64>) -> Result<Read, Reject> {
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(Reject::BodyTooLarge);
    }
    session.set_read_timeout(Some(BODY_TIMEOUT));
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_KEPT_BODY {
                    return Ok(Read::Started(body.freeze()));
                }
            }
            Ok(None) => return Ok(Read::Whole(body.freeze())),
            Err(e) => {
                tracing::debug!("relay: reading a request body failed: {e}");
                return Err(Reject::BadRequest { status: 400 });
            }
        }
    }
}

impl Outcome {
    /// Record how WeChat (or the token fetch) failed, as the envelope that answers it.
    fn failed(&mut self, e: WechatError) -> Reject {
        self.errcode = match &e {
            WechatError::Unreachable => "unreachable".into(),
            WechatError::Timeout => "timeout".into(),
            WechatError::BadResponse => "bad_response".into(),
            WechatError::Api(code) => code.to_string(),
        };
        e.into()
    }
}

#[async_trait]
impl HttpServerApp for RelayApp {
    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!("relay: cannot read a request: {e}");
                return None;
            }
        }
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let (parts, body) = self.answer(&mut http).await.into_parts();
        let head: ResponseHeader = parts.into();
        if let Err(e) = http.write_response_header(Box::new(head)).await {
            tracing::debug!("relay: cannot write an answer: {e}");
            return None;
        }
        if !body.is_empty() {
            if let Err(e) = http.write_response_body(body.into(), true).await {
                tracing::debug!("relay: cannot write an answer: {e}");
                return None;
            }
        }
        let settings = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                tracing::debug!("relay: cannot finish an answer: {e}");
                None
            }
        }
    }
}

impl RelayApp {
    /// The answer to one request, logged and counted.
    async fn answer(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let started = Instant::now();
        let id = request_id(None);
        let snap = self.live.load_full();
        let mut outcome = Outcome {
            path: None,
            errcode: "refused".into(),
            retried: false,
        };
        let result = match &snap.config.relay {
            Some(relay) => self.relay(session, &snap, relay, &mut outcome).await,
            // Turned off by a reload: the listener stays until the next start.
            None => Err(Reject::NoRoute),
        };
        let resp = match result {
            Ok(answer) => {
                let mut builder = Response::builder()
                    .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY))
                    .header(http::header::CONTENT_LENGTH, answer.body.len());
                if let Some(ct) = answer.content_type {
                    builder = builder.header(http::header::CONTENT_TYPE, ct);
                }
                builder.body(answer.body.to_vec())
            }
            Err(r) => {
                if has_body(session) {
                    // An unread body would have to be drained before the connection is reused.
                    session.set_keepalive(None);
                }
                let mut builder = Response::builder()
                    .status(StatusCode::from_u16(r.status()).unwrap_or(StatusCode::FORBIDDEN))
                    .header(http::header::CONTENT_TYPE, crate::reply::JSON_CONTENT_TYPE)
                    .header(http::header::CACHE_CONTROL, "no-store");
                for (name, value) in r.headers(Some("GET, POST")) {
                    builder = builder.header(name, value.as_ref());
                }
                let body = r.body();
                builder
                    .header(http::header::CONTENT_LENGTH, body.len())
                    .body(body.to_vec())
            }
        };
        let mut resp = resp.unwrap_or_else(|_| {
            let mut r = Response::new(Reject::Internal.body().to_vec());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        });
        resp.headers_mut().insert(SEQID_HEADER, id.clone());
        resp.headers_mut().insert(&request_id::NAME, id.clone());
        let path = outcome.path.as_deref().unwrap_or("other");
        let took = started.elapsed();
        METRICS
            .relay_requests
            .with_label_values(&[path, &outcome.errcode])
            .inc();
        if outcome.path.is_some() {
            METRICS
                .relay_duration
                .with_label_values(&[path])
                .observe(took.as_secs_f64());
        }
        // The allowed path only: never the query (it may carry a token) nor a refused path.
        tracing::info!(
            request_id = request_id::as_str(&id),
            path,
            status = resp.status().as_u16(),
            errcode = outcome.errcode.as_str(),
            retried = outcome.retried,
            ms = took.as_millis() as u64,
            "relay"
        );
        resp
    }
}

fn has_body(session: &ServerSession) -> bool {
    let headers = &session.req_header().headers;
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> RelayConfig {
        RelayConfig {
            listen: "127.0.0.1:9902".parse().unwrap(),
            allow: vec!["/wxa/msg_sec_check".into(), "/wxa/getwxacodeunlimit".into()],
            allow_from: vec![
                "127.0.0.1/32".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            timeout: Duration::from_secs(5),
        }
    }

    fn uri(text: &str) -> http::Uri {
        text.parse().unwrap()
    }

    #[test]
    fn paths_match_the_allow_list_exactly() {
        let r = relay();
        // As Pingora hands them over: the raw target, and a Uri of its path and query.
        let check = |target: &str| {
            let path_and_query = match target.find("://") {
                Some(i) => {
                    let rest = &target[i + 3..];
                    &rest[rest.find('/').unwrap_or(rest.len())..]
                }
                None => target,
            };
            allowed_path(target.as_bytes(), &uri(path_and_query), &r)
        };
        assert_eq!(check("/wxa/msg_sec_check?x=1"), Ok("/wxa/msg_sec_check"));
        assert_eq!(
            check("http://api.weixin.qq.com/wxa/msg_sec_check"),
            Ok("/wxa/msg_sec_check")
        );
        assert_eq!(
            check("HTTP://API.weixin.qq.com:80/wxa/getwxacodeunlimit?a=b"),
            Ok("/wxa/getwxacodeunlimit")
        );
        for refused in [
            "/cgi-bin/token",
            "/wxa/msg_sec_check/",
            "/wxa/msg%5Fsec_check",
            "/wxa/../wxa/msg_sec_check",
            "/WXA/msg_sec_check",
            "http://api.weixin.qq.com/cgi-bin/token",
        ] {
            assert_eq!(
                check(refused),
                Err(Reject::RelayPathNotAllowed),
                "{refused}"
            );
        }
        for other in [
            "http://example.com/wxa/msg_sec_check",
            "https://api.weixin.qq.com.evil.com/wxa/msg_sec_check",
        ] {
            assert_eq!(check(other), Err(Reject::RelayHostNotAllowed), "{other}");
        }
    }

    #[test]
    fn the_apps_tokens_are_removed_and_ours_added() {
        assert_eq!(without_tokens(None), "");
        assert_eq!(
            without_tokens(Some("access_token=x&a=1&cloudbase_access_token=y&b=%20")),
            "a=1&b=%20"
        );
        assert_eq!(without_tokens(Some("access%5Ftoken=x&&c")), "c");
        assert_eq!(without_tokens(Some("access_tokens=1")), "access_tokens=1");
        let t = Secret::new("ab-_c+/=");
        assert_eq!(with_token("/p", "", &t), "/p?access_token=ab-_c%2B%2F%3D");
        assert_eq!(
            with_token("/p", "a=1", &t),
            "/p?a=1&access_token=ab-_c%2B%2F%3D"
        );
    }

    #[test]
    fn errcodes_are_read_from_json_answers_only() {
        assert_eq!(
            errcode_of(br#"{"errcode":40001,"errmsg":"x"}"#),
            Some(40001)
        );
        assert_eq!(errcode_of(br#" {"errcode":0}"#), Some(0));
        assert_eq!(errcode_of(br#"{"result":{}}"#), Some(0));
        assert_eq!(errcode_of(b"\x89PNG\r\n\x1a\n"), None);
        assert_eq!(errcode_of(b"{not json"), None);
        assert_eq!(errcode_of(b""), None);
    }

    #[test]
    fn only_allowed_addresses_may_call() {
        let r = relay();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(client_allowed(ip("127.0.0.1"), &r), Ok(()));
        assert_eq!(client_allowed(ip("10.2.3.4"), &r), Ok(()));
        for refused in [ip("192.168.1.1"), ip("::1"), None] {
            assert_eq!(
                client_allowed(refused, &r),
                Err(Reject::RelayClientNotAllowed)
            );
        }
    }
}

//! A stand-in for `api.weixin.qq.com`: `jscode2session` with WeChat's quirks (HTTP 200 for every
//! answer, `text/plain` JSON, single-use codes, `rid` suffixes) and test hooks chosen by the code.
//!
//! Codes that steer the mock (prefixes compose, e.g. `slow200-union-alice.1`):
//! - `slow<ms>-<rest>`: wait `ms` milliseconds (at most 60 s in total), then go on with `<rest>`;
//! - `err<N>-<rest>`: answer errcode `N` (`err-1-x`, `err45011-x`); the code is not consumed;
//! - `html-<rest>`: answer 502 with an nginx HTML page, as WeChat's front proxy does in an outage;
//! - `garbage-<rest>`: answer 200 with a body that is not JSON;
//! - `union-<rest>`: log in as usual and add a `unionid`.
//!
//! Any other code logs in once; the user is the part before the first `.`, so `alice.1` and
//! `alice.2` are two codes of one user with one `openid`.
//!
//! `GET /__mock/stats` and `POST /__mock/reset` let tests count the calls the gateway made.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Longest `js_code` the mock accepts; longer ones get errcode 40029 like any malformed code.
const MAX_CODE_LEN: usize = 128;
/// Upper bound for `slow<ms>-` so that a typo cannot hang a test run.
const MAX_DELAY: Duration = Duration::from_millis(60_000);

/// What the mock checks besides the code. `None` accepts any value, `Some` demands that value,
/// so a test can provoke errcode 40013 / 40125 by pointing the gateway at the wrong credentials.
#[derive(Clone, Debug, Default)]
pub struct MockWechatOptions {
    pub appid: Option<String>,
    pub secret: Option<String>,
}

/// Serves the mock WeChat API on `listener` until the task is dropped or the listener fails.
pub async fn serve_wechat(
    listener: tokio::net::TcpListener,
    opts: MockWechatOptions,
) -> std::io::Result<()> {
    axum::serve(listener, wechat_router(opts)).await
}

/// The mock WeChat API as a router, with fresh counters and no used codes.
pub fn wechat_router(opts: MockWechatOptions) -> Router {
    let state = Arc::new(MockState {
        opts,
        counters: Counters::default(),
        used_codes: Mutex::new(HashSet::new()),
    });
    Router::new()
        .route("/sns/jscode2session", get(jscode2session))
        .route("/__mock/stats", get(stats))
        .route("/__mock/reset", post(reset))
        .fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

struct MockState {
    opts: MockWechatOptions,
    counters: Counters,
    /// Every code that ever logged in: WeChat codes are single-use, and tests rely on 40163.
    used_codes: Mutex<HashSet<String>>,
}

impl MockState {
    /// Marks `code` used; false when it already was. Check and insert happen under one lock so
    /// that of two concurrent exchanges of one code exactly one wins, as at WeChat.
    fn claim_code(&self, code: &str) -> bool {
        self.used_codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(code.to_owned())
    }
}

/// Calls received per API. A new API gets a field here and a line in `snapshot` and `reset`.
#[derive(Debug, Default)]
struct Counters {
    jscode2session: AtomicU64,
}

/// The JSON shape of `GET /__mock/stats`.
#[derive(Debug, Serialize)]
struct Stats {
    jscode2session: u64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            jscode2session: self.jscode2session.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        self.jscode2session.store(0, Ordering::Relaxed);
    }
}

/// What a (valid-looking) code asks the mock to do, once its prefixes are read.
#[derive(Debug, PartialEq, Eq)]
enum Plan<'a> {
    /// Answer this errcode.
    Fail(i64),
    /// Answer 502 with an HTML page.
    Html,
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Log in as the user named by `code` (the text left after the prefixes).
    Login { code: &'a str, union: bool },
}

/// Reads the steering prefixes off `code`: how long to wait first, then what to answer.
fn plan(mut code: &str) -> (Duration, Plan<'_>) {
    let mut delay = Duration::ZERO;
    let mut union = false;
    loop {
        if let Some((ms, rest)) = code
            .strip_prefix("slow")
            .and_then(|s| split_number(s, false))
        {
            // Too many digits for u64 is still "very slow": clamp rather than ignore.
            let ms = ms.parse::<u64>().unwrap_or(u64::MAX);
            delay = delay
                .saturating_add(Duration::from_millis(ms))
                .min(MAX_DELAY);
            code = rest;
        } else if let Some(errcode) = code
            .strip_prefix("err")
            .and_then(|s| split_number(s, true))
            .and_then(|(n, _)| n.parse::<i64>().ok())
        {
            return (delay, Plan::Fail(errcode));
        } else if code.starts_with("html-") {
            return (delay, Plan::Html);
        } else if code.starts_with("garbage-") {
            return (delay, Plan::Garbage);
        } else if let Some(rest) = code.strip_prefix("union-") {
            union = true;
            code = rest;
        } else {
            return (delay, Plan::Login { code, union });
        }
    }
}

/// Splits `<digits>-<rest>` (with an optional leading `-` when `signed`) into the number's text
/// and `<rest>`; `None` when `s` does not start that way.
fn split_number(s: &str, signed: bool) -> Option<(&str, &str)> {
    let sign_len = usize::from(signed && s.starts_with('-'));
    let digits = s
        .get(sign_len..)?
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if digits == 0 {
        return None;
    }
    let (number, rest) = s.split_at_checked(sign_len + digits)?;
    Some((number, rest.strip_prefix('-')?))
}

/// The user a login code belongs to: the text before the first `.`, or the whole code.
fn user_of(code: &str) -> &str {
    code.split('.').next().unwrap_or(code)
}

/// A stable 28-character id: `prefix` and 27 characters of base64url(sha256(material)).
fn derive_id(prefix: char, material: &str) -> String {
    let encoded = URL_SAFE_NO_PAD.encode(Sha256::digest(material.as_bytes()));
    std::iter::once(prefix)
        .chain(encoded.chars().take(27))
        .collect()
}

fn openid(appid: &str, user: &str) -> String {
    derive_id('o', &format!("{appid}:{user}"))
}

fn unionid(user: &str) -> String {
    derive_id('u', &format!("union:{user}"))
}

fn valid_code_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// WeChat's request id, shaped like the real ones (`rid: 6512a3b4-1a2b3c4d-5e6f7a8b`): it changes
/// on every answer, which is why clients must never match on `errmsg`.
fn rid() -> String {
    let [a, b, c]: [u32; 3] = rand::random();
    format!("{a:08x}-{b:08x}-{c:08x}")
}

/// An answer as WeChat sends it: JSON text labelled `text/plain`.
fn wechat_reply(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// A WeChat error: HTTP 200, the errcode in the body.
fn wechat_error(errcode: i64, msg: &str) -> Response {
    let body = json!({ "errcode": errcode, "errmsg": format!("{msg} rid: {}", rid()) });
    wechat_reply(StatusCode::OK, body.to_string())
}

const HTML_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

async fn jscode2session(
    State(state): State<Arc<MockState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    state
        .counters
        .jscode2session
        .fetch_add(1, Ordering::Relaxed);
    // A query that does not parse is answered like one without the fields.
    let params = query.map(|Query(params)| params).unwrap_or_default();
    let param = |name: &str| params.get(name).map(String::as_str);

    let appid = param("appid");
    if state
        .opts
        .appid
        .as_deref()
        .is_some_and(|want| appid != Some(want))
    {
        return wechat_error(40013, "invalid appid");
    }
    if (state.opts.secret.as_deref()).is_some_and(|want| param("secret") != Some(want)) {
        return wechat_error(40125, "invalid appsecret");
    }
    if param("grant_type") != Some("authorization_code") {
        return wechat_error(40002, "invalid grant_type");
    }
    let full_code = match param("js_code") {
        Some(code) if !code.is_empty() => code,
        _ => return wechat_error(41008, "missing code"),
    };
    if full_code.len() > MAX_CODE_LEN || !full_code.bytes().all(valid_code_char) {
        return wechat_error(40029, "invalid code");
    }

    let (delay, plan) = plan(full_code);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (code, union) = match plan {
        Plan::Fail(errcode) => return wechat_error(errcode, "mock error"),
        Plan::Html => {
            return (
                StatusCode::BAD_GATEWAY,
                [(header::CONTENT_TYPE, "text/html")],
                HTML_502,
            )
                .into_response()
        }
        Plan::Garbage => return wechat_reply(StatusCode::OK, "this is not json".to_owned()),
        Plan::Login { code, union } => (code, union),
    };
    if code.is_empty() {
        // Only prefixes, e.g. `union-`: nothing names a user.
        return wechat_error(40029, "invalid code");
    }
    if !state.claim_code(full_code) {
        return wechat_error(40163, "code been used");
    }

    let user = user_of(code);
    let mut body = Map::new();
    body.insert(
        "session_key".to_owned(),
        Value::String(STANDARD.encode(rand::random::<[u8; 16]>())),
    );
    body.insert(
        "openid".to_owned(),
        Value::String(openid(appid.unwrap_or_default(), user)),
    );
    if union {
        body.insert("unionid".to_owned(), Value::String(unionid(user)));
    }
    tracing::debug!(user, union, "mock wechat: jscode2session login");
    wechat_reply(StatusCode::OK, Value::Object(body).to_string())
}

async fn stats(State(state): State<Arc<MockState>>) -> Json<Stats> {
    Json(state.counters.snapshot())
}

async fn reset(State(state): State<Arc<MockState>>) -> Json<Value> {
    state.counters.reset();
    Json(json!({ "ok": true }))
}

async fn unknown_path() -> Response {
    wechat_reply(
        StatusCode::NOT_FOUND,
        json!({ "errcode": -1, "errmsg": "mock: unknown path" }).to_string(),
    )
}

async fn method_not_allowed() -> Response {
    wechat_reply(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({ "errcode": -1, "errmsg": "mock: method not allowed" }).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::net::TcpListener;

    use crate::mock::testing::{exchange, Reply};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const APPID: &str = "wxmockappid0001";

    async fn spawn(opts: MockWechatOptions) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve_wechat(listener, opts));
        Ok(addr)
    }

    /// `method target` with no body, over a fresh connection.
    async fn request(addr: SocketAddr, method: &str, target: &str) -> std::io::Result<Reply> {
        exchange(addr, &format!("{method} {target} HTTP/1.1"), b"").await
    }

    fn login_target(appid: &str, code: &str) -> String {
        format!(
            "/sns/jscode2session?appid={appid}&secret=s3cret&js_code={code}\
             &grant_type=authorization_code"
        )
    }

    async fn login(addr: SocketAddr, code: &str) -> std::io::Result<Reply> {
        request(addr, "GET", &login_target(APPID, code)).await
    }

    fn errcode(reply: &Reply) -> Option<i64> {
        reply.json().ok()?.get("errcode")?.as_i64()
    }

    #[tokio::test]
    async fn normal_login_answers_text_plain_json() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let reply = login(addr, "alice.1").await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        let body = reply.json()?;
        assert_eq!(body.get("errcode"), None);
        assert_eq!(body.get("unionid"), None);
        let openid = body["openid"].as_str().ok_or("no openid")?;
        assert_eq!(openid.len(), 28);
        assert!(openid.starts_with('o'));
        let key = body["session_key"].as_str().ok_or("no session_key")?;
        assert_eq!(STANDARD.decode(key)?.len(), 16);
        Ok(())
    }

    #[tokio::test]
    async fn reused_code_gets_40163() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        assert_eq!(errcode(&login(addr, "bob").await?), None);
        let again = login(addr, "bob").await?;
        assert_eq!(again.status, 200);
        assert_eq!(again.header("content-type"), Some("text/plain"));
        assert_eq!(errcode(&again), Some(40163));
        Ok(())
    }

    #[tokio::test]
    async fn one_user_keeps_one_openid_across_codes() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let first = login(addr, "carol.1").await?.json()?;
        let second = login(addr, "carol.2").await?.json()?;
        let other = login(addr, "dave.1").await?.json()?;
        assert_eq!(first["openid"], second["openid"]);
        assert_ne!(first["openid"], other["openid"]);
        assert_ne!(first["session_key"], second["session_key"]);
        assert_eq!(
            first["openid"].as_str(),
            Some(openid(APPID, "carol").as_str())
        );

        let elsewhere = request(addr, "GET", &login_target("wxotherapp", "carol.3"))
            .await?
            .json()?;
        assert_ne!(first["openid"], elsewhere["openid"]);
        Ok(())
    }

    #[tokio::test]
    async fn err_prefix_answers_that_errcode_without_consuming() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        for (code, want) in [
            ("err-1-x", -1),
            ("err-1-x", -1),
            ("err40029-x", 40029),
            ("err45011-x", 45011),
            ("err40226-x", 40226),
        ] {
            let reply = login(addr, code).await?;
            assert_eq!(reply.status, 200, "{code}");
            assert_eq!(reply.header("content-type"), Some("text/plain"));
            let body = reply.json()?;
            assert_eq!(body["errcode"].as_i64(), Some(want), "{code}");
            let msg = body["errmsg"].as_str().ok_or("no errmsg")?;
            assert!(msg.starts_with("mock error rid: "), "{msg}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn union_prefix_adds_a_stable_unionid() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let first = login(addr, "union-erin.1").await?.json()?;
        let second = request(addr, "GET", &login_target("wxotherapp", "union-erin.2"))
            .await?
            .json()?;
        let unionid = first["unionid"].as_str().ok_or("no unionid")?;
        assert_eq!(unionid.len(), 28);
        assert!(unionid.starts_with('u'));
        assert_eq!(first["unionid"], second["unionid"]);
        assert_ne!(first["openid"], second["openid"]);
        // The prefix is not part of the user: a plain code of the same user has the same openid.
        let plain = login(addr, "erin.3").await?.json()?;
        assert_eq!(first["openid"], plain["openid"]);
        Ok(())
    }

    #[tokio::test]
    async fn slow_prefix_waits_and_composes() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let start = Instant::now();
        let body = login(addr, "slow200-union-frank.1").await?.json()?;
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(body["unionid"].is_string());
        assert!(body["openid"].is_string());
        Ok(())
    }

    #[tokio::test]
    async fn malformed_codes_get_40029() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let long = "a".repeat(MAX_CODE_LEN + 1);
        for code in [
            "bad%21code",
            "sp%20ace",
            "%E4%BD%A0",
            "%FF%FE",
            long.as_str(),
            "union-",
        ] {
            let reply = login(addr, code).await?;
            assert_eq!(reply.status, 200, "{code}");
            assert_eq!(errcode(&reply), Some(40029), "{code}");
        }
        let longest = "b".repeat(MAX_CODE_LEN);
        assert_eq!(errcode(&login(addr, &longest).await?), None);
        Ok(())
    }

    #[tokio::test]
    async fn html_prefix_gives_502_text_html() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let reply = login(addr, "html-x").await?;
        assert_eq!(reply.status, 502);
        assert_eq!(reply.header("content-type"), Some("text/html"));
        assert!(String::from_utf8_lossy(&reply.body).contains("502 Bad Gateway"));
        Ok(())
    }

    #[tokio::test]
    async fn garbage_prefix_gives_a_body_that_is_not_json() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let reply = login(addr, "garbage-x").await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        assert_eq!(reply.body, b"this is not json");
        Ok(())
    }

    #[tokio::test]
    async fn configured_credentials_and_missing_fields() -> TestResult {
        let addr = spawn(MockWechatOptions {
            appid: Some(APPID.to_owned()),
            secret: Some("s3cret".to_owned()),
        })
        .await?;
        let cases = [
            (login_target("wxwrong", "g.1"), 40013),
            (
                "/sns/jscode2session?secret=s3cret&js_code=g.1&grant_type=authorization_code"
                    .to_owned(),
                40013,
            ),
            (login_target(APPID, "g.1").replace("s3cret", "wrong"), 40125),
            (
                login_target(APPID, "g.1").replace("authorization_code", "client_credential"),
                40002,
            ),
            (
                format!("/sns/jscode2session?appid={APPID}&secret=s3cret&js_code=g.1"),
                40002,
            ),
            (
                format!(
                    "/sns/jscode2session?appid={APPID}&secret=s3cret&grant_type=authorization_code"
                ),
                41008,
            ),
            (login_target(APPID, ""), 41008),
            (
                "/sns/jscode2session?%zz&appid=%ff%fe&&=&js_code".to_owned(),
                40013,
            ),
        ];
        for (target, want) in cases {
            let reply = request(addr, "GET", &target).await?;
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(errcode(&reply), Some(want), "{target}");
        }
        assert_eq!(errcode(&login(addr, "g.1").await?), None);
        Ok(())
    }

    #[tokio::test]
    async fn stats_count_calls_and_reset_keeps_used_codes() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let stats = request(addr, "GET", "/__mock/stats").await?;
        assert_eq!(stats.header("content-type"), Some("application/json"));
        assert_eq!(stats.json()?, json!({ "jscode2session": 0 }));

        login(addr, "henry.1").await?;
        login(addr, "henry.1").await?;
        login(addr, "err-1-x").await?;
        request(addr, "GET", "/sns/jscode2session").await?;
        let stats = request(addr, "GET", "/__mock/stats").await?.json()?;
        assert_eq!(stats, json!({ "jscode2session": 4 }));

        let reset = request(addr, "POST", "/__mock/reset").await?;
        assert_eq!(reset.json()?, json!({ "ok": true }));
        let stats = request(addr, "GET", "/__mock/stats").await?.json()?;
        assert_eq!(stats, json!({ "jscode2session": 0 }));
        assert_eq!(errcode(&login(addr, "henry.1").await?), Some(40163));
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_exchanges_of_one_code_have_one_winner() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        for round in 0..5 {
            let code = format!("slow50-ivy.{round}");
            let (a, b) = tokio::join!(login(addr, &code), login(addr, &code));
            let mut codes = [errcode(&a?), errcode(&b?)];
            codes.sort();
            assert_eq!(codes, [None, Some(40163)], "{code}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn unknown_path_and_method() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let reply = request(addr, "GET", "/cgi-bin/nope?x=%zz").await?;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        assert_eq!(
            reply.json()?,
            json!({ "errcode": -1, "errmsg": "mock: unknown path" })
        );
        let reply = request(addr, "DELETE", "/sns/jscode2session").await?;
        assert_eq!(reply.status, 405);
        assert_eq!(errcode(&reply), Some(-1));
        Ok(())
    }

    #[test]
    fn plan_reads_prefixes() {
        let login = |code, union| Plan::Login { code, union };
        assert_eq!(plan("alice.1"), (Duration::ZERO, login("alice.1", false)));
        assert_eq!(plan("err-1-x"), (Duration::ZERO, Plan::Fail(-1)));
        assert_eq!(plan("err40029-"), (Duration::ZERO, Plan::Fail(40029)));
        assert_eq!(
            plan("slow200-union-alice.1"),
            (Duration::from_millis(200), login("alice.1", true))
        );
        assert_eq!(
            plan("union-slow5-err45011-x"),
            (Duration::from_millis(5), Plan::Fail(45011))
        );
        assert_eq!(
            plan("slow99999999999999999999999-html-x"),
            (MAX_DELAY, Plan::Html)
        );
        assert_eq!(plan("garbage-"), (Duration::ZERO, Plan::Garbage));
        // Not prefixes: plain codes that happen to start alike.
        assert_eq!(plan("slowpoke"), (Duration::ZERO, login("slowpoke", false)));
        assert_eq!(plan("slow12"), (Duration::ZERO, login("slow12", false)));
        assert_eq!(plan("err-x"), (Duration::ZERO, login("err-x", false)));
        assert_eq!(plan("errand.1"), (Duration::ZERO, login("errand.1", false)));
        assert_eq!(
            plan("err99999999999999999999-x"),
            (Duration::ZERO, login("err99999999999999999999-x", false))
        );
        assert_eq!(plan("htmlx"), (Duration::ZERO, login("htmlx", false)));
    }

    #[test]
    fn ids_are_stable_and_28_chars() {
        assert_eq!(openid("wx1", "alice"), openid("wx1", "alice"));
        assert_ne!(openid("wx1", "alice"), openid("wx2", "alice"));
        assert_eq!(openid("wx1", "alice").len(), 28);
        assert_eq!(unionid("alice").len(), 28);
        assert_eq!(user_of("alice.1.2"), "alice");
        assert_eq!(user_of("alice"), "alice");
        assert_eq!(user_of(".x"), "");
    }
}

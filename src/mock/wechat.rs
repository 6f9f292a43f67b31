//! A stand-in for `api.weixin.qq.com` with WeChat's quirks (HTTP 200 for every API answer, the
//! errcode in the body, `rid` suffixes in `errmsg`, single-use codes) and test hooks chosen by
//! the code.
//!
//! WeChat APIs:
//! - `GET /sns/jscode2session?appid&secret&js_code&grant_type=authorization_code`: login; JSON
//!   labelled `text/plain` as at WeChat;
//! - `POST /cgi-bin/stable_token` (JSON `grant_type`, `appid`, `secret`, `force_refresh`): one
//!   current token per appid, handed out again until `token_ttl / 24` (5 minutes for 7200 s) is
//!   left; `force_refresh: true` mints a new one and invalidates the previous one;
//! - `GET /cgi-bin/token?grant_type=client_credential&appid&secret`: a new token on every call;
//!   the previous one of that appid expires `min(300, token_ttl / 24)` seconds later;
//! - `POST /wxa/business/getuserphonenumber?access_token` (JSON `code`, optional `openid`, which
//!   is not checked): the phone of the user named by the code; phone codes are single-use
//!   (40029 on reuse); errcodes 41001 / 40001 / 42001 for a missing / unknown or invalidated /
//!   expired token, 47001 for a body that is not JSON with a string `code`.
//!
//! Codes that steer the mock, login and phone codes alike (prefixes compose, e.g.
//! `slow200-union-alice.1`):
//! - `slow<ms>-<rest>`: wait `ms` milliseconds (at most 60 s in total), then go on with `<rest>`;
//! - `err<N>-<rest>`: answer errcode `N` (`err-1-x`, `err45011-x`); the code is not consumed;
//! - `html-<rest>`: answer 502 with an nginx HTML page, as WeChat's front proxy does in an outage;
//! - `garbage-<rest>`: answer 200 with a body that is not JSON;
//! - `union-<rest>` (login): log in as usual and add a `unionid`;
//! - `fixedkey-<rest>` (login): log in with WeChat's published sample session_key
//!   `tiihtNczf5v6AKRyjwEUhQ==` instead of a random one;
//! - `numcc-<rest>` (phone): `countryCode` is the number `86` instead of the string `"86"`, as
//!   in WeChat's own example.
//!
//! Any other code succeeds once; the user is the part before the first `.`, so `alice.1` and
//! `alice.2` are two codes of one user, with one `openid` (per appid) and one phone number.
//!
//! Test endpoints (`application/json`):
//! - `GET /__mock/stats` and `POST /__mock/reset`: count the calls the gateway made, per API;
//! - `POST /__mock/invalidate_tokens`: every access token issued so far becomes invalid (40001);
//! - `POST /__mock/encrypt` with `{"openid", "data": {...}, "appid"?}`: plays the WeChat client
//!   in the legacy encrypted-data flow: `data` with a `watermark` added, encrypted with the
//!   latest session_key of that openid; answers `{"encryptedData", "iv"}` (404: no such login).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
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

use crate::wechat::crypto;

/// Longest code the mock accepts; longer ones get errcode 40029 like any malformed code.
const MAX_CODE_LEN: usize = 128;
/// Upper bound for `slow<ms>-` so that a typo cannot hang a test run.
const MAX_DELAY: Duration = Duration::from_millis(60_000);
/// The session_key of WeChat's published encrypted-data sample, for `fixedkey-` logins.
const SAMPLE_SESSION_KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
/// The documented overlap of an old classic access token after a new one was fetched.
const MAX_OVERLAP: Duration = Duration::from_secs(300);
/// Longest token lifetime honoured, so that deadlines cannot overflow `Instant` (ten years).
const MAX_TOKEN_TTL: u64 = 10 * 365 * 24 * 3600;

/// How the APIs label their JSON: jscode2session says `text/plain`, the token APIs add a
/// non-standard `encoding` parameter, the phone API is plain `application/json`.
const TEXT_PLAIN: &str = "text/plain";
const TOKEN_JSON: &str = "application/json; encoding=utf-8";
const PHONE_JSON: &str = "application/json";

/// What the mock checks besides the code, and how it issues tokens. `appid` / `secret`: `None`
/// accepts any value, `Some` demands that value, so a test can provoke errcode 40013 / 40125 by
/// pointing the gateway at the wrong credentials.
#[derive(Clone, Debug)]
pub struct MockWechatOptions {
    pub appid: Option<String>,
    pub secret: Option<String>,
    /// Seconds an access token lives (WeChat: 7200). Also sets the stable token's renewal window
    /// and the classic token's overlap (`token_ttl / 24`, at most 300 s for the latter).
    pub token_ttl: u64,
}

impl Default for MockWechatOptions {
    fn default() -> Self {
        MockWechatOptions {
            appid: None,
            secret: None,
            token_ttl: 7200,
        }
    }
}

/// Serves the mock WeChat API on `listener` until the task is dropped or the listener fails.
pub async fn serve_wechat(
    listener: tokio::net::TcpListener,
    opts: MockWechatOptions,
) -> std::io::Result<()> {
    axum::serve(listener, wechat_router(opts)).await
}

/// The mock WeChat API as a router, with fresh counters, no used codes and no tokens.
pub fn wechat_router(opts: MockWechatOptions) -> Router {
    let state = Arc::new(MockState {
        opts,
        counters: Counters::default(),
        used_codes: Mutex::new(HashSet::new()),
        used_phone_codes: Mutex::new(HashSet::new()),
        sessions: Mutex::new(HashMap::new()),
        tokens: Mutex::new(TokenBook::default()),
    });
    Router::new()
        .route("/sns/jscode2session", get(jscode2session))
        .route("/cgi-bin/stable_token", post(stable_token))
        .route("/cgi-bin/token", get(classic_token))
        .route("/wxa/business/getuserphonenumber", post(getuserphonenumber))
        .route("/__mock/stats", get(stats))
        .route("/__mock/reset", post(reset))
        .route("/__mock/invalidate_tokens", post(invalidate_tokens))
        .route("/__mock/encrypt", post(encrypt))
        .fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

struct MockState {
    opts: MockWechatOptions,
    counters: Counters,
    /// Every code that ever logged in: WeChat codes are single-use, and tests rely on 40163.
    used_codes: Mutex<HashSet<String>>,
    /// Every phone code that ever gave a phone number (kept apart: another kind of code).
    used_phone_codes: Mutex<HashSet<String>>,
    /// The latest login of each openid, for `/__mock/encrypt`.
    sessions: Mutex<HashMap<String, Session>>,
    tokens: Mutex<TokenBook>,
}

/// What a login left behind: the key WeChat would encrypt that user's data with.
#[derive(Clone, Debug)]
struct Session {
    session_key: String,
    appid: String,
}

/// A poisoned lock only means another request panicked; the data is still usable for a mock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks `code` used in `used`; false when it already was. Check and insert happen under one
/// lock so that of two concurrent exchanges of one code exactly one wins, as at WeChat.
fn claim(used: &Mutex<HashSet<String>>, code: &str) -> bool {
    lock(used).insert(code.to_owned())
}

/// Calls received per API. A new API gets a field here and a line in `snapshot` and `reset`.
#[derive(Debug, Default)]
struct Counters {
    jscode2session: AtomicU64,
    stable_token: AtomicU64,
    /// Calls to `stable_token` that passed the checks with `force_refresh: true`.
    stable_token_forced: AtomicU64,
    token: AtomicU64,
    getuserphonenumber: AtomicU64,
}

/// The JSON shape of `GET /__mock/stats`.
#[derive(Debug, Serialize)]
struct Stats {
    jscode2session: u64,
    stable_token: u64,
    stable_token_forced: u64,
    token: u64,
    getuserphonenumber: u64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            jscode2session: self.jscode2session.load(Ordering::Relaxed),
            stable_token: self.stable_token.load(Ordering::Relaxed),
            stable_token_forced: self.stable_token_forced.load(Ordering::Relaxed),
            token: self.token.load(Ordering::Relaxed),
            getuserphonenumber: self.getuserphonenumber.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for counter in [
            &self.jscode2session,
            &self.stable_token,
            &self.stable_token_forced,
            &self.token,
            &self.getuserphonenumber,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// An access token the mock handed out.
#[derive(Clone, Debug)]
struct IssuedToken {
    appid: String,
    expires_at: Instant,
    invalidated: bool,
}

/// Every access token issued, and which one is current per appid for each API. Methods take
/// `now` so that tests can move the clock instead of sleeping.
#[derive(Debug, Default)]
struct TokenBook {
    issued: HashMap<String, IssuedToken>,
    /// appid -> its current stable token.
    stable: HashMap<String, String>,
    /// appid -> its latest classic token.
    classic: HashMap<String, String>,
}

/// What `stable_token` does with the appid's current token.
#[derive(Debug, PartialEq, Eq)]
enum StableAnswer {
    /// Hand it out again; it has `expires_in` whole seconds left.
    Reuse { expires_in: u64 },
    /// Mint a new one.
    Mint,
}

/// The stable token rule. `left` is how long the current token still lives, `None` when there
/// is none or it was invalidated or has expired. It is handed out again until only the renewal
/// window (`ttl / 24`: 5 minutes of 2 hours) is left, so that callers refreshing "a little
/// before expiry" get a fresh token rather than the same dying one.
fn stable_rule(left: Option<Duration>, ttl: u64, force: bool) -> StableAnswer {
    match left {
        Some(left) if !force && left > renew_window(ttl) => StableAnswer::Reuse {
            expires_in: left.as_secs().max(1),
        },
        _ => StableAnswer::Mint,
    }
}

fn renew_window(ttl: u64) -> Duration {
    Duration::from_secs(ttl / 24)
}

/// How long the previous classic token keeps working after a new one was fetched.
fn classic_overlap(ttl: u64) -> Duration {
    renew_window(ttl).min(MAX_OVERLAP)
}

/// `now + after`, saturating at `now` in the (clamped, so theoretical) case of overflow.
fn deadline(now: Instant, after: Duration) -> Instant {
    now.checked_add(after).unwrap_or(now)
}

/// Whether `token` may call an API at `now`: the appid it was issued for, or the errcode.
fn token_verdict(token: Option<&IssuedToken>, now: Instant) -> Result<&str, i64> {
    match token {
        None => Err(40001),
        Some(token) if token.invalidated => Err(40001),
        Some(token) if now >= token.expires_at => Err(42001),
        Some(token) => Ok(&token.appid),
    }
}

impl TokenBook {
    fn mint(&mut self, appid: &str, ttl: u64, now: Instant) -> String {
        let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let expires_at = deadline(now, Duration::from_secs(ttl.min(MAX_TOKEN_TTL)));
        self.issued.insert(
            token.clone(),
            IssuedToken {
                appid: appid.to_owned(),
                expires_at,
                invalidated: false,
            },
        );
        token
    }

    /// `stable_token`: the token to hand out and its `expires_in`.
    fn stable(&mut self, appid: &str, force: bool, ttl: u64, now: Instant) -> (String, u64) {
        let current = self
            .stable
            .get(appid)
            .and_then(|token| Some((token, self.issued.get(token)?)));
        let left = current
            .filter(|(_, issued)| !issued.invalidated)
            .and_then(|(_, issued)| issued.expires_at.checked_duration_since(now))
            .filter(|left| !left.is_zero());
        if let (StableAnswer::Reuse { expires_in }, Some((token, _))) =
            (stable_rule(left, ttl, force), current)
        {
            return (token.clone(), expires_in);
        }
        if force {
            let previous = self.stable.get(appid);
            if let Some(issued) = previous.and_then(|token| self.issued.get_mut(token)) {
                issued.invalidated = true;
            }
        }
        let token = self.mint(appid, ttl, now);
        self.stable.insert(appid.to_owned(), token.clone());
        (token, ttl)
    }

    /// `cgi-bin/token`: a new token; the previous one of `appid` lives at most the overlap more.
    fn classic(&mut self, appid: &str, ttl: u64, now: Instant) -> String {
        let overlap_end = deadline(now, classic_overlap(ttl));
        let previous = self.classic.get(appid);
        if let Some(issued) = previous.and_then(|token| self.issued.get_mut(token)) {
            issued.expires_at = issued.expires_at.min(overlap_end);
        }
        let token = self.mint(appid, ttl, now);
        self.classic.insert(appid.to_owned(), token.clone());
        token
    }

    /// The appid `token` was issued for, or the errcode an API answers it with.
    fn check(&self, token: &str, now: Instant) -> Result<String, i64> {
        token_verdict(self.issued.get(token), now).map(str::to_owned)
    }

    fn invalidate_all(&mut self) {
        for issued in self.issued.values_mut() {
            issued.invalidated = true;
        }
    }
}

/// Prefix hooks that change a successful answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hooks {
    /// `union-`: the login answer carries a `unionid`.
    union: bool,
    /// `fixedkey-`: the login answer carries [`SAMPLE_SESSION_KEY`].
    fixed_key: bool,
    /// `numcc-`: the phone answer's `countryCode` is a number.
    numeric_country_code: bool,
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
    /// Succeed for the user named by `code` (the text left after the prefixes).
    Succeed { code: &'a str, hooks: Hooks },
}

/// Reads the steering prefixes off `code`: how long to wait first, then what to answer.
fn plan(mut code: &str) -> (Duration, Plan<'_>) {
    let mut delay = Duration::ZERO;
    let mut hooks = Hooks::default();
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
            hooks.union = true;
            code = rest;
        } else if let Some(rest) = code.strip_prefix("fixedkey-") {
            hooks.fixed_key = true;
            code = rest;
        } else if let Some(rest) = code.strip_prefix("numcc-") {
            hooks.numeric_country_code = true;
            code = rest;
        } else {
            return (delay, Plan::Succeed { code, hooks });
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

/// The user a code belongs to: the text before the first `.`, or the whole code.
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

/// A stable mainland mobile number for `user`: `138` and 8 digits taken from sha256(user).
fn pure_phone_number(user: &str) -> String {
    let digest = Sha256::digest(user.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    format!("138{:08}", u64::from_be_bytes(first) % 100_000_000)
}

fn valid_code_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn valid_code(code: &str) -> bool {
    code.len() <= MAX_CODE_LEN && code.bytes().all(valid_code_char)
}

/// `None` when `appid` and `secret` are what the options demand, else the errcode and message.
fn credential_error(
    opts: &MockWechatOptions,
    appid: Option<&str>,
    secret: Option<&str>,
) -> Option<(i64, &'static str)> {
    if (opts.appid.as_deref()).is_some_and(|want| appid != Some(want)) {
        Some((40013, "invalid appid"))
    } else if (opts.secret.as_deref()).is_some_and(|want| secret != Some(want)) {
        Some((40125, "invalid appsecret"))
    } else {
        None
    }
}

/// Seconds since the Unix epoch, as WeChat's watermarks carry them.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// WeChat's request id, shaped like the real ones (`rid: 6512a3b4-1a2b3c4d-5e6f7a8b`): it changes
/// on every answer, which is why clients must never match on `errmsg`.
fn rid() -> String {
    let [a, b, c]: [u32; 3] = rand::random();
    format!("{a:08x}-{b:08x}-{c:08x}")
}

/// An answer as WeChat sends it: JSON text labelled `content_type`.
fn reply_as(content_type: &'static str, status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A WeChat error: HTTP 200, the errcode in the body.
fn error_as(content_type: &'static str, errcode: i64, msg: &str) -> Response {
    let body = json!({ "errcode": errcode, "errmsg": format!("{msg} rid: {}", rid()) });
    reply_as(content_type, StatusCode::OK, body.to_string())
}

/// An answer as jscode2session sends it: JSON text labelled `text/plain`.
fn wechat_reply(status: StatusCode, body: String) -> Response {
    reply_as(TEXT_PLAIN, status, body)
}

fn wechat_error(errcode: i64, msg: &str) -> Response {
    error_as(TEXT_PLAIN, errcode, msg)
}

const HTML_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

fn html_502() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html")],
        HTML_502,
    )
        .into_response()
}

const GARBAGE: &str = "this is not json";

/// A query that does not parse is answered like one without the fields.
fn query_params(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> HashMap<String, String> {
    query.map(|Query(params)| params).unwrap_or_default()
}

async fn jscode2session(
    State(state): State<Arc<MockState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    state
        .counters
        .jscode2session
        .fetch_add(1, Ordering::Relaxed);
    let params = query_params(query);
    let param = |name: &str| params.get(name).map(String::as_str);

    let appid = param("appid");
    if let Some((errcode, msg)) = credential_error(&state.opts, appid, param("secret")) {
        return wechat_error(errcode, msg);
    }
    if param("grant_type") != Some("authorization_code") {
        return wechat_error(40002, "invalid grant_type");
    }
    let full_code = match param("js_code") {
        Some(code) if !code.is_empty() => code,
        _ => return wechat_error(41008, "missing code"),
    };
    if !valid_code(full_code) {
        return wechat_error(40029, "invalid code");
    }

    let (delay, plan) = plan(full_code);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (code, hooks) = match plan {
        Plan::Fail(errcode) => return wechat_error(errcode, "mock error"),
        Plan::Html => return html_502(),
        Plan::Garbage => return wechat_reply(StatusCode::OK, GARBAGE.to_owned()),
        Plan::Succeed { code, hooks } => (code, hooks),
    };
    if code.is_empty() {
        // Only prefixes, e.g. `union-`: nothing names a user.
        return wechat_error(40029, "invalid code");
    }
    if !claim(&state.used_codes, full_code) {
        return wechat_error(40163, "code been used");
    }

    let user = user_of(code);
    let appid = appid.unwrap_or_default();
    let openid = openid(appid, user);
    let session_key = if hooks.fixed_key {
        SAMPLE_SESSION_KEY.to_owned()
    } else {
        STANDARD.encode(rand::random::<[u8; 16]>())
    };
    lock(&state.sessions).insert(
        openid.clone(),
        Session {
            session_key: session_key.clone(),
            appid: appid.to_owned(),
        },
    );
    let mut body = Map::new();
    body.insert("session_key".to_owned(), Value::String(session_key));
    body.insert("openid".to_owned(), Value::String(openid));
    if hooks.union {
        body.insert("unionid".to_owned(), Value::String(unionid(user)));
    }
    tracing::debug!(
        user,
        union = hooks.union,
        "mock wechat: jscode2session login"
    );
    wechat_reply(StatusCode::OK, Value::Object(body).to_string())
}

fn token_error(errcode: i64, msg: &str) -> Response {
    error_as(TOKEN_JSON, errcode, msg)
}

fn token_reply(token: String, expires_in: u64) -> Response {
    let body = json!({ "access_token": token, "expires_in": expires_in });
    reply_as(TOKEN_JSON, StatusCode::OK, body.to_string())
}

async fn stable_token(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    state.counters.stable_token.fetch_add(1, Ordering::Relaxed);
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
        return token_error(47001, "data format error");
    };
    let field = |name: &str| request.get(name).and_then(Value::as_str);
    if field("grant_type") != Some("client_credential") {
        return token_error(40002, "invalid grant_type");
    }
    let appid = field("appid");
    if let Some((errcode, msg)) = credential_error(&state.opts, appid, field("secret")) {
        return token_error(errcode, msg);
    }
    let force = match request.get("force_refresh") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => return token_error(47001, "data format error"),
    };
    if force {
        state
            .counters
            .stable_token_forced
            .fetch_add(1, Ordering::Relaxed);
    }
    let (token, expires_in) = lock(&state.tokens).stable(
        appid.unwrap_or_default(),
        force,
        state.opts.token_ttl,
        Instant::now(),
    );
    token_reply(token, expires_in)
}

async fn classic_token(
    State(state): State<Arc<MockState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    state.counters.token.fetch_add(1, Ordering::Relaxed);
    let params = query_params(query);
    let param = |name: &str| params.get(name).map(String::as_str);
    if param("grant_type") != Some("client_credential") {
        return token_error(40002, "invalid grant_type");
    }
    let appid = param("appid");
    if let Some((errcode, msg)) = credential_error(&state.opts, appid, param("secret")) {
        return token_error(errcode, msg);
    }
    let ttl = state.opts.token_ttl;
    let token = lock(&state.tokens).classic(appid.unwrap_or_default(), ttl, Instant::now());
    token_reply(token, ttl)
}

fn phone_error(errcode: i64, msg: &str) -> Response {
    error_as(PHONE_JSON, errcode, msg)
}

async fn getuserphonenumber(
    State(state): State<Arc<MockState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Bytes,
) -> Response {
    state
        .counters
        .getuserphonenumber
        .fetch_add(1, Ordering::Relaxed);
    let params = query_params(query);
    let Some(token) = params.get("access_token").filter(|t| !t.is_empty()) else {
        return phone_error(41001, "access_token missing");
    };
    let appid = match lock(&state.tokens).check(token, Instant::now()) {
        Ok(appid) => appid,
        Err(40001) => {
            return phone_error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            )
        }
        Err(errcode) => return phone_error(errcode, "access_token expired"),
    };
    let request = serde_json::from_slice::<Value>(&body).ok();
    let Some(full_code) = request.as_ref().and_then(|r| r.get("code")?.as_str()) else {
        return phone_error(47001, "data format error");
    };
    if full_code.is_empty() || !valid_code(full_code) {
        return phone_error(40029, "invalid code");
    }

    let (delay, plan) = plan(full_code);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (code, hooks) = match plan {
        Plan::Fail(errcode) => return phone_error(errcode, "mock error"),
        Plan::Html => return html_502(),
        Plan::Garbage => return reply_as(PHONE_JSON, StatusCode::OK, GARBAGE.to_owned()),
        Plan::Succeed { code, hooks } => (code, hooks),
    };
    if code.is_empty() || !claim(&state.used_phone_codes, full_code) {
        return phone_error(40029, "invalid code");
    }

    let pure = pure_phone_number(user_of(code));
    let country_code = if hooks.numeric_country_code {
        json!(86)
    } else {
        json!("86")
    };
    let body = json!({
        "errcode": 0,
        "errmsg": "ok",
        "phone_info": {
            "phoneNumber": format!("+86 {pure}"),
            "purePhoneNumber": pure,
            "countryCode": country_code,
            "watermark": { "timestamp": unix_now(), "appid": appid },
        },
    });
    reply_as(PHONE_JSON, StatusCode::OK, body.to_string())
}

async fn stats(State(state): State<Arc<MockState>>) -> Json<Stats> {
    Json(state.counters.snapshot())
}

async fn reset(State(state): State<Arc<MockState>>) -> Json<Value> {
    state.counters.reset();
    Json(json!({ "ok": true }))
}

async fn invalidate_tokens(State(state): State<Arc<MockState>>) -> Json<Value> {
    lock(&state.tokens).invalidate_all();
    Json(json!({ "ok": true }))
}

/// An answer of a `/__mock/` endpoint that is not a success.
fn mock_error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "errcode": -1, "errmsg": msg }))).into_response()
}

async fn encrypt(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
        return mock_error(StatusCode::BAD_REQUEST, "mock: body must be a JSON object");
    };
    let Some(openid) = request.get("openid").and_then(Value::as_str) else {
        return mock_error(StatusCode::BAD_REQUEST, "mock: openid must be a string");
    };
    let Some(Value::Object(mut data)) = request.get("data").cloned() else {
        return mock_error(StatusCode::BAD_REQUEST, "mock: data must be a JSON object");
    };
    let appid_override = match request.get("appid") {
        None | Some(Value::Null) => None,
        Some(Value::String(appid)) => Some(appid.clone()),
        Some(_) => return mock_error(StatusCode::BAD_REQUEST, "mock: appid must be a string"),
    };
    let Some(session) = lock(&state.sessions).get(openid).cloned() else {
        return mock_error(StatusCode::NOT_FOUND, "mock: no session for that openid");
    };
    let appid = appid_override.unwrap_or(session.appid);
    data.insert(
        "watermark".to_owned(),
        json!({ "timestamp": unix_now(), "appid": appid }),
    );
    let plaintext = Value::Object(data).to_string();
    match crypto::encrypt(&session.session_key, plaintext.as_bytes(), rand::random()) {
        Ok((encrypted_data, iv)) => {
            Json(json!({ "encryptedData": encrypted_data, "iv": iv })).into_response()
        }
        // Only keys the mock made itself are stored, so this would be a bug in the mock.
        Err(e) => mock_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("mock: cannot encrypt: {e:?}"),
        ),
    }
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

    fn zero_stats() -> Value {
        json!({
            "jscode2session": 0,
            "stable_token": 0,
            "stable_token_forced": 0,
            "token": 0,
            "getuserphonenumber": 0,
        })
    }

    async fn post(addr: SocketAddr, target: &str, body: &str) -> std::io::Result<Reply> {
        exchange(addr, &format!("POST {target} HTTP/1.1"), body.as_bytes()).await
    }

    fn stable_body(force: bool) -> String {
        json!({
            "grant_type": "client_credential",
            "appid": APPID,
            "secret": "s3cret",
            "force_refresh": force,
        })
        .to_string()
    }

    /// A stable token and its `expires_in`, or an error naming what the answer lacked.
    async fn stable_token_of(
        addr: SocketAddr,
        force: bool,
    ) -> Result<(String, u64), Box<dyn std::error::Error>> {
        let body = post(addr, "/cgi-bin/stable_token", &stable_body(force))
            .await?
            .json()?;
        let token = body["access_token"].as_str().ok_or("no access_token")?;
        let expires_in = body["expires_in"].as_u64().ok_or("no expires_in")?;
        Ok((token.to_owned(), expires_in))
    }

    fn classic_target(appid: &str) -> String {
        format!("/cgi-bin/token?grant_type=client_credential&appid={appid}&secret=s3cret")
    }

    async fn classic_token_of(
        addr: SocketAddr,
        appid: &str,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let reply = request(addr, "GET", &classic_target(appid)).await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some(TOKEN_JSON));
        let body = reply.json()?;
        assert_eq!(body["expires_in"].as_u64(), Some(7200));
        Ok(body["access_token"]
            .as_str()
            .ok_or("no access_token")?
            .to_owned())
    }

    async fn phone(addr: SocketAddr, token: &str, code: &str) -> std::io::Result<Reply> {
        let target = format!("/wxa/business/getuserphonenumber?access_token={token}");
        post(
            addr,
            &target,
            &json!({ "code": code, "openid": "ox" }).to_string(),
        )
        .await
    }

    async fn stats_of(addr: SocketAddr) -> Result<Value, Box<dyn std::error::Error>> {
        Ok(request(addr, "GET", "/__mock/stats").await?.json()?)
    }

    fn url_safe(token: &str) -> bool {
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
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
            ..MockWechatOptions::default()
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
        assert_eq!(stats.json()?, zero_stats());

        login(addr, "henry.1").await?;
        login(addr, "henry.1").await?;
        login(addr, "err-1-x").await?;
        request(addr, "GET", "/sns/jscode2session").await?;
        let stats = request(addr, "GET", "/__mock/stats").await?.json()?;
        let mut want = zero_stats();
        want["jscode2session"] = json!(4);
        assert_eq!(stats, want);

        let reset = request(addr, "POST", "/__mock/reset").await?;
        assert_eq!(reset.json()?, json!({ "ok": true }));
        let stats = request(addr, "GET", "/__mock/stats").await?.json()?;
        assert_eq!(stats, zero_stats());
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
        let login = |code, union| Plan::Succeed {
            code,
            hooks: Hooks {
                union,
                ..Hooks::default()
            },
        };
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
        let all = Hooks {
            union: true,
            fixed_key: true,
            numeric_country_code: true,
        };
        assert_eq!(
            plan("numcc-slow7-fixedkey-union-zoe.1"),
            (
                Duration::from_millis(7),
                Plan::Succeed {
                    code: "zoe.1",
                    hooks: all
                }
            )
        );
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
        assert_eq!(plan("numccx"), (Duration::ZERO, login("numccx", false)));
        assert_eq!(plan("fixedkey"), (Duration::ZERO, login("fixedkey", false)));
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

    #[tokio::test]
    async fn stable_token_is_handed_out_again_and_counted() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let first = post(addr, "/cgi-bin/stable_token", &stable_body(false)).await?;
        assert_eq!(first.status, 200);
        assert_eq!(
            first.header("content-type"),
            Some("application/json; encoding=utf-8")
        );
        let first = first.json()?;
        assert_eq!(first.get("errcode"), None);
        assert_eq!(first["expires_in"].as_u64(), Some(7200));
        let token = first["access_token"].as_str().ok_or("no access_token")?;
        assert!(token.len() >= 32, "{token}");
        assert!(url_safe(token), "{token}");

        let (again, expires_in) = stable_token_of(addr, false).await?;
        assert_eq!(again, token);
        assert!((7198..=7200).contains(&expires_in), "{expires_in}");
        let stats = stats_of(addr).await?;
        assert_eq!(stats["stable_token"], 2);
        assert_eq!(stats["stable_token_forced"], 0);
        Ok(())
    }

    #[tokio::test]
    async fn force_refresh_mints_a_new_token_and_invalidates_the_old() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (old, _) = stable_token_of(addr, false).await?;
        let (new, expires_in) = stable_token_of(addr, true).await?;
        assert_ne!(old, new);
        assert_eq!(expires_in, 7200);
        assert_eq!(errcode(&phone(addr, &old, "amy.1").await?), Some(40001));
        assert_eq!(errcode(&phone(addr, &new, "amy.1").await?), Some(0));
        // The new token is the current one from now on.
        assert_eq!(stable_token_of(addr, false).await?.0, new);
        let stats = stats_of(addr).await?;
        assert_eq!(stats["stable_token"], 3);
        assert_eq!(stats["stable_token_forced"], 1);
        Ok(())
    }

    #[tokio::test]
    async fn expired_stable_token_gets_42001_and_is_renewed() -> TestResult {
        let addr = spawn(MockWechatOptions {
            token_ttl: 1,
            ..MockWechatOptions::default()
        })
        .await?;
        let (first, expires_in) = stable_token_of(addr, false).await?;
        assert_eq!(expires_in, 1);
        // Less than a second left still says 1, and no window below 24 s: handed out again.
        assert_eq!(stable_token_of(addr, false).await?, (first.clone(), 1));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(errcode(&phone(addr, &first, "kim.1").await?), Some(42001));
        let (renewed, _) = stable_token_of(addr, false).await?;
        assert_ne!(renewed, first);
        assert_eq!(errcode(&phone(addr, &renewed, "kim.1").await?), Some(0));
        Ok(())
    }

    #[test]
    fn stable_rule_reuses_until_the_renewal_window() {
        use StableAnswer::{Mint, Reuse};
        let s = Duration::from_secs;
        assert_eq!(renew_window(7200), s(300));
        assert_eq!(renew_window(48), s(2));
        assert_eq!(renew_window(23), s(0));
        assert_eq!(stable_rule(None, 7200, false), Mint);
        assert_eq!(
            stable_rule(Some(s(7200)), 7200, false),
            Reuse { expires_in: 7200 }
        );
        assert_eq!(
            stable_rule(Some(s(301)), 7200, false),
            Reuse { expires_in: 301 }
        );
        assert_eq!(stable_rule(Some(s(300)), 7200, false), Mint);
        assert_eq!(stable_rule(Some(s(7200)), 7200, true), Mint);
        assert_eq!(
            stable_rule(Some(Duration::from_millis(2001)), 48, false),
            Reuse { expires_in: 2 }
        );
        assert_eq!(stable_rule(Some(s(2)), 48, false), Mint);
        assert_eq!(stable_rule(Some(s(1)), 48, false), Mint);
        assert_eq!(
            stable_rule(Some(Duration::from_millis(300)), 1, false),
            Reuse { expires_in: 1 }
        );
        assert_eq!(classic_overlap(7200), s(300));
        assert_eq!(classic_overlap(86_400), s(300));
        assert_eq!(classic_overlap(48), s(2));
    }

    #[test]
    fn stable_token_is_renewed_inside_the_window() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let wx1 = || Ok("wx1".to_owned());
        let mut book = TokenBook::default();
        let (a, expires_in) = book.stable("wx1", false, 48, t0);
        assert_eq!(expires_in, 48);
        assert_eq!(book.stable("wx1", false, 48, at(45)), (a.clone(), 3));
        // 2 s left: not more than the window, so a new token.
        let (b, expires_in) = book.stable("wx1", false, 48, at(46));
        assert_ne!(a, b);
        assert_eq!(expires_in, 48);
        assert_eq!(book.stable("wx1", false, 48, at(47)), (b.clone(), 47));
        // The old token works until its own expiry.
        assert_eq!(book.check(&a, at(47)), wx1());
        assert_eq!(book.check(&a, at(48)), Err(42001));
        // Another appid has its own token; forcing one appid leaves the other alone.
        let (c, _) = book.stable("wx2", false, 48, at(47));
        assert_ne!(c, b);
        let (d, _) = book.stable("wx1", true, 48, at(47));
        assert_ne!(d, b);
        assert_eq!(book.check(&b, at(47)), Err(40001));
        assert_eq!(book.check(&d, at(47)), wx1());
        assert_eq!(book.check(&c, at(47)), Ok("wx2".to_owned()));
        // An expired current token is replaced.
        let (e, _) = book.stable("wx1", false, 48, at(47 + 48));
        assert_ne!(e, d);
        assert_eq!(book.check("never-issued", t0), Err(40001));
    }

    #[test]
    fn classic_token_keeps_the_previous_one_for_the_overlap() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut book = TokenBook::default();
        let a = book.classic("wx1", 7200, t0);
        let b = book.classic("wx1", 7200, at(100));
        assert_ne!(a, b);
        assert_eq!(book.check(&a, at(399)), Ok("wx1".to_owned()));
        assert_eq!(book.check(&a, at(400)), Err(42001));
        assert_eq!(book.check(&b, at(400)), Ok("wx1".to_owned()));
        // A short ttl has a short overlap...
        let c = book.classic("wx2", 48, t0);
        book.classic("wx2", 48, at(10));
        assert_eq!(book.check(&c, at(11)), Ok("wx2".to_owned()));
        assert_eq!(book.check(&c, at(12)), Err(42001));
        // ...and an old token that expires before the overlap ends is not extended.
        let d = book.classic("wx3", 48, t0);
        book.classic("wx3", 48, at(47));
        assert_eq!(book.check(&d, at(48)), Err(42001));
        // Classic fetches leave the stable token alone.
        let (s, _) = book.stable("wx1", false, 7200, at(100));
        book.classic("wx1", 7200, at(101));
        assert_eq!(book.check(&s, at(500)), Ok("wx1".to_owned()));
    }

    #[test]
    fn token_verdicts() {
        let t0 = Instant::now();
        let token = IssuedToken {
            appid: "wx1".to_owned(),
            expires_at: t0 + Duration::from_secs(10),
            invalidated: false,
        };
        assert_eq!(token_verdict(Some(&token), t0), Ok("wx1"));
        assert_eq!(
            token_verdict(Some(&token), t0 + Duration::from_millis(9999)),
            Ok("wx1")
        );
        assert_eq!(
            token_verdict(Some(&token), t0 + Duration::from_secs(10)),
            Err(42001)
        );
        assert_eq!(token_verdict(None, t0), Err(40001));
        let invalidated = IssuedToken {
            invalidated: true,
            ..token
        };
        assert_eq!(token_verdict(Some(&invalidated), t0), Err(40001));
        assert_eq!(
            token_verdict(Some(&invalidated), t0 + Duration::from_secs(20)),
            Err(40001)
        );
    }

    #[tokio::test]
    async fn classic_token_mints_on_every_call_and_both_work() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let a = classic_token_of(addr, APPID).await?;
        let b = classic_token_of(addr, APPID).await?;
        assert_ne!(a, b);
        assert!(a.len() >= 32 && url_safe(&a), "{a}");
        assert_eq!(errcode(&phone(addr, &a, "lee.1").await?), Some(0));
        assert_eq!(errcode(&phone(addr, &b, "lee.2").await?), Some(0));
        // The watermark names the appid the token was issued for.
        let other = classic_token_of(addr, "wxotherapp").await?;
        let body = phone(addr, &other, "lee.3").await?.json()?;
        assert_eq!(body["phone_info"]["watermark"]["appid"], "wxotherapp");
        assert_eq!(stats_of(addr).await?["token"], 3);
        Ok(())
    }

    #[tokio::test]
    async fn token_apis_check_body_grant_type_and_credentials() -> TestResult {
        let addr = spawn(MockWechatOptions {
            appid: Some(APPID.to_owned()),
            secret: Some("s3cret".to_owned()),
            ..MockWechatOptions::default()
        })
        .await?;
        let with = |field: &str, value: Value| -> Result<String, serde_json::Error> {
            let mut body: Value = serde_json::from_str(&stable_body(false))?;
            body[field] = value;
            Ok(body.to_string())
        };
        let mut no_grant: Value = serde_json::from_str(&stable_body(false))?;
        no_grant
            .as_object_mut()
            .ok_or("not an object")?
            .remove("grant_type");
        let cases = [
            ("not json".to_owned(), 47001),
            (String::new(), 47001),
            ("[1]".to_owned(), 47001),
            (with("grant_type", json!("authorization_code"))?, 40002),
            (no_grant.to_string(), 40002),
            (with("appid", json!("wxwrong"))?, 40013),
            (with("appid", json!(7))?, 40013),
            (with("secret", json!("wrong"))?, 40125),
            (with("force_refresh", json!("yes"))?, 47001),
        ];
        for (body, want) in cases {
            let reply = post(addr, "/cgi-bin/stable_token", &body).await?;
            assert_eq!(reply.status, 200, "{body}");
            assert_eq!(reply.header("content-type"), Some(TOKEN_JSON), "{body}");
            assert_eq!(errcode(&reply), Some(want), "{body}");
        }
        // `force_refresh` may be left out or null.
        let mut plain: Value = serde_json::from_str(&stable_body(false))?;
        plain
            .as_object_mut()
            .ok_or("not an object")?
            .remove("force_refresh");
        for body in [plain.to_string(), with("force_refresh", Value::Null)?] {
            let reply = post(addr, "/cgi-bin/stable_token", &body).await?.json()?;
            assert!(reply["access_token"].is_string(), "{body}");
        }

        let classic = classic_target(APPID);
        for (target, want) in [
            (
                classic.replace("client_credential", "authorization_code"),
                40002,
            ),
            (classic.replace("grant_type=client_credential&", ""), 40002),
            (classic_target("wxwrong"), 40013),
            (classic.replace("s3cret", "wrong"), 40125),
            ("/cgi-bin/token?%zz&grant_type".to_owned(), 40002),
        ] {
            let reply = request(addr, "GET", &target).await?;
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(reply.header("content-type"), Some(TOKEN_JSON), "{target}");
            assert_eq!(errcode(&reply), Some(want), "{target}");
        }
        let stats = stats_of(addr).await?;
        assert_eq!(stats["stable_token"], 11);
        assert_eq!(stats["stable_token_forced"], 0);
        assert_eq!(stats["token"], 5);
        Ok(())
    }

    #[tokio::test]
    async fn phone_number_shape_and_one_phone_per_user() -> TestResult {
        let addr = spawn(MockWechatOptions {
            appid: Some(APPID.to_owned()),
            secret: Some("s3cret".to_owned()),
            ..MockWechatOptions::default()
        })
        .await?;
        let (token, _) = stable_token_of(addr, false).await?;
        let reply = phone(addr, &token, "alice.1").await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body = reply.json()?;
        assert_eq!(body["errcode"], 0);
        assert_eq!(body["errmsg"], "ok");
        let info = &body["phone_info"];
        let pure = info["purePhoneNumber"]
            .as_str()
            .ok_or("no purePhoneNumber")?;
        assert_eq!(pure.len(), 11);
        assert!(pure.starts_with("138") && pure.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(pure, pure_phone_number("alice"));
        assert_eq!(info["phoneNumber"], format!("+86 {pure}"));
        assert_eq!(info["countryCode"], "86");
        assert_eq!(info["watermark"]["appid"], APPID);
        let timestamp = info["watermark"]["timestamp"]
            .as_u64()
            .ok_or("no timestamp")?;
        assert!(timestamp.abs_diff(unix_now()) <= 5, "{timestamp}");

        let again = phone(addr, &token, "alice.2").await?.json()?;
        assert_eq!(again["phone_info"]["purePhoneNumber"], pure);
        let other = phone(addr, &token, "slow10-bob.1").await?.json()?;
        let other = other["phone_info"]["purePhoneNumber"].as_str();
        assert!(other.is_some_and(|other| other != pure), "{other:?}");
        Ok(())
    }

    #[tokio::test]
    async fn phone_codes_are_single_use_and_checked() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (token, _) = stable_token_of(addr, false).await?;
        assert_eq!(errcode(&phone(addr, &token, "pat.1").await?), Some(0));
        let reused = phone(addr, &token, "pat.1").await?;
        assert_eq!(reused.status, 200);
        assert_eq!(errcode(&reused), Some(40029));
        assert_eq!(errcode(&phone(addr, &token, "pat.2").await?), Some(0));
        // A login code and a phone code are different things: the same text may be both.
        assert_eq!(errcode(&login(addr, "pat.1").await?), None);

        let long = "a".repeat(MAX_CODE_LEN + 1);
        for code in ["bad!code", "sp ace", "你好", "", "numcc-", long.as_str()] {
            assert_eq!(
                errcode(&phone(addr, &token, code).await?),
                Some(40029),
                "{code}"
            );
        }
        let longest = "b".repeat(MAX_CODE_LEN);
        assert_eq!(errcode(&phone(addr, &token, &longest).await?), Some(0));
        Ok(())
    }

    #[tokio::test]
    async fn phone_token_errors_come_first() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let path = "/wxa/business/getuserphonenumber";
        let code = json!({ "code": "uma.1" }).to_string();
        for (target, body, want) in [
            (path.to_owned(), code.as_str(), 41001),
            (format!("{path}?access_token="), code.as_str(), 41001),
            (format!("{path}?access_token=&x=%zz"), "not json", 41001),
            (
                format!("{path}?access_token=nonsense"),
                code.as_str(),
                40001,
            ),
            (format!("{path}?access_token=nonsense"), "not json", 40001),
        ] {
            let reply = post(addr, &target, body).await?;
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(reply.header("content-type"), Some("application/json"));
            assert_eq!(errcode(&reply), Some(want), "{target}");
        }
        assert_eq!(stats_of(addr).await?["getuserphonenumber"], 5);
        Ok(())
    }

    #[tokio::test]
    async fn phone_body_must_be_json_with_a_string_code() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (token, _) = stable_token_of(addr, false).await?;
        let target = format!("/wxa/business/getuserphonenumber?access_token={token}");
        for body in [
            "not json",
            "",
            "[1]",
            "{}",
            r#"{"code":5}"#,
            r#"{"code":null}"#,
            r#"{"openid":"ox"}"#,
        ] {
            let reply = post(addr, &target, body).await?;
            assert_eq!(reply.status, 200, "{body}");
            assert_eq!(errcode(&reply), Some(47001), "{body}");
        }
        // `openid` is optional.
        let reply = post(addr, &target, r#"{"code":"vic.1"}"#).await?;
        assert_eq!(errcode(&reply), Some(0));
        Ok(())
    }

    #[tokio::test]
    async fn phone_prefixes() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (token, _) = stable_token_of(addr, false).await?;
        for (code, want) in [
            ("err45011-x", 45011),
            ("err45011-x", 45011),
            ("err-1-y", -1),
        ] {
            let body = phone(addr, &token, code).await?.json()?;
            assert_eq!(body["errcode"].as_i64(), Some(want), "{code}");
            let msg = body["errmsg"].as_str().ok_or("no errmsg")?;
            assert!(msg.starts_with("mock error rid: "), "{msg}");
        }
        let numeric = phone(addr, &token, "numcc-nina.1").await?.json()?;
        assert_eq!(numeric["phone_info"]["countryCode"], json!(86));
        let plain = phone(addr, &token, "nina.2").await?.json()?;
        assert_eq!(plain["phone_info"]["countryCode"], json!("86"));
        assert_eq!(
            numeric["phone_info"]["purePhoneNumber"],
            plain["phone_info"]["purePhoneNumber"]
        );
        let html = phone(addr, &token, "html-x").await?;
        assert_eq!(html.status, 502);
        assert_eq!(html.header("content-type"), Some("text/html"));
        let garbage = phone(addr, &token, "garbage-x").await?;
        assert_eq!(garbage.status, 200);
        assert_eq!(garbage.body, b"this is not json");
        Ok(())
    }

    #[tokio::test]
    async fn invalidate_tokens_makes_every_token_40001() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (stable, _) = stable_token_of(addr, false).await?;
        let classic = classic_token_of(addr, APPID).await?;
        assert_eq!(errcode(&phone(addr, &stable, "wes.1").await?), Some(0));
        assert_eq!(errcode(&phone(addr, &classic, "wes.2").await?), Some(0));

        let reply = post(addr, "/__mock/invalidate_tokens", "").await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.json()?, json!({ "ok": true }));
        assert_eq!(errcode(&phone(addr, &stable, "wes.3").await?), Some(40001));
        assert_eq!(errcode(&phone(addr, &classic, "wes.4").await?), Some(40001));

        // The next stable_token call mints a fresh, working token.
        let (fresh, expires_in) = stable_token_of(addr, false).await?;
        assert_ne!(fresh, stable);
        assert_eq!(expires_in, 7200);
        assert_eq!(errcode(&phone(addr, &fresh, "wes.5").await?), Some(0));
        Ok(())
    }

    #[tokio::test]
    async fn fixedkey_login_gives_the_sample_session_key() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let body = login(addr, "fixedkey-quinn.1").await?.json()?;
        assert_eq!(body["session_key"], "tiihtNczf5v6AKRyjwEUhQ==");
        assert_eq!(
            body["openid"].as_str(),
            Some(openid(APPID, "quinn").as_str())
        );
        assert_eq!(body.get("unionid"), None);
        let body = login(addr, "slow5-union-fixedkey-quinn.2").await?.json()?;
        assert_eq!(body["session_key"], SAMPLE_SESSION_KEY);
        assert!(body["unionid"].is_string());
        let plain = login(addr, "quinn.3").await?.json()?;
        assert_ne!(plain["session_key"], SAMPLE_SESSION_KEY);
        Ok(())
    }

    /// `/__mock/encrypt` for `openid`, returning `(encryptedData, iv)`.
    async fn encrypt_for(
        addr: SocketAddr,
        request: Value,
    ) -> Result<(String, String), Box<dyn std::error::Error>> {
        let reply = post(addr, "/__mock/encrypt", &request.to_string()).await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body = reply.json()?;
        let data = body["encryptedData"].as_str().ok_or("no encryptedData")?;
        let iv = body["iv"].as_str().ok_or("no iv")?;
        Ok((data.to_owned(), iv.to_owned()))
    }

    fn decrypt(key: &str, data: &str, iv: &str, appid: &str) -> Result<Value, String> {
        crypto::decrypt_user_data(key, data, iv, appid).map_err(|e| format!("{e:?}"))
    }

    #[tokio::test]
    async fn encrypt_round_trips_through_decrypt_user_data() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let first = login(addr, "rose.1").await?.json()?;
        let openid = first["openid"].as_str().ok_or("no openid")?;
        let key = first["session_key"].as_str().ok_or("no session_key")?;
        let data = json!({ "phoneNumber": "+86 13800000000", "countryCode": "86" });

        let (encrypted, iv) = encrypt_for(addr, json!({ "openid": openid, "data": data })).await?;
        assert_eq!(STANDARD.decode(&iv)?.len(), 16);
        let plain = decrypt(key, &encrypted, &iv, APPID)?;
        assert_eq!(plain["phoneNumber"], "+86 13800000000");
        assert_eq!(plain["countryCode"], "86");
        assert_eq!(plain["watermark"]["appid"], APPID);
        let timestamp = plain["watermark"]["timestamp"]
            .as_u64()
            .ok_or("no timestamp")?;
        assert!(timestamp.abs_diff(unix_now()) <= 5, "{timestamp}");
        assert_eq!(
            decrypt(key, &encrypted, &iv, "wxsomeoneelse"),
            Err("Watermark".to_owned())
        );

        // The watermark appid can be overridden, to provoke the gateway's watermark check.
        let request = json!({ "openid": openid, "data": {}, "appid": "wxsomeoneelse" });
        let (encrypted, iv) = encrypt_for(addr, request).await?;
        let plain = decrypt(key, &encrypted, &iv, "wxsomeoneelse")?;
        assert_eq!(plain["watermark"]["appid"], "wxsomeoneelse");

        // The latest login's key is used, as WeChat rotates session_key on login.
        let second = login(addr, "rose.2").await?.json()?;
        let new_key = second["session_key"].as_str().ok_or("no session_key")?;
        let (encrypted, iv) = encrypt_for(addr, json!({ "openid": openid, "data": data })).await?;
        assert!(decrypt(new_key, &encrypted, &iv, APPID).is_ok());
        assert!(decrypt(key, &encrypted, &iv, APPID).is_err());

        // A fixedkey- login encrypts with WeChat's sample key.
        let fixed = login(addr, "fixedkey-sam.1").await?.json()?;
        let openid = fixed["openid"].as_str().ok_or("no openid")?;
        let (encrypted, iv) = encrypt_for(addr, json!({ "openid": openid, "data": data })).await?;
        let plain = decrypt(SAMPLE_SESSION_KEY, &encrypted, &iv, APPID)?;
        assert_eq!(plain["phoneNumber"], "+86 13800000000");
        Ok(())
    }

    #[tokio::test]
    async fn encrypt_rejects_unknown_openids_and_bad_requests() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let reply = post(addr, "/__mock/encrypt", r#"{"openid":"onobody","data":{}}"#).await?;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(
            reply.json()?,
            json!({ "errcode": -1, "errmsg": "mock: no session for that openid" })
        );

        let body = login(addr, "tom.1").await?.json()?;
        let openid = body["openid"].as_str().ok_or("no openid")?;
        for request in [
            "not json".to_owned(),
            "[1]".to_owned(),
            json!({ "data": {} }).to_string(),
            json!({ "openid": openid }).to_string(),
            json!({ "openid": openid, "data": [1] }).to_string(),
            json!({ "openid": openid, "data": "x" }).to_string(),
            json!({ "openid": openid, "data": {}, "appid": 5 }).to_string(),
        ] {
            let reply = post(addr, "/__mock/encrypt", &request).await?;
            assert_eq!(reply.status, 400, "{request}");
            assert_eq!(errcode(&reply), Some(-1), "{request}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn stats_count_every_api_and_reset_zeroes_them() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (token, _) = stable_token_of(addr, false).await?;
        stable_token_of(addr, true).await?;
        post(addr, "/cgi-bin/stable_token", "not json").await?;
        classic_token_of(addr, APPID).await?;
        request(addr, "GET", "/cgi-bin/token").await?;
        post(addr, "/wxa/business/getuserphonenumber", "{}").await?;
        phone(addr, &token, "xena.1").await?;
        login(addr, "xena.1").await?;
        assert_eq!(
            stats_of(addr).await?,
            json!({
                "jscode2session": 1,
                "stable_token": 3,
                "stable_token_forced": 1,
                "token": 2,
                "getuserphonenumber": 2,
            })
        );
        post(addr, "/__mock/reset", "").await?;
        assert_eq!(stats_of(addr).await?, zero_stats());
        Ok(())
    }

    #[test]
    fn phones_are_stable_mainland_numbers() {
        assert_eq!(pure_phone_number("alice"), pure_phone_number("alice"));
        assert_ne!(pure_phone_number("alice"), pure_phone_number("bob"));
        for user in ["", "alice", "a-very-long-user-name_with.dots"] {
            let phone = pure_phone_number(user);
            assert_eq!(phone.len(), 11, "{phone}");
            assert!(phone.starts_with("138") && phone.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn options_default_to_two_hour_tokens() {
        let opts = MockWechatOptions::default();
        assert_eq!(opts.token_ttl, 7200);
        assert_eq!((opts.appid, opts.secret), (None, None));
    }
}

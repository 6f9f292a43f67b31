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
//! - `POST /wxa/msg_sec_check?access_token` (JSON `content`): `result.suggest` is `risky` when
//!   the content contains "risky", else `pass`; the answer adds `mock_params`, the names of the
//!   query parameters received, in order (so a test sees which tokens arrived), and
//!   `mock_appid`, the appid of the token; content `slow<ms>-...` waits `ms` (at most 60 s) first;
//! - `POST /wxa/getwxacodeunlimit?access_token` (JSON `scene`): a 1x1 PNG, `image/png`;
//!   both check the token as the phone API does (41001 when missing or sent twice, 40001, 42001)
//!   and answer 47001 for a body without the field.
//!
//! Test endpoints (`application/json`):
//! - `GET /__mock/stats` and `POST /__mock/reset`: count the calls the gateway made, per API;
//! - `POST /__mock/invalidate_tokens`: every access token issued so far becomes invalid (40001);
//! - `POST /__mock/refuse_token_once`: the next call of `msg_sec_check` or `getwxacodeunlimit`
//!   answers 40001 whatever its token (the token itself stays valid);
//! - `POST /__mock/encrypt` with `{"openid", "data": {...}, "appid"?}`: plays the WeChat client
//!   in the legacy encrypted-data flow: `data` with a `watermark` added, encrypted with the
//!   latest session_key of that openid; answers `{"encryptedData", "iv"}` (404: no such login).
//!
//! This file holds the options, the router and the state the handlers share. The rest, a job a
//! file: `plan` reads the codes, `tokens` keeps the access-token book, `login`, `token_api` and
//! `phone` answer the WeChat APIs, `hooks` the test endpoints, and `answers` shapes WeChat's
//! answers.

mod answers;
mod hooks;
mod login;
mod open_api;
mod phone;
mod plan;
#[cfg(test)]
mod testing;
mod token_api;
mod tokens;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::json;

use answers::wechat_reply;
use tokens::TokenBook;

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
        refuse_token: AtomicU64::new(0),
    });
    Router::new()
        .route("/sns/jscode2session", get(login::jscode2session))
        .route("/cgi-bin/stable_token", post(token_api::stable_token))
        .route("/cgi-bin/token", get(token_api::classic_token))
        .route(
            "/wxa/business/getuserphonenumber",
            post(phone::getuserphonenumber),
        )
        .route("/wxa/msg_sec_check", post(open_api::msg_sec_check))
        .route("/wxa/getwxacodeunlimit", post(open_api::getwxacodeunlimit))
        .route("/__mock/stats", get(hooks::stats))
        .route("/__mock/refuse_token_once", post(hooks::refuse_token_once))
        .route("/__mock/reset", post(hooks::reset))
        .route("/__mock/invalidate_tokens", post(hooks::invalidate_tokens))
        .route("/__mock/encrypt", post(hooks::encrypt))
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
    /// Calls of the open APIs still to answer 40001 (`/__mock/refuse_token_once`).
    refuse_token: AtomicU64,
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

/// A query that does not parse is answered like one without the fields.
fn query_params(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> HashMap<String, String> {
    query.map(|Query(params)| params).unwrap_or_default()
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
    msg_sec_check: AtomicU64,
    getwxacodeunlimit: AtomicU64,
}

/// The JSON shape of `GET /__mock/stats`.
#[derive(Debug, Serialize)]
struct Stats {
    jscode2session: u64,
    stable_token: u64,
    stable_token_forced: u64,
    token: u64,
    getuserphonenumber: u64,
    msg_sec_check: u64,
    getwxacodeunlimit: u64,
}

/// Counts one more call in `counter`, a field of [`Counters`].
fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            jscode2session: self.jscode2session.load(Ordering::Relaxed),
            stable_token: self.stable_token.load(Ordering::Relaxed),
            stable_token_forced: self.stable_token_forced.load(Ordering::Relaxed),
            token: self.token.load(Ordering::Relaxed),
            getuserphonenumber: self.getuserphonenumber.load(Ordering::Relaxed),
            msg_sec_check: self.msg_sec_check.load(Ordering::Relaxed),
            getwxacodeunlimit: self.getwxacodeunlimit.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for counter in [
            &self.jscode2session,
            &self.stable_token,
            &self.stable_token_forced,
            &self.token,
            &self.getuserphonenumber,
            &self.msg_sec_check,
            &self.getwxacodeunlimit,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
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
    use super::testing::{errcode, request, spawn, TestResult};
    use super::*;

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
    fn options_default_to_two_hour_tokens() {
        let opts = MockWechatOptions::default();
        assert_eq!(opts.token_ttl, 7200);
        assert_eq!((opts.appid, opts.secret), (None, None));
    }
}

//! The endpoints the gateway answers itself: `/auth` (code -> WeChat -> session -> token),
//! `/isAuth` (the tutorial's token check), `/auth/refresh`, `/auth/logout`, `/auth/phone` and
//! `/auth/decrypt`.
//! Parsing is pure; [`Login`] does the I/O.

use super::extract::{self, Presented};
use super::jwt::{unix_now, Tokens};
use super::Identity;
use crate::config::FailMode;
use crate::reply::{Reject, TokenProblem};
use crate::session::Phone;
use crate::session::{
    new_refresh_token, new_sid, refresh_hash, refresh_token_sid, Clock, Revocations, Rotation,
    Session, SessionStore,
};
use crate::wechat::{crypto, AccessTokens, Code2Session, WechatClient, WechatError};
use futures::future::{BoxFuture, FutureExt, Shared};
use http::Method;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `data` of a successful login or refresh.
#[derive(Debug, Clone, Serialize)]
pub struct LoginData {
    pub token: String,
    pub expires_in: u64,
    /// Opaque, single-use; exchange it at `/auth/refresh` for a new token and refresh token.
    pub refresh_token: String,
}

/// `data` of a successful `/isAuth`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyData {
    pub openid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
}

type LoginOutcome = Result<LoginData, Reject>;

/// How long WeChat's answer for a code is kept when its session could not be stored: a login
/// code is valid for 5 minutes, and a retry with the same code within them then logs in
/// without calling WeChat (which would answer 40163 for the spent code).
const UNSTORED_MS: u64 = 5 * 60_000;
const UNSTORED_MAX: usize = 10_000;
type InFlight = Arc<Mutex<HashMap<String, Shared<BoxFuture<'static, LoginOutcome>>>>>;

/// Sessions: where they are kept, how long they live, which are revoked.
pub struct Sessions {
    pub store: Arc<dyn SessionStore>,
    pub revocations: Arc<Revocations>,
    pub clock: Arc<dyn Clock>,
    /// How long a session and its refresh token live.
    pub ttl: Duration,
}

/// How long a phone number read from the store is reused for forwarding.
const PHONE_CACHE_MS: u64 = 60_000;
const PHONE_CACHE_MAX: usize = 100_000;

pub struct Login {
    wechat: Arc<WechatClient>,
    access_tokens: AccessTokens,
    tokens: Arc<Tokens>,
    sessions: Sessions,
    in_flight: InFlight,
    /// sid -> (phone, fetched at ms): only numbers that were found, so a new one shows at once.
    phones: Mutex<HashMap<String, (Phone, u64)>>,
    /// code -> (WeChat's answer, until ms): exchanges whose session the store refused.
    unstored: Mutex<HashMap<String, (Code2Session, u64)>>,
}

impl Login {
    pub fn new(wechat: Arc<WechatClient>, tokens: Arc<Tokens>, sessions: Sessions) -> Self {
        let access_tokens = AccessTokens::new(
            wechat.clone(),
            sessions.store.clone(),
            sessions.clock.clone(),
        );
        Login {
            wechat,
            access_tokens,
            tokens,
            sessions,
            in_flight: Arc::default(),
            phones: Mutex::default(),
            unstored: Mutex::default(),
        }
    }

    pub fn access_tokens(&self) -> &AccessTokens {
        &self.access_tokens
    }

    /// The live session behind a verified identity.
    async fn session_of(&self, identity: &Identity) -> Result<Session, Reject> {
        self.sessions
            .store
            .get(&identity.sid)
            .await
            .map_err(Self::store_error)?
            .ok_or(Reject::SessionGone)
    }

    /// `/auth/phone`: exchange a getPhoneNumber code for the user's number and keep it in the
    /// session. The session is checked first, so a code is never spent for nothing.
    pub async fn phone(&self, identity: &Identity, code: &str) -> Result<Phone, Reject> {
        if !plausible_code(code) {
            return Err(Reject::PhoneCode { errcode: 40029 });
        }
        let session = self.session_of(identity).await?;
        let phone = self
            .access_tokens
            .call(|token| {
                let wechat = &self.wechat;
                let openid = &session.openid;
                async move { wechat.phone_number(&token, code, openid).await }
            })
            .await
            .map_err(|e| match e {
                // About the phone code, not the login: its own message.
                WechatError::Api(errcode @ (40029 | 40163 | 41008)) => {
                    Reject::PhoneCode { errcode }
                }
                e => e.into(),
            })?;
        self.remember_phone(&identity.sid, &phone).await?;
        tracing::info!(sid = %identity.sid, "phone number verified");
        Ok(phone)
    }

    async fn remember_phone(&self, sid: &str, phone: &Phone) -> Result<(), Reject> {
        let stored = self
            .sessions
            .store
            .set_phone(sid, phone)
            .await
            .map_err(Self::store_error)?;
        if !stored {
            return Err(Reject::SessionGone);
        }
        let mut cache = lock(&self.phones);
        cache.remove(sid);
        Ok(())
    }

    /// `/auth/decrypt`: WeChat's encrypted user data, read with the session's session_key and
    /// checked against this app's appid. A phone number in it (the legacy getPhoneNumber flow)
    /// is kept in the session like one from `/auth/phone`.
    pub async fn decrypt(
        &self,
        identity: &Identity,
        encrypted_data: &str,
        iv: &str,
    ) -> Result<serde_json::Value, Reject> {
        let session = self.session_of(identity).await?;
        let value = crypto::decrypt_user_data(
            session.session_key.expose(),
            encrypted_data,
            iv,
            self.wechat.appid(),
        )
        .map_err(|e| {
            if e == crypto::DecryptError::BadSessionKey {
                tracing::error!(sid = %identity.sid, "stored session_key is unusable");
            }
            Reject::Decrypt(e)
        })?;
        if let Ok(phone) = serde_json::from_value::<Phone>(value.clone()) {
            self.remember_phone(&identity.sid, &phone).await?;
        }
        Ok(value)
    }

    /// The verified phone number of a session, for routes with `forward_phone`. Found numbers
    /// are reused for a minute; a store failure follows `session.fail_mode`.
    pub async fn phone_of(&self, sid: &str) -> Result<Option<Phone>, Reject> {
        let now = self.now_ms();
        if let Some((phone, at)) = lock(&self.phones).get(sid) {
            if now.saturating_sub(*at) < PHONE_CACHE_MS {
                return Ok(Some(phone.clone()));
            }
        }
        match self.sessions.store.get(sid).await {
            Ok(session) => {
                let phone = session.and_then(|s| s.phone);
                if let Some(p) = &phone {
                    let mut cache = lock(&self.phones);
                    if cache.len() >= PHONE_CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(sid.to_string(), (p.clone(), now));
                }
                Ok(phone)
            }
            Err(e) => match self.sessions.revocations.fail_mode() {
                FailMode::Closed => Err(Self::store_error(e)),
                FailMode::Open => Ok(None),
            },
        }
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    pub fn revocations(&self) -> &Revocations {
        &self.sessions.revocations
    }

    pub fn now_ms(&self) -> u64 {
        self.sessions.clock.now_ms()
    }

    /// A token that passed its signature check, checked against the revocation list.
    pub fn verify(&self, presented: Presented<'_>) -> Result<Identity, Reject> {
        verify_presented(
            &self.tokens,
            &self.sessions.revocations,
            presented,
            self.now_ms(),
        )
    }

    /// Until when a revocation must be remembered: the last token of the session expires then.
    fn revoke_until(&self) -> u64 {
        self.now_ms() / 1000 + self.tokens.max_lifetime().as_secs()
    }

    fn store_error(e: crate::session::StoreError) -> Reject {
        tracing::error!("session store: {e}");
        Reject::StoreUnavailable
    }

    /// Log in with a WeChat code. Concurrent calls with the same code share one exchange (codes
    /// are single-use: a second call to WeChat would only get 40163). The exchange runs in its
    /// own task, so a caller that goes away does not abort it for the others.
    pub async fn login(self: &Arc<Self>, code: &str) -> LoginOutcome {
        if !plausible_code(code) {
            // Not something wx.login() produces: spare the app's WeChat quota.
            return Err(Reject::Wechat { errcode: 40029 });
        }
        if self.revocations().store_down(self.now_ms()) {
            // The session could not be stored: do not spend the user's one-time code.
            return Err(Reject::StoreUnavailable);
        }
        let shared = {
            let mut map = lock(&self.in_flight);
            match map.get(code) {
                Some(existing) => existing.clone(),
                None => {
                    let me = Arc::clone(self);
                    let key = code.to_string();
                    let task = tokio::spawn(async move {
                        let outcome = me.exchange(&key).await;
                        lock(&me.in_flight).remove(&key);
                        outcome
                    });
                    let fut = async move {
                        task.await.unwrap_or_else(|e| {
                            tracing::error!("login task failed: {e}");
                            Err(Reject::Internal)
                        })
                    }
                    .boxed()
                    .shared();
                    map.insert(code.to_string(), fut.clone());
                    fut
                }
            }
        };
        shared.await
    }

    /// The code's WeChat answer (kept from an earlier try whose session was not stored, or
    /// asked for once the store has shown it accepts writes), then a stored session.
    async fn exchange(&self, code: &str) -> LoginOutcome {
        let kept = {
            let mut unstored = lock(&self.unstored);
            let now = self.now_ms();
            unstored.retain(|_, (_, until)| *until > now);
            unstored.remove(code)
        };
        let wx = match kept {
            Some((wx, _)) => wx,
            None => {
                // Known-good before the code is spent: an outage not yet noticed by the
                // revocation sync (the first seconds) must not cost the user's code either.
                self.sessions
                    .store
                    .ready_for_login()
                    .await
                    .map_err(Self::store_error)?;
                self.wechat.code2session(code).await?
            }
        };
        match self.start_session(&wx).await {
            Err(Reject::StoreUnavailable) => {
                // The store failed between the check and the write: keep WeChat's answer so
                // that the client's retry with the same code succeeds once the store is back.
                let mut unstored = lock(&self.unstored);
                if unstored.len() < UNSTORED_MAX {
                    unstored.insert(code.to_string(), (wx, self.now_ms() + UNSTORED_MS));
                }
                Err(Reject::StoreUnavailable)
            }
            outcome => outcome,
        }
    }

    async fn start_session(&self, wx: &Code2Session) -> LoginOutcome {
        let identity = Identity {
            openid: wx.openid.clone(),
            unionid: wx.unionid.clone(),
            sid: new_sid(),
        };
        let refresh_token = new_refresh_token(&identity.sid);
        let session = Session {
            sid: identity.sid.clone(),
            openid: identity.openid.clone(),
            unionid: identity.unionid.clone(),
            session_key: wx.session_key.clone(),
            created_at: unix_now(),
            refresh_hash: refresh_hash(&refresh_token),
            phone: None,
        };
        self.sessions
            .store
            .create(&session, self.sessions.ttl)
            .await
            .map_err(Self::store_error)?;
        tracing::info!(sid = %identity.sid, "login");
        self.issue(&identity, refresh_token)
    }

    fn issue(&self, identity: &Identity, refresh_token: String) -> LoginOutcome {
        let signed = self.tokens.sign(identity, unix_now()).map_err(|e| {
            tracing::error!("{e}");
            Reject::Internal
        })?;
        Ok(LoginData {
            token: signed.token,
            expires_in: signed.expires_in,
            refresh_token,
        })
    }

    /// `/isAuth`.
    pub fn check(&self, presented: Presented<'_>) -> Result<VerifyData, Reject> {
        let identity = self.verify(presented)?;
        Ok(VerifyData {
            openid: identity.openid,
            unionid: identity.unionid,
        })
    }

    /// `/auth/refresh`: a new token and refresh token for the same session. Presenting an old
    /// refresh token revokes the session.
    pub async fn refresh(&self, refresh_token: &str) -> LoginOutcome {
        let Some(sid) = refresh_token_sid(refresh_token) else {
            return Err(Reject::RefreshTokenInvalid { reused: false });
        };
        if self.revocations().check(sid, self.now_ms()).is_err() {
            return Err(Reject::RefreshTokenInvalid { reused: false });
        }
        let next = new_refresh_token(sid);
        let until = self.revoke_until();
        let rotation = self
            .sessions
            .store
            .rotate_refresh(
                sid,
                &refresh_hash(refresh_token),
                &refresh_hash(&next),
                self.sessions.ttl,
                until,
            )
            .await
            .map_err(Self::store_error)?;
        match rotation {
            Rotation::Rotated(session) => {
                tracing::info!(sid, "refresh");
                let identity = Identity {
                    openid: session.openid,
                    unionid: session.unionid,
                    sid: session.sid,
                };
                self.issue(&identity, next)
            }
            Rotation::Reused => {
                tracing::warn!(sid, "refresh token reused: session revoked");
                self.sessions.revocations.insert(sid, until);
                Err(Reject::RefreshTokenInvalid { reused: true })
            }
            Rotation::Unknown => Err(Reject::RefreshTokenInvalid { reused: false }),
        }
    }

    /// `/auth/logout`: the session ends; every instance refuses its tokens from then on.
    pub async fn logout(&self, presented: Presented<'_>) -> Result<(), Reject> {
        let identity = self.verify(presented)?;
        let until = self.revoke_until();
        self.sessions
            .store
            .revoke(&identity.sid, until)
            .await
            .map_err(Self::store_error)?;
        self.sessions.revocations.insert(&identity.sid, until);
        lock(&self.phones).remove(&identity.sid);
        tracing::info!(sid = %identity.sid, "logout");
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Turn what the client presented into an identity or the right rejection: signature and
/// claims first (no I/O), then the local revocation list.
pub fn verify_presented(
    tokens: &Tokens,
    revocations: &Revocations,
    presented: Presented<'_>,
    now_ms: u64,
) -> Result<Identity, Reject> {
    let identity = match presented {
        Presented::Missing => return Err(Reject::TokenMissing),
        Presented::Unusable => return Err(Reject::Token(TokenProblem::Malformed)),
        Presented::Token(t) => tokens.verify(t).map_err(Reject::Token)?,
    };
    revocations.check(&identity.sid, now_ms)?;
    Ok(identity)
}

/// wx.login() codes are short URL-safe strings; anything else is refused without asking WeChat.
fn plausible_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 128
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The parts of a request the gateway endpoints look at.
pub struct EndpointRequest<'a> {
    pub method: &'a Method,
    pub query: Option<&'a str>,
    pub content_type: Option<&'a [u8]>,
    pub body: &'a [u8],
}

enum BodyKind {
    Empty,
    Form,
    Json,
}

fn body_kind(req: &EndpointRequest<'_>) -> BodyKind {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return BodyKind::Empty;
    }
    let is_form = req.content_type.is_some_and(|ct| {
        ct.len() >= 33 && ct[..33].eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    });
    if is_form {
        BodyKind::Form
    } else {
        BodyKind::Json
    }
}

type Fields = serde_json::Map<String, serde_json::Value>;

/// `a=1&b=2` as string fields; the first of repeated names counts.
fn form_fields(bytes: &[u8]) -> Fields {
    let mut fields = Fields::new();
    for (k, v) in form_urlencoded::parse(bytes) {
        fields
            .entry(k.into_owned())
            .or_insert_with(|| serde_json::Value::String(v.into_owned()));
    }
    fields
}

/// A JSON body as an object; anything else is [`Reject::BadBody`].
fn json_object(body: &[u8]) -> Result<Fields, Reject> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(Reject::BadBody),
    }
}

/// The body as fields, whatever the method: empty, a form, or a JSON object.
fn body_fields(req: &EndpointRequest<'_>) -> Result<Fields, Reject> {
    match body_kind(req) {
        BodyKind::Empty => Ok(Fields::new()),
        BodyKind::Json => json_object(req.body),
        BodyKind::Form => Ok(form_fields(req.body)),
    }
}

/// The login code of an `/auth` request: `GET ?code=`, or `POST` with `{"code": "..."}` (a form
/// body, or the query when the body is empty, also work).
pub fn login_code(req: &EndpointRequest<'_>) -> Result<String, Reject> {
    let from_query = || form_fields(req.query.unwrap_or("").as_bytes());
    let fields = match *req.method {
        Method::GET => from_query(),
        Method::POST if matches!(body_kind(req), BodyKind::Empty) => from_query(),
        Method::POST => body_fields(req)?,
        _ => return Err(Reject::MethodNotAllowed),
    };
    string_field(&fields, "code", Reject::LoginCodeMissing)
}

/// The refresh token of an `/auth/refresh` request: `{"refresh_token": "..."}` (or a form).
pub fn refresh_token(req: &EndpointRequest<'_>) -> Result<String, Reject> {
    string_field(
        &post_body(req)?,
        "refresh_token",
        Reject::RefreshTokenMissing,
    )
}

/// The fields of a POST endpoint's body (JSON object or form); an empty body has none.
pub fn post_body(req: &EndpointRequest<'_>) -> Result<Fields, Reject> {
    if *req.method != Method::POST {
        return Err(Reject::MethodNotAllowed);
    }
    body_fields(req)
}

/// A required string field of a body: absent, null or blank is `missing`; another type is
/// [`Reject::BadBody`].
pub fn string_field(body: &Fields, name: &str, missing: Reject) -> Result<String, Reject> {
    match body.get(name) {
        None | Some(serde_json::Value::Null) => Err(missing),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Err(missing),
        Some(serde_json::Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => Err(Reject::BadBody),
    }
}

/// What an `/isAuth` request presents: the body's `token` first (the tutorial), then headers.
pub fn verify_token<'a>(
    body_json: Option<&'a Fields>,
    headers: &'a http::HeaderMap,
) -> Presented<'a> {
    let from_body = match body_json {
        Some(map) => extract::from_json_field(map.get("token")),
        None => Presented::Missing,
    };
    match from_body {
        Presented::Missing => extract::from_headers(headers),
        other => other,
    }
}

/// Parse the `/isAuth` body: empty is fine (the token may be in a header), otherwise a JSON
/// object or a form.
pub fn verify_body(req: &EndpointRequest<'_>) -> Result<Option<Fields>, Reject> {
    match *req.method {
        Method::GET | Method::POST => {}
        _ => return Err(Reject::MethodNotAllowed),
    }
    match body_kind(req) {
        BodyKind::Empty => Ok(None),
        _ => body_fields(req).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(
        method: &'a Method,
        query: Option<&'a str>,
        ct: Option<&'a str>,
        body: &'a str,
    ) -> EndpointRequest<'a> {
        EndpointRequest {
            method,
            query,
            content_type: ct.map(str::as_bytes),
            body: body.as_bytes(),
        }
    }

    #[test]
    fn code_from_query_json_or_form() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            login_code(&req(&get, Some("code=abc"), None, "")),
            Ok("abc".into())
        );
        assert_eq!(
            login_code(&req(&get, Some("x=1&code=a%2Eb"), None, "")),
            Ok("a.b".into())
        );
        assert_eq!(
            login_code(&req(
                &post,
                None,
                Some("application/json"),
                r#"{"code":"abc"}"#
            )),
            Ok("abc".into())
        );
        assert_eq!(
            login_code(&req(&post, None, None, r#"{"code":"abc"}"#)),
            Ok("abc".into())
        );
        assert_eq!(
            login_code(&req(
                &post,
                None,
                Some("application/x-www-form-urlencoded; charset=utf-8"),
                "code=abc"
            )),
            Ok("abc".into())
        );
        assert_eq!(
            login_code(&req(&post, Some("code=q"), None, "")),
            Ok("q".into())
        );
    }

    #[test]
    fn missing_code_and_bad_bodies() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            login_code(&req(&get, None, None, "")),
            Err(Reject::LoginCodeMissing)
        );
        assert_eq!(
            login_code(&req(&get, Some("code="), None, "")),
            Err(Reject::LoginCodeMissing)
        );
        assert_eq!(
            login_code(&req(&post, None, None, "{}")),
            Err(Reject::LoginCodeMissing)
        );
        assert_eq!(
            login_code(&req(&post, None, None, r#"{"code":null}"#)),
            Err(Reject::LoginCodeMissing)
        );
        assert_eq!(
            login_code(&req(&post, None, None, "not json")),
            Err(Reject::BadBody)
        );
        assert_eq!(
            login_code(&req(&post, None, None, "[1,2]")),
            Err(Reject::BadBody)
        );
        assert_eq!(
            login_code(&req(&post, None, None, r#"{"code":5}"#)),
            Err(Reject::BadBody)
        );
        assert_eq!(
            login_code(&req(&post, None, None, "{\"code\":\"\u{0}")),
            Err(Reject::BadBody)
        );
        assert_eq!(
            login_code(&req(&Method::PUT, None, None, "")),
            Err(Reject::MethodNotAllowed)
        );
    }

    #[test]
    fn implausible_codes() {
        assert!(plausible_code("081AbcDEF-_.9"));
        assert!(!plausible_code(""));
        assert!(!plausible_code("a b"));
        assert!(!plausible_code("a&secret=x"));
        assert!(!plausible_code(&"a".repeat(129)));
    }

    #[test]
    fn verify_token_sources() {
        let post = Method::POST;
        let headers = http::HeaderMap::new();
        let r = req(&post, None, None, r#"{"token":"abc"}"#);
        let body = verify_body(&r).unwrap();
        assert_eq!(
            verify_token(body.as_ref(), &headers),
            Presented::Token("abc")
        );
        let r = req(&post, None, None, "");
        let body = verify_body(&r).unwrap();
        assert_eq!(verify_token(body.as_ref(), &headers), Presented::Missing);
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer h".parse().unwrap());
        assert_eq!(verify_token(body.as_ref(), &headers), Presented::Token("h"));
        let r = req(&post, None, None, "garbage");
        assert_eq!(verify_body(&r), Err(Reject::BadBody));
    }
}

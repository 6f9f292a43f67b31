//! The auth service: `/auth` (code -> WeChat -> session -> token), token checks, refresh and
//! logout. The HTTP side (parsing, dispatch) is in [`super::endpoints`]; the user's phone number
//! and encrypted data in `user_data.rs`.

use super::extract::Presented;
use super::jwt::{unix_now, Tokens};
use super::Identity;
use crate::reply::{Reject, TokenProblem};
use crate::session::Phone;
use crate::session::{
    new_refresh_token, new_sid, refresh_hash, refresh_token_sid, Clock, Created, Revocations,
    Rotation, Session, SessionStore,
};
use crate::wechat::{AccessTokens, Code2Session, WechatClient};
use futures::future::{BoxFuture, FutureExt, Shared};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

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
    /// The mini program the token was issued for.
    pub appid: String,
}

type LoginOutcome = Result<LoginData, Reject>;

/// How long WeChat's answer for a code is kept when its session could not be stored: a login
/// code is valid for 5 minutes, and a retry with the same code within them then logs in
/// without calling WeChat (which would answer 40163 for the spent code).
const UNSTORED_MS: u64 = 5 * 60_000;
const UNSTORED_MAX: usize = 10_000;
type InFlight = Mutex<HashMap<String, Shared<BoxFuture<'static, LoginOutcome>>>>;

/// Sessions: where they are kept, how long they live, which are revoked.
#[derive(Clone)]
pub struct Sessions {
    pub store: Arc<dyn SessionStore>,
    pub revocations: Arc<Revocations>,
    pub clock: Arc<dyn Clock>,
    /// How long a session and its refresh token live.
    pub ttl: Duration,
}

/// How long a phone number read from the store is reused for forwarding.
pub(super) const PHONE_CACHE_MS: u64 = 60_000;
pub(super) const PHONE_CACHE_MAX: usize = 100_000;

/// What the auth service is made of. Each part follows one section of the configuration, so a
/// reload replaces only the parts whose section changed ([`Login::with_parts`]).
pub struct LoginParts {
    /// `[wechat]`.
    pub wechat: Arc<WechatClient>,
    /// `[jwt]` (and the appid, the tokens' audience).
    pub tokens: Arc<Tokens>,
    /// `[session]`.
    pub sessions: Sessions,
}

/// State that belongs to one session store: it survives every reload that keeps the store.
#[derive(Default)]
pub(super) struct Caches {
    /// Logins under way, by code (single-flight).
    in_flight: InFlight,
    /// sid -> (phone, fetched at ms): only numbers that were found, so a new one shows at once.
    pub(super) phones: Mutex<HashMap<String, (Phone, u64)>>,
    /// code -> (WeChat's answer, until ms): exchanges whose session the store refused.
    unstored: Mutex<HashMap<String, (Code2Session, u64)>>,
}

/// The auth service: logins, tokens, sessions, the user's phone number and encrypted data.
pub struct Login {
    /// The mini program's appid (`[wechat] appid`), shared with every identity it issues.
    appid: Arc<str>,
    pub(super) wechat: Arc<WechatClient>,
    access_tokens: Arc<AccessTokens>,
    tokens: Arc<Tokens>,
    pub(super) sessions: Sessions,
    pub(super) caches: Arc<Caches>,
}

impl Login {
    pub fn new(parts: LoginParts) -> Self {
        let access_tokens = Arc::new(AccessTokens::new(
            parts.wechat.clone(),
            parts.sessions.store.clone(),
            parts.sessions.clock.clone(),
        ));
        Login {
            appid: Arc::from(parts.wechat.appid()),
            wechat: parts.wechat,
            access_tokens,
            tokens: parts.tokens,
            sessions: parts.sessions,
            caches: Arc::default(),
        }
    }

    /// This service with some parts replaced. What still applies is kept: the caches and the
    /// logins under way while the store is the same, the access token while neither the WeChat
    /// client nor the store changed.
    pub fn with_parts(&self, parts: LoginParts) -> Self {
        let same_store = Arc::ptr_eq(&self.sessions.store, &parts.sessions.store);
        let same_wechat = Arc::ptr_eq(&self.wechat, &parts.wechat);
        let mut next = Login::new(parts);
        if same_store {
            next.caches = self.caches.clone();
            if same_wechat {
                next.access_tokens = self.access_tokens.clone();
            }
        }
        next
    }

    /// The parts, to build the next service from.
    pub fn parts(&self) -> LoginParts {
        LoginParts {
            wechat: self.wechat.clone(),
            tokens: self.tokens.clone(),
            sessions: self.sessions.clone(),
        }
    }

    /// The app's WeChat client (the relay calls WeChat through it).
    pub fn wechat(&self) -> &Arc<WechatClient> {
        &self.wechat
    }

    pub fn access_tokens(&self) -> &AccessTokens {
        &self.access_tokens
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The mini program this service logs users in to.
    pub fn appid(&self) -> &Arc<str> {
        &self.appid
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

    pub(super) fn store_error(e: crate::session::StoreError) -> Reject {
        crate::metrics::METRICS.store_errors.inc();
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
            let mut map = lock(&self.caches.in_flight);
            match map.get(code) {
                Some(existing) => existing.clone(),
                None => {
                    let me = Arc::clone(self);
                    let key = code.to_string();
                    // The caller's span (its request id) goes with the exchange into its task.
                    let task = tokio::spawn(
                        async move {
                            let outcome = me.exchange(&key).await;
                            lock(&me.caches.in_flight).remove(&key);
                            outcome
                        }
                        .in_current_span(),
                    );
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
            let mut unstored = lock(&self.caches.unstored);
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
                let mut unstored = lock(&self.caches.unstored);
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
            values: Default::default(),
            openid: wx.openid.clone(),
            unionid: wx.unionid.clone(),
            sid: new_sid(),
            appid: self.appid.clone(),
        };
        let refresh_token = new_refresh_token(&identity.sid);
        let session = Session {
            sid: identity.sid.clone(),
            openid: identity.openid.clone(),
            unionid: identity.unionid.clone(),
            session_key: wx.session_key.clone(),
            created_at: unix_now(),
            refresh_hash: refresh_hash(&refresh_token),
            retired: Vec::new(),
            phone: None,
        };
        let created = self
            .sessions
            .store
            .create(&session, self.sessions.ttl)
            .await
            .map_err(Self::store_error)?;
        if let Created::Blocked { until_ms } = created {
            tracing::info!(until_ms, "login refused: user blocked");
            return Err(Reject::UserBlocked);
        }
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
            appid: identity.appid.to_string(),
        })
    }

    /// `/auth/refresh`: a new token and refresh token for the same session. Presenting an old
    /// refresh token revokes the session.
    pub async fn refresh(&self, refresh_token: &str) -> LoginOutcome {
        let Some(sid) = refresh_token_sid(refresh_token) else {
            return Err(Reject::RefreshTokenInvalid { reused: false });
        };
        match self.revocations().check(sid, self.now_ms()) {
            Ok(()) => {}
            // The local list is stale (the store was down): the store decides, as a revoked
            // session is gone from it. Down still, that is 503 10503; back (a failover just
            // ended), the refresh works before this instance's next sync.
            Err(Reject::StoreUnavailable) => {}
            Err(_) => return Err(Reject::RefreshTokenInvalid { reused: false }),
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
                    values: Default::default(),
                    openid: session.openid,
                    unionid: session.unionid,
                    sid: session.sid,
                    appid: self.appid.clone(),
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
        lock(&self.caches.phones).remove(&identity.sid);
        tracing::info!(sid = %identity.sid, "logout");
        Ok(())
    }
}

/// What revoking a user did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UserRevoked {
    pub openid: String,
    /// Live sessions ended.
    pub sessions: usize,
    /// Unix seconds until which the user's logins are refused, when blocked.
    pub blocked_until: Option<u64>,
}

impl Login {
    /// End every session of `openid` on every instance (they learn it through the revocation
    /// list within a sync interval; this one at once) and, with `block`, refuse the user's logins
    /// for that long. Logged (the openid as `[log] openid` says) and counted.
    pub async fn revoke_user(
        &self,
        openid: &str,
        block: Option<Duration>,
        log_as: crate::config::OpenidInLog,
    ) -> Result<UserRevoked, Reject> {
        let now_ms = self.now_ms();
        let block_until_ms = block.map(|b| now_ms.saturating_add(b.as_millis() as u64));
        let sessions = self
            .sessions
            .store
            .revoke_user(openid, self.revoke_until(), block_until_ms)
            .await
            .map_err(Self::store_error)?;
        // The revoked sids, from the store's own list: at once here, whatever the store.
        if let Err(e) = self
            .sessions
            .revocations
            .sync(&*self.sessions.store, now_ms)
            .await
        {
            tracing::warn!("user revoked, but the local revocation list lags: {e}");
        }
        let revoked = UserRevoked {
            openid: openid.to_string(),
            sessions,
            blocked_until: block_until_ms.map(|ms| ms.div_ceil(1000)),
        };
        log_user_revoked(&revoked, log_as);
        Ok(revoked)
    }
}

/// The `user revoked` log line and counter, for whoever did it (the admin listener, the CLI).
pub fn log_user_revoked(revoked: &UserRevoked, log_as: crate::config::OpenidInLog) {
    let openid = crate::proxy::access::openid_for_log(&revoked.openid, log_as);
    tracing::info!(
        openid = openid.as_deref().unwrap_or("-"),
        sessions = revoked.sessions,
        blocked_until = revoked.blocked_until,
        "user revoked"
    );
    crate::metrics::METRICS
        .user_revocations
        .with_label_values(&[if revoked.blocked_until.is_some() {
            "true"
        } else {
            "false"
        }])
        .inc();
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    Ok(Arc::unwrap_or_clone(identity))
}

/// wx.login() codes are short URL-safe strings; anything else is refused without asking WeChat.
pub(super) fn plausible_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 128
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

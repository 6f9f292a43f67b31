//! The app's one WeChat access token, for every API that needs one (the phone number today; the
//! API relay for upstream apps later).
//!
//! Looked up in order: this instance's copy, the copy shared through the session store, then
//! WeChat itself, by one fetch at a time (a local mutex within an instance, a store lock across
//! instances), so instances never invalidate each other's token. A token is replaced once 80% of
//! its lifetime has passed (before it expires). When WeChat answers 40001/42001 the token is
//! dropped everywhere, fetched again once, and the call retried once.

use super::{WechatClient, WechatError};
use crate::secret::Secret;
use crate::session::{Clock, SessionStore, SharedValue};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The name of the shared value and of the fetch lock in the store.
const NAME: &str = "access_token";
/// How long one instance may hold the fetch lock.
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long an instance waits for another one's fetch before fetching itself.
const WAIT_FOR_OTHER: Duration = Duration::from_secs(3);

pub struct AccessTokens {
    client: Arc<WechatClient>,
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    local: Mutex<Local>,
    fetching: tokio::sync::Mutex<()>,
}

/// Whether WeChat rejected the token itself (invalid or not latest, expired).
pub fn is_token_error(e: &WechatError) -> bool {
    matches!(e, WechatError::Api(40001 | 42001))
}

/// The token this instance holds, and how many refusals (`invalidate`) it has seen: a value read
/// from the store or fetched is kept only if no refusal came in between, so a read that raced a
/// refusal cannot put the refused token back.
#[derive(Default)]
struct Local {
    value: Option<SharedValue>,
    refusals: u64,
}

impl AccessTokens {
    pub fn new(
        client: Arc<WechatClient>,
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        AccessTokens {
            client,
            store,
            clock,
            local: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh_local(&self, now: u64) -> Option<Secret> {
        self.local()
            .value
            .as_ref()
            .filter(|v| v.refresh_at_ms > now)
            .map(|v| Secret::new(v.value.clone()))
    }

    /// Hold `value` unless a refusal came in since `refusals` was read; either way it is the
    /// caller's token for this call.
    fn keep(&self, value: &SharedValue, refusals: u64) -> Secret {
        let mut local = self.local();
        if local.refusals == refusals {
            local.value = Some(value.clone());
        }
        Secret::new(value.value.clone())
    }

    async fn fresh_shared(&self) -> Option<SharedValue> {
        match self.store.get_shared(NAME).await {
            Ok(v) => v.filter(|v| v.refresh_at_ms > self.clock.now_ms()),
            Err(e) => {
                tracing::warn!("access token: session store unavailable ({e}); fetching alone");
                None
            }
        }
    }

    /// A valid access token.
    pub async fn get(&self) -> Result<Secret, WechatError> {
        if let Some(t) = self.fresh_local(self.clock.now_ms()) {
            return Ok(t);
        }
        let _one_fetch_here = self.fetching.lock().await;
        if let Some(t) = self.fresh_local(self.clock.now_ms()) {
            return Ok(t);
        }
        let refusals = self.local().refusals;
        if let Some(v) = self.fresh_shared().await {
            return Ok(self.keep(&v, refusals));
        }
        let lock = match self.store.try_lock(NAME, LOCK_TTL).await {
            Ok(lock) => lock,
            // The store is down: nobody can share, so fetch (stable_token tolerates it).
            Err(_) => Some(String::new()),
        };
        let value = match lock {
            Some(lock) => {
                // Another instance may have fetched, shared and unlocked between the read above
                // and this lock: read again before fetching (a second fetch would cost a call of
                // the quota, and with `cgi-bin/token` end the other instance's token early).
                let fetched = match self.fresh_shared().await {
                    Some(v) => Ok(v),
                    None => self.fetch_and_share().await,
                };
                if !lock.is_empty() {
                    let _ = self.store.unlock(NAME, &lock).await;
                }
                fetched?
            }
            None => self.wait_for_other_instance().await?,
        };
        Ok(self.keep(&value, refusals))
    }

    async fn wait_for_other_instance(&self) -> Result<SharedValue, WechatError> {
        let give_up = self.clock.now_ms() + WAIT_FOR_OTHER.as_millis() as u64;
        while self.clock.now_ms() < give_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(v) = self.fresh_shared().await {
                return Ok(v);
            }
        }
        self.fetch_and_share().await
    }

    async fn fetch_and_share(&self) -> Result<SharedValue, WechatError> {
        let fetched = self.client.fetch_access_token().await?;
        let now = self.clock.now_ms();
        let lifetime_ms = fetched.expires_in.saturating_mul(1000);
        let value = SharedValue {
            value: fetched.token.expose().to_string(),
            expires_at_ms: now + lifetime_ms,
            refresh_at_ms: now + lifetime_ms / 10 * 8,
        };
        if let Err(e) = self.store.put_shared(NAME, &value).await {
            tracing::warn!("access token not shared: {e}");
        }
        Ok(value)
    }

    /// Forget a token WeChat refused, here and in the store.
    /// The store first: once the local copy is dropped, nothing here reads the refused token back
    /// from the store, and a read that began before is not kept (`Local::refusals`).
    pub async fn invalidate(&self, bad: &Secret) {
        if let Err(e) = self.store.delete_shared(NAME, bad.expose()).await {
            tracing::warn!("cannot drop the refused access token from the store: {e}");
        }
        let mut local = self.local();
        local.refusals += 1;
        if local
            .value
            .as_ref()
            .is_some_and(|v| v.value == bad.expose())
        {
            local.value = None;
        }
    }

    /// Call a WeChat API with the token; on 40001/42001 fetch a new one and call once more.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, WechatError>
    where
        F: Fn(Secret) -> Fut,
        Fut: Future<Output = Result<T, WechatError>>,
    {
        let token = self.get().await?;
        match f(token.clone()).await {
            Err(e) if is_token_error(&e) => {
                tracing::info!("access token refused by WeChat ({e:?}); fetching a new one");
                self.invalidate(&token).await;
                f(self.get().await?).await
            }
            other => other,
        }
    }
}

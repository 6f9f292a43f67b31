//! The user's data beyond the login: the phone number (`/auth/phone`, forwarded to routes with
//! `forward_phone`) and WeChat's encrypted user data (`/auth/decrypt`).

use super::service::{lock, plausible_code, Login, PHONE_CACHE_MAX, PHONE_CACHE_MS};
use super::Identity;
use crate::config::FailMode;
use crate::reply::Reject;
use crate::session::{Phone, Session};
use crate::wechat::{crypto, WechatError};

impl Login {
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
            .access_tokens()
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
        let mut cache = lock(&self.caches.phones);
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
        if let Some((phone, at)) = lock(&self.caches.phones).get(sid) {
            if now.saturating_sub(*at) < PHONE_CACHE_MS {
                return Ok(Some(phone.clone()));
            }
        }
        match self.sessions.store.get(sid).await {
            Ok(session) => {
                let phone = session.and_then(|s| s.phone);
                if let Some(p) = &phone {
                    let mut cache = lock(&self.caches.phones);
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
}

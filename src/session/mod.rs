//! Server-side sessions: what WeChat told us at login (openid, unionid, session_key), kept in
//! the gateway so that nothing secret travels in a token, plus the hash of the session's current
//! refresh token and the list of revoked sessions.
//!
//! The store is chosen at start-up behind [`SessionStore`]: [`MemoryStore`] (one instance) or
//! [`RedisStore`] (shared by several). Both pass one conformance suite (`tests/session_store.rs`).
//! Proxied requests never wait on the store: they consult [`Revocations`], a local copy of the
//! revocation list that a background task keeps in step.

mod clock;
mod memory;
mod redis;
mod revocation;

pub use self::redis::RedisStore;
pub use clock::{millis, unix_secs, Clock, ManualClock, SystemClock};
pub use memory::MemoryStore;
pub use revocation::{RevocationSync, Revocations};

use crate::secret::Secret;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::Duration;

/// One logged-in user of one mini program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Random, unguessable id; the token's `sid` claim.
    pub sid: String,
    pub openid: String,
    pub unionid: Option<String>,
    /// WeChat's key for this user's encrypted data. Never leaves the gateway.
    pub session_key: Secret,
    /// Unix seconds.
    pub created_at: u64,
    /// SHA-256 (hex) of the one refresh token that is valid now.
    pub refresh_hash: String,
    /// The hashes of the refresh tokens this session was issued before it, newest first, at most
    /// [`RETIRED_KEPT`]: presenting one of them is a replay (the session is revoked); presenting
    /// a token never issued is not, so knowing a `sid` (every access token shows it) is not
    /// enough to end someone's session.
    pub retired: Vec<String>,
    /// The phone number WeChat verified for this user, once asked for.
    pub phone: Option<Phone>,
}

/// A phone number as WeChat reports it (field names as in WeChat's answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phone {
    /// With the country code for numbers outside China, e.g. "+1 2025550123".
    #[serde(rename = "phoneNumber")]
    pub phone_number: String,
    #[serde(rename = "purePhoneNumber")]
    pub pure_phone_number: String,
    #[serde(rename = "countryCode")]
    pub country_code: String,
}

/// A value shared by every instance (the WeChat access token), with its expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedValue {
    pub value: String,
    /// Unix ms after which the value must not be used.
    pub expires_at_ms: u64,
    /// Unix ms after which it should be replaced.
    pub refresh_at_ms: u64,
}

/// A store failure; the message is safe to log (never session contents, never the Redis URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many retired refresh tokens a session remembers for replay detection: a stolen token
/// replayed after more refreshes than this is refused as unknown, without ending the session.
pub const RETIRED_KEPT: usize = 4;

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// It was the current one: the session now expects `next`, and lives `ttl` again.
    Rotated(Box<Session>),
    /// One of the session's earlier refresh tokens was replayed, so the session is revoked
    /// (reuse means theft).
    Reused,
    /// No such session (never was, expired, or revoked), or a token it was never issued.
    Unknown,
}

/// A revoked session: tokens naming `sid` are refused until `until` (unix seconds), when every
/// token issued for it has expired anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub sid: String,
    pub until: u64,
}

/// What storing a new session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Stored,
    /// The user is blocked (`wxgate revoke --block`) until this unix ms: nothing was stored.
    Blocked {
        until_ms: u64,
    },
}

/// Revocations recorded after a cursor, and the cursor to ask from next time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevocationBatch {
    pub cursor: u64,
    pub revoked: Vec<Revocation>,
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Store a new session for `ttl` and index it under its openid, unless the user is blocked:
    /// one atomic step, so a login costs no extra round trip and cannot slip past a block.
    async fn create(&self, session: &Session, ttl: Duration) -> Result<Created, StoreError>;

    /// The live session with this id, if any.
    async fn get(&self, sid: &str) -> Result<Option<Session>, StoreError>;

    /// Atomically swap the session's refresh hash from `presented` to `next` (retiring
    /// `presented`) and restart its `ttl`; when `presented` is one of its retired hashes, revoke
    /// the session until `revoke_until`; any other hash changes nothing.
    async fn rotate_refresh(
        &self,
        sid: &str,
        presented: &str,
        next: &str,
        ttl: Duration,
        revoke_until: u64,
    ) -> Result<Rotation, StoreError>;

    /// Delete the session and record its revocation until `until` (unix seconds).
    async fn revoke(&self, sid: &str, until: u64) -> Result<(), StoreError>;

    /// Revoke every session of `openid` as [`Self::revoke`] does (until `until`, unix seconds),
    /// forget the user's index, and with `block_until_ms` refuse the user's logins until then.
    /// Answers how many live sessions were ended. One atomic step.
    async fn revoke_user(
        &self,
        openid: &str,
        until: u64,
        block_until_ms: Option<u64>,
    ) -> Result<usize, StoreError>;

    /// Revocations recorded after `cursor` (0: all that are still in force).
    async fn revocations_since(&self, cursor: u64) -> Result<RevocationBatch, StoreError>;

    /// Record the session's verified phone number; `false` when there is no such session.
    async fn set_phone(&self, sid: &str, phone: &Phone) -> Result<bool, StoreError>;

    /// A value shared between instances, if present and not expired.
    async fn get_shared(&self, name: &str) -> Result<Option<SharedValue>, StoreError>;

    /// Store a shared value until its `expires_at_ms`.
    async fn put_shared(&self, name: &str, value: &SharedValue) -> Result<(), StoreError>;

    /// Remove a shared value if it still holds `value` (compare-and-delete).
    async fn delete_shared(&self, name: &str, value: &str) -> Result<(), StoreError>;

    /// Take a lock for at most `ttl`; `Some(token)` when taken, to pass to [`Self::unlock`].
    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<String>, StoreError>;

    /// Release a lock taken with [`Self::try_lock`] (no effect if it expired and was retaken).
    async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreError>;

    /// Prove, before a login spends the user's one-time code at WeChat, that the store accepts
    /// a write now (one bounded round trip for Redis; nothing to prove in memory).
    async fn ready_for_login(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the store shares state between gateway instances (then revocations must be
    /// fetched from it; an in-process store tells this instance directly).
    fn is_shared(&self) -> bool;

    /// Which store this is, for the status page, `/readyz` and the metrics: the form
    /// (`memory`, `redis`, `redis-sentinel`, `redis-cluster`) and the addresses it was given,
    /// never a password.
    fn location(&self) -> StoreLocation {
        StoreLocation {
            form: "memory",
            addresses: Vec::new(),
        }
    }
}

/// What [`SessionStore::location`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLocation {
    pub form: &'static str,
    /// `host:port` (with `/db` when not 0), and for Sentinel the primary's name first.
    pub addresses: Vec<String>,
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.form)?;
        if !self.addresses.is_empty() {
            write!(f, " {}", self.addresses.join(", "))?;
        }
        Ok(())
    }
}

/// A fresh session id: 128 random bits, URL-safe base64.
pub fn new_sid() -> String {
    random_token(16)
}

/// A fresh lock token.
pub fn new_lock_token() -> String {
    random_token(16)
}

fn random_token(bytes: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A new refresh token for a session: `<sid>.<256 random bits>`. Opaque to clients; the sid
/// part lets the gateway find the session without an index. Only its hash is stored.
pub fn new_refresh_token(sid: &str) -> String {
    format!("{sid}.{}", random_token(32))
}

/// The session a refresh token claims to belong to.
pub fn refresh_token_sid(token: &str) -> Option<&str> {
    let (sid, secret) = token.split_once('.')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (ok(sid) && ok(secret)).then_some(sid)
}

/// SHA-256 of a refresh token, hex.
pub fn refresh_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_carry_their_sid_and_enough_entropy() {
        let sid = new_sid();
        let t = new_refresh_token(&sid);
        assert_eq!(refresh_token_sid(&t), Some(sid.as_str()));
        assert_eq!(t.len() - sid.len() - 1, 43, "256 bits in base64url");
        assert_ne!(new_refresh_token(&sid), t);
        assert_eq!(refresh_hash(&t).len(), 64);
        assert_eq!(refresh_hash(&t), refresh_hash(&t));
    }

    #[test]
    fn malformed_refresh_tokens_have_no_sid() {
        for t in [
            "",
            ".",
            "abc",
            "abc.",
            ".abc",
            "a b.c",
            "a.b.c",
            "ä.b",
            &format!("{}.x", "a".repeat(65)),
        ] {
            assert_eq!(refresh_token_sid(t), None, "{t:?}");
        }
    }
}

//! Server-side sessions: what WeChat told us at login (openid, unionid, session_key), kept in
//! the gateway so that nothing secret travels in a token. The store is chosen at start-up
//! behind [`SessionStore`]; today the embedded [`MemoryStore`].

mod memory;

pub use memory::MemoryStore;

use crate::secret::Secret;
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// One logged-in user of one mini program.
#[derive(Clone, Debug)]
pub struct Session {
    /// Random, unguessable id; the token's `sid` claim.
    pub sid: String,
    pub openid: String,
    pub unionid: Option<String>,
    /// WeChat's key for this user's encrypted data. Never leaves the gateway.
    pub session_key: Secret,
    /// Unix seconds.
    pub created_at: u64,
}

/// A store failure; the message is safe to log (it never carries session contents).
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Store (or replace) a session for `ttl`.
    async fn put(&self, session: Session, ttl: Duration) -> Result<(), StoreError>;
    /// The live session with this id, if any.
    async fn get(&self, sid: &str) -> Result<Option<Session>, StoreError>;
    /// Forget a session (no error if it is already gone).
    async fn remove(&self, sid: &str) -> Result<(), StoreError>;
}

/// A fresh session id: 128 random bits, URL-safe base64.
pub fn new_sid() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

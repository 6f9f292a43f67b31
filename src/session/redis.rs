//! The shared session store: Redis, for several gateway instances.
//!
//! Keys are namespaced by appid, with the appid as a hash tag so one app's keys share a slot:
//! `wxgate:{APPID}:session:SID` (a hash with a TTL), `wxgate:{APPID}:revoked` (sorted set, sid by
//! revocation sequence number), `wxgate:{APPID}:revoked:until` (sid by expiry of the revocation)
//! and `wxgate:{APPID}:revoked:seq` (the sequence). Multi-key changes are Lua scripts, so they are
//! atomic. Every operation is bounded by `session.timeout`; the connection is re-established by
//! the connection manager when Redis comes back.

use super::{
    millis, new_lock_token, unix_secs, Clock, Phone, Revocation, RevocationBatch, Rotation,
    Session, SessionStore, SharedValue, StoreError, SystemClock,
};
use crate::secret::Secret;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Deletes the session and records its revocation; prunes revocations past their `until`.
/// Expects locals `sid`, `till` (until; a Lua keyword), `now` and KEYS[1..4] = session, revoked, revoked:until, seq.
const REVOKE: &str = r#"
redis.call('DEL', KEYS[1])
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[2], seq, sid)
redis.call('ZADD', KEYS[3], till, sid)
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, m in ipairs(old) do
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZREM', KEYS[3], m)
end
"#;

const ROTATE_HEAD: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'refresh')
if not cur then return 0 end
if cur == ARGV[1] then
  redis.call('HSET', KEYS[1], 'refresh', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return redis.call('HGETALL', KEYS[1])
end
local sid, till, now = ARGV[4], ARGV[5], ARGV[6]
"#;

const REVOKE_HEAD: &str = "local sid, till, now = ARGV[1], ARGV[2], ARGV[3]\n";

/// Returns the current sequence number, then (sid, seq, until) for revocations after ARGV[1].
const SINCE: &str = r#"
local out = { redis.call('GET', KEYS[3]) or '0' }
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #items, 2 do
  local u = redis.call('ZSCORE', KEYS[2], items[i])
  if u then
    table.insert(out, items[i])
    table.insert(out, items[i + 1])
    table.insert(out, u)
  end
end
return out
"#;

/// Sets a field only on a session that exists.
const SET_PHONE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'phone', ARGV[1])
return 1
"#;

/// Deletes KEYS[1] if its field (ARGV[1]) or, without a field, its value equals ARGV[2].
const COMPARE_AND_DELETE: &str = r#"
local cur
if ARGV[1] == '' then cur = redis.call('GET', KEYS[1]) else cur = redis.call('HGET', KEYS[1], ARGV[1]) end
if cur == ARGV[2] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    timeout: Duration,
    prefix: String,
    rotate: Script,
    revoke: Script,
    since: Script,
    set_phone: Script,
    compare_and_delete: Script,
}

fn store_error(e: redis::RedisError) -> StoreError {
    StoreError(format!("redis: {e}"))
}

/// A TTL for PEXPIRE / SET PX, which refuse 0.
fn px(d: Duration) -> u64 {
    millis(d).max(1)
}

impl RedisStore {
    /// A store for `appid` at `url`. Connects lazily, on first use, inside the caller's runtime.
    pub fn new(url: &Secret, appid: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url.expose())
            .map_err(|e| StoreError(format!("redis: unusable URL ({:?})", e.kind())))?;
        Ok(RedisStore {
            client,
            conn: OnceCell::new(),
            timeout,
            prefix: format!("wxgate:{{{appid}}}:"),
            rotate: Script::new(&format!("{ROTATE_HEAD}{REVOKE}return -1")),
            revoke: Script::new(&format!("{REVOKE_HEAD}{REVOKE}return 1")),
            since: Script::new(SINCE),
            set_phone: Script::new(SET_PHONE),
            compare_and_delete: Script::new(COMPARE_AND_DELETE),
        })
    }

    fn key(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    fn session_key(&self, sid: &str) -> String {
        format!("{}session:{sid}", self.prefix)
    }

    /// KEYS[1..4] of the scripts that may revoke: session, revoked, revoked:until, seq.
    fn revoking_keys(&self, invocation: &mut redis::ScriptInvocation<'_>, sid: &str) {
        invocation
            .key(self.session_key(sid))
            .key(self.key("revoked"))
            .key(self.key("revoked:until"))
            .key(self.key("revoked:seq"));
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        self.conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .map_err(store_error)
            })
            .await
            .cloned()
    }

    /// Run one Redis operation within the store's timeout.
    async fn bounded<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.conn().await?;
            op(conn).await.map_err(store_error)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError(format!(
                "redis: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn session_from(sid: &str, mut fields: HashMap<String, String>) -> Option<Session> {
        let mut take = |k: &str| fields.remove(k);
        Some(Session {
            sid: sid.to_string(),
            openid: take("openid")?,
            unionid: take("unionid").filter(|u| !u.is_empty()),
            session_key: Secret::new(take("session_key")?),
            created_at: take("created_at")?.parse().ok()?,
            refresh_hash: take("refresh")?,
            phone: take("phone").and_then(|p| serde_json::from_str(&p).ok()),
        })
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, session: &Session, ttl: Duration) -> Result<(), StoreError> {
        let key = self.session_key(&session.sid);
        let created_at = session.created_at.to_string();
        let phone = session
            .phone
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok())
            .unwrap_or_default();
        let mut fields = vec![
            ("openid", session.openid.as_str()),
            ("unionid", session.unionid.as_deref().unwrap_or("")),
            ("session_key", session.session_key.expose()),
            ("created_at", created_at.as_str()),
            ("refresh", session.refresh_hash.as_str()),
        ];
        if !phone.is_empty() {
            fields.push(("phone", phone.as_str()));
        }
        self.bounded(|mut c| async move {
            redis::pipe()
                .atomic()
                .hset_multiple(&key, &fields)
                .ignore()
                .pexpire(&key, px(ttl) as i64)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// A write, not a PING: a replica that became read-only, or a Redis out of memory, answers
    /// a PING but would refuse the session.
    async fn ready_for_login(&self) -> Result<(), StoreError> {
        let key = self.key("login:probe");
        self.bounded(|mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("PX")
                .arg(10_000)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn get(&self, sid: &str) -> Result<Option<Session>, StoreError> {
        let key = self.session_key(sid);
        let fields: HashMap<String, String> = self
            .bounded(
                |mut c| async move { redis::cmd("HGETALL").arg(&key).query_async(&mut c).await },
            )
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Self::session_from(sid, fields))
    }

    async fn rotate_refresh(
        &self,
        sid: &str,
        presented: &str,
        next: &str,
        ttl: Duration,
        revoke_until: u64,
    ) -> Result<Rotation, StoreError> {
        let mut invocation = self.rotate.prepare_invoke();
        self.revoking_keys(&mut invocation, sid);
        invocation
            .arg(presented)
            .arg(next)
            .arg(px(ttl))
            .arg(sid)
            .arg(revoke_until)
            .arg(unix_secs());
        // The script answers the rotated session's fields (read in the same atomic step), or
        // -1 for reuse, or 0 for no session.
        let outcome: redis::Value = self
            .bounded(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        match outcome {
            redis::Value::Int(-1) => Ok(Rotation::Reused),
            redis::Value::Int(_) => Ok(Rotation::Unknown),
            fields => {
                let fields: HashMap<String, String> = redis::from_redis_value(fields)
                    .map_err(|e| StoreError(format!("redis: {e}")))?;
                Self::session_from(sid, fields)
                    .map(Rotation::Rotated)
                    .ok_or_else(|| StoreError("redis: session hash is incomplete".into()))
            }
        }
    }

    async fn revoke(&self, sid: &str, until: u64) -> Result<(), StoreError> {
        let mut invocation = self.revoke.prepare_invoke();
        self.revoking_keys(&mut invocation, sid);
        invocation.arg(sid).arg(until).arg(unix_secs());
        self.bounded(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    async fn revocations_since(&self, cursor: u64) -> Result<RevocationBatch, StoreError> {
        let fetch = |cursor: u64| {
            let mut invocation = self.since.prepare_invoke();
            invocation
                .key(self.key("revoked"))
                .key(self.key("revoked:until"))
                .key(self.key("revoked:seq"))
                .arg(cursor);
            self.bounded(
                |mut c| async move { invocation.invoke_async::<Vec<String>>(&mut c).await },
            )
        };
        let number = |s: &str| s.parse::<f64>().ok().map(|f| f as u64);
        let mut cursor = cursor;
        let mut flat = fetch(cursor).await?;
        let current = flat.first().and_then(|s| number(s)).unwrap_or(0);
        if current < cursor {
            // Redis lost its data (flushed, restarted without persistence): start over.
            cursor = 0;
            flat = fetch(0).await?;
        }
        let now = unix_secs();
        let mut batch = RevocationBatch {
            cursor,
            revoked: Vec::new(),
        };
        for triple in flat.get(1..).unwrap_or_default().chunks_exact(3) {
            let (Some(seq), Some(until)) = (number(&triple[1]), number(&triple[2])) else {
                continue;
            };
            batch.cursor = batch.cursor.max(seq);
            if until > now {
                batch.revoked.push(Revocation {
                    sid: triple[0].clone(),
                    until,
                });
            }
        }
        Ok(batch)
    }

    async fn set_phone(&self, sid: &str, phone: &Phone) -> Result<bool, StoreError> {
        let json = serde_json::to_string(phone).map_err(|e| StoreError(e.to_string()))?;
        let mut invocation = self.set_phone.prepare_invoke();
        invocation.key(self.session_key(sid)).arg(json);
        let set: i64 = self
            .bounded(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(set == 1)
    }

    async fn get_shared(&self, name: &str) -> Result<Option<SharedValue>, StoreError> {
        let key = self.key(&format!("shared:{name}"));
        let fields: HashMap<String, String> = self
            .bounded(
                |mut c| async move { redis::cmd("HGETALL").arg(&key).query_async(&mut c).await },
            )
            .await?;
        let number = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
        let value = match (
            fields.get("value"),
            number("expires_at_ms"),
            number("refresh_at_ms"),
        ) {
            (Some(value), Some(expires_at_ms), Some(refresh_at_ms)) => Some(SharedValue {
                value: value.clone(),
                expires_at_ms,
                refresh_at_ms,
            }),
            _ => None,
        };
        let now = SystemClock.now_ms();
        Ok(value.filter(|v| v.expires_at_ms > now))
    }

    async fn put_shared(&self, name: &str, value: &SharedValue) -> Result<(), StoreError> {
        let key = self.key(&format!("shared:{name}"));
        let expires = value.expires_at_ms.to_string();
        let refresh = value.refresh_at_ms.to_string();
        let fields = [
            ("value", value.value.as_str()),
            ("expires_at_ms", expires.as_str()),
            ("refresh_at_ms", refresh.as_str()),
        ];
        let at = value.expires_at_ms as i64;
        self.bounded(|mut c| async move {
            redis::pipe()
                .atomic()
                .del(&key)
                .ignore()
                .hset_multiple(&key, &fields)
                .ignore()
                .pexpire_at(&key, at)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn delete_shared(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let mut invocation = self.compare_and_delete.prepare_invoke();
        invocation
            .key(self.key(&format!("shared:{name}")))
            .arg("value")
            .arg(value);
        self.bounded(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<String>, StoreError> {
        let key = self.key(&format!("lock:{name}"));
        let token = new_lock_token();
        let set: Option<String> = self
            .bounded(|mut c| {
                let token = token.clone();
                async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(px(ttl))
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(set.map(|_| token))
    }

    async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreError> {
        let mut invocation = self.compare_and_delete.prepare_invoke();
        invocation
            .key(self.key(&format!("lock:{name}")))
            .arg("")
            .arg(token);
        self.bounded(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    fn is_shared(&self) -> bool {
        true
    }
}

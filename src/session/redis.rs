//! The shared session store: Redis, for several gateway instances.
//!
//! Keys are namespaced by appid, with the appid as a hash tag so one app's keys share a slot:
//! `wxgate:{APPID}:session:SID` (a hash with a TTL), `wxgate:{APPID}:revoked` (sorted set, sid by
//! revocation sequence number), `wxgate:{APPID}:revoked:until` (sid by expiry of the revocation),
//! `wxgate:{APPID}:revoked:seq` (the sequence), `wxgate:{APPID}:user:OPENID` (the set of a user's
//! sids, living at least as long as the newest of them) and `wxgate:{APPID}:block:OPENID` (the
//! unix ms until which the user's logins are refused, expiring then). Multi-key changes are Lua
//! scripts, so they are atomic. Every operation is bounded by `session.timeout`.
//!
//! Three ways to reach Redis ([`Link`]), sharing every script and command: one server (a
//! connection manager that reconnects when it comes back), a primary found through Sentinel
//! (asked again after a connection error, so a promoted replica is followed without a restart)
//! and a Cluster (redis-rs's cluster client follows `MOVED`/`ASK` and failovers).
//!
//! On a Cluster, every key one operation touches must share a hash slot. Every key is
//! `wxgate:{APPID}:...`, and a key's slot is that of the text between its first `{` and the next
//! `}`: the appid, for every key, since the prefix holds that `}` (the appid is never empty, and
//! one starting with `}`, which would make the tag empty, is refused for a Cluster).
//! Scripts declare their keys, except the session keys `REVOKE_USER` finds in a user's index
//! and the index key `ROTATE` finds in a session: built inside Lua from the declared prefix,
//! they share the same tag, so the same slot (`keys_of_an_app_share_one_slot` below checks it).

use super::{
    millis, new_lock_token, unix_secs, Clock, Created, Phone, Revocation, RevocationBatch,
    Rotation, Session, SessionStore, SharedValue, StoreError, StoreLocation, SystemClock,
    RETIRED_KEPT,
};
use crate::config::RedisTarget;
use crate::secret::Secret;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Script, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OnceCell};

/// `revoke(session key, sid, till, now)` deletes the session and records its revocation (`till`:
/// until; a Lua keyword), pruning revocations past their `until`; answers whether the session
/// existed. Expects KEYS[2..4] = revoked, revoked:until, seq.
const REVOKE: &str = r#"
local function revoke(skey, sid, till, now)
  local existed = redis.call('DEL', skey)
  local seq = redis.call('INCR', KEYS[4])
  redis.call('ZADD', KEYS[2], seq, sid)
  redis.call('ZADD', KEYS[3], till, sid)
  local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, m in ipairs(old) do
    redis.call('ZREM', KEYS[2], m)
    redis.call('ZREM', KEYS[3], m)
  end
  return existed
end
"#;

/// Stores a session unless its user is blocked (then answers the block's end, unix ms), and adds
/// it to the user's index, which then lives at least the session's ttl.
/// KEYS = session, user, block; ARGV = ttl ms, sid, then field, value, ...
const CREATE: &str = r#"
local blocked = redis.call('GET', KEYS[3])
if blocked then return blocked end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 0
"#;

/// Revokes every sid in the user's index, deletes the index, and optionally sets the block.
/// KEYS = user, revoked, revoked:until, seq, block; ARGV = till, now, session key prefix, block
/// until ms ('' for none), block ttl ms. Session keys are built from the prefix: they share the
/// `{APPID}` hash tag, so on a Redis Cluster they live in the slot of the declared keys.
const REVOKE_USER: &str = r#"
local ended = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  ended = ended + revoke(ARGV[3] .. sid, sid, ARGV[1], ARGV[2])
end
redis.call('DEL', KEYS[1])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[5])
end
return ended
"#;

/// A refresh restarts the session's ttl, and so the ttl of its user's index (ARGV[7]: the index
/// key's prefix; same `{APPID}` hash tag, as in [`REVOKE_USER`]), which must outlive it. The
/// presented hash joins the session's `retired` list (ARGV[8] kept, newest first); presenting
/// a retired hash revokes the session, any other hash changes nothing.
const ROTATE: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'refresh')
if not cur then return 0 end
local retired = redis.call('HGET', KEYS[1], 'retired') or ''
if cur == ARGV[1] then
  local kept = { cur }
  for h in string.gmatch(retired, '%S+') do
    if #kept < tonumber(ARGV[8]) then table.insert(kept, h) end
  end
  redis.call('HSET', KEYS[1], 'refresh', ARGV[2], 'retired', table.concat(kept, ' '))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  local openid = redis.call('HGET', KEYS[1], 'openid')
  if openid and redis.call('PTTL', ARGV[7] .. openid) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', ARGV[7] .. openid, ARGV[3])
  end
  return redis.call('HGETALL', KEYS[1])
end
for h in string.gmatch(retired, '%S+') do
  if h == ARGV[1] then
    revoke(KEYS[1], ARGV[4], ARGV[5], ARGV[6])
    return -1
  end
end
return 0
"#;

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

/// How this store reaches Redis.
enum Link {
    /// `session.redis_url`: today's connection manager.
    Server {
        client: redis::Client,
        conn: OnceCell<ConnectionManager>,
    },
    /// A primary named by the sentinels. `current` is dropped on a connection error, and the
    /// next operation asks the sentinels again (`lookup` lets one caller at a time do so).
    Sentinel {
        lookup: Mutex<SentinelClient>,
        current: ArcSwapOption<MultiplexedConnection>,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        conn: OnceCell<ClusterConnection>,
    },
}

/// One connection of whichever [`Link`], so that every operation is written once.
#[derive(Clone)]
enum Conn {
    Server(ConnectionManager),
    /// The `Arc` is the identity of the connection `current` held when the operation began, so
    /// a failure drops that one and not a newer one another caller found meanwhile. (Sending
    /// clones the handle out of it: a `MultiplexedConnection` clone shares the socket.)
    Sentinel(Arc<MultiplexedConnection>),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => Arc::make_mut(c).req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => Arc::make_mut(c).req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether an error means the Sentinel-named primary is gone or no longer the primary (a
/// demoted primary answers writes with `READONLY`), so the sentinels must be asked again.
fn primary_lost(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        )
}

pub struct RedisStore {
    link: Link,
    location: StoreLocation,
    /// Set when a Sentinel or Cluster operation failed: a failover may have lost the newest
    /// revocations, so the next sync reads the feed from the start.
    resync: AtomicBool,
    timeout: Duration,
    prefix: String,
    create: Script,
    rotate: Script,
    revoke: Script,
    revoke_user: Script,
    since: Script,
    set_phone: Script,
    compare_and_delete: Script,
}

/// The sentinels' name for the primary, and how to talk to it, from `redis_sentinel_primary`:
/// a bare name, or a URL whose host is the name and which carries the primary's password,
/// database and `rediss://`.
fn sentinel_primary(primary: &str) -> redis::RedisResult<(String, SentinelNodeConnectionInfo)> {
    if !primary.contains("://") {
        return Ok((primary.to_string(), SentinelNodeConnectionInfo::default()));
    }
    let info = primary.into_connection_info()?;
    let node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(info.redis_settings().clone());
    Ok(match info.addr() {
        redis::ConnectionAddr::TcpTls { host, insecure, .. } => (
            host.clone(),
            node.set_tls_mode(if *insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            }),
        ),
        redis::ConnectionAddr::Tcp(host, _) => (host.clone(), node),
        other => (other.to_string(), node),
    })
}

/// Where `target` points, without a password: `host:port`, with `/db` when not 0.
fn location_of(target: &RedisTarget) -> StoreLocation {
    let address = |url: &Secret| match url.expose().into_connection_info() {
        Ok(info) => match info.redis_settings().db() {
            0 => info.addr().to_string(),
            db => format!("{}/{db}", info.addr()),
        },
        Err(_) => "(unusable URL)".to_string(),
    };
    match target {
        RedisTarget::Server { url } => StoreLocation {
            form: "redis",
            addresses: vec![address(url)],
        },
        RedisTarget::Sentinel { sentinels, primary } => {
            let name = match sentinel_primary(primary.expose()) {
                Ok((name, _)) => name,
                Err(_) => "(unusable URL)".to_string(),
            };
            StoreLocation {
                form: "redis-sentinel",
                addresses: std::iter::once(format!("primary {name}"))
                    .chain(sentinels.iter().map(address))
                    .collect(),
            }
        }
        RedisTarget::Cluster { nodes } => StoreLocation {
            form: "redis-cluster",
            addresses: nodes.iter().map(address).collect(),
        },
    }
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
        Self::for_target(&RedisTarget::Server { url: url.clone() }, appid, timeout)
    }

    /// A store for `appid` on `target`. Connects lazily, on first use.
    pub fn for_target(
        target: &RedisTarget,
        appid: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let unusable =
            |e: redis::RedisError| StoreError(format!("redis: unusable URL ({:?})", e.kind()));
        let link = match target {
            RedisTarget::Server { url } => Link::Server {
                client: redis::Client::open(url.expose()).map_err(unusable)?,
                conn: OnceCell::new(),
            },
            RedisTarget::Sentinel { sentinels, primary } => {
                let (name, node) = sentinel_primary(primary.expose()).map_err(unusable)?;
                let sentinels: Vec<&str> = sentinels.iter().map(|s| s.expose()).collect();
                Link::Sentinel {
                    lookup: Mutex::new(
                        SentinelClient::build(
                            sentinels,
                            name,
                            Some(node),
                            SentinelServerType::Master,
                        )
                        .map_err(unusable)?,
                    ),
                    current: ArcSwapOption::empty(),
                }
            }
            RedisTarget::Cluster { nodes } => Link::Cluster {
                client: redis::cluster::ClusterClient::builder(
                    nodes.iter().map(|n| n.expose().to_string()),
                )
                .connection_timeout(timeout)
                .response_timeout(timeout)
                // A slot in migration answers TRYAGAIN for a moment: retry soon, a few times;
                // `bounded` still ends the operation at `session.timeout`.
                .retries(3)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .build()
                .map_err(unusable)?,
                conn: OnceCell::new(),
            },
        };
        Ok(RedisStore {
            link,
            location: location_of(target),
            resync: AtomicBool::new(false),
            timeout,
            prefix: format!("wxgate:{{{appid}}}:"),
            create: Script::new(CREATE),
            rotate: Script::new(&format!("{REVOKE}{ROTATE}")),
            revoke: Script::new(&format!(
                "{REVOKE}return revoke(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"
            )),
            revoke_user: Script::new(&format!("{REVOKE}{REVOKE_USER}")),
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

    fn user_key(&self, openid: &str) -> String {
        format!("{}user:{openid}", self.prefix)
    }

    fn block_key(&self, openid: &str) -> String {
        format!("{}block:{openid}", self.prefix)
    }

    /// KEYS[1..4] of the scripts that may revoke: session, revoked, revoked:until, seq.
    fn revoking_keys(&self, invocation: &mut redis::ScriptInvocation<'_>, sid: &str) {
        invocation
            .key(self.session_key(sid))
            .key(self.key("revoked"))
            .key(self.key("revoked:until"))
            .key(self.key("revoked:seq"));
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.link {
            Link::Server { client, conn } => conn
                .get_or_try_init(|| async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(Duration::from_millis(500));
                    ConnectionManager::new_lazy_with_config(client.clone(), config)
                        .map_err(store_error)
                })
                .await
                .cloned()
                .map(Conn::Server),
            Link::Sentinel { lookup, current } => {
                if let Some(c) = current.load_full() {
                    return Ok(Conn::Sentinel(c));
                }
                let mut lookup = lookup.lock().await;
                // Another caller may have found the primary while this one waited.
                if let Some(c) = current.load_full() {
                    return Ok(Conn::Sentinel(c));
                }
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                let c = Arc::new(
                    lookup
                        .get_async_connection_with_config(&config)
                        .await
                        .map_err(store_error)?,
                );
                current.store(Some(c.clone()));
                Ok(Conn::Sentinel(c))
            }
            Link::Cluster { client, conn } => conn
                .get_or_try_init(|| async {
                    client.get_async_connection().await.map_err(store_error)
                })
                .await
                .cloned()
                .map(Conn::Cluster),
        }
    }

    /// After a failed operation on `used`: forget a Sentinel primary that is gone, and have the
    /// next revocation sync start over (a failover may have lost the newest revocations).
    fn failed(&self, used: Option<&Conn>, lost: bool) {
        match (&self.link, used) {
            (Link::Server { .. }, _) => {}
            (Link::Sentinel { current, .. }, used) => {
                self.resync.store(true, Ordering::Relaxed);
                if let (true, Some(Conn::Sentinel(c))) = (lost, used) {
                    current.compare_and_swap(c, None);
                }
            }
            (Link::Cluster { .. }, _) => self.resync.store(true, Ordering::Relaxed),
        }
    }

    /// Run one Redis operation within the store's timeout.
    async fn bounded<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let used = std::sync::Mutex::new(None);
        let work = async {
            let conn = self.conn().await.map_err(|e| (e, false))?;
            *used.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
            op(conn).await.map_err(|e| {
                let lost = primary_lost(&e);
                (store_error(e), lost)
            })
        };
        let outcome = tokio::time::timeout(self.timeout, work).await;
        let used = used.into_inner().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err((e, lost))) => {
                self.failed(used.as_ref(), lost);
                Err(e)
            }
            Err(_) => {
                self.failed(used.as_ref(), true);
                Err(StoreError(format!(
                    "redis: no answer within {:?}",
                    self.timeout
                )))
            }
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
            retired: take("retired")
                .map(|r| r.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            phone: take("phone").and_then(|p| serde_json::from_str(&p).ok()),
        })
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, session: &Session, ttl: Duration) -> Result<Created, StoreError> {
        let created_at = session.created_at.to_string();
        let phone = session
            .phone
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok())
            .unwrap_or_default();
        let mut invocation = self.create.prepare_invoke();
        invocation
            .key(self.session_key(&session.sid))
            .key(self.user_key(&session.openid))
            .key(self.block_key(&session.openid))
            .arg(px(ttl))
            .arg(&session.sid);
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
        for (field, value) in fields {
            invocation.arg(field).arg(value);
        }
        // 0 when stored, else the block's end (a string, as stored).
        let outcome: redis::Value = self
            .bounded(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        match outcome {
            redis::Value::Int(_) => Ok(Created::Stored),
            other => {
                let until_ms: String = redis::from_redis_value(other)
                    .map_err(|e| StoreError(format!("redis: {e}")))?;
                Ok(Created::Blocked {
                    until_ms: until_ms.parse().unwrap_or(u64::MAX),
                })
            }
        }
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
            .arg(unix_secs())
            .arg(self.key("user:"))
            .arg(RETIRED_KEPT);
        // The script answers the rotated session's fields (read in the same atomic step), or
        // -1 for reuse (a retired token), or 0 for no session or a token never issued.
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
                    .map(|s| Rotation::Rotated(Box::new(s)))
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

    async fn revoke_user(
        &self,
        openid: &str,
        until: u64,
        block_until_ms: Option<u64>,
    ) -> Result<usize, StoreError> {
        let mut invocation = self.revoke_user.prepare_invoke();
        invocation
            .key(self.user_key(openid))
            .key(self.key("revoked"))
            .key(self.key("revoked:until"))
            .key(self.key("revoked:seq"))
            .key(self.block_key(openid))
            .arg(until)
            .arg(unix_secs())
            .arg(self.key("session:"));
        match block_until_ms {
            Some(at) => {
                let ttl = at.saturating_sub(SystemClock.now_ms()).max(1);
                invocation.arg(at).arg(ttl)
            }
            None => invocation.arg("").arg(""),
        };
        let ended: i64 = self
            .bounded(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(ended.max(0) as usize)
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
        // After a failover (Sentinel, Cluster) read from the start: the promoted replica may
        // lack the newest revocations and then count on from a lower sequence number.
        let mut cursor = if self.resync.swap(false, Ordering::Relaxed) {
            0
        } else {
            cursor
        };
        let mut flat = match fetch(cursor).await {
            Ok(flat) => flat,
            Err(e) => {
                if matches!(self.link, Link::Sentinel { .. } | Link::Cluster { .. }) {
                    self.resync.store(true, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
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

    fn location(&self) -> StoreLocation {
        self.location.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes a key by: the text between the first `{` and the next
    /// `}`, when not empty; otherwise the whole key.
    fn hash_tag(key: &str) -> &str {
        if let Some(open) = key.find('{') {
            if let Some(len) = key[open + 1..].find('}') {
                if len > 0 {
                    return &key[open + 1..open + 1 + len];
                }
            }
        }
        key
    }

    #[test]
    fn keys_of_an_app_share_one_slot() {
        let url = Secret::new("redis://127.0.0.1:6379/".to_string());
        for appid in ["wx0123456789abcdef", "wx}odd", "wx{odd"] {
            let store = RedisStore::new(&url, appid, Duration::from_secs(1)).unwrap();
            // Every key the store names, and the ones its scripts build from a declared prefix
            // (a session key from "session:", a user index from "user:").
            let keys = [
                store.session_key("sid-1"),
                store.user_key("o-user{x}"),
                store.block_key("o-user"),
                store.key("revoked"),
                store.key("revoked:until"),
                store.key("revoked:seq"),
                store.key("login:probe"),
                store.key("shared:access_token"),
                store.key("lock:access_token"),
                format!("{}{}", store.key("session:"), "sid-2"),
                format!("{}{}", store.key("user:"), "o-{other}"),
            ];
            let tag = hash_tag(&keys[0]);
            assert!(!tag.is_empty() && appid.starts_with(tag), "{appid}: {tag}");
            for key in &keys {
                assert_eq!(hash_tag(key), tag, "{key}");
            }
        }
    }

    #[test]
    fn locations_never_show_a_password() {
        let secret = |s: &str| Secret::new(s.to_string());
        let sentinel = RedisTarget::Sentinel {
            sentinels: vec![
                secret("redis://:pw1@10.0.0.11:26379"),
                secret("redis://10.0.0.12:26379"),
            ],
            primary: secret("rediss://:pw2@mymaster/2"),
        };
        let text = location_of(&sentinel).to_string();
        assert_eq!(
            text,
            "redis-sentinel primary mymaster, 10.0.0.11:26379, 10.0.0.12:26379"
        );
        let server = RedisTarget::Server {
            url: secret("redis://user:pw3@10.0.0.7:6379/3"),
        };
        assert_eq!(location_of(&server).to_string(), "redis 10.0.0.7:6379/3");
        let cluster = RedisTarget::Cluster {
            nodes: vec![secret("redis://:pw4@10.0.0.21:6379")],
        };
        assert_eq!(
            location_of(&cluster).to_string(),
            "redis-cluster 10.0.0.21:6379"
        );
    }
}

//! The embedded session store: a bounded map whose entries expire, for a single instance.

use super::{
    millis, new_lock_token, Clock, Created, Phone, Revocation, RevocationBatch, Rotation, Session,
    SessionStore, SharedValue, StoreError, SystemClock, RETIRED_KEPT,
};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub struct MemoryStore {
    state: Mutex<State>,
    capacity: usize,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct State {
    /// sid -> (session, expiry in ms).
    sessions: HashMap<String, (Session, u64)>,
    /// (sequence number, revocation), oldest first.
    revoked: Vec<(u64, Revocation)>,
    seq: u64,
    shared: HashMap<String, SharedValue>,
    /// name -> (token, expiry in ms).
    locks: HashMap<String, (String, u64)>,
    /// openid -> its sessions' ids (pruned of ended sessions as the user logs in again).
    users: HashMap<String, HashSet<String>>,
    /// openid -> unix ms until which its logins are refused.
    blocks: HashMap<String, u64>,
}

impl State {
    fn live(&mut self, sid: &str, now: u64) -> Option<&mut Session> {
        if self.sessions.get(sid).is_some_and(|(_, exp)| *exp <= now) {
            self.sessions.remove(sid);
        }
        self.sessions.get_mut(sid).map(|(s, _)| s)
    }

    fn revoke(&mut self, sid: &str, until: u64, now: u64) {
        self.sessions.remove(sid);
        self.revoked.retain(|(_, r)| r.until * 1000 > now);
        self.seq += 1;
        self.revoked.push((
            self.seq,
            Revocation {
                sid: sid.to_string(),
                until,
            },
        ));
    }
}

/// How many entries a full map makes room for at once: a sixteenth of it. One pass over the map
/// then serves that many inserts, instead of every insert into a full map scanning it whole (at
/// 100,000 sessions that took logins from thousands per second to tens).
fn eviction_batch(capacity: usize) -> usize {
    capacity / 16 + 1
}

/// Keep `map` under `capacity` entries before an insert: drop the ones `dead` says are over,
/// then, when that is not enough, a batch of those with the lowest `rank` (for sessions, the ones
/// closest to expiry).
fn bound<V>(
    map: &mut HashMap<String, V>,
    capacity: usize,
    dead: impl Fn(&V) -> bool,
    rank: impl Fn(&V) -> u64,
) {
    if map.len() < capacity {
        return;
    }
    map.retain(|_, v| !dead(v));
    if map.len() < capacity {
        return;
    }
    let evict = (map.len() + 1 - capacity).max(eviction_batch(capacity));
    let mut ranked: Vec<(u64, &String)> = map.iter().map(|(k, v)| (rank(v), k)).collect();
    if evict < ranked.len() {
        ranked.select_nth_unstable(evict - 1);
        ranked.truncate(evict);
    }
    let victims: Vec<String> = ranked.into_iter().map(|(_, k)| k.clone()).collect();
    for k in victims {
        map.remove(&k);
    }
}

impl MemoryStore {
    /// A store holding at most `capacity` sessions; past it, expired entries are dropped and
    /// then (a sixteenth of the store at a time) the ones closest to expiry.
    pub fn new(capacity: usize) -> Self {
        Self::with_clock(capacity, Arc::new(SystemClock))
    }

    pub fn with_clock(capacity: usize, clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map inconsistent: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, session: &Session, ttl: Duration) -> Result<Created, StoreError> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        if let Some(&until_ms) = state.blocks.get(&session.openid) {
            if until_ms > now {
                return Ok(Created::Blocked { until_ms });
            }
            state.blocks.remove(&session.openid);
        }
        let map = &mut state.sessions;
        if !map.contains_key(&session.sid) {
            bound(map, self.capacity, |(_, e)| *e <= now, |(_, e)| *e);
        }
        map.insert(
            session.sid.clone(),
            (session.clone(), now.saturating_add(millis(ttl))),
        );
        let State {
            sessions, users, ..
        } = &mut *state;
        if !users.contains_key(&session.openid) {
            // Users whose sessions have all ended go first.
            bound(
                users,
                self.capacity,
                |sids| !sids.iter().any(|sid| sessions.contains_key(sid)),
                |_| 0,
            );
        }
        let sids = users.entry(session.openid.clone()).or_default();
        sids.retain(|sid| sessions.contains_key(sid));
        sids.insert(session.sid.clone());
        Ok(Created::Stored)
    }

    async fn get(&self, sid: &str) -> Result<Option<Session>, StoreError> {
        let now = self.clock.now_ms();
        Ok(self.lock().live(sid, now).cloned())
    }

    async fn rotate_refresh(
        &self,
        sid: &str,
        presented: &str,
        next: &str,
        ttl: Duration,
        revoke_until: u64,
    ) -> Result<Rotation, StoreError> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let outcome = match state.live(sid, now) {
            None => return Ok(Rotation::Unknown),
            Some(session) if session.refresh_hash == presented => {
                let retired = std::mem::replace(&mut session.refresh_hash, next.to_string());
                session.retired.insert(0, retired);
                session.retired.truncate(RETIRED_KEPT);
                Rotation::Rotated(Box::new(session.clone()))
            }
            Some(session) if session.retired.iter().any(|h| h == presented) => Rotation::Reused,
            Some(_) => return Ok(Rotation::Unknown),
        };
        match &outcome {
            Rotation::Rotated(_) => {
                if let Some((_, expires)) = state.sessions.get_mut(sid) {
                    *expires = now.saturating_add(millis(ttl));
                }
            }
            _ => state.revoke(sid, revoke_until, now),
        }
        Ok(outcome)
    }

    async fn revoke(&self, sid: &str, until: u64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        self.lock().revoke(sid, until, now);
        Ok(())
    }

    async fn revoke_user(
        &self,
        openid: &str,
        until: u64,
        block_until_ms: Option<u64>,
    ) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let mut ended = 0;
        for sid in state.users.remove(openid).unwrap_or_default() {
            if state.live(&sid, now).is_some() {
                ended += 1;
            }
            // Also sessions that expired: their tokens may still be within their lifetime.
            state.revoke(&sid, until, now);
        }
        if let Some(until_ms) = block_until_ms {
            if !state.blocks.contains_key(openid) {
                bound(&mut state.blocks, self.capacity, |&b| b <= now, |&b| b);
            }
            state.blocks.insert(openid.to_string(), until_ms);
        }
        Ok(ended)
    }

    async fn revocations_since(&self, cursor: u64) -> Result<RevocationBatch, StoreError> {
        let now = self.clock.now_ms();
        let state = self.lock();
        Ok(RevocationBatch {
            cursor: state.seq,
            revoked: state
                .revoked
                .iter()
                .filter(|(seq, r)| *seq > cursor && r.until * 1000 > now)
                .map(|(_, r)| r.clone())
                .collect(),
        })
    }

    async fn set_phone(&self, sid: &str, phone: &Phone) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        Ok(match self.lock().live(sid, now) {
            Some(session) => {
                session.phone = Some(phone.clone());
                true
            }
            None => false,
        })
    }

    async fn get_shared(&self, name: &str) -> Result<Option<SharedValue>, StoreError> {
        let now = self.clock.now_ms();
        Ok(self
            .lock()
            .shared
            .get(name)
            .filter(|v| v.expires_at_ms > now)
            .cloned())
    }

    async fn put_shared(&self, name: &str, value: &SharedValue) -> Result<(), StoreError> {
        self.lock().shared.insert(name.to_string(), value.clone());
        Ok(())
    }

    async fn delete_shared(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.shared.get(name).is_some_and(|v| v.value == value) {
            state.shared.remove(name);
        }
        Ok(())
    }

    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        if state.locks.get(name).is_some_and(|(_, exp)| *exp > now) {
            return Ok(None);
        }
        let token = new_lock_token();
        state.locks.insert(
            name.to_string(),
            (token.clone(), now.saturating_add(millis(ttl))),
        );
        Ok(Some(token))
    }

    async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.locks.get(name).is_some_and(|(t, _)| t == token) {
            state.locks.remove(name);
        }
        Ok(())
    }

    fn is_shared(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn session(sid: &str) -> Session {
        Session {
            sid: sid.into(),
            openid: format!("o-{sid}"),
            unionid: None,
            session_key: Secret::new("k"),
            created_at: 0,
            refresh_hash: "h0".into(),
            retired: Vec::new(),
            phone: None,
        }
    }

    #[tokio::test]
    async fn a_full_store_evicts_in_batches_closest_to_expiry_first() {
        let clock = Arc::new(super::super::ManualClock::new(1_000_000));
        let store = MemoryStore::with_clock(32, clock);
        for i in 0..32u64 {
            let sid = format!("s{i}");
            store
                .create(&session(&sid), Duration::from_secs(100 + i))
                .await
                .unwrap();
        }
        store
            .create(&session("new"), Duration::from_secs(1000))
            .await
            .unwrap();
        // 32 / 16 + 1 = 3 made room for: the three closest to expiry, nothing else.
        for i in 0..32u64 {
            let kept = store.get(&format!("s{i}")).await.unwrap().is_some();
            assert_eq!(kept, i >= 3, "s{i}");
        }
        assert!(store.get("new").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn bounded() {
        let clock = Arc::new(super::super::ManualClock::new(1_000_000));
        let store = MemoryStore::with_clock(2, clock);
        for (i, sid) in ["a", "b", "c"].iter().enumerate() {
            store
                .create(&session(sid), Duration::from_secs(60 + i as u64))
                .await
                .unwrap();
        }
        assert!(
            store.get("a").await.unwrap().is_none(),
            "soonest to expire is evicted"
        );
        assert!(store.get("b").await.unwrap().is_some());
        assert!(store.get("c").await.unwrap().is_some());
    }
}

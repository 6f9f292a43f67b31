//! The embedded session store: a bounded map whose entries expire.

use super::{Session, SessionStore, StoreError};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct MemoryStore {
    entries: Mutex<HashMap<String, (Session, Instant)>>,
    capacity: usize,
}

impl MemoryStore {
    /// A store holding at most `capacity` sessions; past it, expired entries are dropped and
    /// then the ones closest to expiry.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Session, Instant)>> {
        // A panic while holding this lock cannot leave the map inconsistent: keep serving.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn put(&self, session: Session, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&session.sid) {
            map.retain(|_, (_, expires)| *expires > now);
            while map.len() >= self.capacity {
                let soonest = map
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| k.clone());
                match soonest {
                    Some(k) => map.remove(&k),
                    None => break,
                };
            }
        }
        map.insert(session.sid.clone(), (session, now + ttl));
        Ok(())
    }

    async fn get(&self, sid: &str) -> Result<Option<Session>, StoreError> {
        let mut map = self.lock();
        match map.get(sid) {
            Some((s, expires)) if *expires > Instant::now() => Ok(Some(s.clone())),
            Some(_) => {
                map.remove(sid);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn remove(&self, sid: &str) -> Result<(), StoreError> {
        self.lock().remove(sid);
        Ok(())
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
        }
    }

    #[tokio::test]
    async fn put_get_remove() {
        let store = MemoryStore::new(10);
        store
            .put(session("a"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.get("a").await.unwrap().unwrap().openid, "o-a");
        store.remove("a").await.unwrap();
        assert!(store.get("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn expired_entries_are_gone() {
        let store = MemoryStore::new(10);
        store.put(session("a"), Duration::ZERO).await.unwrap();
        assert!(store.get("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bounded() {
        let store = MemoryStore::new(2);
        for (i, sid) in ["a", "b", "c"].iter().enumerate() {
            store
                .put(session(sid), Duration::from_secs(60 + i as u64))
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

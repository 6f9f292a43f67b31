//! The local copy of the revocation list, so that a proxied request checks "was this session
//! logged out?" without a store round trip. A background task pulls new revocations from a
//! shared store every [`SYNC_INTERVAL`]; revocations made by this instance apply at once.
//!
//! When the copy cannot be refreshed for [`Revocations::stale_after`], `fail_mode` decides:
//! closed (default) refuses tokens with 10503, open keeps accepting on the last copy.

use super::{SessionStore, StoreError};
use crate::config::FailMode;
use crate::reply::{Reject, TokenProblem};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);

pub struct Revocations {
    /// sid -> revoked until (unix seconds).
    revoked: RwLock<HashMap<String, u64>>,
    cursor: AtomicU64,
    /// Unix ms of the last successful sync with a shared store.
    last_sync_ms: AtomicU64,
    stale_after_ms: AtomicU64,
    /// `FailMode::Open` as true; both may change on reload without losing the list.
    fail_open: AtomicBool,
    shared: bool,
    ready: watch::Sender<bool>,
}

impl Revocations {
    /// `shared`: revocations come from a store other instances write to, and must be synced.
    pub fn new(shared: bool, fail_mode: FailMode, stale_after: Duration) -> Self {
        let (ready, _) = watch::channel(!shared);
        Revocations {
            revoked: RwLock::new(HashMap::new()),
            cursor: AtomicU64::new(0),
            last_sync_ms: AtomicU64::new(0),
            stale_after_ms: AtomicU64::new(stale_after.as_millis() as u64),
            fail_open: AtomicBool::new(fail_mode == FailMode::Open),
            shared,
            ready,
        }
    }

    pub fn fail_mode(&self) -> FailMode {
        if self.fail_open.load(Ordering::Relaxed) {
            FailMode::Open
        } else {
            FailMode::Closed
        }
    }

    pub fn stale_after(&self) -> Duration {
        Duration::from_millis(self.stale_after_ms.load(Ordering::Relaxed))
    }

    /// Apply a reloaded `session.fail_mode` / `session.timeout`, keeping the list.
    pub fn set_policy(&self, fail_mode: FailMode, stale_after: Duration) {
        self.fail_open
            .store(fail_mode == FailMode::Open, Ordering::Relaxed);
        self.stale_after_ms
            .store(stale_after.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether revocations come from a store shared with other instances.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Whether the first sync after start-up has been tried (always, for an in-process store).
    /// Until then requests wait briefly, so a fresh instance does not judge tokens on an empty
    /// list; after a failed first try they are judged by `fail_mode`, without waiting.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Record that a sync was tried, whatever its outcome.
    pub fn mark_tried(&self) {
        self.ready.send_replace(true);
    }

    /// Wait (at most `limit`) for the first sync attempt after start-up.
    pub async fn wait_ready(&self, limit: Duration) {
        let mut rx = self.ready.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|ready| *ready)).await;
    }

    /// Whether a shared store has not answered for [`Self::stale_after`]: it is down.
    pub fn store_down(&self, now_ms: u64) -> bool {
        self.shared
            && now_ms.saturating_sub(self.last_sync_ms.load(Ordering::Relaxed))
                > self.stale_after_ms.load(Ordering::Relaxed)
    }

    /// Whether a session may still be used. Pure apart from reading the local copy.
    pub fn check(&self, sid: &str, now_ms: u64) -> Result<(), Reject> {
        if self.fail_mode() == FailMode::Closed && self.store_down(now_ms) {
            return Err(Reject::StoreUnavailable);
        }
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        if revoked.is_empty() {
            return Ok(());
        }
        match revoked.get(sid) {
            Some(until) if until.saturating_mul(1000) > now_ms => {
                Err(Reject::Token(TokenProblem::Revoked))
            }
            _ => Ok(()),
        }
    }

    /// Take over the revocations still in force of `previous` (the list of a store replaced by a
    /// reload): a session logged out before the reload stays refused after it, whatever the new
    /// store knows.
    pub fn carry_over(&self, previous: &Revocations) {
        let old = previous.revoked.read().unwrap_or_else(|p| p.into_inner());
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        for (sid, until) in old.iter() {
            let kept = revoked.entry(sid.clone()).or_insert(*until);
            *kept = (*kept).max(*until);
        }
    }

    /// Record a revocation made here (it reaches other instances through the store).
    pub fn insert(&self, sid: &str, until: u64) {
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        revoked.insert(sid.to_string(), until);
    }

    /// Pull revocations recorded since the last sync.
    pub async fn sync(&self, store: &dyn SessionStore, now_ms: u64) -> Result<usize, StoreError> {
        let batch = store
            .revocations_since(self.cursor.load(Ordering::Relaxed))
            .await?;
        let n = batch.revoked.len();
        {
            let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
            revoked.retain(|_, until| until.saturating_mul(1000) > now_ms);
            for r in batch.revoked {
                revoked.insert(r.sid, r.until);
            }
        }
        self.cursor.store(batch.cursor, Ordering::Relaxed);
        self.last_sync_ms.store(now_ms, Ordering::Relaxed);
        self.mark_tried();
        Ok(n)
    }
}

/// Reads the store and revocation list of the snapshot in force.
pub type CurrentStore =
    Box<dyn Fn() -> Vec<(Arc<dyn SessionStore>, Arc<Revocations>)> + Send + Sync>;

/// The background task that keeps the revocation list of the snapshot in force in step with its
/// store, when that store is shared. It follows reloads: a new store is synced from then on.
pub struct RevocationSync {
    /// The current store and revocation list (read each round).
    pub current: CurrentStore,
    pub clock: Arc<dyn super::Clock>,
}

#[async_trait]
impl BackgroundService for RevocationSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut healthy = true;
        loop {
            // One store per mini program, synced together.
            let now = self.clock.now_ms();
            let syncs = (self.current)()
                .into_iter()
                .filter(|(store, _)| store.is_shared())
                .map(|(store, revocations)| async move {
                    let outcome = revocations.sync(&*store, now).await;
                    revocations.mark_tried();
                    outcome
                });
            let outcomes = futures::future::join_all(syncs).await;
            if !outcomes.is_empty() {
                let outcome = outcomes.into_iter().find(Result::is_err).unwrap_or(Ok(0));
                match outcome {
                    Ok(_) if !healthy => {
                        tracing::info!("session store reachable again; revocations in step");
                        healthy = true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        crate::metrics::METRICS.store_errors.inc();
                        if healthy {
                            tracing::warn!("cannot sync revocations from the session store: {e}");
                            healthy = false;
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(SYNC_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Clock, ManualClock, MemoryStore};

    #[tokio::test]
    async fn revoked_sessions_are_refused_until_their_tokens_expire() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = MemoryStore::with_clock(10, clock.clone());
        let r = Revocations::new(false, FailMode::Closed, Duration::from_secs(3));
        let now = clock.now_ms();
        assert_eq!(r.check("s1", now), Ok(()));
        store.revoke("s1", now / 1000 + 60).await.unwrap();
        r.sync(&store, now).await.unwrap();
        assert_eq!(
            r.check("s1", now),
            Err(Reject::Token(TokenProblem::Revoked))
        );
        assert_eq!(r.check("s2", now), Ok(()));
        assert_eq!(r.check("s1", now + 61_000), Ok(()));
    }

    #[test]
    fn a_new_list_carries_the_revocations_of_the_one_it_replaces() {
        let old = Revocations::new(false, FailMode::Closed, Duration::from_secs(3));
        old.insert("s1", 2_000);
        let new = Revocations::new(true, FailMode::Closed, Duration::from_secs(3));
        new.insert("s2", 3_000);
        new.carry_over(&old);
        let now = 1_000_000;
        new.mark_tried();
        new.last_sync_ms.store(now, Ordering::Relaxed);
        assert_eq!(
            new.check("s1", now),
            Err(Reject::Token(TokenProblem::Revoked))
        );
        assert_eq!(
            new.check("s2", now),
            Err(Reject::Token(TokenProblem::Revoked))
        );
        assert_eq!(new.check("s3", now), Ok(()));
    }

    #[tokio::test]
    async fn shared_store_fail_closed_when_stale_open_otherwise() {
        let store = MemoryStore::new(10);
        let closed = Revocations::new(true, FailMode::Closed, Duration::from_secs(3));
        assert!(!closed.is_ready());
        assert_eq!(closed.check("s", 10_000), Err(Reject::StoreUnavailable));
        let open_down = Revocations::new(true, FailMode::Open, Duration::from_secs(3));
        open_down.mark_tried();
        assert!(
            open_down.is_ready(),
            "a failed first sync does not keep requests waiting"
        );
        assert_eq!(open_down.check("s", 10_000), Ok(()));
        closed.sync(&store, 10_000).await.unwrap();
        assert!(closed.is_ready());
        assert_eq!(closed.check("s", 12_000), Ok(()));
        assert_eq!(closed.check("s", 13_001), Err(Reject::StoreUnavailable));
        let open = Revocations::new(true, FailMode::Open, Duration::from_secs(3));
        assert_eq!(open.check("s", 99_000), Ok(()));
    }
}

//! Graceful stop: on SIGTERM Pingora stops accepting; this background service waits until the
//! requests already in flight are answered (at most `server.grace_period`), then ends the
//! process, instead of Pingora's fixed sleep.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts requests between their context's creation and its drop.
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// Held by each request's context; leaving scope marks the request done.
pub struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(&self.0))
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Drain {
    pub in_flight: InFlight,
    pub grace_period: Duration,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let deadline = Instant::now() + self.grace_period;
        let mut left = self.in_flight.count();
        tracing::info!(
            in_flight = left,
            "shutting down: draining in-flight requests"
        );
        while left > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = self.in_flight.count();
        }
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "grace period over, exiting with requests in flight"
            );
        } else {
            tracing::info!("drained, exiting");
        }
        crate::logging::flush();
        std::process::exit(0);
    }
}

//! Upstream writes batched per turn of the event loop (`server.batch_upstream_writes`).
//!
//! Every client connection is a task of its own, and left alone each writes its upstream request
//! the moment it has read and checked it: the first write wakes the upstream app, and where the
//! app shares a core with the gateway (a sidecar, a small host, the benchmark's setting) the
//! woken app preempts the gateway, serves that one request and sleeps again, until the next
//! request's write wakes it again: two context switches for every request or two. Waiting one
//! turn of the event loop before the write (tokio's `yield_now`: the task runs again after the
//! other ready tasks and a poll of the I/O driver) lets the requests that arrived together all
//! be read first; their writes then go out back to back, and the app, woken once, finds them
//! all. The cost is one more poll of the request's task; with one request at a time the turn is
//! a poll of the driver that finds nothing (README, "Performance", step 17).

/// Where a request is about to be written upstream (both proxy paths).
pub async fn before_upstream_write(batch: bool) {
    if batch {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Two requests that are ready in the same turn: the order in which they are read and
    /// written upstream.
    async fn order(batch: bool) -> Vec<&'static str> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let task = |read, write| {
            let log = log.clone();
            tokio::spawn(async move {
                log.lock().unwrap().push(read);
                before_upstream_write(batch).await;
                log.lock().unwrap().push(write);
            })
        };
        let (a, b) = (task("read a", "write a"), task("read b", "write b"));
        a.await.unwrap();
        b.await.unwrap();
        let log = log.lock().unwrap().clone();
        log
    }

    #[tokio::test]
    async fn batched_writes_wait_for_the_requests_read_in_the_same_turn() {
        let log = order(true).await;
        // Both read before either writes (tokio wakes yielded tasks last in, first out).
        assert_eq!(log[..2], ["read a", "read b"], "{log:?}");
        let mut writes = log[2..].to_vec();
        writes.sort_unstable();
        assert_eq!(writes, ["write a", "write b"], "{log:?}");
    }

    #[tokio::test]
    async fn unbatched_writes_follow_each_read() {
        assert_eq!(
            order(false).await,
            ["read a", "write a", "read b", "write b"]
        );
    }
}

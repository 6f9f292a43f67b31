//! The vendored Pingora patches (vendor/PATCHES.md) that only show with real connections and
//! threads, checked through Pingora's public API.

use pingora::connectors::TransportConnector;
use pingora::upstreams::peer::{BasicPeer, Peer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Patch 21: a connection released to Pingora's pool has an idle watcher task, which
/// `release_stream` spawns on a random worker under a `NoSteal` runtime, and which gives the
/// connection up after dropping its lock but before dropping its reference to it. A checkout on
/// another thread in between dropped (closed) the connection and logged "failed to acquire
/// reusable stream" at ERROR; the gateway then opened a new one. Every checkout must get it,
/// on a busy machine too (two threads spinning here: waking the checkout often gets the
/// watcher's thread preempted mid-drop, for a whole time slice).
#[test]
fn a_pooled_connection_is_reused_when_its_idle_watcher_runs_on_another_thread() {
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let connector = TransportConnector::new(None);
        let peer = BasicPeer::new(&addr.to_string());
        let mut stream = connector.new_stream(&peer).await.unwrap();
        let mut lost = 0;
        for _ in 0..10_000 {
            connector.release_stream(stream, peer.reuse_hash(), None);
            // The watcher starts and takes the lock, on either worker.
            tokio::task::yield_now().await;
            stream = match connector.reused_stream(&peer).await {
                Some(s) => s,
                None => {
                    lost += 1;
                    connector.new_stream(&peer).await.unwrap()
                }
            };
        }
        accepted.abort();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(lost, 0, "of 10,000 checkouts, pooled connections dropped");
    });
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
}

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

/// pingora-http patch 23: `RequestHeader::clone_with_room` is the clone both proxy paths send
/// upstream. It must be the same request as `clone` makes, byte for byte on the wire (header
/// case, order, repeated lines, an absolute-form target), with room for the headers the gateway
/// adds, so that adding them does not grow the maps.
#[test]
fn a_request_cloned_with_room_is_the_same_request_and_takes_headers_without_growing() {
    use pingora::http::RequestHeader;
    let mut req = RequestHeader::build("GET", b"http://example.com/a?b=c", None).unwrap();
    for (name, value) in [
        ("Host", "example.com"),
        ("X-Custom-Thing", "1"),
        ("accept", "*/*"),
        ("X-Custom-Thing", "2"),
        ("COOKIE", "a=b"),
        ("x-custom-thing", "3"),
    ] {
        req.append_header(name.to_string(), value).unwrap();
    }
    let wire = |r: &RequestHeader| {
        let mut buf = Vec::new();
        r.header_to_h1_wire(&mut buf);
        (r.method.clone(), r.raw_path().to_vec(), r.version, buf)
    };
    let cases = |r: &RequestHeader| -> Vec<(Vec<u8>, Vec<u8>)> {
        r.case_header_iter()
            .map(|(n, v)| (n.as_slice().to_vec(), v.as_bytes().to_vec()))
            .collect()
    };
    let copy = req.clone_with_room(6);
    assert_eq!(wire(&copy), wire(&req.clone()));
    assert_eq!(cases(&copy), cases(&req));
    assert_eq!(
        String::from_utf8(wire(&copy).3).unwrap(),
        "Host: example.com\r\nX-Custom-Thing: 1\r\nX-Custom-Thing: 2\r\nx-custom-thing: 3\r\n\
         accept: */*\r\nCOOKIE: a=b\r\n"
    );

    // The header map's entries do not move (a growth would reallocate them) while the gateway's
    // headers are added. (`capacity()` reports the index table's room, not the entries'; the
    // case map's are not visible, but it is made and filled the same way.)
    let names: Vec<String> = (0..6).map(|i| format!("X-Added-{i}")).collect();
    let mut copy = copy;
    let entries = |r: &RequestHeader| r.headers.iter().next().unwrap().1 as *const _ as usize;
    let before = entries(&copy);
    for name in &names {
        copy.insert_header(name.clone(), "v").unwrap();
    }
    assert_eq!(entries(&copy), before, "the header map grew");
    // The case map kept in step with the header map: the added names are written as given.
    assert!(String::from_utf8(wire(&copy).3)
        .unwrap()
        .ends_with("X-Added-4: v\r\nX-Added-5: v\r\n"));
}

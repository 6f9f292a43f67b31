//! The fast path (issue 16, route 2): a request without a body is proxied from `request_filter`
//! with Pingora's own parts — `TransportConnector` (connect timeout, TLS), the client
//! `HttpSession` (its parser, timeouts and keep-alive rules), the downstream `Session` — instead
//! of Pingora's full proxy loop (two channels and a `try_join` per request, a connection pool
//! with a spawned idle watcher per release).
//!
//! It takes only plain requests ([`eligible`]); everything else (bodies, upgrades, HTTP/2,
//! hop-by-hop headers) goes the normal way. The decisions are the normal path's, shared with it
//! (see `gateway.rs`): which upstream, retries on connect failure, the identity headers, the
//! envelopes, the metrics and the access log. `server.fast_path = false` turns it off.

use super::batch::before_upstream_write;
use super::gateway::{
    answer_failure, choose_upstream, connect_failed, edit_response, edit_upstream_request,
    unchunk_for_http10, upstream_answered, Ctx,
};
use crate::metrics::METRICS;
use bytes::Bytes;
use futures::FutureExt;
use http::{header, HeaderName, Method, Version};
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::protocols::http::v1::common::HEADER_ROOM;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use pingora::upstreams::peer::Peer;
use pingora::ErrorType;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Request headers that make a request the normal path's: hop-by-hop ones Pingora strips or
/// handles itself (`sanitize_h1_upstream_request`), and a body's `Transfer-Encoding`.
static NORMAL_PATH_ONLY: [HeaderName; 9] = [
    header::TRANSFER_ENCODING,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Whether a request can take the fast path: HTTP/1.x, GET/HEAD/OPTIONS/DELETE without a body,
/// an origin-form target, exactly one `Host`, `Connection` absent or only `keep-alive` /
/// `close`, and no other hop-by-hop header. Asked after `gateway::check_headers`, which has
/// refused a request whose `Host` is not a valid authority (not parsed a second time here).
/// What the normal path would rewrite (hop-by-hop headers, nominated headers, authority) never
/// occurs in such a request. One pass over the headers (a lookup by name hashes it; most requests
/// carry fewer headers than there are names to look for). Pure.
pub fn eligible(req: &RequestHeader) -> bool {
    if req.version != Version::HTTP_11 && req.version != Version::HTTP_10 {
        return false;
    }
    if !matches!(
        req.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
    ) {
        return false;
    }
    if !req.raw_path().starts_with(b"/") || req.uri.authority().is_some() {
        return false;
    }
    let (mut hosts, mut lengths) = (0, 0);
    for (name, value) in req.headers.iter() {
        if name == header::HOST {
            hosts += 1;
        } else if name == header::CONTENT_LENGTH {
            lengths += 1;
            if lengths > 1 || value.as_bytes() != b"0" {
                return false;
            }
        } else if name == header::CONNECTION {
            let Ok(text) = value.to_str() else {
                return false;
            };
            let plain = text.split(',').map(str::trim).all(|token| {
                token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close")
            });
            if !plain {
                return false;
            }
        } else if NORMAL_PATH_ONLY.contains(name) {
            return false;
        }
    }
    hosts == 1
}

/// Whether an upstream answer must be sent chunked: it may have a body but says neither how long
/// nor that it is chunked (HTTP/1.0 style, ended by closing), as Pingora's `h1_response_filter`
/// decides, so that the client's connection can stay open. Pure.
pub fn needs_chunked(head_request: bool, resp: &ResponseHeader) -> bool {
    !head_request
        && !matches!(resp.status.as_u16(), 204 | 304)
        && !resp.status.is_informational()
        && !resp.headers.contains_key(header::TRANSFER_ENCODING)
        && !resp.headers.contains_key(header::CONTENT_LENGTH)
}

/// `wxgate_fast_path_requests_total` by connection, looked up once.
static REUSED: LazyLock<IntCounter> =
    LazyLock::new(|| METRICS.fast_path_requests.with_label_values(&["reused"]));
static NEW: LazyLock<IntCounter> =
    LazyLock::new(|| METRICS.fast_path_requests.with_label_values(&["new"]));

/// The connector: Pingora's, used only for new connections (its own pool stays empty).
static CONNECTOR: LazyLock<TransportConnector> = LazyLock::new(|| TransportConnector::new(None));

/// Idle upstream connections of the fast path, for the life of the process (a reload keeps
/// them: the key is the peer, not the snapshot).
pub static IDLE: LazyLock<IdlePool<Stream>> = LazyLock::new(IdlePool::new);

/// Make the fast path's shared parts at start-up rather than on the first request: the
/// connector reads the system's CA certificates, and Pingora's connector panics when it cannot
/// (a process out of descriptors under a burst of connections), which left every later request
/// of the process panicking on the poisoned `LazyLock`.
pub fn prepare() {
    LazyLock::force(&CONNECTOR);
    LazyLock::force(&IDLE);
    LazyLock::force(&REUSED);
    LazyLock::force(&NEW);
}

/// Shards of the idle pool: each worker thread uses its own (by a thread-local index), so that
/// threads do not contend for a lock.
const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

struct Idle<S> {
    stream: S,
    /// Not reused from this moment on (the peer's `idle_timeout` after its release).
    expires: Instant,
}

/// Idle keep-alive connections by peer (`HttpPeer::reuse_hash`), most recently released first
/// out. Bounded in total; expired and closed ones are dropped on checkout and by [`Self::sweep`].
pub struct IdlePool<S> {
    shards: Vec<Mutex<HashMap<u64, Vec<Idle<S>>>>>,
    count: AtomicUsize,
}

impl<S: AsyncRead + Unpin> IdlePool<S> {
    pub fn new() -> Self {
        IdlePool {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            count: AtomicUsize::new(0),
        }
    }

    fn shard(&self) -> &Mutex<HashMap<u64, Vec<Idle<S>>>> {
        &self.shards[SHARD.with(|i| *i)]
    }

    /// Connections held, over all shards.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An idle connection to `peer` that is still usable: not expired, and with nothing to read
    /// (an idle connection that is readable was closed, broke, or sent something unasked).
    pub fn checkout(&self, peer: u64, now: Instant) -> Option<S> {
        let mut shard = self.shard().lock().unwrap_or_else(|e| e.into_inner());
        let list = shard.get_mut(&peer)?;
        while let Some(mut idle) = list.pop() {
            self.count.fetch_sub(1, Ordering::Relaxed);
            if idle.expires > now && quiet(&mut idle.stream) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Keep `stream` for `idle` unless the pool already holds `limit` connections.
    pub fn release(&self, peer: u64, stream: S, idle: Duration, limit: usize) {
        if self.count.fetch_add(1, Ordering::Relaxed) >= limit {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let expires = Instant::now() + idle;
        let mut shard = self.shard().lock().unwrap_or_else(|e| e.into_inner());
        shard
            .entry(peer)
            .or_default()
            .push(Idle { stream, expires });
    }

    /// Drop the connections that expired or that the upstream closed.
    pub fn sweep(&self, now: Instant) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, list| {
                let before = list.len();
                list.retain_mut(|idle| idle.expires > now && quiet(&mut idle.stream));
                self.count.fetch_sub(before - list.len(), Ordering::Relaxed);
                !list.is_empty()
            });
        }
    }
}

impl<S: AsyncRead + Unpin> Default for IdlePool<S> {
    fn default() -> Self {
        Self::new()
    }
}

/// Nothing to read right now (as pingora-core's `test_reusable_stream`).
fn quiet<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut buf))
        .now_or_never()
        .is_none()
}

/// Proxy the request in `session` (which [`eligible`] accepted and `request_filter` authorized)
/// and answer it. `Ok(true)` once the answer, the upstream's or an envelope, is written (a
/// failure is kept in `ctx` for `logging`); the error itself when the upstream failed after the
/// answer's header went out (see [`fail`]).
pub async fn proxy(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    // Each by-value part lives only while it is needed: a value bound in this function keeps its
    // room in the future until the function's end, even once moved out, and every request
    // allocates and copies this future (inside `request_filter`'s).
    let req = match upstream_request(session, ctx) {
        Ok(req) => req,
        Err(e) => return fail(session, ctx, e).await,
    };
    // Before the connection is taken: an idle one is checked for a close right before its use,
    // and none is held through the turn.
    before_upstream_write(ctx.snap().config.server.batch_upstream_writes).await;
    let (key, mut upstream, idle) = match connect(session, ctx).await {
        Ok(connected) => connected,
        Err(e) => return fail(session, ctx, e).await,
    };
    if let Err(e) = exchange(session, &mut upstream, req, ctx).await {
        // The upstream connection is dropped (closed), never pooled.
        return fail(session, ctx, e).await;
    }
    // Not kept past what the upstream announced (`Keep-Alive: timeout=`), if it did.
    let idle = upstream.bound_idle_timeout(Some(idle)).unwrap_or(idle);
    match upstream.into_reusable() {
        Ok(stream) => {
            let limit = ctx.snap().config.server.upstream_keepalive;
            IDLE.release(key, stream, idle, limit);
        }
        // As `reuse` does; boxed, as only a connection the upstream will not keep gets here.
        Err(upstream) => close(upstream).await,
    }
    Ok(true)
}

fn close(mut upstream: Upstream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move { upstream.shutdown().await })
}

/// The request to send upstream: the client's, as HTTP/1.1 without `Connection`, with the
/// identity headers rewritten.
fn upstream_request(session: &Session, ctx: &Ctx) -> Result<Box<RequestHeader>> {
    // With room for the headers `edit_upstream_request` adds (a clone is made at exact size).
    let mut req = Box::new(session.req_header().clone_with_room(HEADER_ROOM));
    req.set_version(Version::HTTP_11);
    req.remove_header(&header::CONNECTION);
    edit_upstream_request(session, &mut req, ctx)?;
    Ok(req)
}

/// An upstream connection for the request: an idle one of the chosen upstream's, or a new one
/// (a connect failure tries the next upstream, as the normal path does). With the pool key
/// (hashed once: it serves the checkout and the release) and the upstream's idle timeout.
async fn connect(session: &Session, ctx: &mut Ctx) -> Result<(u64, Upstream, Duration)> {
    loop {
        let peer = choose_upstream(session, ctx)?;
        let key = peer.reuse_hash();
        let stream = match IDLE.checkout(key, Instant::now()) {
            Some(stream) => {
                REUSED.inc();
                stream
            }
            // Boxed: the connector's state (TLS included) is large and only a new connection
            // needs it; inline it tripled the size of every request's future.
            None => match Box::pin(CONNECTOR.new_stream(&peer)).await {
                Ok(stream) => {
                    NEW.inc();
                    stream
                }
                Err(mut e) => {
                    e.as_up();
                    if connect_failed(ctx, &peer, &e) {
                        continue;
                    }
                    return Err(e);
                }
            },
        };
        let mut upstream = Upstream::new_with_options(stream, &peer);
        upstream.read_timeout = peer.options.read_timeout;
        upstream.write_timeout = peer.options.write_timeout;
        let idle = peer
            .options
            .idle_timeout
            .unwrap_or(crate::config::DEFAULT_UPSTREAM_IDLE_TIMEOUT);
        return Ok((key, upstream, idle));
    }
}

/// A failure before the answer's header went out is answered with its envelope here. One after
/// it goes back to Pingora as an error, as the normal path's does: the client's connection is
/// then closed as it is, without the `finish` that a handled request gets, which would end a
/// chunked body with its last chunk and make the truncated answer look complete.
async fn fail(session: &mut Session, ctx: &mut Ctx, e: Box<Error>) -> Result<bool> {
    if session.response_written().is_some() {
        return Err(e);
    }
    Box::pin(answer_failure(session, &e, ctx)).await;
    ctx.set_error(e);
    Ok(true)
}

/// The client closed its connection while the gateway waited for the upstream.
fn client_gone(read: Result<Option<Bytes>>) -> Box<Error> {
    match read {
        Err(e) => e.into_down(),
        Ok(_) => {
            Error::explain(ErrorType::ReadError, "data after a request without body").into_down()
        }
    }
}

/// Send the request, wait for the answer while watching the client, forward it.
async fn exchange(
    session: &mut Session,
    upstream: &mut Upstream,
    req: Box<RequestHeader>,
    ctx: &mut Ctx,
) -> Result<()> {
    upstream
        .write_request_header(req)
        .await
        .map_err(|e| e.into_up())?;
    loop {
        tokio::select! {
            biased;
            read = upstream.read_response() => { read.map_err(|e| e.into_up())?; }
            read = session.downstream_session.read_body_or_idle(true) => {
                return Err(client_gone(read));
            }
        }
        let Some(head) = upstream.resp_header() else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "no response header")
                .map_err(|e| e.into_up());
        };
        if head.status.is_informational() {
            // A 101 is refused here (the fast path never carries an upgrade).
            let mut info = Box::new(head.clone());
            edit_response(&mut info, ctx, true)?;
            session
                .write_response_header(info, false)
                .await
                .map_err(|e| e.into_down())?;
            continue;
        }
        break;
    }
    upstream_answered(ctx);
    // Whether the upstream connection may be kept is read from the header before it is moved
    // out (forwarded without a copy); `reuse` checks the body's end later.
    upstream.respect_keepalive();
    let mut head = upstream
        .take_resp_header()
        .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?;
    let head_request = session.req_header().method == Method::HEAD;
    if session.req_header().version == Version::HTTP_10 {
        // No chunks for an HTTP/1.0 client: a body of unknown length ends with the connection.
        if needs_chunked(head_request, &head) || unchunk_for_http10(&mut head, head_request) {
            session.set_keepalive(None);
        }
    } else if needs_chunked(head_request, &head) {
        head.set_version(Version::HTTP_11);
        head.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    edit_response(&mut head, ctx, true)?;
    let mut done = upstream.is_body_done();
    session
        .write_response_header(head, done)
        .await
        .map_err(|e| e.into_down())?;
    if done {
        // An answer without body (HEAD, 204, 304, length 0) is complete with its header.
        return session
            .write_response_body(None, true)
            .await
            .map_err(|e| e.into_down());
    }
    while !done {
        let chunk = tokio::select! {
            biased;
            read = upstream.read_body_bytes() => read.map_err(|e| e.into_up())?,
            read = session.downstream_session.read_body_or_idle(true) => {
                return Err(client_gone(read));
            }
        };
        done = chunk.is_none() || upstream.is_body_done();
        session
            .write_response_body(chunk, done)
            .await
            .map_err(|e| e.into_down())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::gateway::check_headers;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn only_plain_bodiless_requests_are_eligible() {
        let host = ("host", "api.example.com");
        assert!(eligible(&req("GET", "/api/x?q=1", &[host])));
        assert!(eligible(&req("HEAD", "/", &[host])));
        assert!(eligible(&req("OPTIONS", "/", &[host])));
        assert!(eligible(&req(
            "DELETE",
            "/a",
            &[host, ("content-length", "0")]
        )));
        assert!(eligible(&req(
            "GET",
            "/",
            &[host, ("connection", "keep-alive")]
        )));
        assert!(eligible(&req("GET", "/", &[host, ("Connection", "Close")])));
        // Bodies, other methods.
        assert!(!eligible(&req("POST", "/", &[host])));
        assert!(!eligible(&req(
            "PUT",
            "/",
            &[host, ("content-length", "0")]
        )));
        assert!(!eligible(&req(
            "GET",
            "/",
            &[host, ("content-length", "3")]
        )));
        assert!(!eligible(&req(
            "DELETE",
            "/",
            &[host, ("transfer-encoding", "chunked")]
        )));
        let two_lengths = [host, ("content-length", "0"), ("content-length", "0")];
        assert!(!eligible(&req("GET", "/", &two_lengths)));
        // Host: exactly one; an invalid one (no authority, userinfo) never gets here.
        assert!(!eligible(&req("GET", "/", &[])));
        assert!(!eligible(&req("GET", "/", &[host, host])));
        for bad in ["a b", "user@example.com"] {
            assert!(check_headers(&req("GET", "/", &[("host", bad)])).is_err());
        }
        // Targets other than origin-form.
        assert!(!eligible(&req("GET", "http://example.com/", &[host])));
        assert!(!eligible(&req("OPTIONS", "*", &[host])));
        // Hop-by-hop headers and nominations.
        assert!(!eligible(&req(
            "GET",
            "/",
            &[host, ("connection", "x-wx-openid")]
        )));
        assert!(!eligible(&req(
            "GET",
            "/",
            &[host, ("connection", "keep-alive, te")]
        )));
        let hop_by_hop = [
            "Keep-Alive",
            "proxy-connection",
            "Proxy-Authenticate",
            "proxy-authorization",
            "TE",
            "trailer",
            "Upgrade",
            "HTTP2-Settings",
        ];
        for name in hop_by_hop {
            assert!(!eligible(&req("GET", "/", &[host, (name, "1")])), "{name}");
            // Wherever it comes among the others.
            let late = [host, ("accept", "*/*"), (name, "1"), ("x-a", "b")];
            assert!(!eligible(&req("GET", "/", &late)), "{name} late");
        }
        // HTTP/2 and HTTP/0.9 are not.
        let mut h2 = req("GET", "/", &[host]);
        h2.set_version(Version::HTTP_2);
        assert!(!eligible(&h2));
        let mut h10 = req("GET", "/", &[host]);
        h10.set_version(Version::HTTP_10);
        assert!(eligible(&h10));
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn unframed_answers_with_a_body_are_sent_chunked() {
        assert!(needs_chunked(false, &resp(200, &[])));
        assert!(needs_chunked(false, &resp(500, &[])));
        assert!(!needs_chunked(true, &resp(200, &[])));
        assert!(!needs_chunked(false, &resp(204, &[])));
        assert!(!needs_chunked(false, &resp(304, &[])));
        assert!(!needs_chunked(false, &resp(103, &[])));
        assert!(!needs_chunked(
            false,
            &resp(200, &[("content-length", "5")])
        ));
        assert!(!needs_chunked(
            false,
            &resp(200, &[("transfer-encoding", "chunked")])
        ));
    }

    #[tokio::test]
    async fn the_pool_hands_out_live_connections_most_recent_first() {
        let pool = IdlePool::new();
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let (a, _a_peer) = tokio::io::duplex(64);
        let (b, _b_peer) = tokio::io::duplex(64);
        pool.release(1, a, minute, 10);
        pool.release(1, b, minute, 10);
        assert_eq!(pool.len(), 2);
        assert!(pool.checkout(2, now).is_none(), "another peer");
        assert!(pool.checkout(1, now).is_some());
        assert!(pool.checkout(1, now).is_some());
        assert!(pool.checkout(1, now).is_none());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn closed_expired_and_chatty_connections_are_not_reused() {
        let pool = IdlePool::new();
        let minute = Duration::from_secs(60);
        let (closed, closed_peer) = tokio::io::duplex(64);
        drop(closed_peer);
        pool.release(1, closed, minute, 10);
        assert!(pool.checkout(1, Instant::now()).is_none());
        let (chatty, mut chatty_peer) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut chatty_peer, b"HTTP/1.1 408\r\n\r\n")
            .await
            .unwrap();
        pool.release(1, chatty, minute, 10);
        assert!(pool.checkout(1, Instant::now()).is_none());
        let (old, _old_peer) = tokio::io::duplex(64);
        pool.release(1, old, Duration::from_millis(1), 10);
        assert!(pool.checkout(1, Instant::now() + minute).is_none());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn the_pool_is_bounded_and_swept() {
        let pool = IdlePool::new();
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (s, p) = tokio::io::duplex(64);
            peers.push(p);
            pool.release(7, s, Duration::from_secs(60), 2);
        }
        assert_eq!(pool.len(), 2, "the third is closed, not kept");
        drop(peers.pop());
        drop(peers.pop());
        pool.sweep(Instant::now());
        // Of the two kept, the second one's peer is gone.
        assert_eq!(pool.len(), 1);
        pool.sweep(Instant::now() + Duration::from_secs(61));
        assert!(pool.is_empty());
    }
}

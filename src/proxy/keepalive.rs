//! The HTTP/1 connection loop of the gateway's listeners: Pingora's own, except for where an idle
//! keep-alive connection waits.
//!
//! Pingora 0.9 waits for a connection's next request inside the future that then serves it, and
//! that future (the whole proxy state machine, boxed per request by `async_trait`) is ~32 KiB:
//! with the rest, 45 KiB of RSS per idle keep-alive client connection, 464 MiB for 10,000 of them
//! where nginx holds 17 MiB. Here a connection waits for each request, the first included, in a
//! future of a few hundred bytes until the request's first bytes arrive (or it closes, or 60 s
//! pass, or a shutdown begins), and only then enters Pingora's `process_new_http`, whose state is
//! freed when the request is done; the connection's write buffer is freed for the wait too. TLS
//! (it cannot put bytes back) and HTTP/2 keep Pingora's own `process_new`.

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;

/// How long an idle keep-alive connection may wait for its next request when the application
/// sets nothing else (`HttpServerOptions::keepalive_timeout`; Pingora's own default).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// A client connection's write buffer while it serves a request (Pingora's default size): a
/// response header and a small body leave in one write.
const WRITE_BUFFER: usize = pingora::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE;

/// A Pingora HTTP application (the proxy) served with the lean idle wait.
pub struct LeanKeepalive<A> {
    app: Arc<A>,
    stopping: Stopping,
    /// How long an idle connection waits for its next request (the first one included).
    idle: Duration,
    /// How long a request header may take from its first byte to its end.
    header_timeout: Option<Duration>,
}

impl<A: HttpServerApp> LeanKeepalive<A> {
    /// The waits are the application's `server_options` (`keepalive_timeout`, `header_timeout`).
    pub fn new(app: A) -> Self {
        let options = app.server_options();
        let idle = options
            .and_then(|o| o.keepalive_timeout)
            .map_or(KEEPALIVE_TIMEOUT, Duration::from_secs);
        let header_timeout = options.and_then(|o| o.header_timeout);
        LeanKeepalive {
            app: Arc::new(app),
            stopping: Stopping::default(),
            idle,
            header_timeout,
        }
    }
}

/// The server's shutdown as idle connections wait for it: one `Notify` woken once for all of
/// them by a task that watches Pingora's shutdown flag. A waiting connection holds a `Notified`
/// (64 bytes) instead of its own clone of the watch and that watch's `changed()` (136 bytes).
#[derive(Default)]
struct Stopping {
    notify: Arc<Notify>,
    watching: AtomicBool,
}

impl Stopping {
    /// Start the watching task, once (on the runtime of the first connection).
    fn watch(&self, shutdown: &ShutdownWatch) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut shutdown = shutdown.clone();
        let notify = self.notify.clone();
        tokio::spawn(async move {
            // A dropped sender means the server is gone: stop waiting too.
            while !*shutdown.borrow_and_update() && shutdown.changed().await.is_ok() {}
            notify.notify_waiters();
        });
    }
}

/// What ended an idle wait.
#[derive(Debug, PartialEq, Eq)]
enum Idle {
    /// Bytes of the next request are here (put back into the stream for the parser).
    Request,
    /// The client closed, the connection failed, the timeout passed or the server is stopping.
    Over,
}

thread_local! {
    /// Where a waiting connection's first bytes land before they are put back: one buffer per
    /// thread instead of one per idle connection.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 4096]);
}

/// Wait for the next request on an idle connection. What arrives is read into the thread's
/// scratch buffer and put back (`rewind`), so the parser sees the request whole and no extra
/// read is made; while nothing arrives, the wait holds no buffer.
async fn wait_for_request(
    stream: &mut TcpStream,
    shutdown: &ShutdownWatch,
    stopping: &Notify,
    idle: &Duration,
) -> Idle {
    // Made before the flag is read: `notify_waiters` wakes every `Notified` made before it, so a
    // shutdown that begins between the two is not missed.
    let stopping = stopping.notified();
    if *shutdown.borrow() {
        return Idle::Over;
    }
    let arrived = std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    stream.rewind(buf.filled());
                    Poll::Ready(Idle::Request)
                }
                Poll::Ready(_) => Poll::Ready(Idle::Over),
            }
        })
    });
    tokio::select! {
        biased;
        idle = pingora::prelude::timeout(*idle, arrived) => idle.unwrap_or(Idle::Over),
        _ = stopping => Idle::Over,
    }
}

#[async_trait]
impl<A> ServerApp for LeanKeepalive<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Plain TCP only: a TLS stream cannot put bytes back, and h2 has its own loop.
        if !stream.as_any().is::<TcpStream>() {
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        let Ok(mut tcp) = stream.into_any().downcast::<TcpStream>() else {
            return None; // cannot happen: checked above
        };
        self.stopping.watch(shutdown);
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            let pending = settings
                .as_ref()
                .is_some_and(HttpPersistentSettings::has_pipelined_prefix);
            if !pending {
                // The write buffer (1.5 KiB) is freed while the connection idles.
                tcp.set_write_capacity(0);
                let stopping = &self.stopping.notify;
                if wait_for_request(&mut tcp, shutdown, stopping, &self.idle).await == Idle::Over {
                    return None;
                }
                tcp.set_write_capacity(WRITE_BUFFER);
            }
            // The session (~600 bytes) is made and handed over inside this block: a local still
            // in scope at the `await` below would keep its room in this future, which every idle
            // connection holds, even after it was moved out.
            let serving = {
                let mut session = ServerSession::new_http1(tcp);
                if let Some(settings) = settings.take() {
                    settings.apply_to_session(&mut session);
                }
                // The server's own bounds, whatever the last request's `Connection` or
                // `Keep-Alive: timeout=` made of them (Pingora keeps a client's timeout, and no
                // bound at all for a plain HTTP/1.1 keep-alive): they bound the reads of a
                // request header that does not arrive in one piece.
                session.set_keepalive(Some(self.idle.as_secs()));
                session.set_header_timeout(self.header_timeout);
                self.app.process_new_http(session, shutdown)
            };
            let reused = serving.await?;
            let (stream, next) = reused.consume();
            tcp = stream.into_any().downcast::<TcpStream>().ok()?;
            settings = next;
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (TcpStream::from(server), client)
    }

    #[tokio::test]
    async fn the_first_byte_is_put_back() {
        let (mut stream, mut client) = pair().await;
        let (_tx, watch) = tokio::sync::watch::channel(false);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            wait_for_request(&mut stream, &watch, &Notify::new(), &KEEPALIVE_TIMEOUT).await,
            Idle::Request
        );
        let mut line = [0u8; 16];
        stream.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn the_write_buffer_is_freed_only_when_nothing_is_buffered() {
        let (mut stream, mut client) = pair().await;
        assert!(stream.set_write_capacity(WRITE_BUFFER));
        stream.write_all(b"abc").await.unwrap();
        assert!(!stream.set_write_capacity(0), "3 bytes wait in the buffer");
        stream.flush().await.unwrap();
        assert!(stream.set_write_capacity(0));
        stream.write_all(b"def").await.unwrap(); // unbuffered: straight through
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcdef");
    }

    /// An application that serves nothing: the connection loop's own state is what is measured.
    struct Nothing;

    #[async_trait]
    impl HttpServerApp for Nothing {
        async fn process_new_http(
            self: &Arc<Self>,
            _session: ServerSession,
            _shutdown: &ShutdownWatch,
        ) -> Option<pingora::apps::ReusedHttpStream> {
            None
        }
    }

    #[tokio::test]
    async fn an_idle_connection_holds_a_small_future() {
        let (stream, _client) = pair().await;
        let (_tx, watch) = tokio::sync::watch::channel(false);
        let app = Arc::new(LeanKeepalive::new(Nothing));
        let serving = ServerApp::process_new(&app, Box::new(stream), &watch);
        // What every idle keep-alive connection holds for its whole life (boxed by async_trait).
        let size = std::mem::size_of_val(&*serving);
        // 296 bytes (the idle wait with its timer and the shared shutdown notification, the
        // previous request's persistent settings): jemalloc's 320-byte class. It was 848 while
        // the session's room stayed in it, 360 with a watch of its own for the shutdown.
        assert!(size <= 320, "the connection loop's future is {size} bytes");
    }

    #[tokio::test]
    async fn a_close_or_a_shutdown_ends_the_wait() {
        let (mut stream, client) = pair().await;
        let (_tx, watch) = tokio::sync::watch::channel(false);
        drop(client);
        let over = wait_for_request(&mut stream, &watch, &Notify::new(), &KEEPALIVE_TIMEOUT).await;
        assert_eq!(over, Idle::Over);

        // A shutdown that begins while connections wait ends every wait.
        let stopping = Arc::new(Stopping::default());
        let (tx, watch) = tokio::sync::watch::channel(false);
        stopping.watch(&watch);
        let mut waiting = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (mut stream, client) = pair().await;
            clients.push(client);
            let (stopping, watch) = (stopping.clone(), watch.clone());
            waiting.push(tokio::spawn(async move {
                wait_for_request(&mut stream, &watch, &stopping.notify, &KEEPALIVE_TIMEOUT).await
            }));
        }
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        for wait in waiting {
            let ended = tokio::time::timeout(Duration::from_secs(5), wait).await;
            assert_eq!(ended.expect("the wait ended").unwrap(), Idle::Over);
        }

        // One that begins after the shutdown does not wait at all.
        let (mut stream, _client) = pair().await;
        let over = tokio::time::timeout(
            Duration::from_secs(5),
            wait_for_request(&mut stream, &watch, &stopping.notify, &KEEPALIVE_TIMEOUT),
        )
        .await;
        assert_eq!(over.expect("no wait"), Idle::Over);
    }
}

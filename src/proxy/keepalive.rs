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
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// How long an idle keep-alive connection may wait for its next request (Pingora's default).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// A client connection's write buffer while it serves a request (Pingora's default size): a
/// response header and a small body leave in one write.
const WRITE_BUFFER: usize = pingora::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE;

/// A Pingora HTTP application (the proxy) served with the lean idle wait.
pub struct LeanKeepalive<A> {
    app: Arc<A>,
}

impl<A> LeanKeepalive<A> {
    pub fn new(app: A) -> Self {
        LeanKeepalive { app: Arc::new(app) }
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
async fn wait_for_request(stream: &mut TcpStream, shutdown: &mut ShutdownWatch) -> Idle {
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
        idle = pingora::prelude::timeout(KEEPALIVE_TIMEOUT, arrived) => idle.unwrap_or(Idle::Over),
        _ = shutdown.changed() => Idle::Over,
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
        let mut watch = shutdown.clone();
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            let pending = settings
                .as_ref()
                .is_some_and(HttpPersistentSettings::has_pipelined_prefix);
            if !pending {
                // The write buffer (1.5 KiB) is freed while the connection idles.
                tcp.set_write_capacity(0);
                if wait_for_request(&mut tcp, &mut watch).await == Idle::Over {
                    return None;
                }
                tcp.set_write_capacity(WRITE_BUFFER);
            }
            // The session (~600 bytes) is made and handed over inside this block: a local still
            // in scope at the `await` below would keep its room in this future, which every idle
            // connection holds, even after it was moved out.
            let serving = {
                let mut session = ServerSession::new_http1(tcp);
                match settings.take() {
                    Some(settings) => settings.apply_to_session(&mut session),
                    None => session.set_keepalive(Some(KEEPALIVE_TIMEOUT.as_secs())),
                }
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
        let (_tx, mut watch) = tokio::sync::watch::channel(false);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            wait_for_request(&mut stream, &mut watch).await,
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
        // 360 bytes (the idle wait with its timer and shutdown watch, the previous request's
        // persistent settings); 848 when the session's room stayed in it.
        assert!(size <= 384, "the connection loop's future is {size} bytes");
    }

    #[tokio::test]
    async fn a_close_or_a_shutdown_ends_the_wait() {
        let (mut stream, client) = pair().await;
        let (_tx, mut watch) = tokio::sync::watch::channel(false);
        drop(client);
        assert_eq!(wait_for_request(&mut stream, &mut watch).await, Idle::Over);

        let (mut stream, _client) = pair().await;
        let (tx, mut watch) = tokio::sync::watch::channel(false);
        let waiting = tokio::spawn(async move { wait_for_request(&mut stream, &mut watch).await });
        tx.send(true).unwrap();
        assert_eq!(waiting.await.unwrap(), Idle::Over);
    }
}

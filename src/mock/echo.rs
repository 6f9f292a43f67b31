//! An upstream app that answers every request with a JSON description of what it received, so
//! that the demo and the tests can see exactly which headers and body the gateway passed on.
//!
//! Test hooks: `x-echo-delay-ms: N` waits N ms (at most 60 s) before answering, and
//! `x-echo-status: NNN` answers with that status (200..=599); the body is the same JSON.
//!
//! A WebSocket upgrade (`Upgrade: websocket`) is accepted on any path: the first message is the
//! same JSON description of the upgrade request, then every message is sent back as it came.

use std::time::Duration;

use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;

/// Largest body the echo reads; a bigger one gets 413.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Upper bound for `x-echo-delay-ms` so that a typo cannot hang a test run.
const MAX_DELAY_MS: u64 = 60_000;

/// Serves the echo app on `listener` until the task is dropped or the listener fails.
/// Answers carry `"server": "<listen address>"`, so a test can tell load-balanced instances apart.
pub async fn serve_echo(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let server = ServerAddr(listener.local_addr()?.to_string());
    axum::serve(listener, echo_router().layer(axum::Extension(server))).await
}

/// The address this echo instance listens on.
#[derive(Clone)]
struct ServerAddr(String);

/// The echo app as a router: every method and path reach the same handler.
pub fn echo_router() -> Router {
    Router::new().fallback(echo)
}

/// What the echo saw. `headers` keeps repeated headers as separate pairs, in the order the
/// `HeaderMap` holds them, so tests can tell a duplicated header from a joined one.
#[derive(Debug, Serialize)]
struct Echo {
    app: &'static str,
    server: Option<String>,
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
    body_len: usize,
}

async fn echo(request: Request) -> Response {
    let server = request
        .extensions()
        .get::<ServerAddr>()
        .map(|s| s.0.clone());
    let (mut parts, body) = request.into_parts();
    let wants_websocket = parts
        .headers
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if wants_websocket {
        use axum::extract::FromRequestParts;
        let described = describe(server, &parts, &[]);
        return match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &()).await
        {
            Ok(ws) => ws.on_upgrade(move |socket| echo_frames(socket, described)),
            Err(rejection) => rejection.into_response(),
        };
    }
    let body = match to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            let error =
                serde_json::json!({ "app": "echo", "error": "body too large or unreadable" });
            return (StatusCode::PAYLOAD_TOO_LARGE, Json(error)).into_response();
        }
    };

    if let Some(ms) = header_number::<u64>(&parts.headers, "x-echo-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
    }
    // 1xx is not a final answer and hyper refuses to send one: only 200..=599 are honoured.
    let status = header_number::<u16>(&parts.headers, "x-echo-status")
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);

    (status, Json(describe(server, &parts, &body))).into_response()
}

fn describe(server: Option<String>, parts: &axum::http::request::Parts, body: &[u8]) -> Echo {
    Echo {
        app: "echo",
        server,
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body: String::from_utf8_lossy(body).into_owned(),
        body_len: body.len(),
    }
}

/// The upgrade request described, then every message back until the client closes.
async fn echo_frames(mut socket: axum::extract::ws::WebSocket, described: Echo) {
    use axum::extract::ws::Message;
    let first = serde_json::to_string(&described).unwrap_or_default();
    if socket.send(Message::Text(first.into())).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => other,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

/// The first value of header `name` as a number; `None` when absent or not a number.
fn header_number<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::time::Instant;

    use serde_json::{json, Value};
    use tokio::net::TcpListener;

    use crate::mock::testing::exchange;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    async fn spawn() -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve_echo(listener));
        Ok(addr)
    }

    fn pairs(body: &Value) -> Vec<(String, String)> {
        body["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned())))
            .collect()
    }

    #[tokio::test]
    async fn echo_shows_request_with_repeated_headers_and_body() -> TestResult {
        let addr = spawn().await?;
        let head = concat!(
            "POST /api/x?a=1&b=%20 HTTP/1.1\r\n",
            "X-Dup: one\r\nContent-Type: text/plain\r\nX-Dup: two\r\n",
            "X-Bin: caf\u{e9}",
        );
        let reply = exchange(addr, head, b"hello \xff world").await?;
        assert_eq!(reply.status, 200);
        assert!(reply
            .headers
            .iter()
            .any(|(n, v)| n == "content-type" && v == "application/json"));
        let body = reply.json()?;
        assert_eq!(body["app"], "echo");
        assert_eq!(body["method"], "POST");
        assert_eq!(body["path"], "/api/x");
        assert_eq!(body["query"], "a=1&b=%20");
        assert_eq!(body["body"], "hello \u{fffd} world");
        assert_eq!(body["body_len"], 13);

        let pairs = pairs(&body);
        let dups: Vec<&str> = pairs
            .iter()
            .filter(|(n, _)| n == "x-dup")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(dups, ["one", "two"]);
        assert!(pairs
            .iter()
            .any(|(n, v)| n == "content-type" && v == "text/plain"));
        assert!(pairs.iter().any(|(n, _)| n == "host"));
        assert!(pairs
            .iter()
            .any(|(n, v)| n == "x-bin" && v.starts_with("caf")));
        Ok(())
    }

    #[tokio::test]
    async fn echo_without_query_reports_null() -> TestResult {
        let addr = spawn().await?;
        let reply = exchange(addr, "GET / HTTP/1.1", b"").await?;
        assert_eq!(reply.status, 200);
        let body = reply.json()?;
        assert_eq!(body["path"], "/");
        assert_eq!(body["query"], Value::Null);
        assert_eq!(body["body"], "");
        assert_eq!(body["body_len"], 0);
        Ok(())
    }

    #[tokio::test]
    async fn echo_delay_and_status() -> TestResult {
        let addr = spawn().await?;
        let start = Instant::now();
        let head = "DELETE /slow HTTP/1.1\r\nX-Echo-Delay-Ms: 150\r\nX-Echo-Status: 418";
        let reply = exchange(addr, head, b"").await?;
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert_eq!(reply.status, 418);
        let body = reply.json()?;
        assert_eq!(body["method"], "DELETE");
        assert_eq!(body["path"], "/slow");

        let head = "GET /503 HTTP/1.1\r\nx-echo-status: 503";
        assert_eq!(exchange(addr, head, b"").await?.status, 503);
        Ok(())
    }

    #[tokio::test]
    async fn echo_ignores_unusable_hook_values() -> TestResult {
        let addr = spawn().await?;
        for value in ["abc", "100", "1000", "-5", "99999999"] {
            let head = format!("GET / HTTP/1.1\r\nx-echo-status: {value}");
            let reply = exchange(addr, &head, b"").await?;
            assert_eq!(reply.status, 200, "{value}");
            assert_eq!(reply.json()?["app"], json!("echo"));
        }
        let start = Instant::now();
        for value in ["abc", "-5", "1.5", ""] {
            let head = format!("GET / HTTP/1.1\r\nx-echo-delay-ms: {value}");
            assert_eq!(exchange(addr, &head, b"").await?.status, 200, "{value}");
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        Ok(())
    }

    #[tokio::test]
    async fn echo_refuses_bodies_over_the_cap() -> TestResult {
        let addr = spawn().await?;
        let big = vec![b'x'; MAX_BODY + 1];
        let reply = exchange(addr, "PUT /big HTTP/1.1", &big).await?;
        assert_eq!(reply.status, 413);
        Ok(())
    }
}

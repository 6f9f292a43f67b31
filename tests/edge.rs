//! The edge a mini program needs, end to end: routing by host, strip_prefix, WebSockets.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The `upstreams = [...]` line of the stack's first route (its echo app).
fn upstreams_line(config: &str) -> String {
    config
        .lines()
        .find(|l| l.starts_with("upstreams"))
        .expect("a route")
        .to_string()
}

/// GET `path` on the stack with a `Host` header; status and JSON answer.
async fn get_on_host(s: &Stack, host: &str, path: &str) -> (u16, Value) {
    let resp = client()
        .get(s.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap();
    json(resp).await
}

#[tokio::test]
async fn routes_by_host_then_longest_prefix() {
    let other = echo();
    let other_addr = other.addr;
    let s = Stack::with(|c| {
        format!(
            "{c}\n[[routes]]\nname = \"shop\"\nhost = \"Shop.Example.com\"\nprefix = \"/public/\"\nupstreams = [\"{other_addr}\"]\nauth = \"none\"\n\
             \n[[routes]]\nname = \"staff\"\nhost = \"*.staff.example.com\"\nprefix = \"/\"\nupstreams = [\"{other_addr}\"]\nauth = \"none\"\n"
        )
    });
    let server = |v: &Value| v["server"].as_str().unwrap().to_string();
    // The same prefix on one listener: the host decides (case and port ignored).
    let (status, v) = get_on_host(&s, "shop.example.COM:3000", "/public/a").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(server(&v), other_addr.to_string());
    let (status, v) = get_on_host(&s, "www.example.com", "/public/a").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(server(&v), s.echo.addr.to_string());
    // A wildcard host, and the apex it does not cover.
    let (status, v) = get_on_host(&s, "a.staff.example.com", "/anything").await;
    assert_eq!((status, server(&v)), (200, other_addr.to_string()));
    let (status, v) = get_on_host(&s, "staff.example.com", "/anything").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("10404")), "{v}");
    drop(other);
}

#[tokio::test]
async fn strip_prefix_rewrites_the_target_and_keeps_the_query() {
    let s = Stack::with(|c| {
        let echo = upstreams_line(&c);
        format!(
            "{c}\n[[routes]]\nprefix = \"/shop/\"\n{echo}\nauth = \"none\"\nstrip_prefix = true\n"
        )
    });
    let (status, v) = get(&s.url("/shop/orders?x=1&y=%20z")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["path"], "/orders");
    assert_eq!(v["query"], "x=1&y=%20z");
    let (_, v) = get(&s.url("/shop/")).await;
    assert_eq!((v["path"].as_str(), v["query"].as_str()), (Some("/"), None));
    let (_, v) = get(&s.url("/shop/a%2Fb/c")).await;
    assert_eq!(v["path"], "/a%2Fb/c", "the rest of the target goes as sent");
    // A prefix that matches only once decoded is refused, never forwarded unchecked.
    let (status, v) = get(&s.url("/%73hop/orders")).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10402")), "{v}");
    assert_eq!(v["reason"], "encoded_prefix");
    // Routes without strip_prefix forward the target unchanged.
    let (_, v) = get(&s.url("/public/x?q=1")).await;
    assert_eq!(
        (v["path"].as_str(), v["query"].as_str()),
        (Some("/public/x"), Some("q=1"))
    );
}

/// The stack with a protected WebSocket route `/ws/` and a plain one `/plain/`.
fn websocket_stack() -> Stack {
    Stack::with(|c| {
        let echo = upstreams_line(&c);
        format!(
            "{c}\n[[routes]]\nprefix = \"/ws/\"\n{echo}\nwebsocket = true\nwebsocket_idle_timeout = \"30s\"\n\
             \n[[routes]]\nprefix = \"/plain/\"\n{echo}\n"
        )
    })
}

fn ws_url(s: &Stack, path: &str) -> String {
    s.url(path).replacen("http://", "ws://", 1)
}

/// Connect, read the echo's description of the upgrade request, then check frames both ways.
async fn websocket_round_trip(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Value {
    let (mut ws, resp) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade accepted");
    assert_eq!(resp.status(), 101);
    let first = ws.next().await.expect("a first message").expect("a frame");
    let described: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    for text in ["hello", "你好"] {
        ws.send(Message::Text(text.into())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.to_text().unwrap(), text);
    }
    ws.send(Message::Binary(vec![0u8, 1, 2, 255].into()))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        [0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();
    described
}

/// The upgrade is refused with this status and envelope code.
async fn assert_refused(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    status: u16,
    code: &str,
) {
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), status);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], code, "{body}");
        }
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn websockets_through_a_protected_route() {
    let s = websocket_stack();
    let token = login(&s, "wendy.1").await;

    // The token in the Authorization header.
    let mut request = ws_url(&s, "/ws/chat?room=1").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
        .headers_mut()
        .insert("x-wx-openid", "spoofed".parse().unwrap());
    let seen = websocket_round_trip(request).await;
    let openid = echoed_header(&seen, "x-wx-openid");
    assert_eq!(openid.len(), 1, "{seen}");
    assert_ne!(openid[0], "spoofed");
    assert_eq!(seen["query"], "room=1");

    // The token in the query, as wx.connectSocket clients often send it: not forwarded.
    let request = ws_url(&s, &format!("/ws/chat?token={token}&room=2"))
        .into_client_request()
        .unwrap();
    let seen = websocket_round_trip(request).await;
    assert_eq!(echoed_header(&seen, "x-wx-openid"), openid);
    assert_eq!(seen["query"], "room=2");
    assert!(
        !seen.to_string().contains(&token),
        "the token went upstream: {seen}"
    );

    // No token: the usual 401 envelope, no upgrade.
    let request = ws_url(&s, "/ws/chat").into_client_request().unwrap();
    assert_refused(request, 401, "10119").await;
    // A route without websocket = true refuses the upgrade, with its own code.
    let mut request = ws_url(&s, "/plain/chat").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_refused(request, 403, "10403").await;
    // Plain requests on the WebSocket route work as on any route.
    let (status, _) = get_bearer(s.url("/ws/plain-http"), &token).await;
    assert_eq!(status, 200);
}

/// A client that writes its whole large body before it reads (as simple clients do) reads the
/// early 413 instead of a connection reset; the same for a 401 on a POST. (Pingora already
/// reads and discards what is still coming before it closes: this guards that behaviour.)
#[test]
fn an_early_answer_is_read_by_a_client_that_keeps_sending() {
    use std::io::{Read, Write};
    let s = Stack::start();
    for (path, status, code) in [("/auth", "413", "10413"), ("/api/upload", "401", "10119")] {
        let mut stream = std::net::TcpStream::connect(s.gw.addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let len = 32 * 1024 * 1024;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        );
        let mut request = head.into_bytes();
        request.resize(request.len() + len, b' ');
        let written = stream.write_all(&request);
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")) && answer.contains(code),
            "{path}: write {written:?}, read {read:?}: {answer:?}"
        );
    }
}

/// Two requests in one write are both answered, in order (a proxied one and a gateway answer).
#[test]
fn pipelined_requests_are_answered_in_order() {
    use std::io::{Read, Write};
    let s = Stack::start();
    for (first, second, wanted) in [
        ("/public/a", "/public/b", ["\"/public/a\"", "\"/public/b\""]),
        ("/api/x", "/public/c", ["10119", "\"/public/c\""]),
    ] {
        let mut stream = std::net::TcpStream::connect(s.gw.addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_millis(1500)))
            .unwrap();
        let request = format!(
            "GET {first} HTTP/1.1\r\nHost: x\r\n\r\nGET {second} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        let positions: Vec<usize> = wanted
            .iter()
            .map(|w| {
                answer
                    .find(w)
                    .unwrap_or_else(|| panic!("no {w} in {answer}"))
            })
            .collect();
        assert!(positions[0] < positions[1], "out of order: {answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    }
}

/// SIGTERM with a WebSocket open: the drain does not wait on it past the grace period; the
/// socket is closed and the process exits.
#[tokio::test]
async fn sigterm_closes_open_websockets_after_the_grace_period() {
    let s = Stack::with(|c| {
        let echo = upstreams_line(&c);
        c.replace("grace_period = \"5s\"", "grace_period = \"1s\"")
            + &format!(
                "\n[[routes]]\nprefix = \"/ws/\"\n{echo}\nauth = \"none\"\nwebsocket = true\n"
            )
    });
    let request = ws_url(&s, "/ws/held").into_client_request().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let mut s = s;
    let started = std::time::Instant::now();
    s.gw.signal("TERM");
    // The connection ends (close frame, EOF or reset), within the grace period and a margin.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the WebSocket stayed open after SIGTERM");
    assert!(s.gw.wait_exit(std::time::Duration::from_secs(5)).is_some());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

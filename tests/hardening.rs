//! Bad input and faults: generated malformed and forged tokens, size bounds, the login rate
//! limit, misbehaving upstream apps. Every answer must be a documented envelope, never a 5xx for
//! the client's mistake, never a dropped connection.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One raw request; status and parsed envelope. Panics if the connection drops without a full
/// answer.
fn raw(addr: SocketAddr, head_lines: &[u8], body: &[u8]) -> (u16, Value) {
    let mut req = Vec::new();
    req.extend_from_slice(head_lines);
    req.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(body);
    let answer = raw_request(addr, &req);
    let status: u16 = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no answer (dropped connection?) to {:?}",
                String::from_utf8_lossy(&req[..req.len().min(200)])
            )
        });
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not an envelope: {answer}"));
    (status, value)
}

fn with_auth(name: &str, value: &[u8]) -> Vec<u8> {
    let mut head = b"GET /api/x HTTP/1.1\r\nHost: gw\r\n".to_vec();
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
    head
}

/// A JWT from raw header and claims JSON, HMAC-signed with our key (so only the flaw counts).
fn signed(header: &str, claims: &str) -> String {
    signed_with(header, claims, JWT_SECRET)
}

fn signed_with(header: &str, claims: &str, secret: &str) -> String {
    let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    // Sign the exact bytes with HS256 through the library's JWS helper: header and claims
    // as written, whatever the header claims.
    let sig =
        jsonwebtoken::crypto::sign(msg.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    format!("{msg}.{sig}")
}

fn forged_tokens() -> Vec<(String, String)> {
    let n = now();
    let claims = |extra: &str| {
        format!(r#"{{"sub":"o1","sid":"s1","iat":{n},"iss":"wxgate","aud":"{APPID}"{extra}}}"#)
    };
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    let exp = format!(r#","exp":{}"#, n + 600);
    let mut out = vec![
        ("no exp".into(), signed(hs, &claims(""))),
        (
            "exp string".into(),
            signed(hs, &claims(&format!(r#","exp":"{}""#, n + 600))),
        ),
        (
            "exp float".into(),
            signed(hs, &claims(&format!(r#","exp":{}.5"#, n + 600))),
        ),
        ("exp negative".into(), signed(hs, &claims(r#","exp":-1"#))),
        ("exp huge".into(), signed(hs, &claims(r#","exp":1e30"#))),
        ("exp null".into(), signed(hs, &claims(r#","exp":null"#))),
        (
            "exp past".into(),
            signed(hs, &claims(&format!(r#","exp":{}"#, n - 5))),
        ),
        (
            "nbf future".into(),
            signed(hs, &claims(&format!(r#"{exp},"nbf":{}"#, n + 300))),
        ),
        (
            "iat future".into(),
            signed(
                hs,
                &claims(&exp).replace(&format!(r#""iat":{n}"#), &format!(r#""iat":{}"#, n + 300)),
            ),
        ),
        (
            "nbf string".into(),
            signed(hs, &claims(&format!(r#"{exp},"nbf":"soon""#))),
        ),
        (
            "no sub".into(),
            signed(
                hs,
                &format!(r#"{{"sid":"s1","iat":{n},"iss":"wxgate","aud":"{APPID}"{exp}}}"#),
            ),
        ),
        (
            "empty sub".into(),
            signed(hs, &claims(&exp).replace(r#""sub":"o1""#, r#""sub":"""#)),
        ),
        (
            "wrong aud".into(),
            signed(hs, &claims(&exp).replace(APPID, "wxother")),
        ),
        (
            "aud array".into(),
            signed(
                hs,
                &claims(&exp).replace(&format!(r#""{APPID}""#), r#"["wxother"]"#),
            ),
        ),
        (
            "wrong iss".into(),
            signed(hs, &claims(&exp).replace("wxgate", "evil")),
        ),
        ("claims not json".into(), signed(hs, "not json")),
        ("claims array".into(), signed(hs, "[1,2,3]")),
    ];
    for alg in [
        "none", "None", "HS384", "HS512", "RS256", "ES256", "EdDSA", "PS256", "hs256", "",
    ] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        out.push((format!("alg {alg}"), signed(&header, &claims(&exp))));
        out.push((
            format!("alg {alg} unsigned"),
            format!("{}.{}.", B64.encode(&header), B64.encode(claims(&exp))),
        ));
    }
    for header in [r#"{"typ":"JWT"}"#, r#"{"alg":["HS256"]}"#, "not json"] {
        out.push((format!("header {header}"), signed(header, &claims(&exp))));
    }
    // Key-selection headers pointing at the attacker's key, signed with it: the key is pinned.
    let attacker = "attacker-key-attacker-key-attacker-key";
    for header in [
        r#"{"alg":"HS256","kid":"../../../../dev/null"}"#,
        r#"{"alg":"HS256","jku":"http://evil/keys"}"#,
        r#"{"alg":"HS256","jwk":{"kty":"oct","k":"YXR0YWNrZXI"}}"#,
        r#"{"alg":"HS256"}"#,
    ] {
        out.push((
            format!("attacker {header}"),
            signed_with(header, &claims(&exp), attacker),
        ));
    }
    out
}

fn malformed_values(valid: &str) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut out: Vec<Vec<u8>> = Vec::new();
    // Random bytes from everything a header value may carry (visible ASCII, space, obs-text).
    for i in 0..200 {
        let len = rng.random_range(1..300);
        let mut v: Vec<u8> = (0..len)
            .map(|_| loop {
                let b: u8 = rng.random();
                if b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b) || b >= 0x80 {
                    break b;
                }
            })
            .collect();
        if i % 2 == 0 {
            let mut prefixed = b"Bearer ".to_vec();
            prefixed.append(&mut v);
            v = prefixed;
        }
        out.push(v);
    }
    // Truncations of a valid token, and a valid token with junk after it.
    for cut in (1..valid.len()).step_by(valid.len() / 25 + 1) {
        out.push(format!("Bearer {}", &valid[..cut]).into_bytes());
    }
    for junk in ["x", ".", "..", ".x", " x", "\tjunk", "=", "%00", "\u{00e9}"] {
        out.push(format!("Bearer {valid}{junk}").into_bytes());
    }
    let parts: Vec<&str> = valid.split('.').collect();
    out.push(format!("Bearer {}.{}", parts[0], parts[1]).into_bytes());
    out.push(format!("Bearer {}.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]).into_bytes());
    out.push(format!("Bearer {}.{}.{}", parts[0], parts[0], parts[2]).into_bytes());
    out.push(format!("Bearer {}.{}.{}", parts[1], parts[1], parts[2]).into_bytes());
    for v in [
        "a",
        "a.b",
        "a.b.c.d",
        ".",
        "..",
        "...",
        "!!!.@@@.###",
        "eyJ%%%.eyJ.sig",
        "Bearer Bearer x",
    ] {
        out.push(format!("Bearer {v}").into_bytes());
        out.push(v.as_bytes().to_vec());
    }
    for v in [
        "bearer x.y.z",
        "BEARER x.y.z",
        "bEaReR x",
        "Bearer\tx.y.z",
        "Basic dXNlcjpwYXNz",
        "Digest x",
        "Bearer",
        "Bearer   ",
        "   ",
    ] {
        out.push(v.as_bytes().to_vec());
    }
    // Huge values: bounded by the gateway (no decode past 8 KiB), answered all the same.
    for n in [8_193, 100_000, 600_000] {
        out.push(format!("Bearer {}", "A".repeat(n)).into_bytes());
    }
    out.push(format!("Bearer {valid}{}", "A".repeat(50_000)).into_bytes());
    out
}

#[test]
fn hundreds_of_malformed_and_forged_tokens_get_401_envelopes() {
    let s = Stack::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let valid = rt.block_on(login(&s, "fuzz.1"));
    let mut cases: Vec<(String, Vec<u8>)> = malformed_values(&valid)
        .into_iter()
        .map(|v| ("authorization".to_string(), v))
        .collect();
    for (_, token) in forged_tokens() {
        cases.push((
            "authorization".into(),
            format!("Bearer {token}").into_bytes(),
        ));
        cases.push(("token".into(), token.into_bytes()));
    }
    // The same values in the `token` header.
    let extra: Vec<_> = cases
        .iter()
        .filter(|(n, _)| n == "authorization")
        .take(120)
        .map(|(_, v)| ("token".to_string(), v.clone()))
        .collect();
    cases.extend(extra);
    assert!(cases.len() >= 400, "{} cases", cases.len());
    for (name, value) in &cases {
        let (status, v) = raw(s.gw.addr, &with_auth(name, value), b"");
        let shown = String::from_utf8_lossy(&value[..value.len().min(80)]);
        assert_eq!(status, 401, "{name}: {shown:?}: {v}");
        let code = v["code"].as_str().unwrap_or("");
        assert!(code == "10200" || code == "10119", "{name}: {shown:?}: {v}");
        assert_eq!(
            v["message"],
            if code == "10200" {
                "token已过期"
            } else {
                "token必须传递"
            }
        );
    }
    // And the gateway is still well.
    let (status, _) = rt.block_on(get_bearer(s.url("/api/x"), &valid));
    assert_eq!(status, 200);
}

#[test]
fn forged_tokens_are_refused_by_is_auth_too() {
    let s = Stack::start();
    for (what, token) in forged_tokens() {
        let body = json!({ "token": token }).to_string();
        let (status, v) = raw(
            s.gw.addr,
            b"POST /isAuth HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n",
            body.as_bytes(),
        );
        assert_eq!(
            (status, v["code"].as_str()),
            (401, Some("10200")),
            "{what}: {v}"
        );
    }
}

#[test]
fn sizes_are_bounded() {
    let s = Stack::start();
    // Big non-token headers: 431.
    let mut head = b"GET /public/x HTTP/1.1\r\nHost: gw\r\n".to_vec();
    head.extend_from_slice(format!("X-Big: {}\r\n", "b".repeat(70_000)).as_bytes());
    let (status, v) = raw(s.gw.addr, &head, b"");
    assert_eq!((status, v["code"].as_str()), (431, Some("10431")), "{v}");
    let mut head = b"GET /public/x HTTP/1.1\r\nHost: gw\r\n".to_vec();
    for i in 0..150 {
        head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    let (status, v) = raw(s.gw.addr, &head, b"");
    assert_eq!((status, v["code"].as_str()), (431, Some("10431")), "{v}");
    // Past Pingora's own bounds (256 header lines; a 1 MiB head), the same answer, not a
    // malformed request's 400.
    let mut head = b"GET /public/x HTTP/1.1\r\nHost: gw\r\n".to_vec();
    for i in 0..300 {
        head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    let (status, v) = raw(s.gw.addr, &head, b"");
    assert_eq!((status, v["code"].as_str()), (431, Some("10431")), "{v}");
    let mut head = b"GET /public/x HTTP/1.1\r\nHost: gw\r\n".to_vec();
    for i in 0..140 {
        head.extend_from_slice(format!("X-L{i}: {}\r\n", "l".repeat(8000)).as_bytes());
    }
    let (status, v) = raw(s.gw.addr, &head, b"");
    assert_eq!((status, v["code"].as_str()), (431, Some("10431")), "{v}");
    // Bodies of gateway endpoints: declared or chunked, refused past the limit.
    let big = format!("{{\"token\":\"{}\"}}", "t".repeat(20_000));
    let (status, v) = raw(
        s.gw.addr,
        b"POST /isAuth HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n",
        big.as_bytes(),
    );
    assert_eq!((status, v["code"].as_str()), (413, Some("10413")), "{v}");
    let chunk = "c".repeat(8000);
    let mut chunked = Vec::new();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut req = b"POST /auth HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(&chunked);
    let answer = raw_request(s.gw.addr, &req);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("10413"), "{answer}");
}

#[test]
fn login_rate_limit_per_client_address() {
    let limited = |c: String| {
        c.replace("login_per_minute = 1000", "login_per_minute = 3")
            .replace("[server]", "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]")
    };
    let s = Stack::with(limited);
    let login_from = |xff: Option<&str>, code: &str| {
        let mut head = format!("GET /auth?code={code} HTTP/1.1\r\nHost: gw\r\n");
        if let Some(x) = xff {
            head.push_str(&format!("X-Forwarded-For: {x}\r\n"));
        }
        raw(s.gw.addr, head.as_bytes(), b"")
    };
    for i in 0..3 {
        let (status, v) = login_from(Some("198.51.100.1"), &format!("rl.a{i}"));
        assert_eq!(status, 200, "{v}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let calls_before = rt.block_on(wechat_stats(&s.wechat))["jscode2session"]
        .as_u64()
        .unwrap();
    let (status, v) = login_from(Some("198.51.100.1"), "rl.a3");
    assert_eq!((status, v["code"].as_str()), (429, Some("10429")), "{v}");
    let calls_after = rt.block_on(wechat_stats(&s.wechat))["jscode2session"]
        .as_u64()
        .unwrap();
    assert_eq!(
        calls_before, calls_after,
        "a refused login never reaches WeChat"
    );
    // Another client behind the same trusted proxy has its own budget; the address the client
    // itself wrote further left does not count.
    let (status, v) = login_from(Some("6.6.6.6, 198.51.100.2"), "rl.b0");
    assert_eq!(status, 200, "{v}");
    let (status, _) = login_from(Some("198.51.100.2, 198.51.100.1"), "rl.a4");
    assert_eq!(status, 429);

    // Without trusted proxies, X-Forwarded-For is ignored: one peer, one budget.
    let s2 = Stack::with(|c| c.replace("login_per_minute = 1000", "login_per_minute = 2"));
    for (i, xff) in ["1.1.1.1", "2.2.2.2"].iter().enumerate() {
        let head =
            format!("GET /auth?code=rl.c{i} HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: {xff}\r\n");
        assert_eq!(raw(s2.gw.addr, head.as_bytes(), b"").0, 200);
    }
    let head = "GET /auth?code=rl.c9 HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 3.3.3.3\r\n";
    let (status, v) = raw(s2.gw.addr, head.as_bytes(), b"");
    assert_eq!((status, v["code"].as_str()), (429, Some("10429")), "{v}");
}

/// An upstream app that misbehaves according to the request path.
fn faulty_upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split(' ').nth(1).unwrap_or("").to_string();
                match path.as_str() {
                    "/faulty/close" => {}
                    "/faulty/partial-head" => {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le");
                    }
                    "/faulty/garbage" => {
                        let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.0\r\n\r\n");
                    }
                    // Returning with most of the request unread closes with RST: a crash.
                    "/faulty/reset" => {}
                    // One chunk of a chunked body, then the connection closes.
                    "/faulty/midchunk" => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                        );
                    }
                    // A switch nobody asked for, the connection then held open.
                    "/faulty/switch" => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                        );
                        std::thread::sleep(std::time::Duration::from_secs(3));
                    }
                    // (Each answer that could keep its connection says it will not: this app
                    // closes after one, and a gateway that reused the connection at the instant
                    // it closed would answer 502, as the test once did on a busy machine.)
                    "/faulty/chunked" => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                        );
                    }
                    // A body without length, ended by closing.
                    "/faulty/eof" => {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nhello");
                    }
                    // One length, written twice (a list, two lines): the body is 2 bytes.
                    "/faulty/length-list" => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2, 2\r\n\r\nok",
                        );
                    }
                    "/faulty/length-lines" => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
                        );
                    }
                    // Two lengths: which ends the body is anyone's guess (request smuggling's
                    // stuff), so it is not forwarded.
                    "/faulty/length-conflict" => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
                        );
                    }
                    "/faulty/length-signed" => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: +2\r\n\r\nok",
                        );
                    }
                    // Headers about the upstream's own connection, and its HTTP/1.0.
                    "/faulty/hop" => {
                        let _ = stream.write_all(
                            b"HTTP/1.0 200 OK\r\nConnection: X-Foo, keep-alive\r\nX-Foo: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
                        );
                    }
                    _ => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                        );
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn upstream_faults_are_502_envelopes() {
    let upstream = faulty_upstream();
    let s = Stack::with(|c| {
        format!("{c}\n[[routes]]\nprefix = \"/faulty/\"\nupstreams = [\"{upstream}\"]\nauth = \"none\"\n")
    });
    let fine = raw_request(
        s.gw.addr,
        b"GET /faulty/fine HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    );
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
    for path in ["/faulty/close", "/faulty/partial-head", "/faulty/garbage"] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n");
        let (status, v) = raw(s.gw.addr, head.as_bytes(), b"");
        assert_eq!(
            (status, v["code"].as_str()),
            (502, Some("10510")),
            "{path}: {v}"
        );
    }
    // An upstream that dies with unread data (RST).
    let head = "POST /faulty/reset HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\n";
    let (status, v) = raw(s.gw.addr, head.as_bytes(), "x".repeat(100_000).as_bytes());
    assert_eq!((status, v["code"].as_str()), (502, Some("10510")), "{v}");

    // A 101 to a plain request is the upstream's failure, answered at once.
    let started = std::time::Instant::now();
    let (status, v) = raw(
        s.gw.addr,
        b"GET /faulty/switch HTTP/1.1\r\nHost: gw\r\n",
        b"",
    );
    assert_eq!((status, v["code"].as_str()), (502, Some("10510")), "{v}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));

    // A chunked body cut short reaches the client cut short: the header went out, the last
    // chunk never does, and the connection closes.
    let cut = raw_request(
        s.gw.addr,
        b"GET /faulty/midchunk HTTP/1.1\r\nHost: gw\r\n\r\n",
    );
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    assert!(cut.contains("hello"), "{cut}");
    assert!(
        !cut.ends_with("0\r\n\r\n"),
        "a truncated body made to look complete: {cut:?}"
    );

    // The upstream's connection headers stay with it; the client gets HTTP/1.1.
    let hop = raw_request(
        s.gw.addr,
        b"GET /faulty/hop HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    );
    assert!(hop.starts_with("HTTP/1.1 200"), "{hop}");
    let lower = hop.to_ascii_lowercase();
    for gone in ["x-foo", "keep-alive:", "proxy-connection", "upgrade"] {
        assert!(!lower.contains(gone), "{gone} forwarded: {hop}");
    }
    assert!(lower.contains("x-kept: yes"), "{hop}");
    assert!(hop.ends_with("ok"), "{hop}");
}

/// The descriptors the process `pid` holds open below `limit` (the numbers a new one may take:
/// one inherited above it, such as a job server's pipe, does not count against the limit).
fn open_descriptors(pid: u32, limit: usize) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|fd| *fd < limit)
            .count()
    })
}

/// Send `request` on an open connection and read the answer to its end (the request asks to
/// close).
fn answer_on(stream: &mut std::net::TcpStream, request: &[u8]) -> String {
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A gateway out of descriptors (idle client connections holding all it may open) answers what
/// it cannot connect upstream with `503 10512` and `Retry-After`, never a panic; the upstream,
/// which did nothing wrong, stays in rotation, and once connections close it serves at once.
#[test]
fn out_of_descriptors_is_503_and_the_upstream_stays_in_rotation() {
    use std::time::{Duration, Instant};
    const LIMIT: usize = 64;
    let wechat = mock_wechat();
    let echo = echo();
    let gw = gateway_with_open_files(&config(wechat.addr, echo.addr), LIMIT as u32);
    let pid = gw.pid();
    let request = b"GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

    // Idle connections until the gateway holds every descriptor it may.
    let mut held = Vec::new();
    let start = Instant::now();
    while open_descriptors(pid, LIMIT) < LIMIT {
        assert!(start.elapsed() < Duration::from_secs(20), "never filled");
        let before = open_descriptors(pid, LIMIT);
        held.push(std::net::TcpStream::connect(gw.addr).unwrap());
        let accepted = Instant::now();
        while open_descriptors(pid, LIMIT) == before
            && accepted.elapsed() < Duration::from_millis(500)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(
        held.len() > 4,
        "the gateway started with too few free descriptors"
    );

    // The first connection was accepted; its request needs one descriptor more, upstream.
    let answer = answer_on(&mut held[0], request);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(answer.contains(r#""code":"10512""#), "{answer}");
    assert!(
        answer.contains(r#""reason":"gateway_overloaded""#),
        "{answer}"
    );

    // Descriptors free again: the next request is served, not refused as out of rotation.
    held.clear();
    let start = Instant::now();
    while open_descriptors(pid, LIMIT) > LIMIT - 8 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "connections never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = raw_request(gw.addr, request);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let log = gw.log_when(|l| l.contains("open files limit: 64"));
    assert!(log.contains("open files limit: 64"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// With a public catch-all route beside a protected one on the same upstream, no spelling of a
/// protected path that a normalising upstream (nginx's merged slashes, a servlet container's
/// `;` parameters and `..;`) would read as protected gets through as public.
#[test]
fn path_spellings_cannot_reach_a_protected_route_through_a_public_one() {
    let s = Stack::with(|c| {
        let echo = c
            .split("upstreams = [\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_string();
        format!("{c}\n[[routes]]\nprefix = \"/\"\nupstreams = [\"{echo}\"]\nauth = \"none\"\n")
    });
    for (path, reason) in [
        ("//api/x", "ambiguous_path"),
        ("/api;/x", "ambiguous_path"),
        ("/api;jsessionid=1/x", "ambiguous_path"),
        ("/%2Fapi/x", "ambiguous_path"),
        ("/%2f%2fapi/x", "ambiguous_path"),
        ("/public/..;/api/x", "dot_segment"),
        ("/public/%2e%2e;/api/x", "dot_segment"),
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n");
        let (status, v) = raw(s.gw.addr, head.as_bytes(), b"");
        assert_eq!(
            (status, v["code"].as_str(), v["reason"].as_str()),
            (400, Some("10402"), Some(reason)),
            "{path}: {v}"
        );
    }
    // Readings that agree on the route are served as sent.
    for path in ["/other;v=1/x", "/public//x", "/api/x"] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n");
        let (status, v) = raw(s.gw.addr, head.as_bytes(), b"");
        let want = if path.starts_with("/api/") { 401 } else { 200 };
        assert_eq!(status, want, "{path}: {v}");
    }
}

/// `Upgrade: h2c` (Java's `HttpClient` offers it on plain HTTP/1.1) is declined by serving the
/// request as HTTP/1.1, its upgrade headers kept from the upstream; an HTTP/1.1 request without
/// a valid `Host` is a client's mistake.
#[test]
fn h2c_upgrades_are_declined_and_http11_needs_a_host() {
    let s = Stack::start();
    // One `Connection` header, as clients send it (`raw` would add a second).
    let answer = raw_request(
        s.gw.addr,
        b"GET /public/x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(seen.contains("\"path\":\"/public/x\""), "{answer}");
    assert!(
        !seen.contains("h2c") && !seen.contains("http2-settings"),
        "{answer}"
    );
    for head in [
        &b"GET /public/x HTTP/1.1\r\n"[..],
        b"GET /public/x HTTP/1.1\r\nHost: a b\r\n",
    ] {
        let (status, v) = raw(s.gw.addr, head, b"");
        assert_eq!((status, v["code"].as_str()), (400, Some("10400")), "{v}");
    }
    let (status, v) = raw(s.gw.addr, b"GET /public/x HTTP/1.0\r\n", b"");
    assert_eq!(status, 200, "HTTP/1.0 needs no Host: {v}");
}

/// Requests the HTTP layer refuses before the gateway sees them (an unparsable header, `CONNECT`)
/// get the envelope too, with their status kept and code 10400.
#[test]
fn requests_refused_by_the_http_layer_get_the_envelope() {
    let s = Stack::start();
    for (head, status) in [
        (
            &b"GET /public/x HTTP/1.1\r\nHost: gw\r\nX-A: a\x01b\r\n"[..],
            400,
        ),
        (
            b"GET /public/x HTTP/1.1\r\nHost: gw\r\nX-WX-OpenID : x\r\n",
            400,
        ),
        (
            b"GET /public/x HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n folded\r\n",
            400,
        ),
        (b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n", 405),
    ] {
        let (got, v) = raw(s.gw.addr, head, b"");
        assert_eq!(
            (got, v["code"].as_str()),
            (status, Some("10400")),
            "{:?}: {v}",
            String::from_utf8_lossy(head)
        );
    }
    // The gateway still serves.
    let (status, _) = raw(s.gw.addr, b"GET /public/x HTTP/1.1\r\nHost: gw\r\n", b"");
    assert_eq!(status, 200);
    // The refused head is not logged: it may carry a token.
    let head = b"GET /api/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer eyJ.credential-marker.x\r\nX-A: \x01\r\n";
    let (status, _) = raw(s.gw.addr, head, b"");
    assert_eq!(status, 400);
    // The log is written out in batches: wait for the refusal's line.
    let log = s.gw.log_when(|l| l.contains("refused a malformed request"));
    assert!(log.contains("refused a malformed request"), "{log}");
    assert!(
        !log.contains("credential-marker"),
        "the refused head was logged"
    );
}

/// A `Content-Length` frames a body only as one number. A client's must be a single line of
/// digits (a list or a repeat, even of one value, is refused: `400`); an upstream's equal values
/// repeated (a list, two lines) are reconciled into one and frame the body, conflicting or
/// malformed ones are its failure (`502`, on either path).
#[test]
fn content_lengths_are_reconciled_or_refused() {
    let upstream = faulty_upstream();
    let s = Stack::with(|c| {
        format!("{c}\n[[routes]]\nprefix = \"/faulty/\"\nupstreams = [\"{upstream}\"]\nauth = \"none\"\n")
    });
    let status = |answer: &str| answer.split(' ').nth(1).map(str::to_string);
    for (lines, expected) in [
        ("Content-Length: 5", "200"),
        ("Content-Length: 05", "200"),
        ("Content-Length: 5, 5", "400"),
        ("Content-Length: 5\r\nContent-Length: 5", "400"),
        ("Content-Length: 5, 6", "400"),
        ("Content-Length: 5\r\nContent-Length: 6", "400"),
        ("Content-Length: +5", "400"),
        ("Content-Length: 5x", "400"),
        ("Content-Length: 0x5", "400"),
    ] {
        let request = format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\n{lines}\r\nConnection: close\r\n\r\nhello"
        );
        let answer = raw_request(s.gw.addr, request.as_bytes());
        assert_eq!(
            status(&answer).as_deref(),
            Some(expected),
            "{lines:?}: {answer:?}"
        );
        if expected == "400" {
            assert!(
                answer.contains("\"code\":\"10400\""),
                "{lines:?}: {answer:?}"
            );
        }
    }
    for (path, expected) in [
        ("/faulty/length-list", "200"),
        ("/faulty/length-lines", "200"),
        ("/faulty/length-conflict", "502"),
        ("/faulty/length-signed", "502"),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        let answer = raw_request(s.gw.addr, request.as_bytes());
        assert_eq!(
            status(&answer).as_deref(),
            Some(expected),
            "{path}: {answer:?}"
        );
        if expected == "200" {
            assert!(answer.ends_with("\r\n\r\nok"), "{path}: {answer:?}");
        } else {
            assert!(answer.contains("\"code\":\"10510\""), "{path}: {answer:?}");
        }
    }
}

/// An HTTP/1.0 client never gets chunks (RFC 9112 §6.1): a body of unknown length reaches it
/// whole, ended by closing the connection; an HTTP/1.1 client gets it chunked and keeps its
/// connection.
#[test]
fn http10_clients_get_bodies_without_chunks() {
    let upstream = faulty_upstream();
    let s = Stack::with(|c| {
        format!("{c}\n[[routes]]\nprefix = \"/faulty/\"\nupstreams = [\"{upstream}\"]\nauth = \"none\"\n")
    });
    for path in ["/faulty/chunked", "/faulty/eof"] {
        let request = format!("GET {path} HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n");
        let answer = raw_request(s.gw.addr, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("transfer-encoding"),
            "{path}: {answer:?}"
        );
        assert!(answer.ends_with("\r\n\r\nhello"), "{path}: {answer:?}");
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        let answer = raw_request(s.gw.addr, request.as_bytes());
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{path}: {answer:?}"
        );
    }
}

/// A request header must arrive whole within `server.header_timeout` of its first byte: a client
/// trickling it (slowloris) gets `408 10400 request_timeout` and loses the connection, however
/// short each pause; one sent in parts within the limit is served. Idle keep-alive connections
/// are not affected (the deadline starts at a request's first byte).
#[test]
fn a_trickled_request_header_is_cut_off() {
    use std::time::{Duration, Instant};
    let admin = free_port();
    let s = Stack::with(|c| {
        c.replace("[server]\n", "[server]\nheader_timeout = \"1s\"\n")
            + &format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n")
    });
    let parts: &[&[u8]] = &[
        b"GET /public/x HTTP/1.1\r\n",
        b"Host: gw\r\n",
        b"X-A: 1\r\n",
    ];
    let mut conn = std::net::TcpStream::connect(s.gw.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    // Each pause (300 ms) is far below every per-read timeout; the header never ends.
    let mut answer = Vec::new();
    let trickle = parts.iter().chain(std::iter::repeat_n(&parts[2], 20));
    for part in trickle {
        if conn.write_all(part).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        // The gateway answers and closes once the deadline passes.
        conn.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(n) = conn.read(&mut buf) {
            answer.extend_from_slice(&buf[..n]);
        }
        conn.set_nonblocking(false).unwrap();
        if !answer.is_empty() {
            break;
        }
    }
    let _ = conn.read_to_end(&mut answer);
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"));
    assert_eq!(
        (v["code"].as_str(), v["reason"].as_str()),
        (Some("10400"), Some("request_timeout")),
        "{v}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "cut off after {elapsed:?}"
    );
    // Counted: no route and no access log line see such a request.
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let metrics = raw_request(
        admin_addr,
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(
        metrics.contains("wxgate_requests_total{route=\"refused\",status=\"408\"} 1"),
        "{metrics}"
    );

    // A header in three parts within the limit, on a connection that first idled past it.
    let mut conn = std::net::TcpStream::connect(s.gw.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for part in parts {
        conn.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    conn.write_all(b"Connection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

/// The body of a gateway endpoint (`POST /auth`) must arrive whole within
/// `server.header_timeout` too: trickled a byte at a time, it gets `408 10400` and the connection
/// closes; a proxied route's body is the upstream's to wait for, and is not cut off.
#[test]
fn a_trickled_endpoint_body_is_cut_off() {
    use std::time::{Duration, Instant};
    let s = Stack::with(|c| c.replace("[server]\n", "[server]\nheader_timeout = \"1s\"\n"));
    let mut conn = std::net::TcpStream::connect(s.gw.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    conn.write_all(b"POST /auth HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(8) {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) if answer.is_empty() => {
                // Nothing yet: one more byte of the body, well within each read's timeout.
                let _ = conn.write_all(b" ");
            }
            Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer.contains("\"reason\":\"request_timeout\""),
        "{answer:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "cut off after {elapsed:?}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer:?}"
    );

    // A proxied body taking twice the deadline is streamed through.
    let mut conn = std::net::TcpStream::connect(s.gw.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(
        b"POST /public/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 8\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    for byte in b"trickled" {
        std::thread::sleep(Duration::from_millis(250));
        conn.write_all(&[*byte]).unwrap();
    }
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

/// `server.keepalive_timeout` closes an idle plain HTTP/1 connection, before its first request
/// and between requests; the admin listener keeps the same bounds, the header deadline included.
#[test]
fn idle_connections_close_after_the_keepalive_timeout() {
    use std::time::{Duration, Instant};
    let admin = free_port();
    let s = Stack::with(|c| {
        c.replace(
            "[server]\n",
            "[server]\nkeepalive_timeout = \"1s\"\nheader_timeout = \"1s\"\n",
        ) + &format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n")
    });
    // A new connection that sent `request` (perhaps nothing): its answer, and how long the
    // gateway took to close it.
    let until_closed = |addr: SocketAddr, request: &[u8]| {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(request).unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    };
    let the_timeout =
        |idle: Duration| idle > Duration::from_millis(500) && idle < Duration::from_secs(5);
    let (idle, answer) = until_closed(s.gw.addr, b"");
    assert!(answer.is_empty() && the_timeout(idle), "{idle:?} {answer}");
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    for (addr, path) in [(s.gw.addr, "/public/x"), (admin_addr, "/healthz")] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let (idle, answer) = until_closed(addr, request.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 200") && the_timeout(idle),
            "{idle:?} {answer}"
        );
    }

    // The admin listener: a header that never ends.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = loop {
        match conn.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => break false,
            Err(_) if started.elapsed() < Duration::from_secs(8) => {
                let _ = conn.write_all(b"X-A: 1\r\n");
            }
            Err(_) => break false,
        }
    };
    let took = started.elapsed();
    assert!(
        closed && took < Duration::from_secs(4),
        "admin: {closed} after {took:?}"
    );
}

//! The WeChat API relay (`[relay]`), end to end: real gateway processes, the stand-in WeChat,
//! a real Redis for two instances.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The stand-in's wxacode image (src/mock/wechat/open_api.rs): the bytes must arrive intact.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

const ALLOW: &str =
    r#"["/cgi-bin/message/subscribe/send", "/wxa/msg_sec_check", "/wxa/getwxacodeunlimit"]"#;

/// A `[relay]` section on a free port (and an admin listener for the metrics).
fn relay_section(port: u16, admin: u16, extra: &str) -> String {
    format!(
        "\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[relay]\nlisten = \"127.0.0.1:{port}\"\nallow = {ALLOW}\n{extra}\n"
    )
}

/// A gateway with the relay on, and the relay's address once it listens.
fn gateway_with_relay(base: String, extra: &str) -> (Proc, SocketAddr) {
    gateway_with_relay_and_admin(base, extra, free_port())
}

fn gateway_with_relay_and_admin(base: String, extra: &str, admin: u16) -> (Proc, SocketAddr) {
    let port = free_port();
    let gw = gateway(&(base + &relay_section(port, admin, extra)));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the relay did not listen:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    (gw, addr)
}

struct RelayStack {
    wechat: Proc,
    _echo: Proc,
    gw: Proc,
    relay: SocketAddr,
    admin: u16,
}

impl RelayStack {
    fn start(extra: &str) -> Self {
        let wechat = mock_wechat();
        let echo = echo();
        let admin = free_port();
        let (gw, relay) =
            gateway_with_relay_and_admin(config(wechat.addr, echo.addr), extra, admin);
        RelayStack {
            wechat,
            _echo: echo,
            gw,
            relay,
            admin,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.relay)
    }

    async fn stat(&self, name: &str) -> u64 {
        wechat_stats(&self.wechat).await[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    async fn mock(&self, path: &str) {
        let resp = client().post(self.wechat.url(path)).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}");
    }
}

async fn msg_sec_check(relay: SocketAddr, query: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = client()
        .post(format!("http://{relay}/wxa/msg_sec_check{query}"))
        .json(&json!({"content": "hello", "version": 2, "scene": 2, "openid": "o1"}))
        .send()
        .await
        .expect("relay answers");
    let headers = resp.headers().clone();
    let (status, body) = json(resp).await;
    (status, body, headers)
}

#[tokio::test]
async fn relays_json_and_binary_answers_with_the_shared_token() {
    let s = RelayStack::start("");
    // The app's own tokens are removed, its other parameters kept, ours added last.
    let (status, v, headers) = msg_sec_check(
        s.relay,
        "?access_token=stale&cloudbase_access_token=x&lang=zh_CN",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["errcode"], 0, "{v}");
    assert_eq!(v["result"]["suggest"], "pass");
    assert_eq!(v["mock_params"], json!(["lang", "access_token"]), "{v}");
    assert_eq!(headers["content-type"], "application/json");
    let seqid = headers
        .get("x-openapi-seqid")
        .expect("x-openapi-seqid")
        .to_str()
        .unwrap();
    assert!(!seqid.is_empty());

    let (_, v, _) = msg_sec_check(s.relay, "").await;
    assert_eq!(v["mock_params"], json!(["access_token"]), "{v}");

    let resp = client()
        .post(s.url("/wxa/getwxacodeunlimit"))
        .json(&json!({"scene": "a=1", "page": "pages/index/index"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert!(resp.headers().contains_key("x-openapi-seqid"));
    assert_eq!(resp.bytes().await.unwrap().as_ref(), PNG);

    // WeChat's own errors pass through untouched (status, body), without a retry.
    let resp = client()
        .post(s.url("/wxa/getwxacodeunlimit"))
        .json(&json!({"page": "no scene"}))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-openapi-seqid"));
    let (status, v) = json(resp).await;
    assert_eq!((status, &v["errcode"]), (200, &json!(47001)), "{v}");

    assert_eq!(s.stat("stable_token").await, 1, "one token for every call");
    assert_eq!(s.stat("msg_sec_check").await, 2);
    assert_eq!(s.stat("getwxacodeunlimit").await, 2);
}

#[tokio::test]
async fn refuses_paths_hosts_and_addresses_outside_the_lists() {
    let s = RelayStack::start("");
    for path in [
        "/cgi-bin/token",
        "/wxa/msg_sec_check/",
        "/wxa/../cgi-bin/token",
    ] {
        let resp = raw_request(
            s.relay,
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}")
                .as_bytes(),
        );
        assert!(resp.starts_with("HTTP/1.1 403"), "{path}: {resp}");
        assert!(resp.contains(r#""code":"10408""#), "{resp}");
        assert!(resp.contains("relay_path_not_allowed"), "{resp}");
        assert!(
            resp.to_ascii_lowercase().contains("x-openapi-seqid"),
            "{resp}"
        );
    }
    let resp = raw_request(
        s.relay,
        b"GET http://example.com/wxa/msg_sec_check HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("relay_host_not_allowed"), "{resp}");
    let (status, v, _) = msg_sec_check(s.relay, "").await;
    assert_eq!(status, 200, "{v}");
    // An unknown app: the existing 10123.
    let resp = client()
        .post(s.url("/wxa/msg_sec_check"))
        .header("X-WX-APPID", "wxnotconfigured")
        .json(&json!({"content": "x"}))
        .send()
        .await
        .unwrap();
    let (status, v) = json(resp).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10123")), "{v}");
    assert_eq!(
        s.stat("getwxacodeunlimit").await + s.stat("msg_sec_check").await,
        1
    );

    // Only the listed addresses: loopback is not among them here.
    let t = RelayStack::start("allow_from = [\"10.0.0.0/8\"]");
    let (status, v, headers) = msg_sec_check(t.relay, "").await;
    assert_eq!((status, v["code"].as_str()), (403, Some("10409")), "{v}");
    assert_eq!(v["reason"], "relay_client_not_allowed");
    assert!(headers.contains_key("x-openapi-seqid"));
    assert_eq!(t.stat("stable_token").await, 0);
    assert_eq!(t.stat("msg_sec_check").await, 0);

    // The counters name allowed paths only.
    let metrics = client()
        .get(format!("http://127.0.0.1:{}/metrics", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"wxgate_relay_requests_total{errcode="0",path="/wxa/msg_sec_check"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"wxgate_relay_requests_total{errcode="refused",path="other"} 4"#),
        "{metrics}"
    );
    assert!(metrics.contains("wxgate_relay_request_duration_seconds"));
    assert!(!metrics.contains("/cgi-bin/token"), "{metrics}");
    let page = client()
        .get(format!("http://127.0.0.1:{}/", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"data-metric="wxgate_relay_requests_total""#),
        "{page}"
    );
}

#[tokio::test]
async fn wechat_unreachable_or_slow_is_the_usual_envelope() {
    let dead = free_port();
    let echo = echo();
    let base = config(format!("127.0.0.1:{dead}").parse().unwrap(), echo.addr);
    let (_gw, relay) = gateway_with_relay(base, "");
    let (status, v, headers) = msg_sec_check(relay, "").await;
    assert_eq!((status, v["code"].as_str()), (502, Some("10501")), "{v}");
    assert!(headers.contains_key("x-openapi-seqid"));

    let s = RelayStack::start("timeout = \"300ms\"");
    let started = Instant::now();
    let resp = client()
        .post(s.url("/wxa/msg_sec_check"))
        .json(&json!({"content": "slow2000-x"}))
        .send()
        .await
        .unwrap();
    let (status, v) = json(resp).await;
    assert_eq!((status, v["code"].as_str()), (504, Some("10504")), "{v}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    let metrics = client()
        .get(format!("http://127.0.0.1:{}/metrics", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"wxgate_relay_requests_total{errcode="timeout",path="/wxa/msg_sec_check"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_refused_token_is_fetched_once_for_fifty_concurrent_calls() {
    let s = RelayStack::start("");
    assert_eq!(msg_sec_check(s.relay, "").await.0, 200);
    assert_eq!(s.stat("stable_token").await, 1);

    // 40001 once: the token is dropped, fetched again, the call sent again.
    s.mock("/__mock/refuse_token_once").await;
    let (status, v, _) = msg_sec_check(s.relay, "").await;
    assert_eq!((status, &v["errcode"]), (200, &json!(0)), "{v}");
    assert_eq!(s.stat("stable_token").await, 2);
    assert_eq!(s.stat("msg_sec_check").await, 3);

    // Every token WeChat issued becomes invalid: 50 calls in flight, each refused once, make
    // exactly one fetch between them, and all succeed.
    s.mock("/__mock/reset").await;
    s.mock("/__mock/invalidate_tokens").await;
    let calls = (0..50).map(|_| msg_sec_check(s.relay, ""));
    for (status, v, _) in futures::future::join_all(calls).await {
        assert_eq!((status, &v["errcode"]), (200, &json!(0)), "{v}");
    }
    assert_eq!(s.stat("stable_token").await, 1);
    assert_eq!(s.stat("stable_token_forced").await, 0);
    // Each call was refused once and sent again, unless it started after the new token came.
    let calls = s.stat("msg_sec_check").await;
    assert!((51..=100).contains(&calls), "{calls}");
}

#[tokio::test]
async fn two_instances_over_one_redis_fetch_one_token() {
    let redis = redis_server();
    let wechat = mock_wechat();
    let echo = echo();
    let base = config(wechat.addr, echo.addr)
        + &format!(
            "\n[session]\nstore = \"redis\"\nredis_url = \"redis://{}/\"\n",
            redis.addr
        );
    let (_a, relay_a) = gateway_with_relay(base.clone(), "");
    let (_b, relay_b) = gateway_with_relay(base, "");
    let calls = (0..20).map(|i| msg_sec_check(if i % 2 == 0 { relay_a } else { relay_b }, ""));
    for (status, v, _) in futures::future::join_all(calls).await {
        assert_eq!((status, &v["errcode"]), (200, &json!(0)), "{v}");
    }
    let stats = wechat_stats(&wechat).await;
    assert_eq!(stats["stable_token"], 1, "{stats}");
    assert_eq!(stats["msg_sec_check"], 20, "{stats}");
}

#[tokio::test]
async fn serves_as_a_forward_proxy_for_api_weixin_qq_com() {
    let s = RelayStack::start("");
    // Through HTTP_PROXY: an absolute-form target.
    let via_proxy = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(s.url("")).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = via_proxy
        .post("http://api.weixin.qq.com/wxa/msg_sec_check?access_token=whatever")
        .json(&json!({"content": "risky words"}))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-openapi-seqid"));
    let (status, v) = json(resp).await;
    assert_eq!(
        (status, &v["result"]["suggest"]),
        (200, &json!("risky")),
        "{v}"
    );
    assert_eq!(v["mock_params"], json!(["access_token"]), "{v}");

    // The same in raw bytes, and with `Host: api.weixin.qq.com` (a hosts entry).
    let body = r#"{"scene":"x=1"}"#;
    for head in [
        "POST http://api.weixin.qq.com/wxa/getwxacodeunlimit HTTP/1.1\r\nHost: api.weixin.qq.com",
        "POST /wxa/getwxacodeunlimit HTTP/1.1\r\nHost: api.weixin.qq.com",
    ] {
        let resp = raw_request(
            s.relay,
            format!(
                "{head}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        assert!(resp.starts_with("HTTP/1.1 200"), "{head}: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("content-type: image/png"),
            "{resp}"
        );
    }
    assert_eq!(s.stat("getwxacodeunlimit").await, 2);
    assert_eq!(s.stat("stable_token").await, 1);
}

#[tokio::test]
async fn the_log_holds_neither_the_token_nor_query_strings() {
    let s = RelayStack::start("");
    let (status, v, _) =
        msg_sec_check(s.relay, "?secretparam=hushhush&access_token=apptoken").await;
    assert_eq!(status, 200, "{v}");
    s.mock("/__mock/refuse_token_once").await;
    assert_eq!(msg_sec_check(s.relay, "?secretparam=hushhush").await.0, 200);
    // The stand-in hands out the same stable token again: the one the relay used.
    let token = client()
        .post(s.wechat.url("/cgi-bin/stable_token"))
        .json(&json!({"grant_type": "client_credential", "appid": APPID, "secret": APPSECRET}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let log = s.gw.log_when(|l| l.contains("retried=true"));
    assert!(log.contains("/wxa/msg_sec_check"), "{log}");
    for secret in [
        token.as_str(),
        "hushhush",
        "apptoken",
        "access_token=",
        APPSECRET,
    ] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
}

#[tokio::test]
async fn bodies_over_1_mib_are_streamed_and_not_retried() {
    let s = RelayStack::start("");
    let big = |content: &str| {
        json!({ "content": format!("{content}{}", "x".repeat(1536 * 1024)) }).to_string()
    };
    let send = |body: String| {
        client()
            .post(s.url("/wxa/msg_sec_check"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (status, v) = json(send(big("hello")).await.unwrap()).await;
    assert_eq!((status, &v["errcode"]), (200, &json!(0)), "{v}");
    assert_eq!(v["result"]["suggest"], "pass");
    let (status, v) = json(send(big("risky")).await.unwrap()).await;
    assert_eq!(
        (status, &v["result"]["suggest"]),
        (200, &json!("risky")),
        "{v}"
    );

    // Refused for its token: the streamed body cannot be sent again, WeChat's answer passes on,
    // and the next call fetches a new token.
    s.mock("/__mock/refuse_token_once").await;
    let (status, v) = json(send(big("again")).await.unwrap()).await;
    assert_eq!((status, &v["errcode"]), (200, &json!(40001)), "{v}");
    assert_eq!(s.stat("msg_sec_check").await, 3);
    assert_eq!(s.stat("stable_token").await, 1);
    let (status, v, _) = msg_sec_check(s.relay, "").await;
    assert_eq!((status, &v["errcode"]), (200, &json!(0)), "{v}");
    assert_eq!(s.stat("stable_token").await, 2);

    // Over 16 MiB declared: refused before anything is read or sent.
    let resp = raw_request(
        s.relay,
        b"POST /wxa/msg_sec_check HTTP/1.1\r\nHost: x\r\nContent-Length: 16777217\r\nConnection: close\r\n\r\n{",
    );
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains(r#""code":"10413""#), "{resp}");
    assert_eq!(s.stat("msg_sec_check").await, 4);
}

#[tokio::test]
async fn x_wx_appid_picks_the_app() {
    const STAFF: &str = "wx2222222222222222";
    let wechat = mock_wechat_any_app();
    let echo = echo();
    let base = config(wechat.addr, echo.addr);
    let wechat_table = format!(
        "[wechat]\nappid = \"{APPID}\"\nsecret = \"${{WECHAT_APPSECRET}}\"\napi_base = \"http://{}\"\ntimeout = \"1s\"\n",
        wechat.addr
    );
    assert!(base.contains(&wechat_table), "{base}");
    let apps = format!(
        "[[apps]]\nname = \"shop\"\nappid = \"{APPID}\"\nsecret = \"${{WECHAT_APPSECRET}}\"\napi_base = \"http://{w}\"\n\n\
         [[apps]]\nname = \"staff\"\nappid = \"{STAFF}\"\nsecret = \"${{WECHAT_APPSECRET}}\"\napi_base = \"http://{w}\"\n",
        w = wechat.addr
    );
    let (_gw, relay) = gateway_with_relay(base.replace(&wechat_table, &apps), "");
    let call = |appid: Option<&'static str>| async move {
        let mut req = client()
            .post(format!("http://{relay}/wxa/msg_sec_check"))
            .json(&json!({"content": "x"}));
        if let Some(appid) = appid {
            req = req.header("X-WX-APPID", appid);
        }
        json(req.send().await.unwrap()).await
    };
    let (status, v) = call(None).await;
    assert_eq!(
        (status, v["mock_appid"].as_str()),
        (200, Some(APPID)),
        "{v}"
    );
    let (status, v) = call(Some(STAFF)).await;
    assert_eq!(
        (status, v["mock_appid"].as_str()),
        (200, Some(STAFF)),
        "{v}"
    );
    let (status, v) = call(Some(APPID)).await;
    assert_eq!(
        (status, v["mock_appid"].as_str()),
        (200, Some(APPID)),
        "{v}"
    );
    let (status, v) = call(Some("wx-unknown")).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10123")), "{v}");
    // One token per app.
    assert_eq!(wechat_stats(&wechat).await["stable_token"], 2);
}

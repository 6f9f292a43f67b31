//! `identity_headers = "cloudhosting"`: WeChat Cloud Hosting's header set on a route, client
//! copies stripped, and an Express app written for Cloud Hosting running unchanged behind
//! wxgate, its WeChat calls going through the relay as its `HTTP_PROXY`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `/ch/` (token) and `/ch-public/` (public) in Cloud Hosting's mode, beside the usual routes.
fn with_cloudhosting_routes(c: String) -> String {
    let echo = c
        .split("upstreams = [\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    format!(
        "{c}\n[[routes]]\nprefix = \"/ch/\"\nupstreams = [\"{echo}\"]\nidentity_headers = \"cloudhosting\"\n\
         \n[[routes]]\nprefix = \"/ch-public/\"\nupstreams = [\"{echo}\"]\nauth = \"none\"\nidentity_headers = \"cloudhosting\"\n"
    )
}

async fn openid_of(s: &Stack, token: &str) -> String {
    let (status, v) = post_body(
        s.url("/isAuth"),
        "application/json",
        json!({ "token": token }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["data"]["openid"].as_str().unwrap().to_string()
}

const SPOOFED: &[(&str, &str)] = &[
    ("X-WX-OPENID", "o-evil"),
    ("x_wx_openid", "o-evil2"),
    ("X-WX-APPID", "wx-evil"),
    ("X-WX-UNIONID", "u-evil"),
    ("x-wx-source", "wx_client"),
    ("X-WX-ENV", "prod-evil"),
    ("X-Original-Forwarded-For", "6.6.6.6"),
    ("x_original_forwarded_for", "6.6.6.7"),
    ("X-Forwarded-For", "203.0.113.5"),
];

#[tokio::test]
async fn cloud_hosting_headers_replace_spoofed_copies() {
    let s = Stack::with(with_cloudhosting_routes);
    let token = login(&s, "union-cara.1").await;
    let openid = openid_of(&s, &token).await;

    let (status, echo) = get_with(s.url("/ch/me"), Some(&token), SPOOFED).await;
    assert_eq!(status, 200, "{echo}");
    let h = |name: &str| echoed_header(&echo, name);
    assert_eq!(h("x-wx-openid"), vec![openid.clone()]);
    assert_eq!(h("x-wx-appid"), vec![APPID]);
    assert_eq!(h("x-wx-unionid").len(), 1, "{echo}");
    assert_ne!(h("x-wx-unionid"), vec!["u-evil"]);
    assert_eq!(h("x-wx-source"), vec!["wxgate"]);
    assert_eq!(h("x-original-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(h("x-forwarded-for"), vec!["203.0.113.5, 127.0.0.1"]);
    for gone in ["x_wx_openid", "x-wx-env", "x_original_forwarded_for"] {
        assert!(h(gone).is_empty(), "{gone}: {echo}");
    }

    // A public route: the address, no identity and no source (its presence means "verified").
    let (status, echo) = get_with(s.url("/ch-public/x"), None, SPOOFED).await;
    assert_eq!(status, 200, "{echo}");
    let h = |name: &str| echoed_header(&echo, name);
    for gone in [
        "x-wx-openid",
        "x-wx-appid",
        "x-wx-unionid",
        "x-wx-source",
        "x-wx-env",
    ] {
        assert!(h(gone).is_empty(), "{gone}: {echo}");
    }
    assert_eq!(h("x-original-forwarded-for"), vec!["127.0.0.1"]);

    // The default set is unchanged elsewhere: no Cloud Hosting extras added.
    let (status, echo) = get_with(s.url("/api/me"), Some(&token), &[]).await;
    assert_eq!(status, 200, "{echo}");
    let h = |name: &str| echoed_header(&echo, name);
    assert_eq!(h("x-wx-openid"), vec![openid]);
    assert!(h("x-wx-source").is_empty(), "{echo}");
    assert!(h("x-original-forwarded-for").is_empty(), "{echo}");
    assert!(h("x-forwarded-for").is_empty(), "{echo}");
}

/// The Express app of tests/browser/cloudhosting_app.mjs on a free port.
fn express_app(http_proxy: SocketAddr) -> Proc {
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser.join("node_modules/express").is_dir(),
        "install tests/browser's packages: WXGATE_SETUP_TEST=1 scripts/setup.sh"
    );
    let mut child = Command::new("node")
        .arg("cloudhosting_app.mjs")
        .current_dir(&browser)
        .env("PORT", "0")
        .env("HTTP_PROXY", format!("http://{http_proxy}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the app prints its address");
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Proc {
        child,
        addr,
        log: None,
    }
}

#[tokio::test]
async fn an_express_app_written_for_cloud_hosting_runs_unchanged() {
    let wechat = mock_wechat();
    let echo = echo();
    let relay_port = free_port();
    let relay: SocketAddr = format!("127.0.0.1:{relay_port}").parse().unwrap();
    let app = express_app(relay);
    let cfg = config(wechat.addr, echo.addr)
        + &format!(
            "\n[[routes]]\nprefix = \"/app/\"\nupstreams = [\"{}\"]\nstrip_prefix = true\n\
             \n[auth]\nidentity_headers = \"cloudhosting\"\n\
             \n[relay]\nlisten = \"{relay}\"\nallow = [\"/wxa/msg_sec_check\"]\n",
            app.addr
        );
    let gw = gateway(&cfg);
    let start = Instant::now();
    while TcpStream::connect_timeout(&relay, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let s = Stack { wechat, echo, gw };
    let token = login(&s, "union-dora.1").await;
    let openid = openid_of(&s, &token).await;

    let resp = client()
        .post(s.url("/app/api/check"))
        .bearer_auth(&token)
        .header("X-WX-OPENID", "o-evil")
        .json(&json!({ "content": "some risky words" }))
        .send()
        .await
        .unwrap();
    let (status, v): (u16, Value) = json(resp).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["openid"], openid.as_str(), "{v}");
    assert_eq!(v["appid"], APPID);
    assert!(v["unionid"].is_string(), "{v}");
    assert_eq!(v["source"], "wxgate");
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["wechat_status"], 200);
    assert!(v["seqid"].is_string(), "the relay answered: {v}");
    assert_eq!(v["errcode"], 0, "{v}");
    assert_eq!(v["suggest"], "risky", "{v}");

    // Without a token the gateway answers; the app is never reached.
    let resp = client()
        .post(s.url("/app/api/check"))
        .json(&json!({ "content": "x" }))
        .send()
        .await
        .unwrap();
    let (status, v) = json(resp).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10119")), "{v}");

    let stats = wechat_stats(&s.wechat).await;
    assert_eq!(stats["msg_sec_check"], 1, "{stats}");
    assert_eq!(stats["stable_token"], 1, "{stats}");
    drop(app);
}

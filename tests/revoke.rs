//! Revoking a user end to end: `wxgate revoke` against Redis shared by two instances, and
//! `POST /sessions/revoke` on the admin listener of an instance with the memory store; blocks;
//! the admin token.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

async fn call(gw: &Proc, token: &str) -> (u16, Value) {
    get_bearer(gw.url("/api/x"), token).await
}

async fn token_of(gw: &Proc, code: &str) -> String {
    let (status, body) = get(&gw.url(&format!("/auth?code={code}"))).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["token"].as_str().expect("token").to_string()
}

/// The openid behind a token, as `/isAuth` tells it.
async fn openid_of(gw: &Proc, token: &str) -> String {
    let (status, v) = post_body(
        gw.url("/isAuth"),
        "application/json",
        json!({ "token": token }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["data"]["openid"].as_str().expect("openid").to_string()
}

/// Poll until `gw` refuses `token` as revoked, at most `limit`.
async fn refused_within(gw: &Proc, token: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, v) = call(gw, token).await;
        if status == 401 {
            assert_eq!(
                (v["code"].as_str(), v["reason"].as_str()),
                (Some("10200"), Some("revoked")),
                "{v}"
            );
            return start.elapsed();
        }
        assert_eq!(status, 200, "{v}");
        assert!(start.elapsed() < limit, "still accepted after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A copy of a gateway's configuration for the CLI (its own `server.listen`, never bound).
fn cli_config(text: &str) -> PathBuf {
    let path = scratch("revoke-cli").join("gateway.toml");
    std::fs::write(&path, text.replace("{PORT}", &free_port().to_string())).expect("write");
    path
}

fn revoke_cli(config: &PathBuf, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("revoke")
        .args(args)
        .arg("-c")
        .arg(config)
        .env("WECHAT_APPSECRET", APPSECRET)
        .env("WXGATE_JWT_SECRET", JWT_SECRET)
        .env_remove("WXGATE_CONFIG")
        .output()
        .expect("run wxgate revoke")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn with_admin(base: String, admin: u16, extra: &str) -> String {
    format!("{base}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{extra}")
}

async fn admin_revoke(admin: u16, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(format!("http://127.0.0.1:{admin}/sessions/revoke"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    json(req.send().await.expect("admin listener")).await
}

async fn metrics(admin: u16) -> String {
    client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn revoke_in_redis_reaches_every_instance_within_2s() {
    let redis = redis_server();
    let wechat = mock_wechat();
    let echo = echo();
    let cfg = config(wechat.addr, echo.addr)
        + &format!(
            "\n[session]\nstore = \"redis\"\nredis_url = \"redis://{}/\"\ntimeout = \"500ms\"\n",
            redis.addr
        );
    let a = gateway(&cfg);
    let b = gateway(&cfg);

    // Two sessions of one user on A, a third on B; another user on A.
    let tokens = [
        token_of(&a, "vera.1").await,
        token_of(&a, "vera.2").await,
        token_of(&b, "vera.3").await,
    ];
    let other = token_of(&a, "walt.1").await;
    let openid = openid_of(&a, &tokens[0]).await;
    assert_eq!(openid_of(&b, &tokens[2]).await, openid, "one user");
    for t in &tokens {
        assert_eq!(call(&a, t).await.0, 200);
        assert_eq!(call(&b, t).await.0, 200);
    }

    // No admin listener in the file: the CLI revokes in Redis itself.
    let file = cli_config(&cfg);
    let out = revoke_cli(&file, &["--openid", &openid]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("revoked 3 session(s) of {openid}")
    );

    let started = Instant::now();
    for gw in [&a, &b] {
        for t in &tokens {
            refused_within(gw, t, Duration::from_secs(2)).await;
        }
    }
    println!(
        "every token refused on A and B after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(2) + Duration::from_millis(500));
    assert_eq!(call(&a, &other).await.0, 200, "another user is untouched");
    assert_eq!(call(&b, &other).await.0, 200);

    // A new login is a new session, and works everywhere.
    let again = token_of(&b, "vera.4").await;
    assert_eq!(call(&b, &again).await.0, 200);
    assert_eq!(call(&a, &again).await.0, 200);

    // With a block: the sessions end and logins are refused (on every instance).
    let out = revoke_cli(&file, &["--openid", &openid, "--block", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    assert!(
        line.starts_with(&format!(
            "revoked 1 session(s) of {openid}, blocked until 20"
        )),
        "{line}"
    );
    refused_within(&a, &again, Duration::from_secs(2)).await;
    for (gw, code) in [(&a, "vera.5"), (&b, "vera.6")] {
        let (status, v) = get(&gw.url(&format!("/auth?code={code}"))).await;
        assert_eq!(
            (status, v["code"].as_str(), v["reason"].as_str()),
            (403, Some("10430"), Some("user_blocked")),
            "{v}"
        );
        assert_eq!(v["message"], "用户已被禁止登录");
    }
    assert_eq!(call(&a, &token_of(&a, "walt.2").await).await.0, 200);

    // Bad input and an unreachable store fail with a message and a non-zero exit.
    let out = revoke_cli(&file, &["--openid", &openid, "--block", "400d"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("365d"), "{}", stderr(&out));
    drop(redis);
    let out = revoke_cli(&file, &["--openid", &openid]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("session store"), "{}", stderr(&out));
}

#[tokio::test]
async fn memory_store_revokes_through_the_admin_listener() {
    let wechat = mock_wechat();
    let echo = echo();
    let admin = free_port();
    let cfg = with_admin(config(wechat.addr, echo.addr), admin, "");
    let gw = gateway(&cfg);

    let t1 = token_of(&gw, "xena.1").await;
    let t2 = token_of(&gw, "xena.2").await;
    let other = token_of(&gw, "yves.1").await;
    let openid = openid_of(&gw, &t1).await;

    let (status, v) = admin_revoke(admin, &json!({ "openid": openid }).to_string(), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["code"], "200");
    assert_eq!(v["message"], "revoked");
    assert_eq!(
        v["data"],
        json!({"openid": openid, "sessions": 2, "blocked_until": null})
    );
    // At once: this instance is the only one, and it learnt it from its own store.
    for t in [&t1, &t2] {
        let (status, v) = call(&gw, t).await;
        assert_eq!(
            (status, v["code"].as_str(), v["reason"].as_str()),
            (401, Some("10200"), Some("revoked")),
            "{v}"
        );
    }
    assert_eq!(call(&gw, &other).await.0, 200);
    let again = token_of(&gw, "xena.3").await;
    assert_eq!(call(&gw, &again).await.0, 200);

    // The CLI goes through the admin listener when the file has one; a block refuses logins.
    let file = cli_config(&cfg);
    let out = revoke_cli(&file, &["--openid", &openid, "--block", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("revoked 1 session(s) of {openid}, blocked until ")),
        "{}",
        stdout(&out)
    );
    assert_eq!(call(&gw, &again).await.0, 401);
    let (status, v) = get(&gw.url("/auth?code=xena.4")).await;
    assert_eq!((status, v["code"].as_str()), (403, Some("10430")), "{v}");
    assert!(v.get("data").is_none());
    assert_eq!(call(&gw, &token_of(&gw, "yves.2").await).await.0, 200);

    // Logged (openid per [log] openid: plain here) and counted.
    let log = gw.log_when(|l| l.matches("user revoked").count() >= 2);
    assert!(log.contains("user revoked"), "{log}");
    assert!(log.contains(&openid), "{log}");
    let m = metrics(admin).await;
    assert!(
        m.contains("wxgate_user_revocations_total{blocked=\"false\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("wxgate_user_revocations_total{blocked=\"true\"} 1"),
        "{m}"
    );
    assert!(m.contains("wxgate_logins_total{result=\"10430\"} 1"), "{m}");

    // Without an admin listener a memory store cannot be reached: exit 2, and why.
    let file = cli_config(&config(wechat.addr, echo.addr));
    let out = revoke_cli(&file, &["--openid", &openid]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("[admin] listen"), "{}", stderr(&out));
}

#[tokio::test]
async fn admin_token_and_bad_requests() {
    let wechat = mock_wechat();
    let echo = echo();
    let admin = free_port();
    let cfg = with_admin(
        config(wechat.addr, echo.addr),
        admin,
        &format!("token = \"{ADMIN_TOKEN}\"\n"),
    );
    let gw = gateway(&cfg);
    let t1 = token_of(&gw, "zoe.1").await;
    let openid = openid_of(&gw, &t1).await;
    let body = json!({ "openid": openid }).to_string();

    let (status, v) = admin_revoke(admin, &body, None).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10119")), "{v}");
    let (status, v) = admin_revoke(admin, &body, Some("wrong-token")).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10200")), "{v}");
    assert_eq!(call(&gw, &t1).await.0, 200, "nothing revoked");
    // GET endpoints stay open.
    let (status, _) = get(&format!("http://127.0.0.1:{admin}/healthz")).await;
    assert_eq!(status, 200);

    for (bad, needle) in [
        ("not json", "JSON object"),
        ("{}", "openid is missing"),
        (r#"{"openid": "a b"}"#, "openid must be"),
        (r#"{"openid": "o1", "block": "soon"}"#, "not a duration"),
        (r#"{"openid": "o1", "block": "400d"}"#, "365d"),
    ] {
        let (status, v) = admin_revoke(admin, bad, Some(ADMIN_TOKEN)).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("10400")),
            "{bad}: {v}"
        );
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{bad}: {v}"
        );
    }
    let (status, v) = admin_revoke(admin, &"x".repeat(10_000), Some(ADMIN_TOKEN)).await;
    assert_eq!((status, v["code"].as_str()), (413, Some("10413")), "{v}");
    // Two `Authorization` headers, the right token in one of them: refused.
    let resp = client()
        .post(format!("http://127.0.0.1:{admin}/sessions/revoke"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("authorization", "Bearer wrong")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client()
        .get(format!("http://127.0.0.1:{admin}/sessions/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    // Other paths still answer 405 to a POST, as before.
    let resp = client()
        .post(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);

    let (status, v) = admin_revoke(admin, &body, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["sessions"], 1);
    assert_eq!(call(&gw, &t1).await.0, 401);

    // The CLI sends the token from the file; the log never shows it.
    let file = cli_config(&cfg);
    let out = revoke_cli(&file, &["--openid", &openid]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("revoked 0 session(s) of {openid}")
    );
    assert!(!gw.log_text().contains(ADMIN_TOKEN));
}

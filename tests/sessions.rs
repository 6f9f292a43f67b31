//! Sessions end to end: refresh, logout, and several gateway instances sharing one Redis.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `data` of a login with `code` on the gateway at `gw`.
async fn login_data(gw: &Proc, code: &str) -> Value {
    let (status, body) = get(&gw.url(&format!("/auth?code={code}"))).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

async fn refresh(gw: &Proc, refresh_token: &str) -> (u16, Value) {
    post_body(
        gw.url("/auth/refresh"),
        "application/json",
        json!({ "refresh_token": refresh_token }).to_string(),
    )
    .await
}

async fn logout(gw: &Proc, token: &str) -> (u16, Value) {
    json(
        client()
            .post(gw.url("/auth/logout"))
            .bearer_auth(token)
            .send()
            .await
            .expect("logout"),
    )
    .await
}

async fn call(gw: &Proc, token: &str) -> (u16, Value) {
    get_bearer(gw.url("/api/x"), token).await
}

/// Poll until `gw` refuses `token`, at most `limit`; how long it took.
async fn refused_within(gw: &Proc, token: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, v) = call(gw, token).await;
        if status == 401 {
            assert_eq!(v["code"], "10200", "{v}");
            return start.elapsed();
        }
        assert_eq!(status, 200, "{v}");
        assert!(start.elapsed() < limit, "still accepted after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redis_section(redis: &Proc, fail_mode: &str) -> String {
    format!(
        "\n[session]\nstore = \"redis\"\nredis_url = \"redis://{}/\"\ntimeout = \"500ms\"\nfail_mode = \"{fail_mode}\"\n",
        redis.addr
    )
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_session() {
    let s = Stack::start();
    let first = login_data(&s.gw, "olga.1").await;
    let rt1 = first["refresh_token"].as_str().unwrap().to_string();
    assert!(rt1.len() >= 40, "opaque, >= 128 bits: {rt1}");
    assert!(!rt1.contains("eyJ"), "not a JWT");

    let (status, v) = refresh(&s.gw, &rt1).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["code"], "200");
    let token2 = v["data"]["token"].as_str().unwrap().to_string();
    let rt2 = v["data"]["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    assert_eq!(v["data"]["expires_in"], 7200);
    let (status, _) = call(&s.gw, &token2).await;
    assert_eq!(status, 200);

    // A refresh token made up from the session's id (which every access token shows) and a
    // random secret was never issued: refused as unknown, and the session lives on.
    let sid = rt2.split('.').next().unwrap();
    let forged = format!("{sid}.{}", "A1b2".repeat(11));
    let (status, v) = refresh(&s.gw, &forged).await;
    assert_eq!(
        (status, v["code"].as_str(), v["reason"].as_str()),
        (401, Some("10201"), Some("unknown")),
        "{v}"
    );
    let (status, v) = call(&s.gw, &token2).await;
    assert_eq!(status, 200, "a forged refresh token ended the session: {v}");

    // The used refresh token again: refused, and the session is revoked (reuse means theft).
    let (status, v) = refresh(&s.gw, &rt1).await;
    assert_eq!(
        (status, v["code"].as_str(), v["reason"].as_str()),
        (401, Some("10201"), Some("reused")),
        "{v}"
    );
    let (status, v) = call(&s.gw, &token2).await;
    assert_eq!(
        (status, v["code"].as_str(), v["reason"].as_str()),
        (401, Some("10200"), Some("revoked"))
    );
    let (status, v) = refresh(&s.gw, &rt2).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10201")), "{v}");

    // Missing and made-up refresh tokens.
    let (status, v) = post_body(s.url("/auth/refresh"), "application/json", "{}").await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10121")), "{v}");
    for junk in ["nope", "a.b", "x".repeat(300).as_str()] {
        let (status, v) = refresh(&s.gw, junk).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (401, Some("10201")),
            "{junk}: {v}"
        );
    }
}

#[tokio::test]
async fn logout_ends_the_session() {
    let s = Stack::start();
    let data = login_data(&s.gw, "pia.1").await;
    let token = data["token"].as_str().unwrap();
    let (status, v) = logout(&s.gw, token).await;
    assert_eq!((status, v["code"].as_str()), (200, Some("200")), "{v}");
    let (status, v) = call(&s.gw, token).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10200")), "{v}");
    let (status, v) = post_body(
        s.url("/isAuth"),
        "application/json",
        json!({"token": token}).to_string(),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10200")), "{v}");
    let (status, _) = refresh(&s.gw, data["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 401);
    // A second logout with the same token, and one without a token.
    let (status, v) = logout(&s.gw, token).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10200")));
    let resp = client().post(s.url("/auth/logout")).send().await.unwrap();
    let (status, v) = json(resp).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10119")), "{v}");
    // Another session of the same user is not affected.
    let other = login_data(&s.gw, "pia.2").await;
    assert_eq!(call(&s.gw, other["token"].as_str().unwrap()).await.0, 200);
}

#[tokio::test]
async fn two_instances_share_sessions_through_redis() {
    let redis = redis_server();
    let wechat = mock_wechat();
    let echo = echo();
    let cfg = config(wechat.addr, echo.addr) + &redis_section(&redis, "closed");
    let a = gateway(&cfg);
    let b = gateway(&cfg);

    // Log in on A, call through B.
    let data = login_data(&a, "quinn.1").await;
    let token = data["token"].as_str().unwrap().to_string();
    let (status, echo_seen) = call(&b, &token).await;
    assert_eq!(status, 200, "{echo_seen}");

    // Logout on B is honoured by A within 2 s.
    assert_eq!(logout(&b, &token).await.0, 200);
    let took = refused_within(&a, &token, Duration::from_secs(2)).await;
    println!("logout on B refused on A after {took:?}");

    // Refresh on B, use on A; the used refresh token is refused on A, which revokes the session
    // everywhere.
    let data = login_data(&a, "quinn.2").await;
    let rt1 = data["refresh_token"].as_str().unwrap().to_string();
    let (status, v) = refresh(&b, &rt1).await;
    assert_eq!(status, 200, "{v}");
    let token2 = v["data"]["token"].as_str().unwrap().to_string();
    assert_eq!(call(&a, &token2).await.0, 200);
    let (status, v) = refresh(&a, &rt1).await;
    assert_eq!((status, v["reason"].as_str()), (401, Some("reused")), "{v}");
    refused_within(&b, &token2, Duration::from_secs(2)).await;

    // Keys are namespaced by appid.
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.addr.port().to_string(),
            "--scan",
            "--pattern",
            "*",
        ])
        .output()
        .expect("redis-cli (comes with redis-server)");
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(keys.lines().count() >= 3, "{keys}");
    assert!(
        keys.lines()
            .all(|k| k.starts_with(&format!("wxgate:{{{APPID}}}:"))),
        "{keys}"
    );
}

#[tokio::test]
async fn redis_outage_is_prompt_documented_and_recovers() {
    let port = free_port();
    let redis = redis_on(port);
    let wechat = mock_wechat();
    let echo = echo();
    let base = config(wechat.addr, echo.addr);
    let closed = gateway(&(base.clone() + &redis_section(&redis, "closed")));
    let open = gateway(&(base + &redis_section(&redis, "open")));
    let data = login_data(&closed, "rosa.1").await;
    let token = data["token"].as_str().unwrap().to_string();
    let refresh_token = data["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(call(&open, &token).await.0, 200);

    drop(redis);

    // Logins answer 503 10503, promptly.
    let started = Instant::now();
    let (status, v) = get(&closed.url("/auth?code=rosa.2")).await;
    assert_eq!((status, v["code"].as_str()), (503, Some("10503")), "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // fail_mode = "open" keeps serving verified tokens.
    let (status, _) = call(&open, &token).await;
    assert_eq!(status, 200);
    // fail_mode = "closed" refuses them once the revocation list is stale (2 s here), promptly.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let started = Instant::now();
        let (status, v) = call(&closed, &token).await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a proxied request waited on Redis"
        );
        if status == 503 {
            assert_eq!(v["code"], "10503", "{v}");
            break;
        }
        assert_eq!(status, 200, "{v}");
        assert!(Instant::now() < deadline, "never failed closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(call(&open, &token).await.0, 200);
    // A refresh on the stale list: 503 10503, not 401 (the refresh token stays good).
    let (status, v) = refresh(&closed, &refresh_token).await;
    assert_eq!((status, v["code"].as_str()), (503, Some("10503")), "{v}");

    // Redis returns: everything works again without a restart.
    let _redis = redis_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        let (login_status, _) = get(&closed.url(&format!("/auth?code=rosa.back{attempt}"))).await;
        let (call_status, _) = call(&closed, &token).await;
        if login_status == 200 && call_status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: login {login_status}, call {call_status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn starting_while_redis_is_down_answers_promptly() {
    let port = free_port();
    let wechat = mock_wechat();
    let echo = echo();
    let section = |mode: &str| {
        format!(
            "\n[session]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}/\"\ntimeout = \"500ms\"\nfail_mode = \"{mode}\"\n"
        )
    };
    let base = config(wechat.addr, echo.addr);
    let open = gateway(&(base.clone() + &section("open")));
    let closed = gateway(&(base + &section("closed")));
    let token = {
        let out = std::process::Command::new(bin())
            .args(["token", "--openid", "o-early", "-c"])
            .arg(open.log.as_ref().unwrap().with_file_name("gateway.toml"))
            .env("WECHAT_APPSECRET", APPSECRET)
            .env("WXGATE_JWT_SECRET", JWT_SECRET)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(call(&open, &token).await.0, 200);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let (status, v) = call(&closed, &token).await;
        assert_eq!((status, v["code"].as_str()), (503, Some("10503")), "{v}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }
    // Redis comes up: the closed instance serves again.
    let _redis = redis_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&closed, &token).await.0 != 200 {
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn code_exchanges(wechat: &Proc) -> u64 {
    wechat_stats(wechat).await["jscode2session"]
        .as_u64()
        .expect("jscode2session counter")
}

/// Log in with `code` until it works (the store is coming back), at most 10 s.
async fn login_when_back(gw: &Proc, code: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = get(&gw.url(&format!("/auth?code={code}"))).await;
        if status == 200 {
            return v["data"].clone();
        }
        assert_eq!((status, v["code"].as_str()), (503, Some("10503")), "{v}");
        assert!(Instant::now() < deadline, "no login after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Killed Redis, login at once (long before any background check can notice the outage): the
/// answer is 503 and WeChat never saw the code, which logs in once Redis is back.
#[tokio::test]
async fn a_login_at_the_start_of_a_redis_outage_does_not_spend_the_code() {
    let port = free_port();
    let redis = redis_on(port);
    let wechat = mock_wechat();
    let echo = echo();
    let gw = gateway(&(config(wechat.addr, echo.addr) + &redis_section(&redis, "closed")));
    login_data(&gw, "quinn.1").await;
    let before = code_exchanges(&wechat).await;

    drop(redis);
    for _ in 0..3 {
        let (status, v) = get(&gw.url("/auth?code=quinn.2")).await;
        assert_eq!((status, v["code"].as_str()), (503, Some("10503")), "{v}");
    }
    assert_eq!(
        code_exchanges(&wechat).await,
        before,
        "a login during the outage spent the code at WeChat"
    );

    let _redis = redis_on(port);
    let data = login_when_back(&gw, "quinn.2").await;
    assert_eq!(code_exchanges(&wechat).await, before + 1);
    let (status, v) = call(&gw, data["token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{v}");
}

/// Redis dies after the check and while WeChat is answering: the code is spent, so WeChat's
/// answer is kept, and a retry with the same code logs in once Redis is back, without a second
/// WeChat call (which would only answer 40163).
#[tokio::test]
async fn a_code_spent_while_redis_died_logs_in_on_retry() {
    let port = free_port();
    let redis = redis_on(port);
    let wechat = mock_wechat();
    let echo = echo();
    let gw = gateway(&(config(wechat.addr, echo.addr) + &redis_section(&redis, "closed")));
    login_data(&gw, "ruth.1").await;
    let before = code_exchanges(&wechat).await;

    let url = gw.url("/auth?code=slow800-ruth.2");
    let pending = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(redis);
    let (status, v) = pending.await.unwrap();
    assert_eq!((status, v["code"].as_str()), (503, Some("10503")), "{v}");
    assert_eq!(code_exchanges(&wechat).await, before + 1);

    let _redis = redis_on(port);
    let data = login_when_back(&gw, "slow800-ruth.2").await;
    assert_eq!(
        code_exchanges(&wechat).await,
        before + 1,
        "the retry asked WeChat again"
    );
    let (status, v) = call(&gw, data["token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{v}");
}

//! Redis high availability end to end: two gateway instances on a Sentinel-managed Redis and on
//! a Redis Cluster; the primary holding the sessions is killed while a client keeps calling.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn login_data(gw: &Proc, code: &str) -> Value {
    let (status, body) = get(&gw.url(&format!("/auth?code={code}"))).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

async fn call(gw: &Proc, token: &str) -> (u16, Value) {
    get_bearer(gw.url("/api/x"), token).await
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

async fn refresh(gw: &Proc, refresh_token: &str) -> (u16, Value) {
    post_body(
        gw.url("/auth/refresh"),
        "application/json",
        json!({ "refresh_token": refresh_token }).to_string(),
    )
    .await
}

/// Poll until `gw` refuses `token` as revoked, at most `limit`.
async fn refused_within(gw: &Proc, token: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let (status, v) = call(gw, token).await;
        if status == 401 {
            assert_eq!(v["code"], "10200", "{v}");
            return;
        }
        assert!(
            start.elapsed() < limit,
            "still accepted after {limit:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn token(data: &Value) -> String {
    data["token"].as_str().expect("token").to_string()
}

/// Login on `a`, use and log out on `b`: the two instances share the store.
async fn share(a: &Proc, b: &Proc, name: &str) -> (Value, String) {
    let kept = login_data(a, &format!("{name}.kept")).await;
    let (status, v) = call(b, &token(&kept)).await;
    assert_eq!(status, 200, "{v}");
    let gone = token(&login_data(a, &format!("{name}.gone")).await);
    assert_eq!(call(b, &gone).await.0, 200);
    let (status, v) = logout(b, &gone).await;
    assert_eq!((status, v["code"].as_str()), (200, Some("200")), "{v}");
    refused_within(a, &gone, Duration::from_secs(3)).await;
    (kept, gone)
}

/// Keep logging in (then refreshing and logging out) and calling a protected route with `kept`,
/// across both instances, until all have answered 200 for 2 s after the first failure (at most
/// `limit`). Every answer must be 200 or
/// 503 10503, each within 2 s. Answers the gap: first failure to last failure.
async fn through_failover(a: &Proc, b: &Proc, kept: &str, name: &str, limit: Duration) -> Duration {
    let killed = Instant::now();
    let mut first_failure: Option<Duration> = None;
    let mut last_failure = Duration::ZERO;
    let mut answers = 0;
    for attempt in 0.. {
        let now = killed.elapsed();
        if let Some(first) = first_failure {
            if now > last_failure + Duration::from_secs(2) && now > first {
                break;
            }
        }
        assert!(
            now < limit,
            "service did not resume within {limit:?} (first failure {first_failure:?})"
        );
        // A login on `a`; when it worked, a refresh on `b` and a logout on `a`; a call on `b`.
        let mut fresh: Option<Value> = None;
        for what in ["login", "refresh", "logout", "call"] {
            let started = Instant::now();
            let (status, v) = match (what, &fresh) {
                ("login", _) => get(&a.url(&format!("/auth?code={name}.during{attempt}"))).await,
                ("refresh", Some(data)) => {
                    refresh(b, data["refresh_token"].as_str().unwrap_or_default()).await
                }
                ("logout", Some(data)) => {
                    logout(a, data["token"].as_str().unwrap_or_default()).await
                }
                ("call", _) => call(b, kept).await,
                _ => continue,
            };
            fresh = match (what, status) {
                ("login" | "refresh", 200) => Some(v["data"].clone()),
                ("login" | "refresh", _) => None,
                _ => fresh,
            };
            let took = started.elapsed();
            answers += 1;
            assert!(took < Duration::from_secs(2), "{what} took {took:?}");
            match status {
                200 => {}
                503 => {
                    assert_eq!(v["code"], "10503", "{what}: {v}");
                    let at = killed.elapsed();
                    first_failure.get_or_insert(at);
                    last_failure = at;
                }
                other => panic!("{what} answered {other} during the failover: {v}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = first_failure.unwrap_or_default();
    let gap = last_failure.saturating_sub(first);
    println!(
        "{name}: {answers} answers; first 503 {first:?} after the kill, last {last_failure:?}: gap {gap:?}"
    );
    gap
}

/// After the failover: the session from before still works on both instances (and refreshes),
/// the logout from before is still honoured, by them and by a fresh instance.
async fn after_failover(a: &Proc, b: &Proc, kept: &Value, gone: &str, cfg: &str) {
    for gw in [a, b] {
        assert_eq!(call(gw, &token(kept)).await.0, 200);
        let (status, v) = call(gw, gone).await;
        assert_eq!((status, v["code"].as_str()), (401, Some("10200")), "{v}");
    }
    let (status, v) = refresh(b, kept["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "the session from before the failover: {v}");
    let fresh = gateway(cfg);
    refused_within(&fresh, gone, Duration::from_secs(5)).await;
    let (status, v) = call(&fresh, v["data"]["token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_sessions_and_logouts() {
    let mut set = SentinelSet::start();
    let wechat = mock_wechat();
    let echo = echo();
    let cfg = config(wechat.addr, echo.addr) + &set.session_section("500ms");
    let a = gateway(&cfg);
    let admin = free_port();
    let b = gateway(&format!("{cfg}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"));
    let (kept, gone) = share(&a, &b, "sam").await;
    let (status, v) = get(&format!("http://127.0.0.1:{admin}/readyz")).await;
    assert_eq!(status, 200, "{v}");
    let store = &v["data"]["session_stores"][0];
    assert_eq!(store["form"], "redis-sentinel", "{v}");
    assert_eq!(store["reachable"], true, "{v}");
    let addresses = store["addresses"].to_string();
    assert!(addresses.contains(&set.sentinel.addr.to_string()), "{v}");
    let metrics = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("wxgate_session_store_up{form=\"redis-sentinel\"} 1"),
        "{metrics}"
    );

    let primary = set.primary.take().expect("primary");
    wait_replicated(primary.addr.port());
    drop(primary);

    through_failover(&a, &b, &token(&kept), "sam", Duration::from_secs(30)).await;
    assert_eq!(
        set.primary_port(),
        set.replica.addr.port(),
        "the replica was promoted"
    );
    after_failover(&a, &b, &kept, &gone, &cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_keeps_sessions_and_logouts() {
    let mut cluster = Cluster::start();
    let wechat = mock_wechat();
    let echo = echo();
    let cfg = config(wechat.addr, echo.addr) + &cluster.session_section("500ms");
    let a = gateway(&cfg);
    let b = gateway(&cfg);
    let (kept, gone) = share(&a, &b, "cleo").await;

    let slot_key = format!("wxgate:{{{APPID}}}:revoked");
    let primary = cluster.primary_of(&slot_key);
    assert_ne!(primary, 0, "no primary found for {slot_key}");
    wait_replicated(primary);
    cluster.kill(primary);

    through_failover(&a, &b, &token(&kept), "cleo", Duration::from_secs(30)).await;
    let promoted = cluster.primary_of(&slot_key);
    assert!(promoted != 0 && promoted != primary, "{promoted}");
    after_failover(&a, &b, &kept, &gone, &cfg).await;
}

/// Move the app's slot to another primary while two instances keep logging in, calling,
/// refreshing and logging out: redis-rs follows `ASK` and `MOVED`; every answer is 200 or
/// 503 10503, and everything works on the new owner afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resharding_under_load_is_followed() {
    let cluster = Cluster::start();
    let wechat = mock_wechat();
    let echo = echo();
    let cfg = config(wechat.addr, echo.addr) + &cluster.session_section("500ms");
    let a = gateway(&cfg);
    let b = gateway(&cfg);
    let (kept, gone) = share(&a, &b, "rhea").await;

    let slot_key = format!("wxgate:{{{APPID}}}:revoked");
    let src = cluster.primary_of(&slot_key);
    let slot = redis_cli(src, &["CLUSTER", "KEYSLOT", &slot_key])
        .trim()
        .to_string();
    let primaries: Vec<u16> = cluster
        .nodes
        .iter()
        .map(|n| n.addr.port())
        .filter(|p| redis_cli(*p, &["ROLE"]).starts_with("master"))
        .collect();
    let dst = *primaries
        .iter()
        .find(|p| **p != src)
        .expect("another primary");
    let id = |port: u16| redis_cli(port, &["CLUSTER", "MYID"]).trim().to_string();
    let (src_id, dst_id) = (id(src), id(dst));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let (a_url, b_url) = (a.url(""), b.url(""));
        let kept = token(&kept);
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let (status, v) = get(&format!("{a_url}/auth?code=rhea.load{n}")).await;
                answers.push(("login", status, v.clone()));
                if status == 200 {
                    let t = v["data"]["token"].as_str().unwrap_or_default().to_string();
                    let rt = v["data"]["refresh_token"].as_str().unwrap_or_default();
                    let (status, v) = post_body(
                        format!("{b_url}/auth/refresh"),
                        "application/json",
                        json!({ "refresh_token": rt }).to_string(),
                    )
                    .await;
                    answers.push(("refresh", status, v));
                    let (status, v) = json(
                        client()
                            .post(format!("{b_url}/auth/logout"))
                            .bearer_auth(&t)
                            .send()
                            .await
                            .expect("logout"),
                    )
                    .await;
                    answers.push(("logout", status, v));
                }
                let (status, v) = get_bearer(format!("{b_url}/api/x"), &kept).await;
                answers.push(("call", status, v));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = tokio::task::spawn_blocking(move || {
        redis_cli(dst, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]);
        redis_cli(src, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]);
        let mut migrated = 0;
        loop {
            let keys = redis_cli(src, &["CLUSTER", "GETKEYSINSLOT", &slot, "50"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            migrated += keys.len();
            let port = dst.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            redis_cli(src, &args);
            std::thread::sleep(Duration::from_millis(100));
        }
        for port in [dst, src] {
            redis_cli(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
        }
        migrated
    })
    .await
    .expect("migration");
    assert!(moved >= 3, "keys moved: {moved}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.await.expect("load");
    let mut refused = 0;
    for (what, status, v) in &answers {
        match status {
            200 => {}
            503 => {
                assert_eq!(v["code"], "10503", "{what}: {v}");
                println!("resharding: {what} answered 503 10503");
                refused += 1;
            }
            other => panic!("{what} answered {other} during the resharding: {v}"),
        }
    }
    println!(
        "resharding: {} answers, {refused} of them 503 10503, {moved} keys moved",
        answers.len()
    );
    wait_until(Duration::from_secs(10), "the slot moved", || {
        cluster.primary_of(&slot_key) == dst
    });
    after_failover(&a, &b, &kept, &gone, &cfg).await;
}

//! Operating wxgate, end to end: the admin listener (metrics, health, status page in a real
//! browser), request ids, the JSON access log, and reloads on SIGHUP.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The stack's configuration with an admin listener (and `extra` appended).
fn with_admin(admin_port: u16, extra: &str) -> impl FnOnce(String) -> String + '_ {
    move |c| format!("{c}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{extra}")
}

/// The text of an admin listener's page.
async fn admin_page(admin_port: u16, path: &str) -> String {
    client()
        .get(format!("http://127.0.0.1:{admin_port}{path}"))
        .send()
        .await
        .expect("admin listener")
        .text()
        .await
        .expect("text")
}

async fn scrape(admin_port: u16) -> String {
    admin_page(admin_port, "/metrics").await
}

/// The value of one series (`name{labels}` exactly as exposed), 0 when absent.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// How much each series moved between two scrapes.
fn moved(before: &str, after: &str, series: &str) -> f64 {
    value(after, series) - value(before, series)
}

#[tokio::test]
async fn metrics_move_by_exactly_what_was_sent() {
    let admin = free_port();
    let s = Stack::with(with_admin(admin, ""));
    let before = scrape(admin).await;
    assert!(
        before.contains(&format!(
            "wxgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{before}"
    );

    for i in 0..3 {
        assert_eq!(get(&s.url(&format!("/public/p{i}"))).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(&s.url("/api/x")).await.0, 401);
    }
    assert_eq!(get_bearer(s.url("/api/x"), "not.a.token").await.0, 401);
    let token = login(&s, "mia.1").await;
    login(&s, "mia.2").await;
    assert_eq!(get(&s.url("/auth?code=err40029-x")).await.0, 400);
    assert_eq!(get_bearer(s.url("/api/y"), &token).await.0, 200);
    assert_eq!(get(&s.url("/nowhere")).await.0, 404);

    let after = scrape(admin).await;
    let m = |series: &str| moved(&before, &after, series);
    assert_eq!(
        m(r#"wxgate_requests_total{route="/public/",status="200"}"#),
        3.0
    );
    assert_eq!(
        m(r#"wxgate_requests_total{route="/api/",status="401"}"#),
        3.0
    );
    assert_eq!(
        m(r#"wxgate_requests_total{route="/api/",status="200"}"#),
        1.0
    );
    assert_eq!(
        m(r#"wxgate_requests_total{route="endpoint:login",status="200"}"#),
        2.0
    );
    assert_eq!(
        m(r#"wxgate_requests_total{route="endpoint:login",status="400"}"#),
        1.0
    );
    assert_eq!(
        m(r#"wxgate_requests_total{route="none",status="404"}"#),
        1.0
    );
    assert_eq!(m(r#"wxgate_auth_rejections_total{reason="missing"}"#), 2.0);
    assert_eq!(
        m(r#"wxgate_auth_rejections_total{reason="malformed"}"#),
        1.0
    );
    assert_eq!(m(r#"wxgate_logins_total{result="ok"}"#), 2.0);
    assert_eq!(m(r#"wxgate_logins_total{result="40029"}"#), 1.0);
    assert_eq!(
        m(r#"wxgate_wechat_requests_total{api="jscode2session",errcode="0"}"#),
        2.0
    );
    assert_eq!(
        m(r#"wxgate_wechat_requests_total{api="jscode2session",errcode="40029"}"#),
        1.0
    );
    assert_eq!(
        m(r#"wxgate_wechat_request_duration_seconds_count{api="jscode2session"}"#),
        3.0
    );
    assert_eq!(
        m(r#"wxgate_upstream_duration_seconds_count{route="/public/"}"#),
        3.0
    );
    assert_eq!(m("wxgate_session_store_errors_total"), 0.0);
    // Labels come from the configuration, never from the request.
    assert!(!after.contains("p0") && !after.contains("nowhere") && !after.contains("mia"));

    // The admin listener's own requests are not traffic.
    let again = scrape(admin).await;
    for line in after
        .lines()
        .filter(|l| l.starts_with("wxgate_requests_total"))
    {
        assert!(again.contains(line), "{line} moved without traffic");
    }
    for path in ["/", "/healthz", "/readyz", "/nope"] {
        client()
            .get(format!("http://127.0.0.1:{admin}{path}"))
            .send()
            .await
            .unwrap();
    }
    let again = scrape(admin).await;
    assert_eq!(
        value(&again, "wxgate_requests_total"),
        value(&after, "wxgate_requests_total")
    );
    for line in after
        .lines()
        .filter(|l| l.starts_with("wxgate_requests_total"))
    {
        assert!(again.contains(line), "{line} moved by admin requests");
    }
}

#[tokio::test]
async fn health_and_readiness_follow_the_session_store() {
    let port = free_port();
    let redis = redis_on(port);
    let admin = free_port();
    let redis_section = format!(
        "[session]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}/\"\ntimeout = \"300ms\"\n"
    );
    let s = Stack::with(with_admin(admin, &redis_section));
    let url = |path: &str| format!("http://127.0.0.1:{admin}{path}");
    let (status, v) = get(&url("/healthz")).await;
    assert_eq!(status, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, v) = get(&url("/readyz")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(redis);
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let (status, v) = get(&url("/readyz")).await;
        if status == 503 {
            assert_eq!(v["reason"], "session_store_unreachable", "{v}");
            assert_eq!(v["code"], "10503", "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready with Redis gone: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&url("/healthz")).await.0,
        200,
        "the process still answers"
    );
    let errors = value(&scrape(admin).await, "wxgate_session_store_errors_total");
    assert!(errors >= 1.0, "{errors}");
    let _redis = redis_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&url("/readyz")).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(s);
}

/// The status page in Debian's Chromium, driven by Playwright (tests/browser/status_page.mjs):
/// it renders, shows the routes, and a counter moves after requests.
#[tokio::test]
async fn status_page_in_a_real_browser() {
    let admin = free_port();
    let s = Stack::with(with_admin(admin, ""));
    let html = admin_page(admin, "/").await;
    assert!(html.contains("<title>wxgate</title>"), "{html}");
    let screenshot = scratch("status-page").join("status.png");
    let out = tokio::task::spawn_blocking({
        let gw = s.url("");
        let screenshot = screenshot.clone();
        move || {
            std::process::Command::new("node")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/browser/status_page.mjs"
                ))
                .arg(format!("http://127.0.0.1:{admin}"))
                .arg(gw)
                .args(["/api/", "/public/"])
                .env("SCREENSHOT", &screenshot)
                .output()
                .expect("node (make test installs it: scripts/setup.sh)")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("status page OK"), "{stdout}");
    assert!(screenshot.exists());
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_follow_the_request() {
    let s = Stack::start();
    let send = |id: Option<&'static str>| {
        let mut req = client().get(s.url("/public/id"));
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        async move { req.send().await.unwrap() }
    };
    // A sane id is kept: upstream and on the response.
    let resp = send(Some("trace-abc-123")).await;
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-123");
    let (_, echo) = json(resp).await;
    assert_eq!(echoed_header(&echo, "x-request-id"), ["trace-abc-123"]);
    // Missing or not sane: a new one, the same upstream and back.
    for id in [None, Some("has space"), Some("")] {
        let resp = send(id).await;
        let back = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(!back.is_empty() && Some(back.as_str()) != id, "{back:?}");
        let (_, echo) = json(resp).await;
        assert_eq!(echoed_header(&echo, "x-request-id"), [back]);
    }
    // Two ids: the first counts, and the upstream sees only it.
    let resp = client()
        .get(s.url("/public/id"))
        .header("x-request-id", "first-1")
        .header("x-request-id", "second-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "first-1");
    let (_, echo) = json(resp).await;
    assert_eq!(echoed_header(&echo, "x-request-id"), ["first-1"]);
    let long = "x".repeat(200);
    let resp = client()
        .get(s.url("/public/id"))
        .header("x-request-id", &long)
        .send()
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-request-id"], long.as_str());
    // Gateway answers carry it too, and its log lines name it.
    let resp = client()
        .get(s.url("/api/x"))
        .header("x-request-id", "refused-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["x-request-id"], "refused-1");
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let log = s.gw.log_when(|l| l.contains("refused-1"));
    assert!(
        log.lines().any(|l| l.contains("wxgate::access")
            && l.contains("refused-1")
            && l.contains("10119")),
        "{log}"
    );
}

#[tokio::test]
async fn upstream_errors_are_logged_with_the_request_id() {
    let dead = free_port();
    let s = Stack::with(|c| {
        format!("{c}\n[[routes]]\nprefix = \"/dead/\"\nupstreams = [\"127.0.0.1:{dead}\"]\nauth = \"none\"\n")
    });
    let resp = client()
        .get(s.url("/dead/x"))
        .header("x-request-id", "dead-upstream-7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-request-id"], "dead-upstream-7");
    let log = s.gw.log_when(|l| l.contains("dead-upstream-7"));
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("dead-upstream-7")),
        "no error line with the request id:\n{log}"
    );
}

#[tokio::test]
async fn json_access_log_has_the_fields_and_no_secrets() {
    let s = Stack::with(|c| format!("{c}\n[log]\nformat = \"json\"\nopenid = \"hash\"\n"));
    let code = "nora.secretcode1";
    let (status, v) = get(&s.url(&format!("/auth?code={code}"))).await;
    assert_eq!(status, 200, "{v}");
    let token = v["data"]["token"].as_str().unwrap().to_string();
    let refresh = v["data"]["refresh_token"].as_str().unwrap().to_string();
    let (status, echo) = get_bearer(s.url("/api/me?q=secret-query"), &token).await;
    assert_eq!(status, 200);
    let openid = echoed_header(&echo, "x-wx-openid").remove(0);
    assert_eq!(get(&s.url("/api/x")).await.0, 401);
    let log =
        s.gw.log_when(|l| l.lines().filter(|l| l.contains("wxgate::access")).count() >= 3);
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "wxgate::access")
        .collect();
    assert_eq!(access.len(), 3, "{log}");
    let proxied = access
        .iter()
        .find(|l| l["path"] == "/api/me")
        .expect("the proxied request");
    for field in [
        "timestamp",
        "request_id",
        "client",
        "method",
        "path",
        "route",
        "status",
        "auth",
        "upstream",
        "upstream_ms",
        "ms",
        "openid",
    ] {
        assert!(!proxied[field].is_null(), "{field} missing in {proxied}");
    }
    assert_eq!(proxied["status"], 200);
    assert_eq!(proxied["auth"], "ok");
    assert_eq!(proxied["route"], "/api/");
    assert_ne!(proxied["openid"], openid.as_str(), "openid = \"hash\"");
    assert_eq!(proxied["openid"].as_str().unwrap().len(), 16);
    let refused = access.iter().find(|l| l["status"] == 401).unwrap();
    assert_eq!(refused["code"], "10119");
    assert_eq!(refused["auth"], "rejected");
    for secret in [
        code,
        token.as_str(),
        refresh.as_str(),
        openid.as_str(),
        "secret-query",
        APPSECRET,
        JWT_SECRET,
    ] {
        assert!(!log.contains(secret), "the log holds {secret:?}");
    }
}

/// Rewrite the gateway's configuration file and send SIGHUP.
fn rewrite_and_reload(gw: &Proc, edit: impl FnOnce(String) -> String) {
    let path = gw.log.as_ref().unwrap().with_file_name("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
    gw.signal("HUP");
}

async fn wait_for_reloads(admin: u16, result: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let series = format!("wxgate_config_reloads_total{{result=\"{result}\"}}");
    while value(&scrape(admin).await, &series) < n {
        assert!(Instant::now() < deadline, "no {result} reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reload_adds_and_removes_routes_and_refuses_a_broken_file() {
    let admin = free_port();
    let s = Stack::with(with_admin(admin, ""));
    let token = login(&s, "olga.1").await;
    assert_eq!(get(&s.url("/public/x")).await.0, 200);
    assert_eq!(get(&s.url("/extra/x")).await.0, 404);

    // A request in flight finishes under the rules it started with.
    let slow = {
        let url = s.url("/public/slow");
        tokio::spawn(async move {
            client()
                .get(url)
                .header("x-echo-delay-ms", "700")
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let echo = s.echo.addr;
    rewrite_and_reload(&s.gw, |text| {
        text.replace("prefix = \"/public/\"", "prefix = \"/extra/\"")
            + &format!("\n[[routes]]\nprefix = \"/more/\"\nupstreams = [\"{echo}\"]\n")
    });
    wait_for_reloads(admin, "ok", 1.0).await;
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "in-flight request cut by reload"
    );
    assert_eq!(get(&s.url("/extra/x")).await.0, 200);
    assert_eq!(get(&s.url("/public/x")).await.0, 404);
    assert_eq!(get(&s.url("/more/x")).await.0, 401, "a new protected route");
    // Sessions and tokens survive a reload that does not touch [jwt] or [session].
    assert_eq!(get_bearer(s.url("/more/x"), &token).await.0, 200);
    let log = s.gw.log_when(|l| l.contains("configuration reloaded"));
    assert!(log.contains("configuration reloaded"), "{log}");

    // A broken file: every problem logged at ERROR, the running configuration kept.
    rewrite_and_reload(&s.gw, |text| {
        text.replace(
            "[[routes]]\nprefix = \"/more/\"",
            "[[routes]]\nprefix = \"more\"",
        ) + "\n[bogus]\nx = 1\n"
    });
    wait_for_reloads(admin, "error", 1.0).await;
    assert_eq!(get(&s.url("/extra/x")).await.0, 200);
    assert_eq!(get_bearer(s.url("/more/x"), &token).await.0, 200);
    let log = s.gw.log_when(|l| l.contains("bogus: unknown key"));
    for problem in [
        "routes[2].prefix: \"more\" must start with '/'",
        "bogus: unknown key",
    ] {
        assert!(
            log.lines().any(|l| l.contains("ERROR")
                && l.contains("reload refused")
                && l.contains(problem)),
            "no ERROR line for {problem:?}:\n{log}"
        );
    }
    let page = admin_page(admin, "/").await;
    assert!(page.contains("refused"), "{page}");

    // A reload that changes [jwt] rebuilds the keys: old tokens no longer pass.
    rewrite_and_reload(&s.gw, |text| {
        text.replace("prefix = \"more\"", "prefix = \"/more/\"")
            .replace("\n[bogus]\nx = 1\n", "")
            .replace("ttl = \"2h\"", "ttl = \"2h\"\nissuer = \"wxgate-2\"")
    });
    wait_for_reloads(admin, "ok", 2.0).await;
    assert_eq!(get_bearer(s.url("/more/x"), &token).await.0, 401);
    let log = s.gw.log_when(|l| l.contains("token keys"));
    assert!(
        log.contains("token keys"),
        "the log says what was rebuilt:\n{log}"
    );
}

/// A reload that rebuilds the session store (here: a new `memory_capacity`) keeps the logouts
/// made before it: a logged-out token stays refused.
#[tokio::test]
async fn a_rebuilt_session_store_keeps_the_logouts() {
    let admin = free_port();
    let s = Stack::with(with_admin(admin, ""));
    let token = login(&s, "lena.1").await;
    assert_eq!(get_bearer(s.url("/api/x"), &token).await.0, 200);
    let logout = client()
        .post(s.url("/auth/logout"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status().as_u16(), 200);
    assert_eq!(get_bearer(s.url("/api/x"), &token).await.0, 401);
    rewrite_and_reload(&s.gw, |text| {
        format!("{text}\n[session]\nmemory_capacity = 5000\n")
    });
    wait_for_reloads(admin, "ok", 1.0).await;
    let log = s.gw.log_when(|l| l.contains("rebuilt=session store"));
    assert!(
        log.contains("rebuilt=session store"),
        "store not rebuilt: {log}"
    );
    let (status, v) = get_bearer(s.url("/api/x"), &token).await;
    assert_eq!(
        (status, v["reason"].as_str()),
        (401, Some("revoked")),
        "{v}"
    );
}

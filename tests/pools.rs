//! Upstream pools over real sockets: balancing policies, active and passive health, retries that
//! never replay a sent request, per-route rate limits. The upstreams are small HTTP servers in
//! this process (each counts the requests it saw and can be stopped, restarted on its port, or
//! made to reset connections); the gateway and the stand-in WeChat are real processes.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Normal answers.
const OK: u8 = 0;
/// Read the whole request, count it, then reset the connection without answering.
const RESET: u8 = 1;
/// `/healthz` answers 503 (the app is up but says it is not ready).
const SICK: u8 = 2;

/// An upstream app on a fixed loopback port: answers `{"upstream": name, "openid": ...}`.
struct App {
    name: &'static str,
    port: u16,
    seen: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    async fn start(name: &'static str) -> App {
        let listener = on_free_port(|port| {
            std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string())
        });
        listener.set_nonblocking(true).expect("non-blocking");
        let mut app = App {
            name,
            port: listener.local_addr().expect("app address").port(),
            seen: Arc::default(),
            mode: Arc::default(),
            task: None,
        };
        app.serve(TcpListener::from_std(listener).expect("tokio listener"));
        app
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Listen (again) on its port.
    async fn resume(&mut self) {
        let listener = TcpListener::bind(self.addr()).await.expect("bind app port");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let (name, seen, mode) = (self.name, self.seen.clone(), self.mode.clone());
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(serve(stream, name, seen.clone(), mode.clone()));
            }
        }));
    }

    /// Stop: the listener and every connection close (dropping the task drops them all).
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn seen(&self) -> usize {
        self.seen.load(SeqCst)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn serve(mut stream: TcpStream, name: &str, seen: Arc<AtomicUsize>, mode: Arc<AtomicU8>) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then `content-length` bytes of body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap_or(0));
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let (status, body) = if path == "/healthz" {
            match mode.load(SeqCst) {
                SICK => ("503 Service Unavailable", "{}".to_string()),
                _ => ("200 OK", "{}".to_string()),
            }
        } else {
            seen.fetch_add(1, SeqCst);
            if mode.load(SeqCst) == RESET {
                // RST instead of an answer: the request reached the app, then the connection broke.
                let _ = stream.set_zero_linger();
                return;
            }
            let openid = header("x-wx-openid").unwrap_or_default();
            (
                "200 OK",
                serde_json::json!({"upstream": name, "openid": openid}).to_string(),
            )
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The test configuration's header (server, WeChat, keys) with `routes` and an admin listener.
fn config_with(wechat: &Proc, admin: u16, routes: &str) -> String {
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let base = config(wechat.addr, unused);
    let head = base.split("[[routes]]").next().unwrap();
    format!("{head}\n{routes}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n")
}

/// A gateway (with its stand-in WeChat and admin port) whose one route `api` (`/api/`, token
/// required) goes to `apps`, with the route keys `extra`.
fn api_gateway(apps: &[&App], extra: &str) -> (Proc, u16, Proc) {
    let wechat = mock_wechat();
    let admin = free_port();
    let route = format!(
        "[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstreams = [{}]\n{extra}\n",
        list(apps)
    );
    let gw = gateway(&config_with(&wechat, admin, &route));
    (wechat, admin, gw)
}

fn list(apps: &[&App]) -> String {
    apps.iter()
        .map(|a| format!("\"{}\"", a.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn login_as(gw: &Proc, code: &str) -> String {
    let (status, body) = get(&gw.url(&format!("/auth?code={code}"))).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["token"].as_str().unwrap().to_string()
}

/// Status, code (or answering upstream) of one protected GET.
async fn call(gw: &Proc, path: &str, token: &str) -> (u16, String) {
    let (status, body) = get_bearer(gw.url(path), token).await;
    let who = body["upstream"]
        .as_str()
        .or(body["code"].as_str())
        .unwrap_or("?")
        .to_string();
    (status, who)
}

async fn metrics(admin: u16) -> String {
    client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(-1.0, |v| v.trim().parse().expect("a number"))
}

async fn healthy_gauge(admin: u16, route: &str, app: &App) -> f64 {
    let series = format!(
        "wxgate_upstream_healthy{{route=\"{route}\",upstream=\"{}\"}}",
        app.addr()
    );
    value(&metrics(admin).await, &series)
}

/// Send SIGHUP and wait for the reload to be done.
async fn reload(gw: &Proc) {
    gw.signal("HUP");
    eventually(
        Duration::from_secs(10),
        "configuration reloaded",
        || async { gw.log_text().contains("configuration reloaded") },
    )
    .await;
}

/// Wait until `check` holds (polling), or fail with `what`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests from `clients` concurrent callers for `how_long`: answers by status and upstream.
async fn steady(
    gw: &Proc,
    token: &str,
    clients: usize,
    how_long: Duration,
) -> HashMap<(u16, String), usize> {
    let until = Instant::now() + how_long;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, token) = (gw.url("/api/x"), token.to_string());
        tasks.push(tokio::spawn(async move {
            let mut seen = HashMap::new();
            let c = client();
            while Instant::now() < until {
                let answer = match c.get(&url).bearer_auth(&token).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        let who = body["upstream"].as_str().or(body["code"].as_str());
                        (status, who.unwrap_or("?").to_string())
                    }
                    Err(_) => (0, "socket error".to_string()),
                };
                *seen.entry(answer).or_insert(0) += 1;
            }
            seen
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *all.entry(k).or_insert(0) += v;
        }
    }
    all
}

fn failures(answers: &HashMap<(u16, String), usize>) -> usize {
    answers
        .iter()
        .filter(|((status, _), _)| *status != 200)
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_upstream_leaves_rotation_and_rejoins_when_it_returns() {
    let mut a = App::start("a").await;
    let b = App::start("b").await;
    let (_wechat, admin, gw) = api_gateway(
        &[&a, &b],
        "retries = 1\n\
             health_check = { path = \"/healthz\", interval = \"200ms\", timeout = \"200ms\", \
             unhealthy_after = 2, healthy_after = 2 }\n",
    );
    let token = login_as(&gw, "hana.1").await;
    let clients = 8;

    let before = steady(&gw, &token, clients, Duration::from_millis(600)).await;
    assert_eq!(failures(&before), 0, "{before:?}");
    assert!(before.contains_key(&(200, "a".into())) && before.contains_key(&(200, "b".into())));
    assert_eq!(healthy_gauge(admin, "api", &a).await, 1.0);

    // Kill A under a steady stream: at most the requests in flight on it fail.
    a.kill().await;
    let during = steady(&gw, &token, clients, Duration::from_millis(1500)).await;
    assert!(
        failures(&during) <= clients,
        "more failures than requests in flight: {during:?}"
    );
    eventually(Duration::from_secs(3), "A marked unhealthy", || async {
        healthy_gauge(admin, "api", &a).await == 0.0
    })
    .await;
    // Out of rotation: no failure at all, every answer from B.
    let out = steady(&gw, &token, clients, Duration::from_millis(800)).await;
    assert_eq!(failures(&out), 0, "{out:?}");
    assert!(out.keys().all(|(_, who)| who == "b"), "{out:?}");
    let page = client()
        .get(format!("http://127.0.0.1:{admin}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("failing health checks"), "{page}");

    // Back on its port: it passes two checks and gets its share again.
    let seen_before = a.seen();
    a.resume().await;
    eventually(Duration::from_secs(3), "A healthy again", || async {
        healthy_gauge(admin, "api", &a).await == 1.0
    })
    .await;
    let after = steady(&gw, &token, clients, Duration::from_millis(600)).await;
    assert_eq!(failures(&after), 0, "{after:?}");
    assert!(a.seen() > seen_before, "A rejoined: {after:?}");
    assert!(after.contains_key(&(200, "a".into())), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_hash_sticks_spreads_and_moves_about_a_third_for_a_new_upstream() {
    let a = App::start("a").await;
    let b = App::start("b").await;
    let c = App::start("c").await;
    let wechat = mock_wechat();
    let admin = free_port();
    let route = |apps: &[&App]| {
        format!(
            "[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstreams = [{}]\nlb = \"openid_hash\"\n",
            list(apps)
        )
    };
    let gw = gateway(&config_with(&wechat, admin, &route(&[&a, &b])));
    let mut tokens = Vec::new();
    for i in 0..20 {
        tokens.push(login_as(&gw, &format!("user{i}.1")).await);
    }
    let mut placed = Vec::new();
    for token in &tokens {
        let (status, first) = call(&gw, "/api/x", token).await;
        assert_eq!(status, 200);
        for _ in 0..3 {
            assert_eq!(
                call(&gw, "/api/y", token).await,
                (200, first.clone()),
                "sticky"
            );
        }
        placed.push(first);
    }
    let on_a = placed.iter().filter(|p| *p == "a").count();
    assert!(
        (3..=17).contains(&on_a),
        "20 users spread over two: {placed:?}"
    );

    // A third upstream (reload): only its share of users moves, all of them to it.
    let path = gw.log.as_ref().unwrap().with_file_name("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(&route(&[&a, &b]), &route(&[&a, &b, &c])),
    )
    .unwrap();
    reload(&gw).await;
    let mut now = Vec::new();
    for token in &tokens {
        let (status, upstream) = call(&gw, "/api/x", token).await;
        assert_eq!(status, 200);
        now.push(upstream);
    }
    let moved = placed.iter().zip(&now).filter(|(a, b)| a != b).count();
    assert!(
        placed.iter().zip(&now).all(|(a, b)| a == b || b == "c"),
        "a user moves only to the new upstream: {placed:?} -> {now:?}"
    );
    assert!(
        (1..=13).contains(&moved),
        "about a third of 20 moved, not all: {placed:?} -> {now:?}"
    );
}

#[tokio::test]
async fn every_upstream_down_answers_at_once() {
    let wechat = mock_wechat();
    let admin = free_port();
    let (dead1, dead2) = (free_port(), free_port());
    let gw = gateway(&config_with(
        &wechat,
        admin,
        &format!(
            "[[routes]]\nname = \"api\"\nprefix = \"/api/\"\n\
             upstreams = [\"127.0.0.1:{dead1}\", \"127.0.0.1:{dead2}\"]\nretries = 1\n"
        ),
    ));
    let token = login_as(&gw, "ivan.1").await;
    // The first request finds both refusing (one try, one retry).
    let (status, code) = call(&gw, "/api/x", &token).await;
    assert_eq!((status, code.as_str()), (502, "10510"));
    // Now both are out of rotation: answered without trying, at once.
    let started = Instant::now();
    for _ in 0..20 {
        let (status, body) = get_bearer(gw.url("/api/x"), &token).await;
        assert_eq!(status, 502);
        assert_eq!(body["code"], "10510");
        assert_eq!(body["reason"], "no_healthy_upstream");
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let m = metrics(admin).await;
    let failed = format!(
        "wxgate_upstream_connect_failures_total{{route=\"api\",upstream=\"127.0.0.1:{dead1}\"}}"
    );
    assert_eq!(value(&m, &failed), 1.0, "tried once, then skipped:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_but_a_request_that_was_sent_is_never_replayed() {
    let mut a = App::start("a").await;
    let b = App::start("b").await;
    let (_wechat, _admin, gw) = api_gateway(&[&a, &b], "retries = 1\n");
    let token = login_as(&gw, "june.1").await;
    // A refuses connections: every request, POSTs included, lands on B.
    a.kill().await;
    let c = client();
    for i in 0..10 {
        let req = match i % 2 {
            0 => c.get(gw.url("/api/x")),
            _ => c.post(gw.url("/api/x")).body("{\"n\":1}"),
        };
        let r = req.bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["upstream"], "b");
    }
    assert_eq!(b.seen(), 10);

    // A takes connections again but resets each request it read: the requests that reached it
    // fail and are not sent again, to B or to A, whatever their method.
    // First A answers, so the gateway keeps connections to it open: the resets below then hit
    // reused connections, where Pingora's default policy would replay an idempotent request.
    a.resume().await;
    tokio::time::sleep(PASSIVE_DOWN_AND_A_BIT).await;
    for _ in 0..6 {
        assert_eq!(call(&gw, "/api/warm", &token).await.0, 200);
    }
    assert!(a.seen() > 0, "A is back in rotation");
    a.mode.store(RESET, SeqCst);
    let (a0, b0) = (a.seen(), b.seen());
    let mut failed = 0;
    let n = 20;
    for i in 0..n {
        let req = match i % 4 {
            0 => c.get(gw.url("/api/order")),
            _ => c.post(gw.url("/api/order")).body("{\"pay\":1}"),
        };
        let r = req.bearer_auth(&token).send().await.unwrap();
        match r.status().as_u16() {
            200 => {}
            502 => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let (to_a, to_b) = (a.seen() - a0, b.seen() - b0);
    assert!(failed > 0, "some requests went to A");
    assert_eq!(to_a, failed, "each failed request reached A once");
    assert_eq!(to_a + to_b, n, "no request ran twice");
}

/// The gateway's passive mark lasts 5 s; wait it out so A is tried again.
const PASSIVE_DOWN_AND_A_BIT: Duration = Duration::from_millis(5300);

#[tokio::test]
async fn rate_limits_are_per_user_on_protected_routes_and_per_address_on_public_ones() {
    let app = App::start("a").await;
    let wechat = mock_wechat();
    let admin = free_port();
    let gw = gateway(&config_with(
        &wechat,
        admin,
        &format!(
            "[server]\n\
             [[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstreams = [{u}]\n\
             rate_limit = \"2/m\"\nrate_limit_burst = 5\n\
             [[routes]]\nname = \"pub\"\nprefix = \"/pub/\"\nupstreams = [{u}]\nauth = \"none\"\n\
             rate_limit = \"3/m\"\n",
            u = list(&[&app])
        )
        .replace("[server]\n", ""),
    ));
    let kim = login_as(&gw, "kim.1").await;
    let lee = login_as(&gw, "lee.1").await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(call(&gw, "/api/x", &kim).await.0);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "a burst of 5"
    );
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&kim)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=30).contains(&retry_after),
        "one token per 30 s: {retry_after}"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "10429");
    // Another user is not limited by the first one.
    for _ in 0..5 {
        assert_eq!(call(&gw, "/api/x", &lee).await.0, 200);
    }
    // Public route: per client address.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(get(&gw.url("/pub/x")).await.0);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let m = metrics(admin).await;
    assert_eq!(
        value(&m, "wxgate_rate_limited_total{route=\"api\"}"),
        4.0,
        "{m}"
    );
    assert_eq!(
        value(&m, "wxgate_rate_limited_total{route=\"pub\"}"),
        2.0,
        "{m}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_public_limit_counts_the_forwarded_address() {
    let app = App::start("a").await;
    let wechat = mock_wechat();
    let admin = free_port();
    let cfg = config_with(
        &wechat,
        admin,
        &format!(
            "[[routes]]\nname = \"pub\"\nprefix = \"/pub/\"\nupstreams = [{}]\nauth = \"none\"\n\
             rate_limit = \"1/m\"\n",
            list(&[&app])
        ),
    )
    .replace(
        "threads = 2",
        "threads = 2\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let gw = gateway(&cfg);
    let from = |ip: &'static str| {
        let url = gw.url("/pub/x");
        async move {
            client()
                .get(url)
                .header("x-forwarded-for", ip)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(from("198.51.100.1").await, 200);
    assert_eq!(from("198.51.100.1").await, 429);
    assert_eq!(
        from("198.51.100.2").await,
        200,
        "another client behind the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_health_of_unchanged_upstreams() {
    let a = App::start("a").await;
    let b = App::start("b").await;
    let (_wechat, admin, gw) = api_gateway(
        &[&a, &b],
        "\
             read_timeout = \"5s\"\n\
             health_check = { path = \"/healthz\", interval = \"1s\", timeout = \"300ms\", \
             unhealthy_after = 1, healthy_after = 3 }\n",
    );
    let token = login_as(&gw, "lou.1").await;
    a.mode.store(SICK, SeqCst);
    eventually(Duration::from_secs(4), "A unhealthy", || async {
        healthy_gauge(admin, "api", &a).await == 0.0
    })
    .await;
    a.mode.store(OK, SeqCst);
    // A reload that changes another key: A needs 3 passing checks (3 s) to come back, so right
    // after the reload it must still be out.
    let path = gw.log.as_ref().unwrap().with_file_name("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("read_timeout = \"5s\"", "read_timeout = \"6s\""),
    )
    .unwrap();
    reload(&gw).await;
    for _ in 0..10 {
        assert_eq!(call(&gw, "/api/x", &token).await, (200, "b".to_string()));
    }
    assert_eq!(healthy_gauge(admin, "api", &a).await, 0.0);
}

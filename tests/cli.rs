//! The `wxgate` command as users run it: check, signals, demo.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn check(text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = scratch("check");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["check", "-c"])
        .arg(&path)
        .env_remove("WXGATE_JWT_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_example_config_with_one_line() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml")).unwrap();
    let (ok, stdout, stderr) = check(
        &text,
        &[("WECHAT_APPSECRET", "s"), ("WXGATE_JWT_SECRET", JWT_SECRET)],
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn check_lists_every_problem_with_its_key_path() {
    let text = r#"
[server]
listen = "127.0.0.1:3000"
threads = "many"
colour = "blue"

[wechat]
appid = "wx1"
secret = "${WECHAT_APPSECRET_NOT_SET}"

[jwt]
secret = "too-short"

[[routes]]
prefix = "/api/"
upstreams = ["localhost"]

[[routes]]
upstreams = ["127.0.0.1:9001"]
"#;
    let (ok, _, stderr) = check(text, &[]);
    assert!(!ok);
    for expected in [
        "server.threads",
        "server.colour: unknown key",
        "wechat.secret: environment variable WECHAT_APPSECRET_NOT_SET is not set",
        "jwt.secret: is 9 bytes",
        "routes[0].upstreams[0]: \"localhost\" has no port",
        "routes[1].prefix: required key is missing",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_never_panics_on_junk() {
    for junk in [
        "\u{0}\u{1}\u{2}",
        "[[[",
        "routes = 1",
        "[server]\nlisten = 5",
        "[jwt]\nttl = \"-1s\"",
    ] {
        let (ok, _, stderr) = check(junk, &[]);
        assert!(!ok, "{junk:?}");
        assert!(
            stderr.contains("invalid configuration"),
            "{junk:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{junk:?}: {stderr}");
    }
    let out = Command::new(bin())
        .args(["check", "-c", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let s = Stack::start();
    let token = login(&s, "nina.1").await;
    let url = s.url("/api/slow");
    let slow = tokio::spawn(async move {
        client()
            .get(url)
            .bearer_auth(token)
            .header("x-echo-delay-ms", "800")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = s;
    s.gw.signal("TERM");
    let status = slow.await.unwrap().expect("in-flight request answered");
    assert_eq!(status, 200);
    let exited = s.gw.wait_exit(Duration::from_secs(4));
    assert!(
        exited.is_some(),
        "gateway still running after SIGTERM drained"
    );
    assert!(
        std::net::TcpStream::connect(s.gw.addr).is_err(),
        "still accepting"
    );
}

#[test]
fn sigint_stops_at_once() {
    let mut s = Stack::start();
    let started = Instant::now();
    s.gw.signal("INT");
    assert!(s.gw.wait_exit(Duration::from_secs(3)).is_some());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn demo_runs_the_whole_flow() {
    let port = free_port();
    let mut child = Command::new(bin())
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = String::new();
    while let Some(Ok(line)) = lines.next() {
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("Ctrl-C") {
            break;
        }
    }
    let proc = Proc {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        log: None,
    };
    assert!(printed.contains("curl -s 'http://127.0.0.1:"), "{printed}");
    let start = Instant::now();
    while std::net::TcpStream::connect(proc.addr).is_err()
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, v) = get(&proc.url("/auth?code=demo.1")).await;
    assert_eq!(status, 200, "{v}");
    let token = v["data"]["token"].as_str().unwrap();
    let resp = client()
        .get(proc.url("/api/hello"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, echo) = json(resp).await;
    assert_eq!(status, 200);
    assert_eq!(echoed_header(&echo, "x-wx-openid").len(), 1);
    let (status, v) = get(&proc.url("/api/hello")).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10119")));
}

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
}

/// The problem lines of a failed check, in the order printed.
fn problem_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .skip_while(|l| !l.contains("invalid configuration"))
        .skip(1)
        .map(str::trim)
        .collect()
}

const VALID_REST: &str = r#"
[[routes]]
prefix = "/api/"
upstreams = ["127.0.0.1:9001"]
"#;

#[test]
fn a_wrong_type_hides_no_other_key_and_says_what_to_write() {
    for (wechat_extra, jwt_extra, expected) in [
        (
            "timeout = 3\n",
            "",
            "wechat.timeout: invalid type: integer `3`, expected a duration string such as \"3s\"",
        ),
        (
            "",
            "ttl = 7200\n",
            "jwt.ttl: invalid type: integer `7200`, expected a duration string such as \"3s\"",
        ),
    ] {
        let text = format!(
            "[wechat]\nappid = \"wx1\"\nsecret = \"s\"\n{wechat_extra}\n[jwt]\nsecret = \"{JWT_SECRET}\"\n{jwt_extra}{VALID_REST}"
        );
        let (ok, _, stderr) = check(&text, &[]);
        assert!(!ok);
        assert_eq!(problem_lines(&stderr), [expected], "{stderr}");
    }

    // Two wrong types and an unknown key after them in one section: all three reported.
    let text = format!(
        "[server]\nthreads = \"many\"\nmax_body = 5\ncolour = \"blue\"\n[wechat]\nappid = \"wx1\"\nsecret = \"s\"\n[jwt]\nsecret = \"{JWT_SECRET}\"\n{VALID_REST}"
    );
    let (_, _, stderr) = check(&text, &[]);
    let lines = problem_lines(&stderr);
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with("server.threads: invalid type"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("expected a size string such as"),
        "{stderr}"
    );
    assert_eq!(lines[2], "server.colour: unknown key", "{stderr}");
}

#[test]
fn a_missing_environment_variable_is_the_only_problem_of_its_key() {
    let text = r#"
[wechat]
appid = "wx1"
secret = "s"

[jwt]
secret = "${WXGATE_JWT_SECRET}"

[[routes]]
prefix = "/api/"
upstreams = ["127.0.0.1:9001", "${UPSTREAM_NOT_SET}"]
"#;
    let (ok, _, stderr) = check(text, &[]);
    assert!(!ok);
    assert_eq!(
        problem_lines(&stderr),
        [
            "jwt.secret: environment variable WXGATE_JWT_SECRET is not set",
            "routes[0].upstreams[1]: environment variable UPSTREAM_NOT_SET is not set",
        ],
        "{stderr}"
    );
}

#[test]
fn cross_field_rules_are_reported_with_the_other_problems() {
    let text = r#"
[wechat]
appid = "wx1"

[jwt]
secret = "too-short"
ttl = "3h"

[session]
ttl = "1h"

[[routes]]
prefix = "/api/"
upstreams = ["localhost"]
auth = 1

[[routes]]
prefix = "/api/"
upstreams = ["127.0.0.1:9001"]
"#;
    let (ok, _, stderr) = check(text, &[]);
    assert!(!ok);
    let lines = problem_lines(&stderr);
    assert_eq!(
        lines,
        [
            "wechat.secret: required key is missing",
            "jwt.secret: is 9 bytes; an HS256 key must be at least 32 bytes (e.g. `openssl rand -base64 48`)",
            "session.ttl: must be at least jwt.ttl (3h): a token must not outlive its session",
            "routes[0].upstreams[0]: \"localhost\" has no port (expected host:port)",
            "routes[0].auth: invalid type: integer `1`, expected a string",
            "routes[1].prefix: \"/api/\" is already the prefix of routes[0]",
        ],
        "{stderr}"
    );
    // The same problems twice come out the same way.
    assert_eq!(problem_lines(&check(text, &[]).2), lines);
}

/// Problems come out in the file's order, whatever order the sections are in.
#[test]
fn problems_follow_the_order_of_the_file() {
    let text = r#"
[[routes]]
upstreams = ["nohost"]

[jwt]
ttl = "forever"
secret = "x"

[server]
zebra = 1
listen = "nowhere"
"#;
    let (_, _, stderr) = check(text, &[]);
    let paths: Vec<&str> = problem_lines(&stderr)
        .iter()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "routes[0].upstreams[0]",
            "routes[0].prefix",
            "jwt.ttl",
            "jwt.secret",
            "server.zebra",
            "server.listen",
            "wechat.appid",
            "wechat.secret",
        ],
        "{stderr}"
    );
}

/// The README's `wxgate check` example is what the binary prints for the README's file.
#[test]
fn the_readme_check_example_is_what_check_prints() {
    let readme = include_str!("../README.md");
    let block = |opening: &str| {
        let start = readme.find(opening).expect(opening) + opening.len();
        let end = readme[start..].find("```").unwrap() + start;
        readme[start..end].to_string()
    };
    let file = block("```toml\n# bad.toml\n");
    let expected = block("```\n$ wxgate check -c bad.toml\n");
    let dir = scratch("readme-check");
    std::fs::write(dir.join("bad.toml"), &file).unwrap();
    let out = Command::new(bin())
        .current_dir(&dir)
        .args(["check", "-c", "bad.toml"])
        .env_remove("WECHAT_APPSECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), expected);
}

#[test]
fn no_config_file_says_how_to_point_at_one() {
    let dir = scratch("no-config");
    for args in [
        &["run"][..],
        &["check"],
        &["run", "-c", "/nonexistent/gw.toml"],
    ] {
        let out = Command::new(bin())
            .current_dir(&dir)
            .args(args)
            .env_remove("WXGATE_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not found"), "{args:?}: {stderr}");
        for hint in ["-c FILE", "WXGATE_CONFIG", "gateway.toml", "wxgate demo"] {
            assert!(stderr.contains(hint), "{args:?}: no {hint:?} in {stderr}");
        }
        assert!(!stderr.contains("invalid configuration"), "{stderr}");
    }
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

/// A running `wxgate demo` on a free port, listening, with what it printed up to "Ctrl-C".
struct Demo {
    proc: Proc,
    printed: String,
    /// Kept open to the end: the demo must not write into a closed pipe.
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

fn start_demo() -> Demo {
    let port = free_port();
    let mut child = Command::new(bin())
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
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
    let start = Instant::now();
    while std::net::TcpStream::connect(proc.addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "demo not listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Demo {
        proc,
        printed,
        _stdout: lines,
    }
}

#[tokio::test]
async fn demo_runs_the_whole_flow() {
    let Demo { proc, printed, .. } = start_demo();
    assert!(printed.contains("curl -s 'http://127.0.0.1:"), "{printed}");
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

#[test]
fn demo_on_a_busy_port_says_so_and_prints_nothing_else() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let started = Instant::now();
    let out = Command::new(bin())
        .args(["demo", "--listen", &addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "printed a banner");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("wxgate demo --listen 127.0.0.1:3100"),
        "{stderr}"
    );
}

/// Run shell lines with bash; (success, stdout, stderr).
fn bash(script: &str) -> (bool, String, String) {
    let out = Command::new("bash")
        .args(["-c", script])
        .output()
        .expect("bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `wxgate demo` prints works when pasted into a shell, as a person would; it stays
/// usable past the default login rate limit; and a line that keeps a token fails visibly when
/// the login fails instead of keeping the error body.
#[tokio::test]
async fn the_demo_lines_work_as_printed() {
    let demo = start_demo();
    let (proc, printed) = (&demo.proc, &demo.printed);
    let script: String = printed
        .lines()
        .skip_while(|l| !l.starts_with("Try, in another terminal"))
        .skip(1)
        .take_while(|l| !l.contains("Ctrl-C"))
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    assert!(script.contains("TOKEN=$("), "{printed}");

    // More logins than the default limit (30 a minute) allows.
    for i in 0..40 {
        let (status, v) = get(&proc.url(&format!("/auth?code=bob.{i}"))).await;
        assert_eq!(status, 200, "login {i}: {v}");
    }

    let (ok, out, err) = bash(&format!("set -e\n{script}"));
    assert!(ok, "the printed lines failed:\n{err}\n{out}");
    let answers: Vec<&str> = out.lines().collect();
    assert!(
        answers
            .iter()
            .any(|l| l.contains(r#""message":"验证成功""#)),
        "{out}"
    );
    assert!(answers.iter().any(|l| l.contains("x-wx-openid")), "{out}");
    assert!(
        answers.iter().any(|l| l.contains(r#""code":"10119""#)),
        "{out}"
    );
    assert!(
        answers.iter().any(|l| l.contains(r#""code":"40029""#)),
        "{out}"
    );
    assert!(answers.iter().any(|l| l.contains("phoneNumber")), "{out}");
    assert!(
        answers
            .iter()
            .any(|l| l.contains(r#""message":"刷新成功""#)),
        "{out}"
    );
    assert!(
        answers.last().unwrap().contains(r#""code":"10200""#),
        "after logout: {out}"
    );
    assert!(!out.contains("spoofed"), "{out}");

    // The code of the TOKEN line is used now: the line says so instead of keeping an error.
    let token_line = script.lines().find(|l| l.starts_with("TOKEN=$(")).unwrap();
    let (ok, out, err) = bash(token_line);
    assert!(!ok, "kept an error body: {out}");
    assert!(err.contains("login failed"), "{err}");
    assert!(!out.contains("token"), "{out}");
}

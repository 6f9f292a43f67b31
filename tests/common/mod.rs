//! Starting real things for end-to-end tests: the `wxgate` binary as the gateway, the stand-in
//! WeChat and echo apps, each a process on a free loopback port, killed when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const APPID: &str = "wxtest0000000001";
pub const APPSECRET: &str = "test-appsecret-do-not-log";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef-0123456789";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wxgate")
}

/// A scratch directory for this test binary.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A free loopback port for a listener that a process started later binds (a gateway, Redis).
///
/// Ports come from below the kernel's ephemeral range, where the stand-ins (`--listen
/// 127.0.0.1:0`) and every client socket get theirs, and one test binary never hands out the
/// same port twice. A port asked of the kernel with `bind(0)` and closed again can be given to
/// another test's stand-in before the gateway binds it; the gateway then fails to start while
/// the test talks to the stand-in (this happened in CI). The port 10,000 above (a Redis cluster
/// node's bus port) is free too, and in a band of its own: nothing else is handed out there.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    let Some(low) = reserved_ports() else {
        // No room below the ephemeral range: ask the kernel (the old way, racy).
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
    };
    // Start at a place that differs between test binaries run at the same time.
    let _ = NEXT.compare_exchange(
        usize::MAX,
        std::process::id() as usize * 1021 % BAND,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let bindable = |port: usize| TcpListener::bind(("127.0.0.1", port as u16)).is_ok();
    for _ in 0..BAND {
        let port = low + NEXT.fetch_add(1, Ordering::Relaxed) % BAND;
        if bindable(port) && bindable(port + BAND) {
            return port as u16;
        }
    }
    panic!("no free port in {low}..{}", low + BAND)
}

/// Redis cluster's bus port offset, and the size of `free_port`'s band.
const BAND: usize = 10_000;

/// The start of `free_port`'s band: two bands (ports, then bus ports) right below
/// `ip_local_port_range`, when there is room for them.
fn reserved_ports() -> Option<usize> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    ephemeral_low
        .checked_sub(2 * BAND)
        .filter(|&low| low >= 1024)
}

/// `start` on a free port; should that port be taken before `start` binds it (by something
/// outside the tests: `start` then fails with "in use" in its error), on another, three tries
/// at most.
pub fn on_free_port<T>(mut start: impl FnMut(u16) -> Result<T, String>) -> T {
    for attempt in 1.. {
        let port = free_port();
        match start(port) {
            Ok(started) => return started,
            Err(why) if attempt < 3 && why.contains("in use") => {
                eprintln!("port {port} was taken, starting again on another: {why}");
            }
            Err(why) => panic!("{why}"),
        }
    }
    unreachable!()
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Option<PathBuf>,
}

impl Proc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The log once `wanted` holds for it (the gateway writes lines in batches), at most 3 s.
    pub fn log_when(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let log = self.log_text();
            if wanted(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a stand-in (`mock-wechat` or `echo`) on a free port; it prints its address first.
fn stand_in(args: &[&str]) -> Proc {
    let mut child = Command::new(bin())
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn stand-in");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("stand-in prints its address");
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

/// The stand-in WeChat, accepting only our appid and secret.
pub fn mock_wechat() -> Proc {
    mock_wechat_with(&[])
}

/// The stand-in WeChat for another appid.
pub fn mock_wechat_for(appid: &str) -> Proc {
    stand_in(&["mock-wechat", "--appid", appid, "--secret", APPSECRET])
}

/// The stand-in WeChat with extra arguments (e.g. `--token-ttl 3`).
pub fn mock_wechat_with(extra: &[&str]) -> Proc {
    let mut args = vec!["mock-wechat", "--appid", APPID, "--secret", APPSECRET];
    args.extend_from_slice(extra);
    stand_in(&args)
}

/// The stand-in WeChat for any appid (several mini programs): still demands our secret.
pub fn mock_wechat_any_app() -> Proc {
    stand_in(&["mock-wechat", "--secret", APPSECRET])
}

pub fn echo() -> Proc {
    stand_in(&["echo"])
}

/// A minimal valid configuration: `/api/` (token required) and `/public/` (no token) on `echo`.
pub fn config(wechat: SocketAddr, echo: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{PORT}}"
threads = 2
grace_period = "5s"

[wechat]
appid = "{APPID}"
secret = "${{WECHAT_APPSECRET}}"
api_base = "http://{wechat}"
timeout = "1s"

[jwt]
secret = "${{WXGATE_JWT_SECRET}}"
ttl = "2h"

[rate_limit]
login_per_minute = 1000
phone_per_minute = 1000

[[routes]]
prefix = "/api/"
upstreams = ["{echo}"]
read_timeout = "1s"

[[routes]]
prefix = "/public/"
upstreams = ["{echo}"]
auth = "none"
"#
    )
}

/// Write `config` (with `{PORT}` replaced by a free port) and run `wxgate run` on it. Should the
/// port be taken before the gateway binds it (by something outside the tests), it starts again
/// on another.
pub fn gateway(config: &str) -> Proc {
    on_free_port(|port| gateway_on(config, port, None))
}

/// As [`gateway`], with the open files limit (soft and hard, so that the gateway cannot raise
/// it) set to `limit` by the shell that starts it.
pub fn gateway_with_open_files(config: &str, limit: u32) -> Proc {
    on_free_port(|port| gateway_on(config, port, Some(limit)))
}

fn gateway_on(config: &str, port: u16, open_files: Option<u32>) -> Result<Proc, String> {
    let dir = scratch("gw");
    let path = dir.join("gateway.toml");
    let text = with_fast_path_choice(&config.replace("{PORT}", &port.to_string()));
    std::fs::write(&path, text).expect("write config");
    let log = dir.join("gateway.log");
    let mut command = match open_files {
        None => Command::new(bin()),
        Some(limit) => {
            let mut sh = Command::new("sh");
            sh.args(["-c", r#"ulimit -n "$1" && shift && exec "$0" "$@""#, bin()])
                .arg(limit.to_string());
            sh
        }
    };
    let child = command
        .args(["run", "-c"])
        .arg(&path)
        .env("WECHAT_APPSECRET", APPSECRET)
        .env("WXGATE_JWT_SECRET", JWT_SECRET)
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(dir.join("stdout.log")).expect("log"))
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn gateway");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut proc = Proc {
        child,
        addr,
        log: Some(log),
    };
    wait_listening(&mut proc)?;
    Ok(proc)
}

/// Whether the gateways of the tests take the fast path: `WXGATE_TEST_FAST_PATH=0` turns it off
/// (`server.fast_path = false`), so that the whole suite runs on both paths; upstream writes are
/// then not batched either (`server.batch_upstream_writes = false`), so that the suite runs with
/// both settings too (batched, on both paths, when the fast path is on: requests with a body take
/// Pingora's).
pub fn fast_path() -> bool {
    std::env::var("WXGATE_TEST_FAST_PATH").map_or(true, |v| v != "0")
}

fn with_fast_path_choice(config: &str) -> String {
    if fast_path() {
        return config.to_string();
    }
    let line = "fast_path = false\nbatch_upstream_writes = false\n";
    match config.find("[server]\n") {
        Some(at) if at == 0 || config[..at].ends_with('\n') => {
            let end = at + "[server]\n".len();
            format!("{}{line}{}", &config[..end], &config[end..])
        }
        _ => format!("[server]\n{line}{config}"),
    }
}

/// Until the gateway accepts connections (20 s at most); why not, with its log, if it exited.
/// Once it accepts, it must still be running a moment later: a gateway that failed to bind its
/// port exits, and what accepted was something else.
fn wait_listening(proc: &mut Proc) -> Result<(), String> {
    let exited = |proc: &mut Proc| match proc.child.try_wait() {
        Ok(Some(status)) => Err(format!(
            "gateway exited with {status}:\n{}",
            proc.log_text()
        )),
        _ => Ok(()),
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        exited(proc)?;
        if TcpStream::connect_timeout(&proc.addr, Duration::from_millis(200)).is_ok() {
            std::thread::sleep(Duration::from_millis(50));
            return exited(proc);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!(
        "gateway did not listen on {}:\n{}",
        proc.addr,
        proc.log_text()
    ))
}

/// The gateway with its own stand-in WeChat and echo app.
pub struct Stack {
    pub wechat: Proc,
    pub echo: Proc,
    pub gw: Proc,
}

impl Stack {
    pub fn start() -> Stack {
        Self::with(|c| c)
    }

    /// Start with a configuration edited by `edit`.
    pub fn with(edit: impl FnOnce(String) -> String) -> Stack {
        Self::with_mock(mock_wechat(), edit)
    }

    /// Start with this stand-in WeChat and a configuration edited by `edit`.
    pub fn with_mock(wechat: Proc, edit: impl FnOnce(String) -> String) -> Stack {
        let echo = echo();
        let gw = gateway(&edit(config(wechat.addr, echo.addr)));
        Stack { wechat, echo, gw }
    }

    pub fn url(&self, path: &str) -> String {
        self.gw.url(path)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .no_proxy()
        .build()
        .expect("client")
}

/// Status and JSON body.
pub async fn json(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    (status, value)
}

pub async fn get(url: &str) -> (u16, serde_json::Value) {
    json(client().get(url).send().await.expect("request")).await
}

/// Log in with `code` the tutorial's way and return the token.
pub async fn login(stack: &Stack, code: &str) -> String {
    let (status, body) = get(&stack.url(&format!("/auth?code={code}"))).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["token"]
        .as_str()
        .expect("token in data")
        .to_string()
}

/// Counters of the stand-in WeChat.
pub async fn wechat_stats(wechat: &Proc) -> serde_json::Value {
    get(&wechat.url("/__mock/stats")).await.1
}

/// The value of header `name` as the echo app received it (all occurrences).
pub fn echoed_header(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|pair| pair[1].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Send raw bytes (for requests an HTTP client would normalise) and read the whole answer.
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// POST `body` with a content type; status and JSON answer.
pub async fn post_body(
    url: String,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let resp = client()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    json(resp).await
}

/// GET with a bearer token; status and JSON answer.
pub async fn get_bearer(url: String, token: &str) -> (u16, serde_json::Value) {
    json(
        client()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// A real `redis-server` on `port` (no persistence), killed on drop.
pub fn redis_on(port: u16) -> Proc {
    redis_with(port, &[])
}

/// A real `redis-server` on `port` (no persistence) with `extra` arguments, killed on drop.
/// It runs in a scratch directory: a replica writes the snapshot it receives to its directory.
pub fn redis_with(port: u16, extra: &[&str]) -> Proc {
    try_redis_with(port, extra).unwrap_or_else(|why| panic!("{why}"))
}

/// `redis_with` on a free port (another, should that one be taken first).
pub fn redis_anywhere(extra: &[&str]) -> Proc {
    on_free_port(|port| try_redis_with(port, extra))
}

fn try_redis_with(port: u16, extra: &[&str]) -> Result<Proc, String> {
    let dir = scratch("redis");
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().expect("utf-8 path"),
        ])
        .args(extra)
        .stdout(std::fs::File::create(dir.join("redis.log")).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: `make test` installs it (scripts/setup.sh)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let start = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let mut buf = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                // With requirepass, a PING before AUTH is refused: up all the same.
                && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
            {
                break;
            }
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            return Err(format!("redis-server did not start on {addr}:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Proc {
        child,
        addr,
        log: None,
    })
}

pub fn redis_server() -> Proc {
    redis_anywhere(&[])
}

/// GET with an optional bearer token and extra headers; status and JSON answer.
pub async fn get_with(
    url: String,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    json(req.send().await.expect("request")).await
}

/// `redis-cli -p port args...`, its output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    redis_cli_as(port, None, args)
}

/// `redis-cli -p port args...` with a password (`requirepass`), its output.
pub fn redis_cli_as(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    if let Some(password) = password {
        cmd.env("REDISCLI_AUTH", password);
    }
    let out = cmd
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (comes with redis-server)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait (at most `limit`) until `check` holds; panics with `what` otherwise.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One primary, one replica and one sentinel (quorum 1) watching them as `mymaster`, quick to
/// fail over: down after 1 s.
pub struct SentinelSet {
    pub primary: Option<Proc>,
    pub replica: Proc,
    pub sentinel: Proc,
    /// `requirepass` of every server and of the sentinel, when given.
    pub password: Option<String>,
}

pub const SENTINEL_PRIMARY: &str = "mymaster";

impl SentinelSet {
    pub fn start() -> SentinelSet {
        Self::start_with(None)
    }

    /// With `password` as every server's and the sentinel's `requirepass`.
    pub fn start_with(password: Option<&str>) -> SentinelSet {
        let auth: Vec<&str> = match password {
            Some(pw) => vec!["--requirepass", pw, "--masterauth", pw],
            None => Vec::new(),
        };
        let primary = redis_anywhere(&auth);
        let p = primary.addr.port();
        let p_text = p.to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &p_text];
        replica_args.extend(&auth);
        let replica = redis_anywhere(&replica_args);
        let r = replica.addr.port();
        wait_until(Duration::from_secs(10), "replica in sync", || {
            redis_cli_as(r, password, &["INFO", "replication"]).contains("master_link_status:up")
        });
        let auth_lines = match password {
            Some(pw) => format!("requirepass {pw}\nsentinel auth-pass {SENTINEL_PRIMARY} {pw}\n"),
            None => String::new(),
        };
        let dir = scratch("sentinel");
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SENTINEL_PRIMARY} 127.0.0.1 {p} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_PRIMARY} 1000\n\
                 sentinel failover-timeout {SENTINEL_PRIMARY} 3000\n{auth_lines}",
                dir = dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::fs::File::create(dir.join("sentinel.log")).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let sentinel = Proc {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            log: Some(dir.join("sentinel.log")),
        };
        wait_until(
            Duration::from_secs(15),
            "the sentinel sees the replica",
            || {
                redis_cli_as(port, password, &["SENTINEL", "replicas", SENTINEL_PRIMARY])
                    .contains(&format!("{r}"))
            },
        );
        SentinelSet {
            primary: Some(primary),
            replica,
            sentinel,
            password: password.map(str::to_string),
        }
    }

    /// The `[session]` lines for this set; the first sentinel listed is one that is down.
    pub fn session_section(&self, timeout: &str) -> String {
        format!(
            "\n[session]\nstore = \"redis\"\n\
             redis_sentinels = [\"redis://127.0.0.1:{}/\", \"redis://{}/\"]\n\
             redis_sentinel_primary = \"{SENTINEL_PRIMARY}\"\ntimeout = \"{timeout}\"\n",
            free_port(),
            self.sentinel.addr
        )
    }

    /// The port of the server the sentinel names as primary now.
    pub fn primary_port(&self) -> u16 {
        let out = redis_cli_as(
            self.sentinel.addr.port(),
            self.password.as_deref(),
            &["SENTINEL", "get-master-addr-by-name", SENTINEL_PRIMARY],
        );
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A Redis Cluster: three primaries with a replica each, quick to fail over (node timeout 1 s).
pub struct Cluster {
    pub nodes: Vec<Proc>,
    /// `requirepass` of every node, when given.
    pub password: Option<String>,
}

impl Cluster {
    pub fn start() -> Cluster {
        Self::start_with(None)
    }

    /// With `password` as every node's `requirepass`.
    pub fn start_with(password: Option<&str>) -> Cluster {
        let dir = scratch("cluster");
        let nodes: Vec<Proc> = (0..6)
            .map(|i| {
                let conf = dir.join(format!("nodes-{i}.conf"));
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().expect("utf-8 path"),
                    "--cluster-node-timeout",
                    "1000",
                ];
                if let Some(pw) = password {
                    args.extend(["--requirepass", pw, "--masterauth", pw]);
                }
                redis_anywhere(&args)
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        let mut create = Command::new("redis-cli");
        if let Some(pw) = password {
            create.env("REDISCLI_AUTH", pw);
        }
        let out = create
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_until(Duration::from_secs(20), "cluster_state:ok", || {
                redis_cli_as(n.addr.port(), password, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            });
        }
        Cluster {
            nodes,
            password: password.map(str::to_string),
        }
    }

    /// Each node's URL, with the password when there is one.
    pub fn urls(&self) -> Vec<String> {
        let auth = self
            .password
            .as_ref()
            .map_or_else(String::new, |pw| format!(":{pw}@"));
        self.nodes
            .iter()
            .map(|n| format!("redis://{auth}{}/", n.addr))
            .collect()
    }

    /// The `[session]` lines for this cluster (two of its nodes, as a subset is enough).
    pub fn session_section(&self, timeout: &str) -> String {
        format!(
            "\n[session]\nstore = \"redis\"\nredis_cluster = [\"redis://{}/\", \"redis://{}/\"]\n\
             timeout = \"{timeout}\"\n",
            self.nodes[0].addr, self.nodes[1].addr
        )
    }

    /// The port of the primary serving `key`'s slot, as a live node sees it.
    pub fn primary_of(&self, key: &str) -> u16 {
        for n in &self.nodes {
            let port = n.addr.port();
            let pw = self.password.as_deref();
            let slot: u16 = match redis_cli_as(port, pw, &["CLUSTER", "KEYSLOT", key])
                .trim()
                .parse()
            {
                Ok(slot) => slot,
                Err(_) => continue,
            };
            // CLUSTER SLOTS, raw: start, end, then the primary's ip and port first.
            let slots = redis_cli_as(port, pw, &["--raw", "CLUSTER", "SLOTS"]);
            let lines: Vec<&str> = slots.lines().map(str::trim).collect();
            let mut i = 0;
            while i + 3 < lines.len() {
                if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                {
                    if lines[i + 2].contains('.') {
                        if (start..=end).contains(&slot) {
                            return lines[i + 3].parse().unwrap_or(0);
                        }
                        i += 4;
                        continue;
                    }
                }
                i += 1;
            }
        }
        0
    }

    /// Kill the node listening on `port`.
    pub fn kill(&mut self, port: u16) {
        self.nodes.retain(|n| n.addr.port() != port);
    }
}

/// Wait until the replica of the primary on `port` has acknowledged every write so far.
pub fn wait_replicated(port: u16) {
    wait_until(Duration::from_secs(10), "the replica caught up", || {
        let info = redis_cli(port, &["INFO", "replication"]);
        let field = |line: &str, name: &str| -> Option<u64> {
            line.split([',', ':'])
                .find_map(|kv| kv.trim().strip_prefix(name)?.parse().ok())
        };
        let primary = info.lines().find_map(|l| {
            l.trim()
                .strip_prefix("master_repl_offset:")
                .and_then(|v| v.parse::<u64>().ok())
        });
        let replica = info
            .lines()
            .filter(|l| l.starts_with("slave0:") && l.contains("state=online"))
            .find_map(|l| field(l, "offset="));
        matches!((primary, replica), (Some(p), Some(r)) if p > 0 && r >= p)
    });
}

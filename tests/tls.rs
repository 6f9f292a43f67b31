//! HTTPS and HTTP/2 at the edge, end to end: certificates made here (rcgen), real clients (curl
//! for HTTP/1.1 and h2, Python's ssl module to hold a connection across a certificate reload).

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Tls {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The test CA's certificate: what clients trust.
    trust: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Tls {
    /// A CA of the test's own.
    fn new() -> Tls {
        let dir = scratch("tls");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wxgate test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let trust = dir.join("ca.pem");
        std::fs::write(&trust, ca.pem()).unwrap();
        Tls {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            trust,
            dir,
            ca,
            ca_key,
        }
    }

    /// A certificate for `localhost` and `name`, signed by the CA: (cert PEM, key PEM).
    fn certificate(&self, name: &str) -> (String, String) {
        self.certificate_for(&["localhost", name])
    }

    /// A certificate for these names (or IP addresses), signed by the CA.
    fn certificate_for(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Install a new certificate for `name`.
    fn issue(&self, name: &str) {
        let (cert, key) = self.certificate(name);
        std::fs::write(&self.cert, cert).unwrap();
        std::fs::write(&self.key, key).unwrap();
    }

    fn section(&self) -> String {
        format!(
            "\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// The stack's configuration with TLS on `listen` and a plain listener on `plain_port`.
fn tls_config(tls: &Tls, plain_port: u16) -> impl FnOnce(String) -> String + '_ {
    move |c| {
        // The array form of `listen`, as a TLS deployment writes it.
        c.replace(
            "listen = \"127.0.0.1:{PORT}\"",
            "listen = [\"127.0.0.1:{PORT}\"]",
        )
        .replace(
            "grace_period = \"5s\"",
            &format!("grace_period = \"5s\"\nplain_listen = \"127.0.0.1:{plain_port}\""),
        ) + &tls.section()
    }
}

/// curl over HTTPS to `localhost` on the gateway's port: (body, HTTP version).
fn curl(gw: &Proc, trust: &Path, path: &str, http2: bool, headers: &[&str]) -> (Value, String) {
    let port = gw.addr.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "--cacert"])
        .arg(trust)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .args(["-w", "\n%{http_version}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("https://localhost:{port}{path}"));
    let out = cmd.output().expect("curl (make test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or((&text, ""));
    let body = serde_json::from_str(body).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (body, version.to_string())
}

#[tokio::test]
async fn login_and_protected_calls_over_https_with_http1_and_h2() {
    let tls = Tls::new();
    tls.issue("one.test");
    let plain_port = free_port();
    let with_tls = tls_config(&tls, plain_port);
    let s =
        Stack::with(|c| with_tls(c).replace("[server]\n", "[server]\nforwarded_headers = true\n"));
    for (http2, version, user) in [(false, "1.1", "tina.1"), (true, "2", "tina.2")] {
        let (v, got) = curl(&s.gw, &tls.trust, &format!("/auth?code={user}"), http2, &[]);
        assert_eq!(got, version, "{v}");
        let token = v["data"]["token"].as_str().expect("token").to_string();
        let auth = format!("Authorization: Bearer {token}");
        let (echo, got) = curl(
            &s.gw,
            &tls.trust,
            "/api/me",
            http2,
            &[&auth, "X-WX-OpenID: spoofed"],
        );
        assert_eq!(got, version);
        let openid = echoed_header(&echo, "x-wx-openid");
        assert_eq!(openid.len(), 1, "{echo}");
        assert_ne!(openid[0], "spoofed");
        // What the client used, as the app sees it (`server.forwarded_headers`): HTTP/1's Host
        // and HTTP/2's :authority alike.
        let port = s.gw.addr.port();
        assert_eq!(
            echoed_header(&echo, "x-forwarded-proto"),
            ["https"],
            "{echo}"
        );
        assert_eq!(
            echoed_header(&echo, "x-forwarded-host"),
            [format!("localhost:{port}")],
            "{echo}"
        );
        assert_eq!(
            echoed_header(&echo, "x-forwarded-for"),
            ["127.0.0.1"],
            "{echo}"
        );
        let (v, _) = curl(&s.gw, &tls.trust, "/api/me", http2, &[]);
        assert_eq!(v["code"], "10119", "{v}");
        let (v, _) = curl(&s.gw, &tls.trust, "/isAuth", http2, &[&auth]);
        assert_eq!(v["code"], "200", "{v}");
    }
    // The plain listener serves the same routes.
    let (status, v) = get(&format!("http://127.0.0.1:{plain_port}/public/x")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(echoed_header(&v, "x-forwarded-proto"), ["http"], "{v}");
    // Plain HTTP on the TLS port is not answered as HTTP.
    assert!(
        !raw_request(s.gw.addr, b"GET /public/x HTTP/1.1\r\nHost: x\r\n\r\n").contains("200 OK")
    );
}

/// A Python client holding one TLS connection across a certificate reload.
const HOLDER: &str = r#"
import http.client, ssl, sys
port, trust = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=trust)
def names(conn):
    cert = conn.sock.getpeercert()
    return sorted(v for k, v in cert.get("subjectAltName", ()) if v != "localhost")[0]
def get(conn):
    conn.request("GET", "/public/x")
    r = conn.getresponse(); r.read()
    return r.status
held = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
print("held", get(held), names(held), flush=True)
sys.stdin.readline()
fresh = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
print("fresh", get(fresh), names(fresh), flush=True)
print("held", get(held), names(held), flush=True)
"#;

#[tokio::test]
async fn certificate_reload_on_sighup_keeps_open_connections() {
    let tls = Tls::new();
    tls.issue("one.test");
    let plain_port = free_port();
    let s = Stack::with(tls_config(&tls, plain_port));
    let mut holder = Command::new("python3")
        .args(["-c", HOLDER, &s.gw.addr.port().to_string()])
        .arg(&tls.trust)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "held 200 one.test");

    tls.issue("two.test");
    s.gw.signal("HUP");
    let log =
        s.gw.log_when(|l| l.contains("configuration reloaded") || l.contains("reload refused"));
    assert!(log.contains("configuration reloaded"), "{log}");
    writeln!(holder.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "fresh 200 two.test");
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "held 200 one.test",
        "the open connection keeps its certificate and its session"
    );
    assert!(holder.wait().unwrap().success());

    // A certificate that does not load: the reload is refused, the running one stays.
    std::fs::write(&tls.key, "not a key").unwrap();
    s.gw.signal("HUP");
    let log = s.gw.log_when(|l| l.contains("reload refused"));
    assert!(
        log.lines()
            .any(|l| l.contains("reload refused") && l.contains("server.tls")),
        "{log}"
    );
    let started = Instant::now();
    let (v, version) = curl(&s.gw, &tls.trust, "/public/after", true, &[]);
    assert_eq!(
        (v["path"].as_str(), version.as_str()),
        (Some("/public/after"), "2")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn check_names_a_certificate_that_does_not_load() {
    let tls = Tls::new();
    tls.issue("one.test");
    std::fs::write(
        &tls.key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let wechat = "127.0.0.1:9";
    let base = config(wechat.parse().unwrap(), wechat.parse().unwrap()).replace("{PORT}", "3999");
    for (cert, expected) in [
        (tls.dir.join("missing.pem"), "server.tls.cert: cannot read"),
        (tls.cert.clone(), "server.tls."),
    ] {
        let path = tls.dir.join("gw.toml");
        std::fs::write(
            &path,
            format!(
                "{base}\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                tls.key.display()
            ),
        )
        .unwrap();
        let out = Command::new(bin())
            .args(["check", "-c"])
            .arg(&path)
            .env("WECHAT_APPSECRET", APPSECRET)
            .env("WXGATE_JWT_SECRET", JWT_SECRET)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

/// An HTTPS upstream (Python's http.server behind ssl) answering with the path and Host it got.
const HTTPS_UPSTREAM: &str = r#"
import http.server, json, ssl, sys
cert, key = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"tls": True, "path": self.path, "host": self.headers.get("Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// Start an HTTPS upstream with a certificate for `127.0.0.1` from `tls`'s CA; its port.
fn https_upstream(tls: &Tls, name: &str) -> (std::process::Child, u16) {
    let (cert, key) = tls.certificate_for(&["127.0.0.1", name]);
    let cert_path = tls.dir.join(format!("{name}.crt"));
    let key_path = tls.dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let mut child = Command::new("python3")
        .args(["-c", HTTPS_UPSTREAM])
        .arg(&cert_path)
        .arg(&key_path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().parse().expect("a port"))
}

#[tokio::test]
async fn https_upstreams_are_verified_against_a_private_ca() {
    let ours = Tls::new();
    let theirs = Tls::new();
    let (mut good, good_port) = https_upstream(&ours, "good.internal");
    let (mut bad, bad_port) = https_upstream(&theirs, "bad.internal");
    let ca = ours.trust.clone();
    let s = Stack::with(|c| {
        format!(
            "{c}\n[[routes]]\nprefix = \"/secure/\"\nupstreams = [\"https://127.0.0.1:{good_port}\"]\n\
             upstream_ca = \"{}\"\nupstream_host = \"good.internal\"\nauth = \"none\"\n\
             \n[[routes]]\nprefix = \"/untrusted/\"\nupstreams = [\"https://127.0.0.1:{bad_port}\"]\n\
             upstream_ca = \"{}\"\nauth = \"none\"\n",
            ca.display(),
            ca.display()
        )
    });
    let (status, v) = get(&s.url("/secure/x?y=1")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tls"], true);
    assert_eq!(v["path"], "/secure/x?y=1");
    assert_eq!(v["host"], "good.internal", "upstream_host");
    // A certificate from another CA: refused, 502 10510, the reason in the log.
    let resp = client()
        .get(s.url("/untrusted/x"))
        .header("x-request-id", "untrusted-1")
        .send()
        .await
        .unwrap();
    let (status, v) = json(resp).await;
    assert_eq!((status, v["code"].as_str()), (502, Some("10510")), "{v}");
    let log =
        s.gw.log_when(|l| l.contains("untrusted-1") && l.contains("ERROR"));
    assert!(
        log.lines().any(|l| l.contains("untrusted-1")
            && l.contains("ERROR")
            && l.to_lowercase().contains("certificate")),
        "{log}"
    );
    let _ = good.kill();
    let _ = bad.kill();
}

/// A Python client trickling a request header over TLS, a line every 300 ms, until the gateway
/// answers: prints the seconds it took and the answer.
const TRICKLER: &str = r#"
import select, socket, ssl, sys, time
port, trust = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=trust)
conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
conn.settimeout(10)
started = time.time()
conn.sendall(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n")
for _ in range(30):
    if select.select([conn], [], [], 0.3)[0]:
        break
    conn.sendall(b"X-A: 1\r\n")
answer = b""
try:
    while chunk := conn.recv(4096):
        answer += chunk
except (ssl.SSLError, OSError):
    pass
print(round(time.time() - started, 1), answer.decode(errors="replace").replace("\r\n", " | "))
"#;

/// `server.header_timeout` holds on the TLS listener too (Pingora's own connection loop there).
#[test]
fn a_trickled_header_over_tls_is_cut_off() {
    let tls = Tls::new();
    tls.issue("one.test");
    let plain_port = free_port();
    let s = Stack::with(|c| {
        tls_config(&tls, plain_port)(c).replace("[server]\n", "[server]\nheader_timeout = \"1s\"\n")
    });
    let out = Command::new("python3")
        .args(["-c", TRICKLER, &s.gw.addr.port().to_string()])
        .arg(&tls.trust)
        .output()
        .expect("python3");
    let out = String::from_utf8_lossy(&out.stdout);
    let (seconds, answer) = out.trim().split_once(' ').unwrap_or(("", ""));
    let seconds: f64 = seconds.parse().unwrap_or_else(|_| panic!("{out}"));
    assert!(answer.starts_with("HTTP/1.1 408"), "{out}");
    assert!(answer.contains("\"reason\":\"request_timeout\""), "{out}");
    assert!((0.9..5.0).contains(&seconds), "{out}");
}

/// A Python client that opens a TLS connection and idles: `h1` after one HTTP/1.1 request, `h2`
/// after the HTTP/2 preface and SETTINGS, `silent` (ALPN h2) sending nothing at all. Prints
/// the seconds until the gateway closed it.
const IDLER: &str = r#"
import socket, ssl, sys, time
port, trust, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=trust)
ctx.set_alpn_protocols(["http/1.1"] if mode == "h1" else ["h2"])
conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
conn.settimeout(20)
if mode == "h1":
    conn.sendall(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
elif mode == "h2":
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
started = time.time()
try:
    while conn.recv(4096):
        pass
except (ssl.SSLError, OSError):
    pass
print(round(time.time() - started, 1))
"#;

/// `server.keepalive_timeout` closes idle client connections over TLS: HTTP/1.1 after a request,
/// HTTP/2 with no stream open, and a client that chose h2 but never sent its preface (held
/// forever before: Pingora waited for the preface, and for streams, without a bound).
#[test]
fn idle_tls_connections_close_after_the_keepalive_timeout() {
    let tls = Tls::new();
    tls.issue("one.test");
    let plain_port = free_port();
    let s = Stack::with(|c| {
        let c = tls_config(&tls, plain_port)(c);
        c.replace("[server]\n", "[server]\nkeepalive_timeout = \"1s\"\n") + "http2 = true\n"
    });
    let idlers: Vec<_> = ["h1", "h2", "silent"]
        .into_iter()
        .map(|mode| {
            let child = Command::new("python3")
                .args(["-c", IDLER, &s.gw.addr.port().to_string()])
                .arg(&tls.trust)
                .arg(mode)
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3");
            (mode, child)
        })
        .collect();
    for (mode, child) in idlers {
        let out = child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        let seconds: f64 = out
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{mode}: {out}"));
        assert!(
            (0.5..5.0).contains(&seconds),
            "{mode}: closed after {seconds} s"
        );
    }
}

/// An HTTP/2 client written out by hand (HPACK literals, no Huffman): one GET with the given
/// `:authority` and `Host`, then every frame until the stream ends. Prints the first byte of the
/// answer's header block (`0x8c` is `:status: 400`, HPACK static index 12) and its body.
const H2_CONFLICT: &str = r#"
import socket, ssl, struct, sys
port, trust, authority, host = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=trust)
ctx.set_alpn_protocols(["h2"])
conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
conn.settimeout(10)
def literal(name, value):
    return bytes([0, len(name)]) + name.encode() + bytes([len(value)]) + value.encode()
block = b"".join(literal(n, v) for n, v in [(":method", "GET"), (":scheme", "https"),
    (":path", "/public/x"), (":authority", authority), ("host", host)])
frame = lambda kind, flags, stream, payload: struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + frame(1, 0x5, 1, block))
buf, status, body = b"", None, b""
while True:
    while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
        more = conn.recv(65536)
        if not more:
            raise SystemExit("closed: " + repr((status, body)))
        buf += more
    size, kind, flags, stream = int.from_bytes(buf[:3], "big"), buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
    payload, buf = buf[9:9 + size], buf[9 + size:]
    if stream != 1:
        continue
    if kind == 1:
        status = hex(payload[0])
    elif kind == 0:
        body += payload
    elif kind == 3:
        raise SystemExit("reset")
    if flags & 0x1:
        break
print(status)
print(body.decode())
"#;

/// An h2 request whose `:authority` and `Host` disagree (RFC 9113 §8.3.1; a host-routing
/// bypass if the two were read apart) is refused below every filter, in Pingora: with the
/// envelope as its body (pingora-core patch 19), as every other refusal.
#[test]
fn conflicting_h2_authority_gets_the_envelope() {
    let tls = Tls::new();
    tls.issue("one.test");
    let plain_port = free_port();
    let s = Stack::with(|c| tls_config(&tls, plain_port)(c) + "http2 = true\n");
    let run = |authority: &str, host: &str| {
        let out = Command::new("python3")
            .args(["-c", H2_CONFLICT, &s.gw.addr.port().to_string()])
            .arg(&tls.trust)
            .args([authority, host])
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let out = run("localhost", "evil.example");
    let (status, body) = out.split_once('\n').unwrap();
    assert_eq!(status, "0x8c", "not a 400: {out}");
    let v: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("{out}"));
    assert_eq!(v["code"], "10400", "{v}");
    // The same client, agreeing names: served (so the refusal above is the conflict's).
    let out = run("localhost", "localhost");
    assert!(out.contains("\"app\""), "{out}");
}

//! Log output on stderr, as readable text or one JSON object per line (`log.format`).
//!
//! Every line, access line or not, goes into one buffer that a background thread writes out
//! every [`FLUSH_EVERY`] (or at once past [`FLUSH_AT`] bytes): a request never waits on a write
//! syscall, lines from different threads never interleave, and nothing is dropped. Access lines
//! are formatted here by hand ([`AccessLine`]): one per request is the hot path, and the generic
//! event formatter cost several times more. [`flush`] writes out what is buffered before a
//! graceful exit.

use crate::config::LogFormat;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// Crates whose debug logs print raw requests (tokens, codes) or URLs (the appsecret): capped at
/// info whatever RUST_LOG says, so no log level can leak a secret.
const CHATTY: &[&str] = &[
    "pingora_proxy",
    "pingora_core",
    "pingora_pool",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
];

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT: usize = 256 * 1024;

static SINK: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Held while writing, so that batches reach stderr in the order they were taken.
static WRITING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

fn append(bytes: &[u8]) {
    let full = {
        let mut buf = SINK.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(bytes);
        buf.len() >= FLUSH_AT
    };
    if full {
        flush();
    }
}

/// Write out every buffered line (also called before exiting on purpose). The buffer is swapped
/// out first: other threads go on appending while the write runs.
pub fn flush() {
    let mut writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::swap(
        &mut *writing,
        &mut *SINK.lock().unwrap_or_else(|p| p.into_inner()),
    );
    if !writing.is_empty() {
        // Nowhere to report a failed write to the log; the lines are dropped, not retried.
        let _ = std::io::stderr().write_all(&writing);
        writing.clear();
    }
}

/// tracing's formatter writes each event into the shared buffer in one call.
struct SinkWriter;

impl std::io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the process's log output; `RUST_LOG` sets the levels (default `info`).
pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for krate in CHATTY {
        if let Ok(directive) = format!("{krate}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let _ = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(|| loop {
            std::thread::sleep(FLUSH_EVERY);
            flush();
        });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| SinkWriter);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        // One JSON object per line: the event's fields at the top level, the request span's id.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Whether access lines are wanted (`RUST_LOG` may turn `wxgate::access` off).
pub fn access_enabled() -> bool {
    tracing::enabled!(target: "wxgate::access", tracing::Level::INFO)
}

/// One access line, built field by field in the configured format, then appended whole.
pub struct AccessLine {
    json: bool,
    line: String,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl AccessLine {
    pub fn start() -> Self {
        let json = FORMAT.get() == Some(&LogFormat::Json);
        let mut line = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        line.clear();
        if json {
            line.push_str("{\"timestamp\":\"");
            push_timestamp(&mut line, SystemTime::now());
            line.push_str("\",\"level\":\"INFO\"");
        } else {
            push_timestamp(&mut line, SystemTime::now());
            line.push_str("  INFO wxgate::access:");
        }
        AccessLine { json, line }
    }

    /// `,"name":` or ` name=`. This and the field methods are inlined into the one place that
    /// builds the line, where each name is a constant: its copy is a few moves, not a `memcpy` call.
    #[inline(always)]
    fn key(&mut self, name: &str) {
        if self.json {
            self.line.push_str(",\"");
            self.line.push_str(name);
            self.line.push_str("\":");
        } else {
            self.line.push(' ');
            self.line.push_str(name);
            self.line.push('=');
        }
    }

    #[inline(always)]
    pub fn str(mut self, name: &str, value: Option<&str>) -> Self {
        let Some(value) = value else { return self };
        self.key(name);
        if self.json {
            json_string(&mut self.line, value);
        } else if value.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
            self.line.push_str(value);
        } else {
            let _ = write!(self.line, "{value:?}");
        }
        self
    }

    /// An IP address: its text needs no escaping.
    #[inline(always)]
    pub fn ip(mut self, name: &str, value: Option<IpAddr>) -> Self {
        let Some(ip) = value else { return self };
        self.open_address(name);
        push_ip(&mut self.line, ip);
        self.close_address();
        self
    }

    /// An address and port: its text needs no escaping.
    #[inline(always)]
    pub fn socket(mut self, name: &str, value: Option<SocketAddr>) -> Self {
        let Some(addr) = value else { return self };
        self.open_address(name);
        match addr {
            SocketAddr::V4(a) => {
                push_ip(&mut self.line, IpAddr::V4(*a.ip()));
                self.line.push(':');
                self.line.push_str(itoa::Buffer::new().format(a.port()));
            }
            SocketAddr::V6(a) => {
                let _ = write!(self.line, "{a}");
            }
        }
        self.close_address();
        self
    }

    #[inline(always)]
    fn open_address(&mut self, name: &str) {
        self.key(name);
        if self.json {
            self.line.push('"');
        }
    }

    #[inline(always)]
    fn close_address(&mut self) {
        if self.json {
            self.line.push('"');
        }
    }

    #[inline(always)]
    pub fn uint(mut self, name: &str, value: u64) -> Self {
        self.key(name);
        self.line.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// Milliseconds with microsecond precision.
    #[inline(always)]
    pub fn ms(mut self, name: &str, value: Option<Duration>) -> Self {
        let Some(d) = value else { return self };
        let micros = d.as_micros().min(u64::MAX as u128) as u64;
        let (whole, frac) = (micros / 1000, micros % 1000);
        self.key(name);
        self.line.push_str(itoa::Buffer::new().format(whole));
        self.line.push('.');
        let digits = [
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        self.line
            .push_str(std::str::from_utf8(&digits).unwrap_or("000"));
        self
    }

    pub fn finish(mut self) {
        if self.json {
            self.line.push_str(",\"target\":\"wxgate::access\"}\n");
        } else {
            self.line.push('\n');
        }
        append(self.line.as_bytes());
        SCRATCH.with(|s| *s.borrow_mut() = std::mem::take(&mut self.line));
    }
}

/// An address as `Display` writes it; IPv4 by hand (through `core::fmt`, the client's and the
/// upstream's addresses were ~2,200 of the ~7,800 instructions an access line took).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(itoa::Buffer::new().format(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

thread_local! {
    /// The second the last timestamp of this thread fell in, and its text up to the fraction.
    static SECOND: std::cell::RefCell<(u64, String)> = const {
        std::cell::RefCell::new((u64::MAX, String::new()))
    };
}

/// `now` as RFC 3339 with microseconds (`2026-12-05T03:50:12.123456Z`), what
/// `humantime::format_rfc3339_micros` writes: the date and time of day made once a second.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let second = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            *cached = (second, text.trim_end_matches('Z').to_string());
        }
        out.push_str(&cached.1);
    });
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.push('.');
    out.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
    out.push('Z');
}

/// `value` as a JSON string literal: runs of plain characters copied whole, the rest escaped.
fn json_string(out: &mut String, value: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in value.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[plain..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&value[plain..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn addresses_and_timestamps_read_as_display_and_humantime_write_them() {
        let addrs: [SocketAddr; 4] = [
            "0.0.0.0:0".parse().unwrap(),
            "203.0.113.255:65535".parse().unwrap(),
            "10.1.22.3:8080".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        ];
        for a in addrs {
            let mut out = String::new();
            push_ip(&mut out, a.ip());
            assert_eq!(out, a.ip().to_string());
            let line = AccessLine {
                json: false,
                line: String::new(),
            }
            .socket("upstream", Some(a))
            .ip("client", Some(a.ip()))
            .ip("none", None);
            assert_eq!(line.line, format!(" upstream={a} client={}", a.ip()));
        }
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        for micros in [0, 7, 999_999, 123_456, 1_000_001, 86_400_000_000] {
            let t = base + Duration::from_micros(micros);
            let mut out = String::new();
            push_timestamp(&mut out, t);
            assert_eq!(out, humantime::format_rfc3339_micros(t).to_string());
        }
    }

    #[test]
    fn access_lines_in_json_parse_back() {
        let line = AccessLine {
            json: true,
            line: String::from("{\"level\":\"INFO\""),
        }
        .str("path", Some("/a b\"c"))
        .str("missing", None)
        .uint("status", 200)
        .ms("ms", Some(Duration::from_micros(1234)));
        let mut text = line.line.clone();
        text.push('}');
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["path"], "/a b\"c");
        assert_eq!(v["status"], 200);
        assert_eq!(v["ms"], 1.234);
        assert!(v.get("missing").is_none());
    }
}

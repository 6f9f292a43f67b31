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
        let now = humantime::format_rfc3339_micros(SystemTime::now());
        if json {
            let _ = write!(line, "{{\"timestamp\":\"{now}\",\"level\":\"INFO\"");
        } else {
            let _ = write!(line, "{now}  INFO wxgate::access:");
        }
        AccessLine { json, line }
    }

    /// `,"name":` or ` name=`.
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

    /// A value whose text needs no escaping (an address), written without a copy.
    pub fn display(mut self, name: &str, value: Option<impl std::fmt::Display>) -> Self {
        let Some(value) = value else { return self };
        self.key(name);
        if self.json {
            let _ = write!(self.line, "\"{value}\"");
        } else {
            let _ = write!(self.line, "{value}");
        }
        self
    }

    pub fn uint(mut self, name: &str, value: u64) -> Self {
        self.key(name);
        self.line.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// Milliseconds with microsecond precision.
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

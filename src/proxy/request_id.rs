//! Request ids: a client's `X-Request-Id` is kept when it is sane, otherwise the gateway makes
//! one. It goes upstream, back on the response, into the access log and every error line of the
//! request, so one id follows a request through every log it touches.

use http::HeaderValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

const HEADER: &str = "x-request-id";
/// For looking up (a `&str` would be parsed into a name again at each lookup).
pub static NAME: http::HeaderName = http::HeaderName::from_static(HEADER);

/// For inserting: the name and its spelling on the wire, neither copied nor parsed again.
pub fn names() -> (http::HeaderName, bytes::Bytes) {
    (NAME.clone(), bytes::Bytes::from_static(HEADER.as_bytes()))
}
const MAX_LEN: usize = 128;

/// A per-process random prefix and a counter: unique across instances and restarts, and cheaper
/// than drawing random bytes per request.
static PREFIX: LazyLock<String> = LazyLock::new(|| format!("{:012x}", rand::random::<u64>() >> 16));
static NEXT: AtomicU64 = AtomicU64::new(1);

/// The id of a request: the client's, when it is 1 to 128 visible ASCII characters, else a new
/// one. A header value, so that sending it upstream and back costs no copy.
pub fn request_id(client_sent: Option<&HeaderValue>) -> HeaderValue {
    match client_sent {
        Some(v) if is_sane(v.as_bytes()) => v.clone(),
        _ => {
            // Sized once: the prefix, '-' and up to 16 hex digits.
            let mut id = Vec::with_capacity(PREFIX.len() + 17);
            id.extend_from_slice(PREFIX.as_bytes());
            id.push(b'-');
            push_hex(&mut id, NEXT.fetch_add(1, Ordering::Relaxed));
            // Hex digits and '-': always a valid header value.
            HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
                .unwrap_or_else(|_| HeaderValue::from_static("-"))
        }
    }
}

/// `n` in lowercase hex, as `{:x}` writes it (without `fmt`'s machinery: a third of a request
/// id's cost).
fn push_hex(out: &mut Vec<u8>, n: u64) {
    let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (4 * i) & 0xf) as usize]);
    }
}

/// The id as text, for logs.
pub fn as_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

fn is_sane(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_LEN && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(bytes: &[u8]) -> HeaderValue {
        request_id(Some(&HeaderValue::from_bytes(bytes).unwrap()))
    }

    #[test]
    fn hex_is_written_as_fmt_writes_it() {
        for n in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            0xabc,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{n:x}"));
        }
    }

    #[test]
    fn sane_ids_are_kept_others_replaced() {
        assert_eq!(id(b"abc-123"), "abc-123");
        assert_eq!(id(&[b'a'; 128]).len(), 128);
        for bad in [&b""[..], b"has space", b"tab\t", &[b'a'; 129]] {
            let made = id(bad);
            assert_ne!(made.as_bytes(), bad);
            assert!(is_sane(made.as_bytes()), "{made:?}");
        }
        let (a, b) = (request_id(None), request_id(None));
        assert_ne!(a, b);
        assert!(as_str(&a).starts_with(PREFIX.as_str()));
    }
}

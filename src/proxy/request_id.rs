//! Request ids: a client's `X-Request-Id` is kept when it is sane, otherwise the gateway makes
//! one. It goes upstream, back on the response, into the access log and every error line of the
//! request, so one id follows a request through every log it touches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

pub const HEADER: &str = "x-request-id";
const MAX_LEN: usize = 128;

/// A per-process random prefix and a counter: unique across instances and restarts, and cheaper
/// than drawing random bytes per request.
static PREFIX: LazyLock<String> = LazyLock::new(|| format!("{:012x}", rand::random::<u64>() >> 16));
static NEXT: AtomicU64 = AtomicU64::new(1);

/// The id of a request: the client's, when it is 1 to 128 visible ASCII characters, else a new one.
pub fn request_id(client_sent: Option<&[u8]>) -> String {
    match client_sent {
        Some(v) if is_sane(v) => String::from_utf8_lossy(v).into_owned(),
        _ => format!(
            "{}-{:x}",
            PREFIX.as_str(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
    }
}

fn is_sane(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_LEN && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_others_replaced() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        let long = vec![b'a'; 128];
        assert_eq!(request_id(Some(&long)).len(), 128);
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            "ünï".as_bytes(),
            &[b'a'; 129],
        ] {
            let id = request_id(Some(bad));
            assert_ne!(id.as_bytes(), bad);
            assert!(is_sane(id.as_bytes()), "{id}");
        }
        let (a, b) = (request_id(None), request_id(None));
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX.as_str()));
    }
}

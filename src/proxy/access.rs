//! The access log: one line per request, written from the request's recorded outcome. The path
//! never carries its query (codes travel there), and the caller appears per `log.openid`.

use crate::config::OpenidInLog;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;

/// How the caller's openid appears in the log.
pub fn openid_for_log(openid: &str, mode: OpenidInLog) -> Option<Cow<'_, str>> {
    match mode {
        OpenidInLog::Plain => Some(Cow::Borrowed(openid)),
        OpenidInLog::Hash => Some(Cow::Owned(hashed(openid))),
        OpenidInLog::Off => None,
    }
}

/// Hashes already computed on this thread: a user's requests come in runs, and SHA-256 costs
/// more than the rest of the access line.
const HASHED_MAX: usize = 4096;

thread_local! {
    static HASHED: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
}

fn hashed(openid: &str) -> String {
    HASHED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(h) = cache.get(openid) {
            return h.clone();
        }
        let digest = Sha256::digest(openid.as_bytes());
        let mut h = String::with_capacity(16);
        for b in &digest[..8] {
            let _ = write!(h, "{b:02x}");
        }
        if cache.len() >= HASHED_MAX {
            cache.clear();
        }
        cache.insert(openid.to_string(), h.clone());
        h
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openid_plain_hashed_or_left_out() {
        assert_eq!(
            openid_for_log("o-abc", OpenidInLog::Plain).as_deref(),
            Some("o-abc")
        );
        let hashed = openid_for_log("o-abc", OpenidInLog::Hash).unwrap();
        assert_eq!(hashed.len(), 16);
        assert!(!hashed.contains("abc"));
        assert_eq!(openid_for_log("o-abc", OpenidInLog::Hash).unwrap(), hashed);
        assert_ne!(openid_for_log("o-abd", OpenidInLog::Hash).unwrap(), hashed);
        assert_eq!(openid_for_log("o-abc", OpenidInLog::Off), None);
    }
}

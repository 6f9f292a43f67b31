//! The access log: one line per request, written from the request's recorded outcome. The path
//! never carries its query (codes travel there), and the caller appears per `log.openid`.

use crate::config::OpenidInLog;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// How the caller's openid appears in the log.
pub fn openid_for_log(openid: &str, mode: OpenidInLog) -> Option<Cow<'_, str>> {
    match mode {
        OpenidInLog::Plain => Some(Cow::Borrowed(openid)),
        OpenidInLog::Hash => {
            let digest = Sha256::digest(openid.as_bytes());
            Some(Cow::Owned(
                digest[..8].iter().map(|b| format!("{b:02x}")).collect(),
            ))
        }
        OpenidInLog::Off => None,
    }
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

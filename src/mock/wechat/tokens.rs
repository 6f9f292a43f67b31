//! The access-token book: every token issued, the stable token rule (one current token per appid,
//! renewed near expiry or on `force_refresh`), the classic token's overlap, and token checks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The documented overlap of an old classic access token after a new one was fetched.
const MAX_OVERLAP: Duration = Duration::from_secs(300);
/// Longest token lifetime honoured, so that deadlines cannot overflow `Instant` (ten years).
const MAX_TOKEN_TTL: u64 = 10 * 365 * 24 * 3600;

/// An access token the mock handed out.
#[derive(Clone, Debug)]
struct IssuedToken {
    appid: String,
    expires_at: Instant,
    invalidated: bool,
}

/// Every access token issued, and which one is current per appid for each API. Methods take
/// `now` so that tests can move the clock instead of sleeping.
#[derive(Debug, Default)]
pub(super) struct TokenBook {
    issued: HashMap<String, IssuedToken>,
    /// appid -> its current stable token.
    stable: HashMap<String, String>,
    /// appid -> its latest classic token.
    classic: HashMap<String, String>,
}

/// What `stable_token` does with the appid's current token.
#[derive(Debug, PartialEq, Eq)]
enum StableAnswer {
    /// Hand it out again; it has `expires_in` whole seconds left.
    Reuse { expires_in: u64 },
    /// Mint a new one.
    Mint,
}

/// The stable token rule. `left` is how long the current token still lives, `None` when there
/// is none or it was invalidated or has expired. It is handed out again until only the renewal
/// window (`ttl / 24`: 5 minutes of 2 hours) is left, so that callers refreshing "a little
/// before expiry" get a fresh token rather than the same dying one.
fn stable_rule(left: Option<Duration>, ttl: u64, force: bool) -> StableAnswer {
    match left {
        Some(left) if !force && left > renew_window(ttl) => StableAnswer::Reuse {
            expires_in: left.as_secs().max(1),
        },
        _ => StableAnswer::Mint,
    }
}

fn renew_window(ttl: u64) -> Duration {
    Duration::from_secs(ttl / 24)
}

/// How long the previous classic token keeps working after a new one was fetched.
fn classic_overlap(ttl: u64) -> Duration {
    renew_window(ttl).min(MAX_OVERLAP)
}

/// `now + after`, saturating at `now` in the (clamped, so theoretical) case of overflow.
fn deadline(now: Instant, after: Duration) -> Instant {
    now.checked_add(after).unwrap_or(now)
}

/// Whether `token` may call an API at `now`: the appid it was issued for, or the errcode.
fn token_verdict(token: Option<&IssuedToken>, now: Instant) -> Result<&str, i64> {
    match token {
        None => Err(40001),
        Some(token) if token.invalidated => Err(40001),
        Some(token) if now >= token.expires_at => Err(42001),
        Some(token) => Ok(&token.appid),
    }
}

impl TokenBook {
    fn mint(&mut self, appid: &str, ttl: u64, now: Instant) -> String {
        let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let expires_at = deadline(now, Duration::from_secs(ttl.min(MAX_TOKEN_TTL)));
        self.issued.insert(
            token.clone(),
            IssuedToken {
                appid: appid.to_owned(),
                expires_at,
                invalidated: false,
            },
        );
        token
    }

    /// `stable_token`: the token to hand out and its `expires_in`.
    pub(super) fn stable(
        &mut self,
        appid: &str,
        force: bool,
        ttl: u64,
        now: Instant,
    ) -> (String, u64) {
        let current = self
            .stable
            .get(appid)
            .and_then(|token| Some((token, self.issued.get(token)?)));
        let left = current
            .filter(|(_, issued)| !issued.invalidated)
            .and_then(|(_, issued)| issued.expires_at.checked_duration_since(now))
            .filter(|left| !left.is_zero());
        if let (StableAnswer::Reuse { expires_in }, Some((token, _))) =
            (stable_rule(left, ttl, force), current)
        {
            return (token.clone(), expires_in);
        }
        if force {
            let previous = self.stable.get(appid);
            if let Some(issued) = previous.and_then(|token| self.issued.get_mut(token)) {
                issued.invalidated = true;
            }
        }
        let token = self.mint(appid, ttl, now);
        self.stable.insert(appid.to_owned(), token.clone());
        (token, ttl)
    }

    /// `cgi-bin/token`: a new token; the previous one of `appid` lives at most the overlap more.
    pub(super) fn classic(&mut self, appid: &str, ttl: u64, now: Instant) -> String {
        let overlap_end = deadline(now, classic_overlap(ttl));
        let previous = self.classic.get(appid);
        if let Some(issued) = previous.and_then(|token| self.issued.get_mut(token)) {
            issued.expires_at = issued.expires_at.min(overlap_end);
        }
        let token = self.mint(appid, ttl, now);
        self.classic.insert(appid.to_owned(), token.clone());
        token
    }

    /// The appid `token` was issued for, or the errcode an API answers it with.
    pub(super) fn check(&self, token: &str, now: Instant) -> Result<String, i64> {
        token_verdict(self.issued.get(token), now).map(str::to_owned)
    }

    pub(super) fn invalidate_all(&mut self) {
        for issued in self.issued.values_mut() {
            issued.invalidated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_rule_reuses_until_the_renewal_window() {
        use StableAnswer::{Mint, Reuse};
        let s = Duration::from_secs;
        assert_eq!(renew_window(7200), s(300));
        assert_eq!(renew_window(48), s(2));
        assert_eq!(renew_window(23), s(0));
        assert_eq!(stable_rule(None, 7200, false), Mint);
        assert_eq!(
            stable_rule(Some(s(7200)), 7200, false),
            Reuse { expires_in: 7200 }
        );
        assert_eq!(
            stable_rule(Some(s(301)), 7200, false),
            Reuse { expires_in: 301 }
        );
        assert_eq!(stable_rule(Some(s(300)), 7200, false), Mint);
        assert_eq!(stable_rule(Some(s(7200)), 7200, true), Mint);
        assert_eq!(
            stable_rule(Some(Duration::from_millis(2001)), 48, false),
            Reuse { expires_in: 2 }
        );
        assert_eq!(stable_rule(Some(s(2)), 48, false), Mint);
        assert_eq!(stable_rule(Some(s(1)), 48, false), Mint);
        assert_eq!(
            stable_rule(Some(Duration::from_millis(300)), 1, false),
            Reuse { expires_in: 1 }
        );
        assert_eq!(classic_overlap(7200), s(300));
        assert_eq!(classic_overlap(86_400), s(300));
        assert_eq!(classic_overlap(48), s(2));
    }

    #[test]
    fn stable_token_is_renewed_inside_the_window() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let wx1 = || Ok("wx1".to_owned());
        let mut book = TokenBook::default();
        let (a, expires_in) = book.stable("wx1", false, 48, t0);
        assert_eq!(expires_in, 48);
        assert_eq!(book.stable("wx1", false, 48, at(45)), (a.clone(), 3));
        // 2 s left: not more than the window, so a new token.
        let (b, expires_in) = book.stable("wx1", false, 48, at(46));
        assert_ne!(a, b);
        assert_eq!(expires_in, 48);
        assert_eq!(book.stable("wx1", false, 48, at(47)), (b.clone(), 47));
        // The old token works until its own expiry.
        assert_eq!(book.check(&a, at(47)), wx1());
        assert_eq!(book.check(&a, at(48)), Err(42001));
        // Another appid has its own token; forcing one appid leaves the other alone.
        let (c, _) = book.stable("wx2", false, 48, at(47));
        assert_ne!(c, b);
        let (d, _) = book.stable("wx1", true, 48, at(47));
        assert_ne!(d, b);
        assert_eq!(book.check(&b, at(47)), Err(40001));
        assert_eq!(book.check(&d, at(47)), wx1());
        assert_eq!(book.check(&c, at(47)), Ok("wx2".to_owned()));
        // An expired current token is replaced.
        let (e, _) = book.stable("wx1", false, 48, at(47 + 48));
        assert_ne!(e, d);
        assert_eq!(book.check("never-issued", t0), Err(40001));
    }

    #[test]
    fn classic_token_keeps_the_previous_one_for_the_overlap() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut book = TokenBook::default();
        let a = book.classic("wx1", 7200, t0);
        let b = book.classic("wx1", 7200, at(100));
        assert_ne!(a, b);
        assert_eq!(book.check(&a, at(399)), Ok("wx1".to_owned()));
        assert_eq!(book.check(&a, at(400)), Err(42001));
        assert_eq!(book.check(&b, at(400)), Ok("wx1".to_owned()));
        // A short ttl has a short overlap...
        let c = book.classic("wx2", 48, t0);
        book.classic("wx2", 48, at(10));
        assert_eq!(book.check(&c, at(11)), Ok("wx2".to_owned()));
        assert_eq!(book.check(&c, at(12)), Err(42001));
        // ...and an old token that expires before the overlap ends is not extended.
        let d = book.classic("wx3", 48, t0);
        book.classic("wx3", 48, at(47));
        assert_eq!(book.check(&d, at(48)), Err(42001));
        // Classic fetches leave the stable token alone.
        let (s, _) = book.stable("wx1", false, 7200, at(100));
        book.classic("wx1", 7200, at(101));
        assert_eq!(book.check(&s, at(500)), Ok("wx1".to_owned()));
    }

    #[test]
    fn token_verdicts() {
        let t0 = Instant::now();
        let token = IssuedToken {
            appid: "wx1".to_owned(),
            expires_at: t0 + Duration::from_secs(10),
            invalidated: false,
        };
        assert_eq!(token_verdict(Some(&token), t0), Ok("wx1"));
        assert_eq!(
            token_verdict(Some(&token), t0 + Duration::from_millis(9999)),
            Ok("wx1")
        );
        assert_eq!(
            token_verdict(Some(&token), t0 + Duration::from_secs(10)),
            Err(42001)
        );
        assert_eq!(token_verdict(None, t0), Err(40001));
        let invalidated = IssuedToken {
            invalidated: true,
            ..token
        };
        assert_eq!(token_verdict(Some(&invalidated), t0), Err(40001));
        assert_eq!(
            token_verdict(Some(&invalidated), t0 + Duration::from_secs(20)),
            Err(40001)
        );
    }
}

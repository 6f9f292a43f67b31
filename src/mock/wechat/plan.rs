//! Code plans: what a login or phone code asks the mock to do (its `slow`/`err`/`html`/... prefixes),
//! which codes are well formed, and the ids and phone number derived from the user a code names.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Longest code the mock accepts; longer ones get errcode 40029 like any malformed code.
pub(super) const MAX_CODE_LEN: usize = 128;
/// Upper bound for `slow<ms>-` so that a typo cannot hang a test run.
const MAX_DELAY: Duration = Duration::from_millis(60_000);

/// Prefix hooks that change a successful answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Hooks {
    /// `union-`: the login answer carries a `unionid`.
    pub(super) union: bool,
    /// `fixedkey-`: the login answer carries
    /// [`SAMPLE_SESSION_KEY`](super::login::SAMPLE_SESSION_KEY).
    pub(super) fixed_key: bool,
    /// `numcc-`: the phone answer's `countryCode` is a number.
    pub(super) numeric_country_code: bool,
}

/// What a (valid-looking) code asks the mock to do, once its prefixes are read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Plan<'a> {
    /// Answer this errcode.
    Fail(i64),
    /// Answer 502 with an HTML page.
    Html,
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Succeed for the user named by `code` (the text left after the prefixes).
    Succeed { code: &'a str, hooks: Hooks },
}

/// Reads the steering prefixes off `code`: how long to wait first, then what to answer.
pub(super) fn plan(mut code: &str) -> (Duration, Plan<'_>) {
    let mut delay = Duration::ZERO;
    let mut hooks = Hooks::default();
    loop {
        if let Some((ms, rest)) = code
            .strip_prefix("slow")
            .and_then(|s| split_number(s, false))
        {
            // Too many digits for u64 is still "very slow": clamp rather than ignore.
            let ms = ms.parse::<u64>().unwrap_or(u64::MAX);
            delay = delay
                .saturating_add(Duration::from_millis(ms))
                .min(MAX_DELAY);
            code = rest;
        } else if let Some(errcode) = code
            .strip_prefix("err")
            .and_then(|s| split_number(s, true))
            .and_then(|(n, _)| n.parse::<i64>().ok())
        {
            return (delay, Plan::Fail(errcode));
        } else if code.starts_with("html-") {
            return (delay, Plan::Html);
        } else if code.starts_with("garbage-") {
            return (delay, Plan::Garbage);
        } else if let Some(rest) = code.strip_prefix("union-") {
            hooks.union = true;
            code = rest;
        } else if let Some(rest) = code.strip_prefix("fixedkey-") {
            hooks.fixed_key = true;
            code = rest;
        } else if let Some(rest) = code.strip_prefix("numcc-") {
            hooks.numeric_country_code = true;
            code = rest;
        } else {
            return (delay, Plan::Succeed { code, hooks });
        }
    }
}

/// Splits `<digits>-<rest>` (with an optional leading `-` when `signed`) into the number's text
/// and `<rest>`; `None` when `s` does not start that way.
fn split_number(s: &str, signed: bool) -> Option<(&str, &str)> {
    let sign_len = usize::from(signed && s.starts_with('-'));
    let digits = s
        .get(sign_len..)?
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if digits == 0 {
        return None;
    }
    let (number, rest) = s.split_at_checked(sign_len + digits)?;
    Some((number, rest.strip_prefix('-')?))
}

/// The user a code belongs to: the text before the first `.`, or the whole code.
pub(super) fn user_of(code: &str) -> &str {
    code.split('.').next().unwrap_or(code)
}

/// A stable 28-character id: `prefix` and 27 characters of base64url(sha256(material)).
fn derive_id(prefix: char, material: &str) -> String {
    let encoded = URL_SAFE_NO_PAD.encode(Sha256::digest(material.as_bytes()));
    std::iter::once(prefix)
        .chain(encoded.chars().take(27))
        .collect()
}

pub(super) fn openid(appid: &str, user: &str) -> String {
    derive_id('o', &format!("{appid}:{user}"))
}

pub(super) fn unionid(user: &str) -> String {
    derive_id('u', &format!("union:{user}"))
}

/// A stable mainland mobile number for `user`: `138` and 8 digits taken from sha256(user).
pub(super) fn pure_phone_number(user: &str) -> String {
    let digest = Sha256::digest(user.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    format!("138{:08}", u64::from_be_bytes(first) % 100_000_000)
}

fn valid_code_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

pub(super) fn valid_code(code: &str) -> bool {
    code.len() <= MAX_CODE_LEN && code.bytes().all(valid_code_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_reads_prefixes() {
        let login = |code, union| Plan::Succeed {
            code,
            hooks: Hooks {
                union,
                ..Hooks::default()
            },
        };
        assert_eq!(plan("alice.1"), (Duration::ZERO, login("alice.1", false)));
        assert_eq!(plan("err-1-x"), (Duration::ZERO, Plan::Fail(-1)));
        assert_eq!(plan("err40029-"), (Duration::ZERO, Plan::Fail(40029)));
        assert_eq!(
            plan("slow200-union-alice.1"),
            (Duration::from_millis(200), login("alice.1", true))
        );
        assert_eq!(
            plan("union-slow5-err45011-x"),
            (Duration::from_millis(5), Plan::Fail(45011))
        );
        assert_eq!(
            plan("slow99999999999999999999999-html-x"),
            (MAX_DELAY, Plan::Html)
        );
        assert_eq!(plan("garbage-"), (Duration::ZERO, Plan::Garbage));
        let all = Hooks {
            union: true,
            fixed_key: true,
            numeric_country_code: true,
        };
        assert_eq!(
            plan("numcc-slow7-fixedkey-union-zoe.1"),
            (
                Duration::from_millis(7),
                Plan::Succeed {
                    code: "zoe.1",
                    hooks: all
                }
            )
        );
        // Not prefixes: plain codes that happen to start alike.
        assert_eq!(plan("slowpoke"), (Duration::ZERO, login("slowpoke", false)));
        assert_eq!(plan("slow12"), (Duration::ZERO, login("slow12", false)));
        assert_eq!(plan("err-x"), (Duration::ZERO, login("err-x", false)));
        assert_eq!(plan("errand.1"), (Duration::ZERO, login("errand.1", false)));
        assert_eq!(
            plan("err99999999999999999999-x"),
            (Duration::ZERO, login("err99999999999999999999-x", false))
        );
        assert_eq!(plan("htmlx"), (Duration::ZERO, login("htmlx", false)));
        assert_eq!(plan("numccx"), (Duration::ZERO, login("numccx", false)));
        assert_eq!(plan("fixedkey"), (Duration::ZERO, login("fixedkey", false)));
    }

    #[test]
    fn ids_are_stable_and_28_chars() {
        assert_eq!(openid("wx1", "alice"), openid("wx1", "alice"));
        assert_ne!(openid("wx1", "alice"), openid("wx2", "alice"));
        assert_eq!(openid("wx1", "alice").len(), 28);
        assert_eq!(unionid("alice").len(), 28);
        assert_eq!(user_of("alice.1.2"), "alice");
        assert_eq!(user_of("alice"), "alice");
        assert_eq!(user_of(".x"), "");
    }

    #[test]
    fn phones_are_stable_mainland_numbers() {
        assert_eq!(pure_phone_number("alice"), pure_phone_number("alice"));
        assert_ne!(pure_phone_number("alice"), pure_phone_number("bob"));
        for user in ["", "alice", "a-very-long-user-name_with.dots"] {
            let phone = pure_phone_number(user);
            assert_eq!(phone.len(), 11, "{phone}");
            assert!(phone.starts_with("138") && phone.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}

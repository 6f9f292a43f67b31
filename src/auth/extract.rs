//! Where a client's token is found: `Authorization: Bearer <jwt>` (scheme in any case), a bare
//! JWT in `Authorization` (common in mini program code), or a `token` header. Borrowed, never
//! copied.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// Nothing usable was sent: answer 10119.
    Missing,
    /// Something that should be a token: verify it.
    Token(&'a str),
    /// Something was sent that can never be a token (not ASCII, sent twice): answer 10200.
    Unusable,
}

/// As a `HeaderName`: a lookup by `&str` parses the name again each time.
static TOKEN_HEADER: HeaderName = HeaderName::from_static("token");

/// Find the token in request headers.
pub fn from_headers(headers: &HeaderMap) -> Presented<'_> {
    match single(headers, &AUTHORIZATION) {
        Presented::Token(value) => match from_authorization(value) {
            Presented::Missing => {}
            found => return found,
        },
        Presented::Unusable => return Presented::Unusable,
        Presented::Missing => {}
    }
    single(headers, &TOKEN_HEADER)
}

/// The one value of a header, trimmed; sent twice or not visible ASCII is unusable.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Presented<'a> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Presented::Missing;
    };
    if values.next().is_some() {
        return Presented::Unusable;
    }
    as_token(first)
}

fn as_token(value: &HeaderValue) -> Presented<'_> {
    match value.to_str() {
        Ok(s) => match s.trim() {
            "" => Presented::Missing,
            t => Presented::Token(t),
        },
        Err(_) => Presented::Unusable,
    }
}

/// `Bearer <token>` (any case), or a bare token without a scheme. Another scheme (Basic,
/// Digest...) is not ours: fall back to the `token` header.
fn from_authorization(value: &str) -> Presented<'_> {
    match value.split_once([' ', '\t']) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => match rest.trim() {
            "" => Presented::Missing,
            t => Presented::Token(t),
        },
        Some(_) => Presented::Missing,
        None if value.eq_ignore_ascii_case("bearer") => Presented::Missing,
        None => Presented::Token(value),
    }
}

/// The token of a JSON body `{"token": "..."}` (the tutorial's `/isAuth`): absent, null or empty
/// is missing; any other non-string is unusable.
pub fn from_json_field(value: Option<&serde_json::Value>) -> Presented<'_> {
    match value {
        None | Some(serde_json::Value::Null) => Presented::Missing,
        Some(serde_json::Value::String(s)) => match s.trim() {
            "" => Presented::Missing,
            t => Presented::Token(t),
        },
        Some(_) => Presented::Unusable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_in_any_case() {
        for v in ["Bearer abc", "bearer abc", "BEARER   abc ", "Bearer\tabc"] {
            let h = headers(&[("authorization", v.as_bytes())]);
            assert_eq!(from_headers(&h), Presented::Token("abc"), "{v:?}");
        }
    }

    #[test]
    fn bare_token_and_token_header() {
        let h = headers(&[("authorization", b"a.b.c")]);
        assert_eq!(from_headers(&h), Presented::Token("a.b.c"));
        let h = headers(&[("token", b"a.b.c")]);
        assert_eq!(from_headers(&h), Presented::Token("a.b.c"));
        let h = headers(&[("Token", b" a.b.c ")]);
        assert_eq!(from_headers(&h), Presented::Token("a.b.c"));
    }

    #[test]
    fn authorization_wins_over_token_header() {
        let h = headers(&[("authorization", b"Bearer one"), ("token", b"two")]);
        assert_eq!(from_headers(&h), Presented::Token("one"));
    }

    #[test]
    fn other_schemes_fall_back_to_token_header() {
        let h = headers(&[("authorization", b"Basic dXNlcjpwYXNz")]);
        assert_eq!(from_headers(&h), Presented::Missing);
        let h = headers(&[("authorization", b"Basic dXNlcjpwYXNz"), ("token", b"t")]);
        assert_eq!(from_headers(&h), Presented::Token("t"));
    }

    #[test]
    fn nothing_usable_is_missing() {
        assert_eq!(from_headers(&HeaderMap::new()), Presented::Missing);
        for v in [&b""[..], b"Bearer", b"Bearer ", b"bearer   ", b"   "] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(from_headers(&h), Presented::Missing, "{v:?}");
        }
        let h = headers(&[("token", b"")]);
        assert_eq!(from_headers(&h), Presented::Missing);
    }

    #[test]
    fn duplicates_and_non_ascii_are_unusable() {
        let h = headers(&[
            ("authorization", b"Bearer a"),
            ("authorization", b"Bearer b"),
        ]);
        assert_eq!(from_headers(&h), Presented::Unusable);
        let h = headers(&[("token", b"a"), ("token", b"b")]);
        assert_eq!(from_headers(&h), Presented::Unusable);
        let h = headers(&[("authorization", b"Bearer \xff\xfe")]);
        assert_eq!(from_headers(&h), Presented::Unusable);
    }

    #[test]
    fn json_field() {
        let v = serde_json::json!({"token": "t", "n": 5, "e": "", "z": null});
        assert_eq!(from_json_field(v.get("token")), Presented::Token("t"));
        assert_eq!(from_json_field(v.get("absent")), Presented::Missing);
        assert_eq!(from_json_field(v.get("e")), Presented::Missing);
        assert_eq!(from_json_field(v.get("z")), Presented::Missing);
        assert_eq!(from_json_field(v.get("n")), Presented::Unusable);
    }
}

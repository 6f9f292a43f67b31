//! The parsers of the gateway's own endpoints (/auth, /isAuth, /auth/refresh, /auth/phone...):
//! any method, query, content type and body gives a value or a rejection (never a panic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxgate::auth::endpoints::{self as login, EndpointRequest};

fuzz_target!(|data: &[u8]| {
    let (selector, rest) = data.split_first().unwrap_or((&0, &[]));
    let (query, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (std::str::from_utf8(&rest[..i]).ok(), &rest[i + 1..]),
        None => (None, rest),
    };
    let method = if selector & 1 == 0 {
        http::Method::POST
    } else {
        http::Method::GET
    };
    let content_type: Option<&[u8]> = match selector >> 1 & 3 {
        0 => None,
        1 => Some(b"application/json"),
        2 => Some(b"application/x-www-form-urlencoded; charset=utf-8"),
        _ => Some(b"text/plain"),
    };
    let req = EndpointRequest {
        method: &method,
        query,
        content_type,
        body,
    };
    let _ = login::login_code(&req);
    let _ = login::refresh_token(&req);
    if let Ok(json) = login::verify_body(&req) {
        let _ = login::verify_token(json.as_ref(), &http::HeaderMap::new());
    }
    if let Ok(json) = login::post_body(&req) {
        let _ = login::string_field(&json, "code", wxgate::reply::Reject::LoginCodeMissing);
        let _ = login::string_field(
            &json,
            "encryptedData",
            wxgate::reply::Reject::DecryptFieldsMissing,
        );
    }
});

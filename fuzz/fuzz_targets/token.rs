//! Token extraction and verification: any header bytes, and any header/claims JSON signed with
//! the real key, must give a verdict (never a panic).
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wxgate::auth::extract::{self, Presented};
use wxgate::auth::jwt::Tokens;
use wxgate::config::JwtConfig;

const KEY: &str = "fuzz-key-fuzz-key-fuzz-key-fuzz-key!";

fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(|| Tokens::new(&JwtConfig::hs256(KEY), &["wxfuzz"]))
}

fuzz_target!(|data: &[u8]| {
    let t = tokens();
    // As header bytes, through extraction.
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value.clone());
        headers.append("token", value);
        if let Presented::Token(token) = extract::from_headers(&headers) {
            let _ = t.verify(token);
        }
    }
    // As a token.
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = t.verify(s);
    }
    // As header and claims JSON, correctly signed: only the claims' content decides.
    if let Some(split) = data.iter().position(|b| *b == 0) {
        let (header, claims) = (&data[..split], &data[split + 1..]);
        let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let key = jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes());
        if let Ok(sig) =
            jsonwebtoken::crypto::sign(msg.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        {
            let _ = t.verify(&format!("{msg}.{sig}"));
        }
    }
});

//! Our tokens: HS256 JWTs with the algorithm pinned from config (the token header is never
//! trusted), `exp` required and numeric, `aud` = the app's appid, `iss` = the configured issuer.
//! The claims carry who the user is and which session, never the session_key.
//! Keys, header and validation are built once at start-up.

use super::Identity;
use crate::config::{JwtAlgorithm, JwtConfig};
use crate::reply::TokenProblem;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What we sign.
#[derive(Debug, Serialize)]
struct Claims {
    /// The openid.
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unionid: Option<String>,
    /// The session this token belongs to.
    sid: String,
    iat: u64,
    exp: u64,
    iss: String,
    aud: String,
}

/// What verification keeps: jsonwebtoken checks exp/nbf/iss/aud on its own borrowed view, so
/// only the identity is deserialised (no allocation for claims we do not use). `exp` is here
/// too, as an integer: the library alone would accept a fractional one.
#[derive(Debug, Deserialize)]
struct Verified {
    sub: String,
    #[serde(default)]
    unionid: Option<String>,
    sid: String,
    exp: u64,
    aud: String,
}

/// The longest token worth decoding.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Tokens remembered after a full verification (~2 MB at most).
const CACHE_ENTRIES: usize = 4096;

/// Tokens that passed a full verification, by their exact text (signature included, so only the
/// very same token can hit). A hit still checks `exp`; revocation is checked by the caller on
/// every request. Negative results are not kept.
struct VerifiedCache {
    entries: RwLock<HashMap<Box<str>, (Identity, u64)>>,
}

impl VerifiedCache {
    fn get(&self, token: &str) -> Option<(Identity, u64)> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(token).cloned()
    }

    fn insert(&self, token: &str, identity: &Identity, exp: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            // Crude but bounded: start over (a miss only costs one full verification).
            entries.clear();
        }
        entries.insert(token.into(), (identity.clone(), exp));
    }
}

pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    header: Header,
    validation: Validation,
    ttl: Duration,
    leeway: Duration,
    issuer: String,
    /// The appids a token's `aud` may name (one per mini program).
    audiences: Vec<std::sync::Arc<str>>,
    verified: VerifiedCache,
}

/// A freshly signed token.
pub struct Signed {
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Tokens {
    /// Keys for `config`, accepting tokens of any of `appids` (each token names one in `aud`).
    pub fn new(config: &JwtConfig, appids: &[&str]) -> Self {
        let algorithm = match config.algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
        };
        let secret = config.secret.expose().as_bytes();
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.set_audience(appids);
        validation.set_issuer(&[config.issuer.as_str()]);
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            header: Header::new(algorithm),
            validation,
            ttl: config.ttl,
            leeway: config.leeway,
            issuer: config.issuer.clone(),
            audiences: appids.iter().map(|a| std::sync::Arc::from(*a)).collect(),
            verified: VerifiedCache {
                entries: RwLock::new(HashMap::new()),
            },
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long after signing a token can still be accepted (ttl + leeway).
    pub fn max_lifetime(&self) -> Duration {
        self.ttl + self.leeway
    }

    /// Sign a token for `identity`, valid for the configured ttl from `now` (unix seconds).
    pub fn sign(&self, identity: &Identity, now: u64) -> Result<Signed, String> {
        self.sign_for(identity, now, self.ttl)
    }

    /// Sign with an explicit lifetime (`wxgate token --ttl`).
    pub fn sign_for(&self, identity: &Identity, now: u64, ttl: Duration) -> Result<Signed, String> {
        let expires_in = ttl.as_secs();
        let claims = Claims {
            sub: identity.openid.clone(),
            unionid: identity.unionid.clone(),
            sid: identity.sid.clone(),
            iat: now,
            exp: now.saturating_add(expires_in),
            iss: self.issuer.clone(),
            aud: identity.appid.to_string(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.encoding)
            .map(|token| Signed { token, expires_in })
            .map_err(|e| format!("cannot sign a token: {e}"))
    }

    /// Verify signature, algorithm, exp/nbf (with leeway), issuer and audience; a token that
    /// passed before only has its `exp` checked again.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenProblem> {
        self.verify_at(token, unix_now())
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Identity, TokenProblem> {
        if token.len() > MAX_TOKEN_BYTES {
            // Ours are a few hundred bytes: do not spend hashing, base64 or JSON on a giant.
            return Err(TokenProblem::Malformed);
        }
        if let Some((identity, exp)) = self.verified.get(token) {
            // jsonwebtoken's rule: expired when exp < now - leeway.
            return if exp.saturating_add(self.leeway.as_secs()) < now {
                Err(TokenProblem::Expired)
            } else {
                Ok(identity)
            };
        }
        let (identity, exp) = self.verify_fully(token)?;
        self.verified.insert(token, &identity, exp);
        Ok(identity)
    }

    /// The full check, without the cache (benchmarks compare the two).
    pub fn verify_uncached(&self, token: &str) -> Result<Identity, TokenProblem> {
        self.verify_fully(token).map(|(identity, _)| identity)
    }

    fn verify_fully(&self, token: &str) -> Result<(Identity, u64), TokenProblem> {
        if token.len() > MAX_TOKEN_BYTES {
            // Ours are a few hundred bytes: do not spend base64 and JSON work on a giant.
            return Err(TokenProblem::Malformed);
        }
        let data = jsonwebtoken::decode::<Verified>(token, &self.decoding, &self.validation)
            .map_err(|e| problem(e.kind()))?;
        let c = data.claims;
        if c.sub.is_empty() || c.sid.is_empty() {
            return Err(TokenProblem::MissingClaim);
        }
        let exp = c.exp;
        // jsonwebtoken checked `aud` against the same list.
        let appid = self
            .audiences
            .iter()
            .find(|a| ***a == *c.aud)
            .cloned()
            .ok_or(TokenProblem::WrongAudience)?;
        Ok((
            Identity {
                openid: c.sub,
                unionid: c.unionid,
                sid: c.sid,
                appid,
            },
            exp,
        ))
    }
}

fn problem(kind: &ErrorKind) -> TokenProblem {
    match kind {
        ErrorKind::ExpiredSignature => TokenProblem::Expired,
        ErrorKind::ImmatureSignature => TokenProblem::NotYetValid,
        ErrorKind::InvalidSignature => TokenProblem::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => TokenProblem::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(_) => TokenProblem::MissingClaim,
        ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => TokenProblem::WrongAudience,
        _ => TokenProblem::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use hmac_sign::sign_raw;

    const KEY: &str = "0123456789abcdef0123456789abcdef-test";

    fn tokens() -> Tokens {
        Tokens::new(
            &JwtConfig {
                algorithm: JwtAlgorithm::HS256,
                secret: Secret::new(KEY),
                ttl: Duration::from_secs(7200),
                leeway: Duration::ZERO,
                issuer: "wxgate".into(),
            },
            &["wxapp"],
        )
    }

    fn alice() -> Identity {
        Identity {
            openid: "o-alice".into(),
            unionid: Some("u-alice".into()),
            sid: "sid1".into(),
            appid: "wxapp".into(),
        }
    }

    /// Build a token by hand from raw header and claims JSON, signed with HS256 over `KEY`.
    mod hmac_sign {
        use super::*;
        pub fn sign_raw(header: &str, claims: &str, key: &str) -> String {
            let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
            let sig = hmac_sha256(key.as_bytes(), msg.as_bytes());
            format!("{msg}.{}", B64.encode(sig))
        }
        fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
            // HMAC-SHA256 from its definition, so the test does not trust the code under test.
            use sha2::{Digest, Sha256};
            let mut k = [0u8; 64];
            if key.len() > 64 {
                k[..32].copy_from_slice(&Sha256::digest(key));
            } else {
                k[..key.len()].copy_from_slice(key);
            }
            let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
            let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
            let inner = Sha256::new()
                .chain_update(&ipad)
                .chain_update(msg)
                .finalize();
            Sha256::new()
                .chain_update(&opad)
                .chain_update(inner)
                .finalize()
                .to_vec()
        }
    }

    fn claims(exp: &str) -> String {
        format!(r#"{{"sub":"o1","sid":"s1","iat":1,"exp":{exp},"iss":"wxgate","aud":"wxapp"}}"#)
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn round_trip_and_no_session_key_in_claims() {
        let t = tokens();
        let signed = t.sign(&alice(), unix_now()).unwrap();
        assert_eq!(signed.expires_in, 7200);
        assert_eq!(t.verify(&signed.token).unwrap(), alice());
        let payload = signed.token.split('.').nth(1).unwrap();
        let json = String::from_utf8(B64.decode(payload).unwrap()).unwrap();
        assert!(!json.contains("session_key"), "{json}");
        assert!(json.contains("\"sub\":\"o-alice\""), "{json}");
    }

    #[test]
    fn hand_built_token_verifies() {
        let far = (unix_now() + 3600).to_string();
        let token = sign_raw(HS256, &claims(&far), KEY);
        assert_eq!(tokens().verify(&token).unwrap().openid, "o1");
    }

    #[test]
    fn expired_and_future_tokens() {
        let t = tokens();
        let past = sign_raw(HS256, &claims(&(unix_now() - 10).to_string()), KEY);
        assert_eq!(t.verify(&past), Err(TokenProblem::Expired));
        let nbf = format!(
            r#"{{"sub":"o1","sid":"s1","iat":1,"exp":{},"nbf":{},"iss":"wxgate","aud":"wxapp"}}"#,
            unix_now() + 3600,
            unix_now() + 600
        );
        assert_eq!(
            t.verify(&sign_raw(HS256, &nbf, KEY)),
            Err(TokenProblem::NotYetValid)
        );
    }

    #[test]
    fn exp_must_be_present_and_numeric() {
        let t = tokens();
        let far = unix_now() + 3600;
        let no_exp = r#"{"sub":"o1","sid":"s1","iat":1,"iss":"wxgate","aud":"wxapp"}"#;
        assert!(t.verify(&sign_raw(HS256, no_exp, KEY)).is_err());
        let string_exp = claims(&format!("\"{far}\""));
        assert!(t.verify(&sign_raw(HS256, &string_exp, KEY)).is_err());
        let float_exp = claims(&format!("{far}.5"));
        assert!(t.verify(&sign_raw(HS256, &float_exp, KEY)).is_err());
    }

    #[test]
    fn algorithm_comes_from_config_not_the_header() {
        let t = tokens();
        let far = claims(&(unix_now() + 3600).to_string());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS384","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"ES256","typ":"JWT"}"#,
        ] {
            let token = sign_raw(header, &far, KEY);
            assert!(t.verify(&token).is_err(), "{header}");
        }
        let unsigned = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none"}"#),
            B64.encode(far.as_bytes())
        );
        assert!(t.verify(&unsigned).is_err());
    }

    #[test]
    fn wrong_key_audience_or_issuer() {
        let t = tokens();
        let far = (unix_now() + 3600).to_string();
        let forged = sign_raw(HS256, &claims(&far), "another-key-another-key-another-key");
        assert_eq!(t.verify(&forged), Err(TokenProblem::BadSignature));
        let other_app = claims(&far).replace("wxapp", "wxother");
        assert_eq!(
            t.verify(&sign_raw(HS256, &other_app, KEY)),
            Err(TokenProblem::WrongAudience)
        );
        let other_iss = claims(&far).replace("\"wxgate\"", "\"evil\"");
        assert_eq!(
            t.verify(&sign_raw(HS256, &other_iss, KEY)),
            Err(TokenProblem::WrongAudience)
        );
    }

    #[test]
    fn cached_tokens_still_expire() {
        let t = tokens();
        let now = unix_now();
        let signed = t.sign(&alice(), now).unwrap();
        assert_eq!(t.verify_at(&signed.token, now), Ok(alice()));
        assert_eq!(
            t.verify_at(&signed.token, now + 60),
            Ok(alice()),
            "from the cache"
        );
        assert_eq!(
            t.verify_at(&signed.token, now + signed.expires_in + 1),
            Err(TokenProblem::Expired)
        );
        // Only the exact token hits: one changed character is verified in full, and fails.
        let mut forged = signed.token.clone();
        forged.pop();
        forged.push('A');
        assert!(t.verify_at(&forged, now).is_err() || forged == signed.token);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let t = tokens();
        for junk in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b",
            "a.b.c.d",
            "eyJ.eyJ.sig",
            "\u{0}\u{1}",
            "Bearer x",
            &"A".repeat(10_000),
        ] {
            assert!(t.verify(junk).is_err(), "{junk:?}");
        }
        let good = t.sign(&alice(), unix_now()).unwrap().token;
        assert!(t.verify(&format!("{good}x")).is_err());
        assert!(t.verify(&format!("{good}.x")).is_err());
        assert!(t.verify(&good[..good.len() - 3]).is_err());
    }
}

//! Our tokens: JWTs signed with the configured key (HS256 secret, ES256 or EdDSA private key).
//! The algorithm is pinned by the key, never taken from the token header: a header `kid` picks
//! the key (the current one or a verify-only one), and its `alg` must be that key's. `exp` is
//! required and numeric, `aud` = the app's appid, `iss` = the configured issuer. The claims carry
//! who the user is and which session, never the session_key.
//! Tokens another backend issued (`[[jwt.accept]]`) are tried only when ours refuse a token.
//! Keys, headers, validations and the JWKS document are built once per `[jwt]` configuration.

use super::Identity;
use crate::config::{AcceptConfig, JwtAlgorithm, JwtConfig, KeyMaterial};
use crate::metrics::METRICS;
use crate::reply::TokenProblem;
use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
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
    /// When present, an integer, and not in the future (beyond the leeway).
    #[serde(default)]
    iat: Option<u64>,
    aud: String,
}

/// The longest token worth decoding.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How far ahead of this instance's clock a token's `iat` may be at least (see
/// `Tokens::not_issued_later`).
const IAT_SKEW: Duration = Duration::from_secs(60);

/// Tokens remembered after a full verification (~2 MB at most).
const CACHE_ENTRIES: usize = 4096;

/// Tokens that passed a full verification, by their exact text (signature included, so only the
/// very same token can hit). A hit still checks `exp`; revocation is checked by the caller on
/// every request. Negative results are not kept. Hashed with foldhash (seeded at random): the
/// default SipHash took ~800 instructions a lookup for a token of ~250 bytes, a sixtieth of a
/// request's; only tokens the gateway signed (or a configured key did) are ever stored, so a
/// client cannot choose colliding keys.
struct VerifiedCache {
    entries: RwLock<HashMap<Box<str>, Passed, foldhash::fast::RandomState>>,
}

/// What a full verification established.
#[derive(Clone)]
struct Passed {
    /// Shared with every request that presents the token: a hit copies no string.
    identity: Arc<Identity>,
    exp: u64,
    /// Another backend's token (`[[jwt.accept]]`): refused after this instant.
    until: Option<u64>,
}

impl VerifiedCache {
    fn get(&self, token: &str) -> Option<Passed> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(token).cloned()
    }

    fn insert(&self, token: &str, passed: &Passed) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            // Crude but bounded: start over (a miss only costs one full verification).
            entries.clear();
        }
        entries.insert(token.into(), passed.clone());
    }
}

/// One key tokens are verified with, its algorithm pinned.
struct Key {
    algorithm: Algorithm,
    decoding: DecodingKey,
    validation: Validation,
}

/// One `[[jwt.accept]]` entry, ready to verify.
struct Legacy {
    decoding: DecodingKey,
    validation: Validation,
    openid_claim: String,
    until: u64,
    /// Its app (`appid`), if the entry names one.
    appid: Option<String>,
}

pub struct Tokens {
    encoding: EncodingKey,
    header: Header,
    /// The signing key's public half (or secret): tokens without a `kid`.
    current: Key,
    /// Every key with a kid: the current one (when it has a kid) and the verify-only ones.
    by_kid: Vec<(String, Key)>,
    legacy: Vec<Legacy>,
    /// The JWK Set of the public keys; `None` with HS256 (a secret is never published).
    jwks: Option<Bytes>,
    ttl: Duration,
    leeway: Duration,
    issuer: String,
    /// The appids a token's `aud` may name (one per mini program).
    audiences: Vec<Arc<str>>,
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

fn algorithm_of(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// The verifying key for material validation loaded (a private key verifies with its public
/// half). Material that does not fit (validation refuses it first) yields a key nothing
/// verifies with, never a panic.
fn decoding_key(algorithm: JwtAlgorithm, key: &KeyMaterial) -> DecodingKey {
    let raw = match key {
        KeyMaterial::Secret(s) => return DecodingKey::from_secret(s.expose().as_bytes()),
        KeyMaterial::Private(der) => {
            crate::keys::public_of_private(algorithm, der).unwrap_or_default()
        }
        KeyMaterial::Public(raw) => raw.clone(),
    };
    match algorithm {
        JwtAlgorithm::ES256 => DecodingKey::from_ec_der(&raw),
        _ => DecodingKey::from_ed_der(&raw),
    }
}

/// The raw public key of `key`, if it has one to publish.
fn public_raw(algorithm: JwtAlgorithm, key: &KeyMaterial) -> Option<Vec<u8>> {
    match key {
        KeyMaterial::Secret(_) => None,
        KeyMaterial::Private(der) => crate::keys::public_of_private(algorithm, der).ok(),
        KeyMaterial::Public(raw) => Some(raw.clone()),
    }
}

impl Tokens {
    /// Keys for `config`, accepting tokens of any of `appids` (each token names one in `aud`).
    pub fn new(config: &JwtConfig, appids: &[&str]) -> Self {
        let algorithm = algorithm_of(config.algorithm);
        let encoding = match (&config.key, config.algorithm) {
            (KeyMaterial::Private(der), JwtAlgorithm::ES256) => EncodingKey::from_ec_der(der),
            (KeyMaterial::Private(der), _) => EncodingKey::from_ed_der(der),
            (KeyMaterial::Secret(s), _) => EncodingKey::from_secret(s.expose().as_bytes()),
            // Validation never lets a public key sign; if it did, signing fails, nothing panics.
            (KeyMaterial::Public(_), _) => EncodingKey::from_ed_der(&[]),
        };
        let key = |alg: JwtAlgorithm, material: &KeyMaterial| {
            let algorithm = algorithm_of(alg);
            let mut validation = Validation::new(algorithm);
            validation.algorithms = vec![algorithm];
            validation.leeway = config.leeway.as_secs();
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
            validation.set_audience(appids);
            validation.set_issuer(&[config.issuer.as_str()]);
            Key {
                algorithm,
                decoding: decoding_key(alg, material),
                validation,
            }
        };
        let mut by_kid = Vec::new();
        if let Some(kid) = &config.kid {
            by_kid.push((kid.clone(), key(config.algorithm, &config.key)));
        }
        for vk in &config.verify_keys {
            by_kid.push((vk.kid.clone(), key(vk.algorithm, &vk.key)));
        }
        let mut header = Header::new(algorithm);
        header.kid = config.kid.clone();
        Tokens {
            encoding,
            header,
            current: key(config.algorithm, &config.key),
            by_kid,
            legacy: config
                .accept
                .iter()
                .map(|a| legacy(a, config.leeway))
                .collect(),
            jwks: jwks(config),
            ttl: config.ttl,
            leeway: config.leeway,
            issuer: config.issuer.clone(),
            audiences: appids.iter().map(|a| Arc::from(*a)).collect(),
            verified: VerifiedCache {
                entries: RwLock::new(HashMap::default()),
            },
        }
    }

    /// The JWK Set document (`GET /.well-known/jwks.json`); `None` with HS256.
    pub fn jwks(&self) -> Option<&Bytes> {
        self.jwks.as_ref()
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
    pub fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenProblem> {
        self.verify_at(token, unix_now())
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Arc<Identity>, TokenProblem> {
        if token.len() > MAX_TOKEN_BYTES {
            // Ours are a few hundred bytes: do not spend hashing, base64 or JSON on a giant.
            return Err(TokenProblem::Malformed);
        }
        if let Some(passed) = self.verified.get(token) {
            return self.still_valid(passed, now);
        }
        let passed = self.verify_fully(token, now)?;
        self.verified.insert(token, &passed);
        self.still_valid(passed, now)
    }

    /// What a cache hit (and a fresh verification) checks again: `exp`, and a migration
    /// window's end.
    fn still_valid(&self, passed: Passed, now: u64) -> Result<Arc<Identity>, TokenProblem> {
        // jsonwebtoken's rule: expired when exp < now - leeway.
        if passed.exp.saturating_add(self.leeway.as_secs()) < now {
            return Err(TokenProblem::Expired);
        }
        if let Some(until) = passed.until {
            if now > until {
                return Err(TokenProblem::Expired);
            }
            METRICS.auth_legacy.inc();
        }
        Ok(passed.identity)
    }

    /// The full check, without the cache (benchmarks compare the two).
    pub fn verify_uncached(&self, token: &str) -> Result<Arc<Identity>, TokenProblem> {
        let now = unix_now();
        self.verify_fully(token, now)
            .and_then(|passed| self.still_valid(passed, now))
    }

    fn verify_fully(&self, token: &str, now: u64) -> Result<Passed, TokenProblem> {
        if token.len() > MAX_TOKEN_BYTES {
            // Ours are a few hundred bytes: do not spend base64 and JSON work on a giant.
            return Err(TokenProblem::Malformed);
        }
        match self.verify_ours(token, now) {
            Ok((identity, exp)) => Ok(Passed {
                identity: Arc::new(identity),
                exp,
                until: None,
            }),
            Err(ours) if self.legacy.is_empty() => Err(ours),
            Err(ours) => self.verify_legacy(token, now, ours),
        }
    }

    /// The key the header names (never its algorithm alone): a `kid` picks the key, no `kid`
    /// means the current key; the header's `alg` must then be that key's.
    fn key_for(&self, token: &str) -> Result<&Key, TokenProblem> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| problem(e.kind()))?;
        let key = match &header.kid {
            None => &self.current,
            Some(kid) => self
                .by_kid
                .iter()
                .find(|(k, _)| k == kid)
                .map(|(_, key)| key)
                .ok_or(TokenProblem::UnknownKey)?,
        };
        if header.alg != key.algorithm {
            return Err(TokenProblem::WrongAlgorithm);
        }
        Ok(key)
    }

    fn verify_ours(&self, token: &str, now: u64) -> Result<(Identity, u64), TokenProblem> {
        let key = self.key_for(token)?;
        let data = jsonwebtoken::decode::<Verified>(token, &key.decoding, &key.validation)
            .map_err(|e| problem(e.kind()))?;
        let c = data.claims;
        if c.sub.is_empty() || c.sid.is_empty() {
            return Err(TokenProblem::MissingClaim);
        }
        self.not_issued_later(c.iat, now)?;
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
                values: Default::default(),
                openid: c.sub,
                unionid: c.unionid,
                sid: c.sid,
                appid,
            },
            exp,
        ))
    }

    /// A token issued later than now (past the leeway, and past [`IAT_SKEW`] whatever the
    /// leeway: another instance's clock may be ahead by a fraction of a second, which `iat`'s
    /// whole seconds round to one) was not issued by a key holder with a sane clock: refused as
    /// not yet valid, as one whose `nbf` is ahead (jsonwebtoken checks `nbf` but not `iat`).
    fn not_issued_later(&self, iat: Option<u64>, now: u64) -> Result<(), TokenProblem> {
        let skew = self.leeway.max(IAT_SKEW).as_secs();
        match iat {
            Some(iat) if iat > now.saturating_add(skew) => Err(TokenProblem::NotYetValid),
            _ => Ok(()),
        }
    }

    /// Another backend's token: each `[[jwt.accept]]` entry in turn. When none recognises
    /// the signature, the answer is `ours` (why our keys refused it).
    fn verify_legacy(
        &self,
        token: &str,
        now: u64,
        ours: TokenProblem,
    ) -> Result<Passed, TokenProblem> {
        let mut answer = ours;
        for entry in &self.legacy {
            match self.verify_with(entry, token, now) {
                Ok(passed) => return Ok(passed),
                Err(TokenProblem::BadSignature | TokenProblem::WrongAlgorithm) => {}
                Err(TokenProblem::Malformed) if answer != TokenProblem::Malformed => {}
                // Signed by that backend, but refused (expired, window over, no openid).
                Err(p) => answer = p,
            }
        }
        Err(answer)
    }

    fn verify_with(&self, entry: &Legacy, token: &str, now: u64) -> Result<Passed, TokenProblem> {
        // The claims are read into a map that is dropped here: a `session_key` in it is never
        // kept, forwarded or logged.
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &entry.decoding,
            &entry.validation,
        )
        .map_err(|e| problem(e.kind()))?;
        if now > entry.until {
            return Err(TokenProblem::Expired);
        }
        let claims = data.claims;
        // Numeric and integral, as ours.
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or(TokenProblem::MissingClaim)?;
        let iat = match claims.get("iat") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or(TokenProblem::Malformed)?),
        };
        self.not_issued_later(iat, now)?;
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let openid = text(&entry.openid_claim).ok_or(TokenProblem::MissingClaim)?;
        Ok(Passed {
            identity: Arc::new(Identity {
                values: Default::default(),
                openid,
                unionid: text("unionid"),
                // No wxgate session: refresh, logout, phone and decrypt want a real login.
                sid: String::new(),
                // The entry's app, else the first (the one-app case).
                appid: self
                    .audiences
                    .iter()
                    .find(|a| entry.appid.as_deref().is_none_or(|want| ***a == *want))
                    .cloned()
                    .unwrap_or_else(|| Arc::from("")),
            }),
            exp,
            until: Some(entry.until),
        })
    }
}

/// A `[[jwt.accept]]` entry: algorithm pinned, `exp` required, no `aud`/`iss` (a hand-written
/// backend rarely sets them).
fn legacy(entry: &AcceptConfig, leeway: Duration) -> Legacy {
    let algorithm = algorithm_of(entry.algorithm);
    let mut validation = Validation::new(algorithm);
    validation.algorithms = vec![algorithm];
    validation.leeway = leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    Legacy {
        decoding: decoding_key(entry.algorithm, &entry.key),
        validation,
        openid_claim: entry.openid_claim.clone(),
        until: entry.until,
        appid: entry.appid.clone(),
    }
}

/// The JWK Set of the signing key's public half and every verify-only public key.
fn jwks(config: &JwtConfig) -> Option<Bytes> {
    if config.algorithm == JwtAlgorithm::HS256 {
        return None;
    }
    let current = config
        .kid
        .as_deref()
        .map(|kid| (kid, config.algorithm, &config.key));
    let verify = config
        .verify_keys
        .iter()
        .map(|vk| (vk.kid.as_str(), vk.algorithm, &vk.key));
    let keys: Vec<serde_json::Value> = current
        .into_iter()
        .chain(verify)
        .filter_map(|(kid, alg, key)| {
            public_raw(alg, key).map(|raw| crate::keys::jwk(alg, kid, &raw))
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "keys": keys }))
        .ok()
        .map(Bytes::from)
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
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use hmac_sign::sign_raw;

    const KEY: &str = "0123456789abcdef0123456789abcdef-test";

    fn tokens() -> Tokens {
        Tokens::new(&JwtConfig::hs256(KEY), &["wxapp"])
    }

    fn alice() -> Identity {
        Identity {
            values: Default::default(),
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
        assert_eq!(t.verify(&signed.token).unwrap(), Arc::new(alice()));
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
    fn tokens_issued_in_the_future_are_not_yet_valid() {
        let now = unix_now();
        let with_iat = |iat: &str| {
            let claims = format!(
                r#"{{"sub":"o1","sid":"s1","iat":{iat},"exp":{},"iss":"wxgate","aud":"wxapp"}}"#,
                now + 7200
            );
            sign_raw(HS256, &claims, KEY)
        };
        let t = tokens();
        let later = with_iat(&(now + 600).to_string());
        assert_eq!(t.verify_at(&later, now), Err(TokenProblem::NotYetValid));
        // Not remembered as refused: once its time has come it passes.
        assert_eq!(t.verify_at(&later, now + 600).unwrap().openid, "o1");
        assert!(t.verify_at(&with_iat(&now.to_string()), now).is_ok());
        assert_eq!(
            t.verify_at(&with_iat("\"1\""), now),
            Err(TokenProblem::Malformed)
        );
        // A minute ahead at least, whatever the leeway (0 here): another instance's clock.
        assert!(t.verify_at(&with_iat(&(now + 60).to_string()), now).is_ok());
        assert_eq!(
            t.verify_at(&with_iat(&(now + 61).to_string()), now),
            Err(TokenProblem::NotYetValid)
        );
        // A longer leeway, that.
        let mut lenient = JwtConfig::hs256(KEY);
        lenient.leeway = Duration::from_secs(300);
        let lenient = Tokens::new(&lenient, &["wxapp"]);
        assert!(lenient
            .verify_at(&with_iat(&(now + 300).to_string()), now)
            .is_ok());
        assert_eq!(
            lenient.verify_at(&with_iat(&(now + 301).to_string()), now),
            Err(TokenProblem::NotYetValid)
        );
        // Another backend's tokens alike.
        let old = |iat: u64| {
            let claims = format!(r#"{{"openid":"o-old","iat":{iat},"exp":{}}}"#, now + 3600);
            sign_raw(HS256, &claims, OLD_SECRET)
        };
        let m = migrating(now + 3600);
        assert_eq!(
            m.verify_at(&old(now + 600), now),
            Err(TokenProblem::NotYetValid)
        );
        assert_eq!(m.verify_at(&old(now - 10), now).unwrap().openid, "o-old");
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
        assert_eq!(t.verify_at(&signed.token, now), Ok(Arc::new(alice())));
        assert_eq!(
            t.verify_at(&signed.token, now + 60),
            Ok(Arc::new(alice())),
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

    /// A gateway with a fresh `alg` key pair as its current key (kid "new"), plus the public
    /// PEM (for the algorithm-confusion test).
    fn asymmetric(
        alg: JwtAlgorithm,
        verify_keys: Vec<crate::config::VerifyKey>,
    ) -> (Tokens, String) {
        let (private, public) = crate::keys::generate(alg).unwrap();
        let mut c = JwtConfig::hs256(KEY);
        c.algorithm = alg;
        c.key = KeyMaterial::Private(crate::keys::private_key(&private, alg).unwrap());
        c.kid = Some("new".into());
        c.verify_keys = verify_keys;
        (Tokens::new(&c, &["wxapp"]), public)
    }

    fn header_of(token: &str) -> serde_json::Value {
        let h = token.split('.').next().unwrap();
        serde_json::from_slice(&B64.decode(h).unwrap()).unwrap()
    }

    #[test]
    fn es256_and_eddsa_round_trip_with_kid_and_jwks() {
        for alg in [JwtAlgorithm::ES256, JwtAlgorithm::EdDSA] {
            let (t, _) = asymmetric(alg, vec![]);
            let signed = t.sign(&alice(), unix_now()).unwrap();
            let h = header_of(&signed.token);
            assert_eq!(h["alg"], alg.name());
            assert_eq!(h["kid"], "new");
            assert_eq!(t.verify_uncached(&signed.token).unwrap(), Arc::new(alice()));
            let jwks: serde_json::Value = serde_json::from_slice(t.jwks().unwrap()).unwrap();
            assert_eq!(jwks["keys"][0]["kid"], "new");
            assert_eq!(jwks["keys"][0]["alg"], alg.name());
            assert!(tokens().jwks().is_none(), "HS256 publishes nothing");
        }
    }

    #[test]
    fn kid_picks_the_key_and_unknown_kids_are_refused() {
        let (old, old_public) = asymmetric(JwtAlgorithm::EdDSA, vec![]);
        let old_token = old.sign(&alice(), unix_now()).unwrap().token;
        // Rotate: the old key's public half becomes a verify-only key under its kid ("new").
        let (_, raw) = crate::keys::public_key(&old_public).unwrap();
        let verify = crate::config::VerifyKey {
            kid: "new".into(),
            algorithm: JwtAlgorithm::EdDSA,
            key: KeyMaterial::Public(raw),
        };
        // A gateway whose current key is ES256 "cur" and which still accepts the old EdDSA key.
        let (private, _) = crate::keys::generate(JwtAlgorithm::ES256).unwrap();
        let mut c = JwtConfig::hs256(KEY);
        c.algorithm = JwtAlgorithm::ES256;
        c.key =
            KeyMaterial::Private(crate::keys::private_key(&private, JwtAlgorithm::ES256).unwrap());
        c.kid = Some("cur".into());
        c.verify_keys = vec![verify];
        let rotated = Tokens::new(&c, &["wxapp"]);
        assert_eq!(
            rotated.verify(&old_token),
            Ok(Arc::new(alice())),
            "verify-only key"
        );
        let fresh = rotated.sign(&alice(), unix_now()).unwrap().token;
        assert_eq!(rotated.verify(&fresh), Ok(Arc::new(alice())));
        assert_eq!(
            rotated.jwks().map(
                |j| serde_json::from_slice::<serde_json::Value>(j).unwrap()["keys"]
                    .as_array()
                    .unwrap()
                    .len()
            ),
            Some(2)
        );
        // The old key removed: its tokens name a kid nobody has.
        c.verify_keys.clear();
        let removed = Tokens::new(&c, &["wxapp"]);
        assert_eq!(removed.verify(&old_token), Err(TokenProblem::UnknownKey));
        // Same kid, other key: the signature fails.
        let (impostor, _) = asymmetric(JwtAlgorithm::ES256, vec![]);
        let mut forged = impostor.header.clone();
        forged.kid = Some("cur".into());
        let claims = Claims {
            sub: "o1".into(),
            unionid: None,
            sid: "s1".into(),
            iat: 1,
            exp: unix_now() + 60,
            iss: "wxgate".into(),
            aud: "wxapp".into(),
        };
        let token = jsonwebtoken::encode(&forged, &claims, &impostor.encoding).unwrap();
        assert_eq!(removed.verify(&token), Err(TokenProblem::BadSignature));
    }

    #[test]
    fn hs256_with_the_public_key_as_secret_is_refused() {
        let (t, public) = asymmetric(JwtAlgorithm::ES256, vec![]);
        let far = claims(&(unix_now() + 3600).to_string());
        let no_kid = sign_raw(HS256, &far, &public);
        assert_eq!(t.verify(&no_kid), Err(TokenProblem::WrongAlgorithm));
        let with_kid = sign_raw(r#"{"alg":"HS256","kid":"new"}"#, &far, &public);
        assert_eq!(t.verify(&with_kid), Err(TokenProblem::WrongAlgorithm));
        let unknown = sign_raw(r#"{"alg":"ES256","kid":"nope"}"#, &far, &public);
        assert_eq!(t.verify(&unknown), Err(TokenProblem::UnknownKey));
    }

    const OLD_SECRET: &str = "old-backend-secret-old-backend-secret";

    fn migrating(until: u64) -> Tokens {
        let mut c = JwtConfig::hs256(KEY);
        c.accept = vec![crate::config::AcceptConfig {
            algorithm: JwtAlgorithm::HS256,
            key: KeyMaterial::Secret(crate::secret::Secret::new(OLD_SECRET)),
            openid_claim: "openid".into(),
            until,
            appid: None,
        }];
        Tokens::new(&c, &["wxapp", "wxother"])
    }

    #[test]
    fn another_backends_tokens_until_the_window_ends() {
        let now = unix_now();
        let old = format!(
            r#"{{"openid":"o-old","session_key":"SK","iat":1,"exp":{}}}"#,
            now + 3600
        );
        let token = sign_raw(HS256, &old, OLD_SECRET);
        let t = migrating(now + 100);
        let id = t.verify_at(&token, now).unwrap();
        assert_eq!(id.openid, "o-old");
        assert_eq!(id.sid, "");
        assert_eq!(&*id.appid, "wxapp", "the first app by default");
        assert_eq!(t.verify_at(&token, now + 50), Ok(id), "from the cache");
        // An entry naming its app gives its tokens that app.
        let mut c = JwtConfig::hs256(KEY);
        c.accept = vec![crate::config::AcceptConfig {
            algorithm: JwtAlgorithm::HS256,
            key: KeyMaterial::Secret(crate::secret::Secret::new(OLD_SECRET)),
            openid_claim: "openid".into(),
            until: now + 100,
            appid: Some("wxother".into()),
        }];
        let other = Tokens::new(&c, &["wxapp", "wxother"]);
        assert_eq!(&*other.verify_at(&token, now).unwrap().appid, "wxother");
        assert_eq!(
            t.verify_at(&token, now + 101),
            Err(TokenProblem::Expired),
            "cached, window over"
        );
        assert_eq!(
            migrating(now - 1).verify_at(&token, now),
            Err(TokenProblem::Expired)
        );
        // Ours still pass; a stranger's token answers as before.
        assert_eq!(
            t.verify(&t.sign(&alice(), now).unwrap().token),
            Ok(Arc::new(alice()))
        );
        let stranger = sign_raw(HS256, &old, "yet-another-secret-yet-another-secret");
        assert_eq!(t.verify(&stranger), Err(TokenProblem::BadSignature));
        // exp required and numeric; the openid claim required.
        let no_exp = sign_raw(HS256, r#"{"openid":"o"}"#, OLD_SECRET);
        assert!(t.verify(&no_exp).is_err());
        let float_exp = sign_raw(
            HS256,
            &format!(r#"{{"openid":"o","exp":{}.5}}"#, now + 60),
            OLD_SECRET,
        );
        assert!(t.verify(&float_exp).is_err());
        let no_openid = sign_raw(
            HS256,
            &format!(r#"{{"sub":"o","exp":{}}}"#, now + 60),
            OLD_SECRET,
        );
        assert_eq!(t.verify(&no_openid), Err(TokenProblem::MissingClaim));
        let expired = sign_raw(
            HS256,
            &format!(r#"{{"openid":"o","exp":{}}}"#, now - 60),
            OLD_SECRET,
        );
        assert_eq!(t.verify(&expired), Err(TokenProblem::Expired));
    }
}

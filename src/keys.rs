//! Token key material: reading PEM keys (PKCS#8 private, SPKI public) and telling which
//! algorithm they are for, generating key pairs (`wxgate keygen`), and publishing public keys
//! as JWKs. The cryptography is aws-lc-rs (the backend jsonwebtoken already signs with); this
//! module only parses, checks and encodes.

use crate::secret::Secret;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING, ED25519,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use std::fmt;

/// The token signature algorithms wxgate signs and verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (the default).
    HS256,
    /// ECDSA over P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// As written in config and in a token's `alg`.
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "HS256" => Some(JwtAlgorithm::HS256),
            "ES256" => Some(JwtAlgorithm::ES256),
            "EdDSA" => Some(JwtAlgorithm::EdDSA),
            _ => None,
        }
    }

    /// The key type an operator recognises.
    fn key_type(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "an HMAC secret",
            JwtAlgorithm::ES256 => "a P-256 (prime256v1) EC key",
            JwtAlgorithm::EdDSA => "an Ed25519 key",
        }
    }
}

/// A key as validation loaded it. Private keys and secrets never print (Debug is redacted);
/// equality compares the material itself, so a reload notices a key file whose contents changed.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// HS256: the shared secret.
    Secret(Secret),
    /// ES256/EdDSA signing key: PKCS#8 DER.
    Private(Vec<u8>),
    /// ES256/EdDSA verify-only key: the raw public key (P-256 uncompressed point, or the 32
    /// bytes of an Ed25519 key).
    Public(Vec<u8>),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Secret(_) => f.write_str("Secret([redacted])"),
            KeyMaterial::Private(_) => f.write_str("Private([redacted])"),
            KeyMaterial::Public(raw) => write!(f, "Public({})", B64.encode(raw)),
        }
    }
}

/// A config value naming a PEM key: the PEM text itself (typically from `${ENV}`) or a path.
pub fn read_pem(value: &str) -> Result<String, String> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.to_string());
    }
    crate::config::read_small_file(std::path::Path::new(value))
        .map_err(|e| format!("cannot read key file {value:?}: {e}"))
}

fn pem_block(text: &str, tag: &str, what: &str) -> Result<Vec<u8>, String> {
    let block = pem::parse(text).map_err(|e| format!("is not a PEM {what} ({e})"))?;
    if block.tag() != tag {
        return Err(format!(
            "is a PEM {:?} block; want {what} (\"-----BEGIN {tag}-----\"){}",
            block.tag(),
            if tag == "PRIVATE KEY" {
                ", convert with `openssl pkcs8 -topk8 -nocrypt`"
            } else {
                ""
            }
        ));
    }
    Ok(block.into_contents())
}

/// A PKCS#8 PEM private key for `algorithm`: its DER, checked to be such a key.
pub fn private_key(pem_text: &str, algorithm: JwtAlgorithm) -> Result<Vec<u8>, String> {
    let der = pem_block(pem_text, "PRIVATE KEY", "PKCS#8 private key")?;
    public_of_private(algorithm, &der).map_err(|_| {
        let actual = [JwtAlgorithm::ES256, JwtAlgorithm::EdDSA]
            .into_iter()
            .find(|a| public_of_private(*a, &der).is_ok());
        match actual {
            Some(a) => format!(
                "is {}, for algorithm {:?}, not {}",
                a.key_type(),
                a.name(),
                algorithm.key_type()
            ),
            None => format!(
                "is not {} (supported: P-256 for ES256, Ed25519 for EdDSA)",
                algorithm.key_type()
            ),
        }
    })?;
    Ok(der)
}

/// The raw public key of a PKCS#8 private key.
pub fn public_of_private(algorithm: JwtAlgorithm, der: &[u8]) -> Result<Vec<u8>, String> {
    match algorithm {
        JwtAlgorithm::ES256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map(|k| k.public_key().as_ref().to_vec())
            .map_err(|e| e.to_string()),
        JwtAlgorithm::EdDSA => Ed25519KeyPair::from_pkcs8(der)
            .map(|k| k.public_key().as_ref().to_vec())
            .map_err(|e| e.to_string()),
        JwtAlgorithm::HS256 => Err("HS256 has no key pair".into()),
    }
}

/// An SPKI PEM public key: the algorithm its type is for, and the raw public key.
pub fn public_key(pem_text: &str) -> Result<(JwtAlgorithm, Vec<u8>), String> {
    pem_block(pem_text, "PUBLIC KEY", "public key")?;
    if let Ok(key) = jsonwebtoken::DecodingKey::from_ed_pem(pem_text.as_bytes()) {
        if let Ok(raw) = key.try_get_as_bytes() {
            if ParsedPublicKey::new(&ED25519, raw).is_ok() {
                return Ok((JwtAlgorithm::EdDSA, raw.to_vec()));
            }
        }
    }
    if let Ok(key) = jsonwebtoken::DecodingKey::from_ec_pem(pem_text.as_bytes()) {
        if let Ok(raw) = key.try_get_as_bytes() {
            if raw.len() == 65 && ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, raw).is_ok() {
                return Ok((JwtAlgorithm::ES256, raw.to_vec()));
            }
        }
    }
    Err("is not a P-256 (ES256) or Ed25519 (EdDSA) public key".into())
}

/// A new key pair: (PKCS#8 private key PEM, SPKI public key PEM).
pub fn generate(algorithm: JwtAlgorithm) -> Result<(String, String), String> {
    let rng = SystemRandom::new();
    let fail = |e: aws_lc_rs::error::Unspecified| format!("cannot generate a key: {e}");
    let (private, public) = match algorithm {
        JwtAlgorithm::ES256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(fail)?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
                .map_err(|e| e.to_string())?;
            let spki = pair.public_key().as_der().map_err(fail)?;
            (doc.as_ref().to_vec(), spki.as_ref().to_vec())
        }
        JwtAlgorithm::EdDSA => {
            // v1 (private key only): what `openssl genpkey -algorithm ED25519` writes, and what
            // every library reads.
            let doc = Ed25519KeyPair::generate_pkcs8v1(&rng).map_err(fail)?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| e.to_string())?;
            let spki = pair.public_key().as_der().map_err(fail)?;
            (doc.as_ref().to_vec(), spki.as_ref().to_vec())
        }
        JwtAlgorithm::HS256 => return Err("HS256 uses a secret, not a key pair".into()),
    };
    let encode = |tag: &str, der: Vec<u8>| pem::encode(&pem::Pem::new(tag, der));
    Ok((encode("PRIVATE KEY", private), encode("PUBLIC KEY", public)))
}

/// A public key as an RFC 7517 JWK (`use = "sig"`).
pub fn jwk(algorithm: JwtAlgorithm, kid: &str, raw: &[u8]) -> serde_json::Value {
    match algorithm {
        JwtAlgorithm::ES256 => {
            // 0x04 || x || y
            let x = raw.get(1..33).unwrap_or_default();
            let y = raw.get(33..65).unwrap_or_default();
            serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y),
                "kid": kid, "alg": "ES256", "use": "sig",
            })
        }
        JwtAlgorithm::EdDSA | JwtAlgorithm::HS256 => serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": B64.encode(raw),
            "kid": kid, "alg": "EdDSA", "use": "sig",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pairs_read_back_as_their_algorithm() {
        for alg in [JwtAlgorithm::ES256, JwtAlgorithm::EdDSA] {
            let (private, public) = generate(alg).unwrap();
            assert!(
                private.starts_with("-----BEGIN PRIVATE KEY-----"),
                "{private}"
            );
            let der = private_key(&private, alg).unwrap();
            let (found, raw) = public_key(&public).unwrap();
            assert_eq!(found, alg);
            assert_eq!(public_of_private(alg, &der).unwrap(), raw);
            let other = if alg == JwtAlgorithm::ES256 {
                JwtAlgorithm::EdDSA
            } else {
                JwtAlgorithm::ES256
            };
            let e = private_key(&private, other).unwrap_err();
            assert!(e.contains(alg.name()), "{e}");
            assert!(private_key(&public, alg)
                .unwrap_err()
                .contains("PUBLIC KEY"));
            assert!(public_key(&private).is_err());
        }
        assert!(private_key("not pem", JwtAlgorithm::ES256).is_err());
    }

    #[test]
    fn other_key_types_are_refused_by_name() {
        // P-384 and RSA: PEM keys of a type no supported algorithm uses (made by another crate).
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_RSA_SHA256] {
            let Ok(pair) = rcgen::KeyPair::generate_for(alg) else {
                continue; // rcgen cannot generate RSA with every backend
            };
            let e = public_key(&pair.public_key_pem()).unwrap_err();
            assert!(e.contains("P-256"), "{e}");
            let e = private_key(&pair.serialize_pem(), JwtAlgorithm::ES256).unwrap_err();
            assert!(e.contains("is not a P-256"), "{e}");
        }
    }

    #[test]
    fn jwk_fields() {
        let (_, public) = generate(JwtAlgorithm::ES256).unwrap();
        let (_, raw) = public_key(&public).unwrap();
        let j = jwk(JwtAlgorithm::ES256, "k1", &raw);
        assert_eq!(j["kty"], "EC");
        assert_eq!(B64.decode(j["x"].as_str().unwrap()).unwrap(), raw[1..33]);
        assert_eq!(B64.decode(j["y"].as_str().unwrap()).unwrap(), raw[33..]);
        assert_eq!(j["use"], "sig");
        let (_, public) = generate(JwtAlgorithm::EdDSA).unwrap();
        let (_, raw) = public_key(&public).unwrap();
        let j = jwk(JwtAlgorithm::EdDSA, "k2", &raw);
        assert_eq!(j["crv"], "Ed25519");
        assert_eq!(j["kid"], "k2");
        assert_eq!(B64.decode(j["x"].as_str().unwrap()).unwrap(), raw);
    }

    #[test]
    fn debug_redacts_private_material() {
        let k = KeyMaterial::Private(vec![1, 2, 3]);
        assert_eq!(format!("{k:?}"), "Private([redacted])");
    }
}

//! Token keys end to end: ES256 and EdDSA gateways with keys from `wxgate keygen`, the JWKS
//! document checked by an independent library (Python's jwcrypto), rotation by SIGHUP, unknown
//! kids and algorithm confusion refused, and tokens of a hand-written backend (minted by Node's
//! jsonwebtoken, as the tutorial does) accepted during a migration window only.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `wxgate keygen` into `dir`: the private key's path (the public one is beside it).
fn keygen(dir: &Path, algorithm: &str, kid: &str) -> PathBuf {
    let out = Command::new(bin())
        .args(["keygen", "--algorithm", algorithm, "--kid", kid, "--out"])
        .arg(dir)
        .output()
        .expect("run keygen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("kid = \"{kid}\"")), "{stdout}");
    let private = dir.join(format!("{kid}.pem"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&private).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "private key mode");
    assert!(dir.join(format!("{kid}.pub.pem")).exists());
    // A second run refuses to overwrite.
    let again = Command::new(bin())
        .args(["keygen", "--algorithm", algorithm, "--kid", kid, "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    private
}

/// The `[jwt]` lines for a key made by [`keygen`].
fn jwt_lines(algorithm: &str, private: &Path, kid: &str) -> String {
    format!(
        "algorithm = \"{algorithm}\"\nprivate_key = \"{}\"\nkid = \"{kid}\"",
        private.display()
    )
}

/// Replace the HS256 secret of the common config with `jwt`.
fn with_jwt(jwt: String) -> impl FnOnce(String) -> String {
    move |c| c.replace("secret = \"${WXGATE_JWT_SECRET}\"", &jwt)
}

fn header_of(token: &str) -> Value {
    use base64::Engine;
    let h = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Python with the system's packages (jwcrypto comes from Debian's python3-jwcrypto).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Verify `token` against the JWK Set `jwks` with jwcrypto; the claims it finds.
fn verify_with_jwcrypto(jwks: &str, token: &str, alg: &str) -> Value {
    let script = r#"
import sys, json
from jwcrypto import jwk, jwt
keys = jwk.JWKSet.from_json(sys.argv[1])
t = jwt.JWT(jwt=sys.argv[2], key=keys, algs=[sys.argv[3]])
print(t.claims)
"#;
    let out = Command::new(python())
        .args(["-c", script, jwks, token, alg])
        .output()
        .expect("run python3 (install python3-jwcrypto: WXGATE_SETUP_TEST=1 scripts/setup.sh)");
    assert!(
        out.status.success(),
        "jwcrypto refused the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("claims JSON")
}

async fn jwks(url: String) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client().get(url).send().await.expect("jwks");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

async fn reason(gw: &Proc, token: &str) -> (u16, Value) {
    get_bearer(gw.url("/api/x"), token).await
}

#[tokio::test]
async fn es256_and_eddsa_gateways_sign_publish_and_verify() {
    for (alg, kid) in [("ES256", "es-2026-11"), ("EdDSA", "ed-2026-11")] {
        let dir = scratch("keys");
        let private = keygen(&dir, alg, kid);
        let s = Stack::with(with_jwt(jwt_lines(alg, &private, kid)));
        let token = login(&s, "olga.1").await;
        let h = header_of(&token);
        assert_eq!(h["alg"], alg);
        assert_eq!(h["kid"], kid);
        let (status, echo) = get_bearer(s.url("/api/x"), &token).await;
        assert_eq!(status, 200, "{echo}");
        let openid = echoed_header(&echo, "x-wx-openid");
        assert_eq!(openid.len(), 1, "{echo}");

        let (status, headers, body) = jwks(s.url("/.well-known/jwks.json")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["cache-control"], "public, max-age=300");
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["keys"].as_array().unwrap().len(), 1, "{doc}");
        assert_eq!(doc["keys"][0]["kid"], kid);
        assert_eq!(doc["keys"][0]["use"], "sig");
        assert!(!body.contains("\"d\""), "no private part: {body}");
        let claims = verify_with_jwcrypto(&body, &token, alg);
        assert_eq!(claims["sub"], openid[0].as_str());
        assert_eq!(claims["aud"], APPID);
    }
}

/// Rewrite the gateway's configuration file and send SIGHUP.
fn rewrite_and_reload(gw: &Proc, text: String) {
    let path = gw.log.as_ref().unwrap().with_file_name("gateway.toml");
    let old = std::fs::read_to_string(&path).unwrap();
    let start = old.find("[jwt]").unwrap();
    let end = old.find("ttl = \"2h\"").unwrap();
    let new = format!("{}[jwt]\n{text}\n{}", &old[..start], &old[end..]);
    std::fs::write(&path, new).unwrap();
    gw.signal("HUP");
}

/// Poll the JWKS until `wanted` holds for it, at most 5 s.
async fn jwks_when(gw: &Proc, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, body) = jwks(gw.url("/.well-known/jwks.json")).await;
        if wanted(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "JWKS never became as wanted: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rotation_by_reload_unknown_kids_and_algorithm_confusion() {
    let dir = scratch("rotate");
    let k1 = keygen(&dir, "ES256", "k1");
    let k2 = keygen(&dir, "EdDSA", "k2");
    let k1_public = dir.join("k1.pub.pem");
    let s = Stack::with(with_jwt(jwt_lines("ES256", &k1, "k1")));
    let old = login(&s, "olga.1").await;
    assert_eq!(reason(&s.gw, &old).await.0, 200);

    // Algorithm confusion: HS256 with the public key's PEM as the HMAC secret.
    let pem = std::fs::read(&k1_public).unwrap();
    let claims: Value = {
        use base64::Engine;
        let p = old.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    };
    for kid in [None, Some("k1".to_string())] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = kid;
        let forged = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&pem),
        )
        .unwrap();
        let (status, v) = reason(&s.gw, &forged).await;
        assert_eq!(status, 401, "{v}");
        assert_eq!(v["code"], "10200");
        assert_eq!(v["reason"], "wrong_algorithm", "{v}");
    }

    // Rotate: k2 signs, k1 stays verify-only.
    rewrite_and_reload(
        &s.gw,
        format!(
            "{}\nverify_keys = [{{ kid = \"k1\", public_key = \"{}\" }}]",
            jwt_lines("EdDSA", &k2, "k2"),
            k1_public.display()
        ),
    );
    let doc = jwks_when(&s.gw, |b| b.contains("\"k2\"")).await;
    assert!(doc.contains("\"k1\""), "{doc}");
    let new = login(&s, "olga.2").await;
    assert_eq!(header_of(&new)["kid"], "k2");
    assert_eq!(reason(&s.gw, &new).await.0, 200);
    let (status, v) = reason(&s.gw, &old).await;
    assert_eq!(status, 200, "a verify-only key's token: {v}");
    verify_with_jwcrypto(&doc, &old, "ES256");
    verify_with_jwcrypto(&doc, &new, "EdDSA");

    // An unknown kid.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k9".into());
    let parts: Vec<&str> = old.split('.').collect();
    let unknown = {
        use base64::Engine;
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&header).unwrap());
        format!("{h}.{}.{}", parts[1], parts[2])
    };
    let (status, v) = reason(&s.gw, &unknown).await;
    assert_eq!(status, 401);
    assert_eq!(v["reason"], "unknown_key", "{v}");

    // k1 removed: its tokens are refused from then on (the verified cache went with it).
    rewrite_and_reload(&s.gw, jwt_lines("EdDSA", &k2, "k2"));
    jwks_when(&s.gw, |b| !b.contains("\"k1\"")).await;
    let (status, v) = reason(&s.gw, &old).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["reason"], "unknown_key", "{v}");
    assert_eq!(reason(&s.gw, &new).await.0, 200);
}

#[tokio::test]
async fn hs256_publishes_no_keys() {
    let s = Stack::start();
    let (status, headers, body) = jwks(s.url("/.well-known/jwks.json")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "10404");
    assert!(!body.contains("test-jwt-secret"));
}

/// The tutorial backend's secret and a session_key it put into its tokens.
const OLD_SECRET: &str = "bj2304";
const SESSION_KEY: &str = "tutorial-session-key-AAAA";

/// A token minted exactly as the tutorial's backend does, by Node's jsonwebtoken.
fn tutorial_token(openid: &str) -> String {
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let script = format!(
        "const jwt = require('jsonwebtoken'); \
         process.stdout.write(jwt.sign({{session_key: '{SESSION_KEY}', openid: '{openid}'}}, \
         '{OLD_SECRET}', {{expiresIn: 7200}}))"
    );
    let out = Command::new("node")
        .args(["-e", &script])
        .current_dir(&browser)
        .output()
        .expect(
            "run node (install tests/browser's packages: WXGATE_SETUP_TEST=1 scripts/setup.sh)",
        );
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn accept(until: &str) -> impl FnOnce(String) -> String {
    let section = format!(
        "\n[[jwt.accept]]\nalgorithm = \"HS256\"\nsecret = \"{OLD_SECRET}\"\n\
         openid_claim = \"openid\"\nuntil = \"{until}\"\n"
    );
    move |c| c.replace("ttl = \"2h\"\n", &format!("ttl = \"2h\"\n{section}"))
}

#[tokio::test]
async fn a_tutorial_backends_tokens_pass_until_the_window_ends() {
    let token = tutorial_token("o-tutorial");
    let admin = free_port();
    let add_admin = accept("2999-01-31T00:00:00Z");
    let s = Stack::with(move |c| {
        format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
            add_admin(c)
        )
    });
    for _ in 0..2 {
        // The second time from the verified-token cache.
        let (status, echo) = get_bearer(s.url("/api/x"), &token).await;
        assert_eq!(status, 200, "{echo}");
        assert_eq!(echoed_header(&echo, "x-wx-openid"), ["o-tutorial"]);
        let text = echo.to_string();
        assert!(!text.contains(&token), "the token is not forwarded: {text}");
        assert!(!text.contains(SESSION_KEY), "{text}");
    }
    // /isAuth accepts it too; logout wants a real wxgate login.
    let (status, v) = post_body(
        s.url("/isAuth"),
        "application/json",
        serde_json::json!({ "token": token }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["openid"], "o-tutorial", "{v}");
    let resp = client()
        .post(s.url("/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(reason(&s.gw, &token).await.0, 200, "logout revoked nothing");
    // Our own tokens are untouched; a stranger's token is still refused.
    let ours = login(&s, "olga.1").await;
    assert_eq!(reason(&s.gw, &ours).await.0, 200);
    let (status, v) = reason(&s.gw, &ours.replace('.', "x.")).await;
    assert_eq!(status, 401, "{v}");
    let metrics = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let legacy = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wxgate_auth_legacy_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    // Two proxied calls, one /isAuth, one refused logout (verified before it was refused) and
    // one more call.
    assert!(legacy.is_some_and(|n| n >= 4.0), "{legacy:?}");
    let log = s.gw.log_when(|l| l.contains("/api/x"));
    assert!(!log.contains(SESSION_KEY), "the log holds the session_key");

    let late = Stack::with(accept("2020-01-01T00:00:00Z"));
    let (status, v) = reason(&late.gw, &token).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["code"], "10200");
    assert_eq!(v["reason"], "expired", "{v}");
}

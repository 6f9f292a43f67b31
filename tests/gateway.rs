//! End to end: the real gateway process, the stand-in WeChat and echo apps over loopback.

mod common;

use base64::Engine;
use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

fn forge(claims: Value, key: &str, alg: jsonwebtoken::Algorithm) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .expect("sign")
}

fn good_claims() -> Value {
    json!({"sub": "o-forged", "sid": "s1", "iat": now(), "exp": now() + 600, "iss": "wxgate", "aud": APPID})
}

#[tokio::test]
async fn tutorial_client_flow_works_unchanged() {
    let s = Stack::start();
    // §3.1/3.4: wx.request({url: '/auth', data: {code}}) is a GET with ?code=.
    let (status, body) = get(&s.url("/auth?code=alice.1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], "200");
    assert_eq!(body["message"], "登录");
    assert_eq!(body["data"]["expires_in"], 7200);
    let token = body["data"]["token"].as_str().unwrap().to_string();

    // The token names the user and the session, never the session_key.
    let claims = payload(&token);
    assert!(claims.get("session_key").is_none(), "{claims}");
    assert!(!token.contains("session_key"));
    assert!(claims["sub"].as_str().unwrap().starts_with('o'));
    assert!(claims["sid"].is_string());
    assert_eq!(claims["aud"], APPID);
    assert!(claims["exp"].is_u64());

    // §3.4 checkLoginState: POST /isAuth with {token} as JSON.
    let resp = client()
        .post(s.url("/isAuth"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], "200");
    assert_eq!(body["message"], "验证成功");
    assert_eq!(body["data"]["openid"], claims["sub"]);
}

#[tokio::test]
async fn login_by_post_json_and_form() {
    let s = Stack::start();
    let resp = client()
        .post(s.url("/auth"))
        .json(&json!({"code": "bob.1"}))
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["token"].is_string());

    let (status, body) = post_body(
        s.url("/auth"),
        "application/x-www-form-urlencoded",
        "code=bob.2",
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Same user, same openid across two codes.
    let a = payload(body["data"]["token"].as_str().unwrap());
    let b = payload(&login(&s, "bob.3").await);
    assert_eq!(a["sub"], b["sub"]);
    assert_ne!(a["sid"], b["sid"]);
}

#[tokio::test]
async fn is_auth_rejections() {
    let s = Stack::start();
    let post = |body: &'static str| {
        client()
            .post(s.url("/isAuth"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for body in [r#"{}"#, r#"{"token":""}"#, r#"{"token":null}"#, ""] {
        let (status, v) = json(post(body).await.unwrap()).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (401, Some("10119")),
            "{body}: {v}"
        );
        assert_eq!(v["message"], "token必须传递");
    }
    for body in [
        r#"{"token":"abc"}"#,
        r#"{"token":"a.b.c"}"#,
        r#"{"token":42}"#,
    ] {
        let (status, v) = json(post(body).await.unwrap()).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (401, Some("10200")),
            "{body}: {v}"
        );
        assert_eq!(v["message"], "token已过期");
    }
    let expired = forge(
        json!({"sub": "o1", "sid": "s", "iat": now() - 100, "exp": now() - 50, "iss": "wxgate", "aud": APPID}),
        JWT_SECRET,
        jsonwebtoken::Algorithm::HS256,
    );
    let resp = client()
        .post(s.url("/isAuth"))
        .json(&json!({ "token": expired }))
        .send()
        .await
        .unwrap();
    let (status, v) = json(resp).await;
    assert_eq!(
        (status, v["code"].as_str(), v["reason"].as_str()),
        (401, Some("10200"), Some("expired"))
    );

    let (status, v) = json(post("{not json").await.unwrap()).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10400")), "{v}");
}

#[tokio::test]
async fn protected_route_forwards_with_identity() {
    let s = Stack::start();
    let token = login(&s, "carol.1").await;
    let openid = payload(&token)["sub"].as_str().unwrap().to_string();

    // Method, path, query and body reach the app unchanged; the openid is added.
    let resp = client()
        .post(s.url("/api/orders?page=2&size=10"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"item":"茶","n":2}"#)
        .send()
        .await
        .unwrap();
    let (status, echo) = json(resp).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/orders");
    assert_eq!(echo["query"], "page=2&size=10");
    assert_eq!(echo["body"], r#"{"item":"茶","n":2}"#);
    assert_eq!(echoed_header(&echo, "x-wx-openid"), vec![openid.clone()]);
    assert!(echoed_header(&echo, "x-wx-unionid").is_empty());

    // The `token` header and a lowercase scheme work too.
    for (name, value) in [
        ("token", token.clone()),
        ("authorization", format!("bearer {token}")),
    ] {
        let resp = client()
            .get(s.url("/api/me"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        let (status, echo) = json(resp).await;
        assert_eq!(status, 200, "{name}: {echo}");
        assert_eq!(echoed_header(&echo, "x-wx-openid"), vec![openid.clone()]);
    }
}

#[tokio::test]
async fn unionid_is_forwarded_when_wechat_returns_one() {
    let s = Stack::start();
    let token = login(&s, "union-dave.1").await;
    let claims = payload(&token);
    assert!(claims["unionid"].as_str().unwrap().starts_with('u'));
    let (_, echo) = get_bearer(s.url("/api/x"), &token).await;
    assert_eq!(
        echoed_header(&echo, "x-wx-unionid"),
        vec![claims["unionid"].as_str().unwrap().to_string()]
    );
}

#[tokio::test]
async fn protected_route_rejections() {
    let s = Stack::start();
    let (status, v) = get(&s.url("/api/x")).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10119")), "{v}");

    let hs = jsonwebtoken::Algorithm::HS256;
    let mut no_exp = good_claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut string_exp = good_claims();
    string_exp["exp"] = json!((now() + 600).to_string());
    let mut future_nbf = good_claims();
    future_nbf["nbf"] = json!(now() + 300);
    let mut other_app = good_claims();
    other_app["aud"] = json!("wxsomeoneelse");
    let cases = [
        ("garbage", "not-a-token".to_string()),
        (
            "wrong key",
            forge(good_claims(), "another-secret-another-secret-xx", hs),
        ),
        (
            "HS384",
            forge(good_claims(), JWT_SECRET, jsonwebtoken::Algorithm::HS384),
        ),
        ("no exp", forge(no_exp, JWT_SECRET, hs)),
        ("string exp", forge(string_exp, JWT_SECRET, hs)),
        ("future nbf", forge(future_nbf, JWT_SECRET, hs)),
        ("other app", forge(other_app, JWT_SECRET, hs)),
        (
            "alg none",
            format!(
                "{}.{}.",
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(r#"{"alg":"none","typ":"JWT"}"#),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(good_claims().to_string())
            ),
        ),
    ];
    for (what, token) in cases {
        let (status, v) = get_bearer(s.url("/api/x"), &token).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (401, Some("10200")),
            "{what}: {v}"
        );
    }
    // The same claims, correctly signed, pass: the cases above fail for their one flaw.
    let resp = client()
        .get(s.url("/api/x"))
        .bearer_auth(forge(good_claims(), JWT_SECRET, hs))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_app() {
    let s = Stack::start();
    let token = login(&s, "erin.1").await;
    let openid = payload(&token)["sub"].as_str().unwrap().to_string();
    for (path, auth) in [("/public/x", None), ("/api/x", Some(&token))] {
        let spoofs = [
            ("X-WX-OpenID", "spoof-1"),
            ("x-wx-openid", "spoof-2"),
            ("X_WX_OPENID", "spoof-3"),
            ("X-WX-UNIONID", "spoof-4"),
            ("X-WX-APPID", "spoof-5"),
            ("x-wx-source", "spoof-6"),
        ];
        let (status, echo) = get_with(s.url(path), auth.map(String::as_str), &spoofs).await;
        assert_eq!(status, 200, "{path}: {echo}");
        let leaked: Vec<_> = echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[1].as_str().unwrap().starts_with("spoof"))
            .collect();
        assert!(leaked.is_empty(), "{path}: {leaked:?}");
        let expected: Vec<String> = auth.map(|_| openid.clone()).into_iter().collect();
        assert_eq!(echoed_header(&echo, "x-wx-openid"), expected, "{path}");
        assert!(echoed_header(&echo, "x_wx_openid").is_empty());
    }
}

/// `server.forwarded_headers = true`: the app gets `X-Forwarded-For` with the peer appended and
/// `X-Forwarded-Proto` / `-Host` as the client used them, never a client's claims (nor copies spelt
/// with `_`); behind a trusted proxy, the proxy's scheme and host are kept. Off (the default),
/// the gateway adds none and passes what the client sent.
#[tokio::test]
async fn forwarded_headers_tell_the_app_who_called_and_how() {
    let on = |extra: &'static str| {
        Stack::with(move |c| {
            c.replace(
                "[server]\n",
                &format!("[server]\nforwarded_headers = true\n{extra}"),
            )
        })
    };
    let forged = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X_Forwarded_Host", "evil2.example"),
        ("X_Forwarded_For", "7.7.7.7"),
    ];
    let cases = [
        // (stack, X-Forwarded-Proto, X-Forwarded-Host (None: the request's Host), underscores kept)
        (on(""), "http", None, false),
        (
            on("trusted_proxies = [\"127.0.0.1/32\"]\n"),
            "https",
            Some("evil.example"),
            false,
        ),
        (Stack::start(), "https", Some("evil.example"), true),
    ];
    for (s, proto, host, off) in &cases {
        let token = login(s, "fwd.1").await;
        for (path, auth) in [("/public/x", None), ("/api/x", Some(token.as_str()))] {
            let (status, echo) = get_with(s.url(path), auth, &forged).await;
            assert_eq!(status, 200, "{path}: {echo}");
            let h = |name: &str| echoed_header(&echo, name);
            let own_host = s.gw.addr.to_string();
            let for_ = if *off {
                "6.6.6.6"
            } else {
                "6.6.6.6, 127.0.0.1"
            };
            assert_eq!(h("x-forwarded-for"), [for_], "{path}: {echo}");
            assert_eq!(h("x-forwarded-proto"), [*proto], "{path}: {echo}");
            assert_eq!(
                h("x-forwarded-host"),
                [host.unwrap_or(&own_host)],
                "{path}: {echo}"
            );
            assert_eq!(h("x_forwarded_host").is_empty(), !off, "{path}: {echo}");
            assert_eq!(h("x_forwarded_for").is_empty(), !off, "{path}: {echo}");
        }
    }
}

#[tokio::test]
async fn routing_errors() {
    let closed = free_port();
    let s = Stack::with(|c| {
        format!("{c}\n[[routes]]\nprefix = \"/down/\"\nupstreams = [\"127.0.0.1:{closed}\"]\nauth = \"none\"\n")
    });
    let (status, v) = get(&s.url("/nowhere")).await;
    assert_eq!((status, v["code"].as_str()), (404, Some("10404")), "{v}");
    let (status, v) = get(&s.url("/down/x")).await;
    assert_eq!((status, v["code"].as_str()), (502, Some("10510")), "{v}");

    // Slower than the route's read_timeout (1s): 504.
    let token = login(&s, "frank.1").await;
    let started = Instant::now();
    let resp = client()
        .get(s.url("/api/slow"))
        .bearer_auth(&token)
        .header("x-echo-delay-ms", "3000")
        .send()
        .await
        .unwrap();
    let (status, v) = json(resp).await;
    assert_eq!((status, v["code"].as_str()), (504, Some("10511")), "{v}");
    assert!(started.elapsed() < Duration::from_millis(2900));

    // A dot segment (encoded or not) cannot turn a public prefix into a protected path.
    for path in [
        "/public/%2e%2e/api/x",
        "/public/../api/x",
        "/public/%2E%2E%2Fapi/x",
    ] {
        let answer = raw_request(
            s.gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("\"10402\""), "{path}: {answer}");
    }
}

#[tokio::test]
async fn round_robin_over_upstreams() {
    let other = echo();
    let s = Stack::with(|c| {
        c.replacen(
            "upstreams = [\"",
            &format!("upstreams = [\"{}\", \"", other.addr),
            1,
        )
    });
    let token = login(&s, "gina.1").await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let (status, echo) = get_bearer(s.url("/api/x"), &token).await;
        assert_eq!(status, 200);
        seen.insert(echo["server"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn wechat_errcodes_come_back_with_fitting_status() {
    let s = Stack::start();
    for (code, errcode, status) in [
        ("err40029-a", "40029", 400),
        ("err40226-a", "40226", 403),
        ("err45011-a", "45011", 429),
        ("err-1-a", "-1", 503),
    ] {
        let (st, v) = get(&s.url(&format!("/auth?code={code}"))).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (status, Some(errcode)),
            "{code}: {v}"
        );
        assert!(v["message"].is_string());
    }
    // A used code: WeChat's 40163.
    login(&s, "hank.1").await;
    let (st, v) = get(&s.url("/auth?code=hank.1")).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("40163")), "{v}");
    // Codes wx.login() cannot produce never reach WeChat.
    let before = wechat_stats(&s.wechat).await["jscode2session"]
        .as_u64()
        .unwrap();
    let (st, v) = get(&s.url("/auth?code=a%26secret%3Dx")).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("40029")), "{v}");
    let after = wechat_stats(&s.wechat).await["jscode2session"]
        .as_u64()
        .unwrap();
    assert_eq!(before, after);
}

#[tokio::test]
async fn wrong_appsecret_is_a_server_error() {
    let wechat = mock_wechat();
    let echo = echo();
    let cfg = config(wechat.addr, echo.addr);
    let gw = gateway(&cfg.replace("${WECHAT_APPSECRET}", "not-the-secret"));
    let (status, v) = get(&gw.url("/auth?code=ivy.1")).await;
    assert_eq!((status, v["code"].as_str()), (500, Some("40125")), "{v}");
}

#[tokio::test]
async fn login_input_errors() {
    let s = Stack::start();
    let (status, v) = get(&s.url("/auth")).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10120")), "{v}");
    let (status, v) = post_body(s.url("/auth"), "application/json", "{\"code\": ").await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10400")), "{v}");
    let resp = client().put(s.url("/auth")).send().await.unwrap();
    let (status, v) = json(resp).await;
    assert_eq!((status, v["code"].as_str()), (405, Some("10405")), "{v}");
    let (status, v) = post_body(
        s.url("/auth"),
        "application/json",
        format!("{{\"code\":\"{}\"}}", "x".repeat(64 * 1024)),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (413, Some("10413")), "{v}");
}

#[tokio::test]
async fn wechat_faults_each_have_their_code() {
    let s = Stack::start();
    // Slower than wechat.timeout (1s).
    let started = Instant::now();
    let (status, v) = get(&s.url("/auth?code=slow3000-jack.1")).await;
    assert_eq!((status, v["code"].as_str()), (504, Some("10504")), "{v}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // An HTML error page, a body that is not JSON.
    for code in ["html-jack.2", "garbage-jack.3"] {
        let (status, v) = get(&s.url(&format!("/auth?code={code}"))).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (502, Some("10502")),
            "{code}: {v}"
        );
    }

    // WeChat unreachable.
    let closed = free_port();
    let echo = echo();
    let cfg = config(format!("127.0.0.1:{closed}").parse().unwrap(), echo.addr);
    let gw = gateway(&cfg);
    let (status, v) = get(&gw.url("/auth?code=kate.1")).await;
    assert_eq!((status, v["code"].as_str()), (502, Some("10501")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_with_one_code_make_one_wechat_call() {
    let s = Stack::start();
    let before = wechat_stats(&s.wechat).await["jscode2session"]
        .as_u64()
        .unwrap();
    let url = s.url("/auth?code=slow300-lena.1");
    let calls = (0..8).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { get(&url).await })
    });
    let results = futures::future::join_all(calls).await;
    for r in results {
        let (status, v) = r.unwrap();
        assert_eq!(status, 200, "{v}");
        assert!(v["data"]["token"].is_string());
    }
    let after = wechat_stats(&s.wechat).await["jscode2session"]
        .as_u64()
        .unwrap();
    assert_eq!(after - before, 1);
}

#[tokio::test]
async fn minted_tokens_are_accepted() {
    let s = Stack::start();
    let dir = scratch("token");
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        config(s.wechat.addr, s.echo.addr).replace("{PORT}", "1"),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "token",
            "--openid",
            "o-minted",
            "--unionid",
            "u-minted",
            "-c",
        ])
        .arg(&path)
        .env("WECHAT_APPSECRET", APPSECRET)
        .env("WXGATE_JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (status, echo) = get_bearer(s.url("/api/x"), &token).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echoed_header(&echo, "x-wx-openid"), vec!["o-minted"]);
    assert_eq!(echoed_header(&echo, "x-wx-unionid"), vec!["u-minted"]);
}

#[tokio::test]
async fn secrets_stay_out_of_the_log() {
    let s = Stack::start();
    let token = login(&s, "mike.1").await;
    let _ = client()
        .get(s.url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let _ = get(&s.url("/auth?code=err40125-x")).await;
    let _ = get(&s.url("/auth?code=mike.1")).await;
    let log = s.gw.log_when(|l| l.contains("/auth"));
    assert!(log.contains("wxgate::access"), "the log is captured: {log}");
    assert!(!log.contains(APPSECRET), "appsecret in log");
    assert!(!log.contains(JWT_SECRET), "jwt secret in log");
    assert!(!log.contains(&token), "token in log");
    assert!(
        !log.contains(token.split('.').nth(2).unwrap()),
        "token signature in log"
    );
    assert!(!log.contains("session_key"), "session_key mentioned in log");
}

//! `GET /sns/jscode2session`: the login API, with single-use codes, the plan's prefixes and
//! `union-`/`fixedkey-` logins.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::answers::{follow_plan, wechat_error, wechat_reply, TEXT_PLAIN};
use super::plan::{openid, unionid, user_of, valid_code};
use super::{claim, count, credential_error, lock, query_params, MockState, Session};

/// The session_key of WeChat's published encrypted-data sample, for `fixedkey-` logins.
pub(super) const SAMPLE_SESSION_KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";

pub(super) async fn jscode2session(
    State(state): State<Arc<MockState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    count(&state.counters.jscode2session);
    let params = query_params(query);
    let param = |name: &str| params.get(name).map(String::as_str);

    let appid = param("appid");
    if let Some((errcode, msg)) = credential_error(&state.opts, appid, param("secret")) {
        return wechat_error(errcode, msg);
    }
    if param("grant_type") != Some("authorization_code") {
        return wechat_error(40002, "invalid grant_type");
    }
    let full_code = match param("js_code") {
        Some(code) if !code.is_empty() => code,
        _ => return wechat_error(41008, "missing code"),
    };
    if !valid_code(full_code) {
        return wechat_error(40029, "invalid code");
    }

    let (code, hooks) = match follow_plan(full_code, TEXT_PLAIN).await {
        Ok(success) => success,
        Err(answer) => return answer,
    };
    if code.is_empty() {
        // Only prefixes, e.g. `union-`: nothing names a user.
        return wechat_error(40029, "invalid code");
    }
    if !claim(&state.used_codes, full_code) {
        return wechat_error(40163, "code been used");
    }

    let user = user_of(code);
    let appid = appid.unwrap_or_default();
    let openid = openid(appid, user);
    let session_key = if hooks.fixed_key {
        SAMPLE_SESSION_KEY.to_owned()
    } else {
        STANDARD.encode(rand::random::<[u8; 16]>())
    };
    lock(&state.sessions).insert(
        openid.clone(),
        Session {
            session_key: session_key.clone(),
            appid: appid.to_owned(),
        },
    );
    let mut body = Map::new();
    body.insert("session_key".to_owned(), Value::String(session_key));
    body.insert("openid".to_owned(), Value::String(openid));
    if hooks.union {
        body.insert("unionid".to_owned(), Value::String(unionid(user)));
    }
    tracing::debug!(
        user,
        union = hooks.union,
        "mock wechat: jscode2session login"
    );
    wechat_reply(StatusCode::OK, Value::Object(body).to_string())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::mock::wechat::plan::MAX_CODE_LEN;
    use crate::mock::wechat::testing::{
        errcode, login, login_target, request, spawn, strict_options, TestResult, APPID,
    };
    use crate::mock::wechat::MockWechatOptions;

    #[tokio::test]
    async fn normal_login_answers_text_plain_json() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let reply = login(addr, "alice.1").await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        let body = reply.json()?;
        assert_eq!(body.get("errcode"), None);
        assert_eq!(body.get("unionid"), None);
        let openid = body["openid"].as_str().ok_or("no openid")?;
        assert_eq!(openid.len(), 28);
        assert!(openid.starts_with('o'));
        let key = body["session_key"].as_str().ok_or("no session_key")?;
        assert_eq!(STANDARD.decode(key)?.len(), 16);
        Ok(())
    }

    #[tokio::test]
    async fn reused_code_gets_40163() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        assert_eq!(errcode(&login(addr, "bob").await?), None);
        let again = login(addr, "bob").await?;
        assert_eq!(again.status, 200);
        assert_eq!(again.header("content-type"), Some("text/plain"));
        assert_eq!(errcode(&again), Some(40163));
        Ok(())
    }

    #[tokio::test]
    async fn one_user_keeps_one_openid_across_codes() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let first = login(addr, "carol.1").await?.json()?;
        let second = login(addr, "carol.2").await?.json()?;
        let other = login(addr, "dave.1").await?.json()?;
        assert_eq!(first["openid"], second["openid"]);
        assert_ne!(first["openid"], other["openid"]);
        assert_ne!(first["session_key"], second["session_key"]);
        assert_eq!(
            first["openid"].as_str(),
            Some(openid(APPID, "carol").as_str())
        );

        let elsewhere = request(addr, "GET", &login_target("wxotherapp", "carol.3"))
            .await?
            .json()?;
        assert_ne!(first["openid"], elsewhere["openid"]);
        Ok(())
    }

    #[tokio::test]
    async fn err_prefix_answers_that_errcode_without_consuming() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        for (code, want) in [
            ("err-1-x", -1),
            ("err-1-x", -1),
            ("err40029-x", 40029),
            ("err45011-x", 45011),
            ("err40226-x", 40226),
        ] {
            let reply = login(addr, code).await?;
            assert_eq!(reply.status, 200, "{code}");
            assert_eq!(reply.header("content-type"), Some("text/plain"));
            let body = reply.json()?;
            assert_eq!(body["errcode"].as_i64(), Some(want), "{code}");
            let msg = body["errmsg"].as_str().ok_or("no errmsg")?;
            assert!(msg.starts_with("mock error rid: "), "{msg}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn union_prefix_adds_a_stable_unionid() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let first = login(addr, "union-erin.1").await?.json()?;
        let second = request(addr, "GET", &login_target("wxotherapp", "union-erin.2"))
            .await?
            .json()?;
        let unionid = first["unionid"].as_str().ok_or("no unionid")?;
        assert_eq!(unionid.len(), 28);
        assert!(unionid.starts_with('u'));
        assert_eq!(first["unionid"], second["unionid"]);
        assert_ne!(first["openid"], second["openid"]);
        // The prefix is not part of the user: a plain code of the same user has the same openid.
        let plain = login(addr, "erin.3").await?.json()?;
        assert_eq!(first["openid"], plain["openid"]);
        Ok(())
    }

    #[tokio::test]
    async fn slow_prefix_waits_and_composes() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let start = Instant::now();
        let body = login(addr, "slow200-union-frank.1").await?.json()?;
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(body["unionid"].is_string());
        assert!(body["openid"].is_string());
        Ok(())
    }

    #[tokio::test]
    async fn malformed_codes_get_40029() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let long = "a".repeat(MAX_CODE_LEN + 1);
        for code in [
            "bad%21code",
            "sp%20ace",
            "%E4%BD%A0",
            "%FF%FE",
            long.as_str(),
            "union-",
        ] {
            let reply = login(addr, code).await?;
            assert_eq!(reply.status, 200, "{code}");
            assert_eq!(errcode(&reply), Some(40029), "{code}");
        }
        let longest = "b".repeat(MAX_CODE_LEN);
        assert_eq!(errcode(&login(addr, &longest).await?), None);
        Ok(())
    }

    #[tokio::test]
    async fn html_prefix_gives_502_text_html() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let reply = login(addr, "html-x").await?;
        assert_eq!(reply.status, 502);
        assert_eq!(reply.header("content-type"), Some("text/html"));
        assert!(String::from_utf8_lossy(&reply.body).contains("502 Bad Gateway"));
        Ok(())
    }

    #[tokio::test]
    async fn garbage_prefix_gives_a_body_that_is_not_json() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let reply = login(addr, "garbage-x").await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        assert_eq!(reply.body, b"this is not json");
        Ok(())
    }

    #[tokio::test]
    async fn configured_credentials_and_missing_fields() -> TestResult {
        let addr = spawn(strict_options()).await?;
        let cases = [
            (login_target("wxwrong", "g.1"), 40013),
            (
                "/sns/jscode2session?secret=s3cret&js_code=g.1&grant_type=authorization_code"
                    .to_owned(),
                40013,
            ),
            (login_target(APPID, "g.1").replace("s3cret", "wrong"), 40125),
            (
                login_target(APPID, "g.1").replace("authorization_code", "client_credential"),
                40002,
            ),
            (
                format!("/sns/jscode2session?appid={APPID}&secret=s3cret&js_code=g.1"),
                40002,
            ),
            (
                format!(
                    "/sns/jscode2session?appid={APPID}&secret=s3cret&grant_type=authorization_code"
                ),
                41008,
            ),
            (login_target(APPID, ""), 41008),
            (
                "/sns/jscode2session?%zz&appid=%ff%fe&&=&js_code".to_owned(),
                40013,
            ),
        ];
        for (target, want) in cases {
            let reply = request(addr, "GET", &target).await?;
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(errcode(&reply), Some(want), "{target}");
        }
        assert_eq!(errcode(&login(addr, "g.1").await?), None);
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_exchanges_of_one_code_have_one_winner() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        for round in 0..5 {
            let code = format!("slow50-ivy.{round}");
            let (a, b) = tokio::join!(login(addr, &code), login(addr, &code));
            let mut codes = [errcode(&a?), errcode(&b?)];
            codes.sort();
            assert_eq!(codes, [None, Some(40163)], "{code}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn fixedkey_login_gives_the_sample_session_key() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let body = login(addr, "fixedkey-quinn.1").await?.json()?;
        assert_eq!(body["session_key"], "tiihtNczf5v6AKRyjwEUhQ==");
        assert_eq!(
            body["openid"].as_str(),
            Some(openid(APPID, "quinn").as_str())
        );
        assert_eq!(body.get("unionid"), None);
        let body = login(addr, "slow5-union-fixedkey-quinn.2").await?.json()?;
        assert_eq!(body["session_key"], SAMPLE_SESSION_KEY);
        assert!(body["unionid"].is_string());
        let plain = login(addr, "quinn.3").await?.json()?;
        assert_ne!(plain["session_key"], SAMPLE_SESSION_KEY);
        Ok(())
    }
}

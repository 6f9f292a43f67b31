//! `POST /cgi-bin/stable_token` and `GET /cgi-bin/token`: the access-token APIs, answering from
//! the token book.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::answers::{error_as, reply_as, TOKEN_JSON};
use super::{count, credential_error, lock, query_params, MockState, MockWechatOptions};

fn token_error(errcode: i64, msg: &str) -> Response {
    error_as(TOKEN_JSON, errcode, msg)
}

fn token_reply(token: String, expires_in: u64) -> Response {
    let body = json!({ "access_token": token, "expires_in": expires_in });
    reply_as(TOKEN_JSON, StatusCode::OK, body.to_string())
}

/// What both token APIs check first, `grant_type` and then the credentials, reading the request's
/// fields with `field`: the appid asked for (empty when none), or the errcode and message.
fn client_credential<'a>(
    opts: &MockWechatOptions,
    field: impl Fn(&str) -> Option<&'a str>,
) -> Result<&'a str, (i64, &'static str)> {
    if field("grant_type") != Some("client_credential") {
        return Err((40002, "invalid grant_type"));
    }
    let appid = field("appid");
    match credential_error(opts, appid, field("secret")) {
        Some(error) => Err(error),
        None => Ok(appid.unwrap_or_default()),
    }
}

pub(super) async fn stable_token(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    count(&state.counters.stable_token);
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
        return token_error(47001, "data format error");
    };
    let field = |name: &str| request.get(name).and_then(Value::as_str);
    let appid = match client_credential(&state.opts, field) {
        Ok(appid) => appid,
        Err((errcode, msg)) => return token_error(errcode, msg),
    };
    let force = match request.get("force_refresh") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => return token_error(47001, "data format error"),
    };
    if force {
        count(&state.counters.stable_token_forced);
    }
    let (token, expires_in) =
        lock(&state.tokens).stable(appid, force, state.opts.token_ttl, Instant::now());
    token_reply(token, expires_in)
}

pub(super) async fn classic_token(
    State(state): State<Arc<MockState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    count(&state.counters.token);
    let params = query_params(query);
    let param = |name: &str| params.get(name).map(String::as_str);
    let appid = match client_credential(&state.opts, param) {
        Ok(appid) => appid,
        Err((errcode, msg)) => return token_error(errcode, msg),
    };
    let ttl = state.opts.token_ttl;
    let token = lock(&state.tokens).classic(appid, ttl, Instant::now());
    token_reply(token, ttl)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::mock::wechat::testing::{
        classic_target, classic_token_of, errcode, phone, post, request, spawn, stable_body,
        stable_token_of, stats_of, strict_options, TestResult, APPID,
    };
    use crate::mock::wechat::MockWechatOptions;

    /// The mock's counts of `stable_token` calls: all of them, and those with `force_refresh`.
    async fn stable_calls(addr: SocketAddr) -> Result<(u64, u64), Box<dyn std::error::Error>> {
        let stats = stats_of(addr).await?;
        let count = |name: &str| stats[name].as_u64().ok_or(format!("no {name}"));
        Ok((count("stable_token")?, count("stable_token_forced")?))
    }

    fn url_safe(token: &str) -> bool {
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    }

    #[tokio::test]
    async fn stable_token_is_handed_out_again_and_counted() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let first = post(addr, "/cgi-bin/stable_token", &stable_body(false)).await?;
        assert_eq!(first.status, 200);
        assert_eq!(
            first.header("content-type"),
            Some("application/json; encoding=utf-8")
        );
        let first = first.json()?;
        assert_eq!(first.get("errcode"), None);
        assert_eq!(first["expires_in"].as_u64(), Some(7200));
        let token = first["access_token"].as_str().ok_or("no access_token")?;
        assert!(token.len() >= 32, "{token}");
        assert!(url_safe(token), "{token}");

        let (again, expires_in) = stable_token_of(addr, false).await?;
        assert_eq!(again, token);
        assert!((7198..=7200).contains(&expires_in), "{expires_in}");
        assert_eq!(stable_calls(addr).await?, (2, 0));
        Ok(())
    }

    #[tokio::test]
    async fn force_refresh_mints_a_new_token_and_invalidates_the_old() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (old, _) = stable_token_of(addr, false).await?;
        let (new, expires_in) = stable_token_of(addr, true).await?;
        assert_ne!(old, new);
        assert_eq!(expires_in, 7200);
        assert_eq!(errcode(&phone(addr, &old, "amy.1").await?), Some(40001));
        assert_eq!(errcode(&phone(addr, &new, "amy.1").await?), Some(0));
        // The new token is the current one from now on.
        assert_eq!(stable_token_of(addr, false).await?.0, new);
        assert_eq!(stable_calls(addr).await?, (3, 1));
        Ok(())
    }

    #[tokio::test]
    async fn expired_stable_token_gets_42001_and_is_renewed() -> TestResult {
        let addr = spawn(MockWechatOptions {
            token_ttl: 1,
            ..MockWechatOptions::default()
        })
        .await?;
        let (first, expires_in) = stable_token_of(addr, false).await?;
        assert_eq!(expires_in, 1);
        // Less than a second left still says 1, and no window below 24 s: handed out again.
        assert_eq!(stable_token_of(addr, false).await?, (first.clone(), 1));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(errcode(&phone(addr, &first, "kim.1").await?), Some(42001));
        let (renewed, _) = stable_token_of(addr, false).await?;
        assert_ne!(renewed, first);
        assert_eq!(errcode(&phone(addr, &renewed, "kim.1").await?), Some(0));
        Ok(())
    }

    #[tokio::test]
    async fn classic_token_mints_on_every_call_and_both_work() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let a = classic_token_of(addr, APPID).await?;
        let b = classic_token_of(addr, APPID).await?;
        assert_ne!(a, b);
        assert!(a.len() >= 32 && url_safe(&a), "{a}");
        assert_eq!(errcode(&phone(addr, &a, "lee.1").await?), Some(0));
        assert_eq!(errcode(&phone(addr, &b, "lee.2").await?), Some(0));
        // The watermark names the appid the token was issued for.
        let other = classic_token_of(addr, "wxotherapp").await?;
        let body = phone(addr, &other, "lee.3").await?.json()?;
        assert_eq!(body["phone_info"]["watermark"]["appid"], "wxotherapp");
        assert_eq!(stats_of(addr).await?["token"], 3);
        Ok(())
    }

    #[tokio::test]
    async fn token_apis_check_body_grant_type_and_credentials() -> TestResult {
        let addr = spawn(strict_options()).await?;
        let with = |field: &str, value: Value| -> Result<String, serde_json::Error> {
            let mut body: Value = serde_json::from_str(&stable_body(false))?;
            body[field] = value;
            Ok(body.to_string())
        };
        let mut no_grant: Value = serde_json::from_str(&stable_body(false))?;
        no_grant
            .as_object_mut()
            .ok_or("not an object")?
            .remove("grant_type");
        let cases = [
            ("not json".to_owned(), 47001),
            (String::new(), 47001),
            ("[1]".to_owned(), 47001),
            (with("grant_type", json!("authorization_code"))?, 40002),
            (no_grant.to_string(), 40002),
            (with("appid", json!("wxwrong"))?, 40013),
            (with("appid", json!(7))?, 40013),
            (with("secret", json!("wrong"))?, 40125),
            (with("force_refresh", json!("yes"))?, 47001),
        ];
        for (body, want) in cases {
            let reply = post(addr, "/cgi-bin/stable_token", &body).await?;
            assert_eq!(reply.status, 200, "{body}");
            assert_eq!(reply.header("content-type"), Some(TOKEN_JSON), "{body}");
            assert_eq!(errcode(&reply), Some(want), "{body}");
        }
        // `force_refresh` may be left out or null.
        let mut plain: Value = serde_json::from_str(&stable_body(false))?;
        plain
            .as_object_mut()
            .ok_or("not an object")?
            .remove("force_refresh");
        for body in [plain.to_string(), with("force_refresh", Value::Null)?] {
            let reply = post(addr, "/cgi-bin/stable_token", &body).await?.json()?;
            assert!(reply["access_token"].is_string(), "{body}");
        }

        let classic = classic_target(APPID);
        for (target, want) in [
            (
                classic.replace("client_credential", "authorization_code"),
                40002,
            ),
            (classic.replace("grant_type=client_credential&", ""), 40002),
            (classic_target("wxwrong"), 40013),
            (classic.replace("s3cret", "wrong"), 40125),
            ("/cgi-bin/token?%zz&grant_type".to_owned(), 40002),
        ] {
            let reply = request(addr, "GET", &target).await?;
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(reply.header("content-type"), Some(TOKEN_JSON), "{target}");
            assert_eq!(errcode(&reply), Some(want), "{target}");
        }
        assert_eq!(stable_calls(addr).await?, (11, 0));
        assert_eq!(stats_of(addr).await?["token"], 5);
        Ok(())
    }
}

//! `POST /wxa/business/getuserphonenumber`: the phone number API, checking the access token
//! first, then the single-use phone code.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::answers::{error_as, follow_plan, reply_as, unix_now, PHONE_JSON};
use super::plan::{pure_phone_number, user_of, valid_code};
use super::{claim, count, lock, query_params, MockState};

fn phone_error(errcode: i64, msg: &str) -> Response {
    error_as(PHONE_JSON, errcode, msg)
}

pub(super) async fn getuserphonenumber(
    State(state): State<Arc<MockState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Bytes,
) -> Response {
    count(&state.counters.getuserphonenumber);
    let params = query_params(query);
    let Some(token) = params.get("access_token").filter(|t| !t.is_empty()) else {
        return phone_error(41001, "access_token missing");
    };
    let appid = match lock(&state.tokens).check(token, Instant::now()) {
        Ok(appid) => appid,
        Err(40001) => {
            return phone_error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            )
        }
        Err(errcode) => return phone_error(errcode, "access_token expired"),
    };
    let request = serde_json::from_slice::<Value>(&body).ok();
    let Some(full_code) = request.as_ref().and_then(|r| r.get("code")?.as_str()) else {
        return phone_error(47001, "data format error");
    };
    if full_code.is_empty() || !valid_code(full_code) {
        return phone_error(40029, "invalid code");
    }

    let (code, hooks) = match follow_plan(full_code, PHONE_JSON).await {
        Ok(success) => success,
        Err(answer) => return answer,
    };
    if code.is_empty() || !claim(&state.used_phone_codes, full_code) {
        return phone_error(40029, "invalid code");
    }

    let pure = pure_phone_number(user_of(code));
    let country_code = if hooks.numeric_country_code {
        json!(86)
    } else {
        json!("86")
    };
    let body = json!({
        "errcode": 0,
        "errmsg": "ok",
        "phone_info": {
            "phoneNumber": format!("+86 {pure}"),
            "purePhoneNumber": pure,
            "countryCode": country_code,
            "watermark": { "timestamp": unix_now(), "appid": appid },
        },
    });
    reply_as(PHONE_JSON, StatusCode::OK, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::wechat::plan::MAX_CODE_LEN;
    use crate::mock::wechat::testing::{
        check_watermark, errcode, login, phone, post, spawn, stable_token_of, stats_of,
        strict_options, TestResult, APPID,
    };
    use crate::mock::wechat::MockWechatOptions;

    #[tokio::test]
    async fn phone_number_shape_and_one_phone_per_user() -> TestResult {
        let addr = spawn(strict_options()).await?;
        let (token, _) = stable_token_of(addr, false).await?;
        let reply = phone(addr, &token, "alice.1").await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body = reply.json()?;
        assert_eq!(body["errcode"], 0);
        assert_eq!(body["errmsg"], "ok");
        let info = &body["phone_info"];
        let pure = info["purePhoneNumber"]
            .as_str()
            .ok_or("no purePhoneNumber")?;
        assert_eq!(pure.len(), 11);
        assert!(pure.starts_with("138") && pure.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(pure, pure_phone_number("alice"));
        assert_eq!(info["phoneNumber"], format!("+86 {pure}"));
        assert_eq!(info["countryCode"], "86");
        check_watermark(&info["watermark"], APPID)?;

        let again = phone(addr, &token, "alice.2").await?.json()?;
        assert_eq!(again["phone_info"]["purePhoneNumber"], pure);
        let other = phone(addr, &token, "slow10-bob.1").await?.json()?;
        let other = other["phone_info"]["purePhoneNumber"].as_str();
        assert!(other.is_some_and(|other| other != pure), "{other:?}");
        Ok(())
    }

    #[tokio::test]
    async fn phone_codes_are_single_use_and_checked() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (token, _) = stable_token_of(addr, false).await?;
        assert_eq!(errcode(&phone(addr, &token, "pat.1").await?), Some(0));
        let reused = phone(addr, &token, "pat.1").await?;
        assert_eq!(reused.status, 200);
        assert_eq!(errcode(&reused), Some(40029));
        assert_eq!(errcode(&phone(addr, &token, "pat.2").await?), Some(0));
        // A login code and a phone code are different things: the same text may be both.
        assert_eq!(errcode(&login(addr, "pat.1").await?), None);

        let long = "a".repeat(MAX_CODE_LEN + 1);
        for code in ["bad!code", "sp ace", "你好", "", "numcc-", long.as_str()] {
            assert_eq!(
                errcode(&phone(addr, &token, code).await?),
                Some(40029),
                "{code}"
            );
        }
        let longest = "b".repeat(MAX_CODE_LEN);
        assert_eq!(errcode(&phone(addr, &token, &longest).await?), Some(0));
        Ok(())
    }

    #[tokio::test]
    async fn phone_token_errors_come_first() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let path = "/wxa/business/getuserphonenumber";
        let code = json!({ "code": "uma.1" }).to_string();
        for (target, body, want) in [
            (path.to_owned(), code.as_str(), 41001),
            (format!("{path}?access_token="), code.as_str(), 41001),
            (format!("{path}?access_token=&x=%zz"), "not json", 41001),
            (
                format!("{path}?access_token=nonsense"),
                code.as_str(),
                40001,
            ),
            (format!("{path}?access_token=nonsense"), "not json", 40001),
        ] {
            let reply = post(addr, &target, body).await?;
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(reply.header("content-type"), Some("application/json"));
            assert_eq!(errcode(&reply), Some(want), "{target}");
        }
        assert_eq!(stats_of(addr).await?["getuserphonenumber"], 5);
        Ok(())
    }

    #[tokio::test]
    async fn phone_body_must_be_json_with_a_string_code() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (token, _) = stable_token_of(addr, false).await?;
        let target = format!("/wxa/business/getuserphonenumber?access_token={token}");
        for body in [
            "not json",
            "",
            "[1]",
            "{}",
            r#"{"code":5}"#,
            r#"{"code":null}"#,
            r#"{"openid":"ox"}"#,
        ] {
            let reply = post(addr, &target, body).await?;
            assert_eq!(reply.status, 200, "{body}");
            assert_eq!(errcode(&reply), Some(47001), "{body}");
        }
        // `openid` is optional.
        let reply = post(addr, &target, r#"{"code":"vic.1"}"#).await?;
        assert_eq!(errcode(&reply), Some(0));
        Ok(())
    }

    #[tokio::test]
    async fn phone_prefixes() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (token, _) = stable_token_of(addr, false).await?;
        for (code, want) in [
            ("err45011-x", 45011),
            ("err45011-x", 45011),
            ("err-1-y", -1),
        ] {
            let body = phone(addr, &token, code).await?.json()?;
            assert_eq!(body["errcode"].as_i64(), Some(want), "{code}");
            let msg = body["errmsg"].as_str().ok_or("no errmsg")?;
            assert!(msg.starts_with("mock error rid: "), "{msg}");
        }
        let numeric = phone(addr, &token, "numcc-nina.1").await?.json()?;
        assert_eq!(numeric["phone_info"]["countryCode"], json!(86));
        let plain = phone(addr, &token, "nina.2").await?.json()?;
        assert_eq!(plain["phone_info"]["countryCode"], json!("86"));
        assert_eq!(
            numeric["phone_info"]["purePhoneNumber"],
            plain["phone_info"]["purePhoneNumber"]
        );
        let html = phone(addr, &token, "html-x").await?;
        assert_eq!(html.status, 502);
        assert_eq!(html.header("content-type"), Some("text/html"));
        let garbage = phone(addr, &token, "garbage-x").await?;
        assert_eq!(garbage.status, 200);
        assert_eq!(garbage.body, b"this is not json");
        Ok(())
    }
}

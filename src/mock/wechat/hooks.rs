//! The `/__mock/*` test endpoints: call counts (`stats`, `reset`), `invalidate_tokens`, and
//! `encrypt`, which plays the WeChat client in the legacy encrypted-data flow.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::answers::unix_now;
use super::{lock, MockState, Stats};
use crate::wechat::crypto;

pub(super) async fn stats(State(state): State<Arc<MockState>>) -> Json<Stats> {
    Json(state.counters.snapshot())
}

pub(super) async fn reset(State(state): State<Arc<MockState>>) -> Json<Value> {
    state.counters.reset();
    Json(json!({ "ok": true }))
}

pub(super) async fn invalidate_tokens(State(state): State<Arc<MockState>>) -> Json<Value> {
    lock(&state.tokens).invalidate_all();
    Json(json!({ "ok": true }))
}

/// The next call of an open API (`msg_sec_check`, `getwxacodeunlimit`) answers 40001.
pub(super) async fn refuse_token_once(State(state): State<Arc<MockState>>) -> Json<Value> {
    state
        .refuse_token
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Json(json!({ "ok": true }))
}

/// An answer of a `/__mock/` endpoint that is not a success.
fn mock_error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "errcode": -1, "errmsg": msg }))).into_response()
}

pub(super) async fn encrypt(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
        return mock_error(StatusCode::BAD_REQUEST, "mock: body must be a JSON object");
    };
    let Some(openid) = request.get("openid").and_then(Value::as_str) else {
        return mock_error(StatusCode::BAD_REQUEST, "mock: openid must be a string");
    };
    let Some(Value::Object(mut data)) = request.get("data").cloned() else {
        return mock_error(StatusCode::BAD_REQUEST, "mock: data must be a JSON object");
    };
    let appid_override = match request.get("appid") {
        None | Some(Value::Null) => None,
        Some(Value::String(appid)) => Some(appid.clone()),
        Some(_) => return mock_error(StatusCode::BAD_REQUEST, "mock: appid must be a string"),
    };
    let Some(session) = lock(&state.sessions).get(openid).cloned() else {
        return mock_error(StatusCode::NOT_FOUND, "mock: no session for that openid");
    };
    let appid = appid_override.unwrap_or(session.appid);
    data.insert(
        "watermark".to_owned(),
        json!({ "timestamp": unix_now(), "appid": appid }),
    );
    let plaintext = Value::Object(data).to_string();
    match crypto::encrypt(&session.session_key, plaintext.as_bytes(), rand::random()) {
        Ok((encrypted_data, iv)) => {
            Json(json!({ "encryptedData": encrypted_data, "iv": iv })).into_response()
        }
        // Only keys the mock made itself are stored, so this would be a bug in the mock.
        Err(e) => mock_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("mock: cannot encrypt: {e:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    use super::*;
    use crate::mock::wechat::login::SAMPLE_SESSION_KEY;
    use crate::mock::wechat::testing::{
        check_watermark, classic_token_of, errcode, login, phone, post, request, spawn,
        stable_token_of, stats_of, TestResult, APPID,
    };
    use crate::mock::wechat::MockWechatOptions;

    fn zero_stats() -> Value {
        json!({
            "jscode2session": 0,
            "stable_token": 0,
            "stable_token_forced": 0,
            "token": 0,
            "getuserphonenumber": 0,
            "msg_sec_check": 0,
            "getwxacodeunlimit": 0,
        })
    }

    #[tokio::test]
    async fn stats_count_calls_and_reset_keeps_used_codes() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let stats = request(addr, "GET", "/__mock/stats").await?;
        assert_eq!(stats.header("content-type"), Some("application/json"));
        assert_eq!(stats.json()?, zero_stats());

        login(addr, "henry.1").await?;
        login(addr, "henry.1").await?;
        login(addr, "err-1-x").await?;
        request(addr, "GET", "/sns/jscode2session").await?;
        let stats = request(addr, "GET", "/__mock/stats").await?.json()?;
        let mut want = zero_stats();
        want["jscode2session"] = json!(4);
        assert_eq!(stats, want);

        let reset = request(addr, "POST", "/__mock/reset").await?;
        assert_eq!(reset.json()?, json!({ "ok": true }));
        let stats = request(addr, "GET", "/__mock/stats").await?.json()?;
        assert_eq!(stats, zero_stats());
        assert_eq!(errcode(&login(addr, "henry.1").await?), Some(40163));
        Ok(())
    }

    #[tokio::test]
    async fn invalidate_tokens_makes_every_token_40001() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (stable, _) = stable_token_of(addr, false).await?;
        let classic = classic_token_of(addr, APPID).await?;
        assert_eq!(errcode(&phone(addr, &stable, "wes.1").await?), Some(0));
        assert_eq!(errcode(&phone(addr, &classic, "wes.2").await?), Some(0));

        let reply = post(addr, "/__mock/invalidate_tokens", "").await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.json()?, json!({ "ok": true }));
        assert_eq!(errcode(&phone(addr, &stable, "wes.3").await?), Some(40001));
        assert_eq!(errcode(&phone(addr, &classic, "wes.4").await?), Some(40001));

        // The next stable_token call mints a fresh, working token.
        let (fresh, expires_in) = stable_token_of(addr, false).await?;
        assert_ne!(fresh, stable);
        assert_eq!(expires_in, 7200);
        assert_eq!(errcode(&phone(addr, &fresh, "wes.5").await?), Some(0));
        Ok(())
    }

    /// `/__mock/encrypt` for `openid`, returning `(encryptedData, iv)`.
    async fn encrypt_for(
        addr: SocketAddr,
        request: Value,
    ) -> Result<(String, String), Box<dyn std::error::Error>> {
        let reply = post(addr, "/__mock/encrypt", &request.to_string()).await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body = reply.json()?;
        let data = body["encryptedData"].as_str().ok_or("no encryptedData")?;
        let iv = body["iv"].as_str().ok_or("no iv")?;
        Ok((data.to_owned(), iv.to_owned()))
    }

    fn decrypt(key: &str, data: &str, iv: &str, appid: &str) -> Result<Value, String> {
        crypto::decrypt_user_data(key, data, iv, appid).map_err(|e| format!("{e:?}"))
    }

    #[tokio::test]
    async fn encrypt_round_trips_through_decrypt_user_data() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let first = login(addr, "rose.1").await?.json()?;
        let openid = first["openid"].as_str().ok_or("no openid")?;
        let key = first["session_key"].as_str().ok_or("no session_key")?;
        let data = json!({ "phoneNumber": "+86 13800000000", "countryCode": "86" });

        let (encrypted, iv) = encrypt_for(addr, json!({ "openid": openid, "data": data })).await?;
        assert_eq!(STANDARD.decode(&iv)?.len(), 16);
        let plain = decrypt(key, &encrypted, &iv, APPID)?;
        assert_eq!(plain["phoneNumber"], "+86 13800000000");
        assert_eq!(plain["countryCode"], "86");
        check_watermark(&plain["watermark"], APPID)?;
        assert_eq!(
            decrypt(key, &encrypted, &iv, "wxsomeoneelse"),
            Err("Watermark".to_owned())
        );

        // The watermark appid can be overridden, to provoke the gateway's watermark check.
        let request = json!({ "openid": openid, "data": {}, "appid": "wxsomeoneelse" });
        let (encrypted, iv) = encrypt_for(addr, request).await?;
        let plain = decrypt(key, &encrypted, &iv, "wxsomeoneelse")?;
        assert_eq!(plain["watermark"]["appid"], "wxsomeoneelse");

        // The latest login's key is used, as WeChat rotates session_key on login.
        let second = login(addr, "rose.2").await?.json()?;
        let new_key = second["session_key"].as_str().ok_or("no session_key")?;
        let (encrypted, iv) = encrypt_for(addr, json!({ "openid": openid, "data": data })).await?;
        assert!(decrypt(new_key, &encrypted, &iv, APPID).is_ok());
        assert!(decrypt(key, &encrypted, &iv, APPID).is_err());

        // A fixedkey- login encrypts with WeChat's sample key.
        let fixed = login(addr, "fixedkey-sam.1").await?.json()?;
        let openid = fixed["openid"].as_str().ok_or("no openid")?;
        let (encrypted, iv) = encrypt_for(addr, json!({ "openid": openid, "data": data })).await?;
        let plain = decrypt(SAMPLE_SESSION_KEY, &encrypted, &iv, APPID)?;
        assert_eq!(plain["phoneNumber"], "+86 13800000000");
        Ok(())
    }

    #[tokio::test]
    async fn encrypt_rejects_unknown_openids_and_bad_requests() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let reply = post(addr, "/__mock/encrypt", r#"{"openid":"onobody","data":{}}"#).await?;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(
            reply.json()?,
            json!({ "errcode": -1, "errmsg": "mock: no session for that openid" })
        );

        let body = login(addr, "tom.1").await?.json()?;
        let openid = body["openid"].as_str().ok_or("no openid")?;
        for request in [
            "not json".to_owned(),
            "[1]".to_owned(),
            json!({ "data": {} }).to_string(),
            json!({ "openid": openid }).to_string(),
            json!({ "openid": openid, "data": [1] }).to_string(),
            json!({ "openid": openid, "data": "x" }).to_string(),
            json!({ "openid": openid, "data": {}, "appid": 5 }).to_string(),
        ] {
            let reply = post(addr, "/__mock/encrypt", &request).await?;
            assert_eq!(reply.status, 400, "{request}");
            assert_eq!(errcode(&reply), Some(-1), "{request}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn stats_count_every_api_and_reset_zeroes_them() -> TestResult {
        let addr = spawn(MockWechatOptions::default()).await?;
        let (token, _) = stable_token_of(addr, false).await?;
        stable_token_of(addr, true).await?;
        post(addr, "/cgi-bin/stable_token", "not json").await?;
        classic_token_of(addr, APPID).await?;
        request(addr, "GET", "/cgi-bin/token").await?;
        post(addr, "/wxa/business/getuserphonenumber", "{}").await?;
        phone(addr, &token, "xena.1").await?;
        login(addr, "xena.1").await?;
        assert_eq!(
            stats_of(addr).await?,
            json!({
                "jscode2session": 1,
                "stable_token": 3,
                "stable_token_forced": 1,
                "token": 2,
                "getuserphonenumber": 2,
                "msg_sec_check": 0,
                "getwxacodeunlimit": 0,
            })
        );
        post(addr, "/__mock/reset", "").await?;
        assert_eq!(stats_of(addr).await?, zero_stats());
        Ok(())
    }
}

//! The open APIs an upstream app calls through the relay: `POST /wxa/msg_sec_check` (JSON) and
//! `POST /wxa/getwxacodeunlimit` (a PNG), each checking the access token as the phone API does,
//! and answering 40001 once when `/__mock/refuse_token_once` asked for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::answers::{error_as, reply_as, PHONE_JSON};
use super::{count, lock, MockState};

/// A 1x1 PNG: binary, with NUL, CR LF and bytes that are not UTF-8, as a wxacode image has.
pub(super) const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// The names of the query's parameters, in order (a token sent twice shows twice).
fn param_names(query: &Option<String>) -> Vec<String> {
    query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split('=').next().unwrap_or_default().to_owned())
        .collect()
}

/// The access token check of every API that takes one: the token's appid, or the errcode and
/// message to answer.
fn check_token(state: &MockState, query: &Option<String>) -> Result<String, (i64, &'static str)> {
    let tokens: Vec<String> = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.strip_prefix("access_token="))
        .map(|t| {
            percent_encoding::percent_decode_str(t)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let [token] = tokens.as_slice() else {
        return Err((41001, "access_token missing (or sent more than once)"));
    };
    let refuse = state
        .refuse_token
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    const INVALID: &str = "invalid credential, access_token is invalid or not latest";
    if refuse {
        return Err((40001, INVALID));
    }
    match lock(&state.tokens).check(token, Instant::now()) {
        Ok(appid) => Ok(appid),
        Err(40001) => Err((40001, INVALID)),
        Err(errcode) => Err((errcode, "access_token expired")),
    }
}

pub(super) async fn msg_sec_check(
    State(state): State<Arc<MockState>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    count(&state.counters.msg_sec_check);
    let appid = match check_token(&state, &query) {
        Ok(appid) => appid,
        Err((errcode, msg)) => return error_as(PHONE_JSON, errcode, msg),
    };
    let request = serde_json::from_slice::<Value>(&body).ok();
    let Some(content) = request.as_ref().and_then(|r| r.get("content")?.as_str()) else {
        return error_as(PHONE_JSON, 47001, "data format error");
    };
    let slow = content
        .strip_prefix("slow")
        .and_then(|rest| rest.split('-').next()?.parse::<u64>().ok());
    if let Some(ms) = slow {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
    let (suggest, label) = if content.contains("risky") {
        ("risky", 20001)
    } else {
        ("pass", 100)
    };
    let body = json!({
        "errcode": 0,
        "errmsg": "ok",
        "result": { "suggest": suggest, "label": label },
        "trace_id": format!("mock-{:016x}", rand::random::<u64>()),
        "mock_params": param_names(&query),
        "mock_appid": appid,
    });
    reply_as(PHONE_JSON, StatusCode::OK, body.to_string())
}

pub(super) async fn getwxacodeunlimit(
    State(state): State<Arc<MockState>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    count(&state.counters.getwxacodeunlimit);
    if let Err((errcode, msg)) = check_token(&state, &query) {
        return error_as(PHONE_JSON, errcode, msg);
    }
    let request = serde_json::from_slice::<Value>(&body).ok();
    if request
        .as_ref()
        .and_then(|r| r.get("scene")?.as_str())
        .is_none()
    {
        return error_as(PHONE_JSON, 47001, "data format error");
    }
    ([(header::CONTENT_TYPE, "image/png")], PNG).into_response()
}

//! How WeChat answers: the content type of each API, errcode bodies with a `rid`, the answers a
//! code's plan asks for (errcodes, nginx's HTML 502, a body that is not JSON) and watermark
//! timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::plan::{plan, Hooks, Plan};

/// How the APIs label their JSON: jscode2session says `text/plain`, the token APIs add a
/// non-standard `encoding` parameter, the phone API is plain `application/json`.
pub(super) const TEXT_PLAIN: &str = "text/plain";
pub(super) const TOKEN_JSON: &str = "application/json; encoding=utf-8";
pub(super) const PHONE_JSON: &str = "application/json";

/// Seconds since the Unix epoch, as WeChat's watermarks carry them.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// WeChat's request id, shaped like the real ones (`rid: 6512a3b4-1a2b3c4d-5e6f7a8b`): it changes
/// on every answer, which is why clients must never match on `errmsg`.
fn rid() -> String {
    let [a, b, c]: [u32; 3] = rand::random();
    format!("{a:08x}-{b:08x}-{c:08x}")
}

/// An answer as WeChat sends it: JSON text labelled `content_type`.
pub(super) fn reply_as(content_type: &'static str, status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A WeChat error: HTTP 200, the errcode in the body.
pub(super) fn error_as(content_type: &'static str, errcode: i64, msg: &str) -> Response {
    let body = json!({ "errcode": errcode, "errmsg": format!("{msg} rid: {}", rid()) });
    reply_as(content_type, StatusCode::OK, body.to_string())
}

/// An answer as jscode2session sends it: JSON text labelled `text/plain`.
pub(super) fn wechat_reply(status: StatusCode, body: String) -> Response {
    reply_as(TEXT_PLAIN, status, body)
}

pub(super) fn wechat_error(errcode: i64, msg: &str) -> Response {
    error_as(TEXT_PLAIN, errcode, msg)
}

const HTML_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

fn html_502() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html")],
        HTML_502,
    )
        .into_response()
}

const GARBAGE: &str = "this is not json";

/// Carries out the plan of `full_code` for an API that labels its JSON `content_type`: waits the
/// `slow` delay, then answers an `err`/`html`/`garbage` code itself (`Err`), or hands back the code
/// left after the prefixes and its hooks for the API to succeed with (`Ok`).
pub(super) async fn follow_plan<'a>(
    full_code: &'a str,
    content_type: &'static str,
) -> Result<(&'a str, Hooks), Response> {
    let (delay, plan) = plan(full_code);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match plan {
        Plan::Fail(errcode) => Err(error_as(content_type, errcode, "mock error")),
        Plan::Html => Err(html_502()),
        Plan::Garbage => Err(reply_as(content_type, StatusCode::OK, GARBAGE.to_owned())),
        Plan::Succeed { code, hooks } => Ok((code, hooks)),
    }
}

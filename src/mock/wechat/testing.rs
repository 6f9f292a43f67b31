//! A client for the mock WeChat's tests: start a mock, then call each API the way the gateway does.

use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::answers::{unix_now, TOKEN_JSON};
use super::{serve_wechat, MockWechatOptions};
use crate::mock::testing::{exchange, Reply};

pub(super) type TestResult = Result<(), Box<dyn std::error::Error>>;

pub(super) const APPID: &str = "wxmockappid0001";

pub(super) async fn spawn(opts: MockWechatOptions) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_wechat(listener, opts));
    Ok(addr)
}

/// Options that demand [`APPID`] and the secret `s3cret`, which the requests below send.
pub(super) fn strict_options() -> MockWechatOptions {
    MockWechatOptions {
        appid: Some(APPID.to_owned()),
        secret: Some("s3cret".to_owned()),
        ..MockWechatOptions::default()
    }
}

/// `method target` with no body, over a fresh connection.
pub(super) async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
) -> std::io::Result<Reply> {
    exchange(addr, &format!("{method} {target} HTTP/1.1"), b"").await
}

pub(super) fn login_target(appid: &str, code: &str) -> String {
    format!(
        "/sns/jscode2session?appid={appid}&secret=s3cret&js_code={code}\
         &grant_type=authorization_code"
    )
}

pub(super) async fn login(addr: SocketAddr, code: &str) -> std::io::Result<Reply> {
    request(addr, "GET", &login_target(APPID, code)).await
}

pub(super) fn errcode(reply: &Reply) -> Option<i64> {
    reply.json().ok()?.get("errcode")?.as_i64()
}

pub(super) async fn post(addr: SocketAddr, target: &str, body: &str) -> std::io::Result<Reply> {
    exchange(addr, &format!("POST {target} HTTP/1.1"), body.as_bytes()).await
}

pub(super) fn stable_body(force: bool) -> String {
    json!({
        "grant_type": "client_credential",
        "appid": APPID,
        "secret": "s3cret",
        "force_refresh": force,
    })
    .to_string()
}

/// A stable token and its `expires_in`, or an error naming what the answer lacked.
pub(super) async fn stable_token_of(
    addr: SocketAddr,
    force: bool,
) -> Result<(String, u64), Box<dyn std::error::Error>> {
    let body = post(addr, "/cgi-bin/stable_token", &stable_body(force))
        .await?
        .json()?;
    let token = body["access_token"].as_str().ok_or("no access_token")?;
    let expires_in = body["expires_in"].as_u64().ok_or("no expires_in")?;
    Ok((token.to_owned(), expires_in))
}

pub(super) fn classic_target(appid: &str) -> String {
    format!("/cgi-bin/token?grant_type=client_credential&appid={appid}&secret=s3cret")
}

pub(super) async fn classic_token_of(
    addr: SocketAddr,
    appid: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let reply = request(addr, "GET", &classic_target(appid)).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some(TOKEN_JSON));
    let body = reply.json()?;
    assert_eq!(body["expires_in"].as_u64(), Some(7200));
    Ok(body["access_token"]
        .as_str()
        .ok_or("no access_token")?
        .to_owned())
}

pub(super) async fn phone(addr: SocketAddr, token: &str, code: &str) -> std::io::Result<Reply> {
    let target = format!("/wxa/business/getuserphonenumber?access_token={token}");
    post(
        addr,
        &target,
        &json!({ "code": code, "openid": "ox" }).to_string(),
    )
    .await
}

pub(super) async fn stats_of(addr: SocketAddr) -> Result<Value, Box<dyn std::error::Error>> {
    Ok(request(addr, "GET", "/__mock/stats").await?.json()?)
}

/// Checks that a `watermark` names `appid` and carries a timestamp of about now.
pub(super) fn check_watermark(watermark: &Value, appid: &str) -> TestResult {
    assert_eq!(watermark["appid"], appid);
    let timestamp = watermark["timestamp"].as_u64().ok_or("no timestamp")?;
    assert!(timestamp.abs_diff(unix_now()) <= 5, "{timestamp}");
    Ok(())
}

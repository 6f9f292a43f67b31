//! The WeChat API client. Errors come back as HTTP 200 with `errcode` in the body, so every call
//! reads bytes, parses leniently and branches on `errcode` only (never on `errmsg`). URLs carry
//! the appsecret: they are never logged, and reqwest errors are stripped of them.

use crate::config::{AccessTokenApi, WechatConfig};
use crate::reply::Reject;
use crate::secret::Secret;
use crate::session::Phone;
use serde::Deserialize;
use std::time::Duration;

/// The largest WeChat answer we read; real ones are a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WechatError {
    /// Connection refused, DNS failure, TLS failure: the request never got an answer.
    Unreachable,
    /// No answer within the configured timeout.
    Timeout,
    /// An answer that is not a WeChat answer (HTTP error status, HTML, not JSON, fields missing).
    BadResponse,
    /// WeChat's own `errcode`.
    Api(i64),
}

impl From<WechatError> for Reject {
    fn from(e: WechatError) -> Reject {
        match e {
            WechatError::Unreachable => Reject::WechatUnreachable,
            WechatError::Timeout => Reject::WechatTimeout,
            WechatError::BadResponse => Reject::WechatBadResponse,
            WechatError::Api(errcode) => Reject::Wechat { errcode },
        }
    }
}

/// What `jscode2session` gives for a valid code.
#[derive(Debug, Clone)]
pub struct Code2Session {
    pub openid: String,
    pub unionid: Option<String>,
    pub session_key: Secret,
}

#[derive(Deserialize)]
struct Code2SessionAnswer {
    #[serde(default)]
    errcode: i64,
    openid: Option<String>,
    session_key: Option<String>,
    unionid: Option<String>,
}

/// An access token as WeChat handed it out.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_in: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    errcode: i64,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct PhoneAnswer {
    #[serde(default)]
    errcode: i64,
    phone_info: Option<PhoneInfo>,
}

#[derive(Deserialize)]
struct PhoneInfo {
    #[serde(rename = "phoneNumber")]
    phone_number: String,
    #[serde(rename = "purePhoneNumber")]
    pure_phone_number: String,
    /// Documented as a string, shown as a number in WeChat's own example: accept both.
    #[serde(rename = "countryCode")]
    country_code: serde_json::Value,
    watermark: Option<Watermark>,
}

#[derive(Deserialize)]
struct Watermark {
    appid: Option<String>,
}

/// What WeChat answered to a relayed call, as it came (see `crate::relay`).
#[derive(Debug, Clone)]
pub struct Relayed {
    pub status: u16,
    pub content_type: Option<http::HeaderValue>,
    pub body: bytes::Bytes,
}

/// A relayed request's body: kept whole (it can be sent again), or streamed as it arrives.
pub enum RelayBody {
    Kept(bytes::Bytes),
    Streamed {
        body: reqwest::Body,
        /// The app's `Content-Length`, when it sent one.
        length: Option<u64>,
    },
}

/// The largest answer the relay passes on (a wxacode PNG is tens of KiB).
pub const MAX_RELAYED_ANSWER: usize = 8 * 1024 * 1024;

pub struct WechatClient {
    http: reqwest::Client,
    api_base: String,
    code2session_url: String,
    appid: String,
    secret: Secret,
    timeout: Duration,
    access_token_api: AccessTokenApi,
}

impl WechatClient {
    pub fn new(config: &WechatConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("wxgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the WeChat HTTP client: {}", e.without_url()))?;
        Ok(WechatClient {
            http,
            api_base: config.api_base.clone(),
            code2session_url: format!("{}/sns/jscode2session", config.api_base),
            appid: config.appid.clone(),
            secret: config.secret.clone(),
            timeout: config.timeout,
            access_token_api: config.access_token_api,
        })
    }

    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// Fetch an access token from the configured API. `stable_token` is always asked with
    /// `force_refresh: false`: forced refreshes are rationed by WeChat and never routine.
    pub async fn fetch_access_token(&self) -> Result<AccessToken, WechatError> {
        let api = match self.access_token_api {
            AccessTokenApi::Stable => "stable_token",
            AccessTokenApi::Classic => "token",
        };
        observed(api, self.fetch_access_token_from_wechat()).await
    }

    async fn fetch_access_token_from_wechat(&self) -> Result<AccessToken, WechatError> {
        let (request, api) = match self.access_token_api {
            AccessTokenApi::Stable => (
                self.http
                    .post(format!("{}/cgi-bin/stable_token", self.api_base))
                    .json(&serde_json::json!({
                        "grant_type": "client_credential",
                        "appid": self.appid,
                        "secret": self.secret.expose(),
                        "force_refresh": false,
                    })),
                "stable_token",
            ),
            AccessTokenApi::Classic => (
                self.http
                    .get(format!("{}/cgi-bin/token", self.api_base))
                    .query(&[
                        ("grant_type", "client_credential"),
                        ("appid", self.appid.as_str()),
                        ("secret", self.secret.expose()),
                    ]),
                "token",
            ),
        };
        let body = self.send(request, api).await?;
        let answer: TokenAnswer = parse(&body, api)?;
        if answer.errcode != 0 {
            tracing::warn!(
                errcode = answer.errcode,
                api,
                "WeChat refused an access token"
            );
            return Err(WechatError::Api(answer.errcode));
        }
        match (answer.access_token, answer.expires_in) {
            (Some(token), Some(expires_in)) if !token.is_empty() && expires_in > 0 => {
                tracing::info!(api, expires_in, "access token fetched");
                Ok(AccessToken {
                    token: Secret::new(token),
                    expires_in,
                })
            }
            _ => Err(WechatError::BadResponse),
        }
    }

    /// `wxa/business/getuserphonenumber`. Billed per success by WeChat: never retried here.
    pub async fn phone_number(
        &self,
        access_token: &Secret,
        code: &str,
        openid: &str,
    ) -> Result<Phone, WechatError> {
        observed(
            "getuserphonenumber",
            self.phone_number_from_wechat(access_token, code, openid),
        )
        .await
    }

    async fn phone_number_from_wechat(
        &self,
        access_token: &Secret,
        code: &str,
        openid: &str,
    ) -> Result<Phone, WechatError> {
        let request = self
            .http
            .post(format!("{}/wxa/business/getuserphonenumber", self.api_base))
            .query(&[("access_token", access_token.expose())])
            .json(&serde_json::json!({ "code": code, "openid": openid }));
        let body = self.send(request, "getuserphonenumber").await?;
        let answer: PhoneAnswer = parse(&body, "getuserphonenumber")?;
        if answer.errcode != 0 {
            tracing::info!(errcode = answer.errcode, "getuserphonenumber refused");
            return Err(WechatError::Api(answer.errcode));
        }
        let info = answer.phone_info.ok_or(WechatError::BadResponse)?;
        if let Some(appid) = info.watermark.and_then(|w| w.appid) {
            if appid != self.appid {
                tracing::warn!("getuserphonenumber answered for another appid");
                return Err(WechatError::BadResponse);
            }
        }
        let country_code = match info.country_code {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err(WechatError::BadResponse),
        };
        Ok(Phone {
            phone_number: info.phone_number,
            pure_phone_number: info.pure_phone_number,
            country_code,
        })
    }

    /// Exchange a login code. Never retried: WeChat may have consumed the code even when we saw
    /// no answer, and a second try would only get 40163.
    pub async fn code2session(&self, code: &str) -> Result<Code2Session, WechatError> {
        observed("jscode2session", self.code2session_from_wechat(code)).await
    }

    async fn code2session_from_wechat(&self, code: &str) -> Result<Code2Session, WechatError> {
        let request = self.http.get(&self.code2session_url).query(&[
            ("appid", self.appid.as_str()),
            ("secret", self.secret.expose()),
            ("js_code", code),
            ("grant_type", "authorization_code"),
        ]);
        let body = self.send(request, "jscode2session").await?;
        let answer: Code2SessionAnswer = parse(&body, "jscode2session")?;
        if answer.errcode != 0 {
            tracing::info!(errcode = answer.errcode, "jscode2session refused the code");
            return Err(WechatError::Api(answer.errcode));
        }
        match (answer.openid, answer.session_key) {
            (Some(openid), Some(key)) if !openid.is_empty() && !key.is_empty() => {
                Ok(Code2Session {
                    openid,
                    unionid: answer.unionid.filter(|u| !u.is_empty()),
                    session_key: Secret::new(key),
                })
            }
            _ => {
                tracing::warn!("jscode2session answered without openid or session_key");
                Err(WechatError::BadResponse)
            }
        }
    }

    /// Relay a call for an upstream app: `path_and_query` (which carries the access token) with
    /// the app's method, content type and body; WeChat's status, content type and body come
    /// back untouched, at most [`MAX_RELAYED_ANSWER`] bytes of them, within `timeout`. The URL
    /// is never logged.
    pub async fn relay(
        &self,
        method: http::Method,
        path_and_query: String,
        content_type: Option<&http::HeaderValue>,
        body: RelayBody,
        timeout: Duration,
    ) -> Result<Relayed, WechatError> {
        let mut request = self
            .http
            .request(method, format!("{}{path_and_query}", self.api_base))
            .timeout(timeout);
        if let Some(ct) = content_type {
            request = request.header(http::header::CONTENT_TYPE, ct.clone());
        }
        match body {
            RelayBody::Kept(body) if body.is_empty() => {}
            RelayBody::Kept(body) => request = request.body(body),
            RelayBody::Streamed { body, length } => {
                if let Some(length) = length {
                    request = request.header(http::header::CONTENT_LENGTH, length);
                }
                request = request.body(body);
            }
        }
        let fut = async {
            let mut resp = request.send().await.map_err(|e| classify(e, "relay"))?;
            let status = resp.status().as_u16();
            let content_type = resp.headers().get(http::header::CONTENT_TYPE).cloned();
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| classify(e, "relay"))? {
                if body.len() + chunk.len() > MAX_RELAYED_ANSWER {
                    tracing::warn!("relay: WeChat answer over {MAX_RELAYED_ANSWER} bytes");
                    return Err(WechatError::BadResponse);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Relayed {
                status,
                content_type,
                body: body.into(),
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("relay: WeChat did not answer within {timeout:?}");
                Err(WechatError::Timeout)
            }
        }
    }

    /// Send, and read at most [`MAX_ANSWER`] bytes of a 2xx answer within the timeout.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        api: &str,
    ) -> Result<Vec<u8>, WechatError> {
        let fut = async {
            let mut resp = request.send().await.map_err(|e| classify(e, api))?;
            let status = resp.status();
            if !status.is_success() {
                tracing::warn!(
                    api,
                    status = status.as_u16(),
                    "WeChat answered with an HTTP error"
                );
                return Err(WechatError::BadResponse);
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| classify(e, api))? {
                if body.len() + chunk.len() > MAX_ANSWER {
                    tracing::warn!(api, "WeChat answer over {MAX_ANSWER} bytes");
                    return Err(WechatError::BadResponse);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        // reqwest's own timeout covers the whole exchange; this one also bounds a body that
        // trickles in, whatever the client does.
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(api, "WeChat did not answer within {:?}", self.timeout);
                Err(WechatError::Timeout)
            }
        }
    }
}

/// Count a call to WeChat and its duration, by API and how it ended.
async fn observed<T>(
    api: &'static str,
    call: impl std::future::Future<Output = Result<T, WechatError>>,
) -> Result<T, WechatError> {
    let started = std::time::Instant::now();
    let outcome = call.await;
    crate::metrics::METRICS.wechat_request(api, started.elapsed(), outcome.as_ref().map(|_| ()));
    outcome
}

fn classify(e: reqwest::Error, api: &str) -> WechatError {
    let e = e.without_url();
    if e.is_timeout() {
        tracing::warn!(api, "WeChat timed out: {e}");
        WechatError::Timeout
    } else if e.is_connect() {
        tracing::warn!(api, "WeChat unreachable: {e}");
        WechatError::Unreachable
    } else {
        tracing::warn!(api, "WeChat exchange failed: {e}");
        WechatError::Unreachable
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], api: &str) -> Result<T, WechatError> {
    serde_json::from_slice(body).map_err(|e| {
        tracing::warn!(api, "WeChat answer is not the expected JSON: {e}");
        WechatError::BadResponse
    })
}

//! The WeChat API client. Errors come back as HTTP 200 with `errcode` in the body, so every call
//! reads bytes, parses leniently and branches on `errcode` only (never on `errmsg`). URLs carry
//! the appsecret: they are never logged, and reqwest errors are stripped of them.

use crate::config::WechatConfig;
use crate::reply::Reject;
use crate::secret::Secret;
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

pub struct WechatClient {
    http: reqwest::Client,
    code2session_url: String,
    appid: String,
    secret: Secret,
    timeout: Duration,
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
            code2session_url: format!("{}/sns/jscode2session", config.api_base),
            appid: config.appid.clone(),
            secret: config.secret.clone(),
            timeout: config.timeout,
        })
    }

    /// Exchange a login code. Never retried: WeChat may have consumed the code even when we saw
    /// no answer, and a second try would only get 40163.
    pub async fn code2session(&self, code: &str) -> Result<Code2Session, WechatError> {
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

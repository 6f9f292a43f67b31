//! The JSON envelope every gateway answer uses, and every documented code, in one place.
//!
//! Success: `{"code":"200","message":"...","data":{...}}`.
//! Failure: `{"code":"10200","message":"token已过期","reason":"expired"}`.
//! The README's code table is generated from the same facts as [`Reject::parts`]; keep them in step.

use crate::wechat::crypto::DecryptError;
use bytes::Bytes;
use serde::Serialize;
use std::borrow::Cow;

/// The content type of every envelope.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Why a token was refused. Every variant answers 10200: the client's remedy is the same (log in
/// again); `reason` tells a developer which one it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    Expired,
    NotYetValid,
    BadSignature,
    WrongAlgorithm,
    Malformed,
    MissingClaim,
    WrongAudience,
    Revoked,
    /// The header's `kid` names no configured key (removed by a rotation, or never ours).
    UnknownKey,
}

impl TokenProblem {
    pub fn reason(self) -> &'static str {
        match self {
            TokenProblem::Expired => "expired",
            TokenProblem::NotYetValid => "not_yet_valid",
            TokenProblem::BadSignature => "bad_signature",
            TokenProblem::WrongAlgorithm => "wrong_algorithm",
            TokenProblem::Malformed => "malformed",
            TokenProblem::MissingClaim => "missing_claim",
            TokenProblem::WrongAudience => "wrong_audience",
            TokenProblem::Revoked => "revoked",
            TokenProblem::UnknownKey => "unknown_key",
        }
    }
}

/// Every way the gateway can refuse or fail a request. Expected rejections are values of this
/// enum, turned into a response by [`Reject::reply`]; nothing else writes an error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// No token in `Authorization: Bearer`, the `token` header, or the `/isAuth` body.
    TokenMissing,
    /// A token was sent but cannot be accepted.
    Token(TokenProblem),
    /// `/auth` without a `code`.
    LoginCodeMissing,
    /// `/auth/refresh` without a `refresh_token`.
    RefreshTokenMissing,
    /// A login without `appid` while several mini programs are configured.
    AppidMissing,
    /// A login naming an appid that is not configured.
    UnknownApp,
    /// A valid token of another mini program on a route with `apps`.
    WrongApp,
    /// A refresh token that names no live session, or an old one presented again (`reused`: the
    /// session has been revoked).
    RefreshTokenInvalid { reused: bool },
    /// A gateway endpoint got a body that is not the JSON (or form) it expects.
    BadBody,
    /// The token is valid but its session is gone (expired, evicted, store restarted).
    SessionGone,
    /// `/auth/decrypt` without `encryptedData` or `iv`.
    DecryptFieldsMissing,
    /// `/auth/decrypt` could not read the data.
    Decrypt(DecryptError),
    /// A path with `.`/`..` segments (plain or percent-encoded), or one that reads as another
    /// route's once normalised (the reason says which): refused so that a public route cannot be
    /// used to reach a protected one after the upstream normalises the path.
    BadPath(&'static str),
    /// A `strip_prefix` route's prefix matched the path only once percent-decoded: the raw
    /// target cannot be rewritten without forwarding something routing did not check.
    EncodedPrefix,
    /// No `[[routes]]` prefix matches the path.
    NoRoute,
    /// `Upgrade: websocket` on a route without `websocket = true`.
    WebSocketNotAllowed,
    /// A gateway endpoint was called with a method it does not serve.
    MethodNotAllowed,
    /// A body over the gateway endpoints' limit.
    BodyTooLarge,
    /// Request headers over the gateway's bounds.
    HeadersTooLarge,
    /// Too many calls to an endpoint that calls WeChat, from one client address.
    RateLimited,
    /// Over a route's `rate_limit` (per openid, or per client address on a public route); the
    /// bucket has a token again after `retry_after` seconds.
    RouteRateLimited { retry_after: u64 },
    /// The user was revoked with a block (`wxgate revoke --block`) that has not ended: no login.
    UserBlocked,
    /// WeChat answered with an `errcode`.
    Wechat { errcode: i64 },
    /// WeChat refused the getPhoneNumber code of `/auth/phone` (40029 invalid, 40163 used,
    /// 41008 missing): the user taps the button again; nothing is wrong with the login.
    PhoneCode { errcode: i64 },
    /// WeChat could not be reached (connection refused, DNS, TLS).
    WechatUnreachable,
    /// WeChat answered, but not with a WeChat answer (HTML error page, non-JSON, HTTP error).
    WechatBadResponse,
    /// WeChat did not answer within `wechat.timeout`.
    WechatTimeout,
    /// The session store could not be used.
    StoreUnavailable,
    /// The upstream app refused the connection or failed mid-response.
    UpstreamUnreachable,
    /// Every upstream of the route is out of rotation (failing health checks, or a connect
    /// failure moments ago): answered at once, without trying.
    NoHealthyUpstream,
    /// The upstream app did not answer in time.
    UpstreamTimeout,
    /// The gateway could not open a connection to the upstream for want of its own resources
    /// (descriptors, local ports, memory): the upstream is not at fault and stays in rotation.
    GatewayOverloaded,
    /// A malformed request that the HTTP layer refused (status kept).
    BadRequest { status: u16 },
    /// The relay was asked for a WeChat path outside `relay.allow`.
    RelayPathNotAllowed,
    /// The relay was asked, as a forward proxy, for a host other than `api.weixin.qq.com`.
    RelayHostNotAllowed,
    /// The relay was called from an address outside `relay.allow_from`.
    RelayClientNotAllowed,
    /// Our own fault; detail goes to the log, never to the client.
    Internal,
}

/// Status, envelope code, message and reason of one rejection.
pub struct Parts {
    pub status: u16,
    pub code: Cow<'static, str>,
    pub message: &'static str,
    pub reason: Option<&'static str>,
}

impl Reject {
    pub fn parts(&self) -> Parts {
        let p = |status, code: &'static str, message, reason| Parts {
            status,
            code: Cow::Borrowed(code),
            message,
            reason,
        };
        match self {
            Reject::TokenMissing => p(401, "10119", "token必须传递", None),
            Reject::Token(problem) => p(401, "10200", "token已过期", Some(problem.reason())),
            Reject::LoginCodeMissing => p(400, "10120", "code必须传递", None),
            Reject::RefreshTokenMissing => p(400, "10121", "refresh_token必须传递", None),
            Reject::AppidMissing => p(400, "10122", "appid必须传递", Some("appid_missing")),
            Reject::UnknownApp => p(400, "10123", "appid无效", Some("unknown_app")),
            Reject::WrongApp => p(403, "10407", "该小程序无权访问此接口", Some("wrong_app")),
            Reject::RefreshTokenInvalid { reused } => p(
                401,
                "10201",
                "refresh_token无效，请重新登录",
                Some(if *reused { "reused" } else { "unknown" }),
            ),
            Reject::BadBody => p(400, "10400", "请求体不是合法的JSON", Some("bad_body")),
            Reject::SessionGone => p(401, "10202", "会话已失效，请重新登录", Some("session_gone")),
            Reject::DecryptFieldsMissing => p(400, "10420", "encryptedData和iv必须传递", None),
            Reject::Decrypt(e) => match e {
                DecryptError::EncryptedDataNotBase64 => p(
                    400,
                    "10421",
                    "encryptedData或iv不是合法的base64",
                    Some("encrypted_data_base64"),
                ),
                DecryptError::IvNotBase64 => p(
                    400,
                    "10421",
                    "encryptedData或iv不是合法的base64",
                    Some("iv_base64"),
                ),
                DecryptError::IvLength => p(400, "10422", "iv长度必须为16字节", None),
                DecryptError::CiphertextLength => p(400, "10423", "encryptedData长度无效", None),
                DecryptError::BadPadding => p(
                    400,
                    "10424",
                    "解密失败：数据已被篡改或session_key已更新，请重新登录",
                    Some("bad_padding"),
                ),
                DecryptError::NotJson => p(400, "10425", "解密结果不是JSON对象", None),
                DecryptError::Watermark => {
                    p(403, "10426", "数据水印与本小程序不符", Some("watermark"))
                }
                DecryptError::BadSessionKey => p(500, "10500", "网关内部错误", Some("internal")),
            },
            Reject::BadPath(reason) => p(400, "10402", "请求路径无效", Some(reason)),
            Reject::EncodedPrefix => p(400, "10402", "请求路径无效", Some("encoded_prefix")),
            Reject::NoRoute => p(404, "10404", "接口不存在", Some("no_route")),
            Reject::WebSocketNotAllowed => p(
                403,
                "10403",
                "该接口不支持WebSocket",
                Some("websocket_not_allowed"),
            ),
            Reject::MethodNotAllowed => p(405, "10405", "请求方法不支持", None),
            Reject::BodyTooLarge => p(413, "10413", "请求体过大", None),
            Reject::HeadersTooLarge => p(431, "10431", "请求头过大", None),
            Reject::RateLimited | Reject::RouteRateLimited { .. } => p(
                429,
                "10429",
                "请求过于频繁，请稍后再试",
                Some("rate_limited"),
            ),
            Reject::UserBlocked => p(403, "10430", "用户已被禁止登录", Some("user_blocked")),
            Reject::Wechat { errcode } => {
                let (status, message, reason) = wechat_errcode(*errcode);
                Parts {
                    status,
                    code: Cow::Owned(errcode.to_string()),
                    message,
                    reason: Some(reason),
                }
            }
            Reject::PhoneCode { errcode } => {
                let (message, reason) = phone_code_errcode(*errcode);
                Parts {
                    status: 400,
                    code: Cow::Owned(errcode.to_string()),
                    message,
                    reason: Some(reason),
                }
            }
            Reject::WechatUnreachable => p(
                502,
                "10501",
                "无法连接微信服务器",
                Some("wechat_unreachable"),
            ),
            Reject::WechatBadResponse => p(
                502,
                "10502",
                "微信服务器返回异常",
                Some("wechat_bad_response"),
            ),
            Reject::StoreUnavailable => {
                p(503, "10503", "会话存储不可用", Some("store_unavailable"))
            }
            Reject::WechatTimeout => p(504, "10504", "微信服务器响应超时", Some("wechat_timeout")),
            Reject::UpstreamUnreachable => {
                p(502, "10510", "上游服务不可用", Some("upstream_error"))
            }
            Reject::NoHealthyUpstream => {
                p(502, "10510", "上游服务不可用", Some("no_healthy_upstream"))
            }
            Reject::UpstreamTimeout => {
                p(504, "10511", "上游服务响应超时", Some("upstream_timeout"))
            }
            Reject::GatewayOverloaded => p(
                503,
                "10512",
                "网关繁忙，请稍后重试",
                Some("gateway_overloaded"),
            ),
            // The client did not send its request header (`server.header_timeout`) or body in
            // time.
            Reject::BadRequest { status: 408 } => {
                p(408, "10400", "请求超时", Some("request_timeout"))
            }
            Reject::BadRequest { status } => {
                p(*status, "10400", "请求格式错误", Some("bad_request"))
            }
            Reject::RelayPathNotAllowed => p(
                403,
                "10408",
                "该微信接口未开放转发",
                Some("relay_path_not_allowed"),
            ),
            Reject::RelayHostNotAllowed => p(
                403,
                "10408",
                "该微信接口未开放转发",
                Some("relay_host_not_allowed"),
            ),
            Reject::RelayClientNotAllowed => p(
                403,
                "10409",
                "该地址无权调用转发",
                Some("relay_client_not_allowed"),
            ),
            Reject::Internal => p(500, "10500", "网关内部错误", Some("internal")),
        }
    }

    pub fn status(&self) -> u16 {
        self.parts().status
    }

    /// The headers that belong to this rejection itself, beside its envelope: the challenge of
    /// a 401, the methods a 405's endpoint serves (`allow`), and `Retry-After` only where waiting
    /// helps (a per-minute limit, a store or WeChat briefly unavailable), never for a daily
    /// quota or a client's mistake.
    pub fn headers(&self, allow: Option<&'static str>) -> Vec<(&'static str, Cow<'static, str>)> {
        const BEARER: &str = "Bearer";
        const INVALID: &str = "Bearer error=\"invalid_token\"";
        let one = |name, value: &'static str| vec![(name, Cow::Borrowed(value))];
        match self {
            Reject::TokenMissing => one("www-authenticate", BEARER),
            Reject::Token(_) | Reject::RefreshTokenInvalid { .. } | Reject::SessionGone => {
                one("www-authenticate", INVALID)
            }
            Reject::MethodNotAllowed => one("allow", allow.unwrap_or("GET, POST")),
            Reject::RateLimited | Reject::Wechat { errcode: 45011 } => one("retry-after", "60"),
            Reject::RouteRateLimited { retry_after } => {
                vec![("retry-after", Cow::Owned(retry_after.max(&1).to_string()))]
            }
            Reject::StoreUnavailable
            | Reject::GatewayOverloaded
            | Reject::Wechat { errcode: -1 } => one("retry-after", "1"),
            _ => Vec::new(),
        }
    }

    /// The response body of this rejection.
    pub fn body(&self) -> Bytes {
        let Parts {
            code,
            message,
            reason,
            ..
        } = self.parts();
        envelope(&Envelope::<()> {
            code: &code,
            message,
            reason,
            data: None,
        })
    }
}

/// Message and reason of a WeChat errcode about the phone code (not the login code).
pub fn phone_code_errcode(errcode: i64) -> (&'static str, &'static str) {
    match errcode {
        40163 => ("手机号code已被使用", "phone_code_used"),
        41008 => ("缺少手机号code", "missing_phone_code"),
        _ => ("手机号code无效", "invalid_phone_code"),
    }
}

/// How a WeChat errcode reaches the client: status, message and reason. The status says whose
/// fault it is: 4xx for the client's code or user, 429 for quota, 5xx for WeChat or our config.
pub fn wechat_errcode(errcode: i64) -> (u16, &'static str, &'static str) {
    match errcode {
        40029 => (400, "登录code无效", "invalid_code"),
        40163 => (400, "登录code已被使用", "code_used"),
        41008 => (400, "缺少登录code", "missing_code"),
        40226 => (403, "高风险用户，登录被拦截", "high_risk_user"),
        45011 => (
            429,
            "微信接口调用过于频繁，请稍后再试",
            "wechat_rate_limited",
        ),
        -1 => (503, "微信系统繁忙，请稍后再试", "wechat_busy"),
        40013 => (500, "网关配置错误：appid无效", "invalid_appid"),
        40125 => (500, "网关配置错误：appsecret无效", "invalid_appsecret"),
        40243 => (500, "网关配置错误：appsecret已冻结", "appsecret_frozen"),
        40164 => (
            500,
            "网关配置错误：服务器IP不在微信白名单中",
            "ip_not_whitelisted",
        ),
        47001 => (500, "网关请求微信格式错误", "wechat_bad_request"),
        40001 | 42001 => (502, "微信拒绝了access_token", "access_token_refused"),
        45009 => (429, "微信接口今日调用量已达上限", "wechat_daily_quota"),
        _ => (502, "微信接口返回错误", "wechat_error"),
    }
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
}

fn envelope<T: Serialize>(e: &Envelope<'_, T>) -> Bytes {
    // Serialising plain strings and derived structs cannot fail.
    Bytes::from(serde_json::to_vec(e).unwrap_or_default())
}

/// A success body: `{"code":"200","message":..,"data":..}`.
pub fn success<T: Serialize>(message: &str, data: T) -> Bytes {
    envelope(&Envelope {
        code: "200",
        message,
        reason: None,
        data: Some(data),
    })
}

/// One row of the README's code table.
pub struct CodeDoc {
    pub code: &'static str,
    pub status: u16,
    pub meaning: &'static str,
}

/// Every code the gateway itself defines (WeChat errcodes pass through, see [`wechat_errcode`]).
/// A test reads [`Reject::parts`]' source and fails if a code it can answer is missing here.
pub fn documented_codes() -> Vec<CodeDoc> {
    use DecryptError as D;
    use TokenProblem::Expired;
    let all = [
        (Reject::TokenMissing, "no token sent"),
        (
            Reject::Token(Expired),
            "token expired, forged, malformed or revoked (`reason` says which)",
        ),
        (Reject::LoginCodeMissing, "`/auth` without a `code`"),
        (Reject::RefreshTokenMissing, "`/auth/refresh` without a `refresh_token`"),
        (
            Reject::AppidMissing,
            "login without `appid` while several mini programs are configured",
        ),
        (
            Reject::UnknownApp,
            "login naming an `appid` that is not configured (no WeChat call is made)",
        ),
        (
            Reject::WrongApp,
            "a valid token of another mini program on a route with `apps`",
        ),
        (
            Reject::RefreshTokenInvalid { reused: false },
            "refresh token unknown or expired, or already used (`reason`: `reused`; the session is then revoked): log in again",
        ),
        (
            Reject::BadBody,
            "body of a gateway endpoint is not valid JSON / form",
        ),
        (
            Reject::SessionGone,
            "token valid but its session is gone (expired, evicted): log in again",
        ),
        (
            Reject::DecryptFieldsMissing,
            "`/auth/decrypt` without `encryptedData` or `iv`",
        ),
        (
            Reject::Decrypt(D::EncryptedDataNotBase64),
            "`encryptedData` or `iv` is not base64 (`reason` says which)",
        ),
        (Reject::Decrypt(D::IvLength), "`iv` is not 16 bytes"),
        (
            Reject::Decrypt(D::CiphertextLength),
            "`encryptedData` is empty or not whole 16-byte blocks",
        ),
        (
            Reject::Decrypt(D::BadPadding),
            "decryption failed: tampered data, or the session_key changed since (log in again)",
        ),
        (
            Reject::Decrypt(D::NotJson),
            "decrypted data is not a JSON object",
        ),
        (
            Reject::Decrypt(D::Watermark),
            "`watermark.appid` missing or another app's",
        ),
        (
            Reject::BadPath("dot_segment"),
            "path has `.` or `..` segments (`reason`: `dot_segment`; also encoded, with `\\` or with `;` parameters), or, percent-decoded, reads as another route's once repeated `/` are merged or `;` parameters dropped (`ambiguous_path`); or (`strip_prefix` routes) a prefix that matched only once percent-decoded (`encoded_prefix`)",
        ),
        (
            Reject::WebSocketNotAllowed,
            "`Upgrade: websocket` on a route without `websocket = true`",
        ),
        (Reject::NoRoute, "no route matches the path"),
        (
            Reject::MethodNotAllowed,
            "method not served by a gateway endpoint",
        ),
        (
            Reject::BodyTooLarge,
            "body over the gateway endpoints' limit",
        ),
        (
            Reject::RateLimited,
            "too many logins or phone calls from one client address (`[rate_limit]`), or too many requests on a route with `rate_limit` from one user (one client address on public routes); `Retry-After` says when to try again",
        ),
        (
            Reject::HeadersTooLarge,
            "more than 100 request headers or 64 KiB of them",
        ),
        (
            Reject::UserBlocked,
            "login refused: the user was revoked with a block that has not ended (`wxgate revoke --block`)",
        ),
        (Reject::WechatUnreachable, "WeChat unreachable"),
        (
            Reject::WechatBadResponse,
            "WeChat answered something that is not a WeChat answer",
        ),
        (Reject::StoreUnavailable, "session store unavailable (logins; protected routes too with `fail_mode = \"closed\"`)"),
        (Reject::WechatTimeout, "WeChat slower than `wechat.timeout`"),
        (
            Reject::UpstreamUnreachable,
            "upstream app refused or failed (`reason`: `upstream_error`), or every upstream of the route is out of rotation (`no_healthy_upstream`, answered at once)",
        ),
        (
            Reject::UpstreamTimeout,
            "upstream app slower than the route's timeout",
        ),
        (
            Reject::GatewayOverloaded,
            "the gateway could not open a connection to the upstream app: out of descriptors (the open files limit, logged at start-up), local ports or memory; the upstream stays in rotation, `Retry-After: 1`",
        ),
        (
            Reject::RelayPathNotAllowed,
            "the relay was asked for a path outside `relay.allow` (`reason`: `relay_path_not_allowed`), or, as a forward proxy, for a host other than `api.weixin.qq.com` (`relay_host_not_allowed`)",
        ),
        (
            Reject::RelayClientNotAllowed,
            "the relay was called from an address outside `relay.allow_from`",
        ),
        (Reject::Internal, "gateway bug (details in the log only)"),
    ];
    all.iter()
        .map(|(r, meaning)| {
            let parts = r.parts();
            CodeDoc {
                code: match parts.code {
                    Cow::Borrowed(c) => c,
                    Cow::Owned(_) => "errcode",
                },
                status: parts.status,
                meaning,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: Bytes) -> serde_json::Value {
        serde_json::from_slice(&b).expect("valid json")
    }

    #[test]
    fn tutorial_codes_are_kept() {
        let v = json(Reject::TokenMissing.body());
        assert_eq!(v["code"], "10119");
        assert_eq!(v["message"], "token必须传递");
        assert!(v.get("reason").is_none());
        assert_eq!(Reject::TokenMissing.status(), 401);
        let v = json(Reject::Token(TokenProblem::Expired).body());
        assert_eq!(v["code"], "10200");
        assert_eq!(v["message"], "token已过期");
        assert_eq!(v["reason"], "expired");
    }

    #[test]
    fn wechat_errcodes_pass_through_with_fitting_status() {
        for (errcode, status) in [
            (40029, 400),
            (40163, 400),
            (40226, 403),
            (45011, 429),
            (-1, 503),
            (40125, 500),
            (99999, 502),
        ] {
            let r = Reject::Wechat { errcode };
            assert_eq!(r.status(), status, "errcode {errcode}");
            assert_eq!(json(r.body())["code"], errcode.to_string());
        }
    }

    #[test]
    fn headers_belong_to_the_rejection_not_the_status() {
        let h = |r: Reject, allow| {
            r.headers(allow)
                .into_iter()
                .map(|(name, value)| (name, value.into_owned()))
                .collect::<Vec<_>>()
        };
        let one = |name: &'static str, value: &str| vec![(name, value.to_string())];
        assert_eq!(
            h(Reject::MethodNotAllowed, Some("POST")),
            one("allow", "POST")
        );
        assert_eq!(h(Reject::RateLimited, None), one("retry-after", "60"));
        assert_eq!(h(Reject::StoreUnavailable, None), one("retry-after", "1"));
        // 429 and 503 from WeChat: retrying helps for the per-minute quota and "busy" ...
        assert_eq!(
            h(Reject::Wechat { errcode: 45011 }, None),
            one("retry-after", "60")
        );
        assert_eq!(
            h(Reject::Wechat { errcode: -1 }, None),
            one("retry-after", "1")
        );
        // ... not for the daily quota, nor for a bad code, whatever their status.
        assert!(h(Reject::Wechat { errcode: 45009 }, None).is_empty());
        assert_eq!(Reject::Wechat { errcode: 45009 }.status(), 429);
        assert!(h(Reject::Wechat { errcode: 40029 }, None).is_empty());
        assert!(h(Reject::UpstreamUnreachable, None).is_empty());
        // A route's limit says when its bucket has a token again (at least a second).
        assert_eq!(
            h(Reject::RouteRateLimited { retry_after: 3 }, None),
            one("retry-after", "3")
        );
        assert_eq!(
            h(Reject::RouteRateLimited { retry_after: 0 }, None),
            one("retry-after", "1")
        );
        assert_eq!(
            h(Reject::TokenMissing, None),
            one("www-authenticate", "Bearer")
        );
        assert_eq!(
            h(Reject::Token(TokenProblem::Expired), None)[0].1,
            "Bearer error=\"invalid_token\""
        );
    }

    #[test]
    fn success_envelope() {
        let v = json(success("登录", serde_json::json!({"token": "t"})));
        assert_eq!(v["code"], "200");
        assert_eq!(v["message"], "登录");
        assert_eq!(v["data"]["token"], "t");
    }

    #[test]
    fn every_documented_code_is_distinct() {
        let codes = documented_codes();
        let mut seen = std::collections::HashSet::new();
        for c in &codes {
            assert!(seen.insert(c.code), "duplicate code {}", c.code);
        }
    }

    /// The code literals [`Reject::parts`] can answer, read from its source: a variant added
    /// there with a new code cannot be left out of the table by forgetting a hand-written list.
    fn codes_in_parts_source() -> std::collections::BTreeSet<&'static str> {
        let src = include_str!("reply.rs");
        let start = src.find("pub fn parts(").expect("parts() in reply.rs");
        let end = src[start..]
            .find("pub fn status(")
            .expect("status() after parts()")
            + start;
        src[start..end]
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|lit| lit.len() == 5 && lit.bytes().all(|b| b.is_ascii_digit()))
            .collect()
    }

    #[test]
    fn documented_codes_cover_every_code_the_gateway_answers() {
        let produced = codes_in_parts_source();
        assert!(produced.len() >= 20, "{produced:?}");
        assert!(produced.contains("10429") && produced.contains("10431"));
        let documented: std::collections::BTreeSet<_> =
            documented_codes().iter().map(|c| c.code).collect();
        let missing: Vec<_> = produced.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "codes answered but not documented: {missing:?}"
        );
    }

    #[test]
    fn phone_codes_have_their_own_messages() {
        for errcode in [40029, 40163, 41008] {
            let phone = json(Reject::PhoneCode { errcode }.body());
            let login = json(Reject::Wechat { errcode }.body());
            assert_eq!(phone["code"], errcode.to_string());
            assert_eq!(Reject::PhoneCode { errcode }.status(), 400);
            assert!(
                phone["message"].as_str().unwrap().contains("手机号"),
                "{phone}"
            );
            assert_ne!(phone["message"], login["message"]);
        }
    }
}

#[cfg(test)]
mod readme {
    /// The README's code table is the documentation users read: it must list every code with the
    /// status the gateway really answers.
    #[test]
    fn readme_lists_every_code_with_its_status() {
        let readme = include_str!("../README.md");
        for doc in super::documented_codes() {
            let row = format!("| {} | {} |", doc.code, doc.status);
            assert!(readme.contains(&row), "README lacks the row {row:?}");
        }
        for errcode in [
            40029, 40163, 41008, 40226, 45011, -1, 40013, 40125, 40243, 40164, 47001, 40001, 42001,
            45009,
        ] {
            let (status, _, _) = super::wechat_errcode(errcode);
            let row = format!("| {errcode} | {status} |");
            assert!(readme.contains(&row), "README lacks the row {row:?}");
        }
    }
}

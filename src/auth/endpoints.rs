//! The endpoints the gateway answers itself, as HTTP: which path is which [`Endpoint`], the
//! methods each serves, parsing a request into what the auth service needs (pure), and the
//! dispatch to [`Login`].

use super::extract::{self, Presented};
use super::Apps;
use crate::reply::{self, Reject};
use bytes::Bytes;
use http::Method;

/// The endpoints the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Verify,
    Refresh,
    Logout,
    Phone,
    Decrypt,
    /// The JWK Set of the token keys' public halves.
    Jwks,
}

impl Endpoint {
    /// The methods it serves, as an `Allow` header lists them.
    pub fn allow(self) -> &'static str {
        match self {
            Endpoint::Login | Endpoint::Verify => "GET, POST",
            Endpoint::Jwks => "GET, HEAD",
            _ => "POST",
        }
    }

    /// Its `route` label in metrics and the access log.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Login => "endpoint:login",
            Endpoint::Verify => "endpoint:verify",
            Endpoint::Refresh => "endpoint:refresh",
            Endpoint::Logout => "endpoint:logout",
            Endpoint::Phone => "endpoint:phone",
            Endpoint::Decrypt => "endpoint:decrypt",
            Endpoint::Jwks => "endpoint:jwks",
        }
    }

    /// Its `Cache-Control` when it answers: public keys may be cached (verifiers refetch on an
    /// unknown `kid`); everything else about a user never is.
    pub fn cache_control(self) -> &'static str {
        match self {
            Endpoint::Jwks => "public, max-age=300",
            _ => "no-store",
        }
    }
}

/// Compute an endpoint's answer body, or its rejection.
pub async fn answer(
    apps: &Apps,
    endpoint: Endpoint,
    request: &EndpointRequest<'_>,
    headers: &http::HeaderMap,
) -> Result<Bytes, Reject> {
    match endpoint {
        Endpoint::Login => {
            let (code, appid) = login_code(request)?;
            // The app is known (or refused) before WeChat is asked anything.
            let login = apps.for_login(appid.as_deref())?;
            Ok(reply::success("登录", login.login(&code).await?))
        }
        Endpoint::Verify => {
            let json = verify_body(request)?;
            let presented = verify_token(json.as_ref(), headers);
            let data = apps.owner(presented)?.check(presented)?;
            Ok(reply::success("验证成功", data))
        }
        Endpoint::Refresh => {
            let (refresh_token, appid) = refresh_token(request)?;
            Ok(reply::success(
                "刷新成功",
                refresh(apps, &refresh_token, appid.as_deref()).await?,
            ))
        }
        Endpoint::Logout => {
            let json = post_body(request)?;
            let presented = verify_token(Some(&json), headers);
            let login = apps.owner(presented)?;
            with_session(login.verify(presented)?)?;
            login.logout(presented).await?;
            Ok(reply::success("已退出登录", serde_json::json!({})))
        }
        Endpoint::Phone => {
            let json = post_body(request)?;
            let presented = verify_token(Some(&json), headers);
            let login = apps.owner(presented)?;
            let identity = with_session(login.verify(presented)?)?;
            let code = string_field(&json, "code", Reject::LoginCodeMissing)?;
            Ok(reply::success(
                "获取手机号成功",
                login.phone(&identity, &code).await?,
            ))
        }
        Endpoint::Decrypt => {
            let json = post_body(request)?;
            let presented = verify_token(Some(&json), headers);
            let login = apps.owner(presented)?;
            let identity = with_session(login.verify(presented)?)?;
            let data = string_field(&json, "encryptedData", Reject::DecryptFieldsMissing)?;
            let iv = string_field(&json, "iv", Reject::DecryptFieldsMissing)?;
            Ok(reply::success(
                "解密成功",
                login.decrypt(&identity, &data, &iv).await?,
            ))
        }
        Endpoint::Jwks => match *request.method {
            Method::GET | Method::HEAD => {
                apps.first().tokens().jwks().cloned().ok_or(Reject::NoRoute)
            }
            _ => Err(Reject::MethodNotAllowed),
        },
    }
}

/// A refresh token names its session, not its app: the app named by `appid`, else each app's
/// store in turn until one knows the session (one app: one lookup, as before).
async fn refresh(
    apps: &Apps,
    refresh_token: &str,
    appid: Option<&str>,
) -> Result<super::service::LoginData, Reject> {
    if let Some(appid) = appid {
        let app = apps.by_appid(appid).ok_or(Reject::UnknownApp)?;
        return app.login.refresh(refresh_token).await;
    }
    let mut outcome = Err(Reject::RefreshTokenInvalid { reused: false });
    for app in apps.iter() {
        outcome = app.login.refresh(refresh_token).await;
        if !matches!(outcome, Err(Reject::RefreshTokenInvalid { reused: false })) {
            break;
        }
    }
    outcome
}

/// An identity with a wxgate session. Another backend's token (`[[jwt.accept]]`) has none: its
/// holder must log in through wxgate before logout, phone or decrypt (and an empty sid must
/// never reach a revocation).
fn with_session(identity: crate::auth::Identity) -> Result<crate::auth::Identity, Reject> {
    if identity.sid.is_empty() {
        return Err(Reject::Token(crate::reply::TokenProblem::MissingClaim));
    }
    Ok(identity)
}

/// The parts of a request the gateway endpoints look at.
pub struct EndpointRequest<'a> {
    pub method: &'a Method,
    pub query: Option<&'a str>,
    pub content_type: Option<&'a [u8]>,
    pub body: &'a [u8],
}

enum BodyKind {
    Empty,
    Form,
    Json,
}

fn body_kind(req: &EndpointRequest<'_>) -> BodyKind {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return BodyKind::Empty;
    }
    let is_form = req.content_type.is_some_and(|ct| {
        ct.len() >= 33 && ct[..33].eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    });
    if is_form {
        BodyKind::Form
    } else {
        BodyKind::Json
    }
}

type Fields = serde_json::Map<String, serde_json::Value>;

/// `a=1&b=2` as string fields; the first of repeated names counts.
fn form_fields(bytes: &[u8]) -> Fields {
    let mut fields = Fields::new();
    for (k, v) in form_urlencoded::parse(bytes) {
        fields
            .entry(k.into_owned())
            .or_insert_with(|| serde_json::Value::String(v.into_owned()));
    }
    fields
}

/// A JSON body as an object; anything else is [`Reject::BadBody`].
fn json_object(body: &[u8]) -> Result<Fields, Reject> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(Reject::BadBody),
    }
}

/// The body as fields, whatever the method: empty, a form, or a JSON object.
fn body_fields(req: &EndpointRequest<'_>) -> Result<Fields, Reject> {
    match body_kind(req) {
        BodyKind::Empty => Ok(Fields::new()),
        BodyKind::Json => json_object(req.body),
        BodyKind::Form => Ok(form_fields(req.body)),
    }
}

/// The login code of an `/auth` request and the app it names, if it names one: `GET
/// ?code=&appid=`, or `POST` with `{"code": "...", "appid": "..."}` (a form body, or the query
/// when the body is empty, also work).
pub fn login_code(req: &EndpointRequest<'_>) -> Result<(String, Option<String>), Reject> {
    let from_query = || form_fields(req.query.unwrap_or("").as_bytes());
    let fields = match *req.method {
        Method::GET => from_query(),
        Method::POST if matches!(body_kind(req), BodyKind::Empty) => from_query(),
        Method::POST => body_fields(req)?,
        _ => return Err(Reject::MethodNotAllowed),
    };
    let code = string_field(&fields, "code", Reject::LoginCodeMissing)?;
    Ok((code, optional_field(&fields, "appid")?))
}

/// An optional string field: absent, null or blank is `None`; another type is
/// [`Reject::BadBody`].
fn optional_field(body: &Fields, name: &str) -> Result<Option<String>, Reject> {
    match body.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(Reject::BadBody),
    }
}

/// The refresh token of an `/auth/refresh` request, and the app it names if any:
/// `{"refresh_token": "...", "appid": "..."}` (or a form).
pub fn refresh_token(req: &EndpointRequest<'_>) -> Result<(String, Option<String>), Reject> {
    let body = post_body(req)?;
    let token = string_field(&body, "refresh_token", Reject::RefreshTokenMissing)?;
    Ok((token, optional_field(&body, "appid")?))
}

/// The fields of a POST endpoint's body (JSON object or form); an empty body has none.
pub fn post_body(req: &EndpointRequest<'_>) -> Result<Fields, Reject> {
    if *req.method != Method::POST {
        return Err(Reject::MethodNotAllowed);
    }
    body_fields(req)
}

/// A required string field of a body: absent, null or blank is `missing`; another type is
/// [`Reject::BadBody`].
pub fn string_field(body: &Fields, name: &str, missing: Reject) -> Result<String, Reject> {
    match body.get(name) {
        None | Some(serde_json::Value::Null) => Err(missing),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Err(missing),
        Some(serde_json::Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => Err(Reject::BadBody),
    }
}

/// What an `/isAuth` request presents: the body's `token` first (the tutorial), then headers.
pub fn verify_token<'a>(
    body_json: Option<&'a Fields>,
    headers: &'a http::HeaderMap,
) -> Presented<'a> {
    let from_body = match body_json {
        Some(map) => extract::from_json_field(map.get("token")),
        None => Presented::Missing,
    };
    match from_body {
        Presented::Missing => extract::from_headers(headers),
        other => other,
    }
}

/// Parse the `/isAuth` body: empty is fine (the token may be in a header), otherwise a JSON
/// object or a form.
pub fn verify_body(req: &EndpointRequest<'_>) -> Result<Option<Fields>, Reject> {
    match *req.method {
        Method::GET | Method::POST => {}
        _ => return Err(Reject::MethodNotAllowed),
    }
    match body_kind(req) {
        BodyKind::Empty => Ok(None),
        _ => body_fields(req).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::service::plausible_code;

    fn req<'a>(
        method: &'a Method,
        query: Option<&'a str>,
        ct: Option<&'a str>,
        body: &'a str,
    ) -> EndpointRequest<'a> {
        EndpointRequest {
            method,
            query,
            content_type: ct.map(str::as_bytes),
            body: body.as_bytes(),
        }
    }

    #[test]
    fn code_from_query_json_or_form() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            login_code(&req(&get, Some("code=abc"), None, "")),
            Ok(("abc".into(), None))
        );
        assert_eq!(
            login_code(&req(&get, Some("x=1&code=a%2Eb"), None, "")),
            Ok(("a.b".into(), None))
        );
        assert_eq!(
            login_code(&req(
                &post,
                None,
                Some("application/json"),
                r#"{"code":"abc"}"#
            )),
            Ok(("abc".into(), None))
        );
        assert_eq!(
            login_code(&req(&post, None, None, r#"{"code":"abc"}"#)),
            Ok(("abc".into(), None))
        );
        assert_eq!(
            login_code(&req(
                &post,
                None,
                Some("application/x-www-form-urlencoded; charset=utf-8"),
                "code=abc"
            )),
            Ok(("abc".into(), None))
        );
        assert_eq!(
            login_code(&req(&post, Some("code=q"), None, "")),
            Ok(("q".into(), None))
        );
        // The app, when the login names one (several mini programs).
        assert_eq!(
            login_code(&req(&get, Some("code=abc&appid=wx2"), None, "")),
            Ok(("abc".into(), Some("wx2".into())))
        );
        assert_eq!(
            login_code(&req(&post, None, None, r#"{"code":"abc","appid":"wx2"}"#)),
            Ok(("abc".into(), Some("wx2".into())))
        );
        assert_eq!(
            login_code(&req(&post, None, None, r#"{"code":"abc","appid":7}"#)),
            Err(Reject::BadBody)
        );
    }

    #[test]
    fn missing_code_and_bad_bodies() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            login_code(&req(&get, None, None, "")),
            Err(Reject::LoginCodeMissing)
        );
        assert_eq!(
            login_code(&req(&get, Some("code="), None, "")),
            Err(Reject::LoginCodeMissing)
        );
        assert_eq!(
            login_code(&req(&post, None, None, "{}")),
            Err(Reject::LoginCodeMissing)
        );
        assert_eq!(
            login_code(&req(&post, None, None, r#"{"code":null}"#)),
            Err(Reject::LoginCodeMissing)
        );
        assert_eq!(
            login_code(&req(&post, None, None, "not json")),
            Err(Reject::BadBody)
        );
        assert_eq!(
            login_code(&req(&post, None, None, "[1,2]")),
            Err(Reject::BadBody)
        );
        assert_eq!(
            login_code(&req(&post, None, None, r#"{"code":5}"#)),
            Err(Reject::BadBody)
        );
        assert_eq!(
            login_code(&req(&post, None, None, "{\"code\":\"\u{0}")),
            Err(Reject::BadBody)
        );
        assert_eq!(
            login_code(&req(&Method::PUT, None, None, "")),
            Err(Reject::MethodNotAllowed)
        );
    }

    #[test]
    fn implausible_codes() {
        assert!(plausible_code("081AbcDEF-_.9"));
        assert!(!plausible_code(""));
        assert!(!plausible_code("a b"));
        assert!(!plausible_code("a&secret=x"));
        assert!(!plausible_code(&"a".repeat(129)));
    }

    #[test]
    fn verify_token_sources() {
        let post = Method::POST;
        let headers = http::HeaderMap::new();
        let r = req(&post, None, None, r#"{"token":"abc"}"#);
        let body = verify_body(&r).unwrap();
        assert_eq!(
            verify_token(body.as_ref(), &headers),
            Presented::Token("abc")
        );
        let r = req(&post, None, None, "");
        let body = verify_body(&r).unwrap();
        assert_eq!(verify_token(body.as_ref(), &headers), Presented::Missing);
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer h".parse().unwrap());
        assert_eq!(verify_token(body.as_ref(), &headers), Presented::Token("h"));
        let r = req(&post, None, None, "garbage");
        assert_eq!(verify_body(&r), Err(Reject::BadBody));
    }
}

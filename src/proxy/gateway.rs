//! The `ProxyHttp` implementation. Each phase does one job and hands decisions to pure functions:
//! `request_filter` answers the gateway's own endpoints or authorizes (see [`authorize`]),
//! `upstream_peer` picks the route's next upstream, `upstream_request_filter` sets identity
//! headers, `fail_to_proxy` turns proxy errors into envelopes (see [`proxy_error`]).

use super::drain::{InFlight, InFlightGuard};
use super::headers::IdentityHeaders;
use super::limit::{client_ip, PerMinute};
use super::route::{route_path, Route, RouteTable};
use crate::auth::extract;
use crate::auth::login::{self, EndpointRequest, Login};
use crate::auth::Identity;
use crate::config::{Config, RouteAuth};
use crate::reply::{self, Reject};
use crate::session::Phone;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a request needs, built once at start-up from the configuration.
pub struct GatewayState {
    pub routes: RouteTable,
    pub login: Arc<Login>,
    /// The gateway's own endpoints, by path.
    endpoints: Vec<(String, Endpoint)>,
    pub identity: IdentityHeaders,
    pub max_body: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub login_limit: PerMinute,
    pub phone_limit: PerMinute,
}

impl GatewayState {
    pub fn new(config: &Config, login: Arc<Login>) -> Result<Self, String> {
        let routes = config
            .routes
            .iter()
            .map(Route::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GatewayState {
            routes: RouteTable::new(routes),
            login,
            endpoints: {
                let a = &config.auth;
                [
                    (&a.login_path, Endpoint::Login),
                    (&a.verify_path, Endpoint::Verify),
                    (&a.refresh_path, Endpoint::Refresh),
                    (&a.logout_path, Endpoint::Logout),
                    (&a.phone_path, Endpoint::Phone),
                    (&a.decrypt_path, Endpoint::Decrypt),
                ]
                .into_iter()
                .map(|(path, e)| (path.clone(), e))
                .collect()
            },
            identity: IdentityHeaders::new(
                config.auth.identity_header.clone(),
                config.auth.unionid_header.clone(),
                config.auth.phone_header.clone(),
            ),
            max_body: config.server.max_body,
            trusted_proxies: config.server.trusted_proxies.clone(),
            login_limit: PerMinute::new(config.rate_limit.login_per_minute),
            phone_limit: PerMinute::new(config.rate_limit.phone_per_minute),
        })
    }
}

pub struct Gateway {
    state: Arc<GatewayState>,
    in_flight: InFlight,
}

impl Gateway {
    pub fn new(state: Arc<GatewayState>, in_flight: InFlight) -> Self {
        Gateway { state, in_flight }
    }
}

/// Per-request state.
pub struct Ctx {
    route: Option<Arc<Route>>,
    identity: Option<Identity>,
    phone: Option<Phone>,
    started: Instant,
    _in_flight: InFlightGuard,
}

/// Which route, and who the caller is (when the route requires a token). Pure: no I/O.
pub fn authorize(
    req: &RequestHeader,
    state: &GatewayState,
) -> Result<(Arc<Route>, Option<Identity>), Reject> {
    let path = route_path(req.uri.path())?;
    let route = state.routes.find(&path).ok_or(Reject::NoRoute)?;
    let identity = match route.auth {
        RouteAuth::None => None,
        RouteAuth::Required => Some(state.login.verify(extract::from_headers(&req.headers))?),
    };
    Ok((Arc::clone(route), identity))
}

/// Bounds on request headers (Pingora itself refuses more than 1 MiB with a bare 400).
const MAX_HEADERS: usize = 100;
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Refuse requests whose headers exceed the gateway's bounds. Token headers do not count: an
/// oversized token is a bad token (401 10200), which is what its client needs to hear. Pure.
pub fn check_headers(req: &RequestHeader) -> Result<(), Reject> {
    if req.headers.len() > MAX_HEADERS {
        return Err(Reject::HeadersTooLarge);
    }
    let bytes: usize = req
        .headers
        .iter()
        .filter(|(k, _)| *k != header::AUTHORIZATION && k.as_str() != "token")
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(Reject::HeadersTooLarge);
    }
    Ok(())
}

/// The envelope for a proxy error, or `None` when the client is gone and nothing can be sent.
pub fn proxy_error(e: &Error) -> Option<Reject> {
    use ErrorType::*;
    Some(match (e.esource(), e.etype()) {
        (_, HTTPStatus(status)) if *status >= 500 => Reject::UpstreamUnreachable,
        (_, HTTPStatus(status)) => Reject::BadRequest { status: *status },
        (ErrorSource::Upstream, ConnectTimedout | ReadTimedout | WriteTimedout) => {
            Reject::UpstreamTimeout
        }
        (ErrorSource::Upstream, _) => Reject::UpstreamUnreachable,
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => return None,
        (ErrorSource::Downstream, ReadTimedout) => Reject::BadRequest { status: 408 },
        (ErrorSource::Downstream, _) => Reject::BadRequest { status: 400 },
        (ErrorSource::Internal | ErrorSource::Unset, ConnectTimedout) => Reject::UpstreamTimeout,
        (
            ErrorSource::Internal | ErrorSource::Unset,
            ConnectRefused | ConnectNoRoute | ConnectError,
        ) => Reject::UpstreamUnreachable,
        (ErrorSource::Internal | ErrorSource::Unset, _) => Reject::Internal,
    })
}

/// Whether an error only says that the client closed its connection.
pub fn client_went_away(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

/// Write a complete gateway answer.
async fn respond(session: &mut Session, status: u16, body: Bytes) -> Result<()> {
    let mut head = ResponseHeader::build(status, Some(4))?;
    head.insert_header(header::CONTENT_TYPE, "application/json; charset=utf-8")?;
    head.insert_header(header::CONTENT_LENGTH, body.len())?;
    head.insert_header(header::CACHE_CONTROL, "no-store")?;
    match status {
        401 => head.insert_header(header::WWW_AUTHENTICATE, "Bearer")?,
        405 => head.insert_header(header::ALLOW, "GET, POST")?,
        429 => head.insert_header(header::RETRY_AFTER, "60")?,
        _ => {}
    }
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

async fn reject(session: &mut Session, r: &Reject) -> Result<bool> {
    if has_body(session.req_header()) {
        // The unread body would have to be drained before the connection could be reused.
        session.set_keepalive(None);
    }
    respond(session, r.status(), r.body()).await?;
    Ok(true)
}

fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Read a gateway endpoint's body, refusing more than `max` bytes without reading them all.
async fn read_body(session: &mut Session, max: usize) -> Result<Bytes, Reject> {
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(Reject::BodyTooLarge);
    }
    session.set_read_timeout(Some(Duration::from_secs(10)));
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(Reject::BodyTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                tracing::debug!("reading a request body failed: {e}");
                return Err(match e.etype() {
                    ErrorType::ReadTimedout => Reject::BadRequest { status: 408 },
                    _ => Reject::BadRequest { status: 400 },
                });
            }
        }
    }
}

/// The endpoints the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Verify,
    Refresh,
    Logout,
    Phone,
    Decrypt,
}

impl GatewayState {
    /// Which gateway endpoint a path names, if any.
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        self.endpoints
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, e)| *e)
    }
}

impl Gateway {
    /// The client's address (behind trusted proxies), if the connection has one.
    fn client(&self, session: &Session) -> Option<std::net::IpAddr> {
        let peer = session.client_addr()?.as_inet()?.ip();
        let forwarded = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        Some(client_ip(peer, forwarded, &self.state.trusted_proxies))
    }

    /// Whether this client may make one more call that spends WeChat quota.
    fn within_limit(&self, session: &Session, endpoint: Endpoint) -> bool {
        let limit = match endpoint {
            Endpoint::Login => &self.state.login_limit,
            Endpoint::Phone => &self.state.phone_limit,
            _ => return true,
        };
        self.client(session).is_none_or(|ip| limit.allow(ip))
    }

    /// Read the (bounded) body, compute the answer, write it.
    async fn serve_endpoint(&self, session: &mut Session, endpoint: Endpoint) -> Result<bool> {
        if !self.within_limit(session, endpoint) {
            return reject(session, &Reject::RateLimited).await;
        }
        let answer = match read_body(session, self.state.max_body).await {
            Ok(body) => self.answer(endpoint, session.req_header(), &body).await,
            Err(r) => Err(r),
        };
        match answer {
            Ok(body) => {
                respond(session, 200, body).await?;
                Ok(true)
            }
            Err(r) => reject(session, &r).await,
        }
    }

    async fn answer(
        &self,
        endpoint: Endpoint,
        req: &RequestHeader,
        body: &[u8],
    ) -> Result<Bytes, Reject> {
        let request = EndpointRequest {
            method: &req.method,
            query: req.uri.query(),
            content_type: req.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            body,
        };
        let login = &self.state.login;
        match endpoint {
            Endpoint::Login => {
                let code = login::login_code(&request)?;
                Ok(reply::success("登录", login.login(&code).await?))
            }
            Endpoint::Verify => {
                let json = login::verify_body(&request)?;
                let data = login.check(login::verify_token(json.as_ref(), &req.headers))?;
                Ok(reply::success("验证成功", data))
            }
            Endpoint::Refresh => {
                let refresh_token = login::refresh_token(&request)?;
                Ok(reply::success(
                    "刷新成功",
                    login.refresh(&refresh_token).await?,
                ))
            }
            Endpoint::Logout => {
                let json = login::post_body(&request)?;
                login
                    .logout(login::verify_token(Some(&json), &req.headers))
                    .await?;
                Ok(reply::success("已退出登录", serde_json::json!({})))
            }
            Endpoint::Phone => {
                let json = login::post_body(&request)?;
                let identity = login.verify(login::verify_token(Some(&json), &req.headers))?;
                let code = login::string_field(&json, "code", Reject::LoginCodeMissing)?;
                Ok(reply::success(
                    "获取手机号成功",
                    login.phone(&identity, &code).await?,
                ))
            }
            Endpoint::Decrypt => {
                let json = login::post_body(&request)?;
                let identity = login.verify(login::verify_token(Some(&json), &req.headers))?;
                let data =
                    login::string_field(&json, "encryptedData", Reject::DecryptFieldsMissing)?;
                let iv = login::string_field(&json, "iv", Reject::DecryptFieldsMissing)?;
                Ok(reply::success(
                    "解密成功",
                    login.decrypt(&identity, &data, &iv).await?,
                ))
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            route: None,
            identity: None,
            phone: None,
            started: Instant::now(),
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Err(r) = check_headers(session.req_header()) {
            return reject(session, &r).await;
        }
        if let Some(endpoint) = self.state.endpoint(session.req_header().uri.path()) {
            return self.serve_endpoint(session, endpoint).await;
        }
        let revocations = self.state.login.revocations();
        if !revocations.is_ready() {
            // Only right after start-up with a shared store: load the revocation list first.
            revocations.wait_ready(revocations.stale_after()).await;
        }
        let (route, identity) = match authorize(session.req_header(), &self.state) {
            Ok(decision) => decision,
            Err(r) => return reject(session, &r).await,
        };
        if let (true, Some(identity)) = (route.forward_phone, &identity) {
            match self.state.login.phone_of(&identity.sid).await {
                Ok(phone) => ctx.phone = phone,
                Err(r) => return reject(session, &r).await,
            }
        }
        ctx.route = Some(route);
        ctx.identity = identity;
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
        match route.peer() {
            Some(peer) => Ok(Box::new(peer)),
            None => Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "route has no upstream available",
            )),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.state.identity.strip(upstream_request);
        if let Some(identity) = &ctx.identity {
            self.state.identity.inject(upstream_request, identity);
        }
        if let Some(phone) = &ctx.phone {
            self.state.identity.inject_phone(upstream_request, phone);
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let Some(r) = proxy_error(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let status = r.status();
        if session.response_written().is_none() {
            session.set_keepalive(None);
            if let Err(write_error) = respond(session, status, r.body()).await {
                tracing::debug!("cannot send the error answer: {write_error}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// A client that hangs up mid-request is not the gateway's error: no ERROR line for it
    /// (the access log still records the request).
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        client_went_away(error)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        // The path only: query strings may carry login codes.
        tracing::info!(
            target: "wxgate::access",
            method = %req.method,
            path = req.uri.path(),
            status,
            route = ctx.route.as_ref().map(|r| r.name.as_str()),
            ms = ctx.started.elapsed().as_millis() as u64,
            error = e.map(|e| e.etype().as_str()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_errors_map_to_documented_envelopes() {
        let up = Error::new_up;
        assert_eq!(
            proxy_error(&up(ErrorType::ConnectRefused)),
            Some(Reject::UpstreamUnreachable)
        );
        assert_eq!(
            proxy_error(&up(ErrorType::ReadTimedout)),
            Some(Reject::UpstreamTimeout)
        );
        assert_eq!(
            proxy_error(&up(ErrorType::ConnectTimedout)),
            Some(Reject::UpstreamTimeout)
        );
        assert_eq!(
            proxy_error(&up(ErrorType::ConnectionClosed)),
            Some(Reject::UpstreamUnreachable)
        );
        let down = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(proxy_error(&down), None);
        assert!(client_went_away(&down));
        assert!(!client_went_away(&up(ErrorType::ConnectionClosed)));
        let bad = Error::new_down(ErrorType::InvalidHTTPHeader);
        assert_eq!(proxy_error(&bad), Some(Reject::BadRequest { status: 400 }));
        assert_eq!(
            proxy_error(&Error::new(ErrorType::HTTPStatus(413))),
            Some(Reject::BadRequest { status: 413 })
        );
    }
}

//! The `ProxyHttp` implementation. Each phase does one job and hands decisions to pure functions:
//! `request_filter` answers the gateway's own endpoints or authorizes (see [`authorize`]),
//! `upstream_peer` picks the route's next upstream, `upstream_request_filter` sets identity
//! headers, `fail_to_proxy` turns proxy errors into envelopes (see [`proxy_error`]).
//!
//! What happened to a request is recorded in its [`Ctx`] (endpoint or route, rejection, request
//! id, client, upstream and its latency); [`write_answer`] writes every answer of the gateway's
//! own from that record, and `logging` turns it into metrics and the access log line.

use super::access::openid_for_log;
use super::batch::before_upstream_write;
use super::drain::{InFlight, InFlightGuard};
use super::headers::{CloudHosting, Forwarded};
use super::limit::{client_ip, client_key, is_trusted, openid_key};
use super::pool::InFlightUpstream;
use super::request_id::{self, request_id};
use super::route::{
    normalised_path, request_host, route_path, strip_prefix, take_token_param, Route,
};
use super::snapshot::{Live, Snapshot};
use crate::auth::endpoints::{self, Endpoint, EndpointRequest};
use crate::auth::{extract, Identity};
use crate::config::{RouteAuth, ServerConfig};
use crate::logging::AccessLine;
use crate::metrics::METRICS;
use crate::reply::{Reject, TokenProblem};
use crate::session::Phone;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tracing::Instrument;

pub struct Gateway {
    live: Live,
    in_flight: InFlight,
}

impl Gateway {
    pub fn new(live: Live, in_flight: InFlight) -> Self {
        Gateway { live, in_flight }
    }
}

/// Per-request state: the snapshot the request runs under, and the record of what happened.
pub struct Ctx {
    snap: Arc<Snapshot>,
    request_id: http::HeaderValue,
    /// The id is the client's own, sent once: it reaches the upstream as it is.
    request_id_sent: bool,
    /// The client's address, worked out once it is needed ([`Ctx::client`]).
    client: OnceLock<Option<IpAddr>>,
    endpoint: Option<Endpoint>,
    route: Option<Arc<Route>>,
    identity: Option<Arc<Identity>>,
    phone: Option<Phone>,
    /// The request target sent upstream, when it differs from the client's.
    target: Option<String>,
    /// An `Upgrade` (WebSocket) request.
    upgrade: bool,
    /// The gateway's own refusal or failure, when it answered instead of the upstream.
    rejection: Option<Reject>,
    upstream: Option<SocketAddr>,
    /// The chosen upstream's in-flight count, held until the request ends.
    upstream_held: Option<InFlightUpstream>,
    /// Upstreams whose connect failed for this request (not chosen again for it).
    tried: Vec<SocketAddr>,
    /// No upstream of the route was in rotation.
    no_healthy_upstream: bool,
    upstream_started: Option<Instant>,
    /// From choosing the upstream to its response header.
    upstream_time: Option<Duration>,
    started: Instant,
    /// The fast path's failure (Pingora's `logging` gets none when `request_filter` answered).
    error: Option<Box<Error>>,
    _in_flight: InFlightGuard,
}

impl Ctx {
    /// The configuration snapshot the request runs under.
    pub fn snap(&self) -> &Arc<Snapshot> {
        &self.snap
    }

    /// The client's address: the peer's, or the one a trusted proxy in front forwarded for
    /// (`None` on a Unix socket). Worked out at the first need (a rate limit, a balancing key,
    /// Cloud Hosting's header, the access log) and kept.
    fn client(&self, session: &Session) -> Option<IpAddr> {
        *self.client.get_or_init(|| client_of(session, &self.snap))
    }

    /// Keep the fast path's failure for `logging`.
    pub(super) fn set_error(&mut self, e: Box<Error>) {
        self.error = Some(e);
    }
}

/// Which route a request goes to: by its host (`Host` or h2's `:authority`) and path. A path
/// that an upstream normalising it (merged slashes, `;` parameters dropped) would read as
/// another route's is refused: the gateway cannot know which reading the upstream makes. Pure.
pub fn route_for(req: &RequestHeader, snap: &Snapshot) -> Result<Arc<Route>, Reject> {
    let path = route_path(req.uri.path())?;
    let host = request_host(
        req.uri.authority().map(|a| a.as_str()),
        req.headers.get(header::HOST).map(|v| v.as_bytes()),
    );
    let found = snap.routes.find(host.as_deref(), &path);
    if let Some(other) = normalised_path(&path) {
        let read_so = snap.routes.find(host.as_deref(), &other);
        if found.map(Arc::as_ptr) != read_so.map(Arc::as_ptr) {
            return Err(Reject::BadPath("ambiguous_path"));
        }
    }
    found.cloned().ok_or(Reject::NoRoute)
}

/// Who the caller is, when the route requires a token. A WebSocket upgrade may carry it in the
/// `token` query parameter instead of a header (`wx.connectSocket` clients often do). Pure apart
/// from reading the local revocation list.
pub fn identify(
    req: &RequestHeader,
    route: &Route,
    snap: &Snapshot,
    upgrade: bool,
) -> Result<Option<Arc<Identity>>, Reject> {
    if route.auth == RouteAuth::None {
        return Ok(None);
    }
    let query_token = match (upgrade, req.uri.query()) {
        (true, Some(q)) => take_token_param(q).0,
        _ => None,
    };
    let presented = match (extract::from_headers(&req.headers), &query_token) {
        (extract::Presented::Missing, Some(t)) if !t.is_empty() => extract::Presented::Token(t),
        (from_headers, _) => from_headers,
    };
    let identity = snap.apps.verify(presented)?;
    // An identity that cannot be forwarded (a control character in an accepted token's openid)
    // is refused rather than sent upstream without its header.
    let [openid, _, unionid] = identity.values();
    if openid.is_none() || (identity.unionid.is_some() && unionid.is_none()) {
        return Err(Reject::Token(TokenProblem::Malformed));
    }
    match &route.apps {
        Some(allowed) if !allowed.contains(&identity.appid) => Err(Reject::WrongApp),
        _ => Ok(Some(identity)),
    }
}

/// The request target the upstream gets, when it differs from the client's: the route's prefix
/// stripped, and for a WebSocket upgrade the `token` parameter removed.
pub fn upstream_target(
    req: &RequestHeader,
    route: &Route,
    upgrade: bool,
) -> Result<Option<String>, Reject> {
    let query = req.uri.query();
    let kept = match (upgrade, query) {
        (true, Some(q)) => Some(take_token_param(q).1),
        _ => None,
    };
    if !route.strip_prefix && kept.is_none() {
        return Ok(None);
    }
    let query = match &kept {
        Some(q) => Some(q.as_str()).filter(|q| !q.is_empty()),
        None => query,
    };
    if route.strip_prefix {
        return strip_prefix(req.uri.path(), query, &route.prefix).map(Some);
    }
    let path = req.uri.path();
    Ok(Some(match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }))
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
    if !host_is_valid(req) || !content_length_is_single(req) {
        return Err(Reject::BadRequest { status: 400 });
    }
    Ok(())
}

/// The status for a request the HTTP layer refused before any filter saw it: a request head past
/// Pingora's own bounds (more than 256 header lines, or more than 1 MiB) is one past the
/// gateway's (`431`, as for more than 100 headers or 64 KiB, [`check_headers`]), not a
/// malformed one. Pure.
pub fn refused_status(status: u16, error: Option<&Error>) -> u16 {
    let Some(e) = error.filter(|_| status == 400) else {
        return status;
    };
    let too_many =
        e.root_cause().downcast_ref::<httparse::Error>() == Some(&httparse::Error::TooManyHeaders);
    // pingora-core's words for a head past `MAX_HEADER_SIZE` (`v1/server.rs`).
    let too_large = e
        .context
        .as_ref()
        .is_some_and(|c| c.as_str().starts_with("Request header larger than"));
    if too_many || too_large {
        431
    } else {
        status
    }
}

/// At most one `Content-Length`, one number: a list (`0, 0`) or repeated headers are refused
/// rather than forwarded for the upstream to read its own way (RFC 9112 §6.3 lets a recipient
/// refuse them). Pure.
fn content_length_is_single(req: &RequestHeader) -> bool {
    let mut lengths = req.headers.get_all(header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (None, _) => true,
        (Some(v), None) => !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// An HTTP/1.1 request names exactly one valid host (RFC 9112 §3.2); an HTTP/1.0 one at most
/// one. HTTP/2 names it in `:authority`. Pure.
fn host_is_valid(req: &RequestHeader) -> bool {
    let required = match req.version {
        http::Version::HTTP_11 => true,
        http::Version::HTTP_10 | http::Version::HTTP_09 => false,
        _ => return true,
    };
    one_valid_host(&req.headers).unwrap_or(!required)
}

/// `None` without a `Host`; whether there is exactly one and it is a valid authority (no
/// userinfo) otherwise. Pure.
fn one_valid_host(headers: &http::HeaderMap) -> Option<bool> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next()?;
    Some(hosts.next().is_none() && valid_host(host))
}

/// A `Host` value is a valid authority without userinfo. Pure.
fn valid_host(host: &http::HeaderValue) -> bool {
    !host.as_bytes().contains(&b'@') && http::uri::Authority::try_from(host.as_bytes()).is_ok()
}

/// The tokens of a comma-separated header (`Connection`, `Upgrade`), over all its lines,
/// trimmed; empty ones and values that are not text are skipped.
fn header_tokens(
    headers: &http::HeaderMap,
    name: http::header::HeaderName,
) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// An `Upgrade` to anything but WebSocket (`h2c`, which Java's and other HTTP clients offer on
/// plain HTTP/1.1; `TLS/1.0`...) is declined by ignoring it, as RFC 9110 §7.8 lets a server:
/// the header, `HTTP2-Settings` and their `Connection` tokens are dropped, and the request is
/// served as the HTTP/1.1 request it also is. Pure.
pub fn decline_other_upgrades(req: &mut RequestHeader) {
    if !req.headers.contains_key(header::UPGRADE)
        || header_tokens(&req.headers, header::UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket"))
    {
        return;
    }
    req.remove_header(&header::UPGRADE);
    req.remove_header("http2-settings");
    let kept: Vec<String> = header_tokens(&req.headers, header::CONNECTION)
        .filter(|t| !t.eq_ignore_ascii_case("upgrade") && !t.eq_ignore_ascii_case("http2-settings"))
        .map(str::to_string)
        .collect();
    req.remove_header(&header::CONNECTION);
    if !kept.is_empty() {
        // Tokens from a header value: always a valid value again.
        let _ = req.insert_header(header::CONNECTION, kept.join(", "));
    }
}

/// The envelope for a proxy error, or `None` when the client is gone and nothing can be sent.
pub fn proxy_error(e: &Error) -> Option<Reject> {
    use ErrorType::*;
    if out_of_resources(e) {
        return Some(Reject::GatewayOverloaded);
    }
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

/// Whether an error is the gateway's own lack of resources (descriptors, local ports, buffers,
/// memory) rather than anything the peer did: a socket that could not be made, for one. Pure.
pub fn out_of_resources(e: &Error) -> bool {
    const LOCAL: [i32; 5] = [
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOBUFS,
        libc::ENOMEM,
        libc::EADDRNOTAVAIL,
    ];
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::raw_os_error)
        .is_some_and(|code| LOCAL.contains(&code))
}

/// Whether an error only says that the client closed its connection.
pub fn client_went_away(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

/// Write a complete answer of the gateway's own, recording a rejection in the context: the
/// envelope, the headers every answer has, and the ones that belong to the rejection itself.
pub async fn write_answer(
    session: &mut Session,
    ctx: &mut Ctx,
    outcome: Result<Bytes, Reject>,
) -> Result<bool> {
    let (status, body) = match outcome {
        Ok(body) => (200, body),
        Err(r) => {
            let answer = (r.status(), r.body());
            ctx.rejection = Some(r);
            answer
        }
    };
    if ctx.rejection.is_some() && has_body(session.req_header()) {
        // The unread body would have to be drained before the connection could be reused.
        session.set_keepalive(None);
    }
    let cache_control = match (ctx.endpoint, &ctx.rejection) {
        (Some(endpoint), None) => endpoint.cache_control(),
        _ => "no-store",
    };
    let mut head = answer_head(status, body.len(), cache_control, ctx.request_id.clone())?;
    if let Some(r) = &ctx.rejection {
        for (name, value) in r.headers(ctx.endpoint.map(Endpoint::allow)) {
            head.insert_header(name, value.as_ref())?;
        }
    }
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// The header of an answer of the gateway's own: a JSON body of `len` bytes and the request id.
fn answer_head(
    status: u16,
    len: usize,
    cache_control: &'static str,
    request_id: http::HeaderValue,
) -> Result<ResponseHeader> {
    let mut head = ResponseHeader::build(status, Some(6))?;
    head.insert_header(header::CONTENT_TYPE, crate::reply::JSON_CONTENT_TYPE)?;
    head.insert_header(header::CONTENT_LENGTH, len)?;
    head.insert_header(header::CACHE_CONTROL, cache_control)?;
    head.insert_header(request_id::names(), request_id)?;
    Ok(head)
}

fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Read a gateway endpoint's body, refusing more than `max` bytes without reading them all, and
/// a body not whole within `deadline` (`server.header_timeout`: a client trickling it would
/// otherwise hold the connection as long as each read came within the read timeout).
async fn read_body(session: &mut Session, max: usize, deadline: Duration) -> Result<Bytes, Reject> {
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
    pingora::prelude::timeout(deadline, read_body_within(session, max))
        .await
        .unwrap_or(Err(Reject::BadRequest { status: 408 }))
}

async fn read_body_within(session: &mut Session, max: usize) -> Result<Bytes, Reject> {
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

impl Gateway {
    /// Read the (bounded) body, compute the answer, write it.
    async fn serve_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        endpoint: Endpoint,
    ) -> Result<bool> {
        let snap = ctx.snap.clone();
        let within_limit = match snap.limit_of(endpoint) {
            Some(limit) => ctx.client(session).is_none_or(|ip| limit.allow(ip)),
            None => true,
        };
        let outcome = if !within_limit {
            Err(Reject::RateLimited)
        } else {
            let server = &snap.config.server;
            match read_body(session, server.max_body, server.header_timeout).await {
                Ok(body) => {
                    let req = session.req_header();
                    let request = EndpointRequest {
                        method: &req.method,
                        query: req.uri.query(),
                        content_type: req.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
                        body: &body,
                    };
                    let span =
                        tracing::info_span!("request", id = request_id::as_str(&ctx.request_id));
                    endpoints::answer(&snap.apps, endpoint, &request, &req.headers)
                        .instrument(span)
                        .await
                }
                Err(r) => Err(r),
            }
        };
        if endpoint == Endpoint::Login {
            let result = match &outcome {
                Ok(_) => "ok".into(),
                Err(r) => r.parts().code,
            };
            METRICS.logins.with_label_values(&[&result]).inc();
        }
        write_answer(session, ctx, outcome).await
    }
}

/// The client's address (behind trusted proxies), if the connection has one.
fn client_of(session: &Session, snap: &Snapshot) -> Option<IpAddr> {
    let peer = session.client_addr()?.as_inet()?.ip();
    let forwarded = || {
        session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
    };
    Some(client_ip(
        peer,
        forwarded,
        &snap.config.server.trusted_proxies,
    ))
}

/// The route label of a request in metrics and the access log: the route's name, the gateway
/// endpoint's (`endpoint:login`), or `none`. Never the path.
fn route_label(ctx: &Ctx) -> &str {
    match (&ctx.route, ctx.endpoint) {
        (Some(route), _) => &route.name,
        (None, Some(endpoint)) => endpoint.label(),
        (None, None) => "none",
    }
}

/// What became of the caller's token: `ok` (verified), `public` (route without auth),
/// `rejected` (refused for it), or `-` (not looked at).
fn auth_outcome(ctx: &Ctx) -> &'static str {
    match (&ctx.identity, &ctx.rejection, &ctx.route) {
        (Some(_), _, _) => "ok",
        (None, Some(Reject::TokenMissing | Reject::Token(_)), _) => "rejected",
        (None, _, Some(route)) if route.auth == RouteAuth::None => "public",
        _ => "-",
    }
}

// The steps both paths take (Pingora's full proxy through `ProxyHttp`, and the fast path).

/// The route's next upstream (by its balancer, past the ones whose connect failed) and the peer
/// to reach it; the error says when none is in rotation.
pub(super) fn choose_upstream(session: &Session, ctx: &mut Ctx) -> Result<HttpPeer> {
    let route = ctx
        .route
        .clone()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
    // A retry lets go of the upstream that failed before choosing the next.
    ctx.upstream_held = None;
    let chosen = {
        let openid = ctx.identity.as_ref().map(|i| i.openid.as_str());
        let key = route.balance_key(openid, || ctx.client(session));
        route.pool.select(&key, &ctx.tried)
    };
    let Some(held) = chosen else {
        ctx.no_healthy_upstream = true;
        return Err(Error::explain(
            ErrorType::ConnectNoRoute,
            "every upstream of the route is out of rotation",
        ));
    };
    let peer = route.peer(held.upstream(), ctx.upgrade);
    ctx.upstream = Some(held.upstream().addr);
    ctx.upstream_held = Some(held);
    ctx.upstream_started = Some(Instant::now());
    Ok(peer)
}

/// Record that connecting to `peer` failed: out of rotation for a moment, counted, not chosen
/// again for this request. Whether to try another upstream (within the route's `retries`). A
/// failure of the gateway's own (out of descriptors) is not the upstream's: it stays in
/// rotation, and another would fail the same way.
pub(super) fn connect_failed(ctx: &mut Ctx, peer: &HttpPeer, e: &Error) -> bool {
    if out_of_resources(e) {
        return false;
    }
    let (Some(route), Some(addr)) = (&ctx.route, peer._address.as_inet()) else {
        return false;
    };
    route.pool.mark_failed(addr);
    METRICS
        .upstream_connect_failures
        .with_label_values(&[&route.name, &addr.to_string()])
        .inc();
    ctx.tried.push(*addr);
    // Without another upstream to try, the answer keeps this failure's reason.
    ctx.tried.len() <= route.retries as usize && route.pool.any_other_up(&ctx.tried)
}

/// What the upstream request carries: the identity headers (a client's copies stripped), the
/// `X-Forwarded-*` headers, the phone, the request id, the route's `upstream_host` and the
/// rewritten target.
pub(super) fn edit_upstream_request(
    session: &Session,
    upstream_request: &mut RequestHeader,
    ctx: &Ctx,
) -> Result<()> {
    let identity_headers = &ctx.snap.identity;
    let cloudhosting = ctx.route.as_ref().is_some_and(|r| r.cloudhosting);
    let server = &ctx.snap.config.server;
    if server.forwarded_headers || cloudhosting {
        // Cloud Hosting appends the peer whatever the setting: its apps read it.
        forward(session, upstream_request, server);
    }
    if cloudhosting {
        CloudHosting::strip(identity_headers, upstream_request);
        let client = ctx.client(session);
        CloudHosting::inject(upstream_request, ctx.identity.as_deref(), client);
    } else {
        identity_headers.strip(upstream_request);
        if let Some(identity) = &ctx.identity {
            identity_headers.inject(upstream_request, identity);
        }
    }
    if let Some(phone) = &ctx.phone {
        identity_headers.inject_phone(upstream_request, phone);
    }
    if !ctx.request_id_sent {
        upstream_request.insert_header(request_id::names(), ctx.request_id.clone())?;
    }
    if let Some(host) = ctx.route.as_ref().and_then(|r| r.upstream_host.as_deref()) {
        upstream_request.insert_header(header::HOST, host)?;
    }
    if let Some(target) = &ctx.target {
        let uri = target.parse::<http::Uri>().map_err(|e| {
            Error::explain(ErrorType::InternalError, format!("rewritten target: {e}"))
        })?;
        upstream_request.set_uri(uri);
    }
    Ok(())
}

/// The `X-Forwarded-*` headers (`server.forwarded_headers`; on Cloud Hosting routes
/// `X-Forwarded-For` always): the peer appended to `X-Forwarded-For`, the scheme and host the
/// client used unless a trusted proxy in front said them.
fn forward(session: &Session, upstream_request: &mut RequestHeader, server: &ServerConfig) {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    if let Some(peer) = peer {
        Forwarded::append_for(upstream_request, peer);
    }
    if !server.forwarded_headers {
        return;
    }
    let trusted = peer.is_some_and(|ip| is_trusted(&ip, &server.trusted_proxies));
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let req = session.req_header();
    let host = match req.uri.authority() {
        // HTTP/2's :authority (an HTTP/1 request's target is origin-form on every route).
        Some(authority) => http::HeaderValue::from_str(authority.as_str()).ok(),
        None => req.headers.get(header::HOST).cloned(),
    };
    Forwarded::set_proto_host(
        upstream_request,
        if tls { "https" } else { "http" },
        host,
        trusted,
    );
}

/// The upstream's response header arrived.
pub(super) fn upstream_answered(ctx: &mut Ctx) {
    ctx.upstream_time = ctx.upstream_started.map(|t| t.elapsed());
}

/// What the client's response is made of the upstream's (both paths, 1xx answers included): a
/// `101` the client did not ask for is the upstream's failure (`502`: the connection would
/// otherwise be handed over to nothing); the hop-by-hop headers of the upstream's connection are
/// dropped (`Keep-Alive`, `Proxy-Connection`, those `Connection` names, `Upgrade` outside a
/// `101`); an HTTP/1.x client gets the gateway's own version, 1.1; the request id is added.
pub(super) fn edit_response(
    response: &mut ResponseHeader,
    ctx: &Ctx,
    downstream_h1: bool,
) -> Result<()> {
    let switching = response.status == http::StatusCode::SWITCHING_PROTOCOLS;
    if switching && !ctx.upgrade {
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "101 to a request without upgrade",
        )
        .map_err(|e| e.into_up());
    }
    strip_hop_by_hop(response, switching);
    if !tidy_framing(response) {
        return Error::e_explain(ErrorType::InvalidHTTPHeader, "conflicting Content-Length")
            .map_err(|e| e.into_up());
    }
    if downstream_h1 {
        response.set_version(http::Version::HTTP_11);
    }
    response.insert_header(request_id::names(), ctx.request_id.clone())?;
    Ok(())
}

/// Framing headers an answer of its status must not carry are dropped (RFC 9110 §8.6, RFC 9112
/// §6.1): any on a 1xx or 204, `Transfer-Encoding` on a 304. A `Content-Length` list of one
/// repeated value (`5, 5`, or the header repeated) becomes that value, as RFC 9110 §8.6 lets a
/// recipient read it; `false` for different values (the upstream's failure). Pure.
pub fn tidy_framing(response: &mut ResponseHeader) -> bool {
    let status = response.status.as_u16();
    if status < 200 || status == 204 {
        response.remove_header(&header::CONTENT_LENGTH);
        response.remove_header(&header::TRANSFER_ENCODING);
        return true;
    }
    if status == 304 {
        response.remove_header(&header::TRANSFER_ENCODING);
    }
    let mut lengths = response.headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), second) = (lengths.next(), lengths.next()) else {
        return true;
    };
    if second.is_none() && !first.as_bytes().contains(&b',') {
        return true; // the usual case: one value
    }
    let mut values = response
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|v| v.trim_ascii());
    let one = values.next().unwrap_or_default().to_vec();
    if values.any(|v| v != one.as_slice()) {
        return false;
    }
    // Bytes of a header value already: always a valid value again.
    let _ = response.insert_header(header::CONTENT_LENGTH, one);
    true
}

/// An HTTP/1.0 client cannot read a chunked body (RFC 9112 §6.1): a body of unknown length goes
/// to it delimited by the end of the connection instead. Whether that is the case here, the
/// `Transfer-Encoding` then removed (the caller closes the connection after the body). Pure.
pub fn unchunk_for_http10(response: &mut ResponseHeader, head_request: bool) -> bool {
    let bodiless = head_request
        || response.status.is_informational()
        || matches!(response.status.as_u16(), 204 | 304);
    if bodiless || response.headers.get(header::TRANSFER_ENCODING).is_none() {
        return false;
    }
    response.remove_header(&header::TRANSFER_ENCODING);
    true
}

/// Drop the response headers that describe the upstream's connection, not the answer: those
/// named by `Connection` (its `close` and `keep-alive` tokens aside: the client's connection
/// gets its own from Pingora), `Keep-Alive`, `Proxy-Connection`, and `Upgrade` unless the
/// answer switches protocols. Pure.
pub fn strip_hop_by_hop(response: &mut ResponseHeader, switching: bool) {
    static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");
    // One pass finds what is there (a removal looks the name up in two maps, present or not):
    // most answers carry `Connection: keep-alive` and nothing else of these.
    let (mut connection, mut others) = (false, false);
    for name in response.headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == KEEP_ALIVE
            || name == PROXY_CONNECTION
            || (!switching && name == header::UPGRADE)
        {
            others = true;
        }
    }
    if connection {
        let nominated: Vec<http::HeaderName> = header_tokens(&response.headers, header::CONNECTION)
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("keep-alive")
                    && (!switching || !t.eq_ignore_ascii_case("upgrade"))
            })
            .filter_map(|t| http::HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in &nominated {
            // The framing is Pingora's to write: never dropped by name.
            if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
                response.remove_header(name);
            }
        }
    }
    if others {
        response.remove_header(&KEEP_ALIVE);
        response.remove_header(&PROXY_CONNECTION);
        if !switching {
            response.remove_header(&header::UPGRADE);
        }
    }
}

/// Answer a proxy failure with its envelope (or, once the upstream's header went out, record it
/// and close the connection). The status, or 0 when the client is gone.
pub(super) async fn answer_failure(session: &mut Session, e: &Error, ctx: &mut Ctx) -> u16 {
    // Neither path reuses the client's connection after a failure.
    session.set_keepalive(None);
    let found = match ctx.no_healthy_upstream {
        true => Some(Reject::NoHealthyUpstream),
        false => proxy_error(e),
    };
    let Some(r) = found else {
        return 0;
    };
    let status = r.status();
    if session.response_written().is_none() {
        if let Err(write_error) = write_answer(session, ctx, Err(r)).await {
            tracing::debug!("cannot send the error answer: {write_error}");
        }
    } else {
        ctx.rejection = Some(r);
    }
    status
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// None: Pingora's default is a response compression module at level 0 (off), which still
    /// cost every request a context and three filter calls. The gateway passes responses through
    /// as the upstream encoded them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snap: self.live.load_full(),
            request_id: http::HeaderValue::from_static(""),
            request_id_sent: false,
            client: OnceLock::new(),
            endpoint: None,
            route: None,
            identity: None,
            phone: None,
            target: None,
            upgrade: false,
            rejection: None,
            upstream: None,
            upstream_held: None,
            tried: Vec::new(),
            no_healthy_upstream: false,
            upstream_started: None,
            upstream_time: None,
            started: Instant::now(),
            error: None,
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Pipelined requests (a second request sent before the first answer) are answered in
        // order instead of dropped (RFC 9112 §9.3.2); Pingora 0.9 leaves this off by default.
        session.set_pipelining_enabled(true);
        let req = session.req_header();
        let mut sent = req.headers.get_all(&request_id::NAME).iter();
        let first = sent.next();
        ctx.request_id = request_id(first);
        ctx.request_id_sent = first == Some(&ctx.request_id) && sent.next().is_none();
        if let Err(r) = check_headers(session.req_header()) {
            return write_answer(session, ctx, Err(r)).await;
        }
        let snap = ctx.snap.clone();
        // The rare or slow branches (endpoints, the first revocation load, phone lookups) are
        // boxed: `async_trait` allocates and copies this future for every request, and held
        // inline their state was most of its size.
        if let Some(endpoint) = snap.endpoint(session.req_header().uri.path()) {
            ctx.endpoint = Some(endpoint);
            return Box::pin(self.serve_endpoint(session, ctx, endpoint)).await;
        }
        for app in snap.apps.iter() {
            let revocations = app.login.revocations();
            if !revocations.is_ready() {
                // Only right after start-up with a shared store: load the revocation list first.
                Box::pin(revocations.wait_ready(revocations.stale_after())).await;
            }
        }
        let route = match route_for(session.req_header(), &snap) {
            Ok(route) => route,
            Err(r) => return write_answer(session, ctx, Err(r)).await,
        };
        ctx.route = Some(route.clone());
        decline_other_upgrades(session.req_header_mut());
        if session.req_header().version == http::Version::HTTP_10 {
            // No 1xx reaches an HTTP/1.0 client (RFC 9110 §15.2), and its `Expect: 100-continue`
            // is ignored (§10.1.1): not forwarded, so the upstream waits for no go-ahead.
            session.req_header_mut().remove_header(&header::EXPECT);
            session.downstream_session.set_ignore_info_resp(true);
        }
        ctx.upgrade = session.is_upgrade_req();
        if ctx.upgrade && route.websocket.is_none() {
            return write_answer(session, ctx, Err(Reject::WebSocketNotAllowed)).await;
        }
        let identity = match identify(session.req_header(), &route, &snap, ctx.upgrade) {
            Ok(identity) => identity,
            Err(r) => return write_answer(session, ctx, Err(r)).await,
        };
        if let Some(limiter) = &route.limiter {
            // Per user on protected routes; per client address on public ones.
            let key = match &identity {
                Some(identity) => Some(openid_key(&identity.appid, &identity.openid)),
                None => ctx.client(session).map(client_key),
            };
            if let Some(Err(retry_after)) = key.map(|k| limiter.check(k)) {
                route.metrics.rate_limited.inc();
                ctx.identity = identity;
                let limited = Reject::RouteRateLimited { retry_after };
                return write_answer(session, ctx, Err(limited)).await;
            }
        }
        match upstream_target(session.req_header(), &route, ctx.upgrade) {
            Ok(target) => ctx.target = target,
            Err(r) => return write_answer(session, ctx, Err(r)).await,
        }
        if let (true, Some(identity)) = (route.forward_phone, &identity) {
            let span = tracing::info_span!("request", id = request_id::as_str(&ctx.request_id));
            let login = snap
                .apps
                .by_appid(&identity.appid)
                .map_or(snap.login(), |app| &app.login);
            match Box::pin(login.phone_of(&identity.sid).instrument(span)).await {
                Ok(phone) => ctx.phone = phone,
                Err(r) => return write_answer(session, ctx, Err(r)).await,
            }
        }
        ctx.identity = identity;
        if snap.config.server.fast_path
            && !ctx.upgrade
            && session.downstream_session.as_http1().is_some()
            && super::fast::eligible(session.req_header())
        {
            return super::fast::proxy(session, ctx).await;
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        choose_upstream(session, ctx).map(Box::new)
    }

    /// A connect failure takes the upstream out of rotation for a moment and, within the route's
    /// `retries`, sends the request to another upstream: nothing of it was sent yet.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        e.set_retry(connect_failed(ctx, peer, &e));
        e
    }

    /// Once any byte of the request went to an upstream, it is never sent again, whatever its
    /// method: the upstream may have acted on it.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        e.set_retry(false);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        edit_upstream_request(session, upstream_request, ctx)?;
        // Pingora writes the request upstream right after this filter.
        before_upstream_write(ctx.snap().config.server.batch_upstream_writes).await;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_answered(ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let req = session.req_header();
        if req.version == http::Version::HTTP_10
            && unchunk_for_http10(response, req.method == http::Method::HEAD)
        {
            session.set_keepalive(None);
        }
        edit_response(response, ctx, !session.is_http2())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        FailToProxy {
            error_code: answer_failure(session, e, ctx).await,
            can_reuse_downstream: false,
        }
    }

    /// A request refused before any filter (unparsable header: 400; `CONNECT`: 405) gets the
    /// envelope too (`10400`, its status kept), with a request id of its own.
    fn refused_request_response(
        &self,
        status: u16,
        error: Option<&Error>,
    ) -> Option<(ResponseHeader, Bytes)> {
        // The error's context is the raw request head, credentials included: its type only.
        if let Some(e) = error {
            tracing::debug!("refused a malformed request: {:?}", e.etype());
        }
        // Counted, as no route or access log line sees them: a flood of trickled headers
        // (`408`) or broken ones shows here.
        let status = refused_status(status, error);
        let status_code = http::StatusCode::from_u16(status).ok();
        let status_text = status_code.as_ref().map_or("0", |s| s.as_str());
        METRICS
            .requests
            .with_label_values(&["refused", status_text])
            .inc();
        let body = match status {
            431 => Reject::HeadersTooLarge.body(),
            _ => Reject::BadRequest { status }.body(),
        };
        let head = answer_head(status, body.len(), "no-store", request_id(None)).ok()?;
        Some((head, body))
    }

    /// Pingora's own error lines carry no request id: `logging` writes them instead, with it.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let e = e.or(ctx.error.as_deref());
        let status = session.response_written().map(|r| r.status).or_else(|| {
            let rejected = ctx.rejection.as_ref()?;
            http::StatusCode::from_u16(rejected.status()).ok()
        });
        let status_text = status.as_ref().map_or("0", |s| s.as_str());
        let route = route_label(ctx);
        match &ctx.route {
            Some(r) => r
                .metrics
                .count(status.map_or(0, |s| s.as_u16()), status_text),
            None => METRICS
                .requests
                .with_label_values(&[route, status_text])
                .inc(),
        }
        match &ctx.rejection {
            Some(Reject::TokenMissing) => METRICS
                .auth_rejections
                .with_label_values(&["missing"])
                .inc(),
            Some(Reject::Token(problem)) => METRICS
                .auth_rejections
                .with_label_values(&[problem.reason()])
                .inc(),
            _ => {}
        }
        if let (Some(route), Some(took)) = (&ctx.route, ctx.upstream_time) {
            route.metrics.upstream.observe(took.as_secs_f64());
        }
        if let Some(e) = e {
            if !client_went_away(e) {
                tracing::error!(
                    request_id = request_id::as_str(&ctx.request_id),
                    route,
                    "{e}"
                );
            }
        }
        if !crate::logging::access_enabled() {
            return;
        }
        let req = session.req_header();
        let parts = ctx.rejection.as_ref().map(Reject::parts);
        let openid = ctx
            .identity
            .as_ref()
            .and_then(|i| openid_for_log(&i.openid, ctx.snap.config.log.openid));
        // The path only: query strings may carry login codes.
        AccessLine::start()
            .str("request_id", Some(request_id::as_str(&ctx.request_id)))
            .ip("client", ctx.client(session))
            .str("method", Some(req.method.as_str()))
            .str("path", Some(req.uri.path()))
            .str("route", Some(route))
            .uint("status", status.map_or(0, |s| s.as_u16().into()))
            .str("code", parts.as_ref().map(|p| p.code.as_ref()))
            .str("auth", Some(auth_outcome(ctx)))
            .str("reason", parts.as_ref().and_then(|p| p.reason))
            .socket("upstream", ctx.upstream)
            .ms("upstream_ms", ctx.upstream_time)
            .ms("ms", Some(ctx.started.elapsed()))
            .str("openid", openid.as_deref())
            .finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: http::Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/api/x", None).unwrap();
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn framing_follows_the_status() {
        let answer = |status: u16, headers: &[(&str, &str)]| {
            let mut r = ResponseHeader::build(status, None).unwrap();
            for (k, v) in headers {
                r.append_header(k.to_string(), *v).unwrap();
            }
            r
        };
        let lengths = |r: &ResponseHeader| -> Vec<String> {
            let all = r.headers.get_all(header::CONTENT_LENGTH).iter();
            all.map(|v| v.to_str().unwrap().to_string()).collect()
        };
        let framed = [("content-length", "5"), ("transfer-encoding", "chunked")];
        for status in [100, 103, 204] {
            let mut r = answer(status, &framed);
            assert!(tidy_framing(&mut r));
            assert!(r.headers.get(header::CONTENT_LENGTH).is_none(), "{status}");
            assert!(
                r.headers.get(header::TRANSFER_ENCODING).is_none(),
                "{status}"
            );
        }
        let mut r = answer(304, &framed);
        assert!(tidy_framing(&mut r));
        assert_eq!(
            lengths(&r),
            ["5"],
            "a 304 may say the representation's length"
        );
        assert!(r.headers.get(header::TRANSFER_ENCODING).is_none());
        for same in [
            &[("content-length", "2, 2")][..],
            &[("content-length", "2"), ("content-length", "2")],
        ] {
            let mut r = answer(200, same);
            assert!(tidy_framing(&mut r));
            assert_eq!(lengths(&r), ["2"], "{same:?}");
        }
        let mut r = answer(200, &[("content-length", "2")]);
        assert!(tidy_framing(&mut r));
        assert_eq!(lengths(&r), ["2"]);
        for different in [
            &[("content-length", "2, 3")][..],
            &[("content-length", "2"), ("content-length", "3")],
        ] {
            assert!(!tidy_framing(&mut answer(200, different)), "{different:?}");
        }
    }

    #[test]
    fn heads_past_pingoras_bounds_are_too_large_not_malformed() {
        let too_many = Error::because(
            ErrorType::InvalidHTTPHeader,
            "buf: ...",
            httparse::Error::TooManyHeaders,
        );
        assert_eq!(refused_status(400, Some(&too_many)), 431);
        let too_large = Error::explain(
            ErrorType::InvalidHTTPHeader,
            "Request header larger than 1048575",
        );
        assert_eq!(refused_status(400, Some(&too_large)), 431);
        let malformed = Error::because(
            ErrorType::InvalidHTTPHeader,
            "buf: ...",
            httparse::Error::HeaderName,
        );
        assert_eq!(refused_status(400, Some(&malformed)), 400);
        assert_eq!(refused_status(400, None), 400);
        assert_eq!(refused_status(408, Some(&too_many)), 408);
    }

    #[test]
    fn http11_requests_name_one_valid_host() {
        const HTTP_10: http::Version = http::Version::HTTP_10;
        const HTTP_11: http::Version = http::Version::HTTP_11;
        const HTTP_2: http::Version = http::Version::HTTP_2;
        assert!(host_is_valid(&request(
            HTTP_11,
            &[("host", "a.example:8080")]
        )));
        assert!(!host_is_valid(&request(HTTP_11, &[])));
        assert!(!host_is_valid(&request(HTTP_11, &[("host", "a b")])));
        assert!(!host_is_valid(&request(HTTP_11, &[("host", "u@a")])));
        assert!(!host_is_valid(&request(
            HTTP_11,
            &[("host", "a"), ("host", "b")]
        )));
        assert!(host_is_valid(&request(HTTP_10, &[])));
        assert!(!host_is_valid(&request(HTTP_10, &[("host", "a b")])));
        assert!(host_is_valid(&request(HTTP_2, &[])));
        let with = |cl: &[&str]| {
            let mut r = request(HTTP_11, &[("host", "a")]);
            for v in cl {
                r.append_header("content-length", *v).unwrap();
            }
            content_length_is_single(&r)
        };
        assert!(with(&[]) && with(&["0"]) && with(&["12"]));
        assert!(!with(&["0, 0"]) && !with(&["5", "5"]) && !with(&["+1"]) && !with(&[""]));
    }

    #[test]
    fn upgrades_other_than_websocket_are_declined() {
        const HTTP_11: http::Version = http::Version::HTTP_11;
        let mut h2c = request(
            HTTP_11,
            &[
                ("host", "a"),
                ("connection", "Upgrade, HTTP2-Settings, keep-alive"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ],
        );
        decline_other_upgrades(&mut h2c);
        assert!(!h2c.headers.contains_key(header::UPGRADE));
        assert!(!h2c.headers.contains_key("http2-settings"));
        assert_eq!(h2c.headers[header::CONNECTION], "keep-alive");
        let ws_headers = [
            ("host", "a"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ];
        let mut ws = request(HTTP_11, &ws_headers);
        decline_other_upgrades(&mut ws);
        assert_eq!(ws.headers[header::UPGRADE], "websocket");
        assert_eq!(ws.headers[header::CONNECTION], "Upgrade");
        let mut only = request(
            HTTP_11,
            &[("connection", "upgrade"), ("upgrade", "TLS/1.2")],
        );
        decline_other_upgrades(&mut only);
        assert!(!only.headers.contains_key(header::CONNECTION));
    }

    #[test]
    fn the_gateways_own_lack_of_descriptors_is_not_the_upstreams_failure() {
        // As Pingora's connector reports a socket it could not make.
        let made = |errno: i32| {
            let socket = Error::because(
                ErrorType::SocketError,
                "failed to create socket",
                std::io::Error::from_raw_os_error(errno),
            );
            let mut e = Error::because(ErrorType::InternalError, "Fail to connect", socket);
            e.as_up();
            e
        };
        for errno in [libc::EMFILE, libc::ENFILE, libc::EADDRNOTAVAIL] {
            assert!(out_of_resources(&made(errno)), "errno {errno}");
            assert_eq!(proxy_error(&made(errno)), Some(Reject::GatewayOverloaded));
        }
        assert!(!out_of_resources(&made(libc::ECONNREFUSED)));
        assert_eq!(
            proxy_error(&made(libc::ECONNREFUSED)),
            Some(Reject::UpstreamUnreachable)
        );
        assert!(!out_of_resources(&Error::new_up(ErrorType::ConnectRefused)));
    }

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

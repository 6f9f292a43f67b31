//! The validated configuration: typed values the gateway runs with, which serde never sees.

use crate::secret::Secret;
use http::HeaderName;
use std::net::SocketAddr;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
/// `routes[].upstream_idle_timeout`'s default ("4s"): below the 5 s after which Node.js
/// (Express), uvicorn and Apache close an idle keep-alive connection, so that the gateway never
/// sends a request on a connection the upstream is closing at that instant (which, as nothing sent
/// is replayed, would answer 502).
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    /// The mini programs (`[[apps]]`, or `[wechat]` as the one app): at least one, the first
    /// being the default where a request does not name one.
    pub apps: Vec<AppConfig>,
    pub jwt: JwtConfig,
    pub auth: AuthConfig,
    pub session: SessionConfig,
    pub rate_limit: RateLimitConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub routes: Vec<RouteConfig>,
    /// `[relay]`: off when absent.
    pub relay: Option<RelayConfig>,
}

/// The WeChat API relay (`[relay]`): apps call WeChat's paths on `listen` without a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    /// WeChat API paths relayed, matched exactly.
    pub allow: Vec<String>,
    /// Peer addresses allowed to call the relay.
    pub allow_from: Vec<ipnet::IpNet>,
    /// For each call to WeChat (the whole exchange, the answer's body included).
    pub timeout: Duration,
}

/// Which identity headers reach the upstream (`identity_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// The `[auth]` header names (`X-WX-OpenID`, ...).
    Wxgate,
    /// WeChat Cloud Hosting's set: `X-WX-OPENID`, `X-WX-APPID`, `X-WX-UNIONID`, `X-WX-SOURCE`,
    /// `X-Original-Forwarded-For`, and `X-Forwarded-For` appended.
    CloudHosting,
}

/// The operator's listener: metrics, health, the status page. Off when `listen` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    /// When set, the listener's POST endpoints (`/sessions/revoke`) want `Authorization: Bearer`
    /// with it; its GET endpoints stay open.
    pub token: Option<Secret>,
}

/// How each request is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub openid: OpenidInLog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

/// What the access log says of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenidInLog {
    Plain,
    /// The first 16 hex digits of its SHA-256: the same user is recognisable, not identifiable.
    Hash,
    Off,
}

/// An upstream as written, `host:port`; host names are resolved when the route table is built
/// (at start-up and on reload), never while validating and never per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
    /// `https://` upstream: TLS with SNI (the host), certificate verified.
    pub tls: bool,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tls {
            f.write_str("https://")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Calls per client address per minute to the endpoints that call WeChat (0: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub login_per_minute: u32,
    pub phone_per_minute: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// More addresses served like `listen` (`listen = ["...", "..."]`).
    pub also_listen: Vec<SocketAddr>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub threads: usize,
    /// Tokio work stealing between the worker threads (off: one runtime per thread).
    pub work_stealing: bool,
    /// Upper bound on how long SIGTERM waits for in-flight requests.
    pub grace_period: Duration,
    /// Body limit of the endpoints the gateway answers itself (`/auth`, `/isAuth`).
    pub max_body: usize,
    /// HTTPS on `listen` when set.
    pub tls: Option<TlsConfig>,
    /// With `tls`: a second, plain HTTP listener serving the same routes.
    pub plain_listen: Option<SocketAddr>,
    /// How often upstream host names are resolved again.
    pub resolve_interval: Duration,
    /// Idle upstream connections kept open for reuse (all upstreams together).
    pub upstream_keepalive: usize,
    /// Requests without a body are proxied by the gateway's fast path (see `proxy::fast`).
    pub fast_path: bool,
    /// A request's upstream write waits one turn of the event loop, so that the requests that
    /// arrived with it are written upstream together (see `proxy::batch`).
    pub batch_upstream_writes: bool,
    /// `X-Forwarded-For` (the peer appended), `-Proto` and `-Host` set on upstream requests.
    pub forwarded_headers: bool,
    /// How long a request header may take from its first byte to its end (past it: 408).
    pub header_timeout: Duration,
    /// How long an idle client connection (HTTP/1 keep-alive, HTTP/2 without a stream) waits
    /// for its next request; whole seconds.
    pub keepalive_timeout: Duration,
}

/// TLS termination (rustls): the certificate chain and key are PEM files, read at start-up and
/// again on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// TLS 1.3 only (else 1.2 and 1.3).
    pub tls13_only: bool,
    /// Offer HTTP/2 by ALPN.
    pub http2: bool,
}

/// Which WeChat API hands out access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessTokenApi {
    /// `cgi-bin/stable_token`: the same token while valid; fetching never invalidates another.
    Stable,
    /// `cgi-bin/token`: every fetch invalidates the previous token (after 5 minutes).
    Classic,
}

/// One mini program: a name for routes and logs, and its WeChat credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    pub name: String,
    pub wechat: WechatConfig,
}

impl Config {
    /// The first (with `[wechat]`, the only) mini program.
    pub fn first_app(&self) -> &WechatConfig {
        &self.apps[0].wechat
    }

    /// Every appid, in the file's order.
    pub fn appids(&self) -> Vec<&str> {
        self.apps.iter().map(|a| a.wechat.appid.as_str()).collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WechatConfig {
    pub appid: String,
    pub secret: Secret,
    /// Without a trailing slash.
    pub api_base: String,
    pub timeout: Duration,
    pub access_token_api: AccessTokenApi,
}

pub use crate::keys::{JwtAlgorithm, KeyMaterial};

#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// The signing key: the secret for HS256, the PKCS#8 private key for ES256/EdDSA. Loaded
    /// from its file by validation, so comparing configs compares key contents.
    pub key: KeyMaterial,
    /// Written into every token header; required with ES256/EdDSA.
    pub kid: Option<String>,
    /// Keys still accepted (by `kid`), never used to sign.
    pub verify_keys: Vec<VerifyKey>,
    /// Tokens another backend issued, accepted during a migration (`[[jwt.accept]]`).
    pub accept: Vec<AcceptConfig>,
    pub ttl: Duration,
    pub leeway: Duration,
    pub issuer: String,
}

impl JwtConfig {
    /// HS256 with `secret` and the defaults (tests, benchmarks, fuzzing).
    pub fn hs256(secret: &str) -> Self {
        JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            key: KeyMaterial::Secret(Secret::new(secret)),
            kid: None,
            verify_keys: Vec::new(),
            accept: Vec::new(),
            ttl: Duration::from_secs(7200),
            leeway: Duration::ZERO,
            issuer: "wxgate".into(),
        }
    }
}

/// A verify-only key of `[jwt].verify_keys`; its algorithm follows from its key type.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyKey {
    pub kid: String,
    pub algorithm: JwtAlgorithm,
    /// `Secret` (HS256) or `Public`.
    pub key: KeyMaterial,
}

/// One `[[jwt.accept]]` entry: tokens another backend signed, verify-only, until a deadline.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptConfig {
    pub algorithm: JwtAlgorithm,
    /// `Secret` (HS256) or `Public`.
    pub key: KeyMaterial,
    /// The claim holding the openid (default "sub").
    pub openid_claim: String,
    /// Unix seconds after which these tokens are refused, whatever their `exp`.
    pub until: u64,
    /// The mini program these tokens are for (with several `[[apps]]`); default: the first.
    pub appid: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub login_path: String,
    pub verify_path: String,
    pub refresh_path: String,
    pub logout_path: String,
    pub phone_path: String,
    pub decrypt_path: String,
    /// The JWK Set of the token keys (answered 404 with HS256).
    pub jwks_path: String,
    pub identity_header: HeaderName,
    pub unionid_header: HeaderName,
    /// Carries the caller's appid (the token's `aud`).
    pub appid_header: HeaderName,
    /// Carries the verified phone number to routes with `forward_phone = true`.
    pub phone_header: HeaderName,
    /// The routes' default identity header set.
    pub identity_headers: IdentityMode,
}

/// Where sessions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// In this process: one instance only.
    Memory { capacity: usize },
    /// Shared by every instance pointed at it.
    Redis(RedisTarget),
}

/// Which Redis: one server, a primary found through Sentinel, or a Cluster. Every URL may carry
/// a password, so each is a [`Secret`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `session.redis_url`.
    Server { url: Secret },
    /// `session.redis_sentinels` and `session.redis_sentinel_primary`: the primary's name, or a
    /// URL whose host is that name and which carries the primary's password, database and
    /// `rediss://` (the sentinels' URLs carry the sentinels' own).
    Sentinel {
        sentinels: Vec<Secret>,
        primary: Secret,
    },
    /// `session.redis_cluster`: any subset of the nodes (database 0 only).
    Cluster { nodes: Vec<Secret> },
}

/// What a protected route does with a token whose signature is valid while the session store
/// cannot tell whether it was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Refuse (503, code 10503): a logged-out token never passes. The default.
    Closed,
    /// Accept, on the last revocations known: the store being down does not stop traffic.
    Open,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    pub store: StoreKind,
    /// How long a session (and its refresh token) lives; each refresh starts it again.
    pub ttl: Duration,
    /// Per store operation.
    pub timeout: Duration,
    pub fail_mode: FailMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    Required,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub prefix: String,
    pub upstreams: Vec<HostPort>,
    pub auth: RouteAuth,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// How long an idle upstream connection is kept for the next request.
    pub upstream_idle_timeout: Duration,
    /// Inject the verified phone number (`auth.phone_header`).
    pub forward_phone: bool,
    /// Only requests for this host (`Host` / `:authority`, port ignored); any host when `None`.
    pub host: Option<HostMatch>,
    /// Remove the prefix from the request target before forwarding (`/shop/x?y` -> `/x?y`).
    pub strip_prefix: bool,
    /// `Upgrade: websocket` allowed on this route, with this idle timeout.
    pub websocket: Option<Duration>,
    /// Extra trust roots (PEM) for `https://` upstreams, beside the system's.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// The `Host` header sent upstream (default: the client's).
    pub upstream_host: Option<String>,
    /// How an upstream is chosen for each request.
    pub lb: Balance,
    /// Active health checks; `None`: passive only (connect failures).
    pub health_check: Option<HealthCheckConfig>,
    /// Other upstreams tried after a connect failure (never once the request was sent).
    pub retries: u32,
    /// Requests per openid (per client address on public routes); `None`: unlimited.
    pub rate_limit: Option<RouteRateLimit>,
    /// Only tokens of these apps (by name); `None`: every app's.
    pub apps: Option<Vec<String>>,
    /// This route's identity header set; `None`: `auth.identity_headers`.
    pub identity_headers: Option<IdentityMode>,
}

impl RouteConfig {
    /// A route with every optional key at the default `wxgate check` gives it (for tests and
    /// benchmarks that build routes without a file).
    pub fn with_defaults(prefix: &str, upstreams: Vec<HostPort>, auth: RouteAuth) -> Self {
        RouteConfig {
            name: prefix.into(),
            prefix: prefix.into(),
            upstreams,
            auth,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(30),
            upstream_idle_timeout: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            forward_phone: false,
            host: None,
            strip_prefix: false,
            websocket: None,
            upstream_ca: None,
            upstream_host: None,
            lb: Balance::RoundRobin,
            health_check: None,
            retries: 1,
            rate_limit: None,
            apps: None,
            identity_headers: None,
        }
    }
}

/// A route's balancing policy (`lb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// Consistent (Ketama) hashing of the openid (the client address on public routes).
    OpenidHash,
    /// The upstream with the fewest requests in flight from this instance.
    LeastRequests,
}

/// `health_check`: an HTTP `GET path` (any 2xx passes) or, without a path, a TCP connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckConfig {
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// `rate_limit = "20/s"` and `rate_limit_burst`: a token bucket of `burst` tokens refilled at
/// `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRateLimit {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

/// Which request hosts a route serves: lowercase, without a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com`.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself).
    Subdomains(String),
}

impl HostMatch {
    /// Whether a request host (lowercase, without port) is served.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host == h,
            HostMatch::Subdomains(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Subdomains(s) => write!(f, "*.{s}"),
        }
    }
}

//! Loading `gateway.toml`: parse, expand `${ENV}`, deserialise each section, then validate into a
//! typed [`Config`]. Every problem is collected with its key path; nothing here panics on input.

mod env;
mod raw;

pub use crate::secret::Secret;
use http::HeaderName;
use raw::{
    DurationText, RawAuth, RawJwt, RawRateLimit, RawRoute, RawServer, RawSession, RawWechat,
};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub wechat: WechatConfig,
    pub jwt: JwtConfig,
    pub auth: AuthConfig,
    pub session: SessionConfig,
    pub rate_limit: RateLimitConfig,
    pub routes: Vec<RouteConfig>,
}

/// Calls per client address per minute to the endpoints that call WeChat (0: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub login_per_minute: u32,
    pub phone_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub threads: usize,
    /// Tokio work stealing between the worker threads (off: one runtime per thread).
    pub work_stealing: bool,
    /// Upper bound on how long SIGTERM waits for in-flight requests.
    pub grace_period: Duration,
    /// Body limit of the endpoints the gateway answers itself (`/auth`, `/isAuth`).
    pub max_body: usize,
}

/// Which WeChat API hands out access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessTokenApi {
    /// `cgi-bin/stable_token`: the same token while valid; fetching never invalidates another.
    Stable,
    /// `cgi-bin/token`: every fetch invalidates the previous token (after 5 minutes).
    Classic,
}

#[derive(Debug, Clone)]
pub struct WechatConfig {
    pub appid: String,
    pub secret: Secret,
    /// Without a trailing slash.
    pub api_base: String,
    pub timeout: Duration,
    pub access_token_api: AccessTokenApi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    HS256,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    pub secret: Secret,
    pub ttl: Duration,
    pub leeway: Duration,
    pub issuer: String,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub login_path: String,
    pub verify_path: String,
    pub refresh_path: String,
    pub logout_path: String,
    pub phone_path: String,
    pub decrypt_path: String,
    pub identity_header: HeaderName,
    pub unionid_header: HeaderName,
    /// Carries the verified phone number to routes with `forward_phone = true`.
    pub phone_header: HeaderName,
}

/// Where sessions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// In this process: one instance only.
    Memory { capacity: usize },
    /// Shared by every instance pointed at it. The URL may carry a password.
    Redis { url: Secret },
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

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub prefix: String,
    pub upstreams: Vec<SocketAddr>,
    pub auth: RouteAuth,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Inject the verified phone number (`auth.phone_header`).
    pub forward_phone: bool,
}

/// One problem in the file, with the key path it concerns (`routes[1].upstreams[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Debug)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let s = if n == 1 { "" } else { "s" };
        write!(
            f,
            "invalid configuration in {} ({n} problem{s}):",
            self.source
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
const MIN_SECRET_BYTES: usize = 32;

/// Why a configuration file could not be used.
#[derive(Debug)]
pub enum LoadError {
    /// There is no file at that path.
    NotFound(PathBuf),
    /// The file exists but cannot be read (permissions, a directory, not UTF-8).
    Unreadable(PathBuf, String),
    /// The file was read; these are its problems.
    Invalid(ConfigError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotFound(path) => {
                write!(f, "configuration file {} not found", path.display())?;
                if path.is_relative() {
                    if let Ok(dir) = std::env::current_dir() {
                        write!(f, " in {}", dir.display())?;
                    }
                }
                write!(
                    f,
                    ".\n  Point at yours with `-c FILE` (or WXGATE_CONFIG=FILE).\
                     \n  To write one, start from the commented example gateway.toml in \
                     wxgate's repository: it lists every key with its default.\
                     \n  To try wxgate without a file, run `wxgate demo`."
                )
            }
            LoadError::Unreadable(path, error) => {
                write!(
                    f,
                    "cannot read configuration file {}: {error}",
                    path.display()
                )
            }
            LoadError::Invalid(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

/// Load and validate a configuration file, reading `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound(path.to_path_buf()),
        _ => LoadError::Unreadable(path.to_path_buf(), e.to_string()),
    })?;
    parse(&text, &path.display().to_string(), &|name| {
        std::env::var(name).ok()
    })
    .map_err(LoadError::Invalid)
}

/// Parse and validate configuration text. `lookup` resolves `${VAR}` (tests pass their own).
pub fn parse(
    text: &str,
    source: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    parse_with(text, source, lookup, true)
}

/// [`parse`], optionally without DNS: host names other than IP literals are then refused
/// (fuzzing must not do network lookups).
pub fn parse_with(
    text: &str,
    source: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    resolve_names: bool,
) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError {
        source: source.to_string(),
        problems,
    };
    let mut root: toml::Table = toml::from_str(text).map_err(|e| {
        fail(vec![Problem {
            path: "(syntax)".into(),
            message: e.to_string().trim().replace('\n', "\n    "),
        }])
    })?;
    let order = FileOrder::of(&root);
    let mut v = Validator {
        problems: Vec::new(),
        invalid: Vec::new(),
        resolve_names,
        jwt_ttl: None,
    };
    env::expand_table(&mut root, "", lookup, &mut |path, message| {
        v.invalid(path, message)
    });

    let mut server = None;
    let mut wechat = None;
    let mut jwt = None;
    let mut auth = None;
    let mut session = None;
    let mut rate_limit = None;
    let mut routes = None;
    for (key, value) in root {
        match key.as_str() {
            "server" => server = v.section::<RawServer>(value, &key),
            "wechat" => wechat = v.section::<RawWechat>(value, &key),
            "jwt" => jwt = v.section::<RawJwt>(value, &key),
            "auth" => auth = v.section::<RawAuth>(value, &key),
            "session" => session = v.section::<RawSession>(value, &key),
            "rate_limit" => rate_limit = v.section::<RawRateLimit>(value, &key),
            "routes" => routes = v.routes(value),
            _ => v.problem(&key, "unknown key".into()),
        }
    }

    let server = v.server(server.unwrap_or_default());
    let wechat = v.wechat(wechat.unwrap_or_default());
    let jwt = v.jwt(jwt.unwrap_or_default());
    let auth = v.auth(auth.unwrap_or_default());
    let session = v.session(session.unwrap_or_default());
    let routes = v.check_routes(routes);
    let rate_limit = rate_limit.unwrap_or_default();
    let rate_limit = RateLimitConfig {
        login_per_minute: rate_limit.login_per_minute.unwrap_or(30),
        phone_per_minute: rate_limit.phone_per_minute.unwrap_or(10),
    };

    match (server, wechat, jwt, auth, session, routes) {
        (Some(server), Some(wechat), Some(jwt), Some(auth), Some(session), Some(routes))
            if v.problems.is_empty() =>
        {
            Ok(Config {
                server,
                wechat,
                jwt,
                auth,
                session,
                rate_limit,
                routes,
            })
        }
        _ => {
            let mut problems = v.problems;
            problems.sort_by_key(|p| order.rank(&p.path));
            Err(fail(problems))
        }
    }
}

/// Where each key path appears in the file, so that problems are listed in the file's order.
struct FileOrder {
    /// Key path -> (its position, the position of the last key inside it).
    at: HashMap<String, (usize, usize)>,
}

impl FileOrder {
    fn of(root: &toml::Table) -> Self {
        fn walk(value: &toml::Value, path: String, at: &mut HashMap<String, (usize, usize)>) {
            let first = at.len();
            at.insert(path.clone(), (first, first));
            match value {
                toml::Value::Table(t) => {
                    for (key, item) in t {
                        walk(item, join(&path, key), at);
                    }
                }
                toml::Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, format!("{path}[{i}]"), at);
                    }
                }
                _ => {}
            }
            let last = at.len() - 1;
            at.insert(path, (first, last));
        }
        let mut at = HashMap::new();
        for (key, value) in root {
            walk(value, key.clone(), &mut at);
        }
        FileOrder { at }
    }

    /// A key in the file sorts where it is; a key that is not (missing, or a default) sorts
    /// after the keys of its nearest enclosing table that is; a section absent from the file
    /// sorts last. Ties keep the validator's order.
    fn rank(&self, path: &str) -> (usize, usize) {
        if let Some((first, _)) = self.at.get(path) {
            return (*first, 0);
        }
        let mut p = path;
        while let Some(i) = p.rfind(['.', '[']) {
            p = &p[..i];
            if let Some((_, last)) = self.at.get(p) {
                return (*last, 1);
            }
        }
        (usize::MAX, 0)
    }
}

/// Collects problems while turning raw sections into typed ones. Each method returns `None` when
/// its section has a problem, and has then recorded it.
struct Validator {
    problems: Vec<Problem>,
    /// Key paths whose value was refused before validation (wrong type, unset `${VAR}`): the
    /// key was dropped, and must not also be reported missing, defaulted or compared.
    invalid: Vec<String>,
    resolve_names: bool,
    /// `jwt.ttl` when it is valid on its own, for the rules that compare it with other sections.
    jwt_ttl: Option<Duration>,
}

fn join(base: &str, rest: &str) -> String {
    if rest.is_empty() || rest == "." {
        base.to_string()
    } else if rest.starts_with('[') {
        format!("{base}{rest}")
    } else {
        format!("{base}.{rest}")
    }
}

impl Validator {
    fn problem(&mut self, path: &str, message: String) {
        self.problems.push(Problem {
            path: path.to_string(),
            message,
        });
    }

    /// A problem with a value that validation must then treat as absent-but-given.
    fn invalid(&mut self, path: &str, message: String) {
        self.problem(path, message);
        self.invalid.push(path.to_string());
    }

    /// Whether `path`, a table around it or a value inside it was refused already.
    fn is_invalid(&self, path: &str) -> bool {
        let under = |child: &str, parent: &str| {
            child.starts_with(parent)
                && matches!(child.as_bytes().get(parent.len()), Some(b'.' | b'['))
        };
        self.invalid
            .iter()
            .any(|p| p == path || under(p, path) || under(path, p))
    }

    /// Deserialise one section, recording unknown keys and every type error with its path. A key
    /// of the wrong type is dropped and the section read again, so it hides no other key.
    fn section<T: DeserializeOwned>(&mut self, mut value: toml::Value, path: &str) -> Option<T> {
        // A failed attempt stops at its error: the keys after it are seen by the next one.
        let mut unknown = Vec::new();
        let result = loop {
            let mut track = serde_path_to_error::Track::new();
            let result = {
                let mut on_unknown = |p: serde_ignored::Path<'_>| {
                    let p = p.to_string();
                    if !unknown.contains(&p) {
                        unknown.push(p);
                    }
                };
                let de = serde_ignored::Deserializer::new(value.clone(), &mut on_unknown);
                T::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
            };
            let e = match result {
                Ok(t) => break Some(t),
                Err(e) => e,
            };
            let inner = track.path();
            let key = match inner.iter().next() {
                Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
                _ => None,
            };
            let message = clean_serde_message(&e.to_string());
            let dropped = match (&key, &mut value) {
                (Some(key), toml::Value::Table(table)) => table.remove(key).is_some(),
                _ => false,
            };
            match (dropped, key) {
                (true, Some(key)) => {
                    self.problem(&join(path, &inner.to_string()), message);
                    self.invalid.push(join(path, &key));
                }
                _ => {
                    self.invalid(&join(path, &inner.to_string()), message);
                    break None;
                }
            }
        };
        for key in unknown {
            self.problem(&join(path, &key), "unknown key".into());
        }
        result
    }

    fn routes(&mut self, value: toml::Value) -> Option<Vec<Option<RawRoute>>> {
        match value {
            toml::Value::Array(items) => Some(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.section::<RawRoute>(item, &format!("routes[{i}]")))
                    .collect(),
            ),
            _ => {
                self.invalid(
                    "routes",
                    "must be an array of tables ([[routes]] entries)".into(),
                );
                None
            }
        }
    }

    fn required<T>(&mut self, value: Option<T>, path: &str) -> Option<T> {
        if value.is_none() && !self.is_invalid(path) {
            self.problem(path, "required key is missing".into());
        }
        value
    }

    /// The value as written, or the key's default when it was not written; `None` when it was
    /// written but refused already.
    fn or_default(&self, value: Option<String>, path: &str, default: &str) -> Option<String> {
        match value {
            Some(v) => Some(v),
            None if self.is_invalid(path) => None,
            None => Some(default.to_string()),
        }
    }

    fn duration(
        &mut self,
        value: Option<DurationText>,
        path: &str,
        default: &str,
    ) -> Option<Duration> {
        let text = self.or_default(value.map(|d| d.0), path, default)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    path,
                    format!("{text:?} is not a duration ({e}); write e.g. \"3s\", \"2h\", \"30d\""),
                );
                None
            }
        }
    }

    fn positive_duration(
        &mut self,
        value: Option<DurationText>,
        path: &str,
        default: &str,
    ) -> Option<Duration> {
        let d = self.duration(value, path, default)?;
        if d.is_zero() {
            self.problem(path, "must be greater than zero".into());
            return None;
        }
        Some(d)
    }

    fn server(&mut self, raw: RawServer) -> Option<ServerConfig> {
        let listen_text = self.or_default(raw.listen, "server.listen", DEFAULT_LISTEN);
        let listen = match listen_text.map(|t| resolve_host_port(&t, self.resolve_names)) {
            Some(Ok(addrs)) => addrs.into_iter().next(),
            Some(Err(message)) => {
                self.problem("server.listen", message);
                None
            }
            None => None,
        };
        let mut trusted_proxies = Vec::new();
        for (i, net) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
            let parsed = net
                .parse::<ipnet::IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => trusted_proxies.push(n),
                Err(_) => self.problem(
                    &format!("server.trusted_proxies[{i}]"),
                    format!("{net:?} is not an address or CIDR (e.g. \"10.0.0.0/8\")"),
                ),
            }
        }
        let threads = match raw.threads {
            Some(0) => {
                self.problem("server.threads", "must be at least 1".into());
                None
            }
            Some(n) => Some(n),
            None => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
        };
        let grace_period = self.duration(raw.grace_period, "server.grace_period", "10s");
        let max_body = match raw.max_body {
            None => Some(16 * 1024),
            Some(raw::SizeText(text)) => match parse_size(&text) {
                Some(n) if n > 0 => Some(n),
                _ => {
                    self.problem(
                        "server.max_body",
                        format!("{text:?} is not a size; write e.g. \"16KiB\" or \"1MiB\""),
                    );
                    None
                }
            },
        };
        Some(ServerConfig {
            listen: listen?,
            trusted_proxies,
            threads: threads?,
            work_stealing: raw.work_stealing.unwrap_or(false),
            grace_period: grace_period?,
            max_body: max_body?,
        })
    }

    fn wechat(&mut self, raw: RawWechat) -> Option<WechatConfig> {
        let appid = self.required(raw.appid, "wechat.appid");
        if let Some(a) = &appid {
            if a.trim().is_empty() {
                self.problem("wechat.appid", "must not be empty".into());
            }
        }
        let secret = self.required(raw.secret, "wechat.secret");
        if let Some(s) = &secret {
            if s.is_empty() {
                self.problem("wechat.secret", "must not be empty".into());
            }
        }
        let api_base = self
            .or_default(raw.api_base, "wechat.api_base", "https://api.weixin.qq.com")
            .map(|b| b.trim_end_matches('/').to_string());
        let base_ok = api_base
            .as_ref()
            .is_some_and(|b| b.starts_with("http://") || b.starts_with("https://"));
        if let (false, Some(api_base)) = (base_ok, &api_base) {
            self.problem(
                "wechat.api_base",
                format!("{api_base:?} must start with http:// or https://"),
            );
        }
        let timeout = self.positive_duration(raw.timeout, "wechat.timeout", "3s");
        let access_token_api =
            self.or_default(raw.access_token_api, "wechat.access_token_api", "stable");
        let access_token_api = match access_token_api.as_deref() {
            None => None,
            Some("stable") => Some(AccessTokenApi::Stable),
            Some("classic") => Some(AccessTokenApi::Classic),
            Some(other) => {
                self.problem(
                    "wechat.access_token_api",
                    format!("{other:?} is not one of \"stable\", \"classic\""),
                );
                None
            }
        };
        Some(WechatConfig {
            appid: appid?,
            secret: Secret::new(secret?),
            api_base: api_base.filter(|_| base_ok)?,
            timeout: timeout?,
            access_token_api: access_token_api?,
        })
    }

    fn jwt(&mut self, raw: RawJwt) -> Option<JwtConfig> {
        let algorithm = self.or_default(raw.algorithm, "jwt.algorithm", "HS256");
        let algorithm = match algorithm.as_deref() {
            None => None,
            Some("HS256") => Some(JwtAlgorithm::HS256),
            Some(other) => {
                self.problem(
                    "jwt.algorithm",
                    format!("{other:?} is not supported (supported: \"HS256\")"),
                );
                None
            }
        };
        let secret = self.required(raw.secret, "jwt.secret");
        if let Some(s) = &secret {
            if s.len() < MIN_SECRET_BYTES {
                self.problem(
                    "jwt.secret",
                    format!(
                        "is {} bytes; an HS256 key must be at least {MIN_SECRET_BYTES} bytes \
                         (e.g. `openssl rand -base64 48`)",
                        s.len()
                    ),
                );
            }
        }
        let ttl = self.positive_duration(raw.ttl, "jwt.ttl", "2h");
        self.jwt_ttl = ttl;
        let leeway = self.duration(raw.leeway, "jwt.leeway", "0s");
        let issuer = raw.issuer.unwrap_or_else(|| "wxgate".to_string());
        let secret_ok = secret.as_ref().is_some_and(|s| s.len() >= MIN_SECRET_BYTES);
        Some(JwtConfig {
            algorithm: algorithm?,
            secret: Secret::new(secret.filter(|_| secret_ok)?),
            ttl: ttl?,
            leeway: leeway?,
            issuer,
        })
    }

    fn path(&mut self, value: Option<String>, path: &str, default: &str) -> Option<String> {
        let p = self.or_default(value, path, default)?;
        if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
            self.problem(path, format!("{p:?} must be a path starting with '/'"));
            return None;
        }
        Some(p)
    }

    fn header(&mut self, value: Option<String>, path: &str, default: &str) -> Option<HeaderName> {
        let h = self.or_default(value, path, default)?;
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) if !RESERVED_HEADERS.contains(&name.as_str()) => Some(name),
            Ok(_) => {
                self.problem(
                    path,
                    format!("{h:?} is a header the gateway cannot take over"),
                );
                None
            }
            Err(_) => {
                self.problem(path, format!("{h:?} is not a valid header name"));
                None
            }
        }
    }

    /// Report each key whose (valid) value repeats an earlier key's.
    fn distinct<T: PartialEq>(&mut self, keyed: &[(&str, &Option<T>)]) {
        for (i, (key, value)) in keyed.iter().enumerate() {
            if let Some((other, _)) = keyed[..i].iter().find(|(_, v)| v.is_some() && *v == *value) {
                self.problem(key, format!("must differ from {other}"));
            }
        }
    }

    fn auth(&mut self, raw: RawAuth) -> Option<AuthConfig> {
        let login_path = self.path(raw.login_path, "auth.login_path", "/auth");
        let verify_path = self.path(raw.verify_path, "auth.verify_path", "/isAuth");
        let refresh_path = self.path(raw.refresh_path, "auth.refresh_path", "/auth/refresh");
        let logout_path = self.path(raw.logout_path, "auth.logout_path", "/auth/logout");
        let phone_path = self.path(raw.phone_path, "auth.phone_path", "/auth/phone");
        let decrypt_path = self.path(raw.decrypt_path, "auth.decrypt_path", "/auth/decrypt");
        let paths = [
            ("auth.login_path", &login_path),
            ("auth.verify_path", &verify_path),
            ("auth.refresh_path", &refresh_path),
            ("auth.logout_path", &logout_path),
            ("auth.phone_path", &phone_path),
            ("auth.decrypt_path", &decrypt_path),
        ];
        self.distinct(&paths);
        let identity_header =
            self.header(raw.identity_header, "auth.identity_header", "X-WX-OpenID");
        let unionid_header = self.header(raw.unionid_header, "auth.unionid_header", "X-WX-UnionID");
        let phone_header = self.header(raw.phone_header, "auth.phone_header", "X-WX-Phone");
        let headers = [
            ("auth.identity_header", &identity_header),
            ("auth.unionid_header", &unionid_header),
            ("auth.phone_header", &phone_header),
        ];
        self.distinct(&headers);
        Some(AuthConfig {
            login_path: login_path?,
            verify_path: verify_path?,
            refresh_path: refresh_path?,
            logout_path: logout_path?,
            phone_path: phone_path?,
            decrypt_path: decrypt_path?,
            identity_header: identity_header?,
            unionid_header: unionid_header?,
            phone_header: phone_header?,
        })
    }

    fn session(&mut self, raw: RawSession) -> Option<SessionConfig> {
        let store = self.or_default(raw.store, "session.store", "memory");
        let store = match store.as_deref() {
            None => None,
            Some("memory") => {
                if raw.redis_url.is_some() {
                    self.problem(
                        "session.redis_url",
                        "is only used with store = \"redis\"".into(),
                    );
                }
                match raw.memory_capacity {
                    Some(0) => {
                        self.problem("session.memory_capacity", "must be at least 1".into());
                        None
                    }
                    n => Some(StoreKind::Memory {
                        capacity: n.unwrap_or(100_000),
                    }),
                }
            }
            Some("redis") => match raw.redis_url {
                None if self.is_invalid("session.redis_url") => None,
                None => {
                    self.problem(
                        "session.redis_url",
                        "required with store = \"redis\" (redis://host:6379 or rediss://...)"
                            .into(),
                    );
                    None
                }
                Some(url) => match redis_url_problem(&url) {
                    // The message never repeats the URL: it may carry a password.
                    Some(message) => {
                        self.problem("session.redis_url", message);
                        None
                    }
                    None => Some(StoreKind::Redis {
                        url: Secret::new(url),
                    }),
                },
            },
            Some(other) => {
                self.problem(
                    "session.store",
                    format!("{other:?} is not one of \"memory\", \"redis\""),
                );
                None
            }
        };
        let ttl = self.positive_duration(raw.ttl, "session.ttl", "30d");
        if let (Some(ttl), Some(jwt_ttl)) = (ttl, self.jwt_ttl) {
            if ttl < jwt_ttl {
                self.problem(
                    "session.ttl",
                    format!(
                        "must be at least jwt.ttl ({}): a token must not outlive its session",
                        humantime::format_duration(jwt_ttl)
                    ),
                );
            }
        }
        let timeout = self.positive_duration(raw.timeout, "session.timeout", "1s");
        let fail_mode = self.or_default(raw.fail_mode, "session.fail_mode", "closed");
        let fail_mode = match fail_mode.as_deref() {
            None => None,
            Some("closed") => Some(FailMode::Closed),
            Some("open") => Some(FailMode::Open),
            Some(other) => {
                self.problem(
                    "session.fail_mode",
                    format!("{other:?} is not one of \"closed\", \"open\""),
                );
                None
            }
        };
        Some(SessionConfig {
            store: store?,
            ttl: ttl?,
            timeout: timeout?,
            fail_mode: fail_mode?,
        })
    }

    fn check_routes(&mut self, raw: Option<Vec<Option<RawRoute>>>) -> Option<Vec<RouteConfig>> {
        let Some(raw) = raw else {
            if !self.is_invalid("routes") {
                self.problem(
                    "routes",
                    "required: at least one [[routes]] entry (prefix and upstreams)".into(),
                );
            }
            return None;
        };
        if raw.is_empty() {
            self.problem("routes", "at least one [[routes]] entry is required".into());
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut ok = !raw.is_empty();
        // Valid prefixes so far, with their route's index: a repeat is a problem whether or not
        // the rest of either route is valid.
        let mut prefixes: Vec<(usize, String)> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let Some(r) = r else {
                ok = false;
                continue;
            };
            match self.route(r, i, &mut prefixes) {
                Some(route) => out.push(route),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn route(
        &mut self,
        raw: RawRoute,
        i: usize,
        prefixes: &mut Vec<(usize, String)>,
    ) -> Option<RouteConfig> {
        let at = |key: &str| format!("routes[{i}].{key}");
        let prefix = self.required(raw.prefix, &at("prefix"));
        let prefix = match prefix {
            Some(p) if p.starts_with('/') => {
                if let Some((j, _)) = prefixes.iter().find(|(_, q)| *q == p) {
                    self.problem(
                        &at("prefix"),
                        format!("{p:?} is already the prefix of routes[{j}]"),
                    );
                } else {
                    prefixes.push((i, p.clone()));
                }
                Some(p)
            }
            Some(p) => {
                self.problem(&at("prefix"), format!("{p:?} must start with '/'"));
                None
            }
            None => None,
        };
        let upstreams = self.required(raw.upstreams, &at("upstreams"));
        let mut addrs = Vec::new();
        let mut upstreams_ok = upstreams.is_some();
        if let Some(list) = &upstreams {
            if list.is_empty() {
                self.problem(&at("upstreams"), "must list at least one host:port".into());
                upstreams_ok = false;
            }
            for (j, u) in list.iter().enumerate() {
                match resolve_host_port(u, self.resolve_names) {
                    Ok(found) => {
                        for a in found {
                            if !addrs.contains(&a) {
                                addrs.push(a);
                            }
                        }
                    }
                    Err(message) => {
                        self.problem(&format!("routes[{i}].upstreams[{j}]"), message);
                        upstreams_ok = false;
                    }
                }
            }
        }
        let auth = self.or_default(raw.auth, &at("auth"), "required");
        let auth = match auth.as_deref() {
            None => None,
            Some("required") => Some(RouteAuth::Required),
            Some("none") => Some(RouteAuth::None),
            Some(other) => {
                self.problem(
                    &at("auth"),
                    format!("{other:?} is not one of \"required\", \"none\""),
                );
                None
            }
        };
        if raw.forward_phone == Some(true) && auth == Some(RouteAuth::None) {
            self.problem(
                &at("forward_phone"),
                "needs auth = \"required\": a public route has no caller to take a phone number from".into(),
            );
        }
        let connect_timeout =
            self.positive_duration(raw.connect_timeout, &at("connect_timeout"), "2s");
        let read_timeout = self.positive_duration(raw.read_timeout, &at("read_timeout"), "30s");
        let prefix = prefix?;
        Some(RouteConfig {
            name: raw.name.unwrap_or_else(|| prefix.clone()),
            prefix,
            upstreams: upstreams_ok.then_some(addrs)?,
            auth: auth?,
            connect_timeout: connect_timeout?,
            read_timeout: read_timeout?,
            forward_phone: raw.forward_phone.unwrap_or(false),
        })
    }
}

/// Headers an identity header may not be renamed to: the gateway needs them for other jobs.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "token",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "cookie",
];

/// Resolve `host:port` once, at load time (the gateway never does a blocking lookup per request).
fn resolve_host_port(text: &str, resolve_names: bool) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if text.contains("://") || text.contains('/') {
        return Err(format!(
            "{text:?} must be host:port, without a scheme or path"
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} has no port (expected host:port)"));
    };
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return Err(format!("{text:?} is not host:port"));
    }
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!("{text:?} has no valid port (expected host:port)"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !resolve_names {
        return Err(format!("{text:?}: not resolving host names here"));
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            if addrs.is_empty() {
                Err(format!("{text:?}: host {host:?} resolves to no address"))
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(format!("{text:?}: cannot resolve host {host:?} ({e})")),
    }
}

/// Why a Redis URL cannot be used, without quoting it.
fn redis_url_problem(url: &str) -> Option<String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Some("must start with redis:// or rediss://".into());
    }
    match redis::Client::open(url) {
        Ok(_) => None,
        Err(e) => Some(format!("is not a usable Redis URL ({:?})", e.kind())),
    }
}

/// `"16KiB"`, `"1MiB"`, `"512"` (bytes).
fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" | "k" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// serde's messages name Rust types; say it in the file's terms.
fn clean_serde_message(msg: &str) -> String {
    // toml appends the key path on further lines; ours is already in front.
    let msg = msg.lines().next().unwrap_or(msg).trim();
    msg.replace("usize", "a non-negative integer")
        .replace("a sequence", "an array")
        .replace("struct Raw", "table ")
}

#[cfg(test)]
mod tests;

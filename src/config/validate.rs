//! Validation: raw sections in, typed sections out, every problem recorded with its key path.
//! Each method returns `None` for a section (or key) with a problem, having recorded it.

use super::raw::{
    DurationText, RawAccept, RawAdmin, RawApp, RawAuth, RawHealthCheck, RawJwt, RawLog, RawRelay,
    RawRoute, RawServer, RawSession, RawWechat,
};
use super::types::*;
use super::Problem;
use crate::secret::Secret;
use http::HeaderName;
use serde::de::DeserializeOwned;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// The longest duration any setting takes.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

/// The most clock skew `jwt.leeway` allows for: beyond it `exp` and `nbf` stop meaning much.
const MAX_LEEWAY: std::time::Duration = std::time::Duration::from_secs(3600);

const MIN_SECRET_BYTES: usize = 32;
/// The shortest `server.resolve_interval`: DNS is not asked more often than this.
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `server.header_timeout` and `server.keepalive_timeout`: a header that takes
/// longer is not a client to wait for, nor an idle connection that waits longer.
const MAX_HEADER_TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Idle upstream connections kept for reuse by default: above the concurrency one instance
/// usually sees (Pingora's own default, 128, made every request past the 128th open a new one).
pub const DEFAULT_UPSTREAM_KEEPALIVE: usize = 2048;
/// An admin token is guessed online, one request at a time: 128 bits in hex is plenty.
const MIN_ADMIN_TOKEN_BYTES: usize = 32;

/// Collects problems while turning raw sections into typed ones. Each method returns `None` when
/// its section has a problem, and has then recorded it.
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
    /// Key paths whose value was refused before validation (wrong type, unset `${VAR}`): the
    /// key was dropped, and must not also be reported missing, defaulted or compared.
    invalid: Vec<String>,
    resolve_names: bool,
    /// `jwt.ttl` when it is valid on its own, for the rules that compare it with other sections.
    jwt_ttl: Option<Duration>,
    /// `server.listen` when it is valid, likewise.
    listen: Option<SocketAddr>,
}

pub(super) fn join(base: &str, rest: &str) -> String {
    if rest.is_empty() || rest == "." {
        base.to_string()
    } else if rest.starts_with('[') {
        format!("{base}{rest}")
    } else {
        format!("{base}.{rest}")
    }
}

impl Validator {
    pub(super) fn new(resolve_names: bool) -> Self {
        Validator {
            problems: Vec::new(),
            invalid: Vec::new(),
            resolve_names,
            jwt_ttl: None,
            listen: None,
        }
    }

    pub(super) fn problem(&mut self, path: &str, message: String) {
        self.problems.push(Problem {
            path: path.to_string(),
            message,
        });
    }

    /// A problem with a value that validation must then treat as absent-but-given.
    pub(super) fn invalid(&mut self, path: &str, message: String) {
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
    pub(super) fn section<T: DeserializeOwned>(
        &mut self,
        mut value: toml::Value,
        path: &str,
    ) -> Option<T> {
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

    pub(super) fn routes(&mut self, value: toml::Value) -> Option<Vec<Option<RawRoute>>> {
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
            // Past this, adding it to a clock overflows (a panic, or a deadline in the past).
            Ok(d) if d > MAX_DURATION => {
                self.problem(
                    path,
                    format!("{text:?} is longer than the 100 years any setting may be"),
                );
                None
            }
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

    /// `d` when it keeps a bound (`ok`); otherwise the problem `says` at `path`, and `None`.
    fn bounded(
        &mut self,
        d: Option<Duration>,
        path: &str,
        ok: impl Fn(Duration) -> bool,
        says: impl FnOnce(Duration) -> String,
    ) -> Option<Duration> {
        let d = d?;
        if ok(d) {
            return Some(d);
        }
        self.problem(path, says(d));
        None
    }

    pub(super) fn server(&mut self, raw: RawServer) -> Option<ServerConfig> {
        let texts: Option<Vec<(String, String)>> = match raw.listen {
            Some(super::raw::ListenList::One(t)) => Some(vec![("server.listen".into(), t)]),
            Some(super::raw::ListenList::Many(list)) => Some(
                list.into_iter()
                    .enumerate()
                    .map(|(i, t)| (format!("server.listen[{i}]"), t))
                    .collect(),
            ),
            None if self.is_invalid("server.listen") => None,
            None => Some(vec![("server.listen".into(), DEFAULT_LISTEN.into())]),
        };
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut listen_ok = texts.is_some();
        if texts.as_ref().is_some_and(Vec::is_empty) {
            self.problem("server.listen", "must name at least one host:port".into());
            listen_ok = false;
        }
        for (path, text) in texts.into_iter().flatten() {
            match resolve_host_port(&text, self.resolve_names) {
                Ok(found) => {
                    if let Some(a) = found.into_iter().next() {
                        if addrs.contains(&a) {
                            self.problem(&path, format!("{text:?} is listed twice"));
                            listen_ok = false;
                        }
                        addrs.push(a);
                    }
                }
                Err(message) => {
                    self.problem(&path, message);
                    listen_ok = false;
                }
            }
        }
        let listen = addrs.first().copied().filter(|_| listen_ok);
        let also_listen = addrs.get(1..).unwrap_or_default().to_vec();
        let mut trusted_proxies = Vec::new();
        for (i, net) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
            match parse_net(net) {
                Some(n) => trusted_proxies.push(n),
                None => self.problem(
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
            Some(super::raw::SizeText(text)) => match parse_size(&text) {
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
        self.listen = listen;
        let tls = match raw.tls {
            None => Some(None),
            Some(t) => self.tls(t).map(Some),
        };
        let plain_listen = match raw.plain_listen {
            None => Some(None),
            Some(text) => match resolve_host_port(&text, self.resolve_names) {
                Ok(addrs) => match (addrs.into_iter().next(), tls.as_ref()) {
                    (Some(a), Some(Some(_))) if Some(a) == listen => {
                        self.problem(
                            "server.plain_listen",
                            "must differ from server.listen".into(),
                        );
                        None
                    }
                    (Some(a), Some(Some(_))) => Some(Some(a)),
                    (_, Some(None)) => {
                        self.problem(
                            "server.plain_listen",
                            "is only used with [server.tls] (server.listen is plain HTTP without it)".into(),
                        );
                        None
                    }
                    _ => None,
                },
                Err(message) => {
                    self.problem("server.plain_listen", message);
                    None
                }
            },
        };
        let path = "server.resolve_interval";
        let resolve_interval = self.positive_duration(raw.resolve_interval, path, "30s");
        let resolve_interval = self.bounded(
            resolve_interval,
            path,
            |d| d >= MIN_RESOLVE_INTERVAL,
            |_| "must be at least \"1s\" (names are not re-resolved more often)".into(),
        );
        let path = "server.header_timeout";
        let header_timeout = self.positive_duration(raw.header_timeout, path, "30s");
        let header_timeout = self.bounded(
            header_timeout,
            path,
            |d| d <= MAX_HEADER_TIMEOUT,
            |_| "must be at most \"1h\" (the time a request header may take to arrive)".into(),
        );
        let path = "server.keepalive_timeout";
        let keepalive_timeout = self.positive_duration(raw.keepalive_timeout, path, "60s");
        let keepalive_timeout = self.bounded(
            keepalive_timeout,
            path,
            |d| d.subsec_nanos() == 0 && d <= MAX_HEADER_TIMEOUT,
            |_| "must be whole seconds, at most \"1h\" (how long an idle client connection waits for its next request)".into(),
        );
        let upstream_keepalive = match raw.upstream_keepalive {
            Some(0) => {
                self.problem(
                    "server.upstream_keepalive",
                    "must be at least 1 (idle upstream connections kept for reuse)".into(),
                );
                None
            }
            Some(n) => Some(n),
            None => Some(DEFAULT_UPSTREAM_KEEPALIVE),
        };
        Some(ServerConfig {
            upstream_keepalive: upstream_keepalive?,
            fast_path: raw.fast_path.unwrap_or(true),
            batch_upstream_writes: raw.batch_upstream_writes.unwrap_or(true),
            forwarded_headers: raw.forwarded_headers.unwrap_or(false),
            header_timeout: header_timeout?,
            keepalive_timeout: keepalive_timeout?,
            resolve_interval: resolve_interval?,
            listen: listen?,
            also_listen,
            trusted_proxies,
            threads: threads?,
            work_stealing: raw.work_stealing.unwrap_or(false),
            grace_period: grace_period?,
            max_body: max_body?,
            tls: tls?,
            plain_listen: plain_listen?,
        })
    }

    fn tls(&mut self, raw: super::raw::RawTls) -> Option<TlsConfig> {
        let cert = self.required(raw.cert, "server.tls.cert");
        let key = self.required(raw.key, "server.tls.key");
        let tls13_only = match raw.min_version.as_deref().unwrap_or("1.2") {
            "1.2" => Some(false),
            "1.3" => Some(true),
            other => {
                self.problem(
                    "server.tls.min_version",
                    format!("{other:?} is not one of \"1.2\", \"1.3\""),
                );
                None
            }
        };
        Some(TlsConfig {
            cert: cert?.into(),
            key: key?.into(),
            tls13_only: tls13_only?,
            http2: raw.http2.unwrap_or(true),
        })
    }

    /// A mini program's WeChat keys, under `at` (`wechat`, or `apps[i]`).
    pub(super) fn wechat(&mut self, raw: RawWechat, at: &str) -> Option<WechatConfig> {
        let key = |k: &str| format!("{at}.{k}");
        let appid = self.required(raw.appid, &key("appid"));
        if let Some(a) = &appid {
            if a.trim().is_empty() {
                self.problem(&key("appid"), "must not be empty".into());
            }
        }
        let secret = self.required(raw.secret, &key("secret"));
        if let Some(s) = &secret {
            if s.is_empty() {
                self.problem(&key("secret"), "must not be empty".into());
            }
        }
        let api_base = self
            .or_default(raw.api_base, &key("api_base"), "https://api.weixin.qq.com")
            .map(|b| b.trim_end_matches('/').to_string());
        let base_ok = api_base
            .as_ref()
            .is_some_and(|b| b.starts_with("http://") || b.starts_with("https://"));
        if let (false, Some(api_base)) = (base_ok, &api_base) {
            self.problem(
                &key("api_base"),
                format!("{api_base:?} must start with http:// or https://"),
            );
        }
        let timeout = self.positive_duration(raw.timeout, &key("timeout"), "3s");
        let access_token_api =
            self.or_default(raw.access_token_api, &key("access_token_api"), "stable");
        let access_token_api = match access_token_api.as_deref() {
            None => None,
            Some("stable") => Some(AccessTokenApi::Stable),
            Some("classic") => Some(AccessTokenApi::Classic),
            Some(other) => {
                self.problem(
                    &key("access_token_api"),
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

    /// `[[apps]]` (or `[wechat]`, the one-app form): names and appids distinct.
    pub(super) fn apps(
        &mut self,
        wechat: Option<RawWechat>,
        apps: Option<Vec<Option<RawApp>>>,
    ) -> Option<Vec<AppConfig>> {
        match (wechat, apps) {
            (Some(_), Some(_)) => {
                self.problem(
                    "apps",
                    "use either [wechat] (one mini program) or [[apps]] entries, not both".into(),
                );
                None
            }
            (Some(raw), None) => {
                let wechat = self.wechat(raw, "wechat")?;
                Some(vec![AppConfig {
                    name: "default".into(),
                    wechat,
                }])
            }
            (None, None) if self.is_invalid("apps") => None,
            (None, None) => {
                // Neither: report [wechat]'s required keys, the form most files use.
                self.wechat(RawWechat::default(), "wechat");
                None
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    self.problem("apps", "must have at least one [[apps]] entry".into());
                    return None;
                }
                let mut out = Vec::with_capacity(list.len());
                let mut ok = true;
                for (i, raw) in list.into_iter().enumerate() {
                    let at = format!("apps[{i}]");
                    let Some(raw) = raw else {
                        ok = false;
                        continue;
                    };
                    let (name, raw) = raw.wechat();
                    let name = self.required(name, &format!("{at}.name"));
                    if let Some(n) = &name {
                        if let Some(j) = out.iter().position(|a: &AppConfig| a.name == *n) {
                            self.problem(
                                &format!("{at}.name"),
                                format!("{n:?} is already the name of apps[{j}]"),
                            );
                        } else if n.is_empty() {
                            self.problem(&format!("{at}.name"), "must not be empty".into());
                        }
                    }
                    let wechat = self.wechat(raw, &at);
                    if let Some(w) = &wechat {
                        if let Some(j) = out.iter().position(|a| a.wechat.appid == w.appid) {
                            self.problem(
                                &format!("{at}.appid"),
                                format!("{:?} is already the appid of apps[{j}]", w.appid),
                            );
                        }
                    }
                    match (name, wechat) {
                        (Some(name), Some(wechat)) => out.push(AppConfig { name, wechat }),
                        _ => ok = false,
                    }
                }
                ok.then_some(out)
            }
        }
    }

    /// Every route's `apps` names an app.
    pub(super) fn route_apps(&mut self, routes: &[RouteConfig], apps: &[AppConfig]) {
        for (i, route) in routes.iter().enumerate() {
            for (j, name) in route.apps.iter().flatten().enumerate() {
                if !apps.iter().any(|a| a.name == *name) {
                    let names: Vec<_> = apps.iter().map(|a| format!("{:?}", a.name)).collect();
                    self.problem(
                        &format!("routes[{i}].apps[{j}]"),
                        format!("{name:?} names no app (apps: {})", names.join(", ")),
                    );
                }
            }
        }
    }

    /// The `[[apps]]` entries as written.
    pub(super) fn apps_list(&mut self, value: toml::Value) -> Option<Vec<Option<RawApp>>> {
        match value {
            toml::Value::Array(items) => Some(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.section::<RawApp>(item, &format!("apps[{i}]")))
                    .collect(),
            ),
            _ => {
                self.invalid(
                    "apps",
                    "must be an array of tables ([[apps]] entries)".into(),
                );
                None
            }
        }
    }

    pub(super) fn jwt(&mut self, raw: RawJwt) -> Option<JwtConfig> {
        let algorithm = self.or_default(raw.algorithm, "jwt.algorithm", "HS256");
        let algorithm = match algorithm.as_deref() {
            None => None,
            Some(text) => JwtAlgorithm::parse(text).or_else(|| {
                self.problem(
                    "jwt.algorithm",
                    format!(
                        "{text:?} is not supported (supported: \"HS256\", \"ES256\", \"EdDSA\")"
                    ),
                );
                None
            }),
        };
        let key = match algorithm {
            None => None,
            Some(JwtAlgorithm::HS256) => {
                if raw.private_key.is_some() {
                    self.problem(
                        "jwt.private_key",
                        "is for ES256/EdDSA; HS256 signs with jwt.secret".into(),
                    );
                }
                let secret = self.required(raw.secret, "jwt.secret");
                self.hs256_secret(secret, "jwt.secret")
            }
            Some(alg) => {
                if raw.secret.is_some() {
                    self.problem(
                        "jwt.secret",
                        format!(
                            "is for HS256; {} signs with jwt.private_key (a shared secret would let \
                             anyone who verifies also sign)",
                            alg.name()
                        ),
                    );
                }
                if raw.kid.is_none() && !self.is_invalid("jwt.kid") {
                    self.problem(
                        "jwt.kid",
                        format!(
                            "required with {}: it names the key in every token and in the JWKS",
                            alg.name()
                        ),
                    );
                }
                let pem = self.required(raw.private_key, "jwt.private_key");
                pem.and_then(|pem| {
                    let loaded = crate::keys::read_pem(&pem)
                        .and_then(|text| crate::keys::private_key(&text, alg));
                    loaded
                        .map(KeyMaterial::Private)
                        .map_err(|e| self.problem("jwt.private_key", e))
                        .ok()
                })
            }
        };
        let kid = raw.kid;
        if let Some(k) = &kid {
            if k.is_empty() {
                self.problem("jwt.kid", "must not be empty".into());
            }
        }
        let mut verify_keys = Vec::new();
        let mut kids: Vec<String> = kid.iter().cloned().collect();
        for (i, vk) in raw.verify_keys.unwrap_or_default().into_iter().enumerate() {
            let at = format!("jwt.verify_keys[{i}]");
            let Some(vkid) = self.required(vk.kid, &format!("{at}.kid")) else {
                continue;
            };
            if kids.contains(&vkid) {
                self.problem(
                    &format!("{at}.kid"),
                    format!("{vkid:?} is already the kid of another key"),
                );
            } else if vkid.is_empty() {
                self.problem(&format!("{at}.kid"), "must not be empty".into());
            }
            kids.push(vkid.clone());
            if let Some((algorithm, key)) = self.verify_key(vk.public_key, vk.secret, &at, false) {
                verify_keys.push(VerifyKey {
                    kid: vkid,
                    algorithm,
                    key,
                });
            }
        }
        let mut accept = Vec::new();
        for (i, a) in raw.accept.unwrap_or_default().into_iter().enumerate() {
            let at = format!("jwt.accept[{i}]");
            if let Some(entry) = self.accept(a, &at) {
                accept.push(entry);
            }
        }
        let ttl = self.positive_duration(raw.ttl, "jwt.ttl", "2h");
        self.jwt_ttl = ttl;
        let leeway = self.duration(raw.leeway, "jwt.leeway", "0s");
        let leeway = self.bounded(
            leeway,
            "jwt.leeway",
            |l| l <= MAX_LEEWAY,
            |l| format!("{l:?} is more clock skew than tokens can be judged with (at most 1h)"),
        );
        let issuer = raw.issuer.unwrap_or_else(|| "wxgate".to_string());
        Some(JwtConfig {
            algorithm: algorithm?,
            key: key?,
            kid,
            verify_keys,
            accept,
            ttl: ttl?,
            leeway: leeway?,
            issuer,
        })
    }

    /// An HS256 secret, refused when too short to be a key.
    fn hs256_secret(&mut self, secret: Option<String>, path: &str) -> Option<KeyMaterial> {
        let s = secret?;
        if s.len() < MIN_SECRET_BYTES {
            self.problem(
                path,
                format!(
                    "is {} bytes; an HS256 key must be at least {MIN_SECRET_BYTES} bytes \
                     (e.g. `openssl rand -base64 48`)",
                    s.len()
                ),
            );
            return None;
        }
        Some(KeyMaterial::Secret(Secret::new(s)))
    }

    /// A verify-only key: `public_key` (its type gives the algorithm) or an HS256 `secret`.
    fn verify_key(
        &mut self,
        public_key: Option<String>,
        secret: Option<String>,
        at: &str,
        accept: bool,
    ) -> Option<(JwtAlgorithm, KeyMaterial)> {
        match (public_key, secret) {
            (Some(_), Some(_)) => {
                self.problem(
                    &format!("{at}.secret"),
                    "give either public_key or secret, not both".into(),
                );
                None
            }
            (Some(pem), None) => {
                let path = format!("{at}.public_key");
                match crate::keys::read_pem(&pem).and_then(|t| crate::keys::public_key(&t)) {
                    Ok((alg, raw)) => Some((alg, KeyMaterial::Public(raw))),
                    Err(e) => {
                        self.problem(&path, e);
                        None
                    }
                }
            }
            (None, Some(secret)) if accept => {
                // Another backend's secret is what it is (the tutorial's is 6 bytes): refusing
                // it would log everyone out. It only verifies, and only until `until`.
                if secret.is_empty() {
                    self.problem(&format!("{at}.secret"), "must not be empty".into());
                    return None;
                }
                Some((
                    JwtAlgorithm::HS256,
                    KeyMaterial::Secret(Secret::new(secret)),
                ))
            }
            (None, Some(secret)) => self
                .hs256_secret(Some(secret), &format!("{at}.secret"))
                .map(|k| (JwtAlgorithm::HS256, k)),
            (None, None) => {
                if !self.is_invalid(&format!("{at}.public_key"))
                    && !self.is_invalid(&format!("{at}.secret"))
                {
                    self.problem(
                        &format!("{at}.public_key"),
                        "required key is missing (or `secret` for an HS256 key)".into(),
                    );
                }
                None
            }
        }
    }

    /// One `[[jwt.accept]]` entry.
    fn accept(&mut self, raw: RawAccept, at: &str) -> Option<AcceptConfig> {
        let alg_path = format!("{at}.algorithm");
        let algorithm = self.required(raw.algorithm, &alg_path).and_then(|text| {
            JwtAlgorithm::parse(&text).or_else(|| {
                self.problem(
                    &alg_path,
                    format!(
                        "{text:?} is not supported (supported: \"HS256\", \"ES256\", \"EdDSA\")"
                    ),
                );
                None
            })
        });
        let mut key = self.verify_key(raw.public_key, raw.secret, at, true);
        if let (Some(alg), Some((key_alg, _))) = (algorithm, &key) {
            if alg != *key_alg {
                self.problem(
                    at,
                    format!(
                        "algorithm is {:?} but the key is for {:?}",
                        alg.name(),
                        key_alg.name()
                    ),
                );
                key = None;
            }
        }
        let openid_claim = raw.openid_claim.unwrap_or_else(|| "sub".into());
        if openid_claim.is_empty() {
            self.problem(&format!("{at}.openid_claim"), "must not be empty".into());
        }
        let until_path = format!("{at}.until");
        let until = self.required(raw.until, &until_path).and_then(|text| {
            match humantime::parse_rfc3339_weak(text.trim()) {
                Ok(t) => Some(
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                ),
                Err(e) => {
                    self.problem(
                        &until_path,
                        format!(
                            "{text:?} is not an instant ({e}); write e.g. \"2027-01-31T00:00:00Z\""
                        ),
                    );
                    None
                }
            }
        });
        Some(AcceptConfig {
            algorithm: algorithm?,
            key: key?.1,
            openid_claim,
            until: until?,
            appid: raw.appid,
        })
    }

    /// Every `[[jwt.accept]]` `appid` names a configured app.
    pub(super) fn accept_apps(&mut self, jwt: &JwtConfig, apps: &[AppConfig]) {
        for (i, entry) in jwt.accept.iter().enumerate() {
            if let Some(appid) = &entry.appid {
                if !apps.iter().any(|a| a.wechat.appid == *appid) {
                    self.problem(
                        &format!("jwt.accept[{i}].appid"),
                        format!("{appid:?} is not the appid of any app"),
                    );
                }
            }
        }
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

    pub(super) fn auth(&mut self, raw: RawAuth) -> Option<AuthConfig> {
        let login_path = self.path(raw.login_path, "auth.login_path", "/auth");
        let verify_path = self.path(raw.verify_path, "auth.verify_path", "/isAuth");
        let refresh_path = self.path(raw.refresh_path, "auth.refresh_path", "/auth/refresh");
        let logout_path = self.path(raw.logout_path, "auth.logout_path", "/auth/logout");
        let phone_path = self.path(raw.phone_path, "auth.phone_path", "/auth/phone");
        let decrypt_path = self.path(raw.decrypt_path, "auth.decrypt_path", "/auth/decrypt");
        let jwks_path = self.path(raw.jwks_path, "auth.jwks_path", "/.well-known/jwks.json");
        let paths = [
            ("auth.login_path", &login_path),
            ("auth.verify_path", &verify_path),
            ("auth.refresh_path", &refresh_path),
            ("auth.logout_path", &logout_path),
            ("auth.phone_path", &phone_path),
            ("auth.decrypt_path", &decrypt_path),
            ("auth.jwks_path", &jwks_path),
        ];
        self.distinct(&paths);
        let identity_header =
            self.header(raw.identity_header, "auth.identity_header", "X-WX-OpenID");
        let unionid_header = self.header(raw.unionid_header, "auth.unionid_header", "X-WX-UnionID");
        let phone_header = self.header(raw.phone_header, "auth.phone_header", "X-WX-Phone");
        let appid_header = self.header(raw.appid_header, "auth.appid_header", "X-WX-AppID");
        let headers = [
            ("auth.identity_header", &identity_header),
            ("auth.unionid_header", &unionid_header),
            ("auth.phone_header", &phone_header),
            ("auth.appid_header", &appid_header),
        ];
        self.distinct(&headers);
        let identity_headers = self.identity_mode(raw.identity_headers, "auth.identity_headers");
        Some(AuthConfig {
            identity_headers: identity_headers?.unwrap_or(IdentityMode::Wxgate),
            login_path: login_path?,
            verify_path: verify_path?,
            refresh_path: refresh_path?,
            logout_path: logout_path?,
            phone_path: phone_path?,
            decrypt_path: decrypt_path?,
            jwks_path: jwks_path?,
            identity_header: identity_header?,
            unionid_header: unionid_header?,
            phone_header: phone_header?,
            appid_header: appid_header?,
        })
    }

    /// Exactly one of the three forms of `[session]` Redis: one server, Sentinel, Cluster.
    fn redis_target(&mut self, raw: &RawSession) -> Option<RedisTarget> {
        let sentinel_given = raw.redis_sentinels.is_some() || raw.redis_sentinel_primary.is_some();
        let forms: Vec<&str> = [
            (raw.redis_url.is_some(), "session.redis_url"),
            (sentinel_given, "session.redis_sentinels"),
            (raw.redis_cluster.is_some(), "session.redis_cluster"),
        ]
        .into_iter()
        .filter_map(|(given, key)| given.then_some(key))
        .collect();
        if forms.len() > 1 {
            self.problem(
                forms[1],
                format!(
                    "conflicts with {}: give one of redis_url, redis_sentinels (with \
                     redis_sentinel_primary) or redis_cluster",
                    forms[0]
                ),
            );
            return None;
        }
        if let Some(url) = &raw.redis_url {
            // The message never repeats the URL: it may carry a password.
            return match redis_url_problem(url) {
                Some(message) => {
                    self.problem("session.redis_url", message);
                    None
                }
                None => Some(RedisTarget::Server {
                    url: Secret::new(url.clone()),
                }),
            };
        }
        if sentinel_given {
            let sentinels = self.redis_urls(
                raw.redis_sentinels.as_deref(),
                "session.redis_sentinels",
                "required with redis_sentinel_primary (the sentinels' redis:// URLs)",
            );
            let primary = match raw.redis_sentinel_primary.as_deref() {
                None => {
                    self.problem(
                        "session.redis_sentinel_primary",
                        "required with redis_sentinels (the name the sentinels know the primary by)"
                            .into(),
                    );
                    None
                }
                Some(primary) => match sentinel_primary_problem(primary) {
                    Some(message) => {
                        self.problem("session.redis_sentinel_primary", message);
                        None
                    }
                    None => Some(Secret::new(primary.to_string())),
                },
            };
            return Some(RedisTarget::Sentinel {
                sentinels: sentinels?,
                primary: primary?,
            });
        }
        if raw.redis_cluster.is_some() {
            let nodes = self.redis_urls(
                raw.redis_cluster.as_deref(),
                "session.redis_cluster",
                "must list at least one node",
            )?;
            let mut ok = true;
            for (i, node) in nodes.iter().enumerate() {
                let db = redis::IntoConnectionInfo::into_connection_info(node.expose())
                    .map(|info| info.redis_settings().db())
                    .unwrap_or(0);
                if db != 0 {
                    self.problem(
                        &format!("session.redis_cluster[{i}]"),
                        format!("names database {db}: a Redis Cluster has database 0 only"),
                    );
                    ok = false;
                }
            }
            if ok {
                if let Err(e) = redis::cluster::ClusterClient::new(
                    nodes
                        .iter()
                        .map(|n| n.expose().to_string())
                        .collect::<Vec<_>>(),
                ) {
                    self.problem(
                        "session.redis_cluster",
                        format!(
                            "the nodes cannot be used together ({:?}): they must agree on \
                             user, password and scheme",
                            e.kind()
                        ),
                    );
                    ok = false;
                }
            }
            return ok.then_some(RedisTarget::Cluster { nodes });
        }
        if !self.is_invalid("session.redis_url") {
            self.problem(
                "session.redis_url",
                "required with store = \"redis\" (redis://host:6379 or rediss://...), or \
                 redis_sentinels with redis_sentinel_primary, or redis_cluster"
                    .into(),
            );
        }
        None
    }

    /// A non-empty list of usable Redis URLs, each problem named by its index.
    fn redis_urls(
        &mut self,
        urls: Option<&[String]>,
        key: &str,
        when_missing: &str,
    ) -> Option<Vec<Secret>> {
        let urls = match urls {
            Some(urls) if !urls.is_empty() => urls,
            _ => {
                self.problem(key, when_missing.into());
                return None;
            }
        };
        let mut ok = true;
        for (i, url) in urls.iter().enumerate() {
            if let Some(message) = redis_url_problem(url) {
                self.problem(&format!("{key}[{i}]"), message);
                ok = false;
            }
        }
        ok.then(|| urls.iter().map(|u| Secret::new(u.clone())).collect())
    }

    pub(super) fn session(&mut self, raw: RawSession) -> Option<SessionConfig> {
        let store = self.or_default(raw.store.clone(), "session.store", "memory");
        let store = match store.as_deref() {
            None => None,
            Some("memory") => {
                for (given, key) in [
                    (raw.redis_url.is_some(), "session.redis_url"),
                    (raw.redis_sentinels.is_some(), "session.redis_sentinels"),
                    (
                        raw.redis_sentinel_primary.is_some(),
                        "session.redis_sentinel_primary",
                    ),
                    (raw.redis_cluster.is_some(), "session.redis_cluster"),
                ] {
                    if given {
                        self.problem(key, "is only used with store = \"redis\"".into());
                    }
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
            Some("redis") => self.redis_target(&raw).map(StoreKind::Redis),
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

    pub(super) fn admin(&mut self, raw: RawAdmin) -> Option<AdminConfig> {
        let token = self.admin_token(raw.token, raw.listen.is_some());
        let Some(text) = raw.listen else {
            return (!self.is_invalid("admin.listen") && !self.is_invalid("admin.token"))
                .then_some(AdminConfig {
                    listen: None,
                    token: None,
                });
        };
        let listen = match resolve_host_port(&text, self.resolve_names) {
            Ok(addrs) => addrs.into_iter().next(),
            Err(message) => {
                self.problem("admin.listen", message);
                None
            }
        };
        if let (Some(admin), Some(server)) = (listen, self.listen) {
            if admin == server {
                self.problem(
                    "admin.listen",
                    format!("must differ from server.listen ({server}): the admin listener is for operators, not clients"),
                );
                return None;
            }
        }
        Some(AdminConfig {
            listen: Some(listen?),
            token: token?,
        })
    }

    /// `identity_headers = "wxgate" | "cloudhosting"`; `Some(None)` when not written.
    fn identity_mode(&mut self, value: Option<String>, path: &str) -> Option<Option<IdentityMode>> {
        match value.as_deref() {
            None if self.is_invalid(path) => None,
            None => Some(None),
            Some("wxgate") => Some(Some(IdentityMode::Wxgate)),
            Some("cloudhosting") => Some(Some(IdentityMode::CloudHosting)),
            Some(other) => {
                self.problem(
                    path,
                    format!("{other:?} is not one of \"wxgate\", \"cloudhosting\""),
                );
                None
            }
        }
    }

    /// `[relay]`: its listener must be none of the others (never the public one: the relay
    /// spends the app's access token for whoever reaches it).
    pub(super) fn relay(
        &mut self,
        raw: RawRelay,
        server: Option<&ServerConfig>,
        admin: Option<&AdminConfig>,
    ) -> Option<RelayConfig> {
        let mut listen = match self.required(raw.listen, "relay.listen") {
            Some(text) => match resolve_host_port(&text, self.resolve_names) {
                Ok(addrs) => addrs.into_iter().next(),
                Err(message) => {
                    self.problem("relay.listen", message);
                    None
                }
            },
            None => None,
        };
        if let Some(addr) = listen {
            let others = server
                .map(|s| {
                    let mut v = vec![("server.listen", s.listen)];
                    v.extend(s.also_listen.iter().map(|a| ("server.listen", *a)));
                    v.extend(s.plain_listen.map(|a| ("server.plain_listen", a)));
                    v
                })
                .unwrap_or_default()
                .into_iter()
                .chain(admin.and_then(|a| a.listen).map(|a| ("admin.listen", a)));
            if let Some((key, other)) = others.into_iter().find(|(_, other)| *other == addr) {
                self.problem(
                    "relay.listen",
                    format!("must differ from {key} ({other}): the relay spends the app's access token for whoever reaches it, so it never shares a listener"),
                );
                listen = None;
            }
        }
        let mut allow = Vec::new();
        match self.required(raw.allow, "relay.allow") {
            Some(list) if list.is_empty() => {
                self.problem(
                    "relay.allow",
                    "must list at least one WeChat API path (e.g. \"/wxa/msg_sec_check\")".into(),
                );
            }
            Some(list) => {
                for (i, p) in list.into_iter().enumerate() {
                    let at = format!("relay.allow[{i}]");
                    if !p.starts_with('/') || p.contains(['?', '#', ' ', '%']) || p.contains("/.") {
                        self.problem(
                            &at,
                            format!("{p:?} must be a path starting with '/' (no query, no '.' segments)"),
                        );
                    } else if allow.contains(&p) {
                        self.problem(&at, format!("{p:?} is listed twice"));
                    } else {
                        allow.push(p);
                    }
                }
            }
            None => {}
        }
        let mut allow_from = Vec::new();
        let from = raw
            .allow_from
            .unwrap_or_else(|| vec!["127.0.0.1/32".into(), "::1/128".into()]);
        for (i, net) in from.iter().enumerate() {
            match parse_net(net) {
                Some(n) => allow_from.push(n),
                None => self.problem(
                    &format!("relay.allow_from[{i}]"),
                    format!("{net:?} is not an address or CIDR (e.g. \"10.0.0.0/8\")"),
                ),
            }
        }
        let timeout = self.positive_duration(raw.timeout, "relay.timeout", "5s");
        if self.problems.iter().any(|p| p.path.starts_with("relay")) {
            return None;
        }
        Some(RelayConfig {
            listen: listen?,
            allow,
            allow_from,
            timeout: timeout?,
        })
    }

    /// `admin.token`: a bearer secret for the admin listener's POST endpoints. The problems
    /// name its length, never its value.
    fn admin_token(&mut self, token: Option<String>, listen: bool) -> Option<Option<Secret>> {
        let Some(token) = token else {
            return Some(None);
        };
        if !listen {
            self.problem(
                "admin.token",
                "has no use without admin.listen (the listener it protects)".into(),
            );
            return None;
        }
        if token.len() < MIN_ADMIN_TOKEN_BYTES || token.chars().any(|c| c.is_whitespace()) {
            self.problem(
                "admin.token",
                format!(
                    "is {} bytes; it must be at least {MIN_ADMIN_TOKEN_BYTES} bytes without spaces \
                     (e.g. `openssl rand -hex 24`, given as \"${{WXGATE_ADMIN_TOKEN}}\")",
                    token.len()
                ),
            );
            return None;
        }
        Some(Some(Secret::new(token)))
    }

    pub(super) fn log(&mut self, raw: RawLog) -> Option<LogConfig> {
        let format = match self.or_default(raw.format, "log.format", "text").as_deref() {
            None => None,
            Some("text") => Some(LogFormat::Text),
            Some("json") => Some(LogFormat::Json),
            Some(other) => {
                self.problem(
                    "log.format",
                    format!("{other:?} is not one of \"text\", \"json\""),
                );
                None
            }
        };
        let openid = match self
            .or_default(raw.openid, "log.openid", "plain")
            .as_deref()
        {
            None => None,
            Some("plain") => Some(OpenidInLog::Plain),
            Some("hash") => Some(OpenidInLog::Hash),
            Some("off") => Some(OpenidInLog::Off),
            Some(other) => {
                self.problem(
                    "log.openid",
                    format!("{other:?} is not one of \"plain\", \"hash\", \"off\""),
                );
                None
            }
        };
        Some(LogConfig {
            format: format?,
            openid: openid?,
        })
    }

    pub(super) fn check_routes(
        &mut self,
        raw: Option<Vec<Option<RawRoute>>>,
    ) -> Option<Vec<RouteConfig>> {
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
                // The same prefix may serve several hosts: the pair must be unique.
                let key = format!(
                    "{}{p}",
                    raw.host.as_deref().unwrap_or("").to_ascii_lowercase()
                );
                if let Some((j, _)) = prefixes.iter().find(|(_, q)| *q == key) {
                    let on = raw
                        .host
                        .as_deref()
                        .map(|h| format!(" for host {h:?}"))
                        .unwrap_or_default();
                    self.problem(
                        &at("prefix"),
                        format!("{p:?} is already the prefix of routes[{j}]{on}"),
                    );
                } else {
                    prefixes.push((i, key));
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
        let mut parsed: Vec<HostPort> = Vec::new();
        let mut upstreams_ok = upstreams.is_some();
        if let Some(list) = &upstreams {
            if list.is_empty() {
                self.problem(&at("upstreams"), "must list at least one host:port".into());
                upstreams_ok = false;
            }
            for (j, u) in list.iter().enumerate() {
                match parse_upstream(u) {
                    Ok(hp) if parsed.contains(&hp) => self.problem(
                        &format!("routes[{i}].upstreams[{j}]"),
                        format!("{u:?} is listed twice"),
                    ),
                    Ok(hp) => parsed.push(hp),
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
        let host = match raw.host {
            None => Some(None),
            Some(text) => match host_match(&text) {
                Ok(h) => Some(Some(h)),
                Err(message) => {
                    self.problem(&at("host"), message);
                    None
                }
            },
        };
        let websocket = match raw.websocket.unwrap_or(false) {
            true => self
                .positive_duration(
                    raw.websocket_idle_timeout,
                    &at("websocket_idle_timeout"),
                    "5m",
                )
                .map(Some),
            false => {
                if raw.websocket_idle_timeout.is_some() {
                    self.problem(
                        &at("websocket_idle_timeout"),
                        "is only used with websocket = true".into(),
                    );
                }
                Some(None)
            }
        };
        let any_tls = parsed.iter().any(|hp| hp.tls);
        let upstream_ca = match raw.upstream_ca {
            None => Some(None),
            Some(_) if !any_tls => {
                self.problem(
                    &at("upstream_ca"),
                    "is only used with https:// upstreams".into(),
                );
                None
            }
            Some(path) => match crate::tls::read_ca(std::path::Path::new(&path)) {
                Ok(_) => Some(Some(path.into())),
                Err(message) => {
                    self.problem(&at("upstream_ca"), message);
                    None
                }
            },
        };
        let upstream_host = match raw.upstream_host {
            None => Some(None),
            Some(h) => match http::HeaderValue::from_str(&h) {
                Ok(_) if !h.is_empty() && !h.contains(['/', ' ']) => Some(Some(h)),
                _ => {
                    self.problem(&at("upstream_host"), format!("{h:?} is not a host name"));
                    None
                }
            },
        };
        let connect_timeout =
            self.positive_duration(raw.connect_timeout, &at("connect_timeout"), "2s");
        let read_timeout = self.positive_duration(raw.read_timeout, &at("read_timeout"), "30s");
        let upstream_idle_timeout = self.positive_duration(
            raw.upstream_idle_timeout,
            &at("upstream_idle_timeout"),
            "4s",
        );
        let upstream_idle_timeout = self.bounded(
            upstream_idle_timeout,
            &at("upstream_idle_timeout"),
            |d| d <= MAX_UPSTREAM_IDLE_TIMEOUT,
            |_| "must be at most \"1h\" (how long an idle upstream connection is kept)".into(),
        );
        let lb = match self.or_default(raw.lb, &at("lb"), "round_robin").as_deref() {
            None => None,
            Some("round_robin") => Some(Balance::RoundRobin),
            Some("openid_hash") => Some(Balance::OpenidHash),
            Some("least_requests") => Some(Balance::LeastRequests),
            Some(other) => {
                self.problem(
                    &at("lb"),
                    format!(
                        "{other:?} is not one of \"round_robin\", \"openid_hash\", \"least_requests\""
                    ),
                );
                None
            }
        };
        let health_check = match raw.health_check {
            None if self.is_invalid(&at("health_check")) => None,
            None => Some(None),
            Some(hc) => self.health_check(hc, &at("health_check")).map(Some),
        };
        let retries = match raw.retries {
            Some(n) if n > 10 => {
                self.problem(&at("retries"), format!("{n} is more than 10"));
                None
            }
            Some(n) => Some(n),
            None if self.is_invalid(&at("retries")) => None,
            None => Some(1),
        };
        let rate_limit = match raw.rate_limit {
            None => {
                if raw.rate_limit_burst.is_some() {
                    self.problem(
                        &at("rate_limit_burst"),
                        "is only used with rate_limit".into(),
                    );
                }
                Some(None)
            }
            Some(text) => match parse_rate(&text) {
                Ok((count, per)) => match raw.rate_limit_burst {
                    Some(0) => {
                        self.problem(&at("rate_limit_burst"), "must be at least 1".into());
                        None
                    }
                    burst => Some(Some(RouteRateLimit {
                        count,
                        per,
                        burst: burst.unwrap_or(count),
                    })),
                },
                Err(message) => {
                    self.problem(&at("rate_limit"), message);
                    None
                }
            },
        };
        let identity_headers = self.identity_mode(raw.identity_headers, &at("identity_headers"));
        let prefix = prefix?;
        Some(RouteConfig {
            identity_headers: identity_headers?,
            name: raw.name.unwrap_or_else(|| prefix.clone()),
            prefix,
            upstreams: upstreams_ok.then_some(parsed)?,
            auth: auth?,
            connect_timeout: connect_timeout?,
            read_timeout: read_timeout?,
            upstream_idle_timeout: upstream_idle_timeout?,
            forward_phone: raw.forward_phone.unwrap_or(false),
            host: host?,
            strip_prefix: raw.strip_prefix.unwrap_or(false),
            websocket: websocket?,
            upstream_ca: upstream_ca?,
            upstream_host: upstream_host?,
            lb: lb?,
            health_check: health_check?,
            retries: retries?,
            rate_limit: rate_limit?,
            apps: match raw.apps {
                Some(list) if list.is_empty() => {
                    self.problem(
                        &at("apps"),
                        "must name at least one app (or leave it out: every app)".into(),
                    );
                    return None;
                }
                other => other,
            },
        })
    }

    fn health_check(&mut self, raw: RawHealthCheck, at: &str) -> Option<HealthCheckConfig> {
        let key = |k: &str| format!("{at}.{k}");
        let interval = match raw.interval {
            None => {
                self.required(None::<()>, &key("interval"));
                None
            }
            some => self.positive_duration(some, &key("interval"), "2s"),
        };
        let timeout = self.positive_duration(raw.timeout, &key("timeout"), "1s");
        let path = match raw.path {
            Some(p) if !p.starts_with('/') || http::Uri::try_from(p.as_str()).is_err() => {
                self.problem(
                    &key("path"),
                    format!("{p:?} is not a request path such as \"/healthz\""),
                );
                None
            }
            p => Some(p),
        };
        let mut count = |value: Option<u32>, name: &str| match value {
            Some(0) => {
                self.problem(&key(name), "must be at least 1".into());
                None
            }
            Some(n) => Some(n),
            None if self.is_invalid(&key(name)) => None,
            None => Some(2),
        };
        let unhealthy_after = count(raw.unhealthy_after, "unhealthy_after");
        let healthy_after = count(raw.healthy_after, "healthy_after");
        Some(HealthCheckConfig {
            path: path?,
            interval: interval?,
            timeout: timeout?,
            unhealthy_after: unhealthy_after?,
            healthy_after: healthy_after?,
        })
    }
}

/// A rate as `"20/s"`, `"600/m"` or `"1000/h"`: a count of at least 1 per second, minute or hour.
/// An address or CIDR, as `server.trusted_proxies` and `relay.allow_from` write them.
fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .ok()
}

pub fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    let bad = || format!("{text:?} is not a rate; write e.g. \"20/s\", \"600/m\" or \"1000/h\"");
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    if count == 0 {
        return Err(format!("{text:?}: the count must be at least 1"));
    }
    Ok((count, per))
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
    // Hop-by-hop headers: stripped or acted on by the HTTP layer, never forwarded as set.
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "expect",
    "http2-settings",
    // The request id has its own job (see `X-Request-Id` in the README).
    "x-request-id",
];

/// A route's `host`: a name, or `*.` and a name; no port, no scheme.
fn host_match(text: &str) -> Result<HostMatch, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{text:?} is not a host name (write \"api.example.com\" or \"*.example.com\", without port or scheme)"
        ));
    }
    Ok(if wildcard {
        HostMatch::Subdomains(name.to_string())
    } else {
        HostMatch::Exact(name.to_string())
    })
}

/// `host:port` as written: checked, not resolved.
pub fn parse_host_port(text: &str) -> Result<HostPort, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: false,
        });
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
    Ok(HostPort {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        tls: false,
    })
}

/// An upstream: `host:port`, `http://host:port` or `https://host:port` (TLS, the host as SNI).
pub fn parse_upstream(text: &str) -> Result<HostPort, String> {
    let (tls, rest) = match (text.strip_prefix("https://"), text.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => (false, text),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut hp = parse_host_port(rest).map_err(|e| {
        if text.contains("://") && !text.starts_with("http") {
            format!("{text:?}: only http:// and https:// upstreams")
        } else {
            e
        }
    })?;
    hp.tls = tls;
    Ok(hp)
}

/// Resolve a `host:port` (a blocking lookup unless the host is an address): only at start-up,
/// in `check`, and in the reload thread; never on a request's path.
pub fn resolve(hp: &HostPort) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = hp.host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, hp.port)]);
    }
    match (hp.host.as_str(), hp.port).to_socket_addrs() {
        Ok(addrs) => {
            let mut out: Vec<SocketAddr> = Vec::new();
            for a in addrs {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            if out.is_empty() {
                Err(format!("{hp}: host {:?} resolves to no address", hp.host))
            } else {
                Ok(out)
            }
        }
        Err(e) => Err(format!("{hp}: cannot resolve host {:?} ({e})", hp.host)),
    }
}

/// The listen address: an address, or a name resolved now (`resolve_names` off: refused).
fn resolve_host_port(text: &str, resolve_names: bool) -> Result<Vec<SocketAddr>, String> {
    let hp = parse_host_port(text)?;
    if hp.host.parse::<std::net::IpAddr>().is_err() && !resolve_names {
        return Err(format!("{text:?}: not resolving host names here"));
    }
    resolve(&hp)
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

/// Why `redis_sentinel_primary` cannot be used: a bare name, or a URL whose host is the name.
fn sentinel_primary_problem(primary: &str) -> Option<String> {
    if primary.contains("://") {
        return redis_url_problem(primary);
    }
    let fine = !primary.is_empty()
        && primary
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (!fine).then(|| {
        "must be the primary's name as the sentinels know it (letters, digits, - _ .), or a \
         redis:// URL whose host is that name"
            .into()
    })
}

/// `"16KiB"`, `"1MiB"`, `"512"` (bytes).
pub(super) fn parse_size(text: &str) -> Option<usize> {
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
pub(super) fn clean_serde_message(msg: &str) -> String {
    // toml appends the key path on further lines; ours is already in front.
    let msg = msg.lines().next().unwrap_or(msg).trim();
    msg.replace("usize", "a non-negative integer")
        .replace("a sequence", "an array")
        .replace("struct Raw", "table ")
}

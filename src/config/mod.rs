//! Loading `gateway.toml`: parse, expand `${ENV}`, deserialise each section, then validate into a
//! typed [`Config`]. Every problem is collected with its key path; nothing here panics on input.
//! Host names of upstreams are resolved separately ([`resolve_routes`]), by whoever builds the
//! route table: validation never blocks on DNS.

mod env;
mod order;
mod raw;
mod types;
mod validate;

pub use crate::secret::Secret;
pub use types::*;
pub use validate::{parse_host_port, parse_upstream};

use order::FileOrder;
use raw::{RawAdmin, RawLog, RawRateLimit, RawRelay, RawServer, RawSession, RawWechat};
use raw::{RawAuth, RawJwt};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use validate::Validator;

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

/// The largest file the gateway reads as configuration, a key or a certificate.
pub const MAX_FILE: u64 = 1 << 20;

/// Open a regular file of at most [`MAX_FILE`] bytes: a device (`/dev/zero`), a pipe or a
/// directory named by mistake is refused instead of read without end.
pub fn open_small_file(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_FILE / 1024
        )));
    }
    Ok(file)
}

/// Read a file [`open_small_file`] accepts, as text (at most [`MAX_FILE`] bytes, should it grow).
pub fn read_small_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    open_small_file(path)?
        .take(MAX_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Load and validate a configuration file, reading `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = read_small_file(path).map_err(|e| match e.kind() {
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
    let mut v = Validator::new(resolve_names);
    env::expand_table(&mut root, "", lookup, &mut |path, message| {
        v.invalid(path, message)
    });

    let mut server = None;
    let mut wechat = None;
    let mut apps = None;
    let mut jwt = None;
    let mut auth = None;
    let mut session = None;
    let mut rate_limit = None;
    let mut admin = None;
    let mut log = None;
    let mut routes = None;
    let mut relay = None;
    for (key, value) in root {
        match key.as_str() {
            "server" => server = v.section::<RawServer>(value, &key),
            "wechat" => wechat = v.section::<RawWechat>(value, &key),
            "apps" => apps = v.apps_list(value),
            "jwt" => jwt = v.section::<RawJwt>(value, &key),
            "auth" => auth = v.section::<RawAuth>(value, &key),
            "session" => session = v.section::<RawSession>(value, &key),
            "rate_limit" => rate_limit = v.section::<RawRateLimit>(value, &key),
            "admin" => admin = v.section::<RawAdmin>(value, &key),
            "log" => log = v.section::<RawLog>(value, &key),
            "routes" => routes = v.routes(value),
            "relay" => relay = Some(v.section::<RawRelay>(value, &key)),
            _ => v.problem(&key, "unknown key".into()),
        }
    }

    let server = v.server(server.unwrap_or_default());
    let apps = v.apps(wechat, apps);
    let jwt = v.jwt(jwt.unwrap_or_default());
    let auth = v.auth(auth.unwrap_or_default());
    let session = v.session(session.unwrap_or_default());
    let admin = v.admin(admin.unwrap_or_default());
    let log = v.log(log.unwrap_or_default());
    let routes = v.check_routes(routes);
    let relay = match relay {
        None => Some(None),
        Some(None) => None,
        Some(Some(raw)) => v.relay(raw, server.as_ref(), admin.as_ref()).map(Some),
    };
    if let (Some(routes), Some(apps)) = (&routes, &apps) {
        v.route_apps(routes, apps);
    }
    if let (Some(jwt), Some(apps)) = (&jwt, &apps) {
        v.accept_apps(jwt, apps);
    }
    let rate_limit = rate_limit.unwrap_or_default();
    let rate_limit = RateLimitConfig {
        login_per_minute: rate_limit.login_per_minute.unwrap_or(30),
        phone_per_minute: rate_limit.phone_per_minute.unwrap_or(10),
    };

    let sections = (server, apps, jwt, auth, session, admin, log, routes, relay);
    match sections {
        (
            Some(server),
            Some(apps),
            Some(jwt),
            Some(auth),
            Some(session),
            Some(admin),
            Some(log),
            Some(routes),
            Some(relay),
        ) if v.problems.is_empty() => Ok(Config {
            relay,
            server,
            apps,
            jwt,
            auth,
            session,
            rate_limit,
            admin,
            log,
            routes,
        }),
        _ => {
            let mut problems = v.problems;
            problems.sort_by_key(|p| order.rank(&p.path));
            Err(fail(problems))
        }
    }
}

/// The addresses of each upstream of each route (route -> upstream -> addresses).
pub type Resolved = Vec<Vec<Vec<SocketAddr>>>;

/// Every route's upstreams resolved, or every name that does not resolve, with its key path.
/// Blocking: call it off the request path.
pub fn resolve_routes(config: &Config) -> Result<Resolved, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(config.routes.len());
    for (i, route) in config.routes.iter().enumerate() {
        let mut upstreams = Vec::with_capacity(route.upstreams.len());
        for (j, hp) in route.upstreams.iter().enumerate() {
            match validate::resolve(hp) {
                Ok(found) => upstreams.push(found),
                Err(message) => {
                    problems.push(Problem {
                        path: format!("routes[{i}].upstreams[{j}]"),
                        message,
                    });
                    upstreams.push(Vec::new());
                }
            }
        }
        out.push(upstreams);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests;

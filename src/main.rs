//! The `wxgate` command: run | check | revoke | demo | mock-wechat | echo | token. `demo`, `mock-wechat`
//! and `echo` are the stand-ins, built with the `stand-ins` feature (on by default).

use clap::{Parser, Subcommand};
#[cfg(feature = "stand-ins")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wxgate::auth::jwt::{unix_now, Tokens};
use wxgate::auth::service::UserRevoked;
use wxgate::auth::Identity;
use wxgate::config;

/// glibc malloc showed up at ~8% of a proxied request's CPU in `perf`; jemalloc (what Pingora
/// deployments use) is faster for HTTP's many small short-lived allocations and, unlike
/// mimalloc, keeps RSS under the benchmark's 64 MiB at 256 connections. Its options are built in:
/// a background thread returns freed pages (Cargo feature `background_threads`) and pages unused
/// for 1 s go back (`.cargo/config.toml`); `_RJEM_MALLOC_CONF` overrides either at run time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "wxgate",
    version,
    about = "Authentication gateway for WeChat mini program backends"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground (SIGINT: stop now; SIGTERM: finish in-flight requests;
    /// SIGHUP: reload the configuration; SIGQUIT: hand the listeners to a new process started
    /// with --upgrade, then finish in-flight requests).
    Run {
        #[arg(short, long, env = "WXGATE_CONFIG", default_value = "gateway.toml")]
        config: PathBuf,
        /// Take the listening sockets from the running wxgate (send it SIGQUIT next).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration file: one OK line, or every problem with its key path.
    Check {
        #[arg(short, long, env = "WXGATE_CONFIG", default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// End every session of a user on every instance; with --block, refuse their logins too.
    /// Asks the running gateway through `[admin] listen` when configured, else Redis directly.
    Revoke {
        #[arg(long)]
        openid: String,
        /// Also refuse the user's logins for this long, e.g. "1h", "7d" (at most 365d).
        #[arg(long, value_parser = wxgate::admin::parse_block)]
        block: Option<Duration>,
        /// The user's mini program, with several `[[apps]]` (default: the first).
        #[arg(long)]
        appid: Option<String>,
        #[arg(short, long, env = "WXGATE_CONFIG", default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// The stand-in WeChat, an echo app and the gateway together on loopback.
    #[cfg(feature = "stand-ins")]
    Demo {
        #[arg(long, default_value = config::DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
    /// A stand-in for api.weixin.qq.com (jscode2session with one-time codes and errcodes).
    #[cfg(feature = "stand-ins")]
    MockWechat {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// Refuse other appids with 40013.
        #[arg(long)]
        appid: Option<String>,
        /// Refuse other secrets with 40125.
        #[arg(long)]
        secret: Option<String>,
        /// Lifetime of the access tokens it issues, in seconds.
        #[arg(long, default_value_t = 7200)]
        token_ttl: u64,
    },
    /// An upstream app that answers with the request it received, as JSON.
    #[cfg(feature = "stand-ins")]
    Echo {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
    },
    /// Generate a token signing key pair: DIR/<kid>.pem (PKCS#8 private key, mode 0600) and
    /// DIR/<kid>.pub.pem (public key); prints the [jwt] lines to paste.
    Keygen {
        /// ES256 or EdDSA.
        #[arg(long, value_parser = parse_key_algorithm)]
        algorithm: wxgate::keys::JwtAlgorithm,
        /// The key id written into token headers, e.g. "2026-11".
        #[arg(long)]
        kid: String,
        /// The directory to write the two files into (it must exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Mint a token with the configured key (for load tests and debugging).
    Token {
        #[arg(long)]
        openid: String,
        #[arg(long)]
        unionid: Option<String>,
        /// The mini program (the token's `aud`), with several `[[apps]]` (default: the first).
        #[arg(long)]
        appid: Option<String>,
        /// Lifetime, e.g. "10m" (default: jwt.ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[arg(short, long, env = "WXGATE_CONFIG", default_value = "gateway.toml")]
        config: PathBuf,
    },
}

#[cfg(feature = "stand-ins")]
fn init_logging() {
    init_logging_as(wxgate::config::LogFormat::Text);
}

fn init_logging_as(format: wxgate::config::LogFormat) {
    wxgate::logging::init(format);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, upgrade } => load(&config).and_then(|c| {
            init_logging_as(c.log.format);
            let options = wxgate::app::RunOptions {
                config_path: Some(config),
                upgrade,
            };
            wxgate::app::run(c, options)
        }),
        Command::Check { config } => check(&config),
        Command::Revoke {
            openid,
            block,
            appid,
            config,
        } => match revoke(&config, &openid, block, appid.as_deref()) {
            Ok(()) => Ok(()),
            Err((code, message)) => {
                eprintln!("wxgate: {message}");
                return code;
            }
        },
        #[cfg(feature = "stand-ins")]
        Command::Demo { listen } => {
            init_logging();
            wxgate::demo::run(listen)
        }
        #[cfg(feature = "stand-ins")]
        Command::MockWechat {
            listen,
            appid,
            secret,
            token_ttl,
        } => {
            init_logging();
            let opts = wxgate::mock::MockWechatOptions {
                appid,
                secret,
                token_ttl,
            };
            serve("mock-wechat", listen, |l| async move {
                wxgate::mock::serve_wechat(l, opts).await
            })
        }
        #[cfg(feature = "stand-ins")]
        Command::Echo { listen } => {
            init_logging();
            serve("echo", listen, wxgate::mock::serve_echo)
        }
        Command::Token {
            openid,
            unionid,
            appid,
            ttl,
            config,
        } => token(&config, openid, unionid, appid, ttl),
        Command::Keygen {
            algorithm,
            kid,
            out,
        } => keygen(algorithm, &kid, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wxgate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> Result<config::Config, String> {
    config::load(path).map_err(|e| e.to_string())
}

fn check(path: &std::path::Path) -> Result<(), String> {
    let c = load(path)?;
    // Host names of upstreams are resolved as the gateway will at start-up and reload.
    wxgate::app::resolve(&c, &path.display().to_string()).map_err(|e| e.to_string())?;
    if let Some(tls) = &c.server.tls {
        wxgate::tls::install_crypto(tls.tls13_only);
        wxgate::app::load_certificate(tls, path)?;
    }
    println!(
        "{}: OK (listen {}, {} route{}, appid {})",
        path.display(),
        c.server.listen,
        c.routes.len(),
        if c.routes.len() == 1 { "" } else { "s" },
        c.appids().join(", ")
    );
    Ok(())
}

/// `wxgate revoke`: through the running gateway's admin listener when there is one (it then
/// logs and counts the revocation, whatever its store), else in Redis directly; a memory store
/// lives inside the running process, so without an admin listener it cannot be reached (exit 2).
fn revoke(
    path: &std::path::Path,
    openid: &str,
    block: Option<Duration>,
    appid: Option<&str>,
) -> Result<(), (ExitCode, String)> {
    let fail = |message: String| (ExitCode::FAILURE, message);
    wxgate::admin::check_openid(openid).map_err(|e| (ExitCode::from(2), e))?;
    let c = load(path).map_err(fail)?;
    let appid = app_of(&c, appid).map_err(|e| (ExitCode::from(2), e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let revoked = match (c.admin.listen, &c.session.store) {
        (Some(admin), _) => rt.block_on(revoke_via_admin(
            admin,
            c.admin.token.as_ref(),
            openid,
            block,
            appid,
        )),
        (None, config::StoreKind::Redis(_)) => {
            rt.block_on(revoke_in_redis(&c, openid, block, appid))
        }
        (None, config::StoreKind::Memory { .. }) => {
            return Err((
                ExitCode::from(2),
                format!(
                    "{}: the memory session store lives inside the running gateway; set \
                     [admin] listen so that `wxgate revoke` can ask it (or POST {} there)",
                    path.display(),
                    wxgate::admin::REVOKE_PATH
                ),
            ))
        }
    }
    .map_err(fail)?;
    let blocked = revoked.blocked_until.map_or(String::new(), |secs| {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(secs);
        format!(", blocked until {}", humantime::format_rfc3339_seconds(at))
    });
    println!(
        "revoked {} session(s) of {}{blocked}",
        revoked.sessions, revoked.openid
    );
    Ok(())
}

/// Ask the running gateway: `POST /sessions/revoke` on its admin listener.
async fn revoke_via_admin(
    admin: std::net::SocketAddr,
    token: Option<&wxgate::secret::Secret>,
    openid: &str,
    block: Option<Duration>,
    appid: &str,
) -> Result<UserRevoked, String> {
    let mut addr = admin;
    if addr.ip().is_unspecified() {
        // Listening on every address: this machine's loopback is one of them.
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}{}", wxgate::admin::REVOKE_PATH);
    let mut body = serde_json::json!({ "openid": openid, "appid": appid });
    if let Some(b) = block {
        body["block"] = humantime::format_duration(b).to_string().into();
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = client.post(&url).json(&body);
    if let Some(t) = token {
        request = request.bearer_auth(t.expose());
    }
    let resp = request.send().await.map_err(|e| {
        format!("cannot reach the admin listener at {url} (is wxgate running?): {e}")
    })?;
    let status = resp.status();
    let answer: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("{url} answered {status} without a JSON envelope: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{url} answered {status}: {} ({})",
            answer["message"].as_str().unwrap_or("?"),
            answer["code"].as_str().unwrap_or("?")
        ));
    }
    serde_json::from_value(answer["data"].clone())
        .map_err(|e| format!("{url} answered an unexpected body: {e}"))
}

/// Revoke in Redis directly: every instance learns it from there within a sync interval.
async fn revoke_in_redis(
    c: &config::Config,
    openid: &str,
    block: Option<Duration>,
    appid: &str,
) -> Result<UserRevoked, String> {
    let clock = std::sync::Arc::new(wxgate::session::SystemClock);
    let now_ms = wxgate::session::Clock::now_ms(&*clock);
    let store = wxgate::app::build_store(c, appid, clock)?;
    let until = unix_now() + Tokens::new(&c.jwt, &c.appids()).max_lifetime().as_secs();
    let block_until_ms = block.map(|b| now_ms + b.as_millis() as u64);
    let sessions = store
        .revoke_user(openid, until, block_until_ms)
        .await
        .map_err(|e| format!("session store: {e}"))?;
    Ok(UserRevoked {
        openid: openid.to_string(),
        sessions,
        blocked_until: block_until_ms.map(|ms| ms.div_ceil(1000)),
    })
}

fn token(
    path: &std::path::Path,
    openid: String,
    unionid: Option<String>,
    appid: Option<String>,
    ttl: Option<Duration>,
) -> Result<(), String> {
    let c = load(path)?;
    let tokens = Tokens::new(&c.jwt, &c.appids());
    let identity = Identity {
        values: Default::default(),
        openid,
        unionid,
        sid: wxgate::session::new_sid(),
        appid: app_of(&c, appid.as_deref())?.into(),
    };
    let signed = tokens.sign_for(&identity, unix_now(), ttl.unwrap_or(c.jwt.ttl))?;
    println!("{}", signed.token);
    Ok(())
}

/// The appid a command acts for: the one asked for (it must be configured), else the first.
fn app_of<'a>(c: &'a config::Config, appid: Option<&str>) -> Result<&'a str, String> {
    match appid {
        None => Ok(c.first_app().appid.as_str()),
        Some(a) => c
            .appids()
            .into_iter()
            .find(|known| *known == a)
            .ok_or_else(|| {
                format!(
                    "appid {a:?} is not configured (apps: {})",
                    c.appids().join(", ")
                )
            }),
    }
}

fn parse_key_algorithm(text: &str) -> Result<wxgate::keys::JwtAlgorithm, String> {
    use wxgate::keys::JwtAlgorithm;
    match JwtAlgorithm::parse(text) {
        Some(a @ (JwtAlgorithm::ES256 | JwtAlgorithm::EdDSA)) => Ok(a),
        _ => Err("ES256 or EdDSA (HS256 uses a secret: `openssl rand -base64 48`)".into()),
    }
}

fn keygen(
    algorithm: wxgate::keys::JwtAlgorithm,
    kid: &str,
    out: &std::path::Path,
) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if kid.is_empty()
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || kid.starts_with('.')
    {
        return Err(format!(
            "--kid {kid:?}: use letters, digits, '-', '_' or '.' (it names the files)"
        ));
    }
    let (private, public) = wxgate::keys::generate(algorithm)?;
    let private_path = out.join(format!("{kid}.pem"));
    let public_path = out.join(format!("{kid}.pub.pem"));
    for path in [&private_path, &public_path] {
        if path.exists() {
            return Err(format!("{} exists; not overwriting it", path.display()));
        }
    }
    let write = |path: &std::path::Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(&private_path, &private, 0o600)?;
    write(&public_path, &public, 0o644)?;
    println!(
        "# wrote {} (private, mode 0600) and {}",
        private_path.display(),
        public_path.display()
    );
    println!("[jwt]");
    println!("algorithm = {:?}", algorithm.name());
    println!("private_key = {:?}", private_path.display().to_string());
    println!("kid = {kid:?}");
    Ok(())
}

/// Serve a stand-in on `listen`, printing its address first (tests read it to learn the port).
#[cfg(feature = "stand-ins")]
fn serve<F, Fut>(what: &str, listen: SocketAddr, f: F) -> Result<(), String>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("{what} listening on http://{addr}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        f(listener).await.map_err(|e| e.to_string())
    })
}

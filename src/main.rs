//! The `wxgate` command: run | check | demo | mock-wechat | echo | token. `demo`, `mock-wechat`
//! and `echo` are the stand-ins, built with the `stand-ins` feature (on by default).

use clap::{Parser, Subcommand};
#[cfg(feature = "stand-ins")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wxgate::auth::jwt::{unix_now, Tokens};
use wxgate::auth::Identity;
use wxgate::config;

/// glibc malloc showed up at ~8% of a proxied request's CPU in `perf`; jemalloc (what Pingora
/// deployments use) is faster for HTTP's many small short-lived allocations and, unlike
/// mimalloc, keeps RSS under the benchmark's 64 MiB at 256 connections.
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
    /// Mint a token with the configured key (for load tests and debugging).
    Token {
        #[arg(long)]
        openid: String,
        #[arg(long)]
        unionid: Option<String>,
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
            ttl,
            config,
        } => token(&config, openid, unionid, ttl),
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
        c.wechat.appid
    );
    Ok(())
}

fn token(
    path: &std::path::Path,
    openid: String,
    unionid: Option<String>,
    ttl: Option<Duration>,
) -> Result<(), String> {
    let c = load(path)?;
    let tokens = Tokens::new(&c.jwt, &c.wechat.appid);
    let identity = Identity {
        openid,
        unionid,
        sid: wxgate::session::new_sid(),
    };
    let signed = tokens.sign_for(&identity, unix_now(), ttl.unwrap_or(c.jwt.ttl))?;
    println!("{}", signed.token);
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

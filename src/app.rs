//! Start-up and reload. A [`Snapshot`] is built from a validated [`Config`]: the route table
//! (upstreams resolved here, off the request path) and the services the configuration selects.
//! On reload the services whose sections did not change are carried over (the session store and
//! its revocation list, the WeChat client and its access token, the token keys and their cache,
//! rate-limit counters); what is rebuilt is said in the log.

use crate::admin::{AdminApp, ReloadStatus};
use crate::auth::jwt::Tokens;
use crate::auth::{App, Apps, Login, LoginParts, Sessions};
use crate::config::{self, Config, LoadError, StoreKind};
use crate::metrics::METRICS;
use crate::proxy::drain::{Drain, InFlight};
use crate::proxy::limit::PerMinute;
use crate::proxy::route::{Route, RouteTable};
use crate::proxy::{Gateway, Live, Snapshot};
use crate::session::{
    Clock, MemoryStore, RedisStore, RevocationSync, Revocations, SessionStore, SystemClock,
};
use crate::tls;
use crate::wechat::WechatClient;
use arc_swap::ArcSwap;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The session store the configuration asks for, for the app `appid` (Redis keys carry it).
pub fn build_store(
    config: &Config,
    appid: &str,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn SessionStore>, String> {
    Ok(match &config.session.store {
        StoreKind::Memory { capacity } => Arc::new(MemoryStore::with_clock(*capacity, clock)),
        StoreKind::Redis(target) => Arc::new(
            RedisStore::for_target(target, appid, config.session.timeout)
                .map_err(|e| e.to_string())?,
        ),
    })
}

/// How long revocations may go unsynced before a shared store counts as down: a few failed
/// syncs in a row, each bounded by `session.timeout`.
fn stale_after(config: &Config) -> Duration {
    config.session.timeout * 2 + Duration::from_secs(1)
}

/// Build the snapshot for `config`, whose routes' upstreams are `resolved`. With `previous`,
/// reuse every service whose sections are unchanged; the second value names what was rebuilt.
pub fn build_snapshot(
    config: Config,
    resolved: &config::Resolved,
    previous: Option<&Snapshot>,
) -> Result<(Snapshot, Vec<&'static str>), String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut rebuilt = Vec::new();
    let appids = config.appids();
    // One set of token keys for every app (each token names its app in `aud`).
    let tokens = match previous {
        Some(p) if p.config.jwt == config.jwt && p.config.appids() == appids => {
            p.login().parts().tokens
        }
        _ => {
            rebuilt.push("token keys");
            Arc::new(Tokens::new(&config.jwt, &appids))
        }
    };
    let same_store = |c: &Config| {
        c.session.store == config.session.store && c.session.timeout == config.session.timeout
    };
    let mut apps = Vec::with_capacity(config.apps.len());
    for app in &config.apps {
        let appid = app.wechat.appid.as_str();
        // The same app (by appid) in the running snapshot, with its configuration.
        let old = previous.and_then(|p| {
            let running = p.apps.by_appid(appid)?;
            let c = p.config.apps.iter().find(|a| a.wechat.appid == appid)?;
            Some((p, running, c))
        });
        let old_parts = old.map(|(_, running, _)| running.login.parts());
        let mut changed = false;
        let wechat = match (&old, &old_parts) {
            (Some((_, _, c)), Some(parts)) if c.wechat == app.wechat => parts.wechat.clone(),
            _ => {
                changed = true;
                rebuilt.push("WeChat client");
                Arc::new(WechatClient::new(&app.wechat)?)
            }
        };
        let (store, revocations) = match (&old, &old_parts) {
            (Some((p, _, _)), Some(parts)) if same_store(&p.config) => {
                let s = &parts.sessions;
                s.revocations
                    .set_policy(config.session.fail_mode, stale_after(&config));
                (s.store.clone(), s.revocations.clone())
            }
            _ => {
                changed = true;
                rebuilt.push("session store");
                let store = build_store(&config, appid, clock.clone())?;
                let revocations = Arc::new(Revocations::new(
                    store.is_shared(),
                    config.session.fail_mode,
                    stale_after(&config),
                ));
                if let Some(parts) = &old_parts {
                    revocations.carry_over(&parts.sessions.revocations);
                }
                (store, revocations)
            }
        };
        let parts = LoginParts {
            wechat,
            tokens: tokens.clone(),
            sessions: Sessions {
                store,
                revocations,
                clock: clock.clone(),
                ttl: config.session.ttl,
            },
        };
        let same_tokens = old_parts
            .as_ref()
            .is_some_and(|o| Arc::ptr_eq(&o.tokens, &tokens));
        let login = match old {
            Some((p, running, _))
                if !changed && same_tokens && p.config.session.ttl == config.session.ttl =>
            {
                running.login.clone()
            }
            Some((_, running, _)) => Arc::new(running.login.with_parts(parts)),
            None => Arc::new(Login::new(parts)),
        };
        apps.push(App {
            name: app.name.clone(),
            login,
        });
    }
    rebuilt.dedup();
    let apps = Apps::new(apps).ok_or("no mini program configured")?;
    let limit = |per_minute: u32, old: Option<&Arc<PerMinute>>| match old {
        Some(l) if l.limit() == per_minute => l.clone(),
        _ => Arc::new(PerMinute::new(per_minute)),
    };
    let login_limit = limit(
        config.rate_limit.login_per_minute,
        previous.map(|p| &p.login_limit),
    );
    let phone_limit = limit(
        config.rate_limit.phone_per_minute,
        previous.map(|p| &p.phone_limit),
    );
    let routes = config
        .routes
        .iter()
        .zip(resolved)
        .map(|(c, addrs)| {
            let before = previous.and_then(|p| p.routes.iter().find(|r| r.name == c.name));
            let mut route = Route::new(
                c,
                addrs,
                before.map(|r| &**r),
                config.server.resolve_interval,
            )?;
            route.cloudhosting = c.identity_headers.unwrap_or(config.auth.identity_headers)
                == config::IdentityMode::CloudHosting;
            // `apps` names apps; tokens name appids.
            route.apps = c.apps.as_ref().map(|names| {
                names
                    .iter()
                    .filter_map(|n| apps.by_name(n).map(|a| a.login.appid().clone()))
                    .collect()
            });
            Ok::<_, String>(route)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let generation = previous.map_or(1, |p| p.generation + 1);
    let snapshot = Snapshot::new(
        generation,
        Arc::new(config),
        RouteTable::new(routes),
        apps,
        login_limit,
        phone_limit,
    );
    Ok((snapshot, rebuilt))
}

/// Resolve the upstreams of `config` (blocking DNS), as a load error naming each bad key.
pub fn resolve(config: &Config, source: &str) -> Result<config::Resolved, LoadError> {
    config::resolve_routes(config).map_err(|problems| {
        LoadError::Invalid(config::ConfigError {
            source: source.to_string(),
            problems,
        })
    })
}

/// Reloads on SIGHUP: the file is read and checked as `wxgate check` does, then a new snapshot
/// replaces the live one. A file with problems changes nothing.
pub struct Reloader {
    path: PathBuf,
    live: Live,
    status: Arc<ReloadStatus>,
    /// The served certificate, re-read on each reload when TLS is on.
    certs: Option<Arc<tls::CertResolver>>,
    /// One reload at a time.
    busy: Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        live: Live,
        status: Arc<ReloadStatus>,
        certs: Option<Arc<tls::CertResolver>>,
    ) -> Self {
        Reloader {
            path,
            live,
            status,
            certs,
            busy: Mutex::new(()),
        }
    }

    /// Reload now; the outcome is logged, counted and shown on the status page.
    pub fn reload(&self) -> Result<u64, String> {
        let _one = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = self.try_reload();
        match &outcome {
            Ok((generation, rebuilt)) => {
                METRICS.reloads.with_label_values(&["ok"]).inc();
                METRICS.last_reload_success.set(unix_now_f64());
                let rebuilt = if rebuilt.is_empty() {
                    "nothing (routes and settings only)".to_string()
                } else {
                    rebuilt.join(", ")
                };
                tracing::info!(generation, rebuilt = %rebuilt, "configuration reloaded");
                self.status.record(Ok(*generation));
            }
            Err(message) => {
                METRICS.reloads.with_label_values(&["error"]).inc();
                // One line per problem: each is found by grepping for it.
                let mut lines = message.lines();
                tracing::error!(
                    "reload refused, the running configuration stays: {}",
                    lines.next().unwrap_or_default()
                );
                for problem in lines {
                    tracing::error!("reload refused: {}", problem.trim());
                }
                self.status.record(Err(message.clone()));
            }
        }
        outcome.map(|(generation, _)| generation)
    }

    fn try_reload(&self) -> Result<(u64, Vec<&'static str>), String> {
        let config = config::load(&self.path).map_err(|e| e.to_string())?;
        let resolved =
            resolve(&config, &self.path.display().to_string()).map_err(|e| e.to_string())?;
        // The certificate files are read again (renewed in place, or other paths): one that does
        // not load refuses the whole reload, and the running certificate stays.
        let cert = match (&config.server.tls, &self.certs) {
            (Some(tls_config), Some(_)) => Some(load_certificate(tls_config, &self.path)?),
            _ => None,
        };
        let current = self.live.load_full();
        warn_start_up_only(&current.config, &config);
        let (snapshot, mut rebuilt) = build_snapshot(config, &resolved, Some(&current))?;
        let generation = snapshot.generation;
        self.live.store(Arc::new(snapshot));
        if let (Some(cert), Some(certs)) = (cert, &self.certs) {
            certs.replace(cert);
            rebuilt.push("certificate");
        }
        Ok((generation, rebuilt))
    }
}

/// Keys a running process cannot apply: its listeners and runtimes exist already.
fn warn_start_up_only(old: &Config, new: &Config) {
    let changed = [
        (
            "server.listen",
            old.server.listen != new.server.listen
                || old.server.also_listen != new.server.also_listen,
        ),
        ("server.threads", old.server.threads != new.server.threads),
        (
            "server.work_stealing",
            old.server.work_stealing != new.server.work_stealing,
        ),
        (
            "server.upstream_keepalive",
            old.server.upstream_keepalive != new.server.upstream_keepalive,
        ),
        (
            "server.header_timeout",
            old.server.header_timeout != new.server.header_timeout,
        ),
        (
            "server.keepalive_timeout",
            old.server.keepalive_timeout != new.server.keepalive_timeout,
        ),
        ("admin.listen", old.admin.listen != new.admin.listen),
        (
            "relay.listen",
            old.relay.as_ref().map(|r| r.listen) != new.relay.as_ref().map(|r| r.listen),
        ),
        (
            "server.plain_listen",
            old.server.plain_listen != new.server.plain_listen,
        ),
        (
            "[server.tls] (on/off, min_version, http2)",
            old.server.tls.as_ref().map(|t| (t.tls13_only, t.http2))
                != new.server.tls.as_ref().map(|t| (t.tls13_only, t.http2)),
        ),
        ("log.format", old.log.format != new.log.format),
    ];
    for (key, _) in changed.iter().filter(|(_, c)| *c) {
        tracing::warn!(
            "{key} changed: it takes effect at the next start or upgrade, not on reload"
        );
    }
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The certificate of `[server.tls]`, or its problems as a load error of the file at `source`.
pub fn load_certificate(
    config: &config::TlsConfig,
    source: &Path,
) -> Result<pingora::tls::sign::CertifiedKey, String> {
    tls::load(config).map_err(|problems| {
        LoadError::Invalid(config::ConfigError {
            source: source.display().to_string(),
            problems,
        })
        .to_string()
    })
}

/// How `run` starts.
pub struct RunOptions {
    /// The file the configuration came from (reloaded on SIGHUP).
    pub config_path: Option<PathBuf>,
    /// Take the listening sockets from a running wxgate (`wxgate run --upgrade`).
    pub upgrade: bool,
}

/// The path of the socket through which an upgrade hands over the listeners. One per listen
/// port, so that instances on one machine do not take each other's sockets.
pub fn upgrade_socket(config: &Config) -> String {
    format!("/tmp/wxgate-{}.upgrade.sock", config.server.listen.port())
}

/// Run the gateway in the foreground until SIGINT (fast), SIGTERM (graceful) or SIGQUIT
/// (graceful, after handing the listeners to a new process started with `--upgrade`).
/// Linux's default ceiling on a process's descriptors (`fs.nr_open`).
const OPEN_FILES_WANTED: u64 = 1 << 20;

/// Every client and upstream connection takes a descriptor: raise the soft limit on them to the
/// hard one (at most [`OPEN_FILES_WANTED`]), as nginx's `worker_rlimit_nofile` or Go's runtime
/// do, so that a shell's default of 1024 does not cap the gateway at ~500 proxied connections.
/// A limit that cannot be raised is kept, and said.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(OPEN_FILES_WANTED) {
        Ok(limit) => tracing::info!("open files limit: {limit}"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
}

pub fn run(config: Config, options: RunOptions) -> Result<(), String> {
    tls::install_crypto(config.server.tls.as_ref().is_some_and(|t| t.tls13_only));
    raise_open_files_limit();
    let listen = config.server.listen;
    if !options.upgrade {
        // Fail with a clear message now rather than inside Pingora's listener start-up. (An
        // upgrade takes the running process's sockets: the port is busy on purpose.)
        let extra = config
            .admin
            .listen
            .into_iter()
            .chain(config.server.plain_listen)
            .chain(config.relay.as_ref().map(|r| r.listen))
            .chain(config.server.also_listen.iter().copied());
        for addr in std::iter::once(listen).chain(extra) {
            std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        }
    }

    // SIGINT is a fast stop, which Pingora implements as an immediate exit, but it installs its
    // handler only once its services (listeners included) are up: a SIGINT in that window, with
    // SIGINT inherited as ignored (a background job of a non-interactive shell), was lost.
    // Exiting from our own handler, installed before any listener exists, closes the window.
    signal_hook::flag::register_conditional_shutdown(
        signal_hook::consts::SIGINT,
        0,
        Arc::new(std::sync::atomic::AtomicBool::new(true)),
    )
    .map_err(|e| format!("cannot handle SIGINT: {e}"))?;

    let source = options
        .config_path
        .as_deref()
        .map_or_else(|| "(built-in)".to_string(), |p| p.display().to_string());
    let resolved = resolve(&config, &source).map_err(|e| e.to_string())?;
    let summary = format!(
        "{} route{}, appid {}, {} session store",
        config.routes.len(),
        if config.routes.len() == 1 { "" } else { "s" },
        config.appids().join(", "),
        match config.session.store {
            StoreKind::Memory { .. } => "memory",
            StoreKind::Redis(_) => "redis",
        }
    );
    let admin_listen = config.admin.listen;
    let relay_listen = config.relay.as_ref().map(|r| r.listen);
    let plain_listen = config.server.plain_listen;
    let header_timeout = config.server.header_timeout;
    let keepalive_timeout = config.server.keepalive_timeout;
    let listeners: Vec<_> = std::iter::once(listen)
        .chain(config.server.also_listen.iter().copied())
        .collect();
    let tls_config = config.server.tls.clone();
    let certs = match &tls_config {
        Some(t) => {
            let path = options.config_path.clone().unwrap_or_default();
            Some(Arc::new(tls::CertResolver::new(load_certificate(
                t, &path,
            )?)))
        }
        None => None,
    };
    let grace = config.server.grace_period;
    let conf = ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        upstream_keepalive_pool_size: config.server.upstream_keepalive,
        // Upper bound only: the drain service exits as soon as in-flight requests are done.
        grace_period_seconds: Some(grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: upgrade_socket(&config),
        // Pingora's timeouts and sleeps of 1 s and more (sleeps: pingora-timeout patch 20) on
        // tokio's timer, driven by each worker's own event loop, rather than Pingora's timer
        // thread, which woke 100 times a second on the workers' cores, idle or not, and took a
        // lock on each worker's timer tree with every wake: 2% fewer instructions per proxied
        // request (README, "Performance", step 14).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let (snapshot, _) = build_snapshot(config, &resolved, None)?;
    METRICS.last_reload_success.set(unix_now_f64());
    let live: Live = Arc::new(ArcSwap::from_pointee(snapshot));
    let status = Arc::new(ReloadStatus::new(source));

    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let in_flight = InFlight::default();
    crate::proxy::fast::prepare();
    // An h2 request Pingora refuses for its authority (`:authority` and `Host` disagreeing...)
    // before any filter sees it gets the envelope too (pingora-core patch 19).
    pingora::protocols::http::v2::server::set_rejection_body(
        http::HeaderValue::from_static(crate::reply::JSON_CONTENT_TYPE),
        crate::reply::Reject::BadRequest { status: 400 }.body(),
    );
    let mut gateway = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway::new(live.clone(), in_flight.clone()),
    );
    let mut http_options = pingora::apps::HttpServerOptions::default();
    http_options.header_timeout = Some(header_timeout);
    http_options.keepalive_timeout = Some(keepalive_timeout.as_secs());
    // An HTTP/2 connection with no stream open (or no preface yet) closes after the time an
    // HTTP/1 keep-alive connection waits for its next request (Pingora's default: never).
    http_options.h2_idle_timeout = Some(keepalive_timeout);
    gateway.server_options = Some(http_options.clone());
    let mut proxy = pingora::services::listening::Service::new(
        "wxgate".to_string(),
        crate::proxy::keepalive::LeanKeepalive::new(gateway),
    );
    match (&tls_config, &certs) {
        (Some(t), Some(certs)) => {
            // One settings value per listener (Pingora takes it by value).
            for addr in &listeners {
                let mut settings = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(
                    tls::NoCallbacks,
                ))
                .map_err(|e| format!("cannot set up TLS: {e}"))?;
                settings.set_cert_resolver(certs.clone());
                if t.http2 {
                    settings.enable_h2();
                }
                proxy.add_listener(listener(addr).tls(settings));
            }
            if let Some(plain) = plain_listen {
                proxy.add_listener(listener(&plain));
            }
        }
        _ => {
            for addr in &listeners {
                proxy.add_listener(listener(addr));
            }
        }
    }
    server.add_service(proxy);
    if let Some(admin_listen) = admin_listen {
        let app = AdminApp::new(live.clone(), status.clone(), in_flight.clone());
        // The same header deadline and idle timeout as the main listeners.
        let mut app = pingora::apps::http_app::HttpServer::new_app(app);
        app.server_options = Some(http_options.clone());
        let mut admin = pingora::services::listening::Service::new("admin".to_string(), app);
        admin.add_tcp(&admin_listen.to_string());
        server.add_service(admin);
    }
    if let Some(relay_listen) = relay_listen {
        let app = crate::relay::RelayApp::new(live.clone(), http_options);
        let mut relay = pingora::services::listening::Service::new("relay".to_string(), app);
        relay.add_tcp(&relay_listen.to_string());
        server.add_service(relay);
        tracing::info!("WeChat API relay on http://{relay_listen}");
    }
    let sync_live = live.clone();
    server.add_service(background_service(
        "revocation sync",
        RevocationSync {
            current: Box::new(move || {
                let s = sync_live.load();
                s.apps
                    .iter()
                    .map(|app| {
                        let sessions = app.login.sessions();
                        (sessions.store.clone(), sessions.revocations.clone())
                    })
                    .collect()
            }),
            clock: Arc::new(SystemClock),
        },
    ));
    server.add_service(background_service(
        "upstream health",
        crate::proxy::pool::UpstreamHealth { live: live.clone() },
    ));
    server.add_service(background_service(
        "drain",
        Drain {
            in_flight,
            grace_period: grace,
        },
    ));
    if let Some(path) = options.config_path {
        let reloader = Reloader::new(path, live.clone(), status, certs);
        spawn_reload_on_sighup(reloader)?;
    }
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    let plain = plain_listen.map_or(String::new(), |p| format!(", http://{p}"));
    match admin_listen {
        Some(admin) => tracing::info!(
            "wxgate listening on {scheme}://{listen}{plain}, admin on http://{admin} ({summary})"
        ),
        None => tracing::info!("wxgate listening on {scheme}://{listen}{plain} ({summary})"),
    }
    server.run_forever()
}

/// A client-facing listener. Pingora 0.9 gives each accepted connection a 64 KiB read buffer,
/// kept for the connection's life: with many idle keep-alive clients that is most of the
/// gateway's memory. Requests are read straight into the parser's own buffer instead (one read
/// per small request either way); writes stay buffered, so a header and a small body still leave
/// in one write.
fn listener(addr: &std::net::SocketAddr) -> pingora::listeners::ListenerConfig {
    let buffers = pingora::listeners::L4BufferSettings {
        read: Some(0),
        write: None,
    };
    pingora::listeners::ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers)
}

/// A thread that waits for SIGHUP and reloads; a failed reload leaves the running config.
fn spawn_reload_on_sighup(reloader: Reloader) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                tracing::info!("SIGHUP: reloading {}", reloader.path.display());
                let _ = reloader.reload();
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the reload thread: {e}"))
}

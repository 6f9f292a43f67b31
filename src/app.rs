//! Start-up: build every long-lived piece once from a validated [`Config`] (keys, validation,
//! routes, resolved upstreams, HTTP client, session store), then hand them to Pingora.

use crate::auth::jwt::Tokens;
use crate::auth::login::{Login, Sessions};
use crate::config::{Config, StoreKind};
use crate::proxy::drain::{Drain, InFlight};
use crate::proxy::{Gateway, GatewayState};
use crate::session::{
    Clock, MemoryStore, RedisStore, RevocationSync, Revocations, SessionStore, SystemClock,
};
use crate::wechat::WechatClient;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use std::sync::Arc;

/// The session store the configuration asks for.
pub fn build_store(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn SessionStore>, String> {
    Ok(match &config.session.store {
        StoreKind::Memory { capacity } => Arc::new(MemoryStore::with_clock(*capacity, clock)),
        StoreKind::Redis { url } => Arc::new(
            RedisStore::new(url, &config.wechat.appid, config.session.timeout)
                .map_err(|e| e.to_string())?,
        ),
    })
}

/// The gateway's shared state, ready to serve, and the background task that keeps its
/// revocation list in step when the store is shared.
pub fn build_state(config: &Config) -> Result<(Arc<GatewayState>, Option<RevocationSync>), String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let tokens = Arc::new(Tokens::new(&config.jwt, &config.wechat.appid));
    let wechat = Arc::new(WechatClient::new(&config.wechat)?);
    let store = build_store(config, clock.clone())?;
    // Stale once a few syncs in a row have failed (each is bounded by session.timeout).
    let stale_after = config.session.timeout * 2 + std::time::Duration::from_secs(1);
    let revocations = Arc::new(Revocations::new(
        store.is_shared(),
        config.session.fail_mode,
        stale_after,
    ));
    let sync = store.is_shared().then(|| RevocationSync {
        revocations: revocations.clone(),
        store: store.clone(),
        clock: clock.clone(),
    });
    let sessions = Sessions {
        store,
        revocations,
        clock,
        ttl: config.session.ttl,
    };
    let login = Arc::new(Login::new(wechat, tokens, sessions));
    Ok((Arc::new(GatewayState::new(config, login)?), sync))
}

/// Run the gateway in the foreground until SIGINT (fast) or SIGTERM (graceful).
pub fn run(config: Config) -> Result<(), String> {
    let listen = config.server.listen;
    // Fail with a clear message now rather than inside Pingora's listener start-up.
    std::net::TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;

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

    let (state, sync) = build_state(&config)?;
    let grace = config.server.grace_period;
    let conf = ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        // Upper bound only: the drain service exits as soon as in-flight requests are done.
        grace_period_seconds: Some(grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None::<Opt>, conf);
    server.bootstrap();

    let in_flight = InFlight::default();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(state, in_flight.clone()),
        "wxgate",
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    if let Some(sync) = sync {
        server.add_service(background_service("revocation sync", sync));
    }
    server.add_service(background_service(
        "drain",
        Drain {
            in_flight,
            grace_period: grace,
        },
    ));
    tracing::info!(
        "wxgate listening on http://{listen} ({} route{}, appid {}, {} session store)",
        config.routes.len(),
        if config.routes.len() == 1 { "" } else { "s" },
        config.wechat.appid,
        match config.session.store {
            StoreKind::Memory { .. } => "memory",
            StoreKind::Redis { .. } => "redis",
        }
    );
    server.run_forever()
}

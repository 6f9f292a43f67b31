//! Start-up: build every long-lived piece once from a validated [`Config`] (keys, validation,
//! routes, resolved upstreams, HTTP client, session store), then hand them to Pingora.

use crate::auth::jwt::Tokens;
use crate::auth::login::Login;
use crate::config::Config;
use crate::proxy::drain::{Drain, InFlight};
use crate::proxy::{Gateway, GatewayState};
use crate::session::{MemoryStore, SessionStore};
use crate::wechat::WechatClient;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use std::sync::Arc;

/// Sessions the embedded store keeps at most.
const MEMORY_STORE_CAPACITY: usize = 1_000_000;

/// The gateway's shared state, ready to serve.
pub fn build_state(config: &Config) -> Result<Arc<GatewayState>, String> {
    let tokens = Arc::new(Tokens::new(&config.jwt, &config.wechat.appid));
    let wechat = WechatClient::new(&config.wechat)?;
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(MEMORY_STORE_CAPACITY));
    // A session lives as long as the token that names it.
    let login = Arc::new(Login::new(wechat, tokens, store, config.jwt.ttl));
    Ok(Arc::new(GatewayState::new(config, login)?))
}

/// Run the gateway in the foreground until SIGINT (fast) or SIGTERM (graceful).
pub fn run(config: Config) -> Result<(), String> {
    let listen = config.server.listen;
    // Fail with a clear message now rather than inside Pingora's listener start-up.
    std::net::TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;

    let state = build_state(&config)?;
    let grace = config.server.grace_period;
    let conf = ServerConf {
        threads: config.server.threads,
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
    server.add_service(background_service(
        "drain",
        Drain {
            in_flight,
            grace_period: grace,
        },
    ));
    tracing::info!(
        "wxgate listening on http://{listen} ({} route{}, appid {})",
        config.routes.len(),
        if config.routes.len() == 1 { "" } else { "s" },
        config.wechat.appid
    );
    server.run_forever()
}

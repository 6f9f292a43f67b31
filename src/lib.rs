//! wxgate: an authentication gateway for WeChat mini program backends, built on Pingora.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
#[cfg(feature = "stand-ins")]
pub mod demo;
pub mod keys;
pub mod logging;
pub mod metrics;
#[cfg(feature = "stand-ins")]
pub mod mock;
pub mod proxy;
pub mod relay;
pub mod reply;
pub mod secret;
pub mod session;
pub mod tls;
pub mod wechat;

//! Authentication: our tokens (`jwt`), where a client puts them (`extract`), the auth service
//! (`service`, with the user's phone and encrypted data in `user_data`) and the endpoints the
//! gateway answers itself (`endpoints`).

pub mod apps;
pub mod endpoints;
pub mod extract;
pub mod jwt;
pub mod service;
mod user_data;

pub use apps::{App, Apps};
pub use service::{Login, LoginParts, Sessions};

/// Who the caller is, as proven by a verified token. More than an openid: the unionid, the
/// session id and the mini program (appid: the token's `aud`) travel with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub openid: String,
    pub unionid: Option<String>,
    pub sid: String,
    /// The mini program the user logged in to (shared, not copied per request).
    pub appid: std::sync::Arc<str>,
}

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
    /// The header values the gateway forwards, made on first use (see [`Identity::values`]).
    pub values: HeaderValues,
}

/// An identity's forwarded header values (openid, appid, unionid; `None` for one that is not a
/// valid header value). Made once per verified token: the requests that present a cached token
/// share them instead of copying and checking each string again. Not part of equality.
#[derive(Debug, Clone, Default)]
pub struct HeaderValues(std::sync::OnceLock<[Option<http::HeaderValue>; 3]>);

impl PartialEq for HeaderValues {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HeaderValues {}

impl Identity {
    /// The openid, appid and unionid as header values.
    pub fn values(&self) -> &[Option<http::HeaderValue>; 3] {
        self.values.0.get_or_init(|| {
            let value = |s: &str| http::HeaderValue::from_str(s).ok();
            [
                value(&self.openid),
                value(&self.appid),
                self.unionid.as_deref().and_then(value),
            ]
        })
    }
}

//! Authentication: our tokens (`jwt`), where a client puts them (`extract`), and the endpoints
//! the gateway answers itself (`login`).

pub mod extract;
pub mod jwt;
pub mod login;

/// Who the caller is, as proven by a verified token. More than an openid: the unionid and the
/// session id travel with it (the appid and phone number will join them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub openid: String,
    pub unionid: Option<String>,
    pub sid: String,
}

//! The configuration file as written: serde structs with every field optional, so that a missing
//! key is reported by validation (with its path) instead of stopping deserialisation.
//! Unknown keys are collected by the loader (serde_ignored), not refused here.

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// A string-valued key whose type error says what to write instead of "expected a string".
macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $expecting:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Text;
                impl Visitor<'_> for Text {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name(v.to_string()))
                    }
                }
                d.deserialize_str(Text)
            }
        }
    };
}

text_type!(
    /// A humantime duration as written: `"3s"`, `"2h"`, `"30d"`.
    DurationText,
    "a duration string such as \"3s\""
);
text_type!(
    /// A size as written: `"16KiB"`, `"1MiB"`.
    SizeText,
    "a size string such as \"16KiB\""
);

#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    pub listen: Option<ListenList>,
    pub trusted_proxies: Option<Vec<String>>,
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    pub grace_period: Option<DurationText>,
    pub max_body: Option<SizeText>,
    pub plain_listen: Option<String>,
    pub tls: Option<RawTls>,
    pub resolve_interval: Option<DurationText>,
    pub upstream_keepalive: Option<usize>,
    pub fast_path: Option<bool>,
    pub batch_upstream_writes: Option<bool>,
    pub forwarded_headers: Option<bool>,
    pub header_timeout: Option<DurationText>,
    pub keepalive_timeout: Option<DurationText>,
}

/// `listen = "host:port"` or `listen = ["host:port", ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "an address \"host:port\" or an array of them")]
pub enum ListenList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub min_version: Option<String>,
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawWechat {
    pub appid: Option<String>,
    pub secret: Option<String>,
    pub api_base: Option<String>,
    pub timeout: Option<DurationText>,
    pub access_token_api: Option<String>,
}

/// One `[[apps]]` entry: a mini program, as `[wechat]` with a name.
#[derive(Debug, Default, Deserialize)]
pub struct RawApp {
    pub name: Option<String>,
    pub appid: Option<String>,
    pub secret: Option<String>,
    pub api_base: Option<String>,
    pub timeout: Option<DurationText>,
    pub access_token_api: Option<String>,
}

impl RawApp {
    /// Its WeChat keys, as a `[wechat]` table would hold them.
    pub fn wechat(self) -> (Option<String>, RawWechat) {
        let wechat = RawWechat {
            appid: self.appid,
            secret: self.secret,
            api_base: self.api_base,
            timeout: self.timeout,
            access_token_api: self.access_token_api,
        };
        (self.name, wechat)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RawJwt {
    pub algorithm: Option<String>,
    pub secret: Option<String>,
    pub ttl: Option<DurationText>,
    pub leeway: Option<DurationText>,
    pub issuer: Option<String>,
    pub private_key: Option<String>,
    pub kid: Option<String>,
    pub verify_keys: Option<Vec<RawVerifyKey>>,
    pub accept: Option<Vec<RawAccept>>,
}

/// `verify_keys = [{ kid = "2026-05", public_key = "...pub.pem" }]` (or `secret` for HS256).
#[derive(Debug, Default, Deserialize)]
pub struct RawVerifyKey {
    pub kid: Option<String>,
    pub public_key: Option<String>,
    pub secret: Option<String>,
}

/// `[[jwt.accept]]`: another backend's tokens, verify-only.
#[derive(Debug, Default, Deserialize)]
pub struct RawAccept {
    pub algorithm: Option<String>,
    pub secret: Option<String>,
    pub public_key: Option<String>,
    pub openid_claim: Option<String>,
    pub until: Option<String>,
    pub appid: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAuth {
    pub login_path: Option<String>,
    pub verify_path: Option<String>,
    pub refresh_path: Option<String>,
    pub logout_path: Option<String>,
    pub phone_path: Option<String>,
    pub decrypt_path: Option<String>,
    pub jwks_path: Option<String>,
    pub phone_header: Option<String>,
    pub identity_header: Option<String>,
    pub unionid_header: Option<String>,
    pub appid_header: Option<String>,
    pub identity_headers: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSession {
    pub store: Option<String>,
    pub redis_url: Option<String>,
    pub redis_sentinels: Option<Vec<String>>,
    pub redis_sentinel_primary: Option<String>,
    pub redis_cluster: Option<Vec<String>>,
    pub ttl: Option<DurationText>,
    pub timeout: Option<DurationText>,
    pub fail_mode: Option<String>,
    pub memory_capacity: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRoute {
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub upstreams: Option<Vec<String>>,
    pub auth: Option<String>,
    pub connect_timeout: Option<DurationText>,
    pub read_timeout: Option<DurationText>,
    pub upstream_idle_timeout: Option<DurationText>,
    pub forward_phone: Option<bool>,
    pub host: Option<String>,
    pub strip_prefix: Option<bool>,
    pub websocket: Option<bool>,
    pub websocket_idle_timeout: Option<DurationText>,
    pub upstream_ca: Option<String>,
    pub upstream_host: Option<String>,
    pub lb: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    pub retries: Option<u32>,
    pub rate_limit: Option<String>,
    pub rate_limit_burst: Option<u32>,
    pub apps: Option<Vec<String>>,
    pub identity_headers: Option<String>,
}

/// `health_check = { path = "/healthz", interval = "2s", ... }`; without `path`, a TCP connect.
#[derive(Debug, Default, Deserialize)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<DurationText>,
    pub timeout: Option<DurationText>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRateLimit {
    pub login_per_minute: Option<u32>,
    pub phone_per_minute: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLog {
    pub format: Option<String>,
    pub openid: Option<String>,
}

/// `[relay]`: the WeChat API relay for upstream apps.
#[derive(Debug, Default, Deserialize)]
pub struct RawRelay {
    pub listen: Option<String>,
    pub allow: Option<Vec<String>>,
    pub allow_from: Option<Vec<String>>,
    pub timeout: Option<DurationText>,
}

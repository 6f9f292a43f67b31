//! The configuration file as written: serde structs with every field optional, so that a missing
//! key is reported by validation (with its path) instead of stopping deserialisation.
//! Unknown keys are collected by the loader (serde_ignored), not refused here.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    pub listen: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    pub grace_period: Option<String>,
    pub max_body: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawWechat {
    pub appid: Option<String>,
    pub secret: Option<String>,
    pub api_base: Option<String>,
    pub timeout: Option<String>,
    pub access_token_api: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawJwt {
    pub algorithm: Option<String>,
    pub secret: Option<String>,
    pub ttl: Option<String>,
    pub leeway: Option<String>,
    pub issuer: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAuth {
    pub login_path: Option<String>,
    pub verify_path: Option<String>,
    pub refresh_path: Option<String>,
    pub logout_path: Option<String>,
    pub phone_path: Option<String>,
    pub decrypt_path: Option<String>,
    pub phone_header: Option<String>,
    pub identity_header: Option<String>,
    pub unionid_header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSession {
    pub store: Option<String>,
    pub redis_url: Option<String>,
    pub ttl: Option<String>,
    pub timeout: Option<String>,
    pub fail_mode: Option<String>,
    pub memory_capacity: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRoute {
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub upstreams: Option<Vec<String>>,
    pub auth: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub forward_phone: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRateLimit {
    pub login_per_minute: Option<u32>,
    pub phone_per_minute: Option<u32>,
}

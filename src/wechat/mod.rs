//! Talking to WeChat's server API (see ../shared/wechat-api.md for the facts this follows).

pub mod access_token;
mod client;
pub mod crypto;

pub use access_token::AccessTokens;
pub use client::{AccessToken, Code2Session, RelayBody, Relayed, WechatClient, WechatError};

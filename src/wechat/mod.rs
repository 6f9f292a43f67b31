//! Talking to WeChat's server API (see ../shared/wechat-api.md for the facts this follows).

mod client;

pub use client::{Code2Session, WechatClient, WechatError};

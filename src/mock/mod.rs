//! Stand-ins used by `wxgate demo`, `wxgate mock-wechat` and the tests: a local WeChat API
//! server and an echo upstream app.

pub mod echo;
#[cfg(test)]
mod testing;
pub mod wechat;

pub use echo::{echo_router, serve_echo};
pub use wechat::{serve_wechat, wechat_router, MockWechatOptions};

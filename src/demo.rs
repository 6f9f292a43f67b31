//! `wxgate demo`: the stand-in WeChat, an echo upstream app and the gateway together on loopback,
//! from a built-in configuration, with the curl lines to try.

use crate::config::{self, Config};
use crate::mock::{serve_echo, serve_wechat, MockWechatOptions};
use std::net::{SocketAddr, TcpListener};

pub const DEMO_APPID: &str = "wxdemo0000000000";
const DEMO_APPSECRET: &str = "demo-appsecret";

/// The demo's configuration, as a user would write it.
pub fn demo_config_text(listen: SocketAddr, wechat: SocketAddr, echo: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "{listen}"
threads = 2

[wechat]
appid = "{DEMO_APPID}"
secret = "${{DEMO_APPSECRET}}"
api_base = "http://{wechat}"
timeout = "3s"

[jwt]
secret = "${{DEMO_JWT_SECRET}}"
ttl = "2h"

# For trying things by hand: limits no one at a keyboard reaches (the defaults are 30 and 10).
[rate_limit]
login_per_minute = 6000
phone_per_minute = 6000

[[routes]]
name = "api"
prefix = "/api/"
upstreams = ["{echo}"]

[[routes]]
name = "public"
prefix = "/public/"
upstreams = ["{echo}"]
auth = "none"
"#
    )
}

/// Start the stand-ins on free loopback ports, then run the gateway in the foreground.
pub fn run(listen: SocketAddr) -> Result<(), String> {
    // Before printing anything: a banner followed by "address in use" reads as if it worked.
    TcpListener::bind(listen).map_err(|e| {
        format!(
            "cannot listen on {listen}: {e}.\n  Is another gateway or demo running there? \
             Pick a free address: wxgate demo --listen 127.0.0.1:3100 \
             (or make demo LISTEN=127.0.0.1:3100)"
        )
    })?;
    let bind = |what: &str| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("cannot start the {what}: {e}"))
    };
    let wechat = bind("stand-in WeChat")?;
    let echo = bind("echo app")?;
    let wechat_addr = wechat.local_addr().map_err(|e| e.to_string())?;
    let echo_addr = echo.local_addr().map_err(|e| e.to_string())?;

    let jwt_secret = {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let text = demo_config_text(listen, wechat_addr, echo_addr);
    let config: Config = config::parse(&text, "(demo)", &|name| match name {
        "DEMO_APPSECRET" => Some(DEMO_APPSECRET.to_string()),
        "DEMO_JWT_SECRET" => Some(jwt_secret.clone()),
        _ => None,
    })
    .map_err(|e| e.to_string())?;

    std::thread::Builder::new()
        .name("demo-stand-ins".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("demo: cannot start a runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let opts = MockWechatOptions {
                    appid: Some(DEMO_APPID.into()),
                    secret: Some(DEMO_APPSECRET.into()),
                    ..MockWechatOptions::default()
                };
                let (Ok(w), Ok(e)) = (
                    tokio::net::TcpListener::from_std(wechat),
                    tokio::net::TcpListener::from_std(echo),
                ) else {
                    eprintln!("demo: cannot use the listeners");
                    return;
                };
                let _ = tokio::join!(serve_wechat(w, opts), serve_echo(e));
            });
        })
        .map_err(|e| e.to_string())?;

    println!("{}", instructions(listen, wechat_addr, echo_addr));
    crate::app::run(
        config,
        crate::app::RunOptions {
            config_path: None,
            upgrade: false,
        },
    )
}

fn instructions(gw: SocketAddr, wechat: SocketAddr, echo: SocketAddr) -> String {
    format!(
        r#"
wxgate demo
  gateway          http://{gw}
  stand-in WeChat  http://{wechat}   (appid {DEMO_APPID})
  echo app         http://{echo}   (answers with the request it got, as JSON)
  routes           /api/ (token required)  /public/ (no token)

Each login code works once (like WeChat's); any code logs in: "alice.1" and "alice.2" are the same user.
Codes "err40029-x", "err45011-x", "err-1-x" make the stand-in answer that errcode.

Try, in another terminal:
{}
Ctrl-C stops everything.
"#,
        try_lines(gw)
    )
}

/// The lines to paste, as the README shows them for the default address.
pub fn try_lines(gw: SocketAddr) -> String {
    format!(
        r#"
# log in the tutorial's way (GET /auth?code=...)
curl -s 'http://{gw}/auth?code=alice.1'; echo

# log in again and keep the token (prints it; says "login failed" instead of keeping an error)
TOKEN=$(curl -s 'http://{gw}/auth?code=alice.2' | sed -nE 's/.*"token":"([^"]+)".*/\1/p'); echo "${{TOKEN:?login failed}}"

# the tutorial's check (POST /isAuth with a JSON body)
curl -s -X POST http://{gw}/isAuth -H 'Content-Type: application/json' -d "{{\"token\":\"$TOKEN\"}}"; echo

# a protected route: the echo app sees x-wx-openid set by the gateway
curl -s http://{gw}/api/hello -H "Authorization: Bearer $TOKEN"; echo

# no token: 401 10119; bad token: 401 10200
curl -s -i http://{gw}/api/hello
curl -s http://{gw}/api/hello -H 'Authorization: Bearer not.a.token'; echo

# a public route: a spoofed identity header never reaches the app
curl -s http://{gw}/public/hello -H 'X-WX-OpenID: spoofed'; echo

# a WeChat error comes back with WeChat's errcode
curl -s 'http://{gw}/auth?code=err40029-x'; echo

# the user's phone number (the code comes from a getPhoneNumber button; any code works here)
curl -s -X POST http://{gw}/auth/phone -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{{"code":"alice.phone1"}}'; echo

# a new token with the refresh token of a login, then log out (the token is refused after)
RT=$(curl -s 'http://{gw}/auth?code=alice.3' | sed -nE 's/.*"refresh_token":"([^"]+)".*/\1/p'); echo "${{RT:?login failed}}"
curl -s -X POST http://{gw}/auth/refresh -H 'Content-Type: application/json' -d "{{\"refresh_token\":\"$RT\"}}"; echo
curl -s -X POST http://{gw}/auth/logout -H "Authorization: Bearer $TOKEN"; echo
curl -s http://{gw}/api/hello -H "Authorization: Bearer $TOKEN"; echo
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README shows what the demo prints, for its default address.
    #[test]
    fn readme_shows_the_demo_lines() {
        let readme = include_str!("../README.md");
        let default = crate::config::DEFAULT_LISTEN.parse().unwrap();
        let lines = try_lines(default);
        assert!(
            readme.contains(lines.trim()),
            "README's demo block differs from what `wxgate demo` prints:\n{lines}"
        );
    }

    #[test]
    fn the_demo_config_is_valid_and_generous() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let text = demo_config_text(a, a, a);
        let config = config::parse(&text, "(demo)", &|_| Some("x".repeat(32))).unwrap();
        assert!(config.rate_limit.login_per_minute >= 1000);
        assert!(config.rate_limit.phone_per_minute >= 1000);
    }
}

//! Several mini programs behind one gateway, over real sockets: one stand-in WeChat serving two
//! appids, a real redis-server, the echo app as the upstream.

mod common;

use common::*;
use std::time::Duration;

const STAFF: &str = "wx2222222222222222";

/// Two apps (`shop` = the test appid, `staff`), `/staff/` for staff tokens only, Redis store.
fn two_apps(wechat: &Proc, echo: &Proc, redis: &Proc) -> String {
    let base = config(wechat.addr, echo.addr);
    let wechat_table = format!(
        "[wechat]\nappid = \"{APPID}\"\nsecret = \"${{WECHAT_APPSECRET}}\"\napi_base = \"http://{}\"\ntimeout = \"1s\"\n",
        wechat.addr
    );
    assert!(base.contains(&wechat_table), "{base}");
    let apps = format!(
        "[[apps]]\nname = \"shop\"\nappid = \"{APPID}\"\nsecret = \"${{WECHAT_APPSECRET}}\"\napi_base = \"http://{w}\"\n\n\
         [[apps]]\nname = \"staff\"\nappid = \"{STAFF}\"\nsecret = \"${{WECHAT_APPSECRET}}\"\napi_base = \"http://{w}\"\n",
        w = wechat.addr
    );
    format!(
        "{}\n[session]\nstore = \"redis\"\nredis_url = \"redis://{}/\"\n\n\
         [[routes]]\nprefix = \"/staff/\"\nupstreams = [\"{}\"]\napps = [\"staff\"]\n",
        base.replace(&wechat_table, &apps),
        redis.addr,
        echo.addr
    )
}

async fn login_to(gw: &Proc, code: &str, appid: &str) -> String {
    let (status, v) = get(&gw.url(&format!("/auth?code={code}&appid={appid}"))).await;
    assert_eq!(status, 200, "{v}");
    v["data"]["token"].as_str().unwrap().to_string()
}

fn aud(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["aud"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn two_mini_programs_behind_one_gateway() {
    let wechat = mock_wechat_any_app();
    let echo = echo();
    let redis = redis_server();
    let gw = gateway(&two_apps(&wechat, &echo, &redis));
    let exchanges = || async {
        wechat_stats(&wechat).await["jscode2session"]
            .as_u64()
            .unwrap()
    };

    // With several apps a login names its app; a wrong one is refused before WeChat is asked.
    let before = exchanges().await;
    let (status, v) = get(&gw.url("/auth?code=ann.1")).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10122")), "{v}");
    let (status, v) = get(&gw.url("/auth?code=ann.1&appid=wx9999999999999999")).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10123")), "{v}");
    let (status, v) = post_body(
        gw.url("/auth"),
        "application/json",
        r#"{"code":"ann.1","appid":"wx9999999999999999"}"#,
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10123")), "{v}");
    assert_eq!(
        exchanges().await,
        before,
        "no WeChat call for a refused app"
    );

    // The same person in both apps: each token names its app.
    let shop = login_to(&gw, "ann.2", APPID).await;
    let staff = login_to(&gw, "ann.3", STAFF).await;
    assert_eq!(aud(&shop), APPID);
    assert_eq!(aud(&staff), STAFF);

    // Every upstream learns the app; a client's own X-WX-AppID never passes.
    let (status, v) = get_with(gw.url("/api/x"), Some(&shop), &[("x-wx-appid", STAFF)]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(echoed_header(&v, "x-wx-appid"), [APPID]);
    let shop_openid = echoed_header(&v, "x-wx-openid");
    let (_, v) = get_bearer(gw.url("/api/x"), &staff).await;
    assert_eq!(echoed_header(&v, "x-wx-appid"), [STAFF]);
    assert_ne!(
        echoed_header(&v, "x-wx-openid"),
        shop_openid,
        "openids are per app"
    );
    let (_, v) = get_with(gw.url("/public/x"), None, &[("x-wx-appid", STAFF)]).await;
    assert!(echoed_header(&v, "x-wx-appid").is_empty(), "{v}");

    // A route for one app refuses the other's tokens.
    let (status, v) = get_bearer(gw.url("/staff/x"), &shop).await;
    assert_eq!((status, v["code"].as_str()), (403, Some("10407")), "{v}");
    assert_eq!(get_bearer(gw.url("/staff/x"), &staff).await.0, 200);

    // /isAuth says which app.
    let (status, v) = post_body(
        gw.url("/isAuth"),
        "application/json",
        format!(r#"{{"token":"{staff}"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["appid"], STAFF);

    // Sessions live under each app's own Redis keys.
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.addr.port().to_string(),
            "--scan",
            "--pattern",
            "*",
        ])
        .output()
        .expect("redis-cli");
    let keys = String::from_utf8_lossy(&out.stdout);
    for appid in [APPID, STAFF] {
        let prefix = format!("wxgate:{{{appid}}}:session:");
        assert!(
            keys.lines().any(|k| k.starts_with(&prefix)),
            "{prefix} in {keys}"
        );
    }
    assert!(
        keys.lines()
            .all(|k| k.starts_with(&format!("wxgate:{{{APPID}}}:"))
                || k.starts_with(&format!("wxgate:{{{STAFF}}}:"))),
        "{keys}"
    );

    // Logging out of one app ends that session only.
    let c = client();
    let r = c
        .post(gw.url("/auth/logout"))
        .bearer_auth(&staff)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, v) = get_bearer(gw.url("/api/x"), &staff).await;
    assert_eq!(
        (status, v["reason"].as_str()),
        (401, Some("revoked")),
        "{v}"
    );
    assert_eq!(get_bearer(gw.url("/api/x"), &shop).await.0, 200);
}

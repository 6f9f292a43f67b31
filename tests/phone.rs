//! The phone number (new flow), encrypted user data (legacy flow) and the shared access token,
//! end to end against the stand-in WeChat.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// A route that receives the phone number, beside the usual `/api/` and `/public/`.
fn with_phone_route(c: String) -> String {
    let echo = c
        .split("upstreams = [\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    format!("{c}\n[[routes]]\nprefix = \"/phone-api/\"\nupstreams = [\"{echo}\"]\nforward_phone = true\n")
}

async fn post_with_token(url: String, token: &str, body: Value) -> (u16, Value) {
    json(
        client()
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn phone(s: &Stack, token: &str, code: &str) -> (u16, Value) {
    post_with_token(s.url("/auth/phone"), token, json!({ "code": code })).await
}

async fn stat(s: &Stack, name: &str) -> u64 {
    wechat_stats(&s.wechat).await[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[tokio::test]
async fn phone_number_flow_and_forwarding() {
    let s = Stack::with(with_phone_route);
    let token = login(&s, "uma.1").await;
    let (status, v) = phone(&s, &token, "uma.p1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["code"], "200");
    let pure = v["data"]["purePhoneNumber"].as_str().unwrap().to_string();
    assert_eq!(pure.len(), 11, "{v}");
    assert!(v["data"]["phoneNumber"].as_str().unwrap().contains(&pure));
    assert_eq!(v["data"]["countryCode"], "86");

    // Only routes that opted in see the number; client copies never pass.
    let (status, echo) = get_with(
        s.url("/phone-api/me"),
        Some(&token),
        &[("X-WX-Phone", "10000000000"), ("x_wx_phone", "10000000001")],
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echoed_header(&echo, "x-wx-phone"), vec![pure.clone()]);
    assert_eq!(echoed_header(&echo, "x-wx-phone-country-code"), vec!["86"]);
    assert!(echoed_header(&echo, "x_wx_phone").is_empty());
    let (_, echo) = get_with(
        s.url("/api/me"),
        Some(&token),
        &[("X-WX-Phone", "10000000000")],
    )
    .await;
    assert!(echoed_header(&echo, "x-wx-phone").is_empty(), "{echo}");
    let (_, echo) = get_with(s.url("/public/x"), None, &[("X-WX-Phone", "10000000000")]).await;
    assert!(echoed_header(&echo, "x-wx-phone").is_empty(), "{echo}");

    // A user without a verified number reaches the route without the header.
    let other = login(&s, "vera.1").await;
    let (status, echo) = get_bearer(s.url("/phone-api/me"), &other).await;
    assert_eq!(status, 200);
    assert!(echoed_header(&echo, "x-wx-phone").is_empty());

    // The same user's number from another code.
    let (_, v) = phone(&s, &token, "uma.p2").await;
    assert_eq!(v["data"]["purePhoneNumber"], pure.as_str());
}

#[tokio::test]
async fn six_phone_calls_cost_one_token_fetch() {
    let s = Stack::start();
    let token = login(&s, "wade.1").await;
    for i in 0..6 {
        let (status, v) = phone(&s, &token, &format!("wade.p{i}")).await;
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(stat(&s, "stable_token").await, 1);
    assert_eq!(stat(&s, "stable_token_forced").await, 0);
    assert_eq!(stat(&s, "getuserphonenumber").await, 6);
}

#[tokio::test]
async fn concurrent_first_calls_share_one_fetch() {
    let s = Stack::start();
    let token = login(&s, "xena.1").await;
    let calls = (0..6).map(|i| phone(&s, &token, Box::leak(format!("xena.p{i}").into_boxed_str())));
    for (status, v) in futures::future::join_all(calls).await {
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(stat(&s, "stable_token").await, 1);
}

#[tokio::test]
async fn phone_rejections() {
    let s = Stack::start();
    let token = login(&s, "yuri.1").await;
    let resp = client()
        .post(s.url("/auth/phone"))
        .json(&json!({"code": "yuri.p1"}))
        .send()
        .await
        .unwrap();
    let (status, v) = json(resp).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("10119")), "{v}");
    let (status, v) = post_with_token(s.url("/auth/phone"), &token, json!({})).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10120")), "{v}");
    for (code, errcode, http) in [
        ("err40029-p", "40029", 400),
        ("err45011-p", "45011", 429),
        ("err-1-p", "-1", 503),
    ] {
        let (status, v) = phone(&s, &token, code).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (http, Some(errcode)),
            "{code}: {v}"
        );
    }
    let (status, _) = phone(&s, &token, "yuri.p2").await;
    assert_eq!(status, 200);
    let (status, v) = phone(&s, &token, "yuri.p2").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("40029")),
        "a used phone code: {v}"
    );
    // About the phone code, not the login code.
    assert_eq!(v["message"], "手机号code无效", "{v}");
    assert_eq!(v["reason"], "invalid_phone_code", "{v}");
    let (_, v) = phone(&s, &token, "bad code!").await;
    assert_eq!(v["message"], "手机号code无效", "{v}");
    // WeChat's example shows countryCode as a number: it comes back as a string all the same.
    let (status, v) = phone(&s, &token, "numcc-yuri.p3").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["countryCode"], "86");
}

#[tokio::test]
async fn expired_and_refused_tokens_are_fetched_again() {
    let s = Stack::with_mock(mock_wechat_with(&["--token-ttl", "3"]), |c| c);
    let token = login(&s, "zack.1").await;
    assert_eq!(phone(&s, &token, "zack.p1").await.0, 200);
    assert_eq!(stat(&s, "stable_token").await, 1);
    // Past 80% of its 3 s life the token is replaced before use.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(phone(&s, &token, "zack.p2").await.0, 200);
    assert_eq!(stat(&s, "stable_token").await, 2);
    // WeChat invalidates it (40001): fetched again once, the call retried once.
    let resp = client()
        .post(s.wechat.url("/__mock/invalidate_tokens"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let before = stat(&s, "getuserphonenumber").await;
    let (status, v) = phone(&s, &token, "zack.p3").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(stat(&s, "stable_token").await, 3);
    assert_eq!(stat(&s, "getuserphonenumber").await - before, 2);
    assert_eq!(
        stat(&s, "stable_token_forced").await,
        0,
        "force_refresh is never routine"
    );
}

#[tokio::test]
async fn two_instances_share_one_access_token() {
    let redis = redis_server();
    let wechat = mock_wechat();
    let echo = echo();
    let cfg = config(wechat.addr, echo.addr)
        + &format!(
            "\n[session]\nstore = \"redis\"\nredis_url = \"redis://{}/\"\n",
            redis.addr
        );
    let a = gateway(&cfg);
    let b = gateway(&cfg);
    for (gw, code) in [(&a, "amy"), (&b, "ben"), (&a, "cal"), (&b, "dan")] {
        let (status, v) = get(&gw.url(&format!("/auth?code={code}.1"))).await;
        assert_eq!(status, 200, "{v}");
        let token = v["data"]["token"].as_str().unwrap();
        let (status, v) = post_with_token(
            gw.url("/auth/phone"),
            token,
            json!({"code": format!("{code}.p")}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    let stats = wechat_stats(&wechat).await;
    assert_eq!(stats["stable_token"], 1, "{stats}");
}

async fn encrypt(s: &Stack, openid: &str, data: Value, appid: Option<&str>) -> Value {
    let mut body = json!({ "openid": openid, "data": data });
    if let Some(a) = appid {
        body["appid"] = json!(a);
    }
    let resp = client()
        .post(s.wechat.url("/__mock/encrypt"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, v) = json(resp).await;
    assert_eq!(status, 200, "{v}");
    v
}

fn openid_of(token: &str) -> String {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["sub"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn decrypt_user_data_and_every_failure() {
    let s = Stack::with(with_phone_route);
    let token = login(&s, "ada.1").await;
    let openid = openid_of(&token);
    let sealed = encrypt(&s, &openid, json!({"nickName": "Band", "gender": 1}), None).await;
    let (status, v) = post_with_token(s.url("/auth/decrypt"), &token, sealed.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["nickName"], "Band");
    assert_eq!(v["data"]["watermark"]["appid"], APPID);

    let foreign = encrypt(
        &s,
        &openid,
        json!({"nickName": "Band"}),
        Some("wxsomeoneelse"),
    )
    .await;
    let enc = sealed["encryptedData"].as_str().unwrap();
    let iv = sealed["iv"].as_str().unwrap();
    let mut tampered =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, enc).unwrap();
    // Flip the last byte of the second-to-last block: in CBC that flips the padding byte of the
    // plaintext, which can then never be valid padding (a random change of the last block
    // would be, one time in 256).
    assert!(tampered.len() >= 32);
    let at = tampered.len() - 17;
    tampered[at] ^= 0x55;
    let tampered = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, tampered);
    let cases = [
        (foreign.clone(), 403, "10426"),
        (json!({"encryptedData": enc, "iv": "AAAA"}), 400, "10422"),
        (
            json!({"encryptedData": enc, "iv": "@@not base64@@"}),
            400,
            "10421",
        ),
        (json!({"encryptedData": "@@", "iv": iv}), 400, "10421"),
        (json!({"encryptedData": "AAAA", "iv": iv}), 400, "10423"),
        (json!({"encryptedData": tampered, "iv": iv}), 400, "10424"),
        (json!({"encryptedData": enc}), 400, "10420"),
        (json!({"iv": iv}), 400, "10420"),
        (json!({"encryptedData": "", "iv": iv}), 400, "10420"),
        (json!({"encryptedData": 5, "iv": iv}), 400, "10400"),
    ];
    for (body, http, code) in cases {
        let (status, v) = post_with_token(s.url("/auth/decrypt"), &token, body.clone()).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (http, Some(code)),
            "{body}: {v}"
        );
    }
    let resp = client()
        .post(s.url("/auth/decrypt"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, v) = json(resp).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("10400")), "{v}");
    let resp = client()
        .post(s.url("/auth/decrypt"))
        .json(&sealed)
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp).await.1["code"], "10119");

    // The legacy phone flow: a decrypted phone number joins the session.
    let sealed = encrypt(
        &s,
        &openid,
        json!({"phoneNumber": "13911112222", "purePhoneNumber": "13911112222", "countryCode": "86"}),
        None,
    )
    .await;
    let (status, v) = post_with_token(s.url("/auth/decrypt"), &token, sealed).await;
    assert_eq!(status, 200, "{v}");
    let (_, echo) = get_bearer(s.url("/phone-api/me"), &token).await;
    assert_eq!(echoed_header(&echo, "x-wx-phone"), vec!["13911112222"]);

    // A newer login rotates the session_key: data sealed for the old session still opens with
    // the old session's token only.
    let newer = login(&s, "ada.2").await;
    let sealed_new = encrypt(&s, &openid, json!({"nickName": "New"}), None).await;
    let (status, v) = post_with_token(s.url("/auth/decrypt"), &newer, sealed_new.clone()).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = post_with_token(s.url("/auth/decrypt"), &token, sealed_new).await;
    assert!(
        status == 400 && (v["code"] == "10424" || v["code"] == "10425"),
        "{v}"
    );
}

#[tokio::test]
async fn decrypts_wechats_published_sample() {
    const SAMPLE_APPID: &str = "wx4f4bc4dec97d474b";
    let wechat = mock_wechat_for(SAMPLE_APPID);
    let s = Stack::with_mock(wechat, |c| c.replace(APPID, SAMPLE_APPID));
    let token = login(&s, "fixedkey-sample.1").await;
    let body = json!({
        "iv": "r7BXXKkLb8qrSNn05n0qiA==",
        "encryptedData": "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew=="
    });
    let (status, v) = post_with_token(s.url("/auth/decrypt"), &token, body).await;
    assert_eq!(status, 200, "{v}");
    let expected: Value = serde_json::from_str(r#"{"openId":"oGZUI0egBJY1zhBYw2KhdUfwVJJE","nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou","province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/aSKcBBPpibyKNicHNTMM0qJVh8Kjgiak2AHWr8MHM4WgMEm7GFhsf8OYrySdbvAMvTsw3mo8ibKicsnfN5pRjl1p8HQ/0","unionId":"ocMvos6NjeKLIBqg5Mr9QjxrP1FA","watermark":{"timestamp":1477314187,"appid":"wx4f4bc4dec97d474b"}}"#).unwrap();
    assert_eq!(v["data"], expected);
}

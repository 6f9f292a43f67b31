use super::*;
use std::time::Duration;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn env(name: &str) -> Option<String> {
    match name {
        "WECHAT_APPSECRET" => Some("appsecret".into()),
        "WXGATE_JWT_SECRET" => Some(SECRET.into()),
        _ => None,
    }
}

fn parse_ok(text: &str) -> Config {
    match parse(text, "test.toml", &env) {
        Ok(c) => c,
        Err(e) => panic!("expected valid config, got:\n{e}"),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, "test.toml", &env) {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.problems,
    }
}

fn has(problems: &[Problem], path: &str, needle: &str) -> bool {
    problems
        .iter()
        .any(|p| p.path == path && p.message.contains(needle))
}

const MINIMAL: &str = r#"
[wechat]
appid = "wx123"
secret = "${WECHAT_APPSECRET}"

[jwt]
secret = "${WXGATE_JWT_SECRET}"

[[routes]]
prefix = "/api/"
upstreams = ["127.0.0.1:9001"]
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.server.listen, "127.0.0.1:3000".parse().unwrap());
    assert!(
        !c.server.forwarded_headers,
        "X-Forwarded-* only when asked for"
    );
    assert_eq!(c.first_app().secret.expose(), "appsecret");
    assert_eq!(c.first_app().api_base, "https://api.weixin.qq.com");
    assert_eq!(c.first_app().timeout, Duration::from_secs(3));
    assert_eq!(c.jwt.ttl, Duration::from_secs(7200));
    assert_eq!(c.jwt.leeway, Duration::ZERO);
    assert_eq!(c.auth.login_path, "/auth");
    assert_eq!(c.auth.verify_path, "/isAuth");
    assert_eq!(c.auth.identity_header.as_str(), "x-wx-openid");
    assert_eq!(c.auth.unionid_header.as_str(), "x-wx-unionid");
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].auth, RouteAuth::Required);
    assert_eq!(c.routes[0].name, "/api/");
}

#[test]
fn the_example_gateway_toml_is_valid() {
    let text = include_str!("../../gateway.toml");
    let c = parse(text, "gateway.toml", &|name| match name {
        "WECHAT_APPSECRET" => Some("s".into()),
        "WXGATE_JWT_SECRET" => Some(SECRET.into()),
        _ => None,
    });
    if let Err(e) = c {
        panic!("gateway.toml must stay valid:\n{e}");
    }
}

#[test]
fn secrets_never_print() {
    let c = parse_ok(MINIMAL);
    let debug = format!("{c:?}");
    assert!(!debug.contains("appsecret"));
    assert!(!debug.contains(SECRET));
}

#[test]
fn lists_every_problem_with_its_path() {
    let p = problems(
        r#"
[server]
listen = "127.0.0.1:3000"
colour = "blue"

[wechat]
secret = "${NOT_SET_ANYWHERE}"

[jwt]
secret = "short"

[[routes]]
prefix = "/api/"
upstreams = ["localhost"]
mode = "fast"

[[routes]]
upstreams = ["127.0.0.1:1"]
auth = "sometimes"

[extra]
x = 1
"#,
    );
    let text: Vec<String> = p
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    let all = text.join("\n");
    assert!(has(&p, "server.colour", "unknown key"), "{all}");
    assert!(has(&p, "wechat.appid", "required"), "{all}");
    assert!(
        has(&p, "wechat.secret", "NOT_SET_ANYWHERE is not set"),
        "{all}"
    );
    assert!(has(&p, "jwt.secret", "at least 32 bytes"), "{all}");
    assert!(has(&p, "routes[0].upstreams[0]", "no port"), "{all}");
    assert!(has(&p, "routes[0].mode", "unknown key"), "{all}");
    assert!(has(&p, "routes[1].prefix", "required"), "{all}");
    assert!(has(&p, "routes[1].auth", "sometimes"), "{all}");
    assert!(has(&p, "extra", "unknown key"), "{all}");
}

#[test]
fn type_errors_name_their_path_and_do_not_hide_other_sections() {
    let p = problems(
        r#"
[server]
threads = "two"

[wechat]
appid = "wx1"
secret = "s"
timeout = "soon"

[jwt]
secret = "${WXGATE_JWT_SECRET}"

[[routes]]
prefix = "/api/"
upstreams = "127.0.0.1:9001"
"#,
    );
    assert!(has(&p, "server.threads", "invalid type"), "{p:?}");
    assert!(has(&p, "wechat.timeout", "not a duration"), "{p:?}");
    assert!(has(&p, "routes[0].upstreams", "invalid type"), "{p:?}");
}

#[test]
fn missing_sections_report_their_required_keys() {
    let p = problems("");
    assert!(has(&p, "wechat.appid", "required"));
    assert!(has(&p, "wechat.secret", "required"));
    assert!(has(&p, "jwt.secret", "required"));
    assert!(has(&p, "routes", "required"));
}

#[test]
fn syntax_errors_are_one_problem_not_a_panic() {
    let p = problems("[server\nlisten = ");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "(syntax)");
    let p = problems("routes = 5\n");
    assert!(has(&p, "routes", "array of tables"));
}

#[test]
fn upstream_forms() {
    let ok = |t: &str| parse_host_port(t).map(|hp| hp.to_string());
    assert_eq!(ok("127.0.0.1:80").as_deref(), Ok("127.0.0.1:80"));
    assert_eq!(ok("[::1]:80").as_deref(), Ok("[::1]:80"));
    assert_eq!(ok("app.internal:80").as_deref(), Ok("app.internal:80"));
    assert!(ok("localhost").unwrap_err().contains("no port"));
    assert!(ok("127.0.0.1").unwrap_err().contains("no port"));
    assert!(ok("http://127.0.0.1:80").is_err());
    assert!(ok("127.0.0.1:http").is_err());
    assert!(ok("127.0.0.1:99999").is_err());
    assert!(ok(":80").is_err());
}

/// Validation never blocks on DNS: a name that does not resolve is valid syntax, and resolving
/// it is a separate step with its own problem at the key path.
#[test]
fn host_names_are_resolved_apart_from_validation() {
    let text = MINIMAL.replace("127.0.0.1:9001", "no-such-host.invalid:9001");
    let c = parse_ok(&text);
    let problems = resolve_routes(&c).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "routes[0].upstreams[0]");
    assert!(
        problems[0].message.contains("cannot resolve"),
        "{problems:?}"
    );
    let c = parse_ok(MINIMAL);
    assert_eq!(
        resolve_routes(&c).unwrap(),
        vec![vec![vec!["127.0.0.1:9001".parse::<SocketAddr>().unwrap()]]]
    );
}

#[test]
fn duplicate_prefixes_and_bad_headers_are_refused() {
    let p = problems(&format!(
        "{MINIMAL}\n[[routes]]\nprefix = \"/api/\"\nupstreams = [\"127.0.0.1:9002\"]\n\
         [auth]\nidentity_header = \"Host\"\nunionid_header = \"bad header\"\n"
    ));
    assert!(
        has(&p, "routes[1].prefix", "already the prefix of routes[0]"),
        "{p:?}"
    );
    assert!(has(&p, "auth.identity_header", "cannot take over"), "{p:?}");
    for name in ["Upgrade", "X-Request-Id", "TE"] {
        let p = problems(&format!("[auth]\nidentity_header = \"{name}\"\n{MINIMAL}"));
        assert!(
            has(&p, "auth.identity_header", "cannot take over"),
            "{name}: {p:?}"
        );
    }
    assert!(
        has(&p, "auth.unionid_header", "not a valid header name"),
        "{p:?}"
    );
}

#[test]
fn only_pinned_algorithms_are_accepted() {
    let text = MINIMAL.replace("[jwt]", "[jwt]\nalgorithm = \"none\"");
    let p = problems(&text);
    assert!(has(&p, "jwt.algorithm", "not supported"), "{p:?}");
}

#[test]
fn sizes() {
    assert_eq!(validate::parse_size("16KiB"), Some(16384));
    assert_eq!(validate::parse_size("1MiB"), Some(1 << 20));
    assert_eq!(validate::parse_size("100"), Some(100));
    assert_eq!(validate::parse_size("lots"), None);
    assert_eq!(validate::parse_size("99999999999999999999KiB"), None);
}

#[test]
fn admin_and_log_sections() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.admin.listen, None);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.openid, OpenidInLog::Plain);
    let c = parse_ok(&format!(
        "{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9901\"\n[log]\nformat = \"json\"\nopenid = \"hash\"\n"
    ));
    assert_eq!(c.admin.listen, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.openid, OpenidInLog::Hash);
    let p = problems(&format!(
        "[server]\nlisten = \"127.0.0.1:3000\"\n{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:3000\"\n[log]\nformat = \"xml\"\nopenid = \"maybe\"\n"
    ));
    assert!(
        has(&p, "admin.listen", "must differ from server.listen"),
        "{p:?}"
    );
    assert!(has(&p, "log.format", "\"xml\" is not one of"), "{p:?}");
    assert!(has(&p, "log.openid", "\"maybe\" is not one of"), "{p:?}");
}

#[test]
fn route_hosts_strip_prefix_and_websockets() {
    let c = parse_ok(&format!(
        "{MINIMAL}\n[[routes]]\nprefix = \"/api/\"\nhost = \"Shop.Example.com\"\nupstreams = [\"127.0.0.1:9002\"]\nstrip_prefix = true\nwebsocket = true\n\
         [[routes]]\nprefix = \"/\"\nhost = \"*.example.com\"\nupstreams = [\"127.0.0.1:9003\"]\n"
    ));
    assert_eq!(c.routes[0].host, None);
    assert!(!c.routes[0].strip_prefix);
    assert_eq!(c.routes[0].websocket, None);
    assert_eq!(
        c.routes[1].host,
        Some(HostMatch::Exact("shop.example.com".into()))
    );
    assert!(c.routes[1].strip_prefix);
    assert_eq!(c.routes[1].websocket, Some(Duration::from_secs(300)));
    assert_eq!(
        c.routes[2].host,
        Some(HostMatch::Subdomains("example.com".into()))
    );
    assert!(HostMatch::Subdomains("example.com".into()).matches("a.b.example.com"));
    assert!(!HostMatch::Subdomains("example.com".into()).matches("example.com"));
    assert!(!HostMatch::Subdomains("example.com".into()).matches("badexample.com"));

    let p = problems(&format!(
        "{MINIMAL}\n[[routes]]\nprefix = \"/api/\"\nhost = \"https://x.com:443\"\nupstreams = [\"127.0.0.1:9002\"]\nwebsocket_idle_timeout = \"1m\"\n\
         [[routes]]\nprefix = \"/api/\"\nupstreams = [\"127.0.0.1:9002\"]\n"
    ));
    assert!(has(&p, "routes[1].host", "is not a host name"), "{p:?}");
    assert!(
        has(
            &p,
            "routes[1].websocket_idle_timeout",
            "only used with websocket = true"
        ),
        "{p:?}"
    );
    assert!(
        has(&p, "routes[2].prefix", "already the prefix of routes[0]"),
        "{p:?}"
    );
}

#[test]
fn listen_is_one_address_or_several() {
    let with = |listen: &str| format!("[server]\nlisten = {listen}\n{MINIMAL}");
    let c = parse_ok(&with("[\"127.0.0.1:3443\", \"127.0.0.1:3444\"]"));
    assert_eq!(c.server.listen, "127.0.0.1:3443".parse().unwrap());
    assert_eq!(
        c.server.also_listen,
        vec!["127.0.0.1:3444".parse().unwrap()]
    );
    let c = parse_ok(&with("\"127.0.0.1:3443\""));
    assert!(c.server.also_listen.is_empty());
    let p = problems(&with("[]"));
    assert!(has(&p, "server.listen", "at least one"), "{p:?}");
    let p = problems(&with("[\"127.0.0.1:1\", \"nowhere\"]"));
    assert!(has(&p, "server.listen[1]", "no port"), "{p:?}");
    let p = problems(&with("5"));
    assert!(
        has(&p, "server.listen", "an address \"host:port\" or an array"),
        "{p:?}"
    );
}

#[test]
fn pools_health_checks_retries_and_rate_limits() {
    let c = parse_ok(MINIMAL);
    let r = &c.routes[0];
    assert_eq!(r.lb, Balance::RoundRobin);
    assert_eq!(r.health_check, None, "passive only by default");
    assert_eq!(r.retries, 1);
    assert_eq!(r.rate_limit, None);
    assert_eq!(c.server.resolve_interval, Duration::from_secs(30));

    let c = parse_ok(&MINIMAL.replace(
        "upstreams = [\"127.0.0.1:9001\"]",
        "upstreams = [\"127.0.0.1:9001\"]\nlb = \"openid_hash\"\nretries = 0\n\
         health_check = { path = \"/healthz\", interval = \"2s\" }\n\
         rate_limit = \"20/s\"\nrate_limit_burst = 40",
    ));
    let r = &c.routes[0];
    assert_eq!(r.lb, Balance::OpenidHash);
    assert_eq!(r.retries, 0);
    let hc = r.health_check.as_ref().unwrap();
    assert_eq!(hc.path.as_deref(), Some("/healthz"));
    assert_eq!(hc.interval, Duration::from_secs(2));
    assert_eq!(hc.timeout, Duration::from_secs(1));
    assert_eq!((hc.unhealthy_after, hc.healthy_after), (2, 2));
    let limit = r.rate_limit.unwrap();
    assert_eq!(
        (limit.count, limit.per, limit.burst),
        (20, Duration::from_secs(1), 40)
    );
    let c = parse_ok(&MINIMAL.replace(
        "upstreams = [\"127.0.0.1:9001\"]",
        "upstreams = [\"127.0.0.1:9001\"]\nrate_limit = \"600/m\"\n\
         health_check = { interval = \"5s\" }",
    ));
    let r = &c.routes[0];
    assert_eq!(
        r.rate_limit.unwrap().burst,
        600,
        "the burst defaults to the count"
    );
    assert_eq!(r.health_check.as_ref().unwrap().path, None, "a TCP check");

    let p = problems(&MINIMAL.replace(
        "upstreams = [\"127.0.0.1:9001\"]",
        "upstreams = [\"127.0.0.1:9001\"]\nlb = \"random\"\nrate_limit = \"fast\"\n\
         health_check = { path = \"healthz\", unhealthy_after = 0 }\nretries = 99",
    ));
    assert!(
        has(
            &p,
            "routes[0].lb",
            "\"random\" is not one of \"round_robin\", \"openid_hash\", \"least_requests\""
        ),
        "{p:?}"
    );
    assert!(
        has(
            &p,
            "routes[0].rate_limit",
            "\"fast\" is not a rate; write e.g. \"20/s\""
        ),
        "{p:?}"
    );
    assert!(
        has(&p, "routes[0].health_check.interval", "required"),
        "{p:?}"
    );
    assert!(
        has(&p, "routes[0].health_check.path", "is not a request path"),
        "{p:?}"
    );
    assert!(
        has(&p, "routes[0].health_check.unhealthy_after", "at least 1"),
        "{p:?}"
    );
    assert!(has(&p, "routes[0].retries", "more than 10"), "{p:?}");
    let p = problems(&MINIMAL.replace(
        "upstreams = [\"127.0.0.1:9001\"]",
        "upstreams = [\"127.0.0.1:9001\"]\nrate_limit_burst = 5\nrate_limit = \"0/s\"",
    ));
    assert!(has(&p, "routes[0].rate_limit", "at least 1"), "{p:?}");
    let p = problems(&MINIMAL.replace(
        "upstreams = [\"127.0.0.1:9001\"]",
        "upstreams = [\"127.0.0.1:9001\"]\nrate_limit_burst = 5",
    ));
    assert!(
        has(
            &p,
            "routes[0].rate_limit_burst",
            "only used with rate_limit"
        ),
        "{p:?}"
    );
    let p = problems(&format!("[server]\nresolve_interval = \"10ms\"\n{MINIMAL}"));
    assert!(has(&p, "server.resolve_interval", "at least"), "{p:?}");
}

#[test]
fn upstream_keepalive_defaults_above_pingoras_and_refuses_zero() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.server.upstream_keepalive, 2048);
    let c = parse_ok(&format!("[server]\nupstream_keepalive = 64\n{MINIMAL}"));
    assert_eq!(c.server.upstream_keepalive, 64);
    let p = problems(&format!("[server]\nupstream_keepalive = 0\n{MINIMAL}"));
    assert!(has(&p, "server.upstream_keepalive", "at least 1"), "{p:?}");
    let p = problems(&format!(
        "[server]\nupstream_keepalive = \"lots\"\n{MINIMAL}"
    ));
    assert!(
        has(&p, "server.upstream_keepalive", "invalid type"),
        "{p:?}"
    );
}

#[test]
fn upstream_writes_are_batched_unless_turned_off() {
    assert!(parse_ok(MINIMAL).server.batch_upstream_writes);
    let c = parse_ok(&format!(
        "[server]\nbatch_upstream_writes = false\n{MINIMAL}"
    ));
    assert!(!c.server.batch_upstream_writes);
    let p = problems(&format!("[server]\nbatch_upstream_writes = 1\n{MINIMAL}"));
    assert!(
        has(&p, "server.batch_upstream_writes", "invalid type"),
        "{p:?}"
    );
}

#[test]
fn the_fast_path_is_on_unless_turned_off() {
    assert!(parse_ok(MINIMAL).server.fast_path);
    let c = parse_ok(&format!("[server]\nfast_path = false\n{MINIMAL}"));
    assert!(!c.server.fast_path);
    let p = problems(&format!("[server]\nfast_path = \"no\"\n{MINIMAL}"));
    assert!(has(&p, "server.fast_path", "invalid type"), "{p:?}");
}

#[test]
fn the_header_timeout_is_30s_unless_set_and_at_most_an_hour() {
    use std::time::Duration;
    assert_eq!(
        parse_ok(MINIMAL).server.header_timeout,
        Duration::from_secs(30)
    );
    let c = parse_ok(&format!("[server]\nheader_timeout = \"5s\"\n{MINIMAL}"));
    assert_eq!(c.server.header_timeout, Duration::from_secs(5));
    for (value, says) in [("\"2h\"", "at most \"1h\""), ("\"0s\"", ""), ("5", "")] {
        let p = problems(&format!("[server]\nheader_timeout = {value}\n{MINIMAL}"));
        assert!(has(&p, "server.header_timeout", says), "{value}: {p:?}");
    }
}

#[test]
fn the_keepalive_timeout_is_60s_unless_set_in_whole_seconds() {
    use std::time::Duration;
    assert_eq!(
        parse_ok(MINIMAL).server.keepalive_timeout,
        Duration::from_secs(60)
    );
    let c = parse_ok(&format!("[server]\nkeepalive_timeout = \"75s\"\n{MINIMAL}"));
    assert_eq!(c.server.keepalive_timeout, Duration::from_secs(75));
    for value in ["\"1500ms\"", "\"2h\""] {
        let p = problems(&format!("[server]\nkeepalive_timeout = {value}\n{MINIMAL}"));
        assert!(
            has(&p, "server.keepalive_timeout", "whole seconds"),
            "{value}: {p:?}"
        );
    }
    let p = problems(&format!("[server]\nkeepalive_timeout = \"0s\"\n{MINIMAL}"));
    assert!(has(&p, "server.keepalive_timeout", ""), "{p:?}");
}

#[test]
fn route_defaults_are_what_check_fills_in() {
    let c = parse_ok(MINIMAL);
    let built = RouteConfig::with_defaults(
        "/api/",
        vec![parse_host_port("127.0.0.1:9001").unwrap()],
        RouteAuth::Required,
    );
    assert_eq!(c.routes[0], built);
}

#[test]
fn admin_token() {
    let c = parse_ok(&format!(
        "{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9901\"\ntoken = \"${{WXGATE_JWT_SECRET}}\"\n"
    ));
    assert_eq!(c.admin.token.as_ref().map(|t| t.expose()), Some(SECRET));
    let p = problems(&format!(
        "{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9901\"\ntoken = \"short-admin-token\"\n"
    ));
    assert!(has(&p, "admin.token", "is 17 bytes"), "{p:?}");
    assert!(
        !p.iter().any(|p| p.message.contains("short-admin-token")),
        "{p:?}"
    );
    let p = problems(&format!("{MINIMAL}\n[admin]\ntoken = \"{SECRET}\"\n"));
    assert!(has(&p, "admin.token", "without admin.listen"), "{p:?}");
}

const TWO_APPS: &str = r#"
[[apps]]
name = "shop"
appid = "wx1111111111111111"
secret = "${WECHAT_APPSECRET}"

[[apps]]
name = "staff"
appid = "wx2222222222222222"
secret = "${WECHAT_APPSECRET}"
api_base = "http://127.0.0.1:9100"

[jwt]
secret = "${WXGATE_JWT_SECRET}"

[[routes]]
prefix = "/staff/"
upstreams = ["127.0.0.1:9002"]
apps = ["staff"]

[[routes]]
prefix = "/api/"
upstreams = ["127.0.0.1:9001"]
"#;

#[test]
fn several_mini_programs() {
    let c = parse_ok(TWO_APPS);
    assert_eq!(c.appids(), ["wx1111111111111111", "wx2222222222222222"]);
    assert_eq!(c.apps[1].name, "staff");
    assert_eq!(c.apps[1].wechat.api_base, "http://127.0.0.1:9100");
    assert_eq!(c.first_app().api_base, "https://api.weixin.qq.com");
    assert_eq!(c.routes[0].apps, Some(vec!["staff".to_string()]));
    assert_eq!(c.routes[1].apps, None);
    assert_eq!(c.auth.appid_header.as_str(), "x-wx-appid");
    // [wechat] is the one-app form.
    let c = parse_ok(MINIMAL);
    assert_eq!((c.apps.len(), c.apps[0].name.as_str()), (1, "default"));

    let p = problems(
        &TWO_APPS
            .replace("wx2222222222222222", "wx1111111111111111")
            .replace("name = \"staff\"", "name = \"shop\"")
            .replace("apps = [\"staff\"]", "apps = [\"nobody\"]"),
    );
    assert!(
        has(&p, "apps[1].name", "already the name of apps[0]"),
        "{p:?}"
    );
    assert!(
        has(&p, "apps[1].appid", "already the appid of apps[0]"),
        "{p:?}"
    );
    assert!(
        has(&p, "routes[0].apps[0]", "\"nobody\" names no app"),
        "{p:?}"
    );
    let p = problems(&format!(
        "{TWO_APPS}\n[wechat]\nappid = \"wx1\"\nsecret = \"x\"\n"
    ));
    assert!(has(&p, "apps", "not both"), "{p:?}");
    let p = problems(&TWO_APPS.replace("appid = \"wx2222222222222222\"\n", ""));
    assert!(has(&p, "apps[1].appid", "required"), "{p:?}");
}

/// A config whose `[jwt]` section is `jwt` (the rest as MINIMAL).
fn with_jwt(jwt: &str) -> String {
    format!(
        "[wechat]\nappid = \"wx123\"\nsecret = \"x\"\n\n[jwt]\n{jwt}\n\n[[routes]]\nprefix = \"/api/\"\nupstreams = [\"127.0.0.1:9001\"]\n"
    )
}

/// A fresh key pair written under a temporary directory: (private path, public path).
fn key_files(alg: JwtAlgorithm, name: &str) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("wxgate-config-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = crate::keys::generate(alg).unwrap();
    let p = dir.join(format!("{name}.pem"));
    let q = dir.join(format!("{name}.pub.pem"));
    std::fs::write(&p, private).unwrap();
    std::fs::write(&q, public).unwrap();
    (p.display().to_string(), q.display().to_string())
}

#[test]
fn asymmetric_keys_load_and_every_problem_is_named() {
    let (es_private, es_public) = key_files(JwtAlgorithm::ES256, "es");
    let (ed_private, ed_public) = key_files(JwtAlgorithm::EdDSA, "ed");
    let c = parse_ok(&with_jwt(&format!(
        "algorithm = \"ES256\"\nprivate_key = {es_private:?}\nkid = \"k2\"\n\
         verify_keys = [{{ kid = \"k1\", public_key = {ed_public:?} }}, {{ kid = \"h\", secret = \"{SECRET}\" }}]"
    )));
    assert_eq!(c.jwt.algorithm, JwtAlgorithm::ES256);
    assert_eq!(c.jwt.kid.as_deref(), Some("k2"));
    assert_eq!(c.jwt.verify_keys[0].algorithm, JwtAlgorithm::EdDSA);
    assert_eq!(c.jwt.verify_keys[1].algorithm, JwtAlgorithm::HS256);
    assert!(matches!(c.jwt.key, KeyMaterial::Private(_)));
    assert!(
        !format!("{:?}", c.jwt).contains(SECRET),
        "secrets stay redacted"
    );

    let p = problems(&with_jwt(&format!(
        "algorithm = \"EdDSA\"\nprivate_key = {es_private:?}\nsecret = \"{SECRET}\"\n\
         verify_keys = [{{ kid = \"a\", public_key = \"/nonexistent/k.pem\" }}, \
         {{ kid = \"a\", public_key = {ed_private:?} }}, {{ kid = \"b\", public_key = {es_public:?}, secret = \"{SECRET}\" }}]"
    )));
    let all: Vec<String> = p
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    let all = all.join("\n");
    assert!(has(&p, "jwt.private_key", "P-256"), "{all}");
    assert!(has(&p, "jwt.secret", "is for HS256"), "{all}");
    assert!(has(&p, "jwt.kid", "required with EdDSA"), "{all}");
    assert!(
        has(&p, "jwt.verify_keys[0].public_key", "cannot read"),
        "{all}"
    );
    assert!(has(&p, "jwt.verify_keys[1].kid", "already"), "{all}");
    assert!(
        has(&p, "jwt.verify_keys[1].public_key", "PRIVATE KEY"),
        "{all}"
    );
    assert!(has(&p, "jwt.verify_keys[2].secret", "either"), "{all}");

    let p = problems(&with_jwt(&format!(
        "private_key = {es_private:?}\nsecret = \"{SECRET}\"\nalgorithm = \"RS256\""
    )));
    assert!(has(&p, "jwt.algorithm", "\"EdDSA\""));
}

#[test]
fn private_key_from_the_environment_and_accept_entries() {
    let (private, _) = crate::keys::generate(JwtAlgorithm::EdDSA).unwrap();
    let lookup = |name: &str| match name {
        "WXGATE_JWT_KEY" => Some(private.clone()),
        "OLD" => Some(SECRET.to_string()),
        _ => None,
    };
    let text = with_jwt(
        "algorithm = \"EdDSA\"\nprivate_key = \"${WXGATE_JWT_KEY}\"\nkid = \"e1\"\n\n\
         [[jwt.accept]]\nalgorithm = \"HS256\"\nsecret = \"${OLD}\"\nopenid_claim = \"openid\"\n\
         until = \"2027-01-31T00:00:00Z\"\n",
    );
    let c = parse(&text, "t.toml", &lookup).unwrap();
    assert_eq!(c.jwt.accept[0].until, 1_801_353_600);
    assert_eq!(c.jwt.accept[0].openid_claim, "openid");
    let bad = with_jwt(&format!(
        "secret = \"{SECRET}\"\n\n[[jwt.accept]]\nalgorithm = \"ES256\"\nsecret = \"{SECRET}\"\nuntil = \"soon\"\n"
    ));
    let p = parse(&bad, "t.toml", &lookup).unwrap_err().problems;
    assert!(
        has(&p, "jwt.accept[0]", "the key is for \"HS256\""),
        "{p:?}"
    );
    assert!(has(&p, "jwt.accept[0].until", "not an instant"), "{p:?}");
}

#[test]
fn a_key_file_replaced_in_place_changes_the_config() {
    // app::build_snapshot rebuilds the token keys when `jwt` differs: the loaded key counts,
    // not only its path.
    let (private, _) = key_files(JwtAlgorithm::EdDSA, "in-place");
    let text = with_jwt(&format!(
        "algorithm = \"EdDSA\"\nprivate_key = {private:?}\nkid = \"k\""
    ));
    let before = parse_ok(&text);
    assert_eq!(parse_ok(&text).jwt, before.jwt);
    let (other, _) = crate::keys::generate(JwtAlgorithm::EdDSA).unwrap();
    std::fs::write(&private, other).unwrap();
    assert_ne!(parse_ok(&text).jwt, before.jwt);
}

#[test]
fn relay_section() {
    assert_eq!(parse_ok(MINIMAL).relay, None);
    let c = parse_ok(&format!(
        "{MINIMAL}\n[relay]\nlisten = \"127.0.0.1:9902\"\nallow = [\"/wxa/msg_sec_check\"]\n"
    ));
    let relay = c.relay.expect("relay");
    assert_eq!(relay.listen, "127.0.0.1:9902".parse().unwrap());
    assert_eq!(relay.allow, vec!["/wxa/msg_sec_check".to_string()]);
    assert_eq!(
        relay.allow_from,
        vec![
            "127.0.0.1/32".parse::<ipnet::IpNet>().unwrap(),
            "::1/128".parse().unwrap()
        ]
    );
    assert_eq!(relay.timeout, Duration::from_secs(5));
    let c = parse_ok(&format!(
        "{MINIMAL}\n[relay]\nlisten = \"127.0.0.1:9902\"\nallow = [\"/a\"]\nallow_from = [\"10.0.0.0/8\", \"192.168.1.7\"]\ntimeout = \"2s\"\n"
    ));
    let relay = c.relay.expect("relay");
    assert_eq!(
        relay.allow_from[1],
        "192.168.1.7/32".parse::<ipnet::IpNet>().unwrap()
    );
    assert_eq!(relay.timeout, Duration::from_secs(2));

    let p = problems(&format!(
        "[server]\nlisten = \"127.0.0.1:3000\"\n{MINIMAL}\n[relay]\nlisten = \"127.0.0.1:3000\"\nallow = [\"wxa/x\", \"/a?b\", \"/ok\", \"/ok\"]\nallow_from = [\"nope\"]\ntimeout = \"0s\"\n"
    ));
    assert!(
        has(&p, "relay.listen", "must differ from server.listen"),
        "{p:?}"
    );
    assert!(has(&p, "relay.allow[0]", "must be a path"), "{p:?}");
    assert!(has(&p, "relay.allow[1]", "must be a path"), "{p:?}");
    assert!(has(&p, "relay.allow[3]", "listed twice"), "{p:?}");
    assert!(
        has(&p, "relay.allow_from[0]", "not an address or CIDR"),
        "{p:?}"
    );
    assert!(has(&p, "relay.timeout", "greater than zero"), "{p:?}");
    let p = problems(&format!(
        "{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9901\"\n[relay]\nlisten = \"127.0.0.1:9901\"\n"
    ));
    assert!(
        has(&p, "relay.listen", "must differ from admin.listen"),
        "{p:?}"
    );
    assert!(has(&p, "relay.allow", "required key is missing"), "{p:?}");
    let p = problems(&format!("{MINIMAL}\n[relay]\nallow = []\nport = 1\n"));
    assert!(has(&p, "relay.listen", "required key is missing"), "{p:?}");
    assert!(has(&p, "relay.allow", "at least one"), "{p:?}");
    assert!(has(&p, "relay.port", "unknown key"), "{p:?}");
}

#[test]
fn identity_headers_modes() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.auth.identity_headers, IdentityMode::Wxgate);
    assert_eq!(c.routes[0].identity_headers, None);
    let c = parse_ok(&format!(
        "[auth]\nidentity_headers = \"cloudhosting\"\n{MINIMAL}identity_headers = \"wxgate\"\n"
    ));
    assert_eq!(c.auth.identity_headers, IdentityMode::CloudHosting);
    assert_eq!(c.routes[0].identity_headers, Some(IdentityMode::Wxgate));
    let p = problems(&format!(
        "[auth]\nidentity_headers = \"cloud\"\n{MINIMAL}identity_headers = \"tcb\"\n"
    ));
    assert!(
        has(&p, "auth.identity_headers", "\"cloud\" is not one of"),
        "{p:?}"
    );
    assert!(
        has(&p, "routes[0].identity_headers", "\"tcb\" is not one of"),
        "{p:?}"
    );
}

#[test]
fn redis_is_one_server_or_sentinel_or_cluster() {
    let session = |lines: &str| format!("{MINIMAL}\n[session]\nstore = \"redis\"\n{lines}\n");
    let c = parse_ok(&session("redis_url = \"redis://:pw@10.0.0.7:6379/2\""));
    assert!(matches!(
        &c.session.store,
        StoreKind::Redis(RedisTarget::Server { url }) if url.expose().ends_with("/2")
    ));
    let c = parse_ok(&session(
        "redis_sentinels = [\"redis://10.0.0.11:26379\", \"redis://10.0.0.12:26379\"]\n\
         redis_sentinel_primary = \"rediss://:pw@mymaster/1\"",
    ));
    match &c.session.store {
        StoreKind::Redis(RedisTarget::Sentinel { sentinels, primary }) => {
            assert_eq!(sentinels.len(), 2);
            assert_eq!(primary.expose(), "rediss://:pw@mymaster/1");
        }
        other => panic!("{other:?}"),
    }
    parse_ok(&session(
        "redis_sentinels = [\"redis://10.0.0.11:26379\"]\nredis_sentinel_primary = \"mymaster\"",
    ));
    let c = parse_ok(&session(
        "redis_cluster = [\"rediss://:pw@10.0.0.21:6379\", \"rediss://:pw@10.0.0.22:6379/0\"]",
    ));
    assert!(matches!(
        &c.session.store,
        StoreKind::Redis(RedisTarget::Cluster { nodes }) if nodes.len() == 2
    ));

    // Two forms at once: the conflict is named.
    let p = problems(&session(
        "redis_url = \"redis://10.0.0.7:6379\"\nredis_cluster = [\"redis://10.0.0.21:6379\"]",
    ));
    assert!(
        has(
            &p,
            "session.redis_cluster",
            "conflicts with session.redis_url"
        ),
        "{p:?}"
    );
    let p = problems(&session(
        "redis_sentinel_primary = \"mymaster\"\nredis_cluster = [\"redis://10.0.0.21:6379\"]",
    ));
    assert!(
        has(
            &p,
            "session.redis_cluster",
            "conflicts with session.redis_sentinels"
        ),
        "{p:?}"
    );

    // Half a Sentinel form, bad entries, a Cluster database other than 0.
    let p = problems(&session("redis_sentinel_primary = \"mymaster\""));
    assert!(has(&p, "session.redis_sentinels", "required"), "{p:?}");
    let p = problems(&session("redis_sentinels = [\"redis://10.0.0.11:26379\"]"));
    assert!(
        has(&p, "session.redis_sentinel_primary", "required"),
        "{p:?}"
    );
    let p = problems(&session(
        "redis_sentinels = [\"redis://10.0.0.11:26379\", \"http://x\"]\n\
         redis_sentinel_primary = \"my master\"",
    ));
    assert!(has(&p, "session.redis_sentinels[1]", "redis://"), "{p:?}");
    assert!(has(&p, "session.redis_sentinel_primary", "name"), "{p:?}");
    let p = problems(&session("redis_cluster = []"));
    assert!(has(&p, "session.redis_cluster", "at least one"), "{p:?}");
    let p = problems(&session(
        "redis_cluster = [\"redis://:secretpw@10.0.0.21:6379/3\"]",
    ));
    assert!(
        has(&p, "session.redis_cluster[0]", "database 0 only"),
        "{p:?}"
    );
    assert!(!format!("{p:?}").contains("secretpw"), "{p:?}");
    let p = problems(&session(
        "redis_cluster = [\"redis://:pw-a@10.0.0.21:6379\", \"redis://:pw-b@10.0.0.22:6379\"]",
    ));
    assert!(has(&p, "session.redis_cluster", "must agree"), "{p:?}");
    assert!(!format!("{p:?}").contains("pw-a"), "{p:?}");
    let p = problems(&session(""));
    assert!(has(&p, "session.redis_url", "redis_cluster"), "{p:?}");

    // Only with store = "redis".
    let p = problems(&format!(
        "{MINIMAL}\n[session]\nredis_cluster = [\"redis://10.0.0.21:6379\"]\n"
    ));
    assert!(has(&p, "session.redis_cluster", "only used with"), "{p:?}");
}

#[test]
fn durations_and_files_are_bounded() {
    // A leeway that would wrap `now - leeway` around, and durations past any clock.
    let text = MINIMAL.replace(
        "[jwt]\n",
        "[jwt]\nleeway = \"99999999999d\"\nttl = \"2h\"\n",
    );
    let p = problems(&text);
    assert!(has(&p, "jwt.leeway", "100 years"), "{p:?}");
    let p = problems(&MINIMAL.replace("[jwt]\n", "[jwt]\nleeway = \"2h\"\n"));
    assert!(has(&p, "jwt.leeway", "at most 1h"), "{p:?}");
    assert_eq!(
        parse_ok(&MINIMAL.replace("[jwt]\n", "[jwt]\nleeway = \"30s\"\n"))
            .jwt
            .leeway,
        Duration::from_secs(30)
    );
    let p = problems(&format!("{MINIMAL}read_timeout = \"999999y\"\n"));
    assert!(has(&p, "routes[0].read_timeout", "100 years"), "{p:?}");
    // A key "file" that never ends is refused, not read.
    let p = problems(&MINIMAL.replace(
        "[jwt]\nsecret = \"${WXGATE_JWT_SECRET}\"\n",
        "[jwt]\nalgorithm = \"ES256\"\nprivate_key = \"/dev/zero\"\n",
    ));
    assert!(has(&p, "jwt.private_key", "not a regular file"), "{p:?}");
}

#[test]
fn upstream_idle_timeout_defaults_below_common_upstreams_keepalive_and_is_bounded() {
    let route = |text: &str| parse_ok(text).routes[0].upstream_idle_timeout;
    assert_eq!(route(MINIMAL), DEFAULT_UPSTREAM_IDLE_TIMEOUT);
    assert_eq!(DEFAULT_UPSTREAM_IDLE_TIMEOUT, Duration::from_secs(4));
    assert_eq!(
        route(&format!("{MINIMAL}upstream_idle_timeout = \"1500ms\"\n")),
        Duration::from_millis(1500)
    );
    for (value, says) in [("0s", "greater than zero"), ("2h", "at most"), ("soon", "")] {
        let p = problems(&format!("{MINIMAL}upstream_idle_timeout = \"{value}\"\n"));
        assert!(
            has(&p, "routes[0].upstream_idle_timeout", says),
            "{value}: {p:?}"
        );
    }
}

//! Micro-benchmarks of what every proxied request pays: finding the token, verifying it,
//! matching the route, bounding the headers and rewriting identity headers.
//! `cargo bench --bench hot_path`. The end-to-end numbers are `make bench` (wrk).

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderName;
use pingora::http::RequestHeader;
use std::hint::black_box;
use std::time::Duration;
use wxgate::auth::extract;
use wxgate::auth::jwt::{unix_now, Tokens};
use wxgate::auth::Identity;
use wxgate::config::{JwtConfig, RouteAuth, RouteConfig};
use wxgate::proxy::gateway::check_headers;
use wxgate::proxy::headers::IdentityHeaders;
use wxgate::proxy::route::{route_path, Route, RouteTable};

fn tokens() -> Tokens {
    Tokens::new(
        &JwtConfig::hs256("bench-key-bench-key-bench-key-bench-key"),
        &["wxbench"],
    )
}

fn identity() -> Identity {
    Identity {
        openid: "oMock_0123456789abcdefghijklm".into(),
        unionid: Some("uMock_0123456789abcdefghijklm".into()),
        sid: "S8p5YHqy4W7x8gSUDjM2zA".into(),
        appid: "wxbench".into(),
        values: Default::default(),
    }
}

fn request(token: &str) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/api/orders?page=2", None).unwrap();
    req.insert_header("host", "api.example.com").unwrap();
    req.insert_header("user-agent", "Mozilla/5.0 (iPhone) MicroMessenger/8.0")
        .unwrap();
    req.insert_header("accept", "*/*").unwrap();
    req.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    req.insert_header("x-wx-openid", "spoofed").unwrap();
    req
}

fn routes() -> RouteTable {
    let route = |prefix: &str, auth| {
        let upstreams = vec![wxgate::config::parse_host_port("127.0.0.1:9001").unwrap()];
        let c = RouteConfig::with_defaults(prefix, upstreams, auth);
        let resolved = [vec!["127.0.0.1:9001".parse().unwrap()]];
        Route::new(&c, &resolved, None, Duration::from_secs(30)).unwrap()
    };
    RouteTable::new(vec![
        route("/", RouteAuth::None),
        route("/api/", RouteAuth::Required),
        route("/api/public/", RouteAuth::None),
        route("/admin/", RouteAuth::Required),
        route("/static/", RouteAuth::None),
    ])
}

fn hot_path(c: &mut Criterion) {
    let tokens = tokens();
    let token = tokens.sign(&identity(), unix_now()).unwrap().token;
    let req = request(&token);
    let table = routes();
    let ids = IdentityHeaders::new(
        HeaderName::from_static("x-wx-openid"),
        HeaderName::from_static("x-wx-unionid"),
        HeaderName::from_static("x-wx-phone"),
        HeaderName::from_static("x-wx-appid"),
    );

    c.bench_function("extract token", |b| {
        b.iter(|| black_box(extract::from_headers(black_box(&req.headers))))
    });
    c.bench_function("verify HS256 token (full)", |b| {
        b.iter(|| black_box(tokens.verify_uncached(black_box(&token)).is_ok()))
    });
    c.bench_function("verify HS256 token (seen before)", |b| {
        b.iter(|| black_box(tokens.verify(black_box(&token)).is_ok()))
    });
    c.bench_function("match route", |b| {
        b.iter(|| {
            let path = route_path(black_box(req.uri.path())).unwrap();
            black_box(table.find(None, &path).is_some())
        })
    });
    c.bench_function("bound headers", |b| {
        b.iter(|| black_box(check_headers(black_box(&req)).is_ok()))
    });
    c.bench_function("strip + inject identity headers", |b| {
        let id = identity();
        b.iter_batched(
            || req.clone(),
            |mut r| {
                ids.strip(&mut r);
                ids.inject(&mut r, &id);
                black_box(r)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("whole decision (extract + verify + match)", |b| {
        b.iter(|| {
            let path = route_path(req.uri.path()).unwrap();
            let route = table.find(None, &path).unwrap();
            let presented = extract::from_headers(&req.headers);
            let ok = match presented {
                extract::Presented::Token(t) => tokens.verify(t).is_ok(),
                _ => false,
            };
            black_box((route.auth, ok))
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);

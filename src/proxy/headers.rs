//! What the upstream sees of identity: client-sent copies of identity headers removed (every
//! case, every occurrence, `_` spelt for `-`, and the whole `X-WX-*` namespace, which belongs to
//! the gateway), then the verified identity set: the `[auth]` header names, or on a route with
//! `identity_headers = "cloudhosting"` WeChat Cloud Hosting's own set (see [`CloudHosting`]).

use crate::auth::Identity;
use crate::session::Phone;
use bytes::Bytes;
use http::HeaderName;
use pingora::http::{IntoCaseHeaderName, RequestHeader};
use std::net::IpAddr;

/// The namespace the gateway owns (WeChat Cloud Hosting's `X-WX-OPENID`, `X-WX-APPID`, ...).
const RESERVED_PREFIX: &str = "x-wx-";

pub struct IdentityHeaders {
    pub openid: HeaderName,
    pub unionid: HeaderName,
    /// The phone number without country code (`purePhoneNumber`).
    pub phone: HeaderName,
    /// `<phone header>-Country-Code`.
    pub phone_country: HeaderName,
    /// The caller's mini program (the token's `aud`).
    pub appid: HeaderName,
    /// The openid, appid and unionid names, each with its spelling on the wire, made once:
    /// Pingora would otherwise copy a custom name for its case map and parse it for its header
    /// map on every insert.
    cased: [(HeaderName, Bytes); 3],
}

impl IdentityHeaders {
    pub fn new(
        openid: HeaderName,
        unionid: HeaderName,
        phone: HeaderName,
        appid: HeaderName,
    ) -> Self {
        let phone_country =
            HeaderName::from_bytes(format!("{}-country-code", phone.as_str()).as_bytes())
                .unwrap_or_else(|_| HeaderName::from_static("x-wx-phone-country-code"));
        let cased = [&openid, &appid, &unionid]
            .map(|h| (h.clone(), Bytes::copy_from_slice(h.as_str().as_bytes())));
        IdentityHeaders {
            openid,
            unionid,
            phone,
            phone_country,
            appid,
            cased,
        }
    }

    /// Whether a client may not send this header (names from `http` are lowercase).
    pub fn is_reserved(&self, name: &str) -> bool {
        starts_with_normalized(name, RESERVED_PREFIX)
            || [
                &self.openid,
                &self.unionid,
                &self.phone,
                &self.phone_country,
                &self.appid,
            ]
            .iter()
            .any(|h| eq_normalized(name, h.as_str()))
    }

    /// Remove every client-sent identity header.
    pub fn strip(&self, req: &mut RequestHeader) {
        remove_where(req, |name| self.is_reserved(name.as_str()));
    }

    /// Set the verified identity (after [`Self::strip`]).
    pub fn inject(&self, req: &mut RequestHeader, identity: &Identity) {
        // Values come from our own signed token; a value that is not a valid header value
        // (impossible for WeChat ids) is left out rather than failing the request.
        set_values(req, self.cased.iter().cloned(), identity);
        if identity.sid.is_empty() {
            // Another backend's token ([[jwt.accept]]): its claims may hold the session_key,
            // which must not reach the upstream inside the token either.
            req.remove_header(&http::header::AUTHORIZATION);
            req.remove_header("token");
        }
    }
}

impl IdentityHeaders {
    /// Set the verified phone number (routes with `forward_phone`).
    pub fn inject_phone(&self, req: &mut RequestHeader, phone: &Phone) {
        let _ = req.insert_header(self.phone.clone(), phone.pure_phone_number.as_str());
        let _ = req.insert_header(self.phone_country.clone(), phone.country_code.as_str());
    }
}

/// Set the identity's openid, appid and unionid under `names` (in that order), leaving out a
/// value that is not a valid header value.
fn set_values<N: IntoCaseHeaderName>(
    req: &mut RequestHeader,
    names: impl IntoIterator<Item = N>,
    identity: &Identity,
) {
    for (name, value) in names.into_iter().zip(identity.values()) {
        if let Some(value) = value {
            let _ = req.insert_header(name, value.clone());
        }
    }
}

/// WeChat Cloud Hosting's request headers, as its documentation names them (header names are
/// case-insensitive): what an app written for Cloud Hosting reads.
pub struct CloudHosting;

impl CloudHosting {
    pub const OPENID: &'static str = "x-wx-openid";
    pub const APPID: &'static str = "x-wx-appid";
    pub const UNIONID: &'static str = "x-wx-unionid";
    /// Cloud Hosting says what triggered the call (`wx_client`, ...) and tells apps to check that
    /// it is present; wxgate sets it on requests whose caller it verified.
    pub const SOURCE: &'static str = "x-wx-source";
    pub const SOURCE_VALUE: &'static str = "wxgate";
    /// The client's address (after `server.trusted_proxies`).
    pub const ORIGINAL_FORWARDED_FOR: &'static str = "x-original-forwarded-for";

    /// Remove every client-sent copy of the set (`X-WX-*` included, as in every mode), and
    /// of `X-Original-Forwarded-For`, in any spelling.
    pub fn strip(ids: &IdentityHeaders, req: &mut RequestHeader) {
        remove_where(req, |name| {
            ids.is_reserved(name.as_str())
                || eq_normalized(name.as_str(), Self::ORIGINAL_FORWARDED_FOR)
        });
    }

    /// Set Cloud Hosting's headers (after [`Self::strip`]): the identity when the caller was
    /// verified, and the client's address. (Cloud Hosting also appends the peer to
    /// `X-Forwarded-For`: [`Forwarded::append_for`], which this mode always does.)
    pub fn inject(req: &mut RequestHeader, identity: Option<&Identity>, client: Option<IpAddr>) {
        if let Some(identity) = identity {
            set_values(req, [Self::OPENID, Self::APPID, Self::UNIONID], identity);
            let _ = req.insert_header(Self::SOURCE, Self::SOURCE_VALUE);
            if identity.sid.is_empty() {
                // Another backend's token: as in the default mode, it does not go upstream.
                req.remove_header(&http::header::AUTHORIZATION);
                req.remove_header("token");
            }
        }
        if let Some(client) = client {
            let _ = req.insert_header(Self::ORIGINAL_FORWARDED_FOR, client.to_string());
        }
    }
}

/// The `X-Forwarded-*` headers a reverse proxy sets (`server.forwarded_headers`), so that an app
/// behind the gateway can tell who called and how, and cannot be told otherwise by the client.
pub struct Forwarded;

impl Forwarded {
    pub const FOR: &'static str = "x-forwarded-for";
    pub const PROTO: &'static str = "x-forwarded-proto";
    pub const HOST: &'static str = "x-forwarded-host";

    /// The peer's address appended to `X-Forwarded-For`, after what the client sent (one header
    /// line, comma-separated): an app that trusts one proxy hop (Express's `trust proxy = 1`,
    /// Werkzeug's `ProxyFix(x_for=1)`) reads the right-most entry, the address the gateway saw,
    /// which the client cannot forge.
    pub fn append_for(req: &mut RequestHeader, peer: IpAddr) {
        let peer = peer.to_string();
        // The client's lines as sent (bytes, not text: nothing of them is changed), then the peer.
        let mut value = Vec::new();
        for sent in req.headers.get_all(Self::FOR) {
            value.extend_from_slice(sent.as_bytes());
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(peer.as_bytes());
        // What the client sent was a valid value, so the whole is; were it not, the peer alone,
        // or none: the right-most entry is the gateway's, or there is no entry at all.
        let value =
            http::HeaderValue::from_bytes(&value).or_else(|_| http::HeaderValue::from_str(&peer));
        if !value.is_ok_and(|v| req.insert_header(Self::FOR, v).is_ok()) {
            req.remove_header(Self::FOR);
        }
    }

    /// `X-Forwarded-Proto` (`scheme`, the one the client used) and `X-Forwarded-Host` (the
    /// client's `Host`, or h2's `:authority`), replacing a client's copies, unless the peer is a
    /// trusted proxy (`server.trusted_proxies`) that sent its own: then they tell what the
    /// proxy in front saw, and are kept. Copies spelt with `_` for `-` (which CGI-style servers
    /// read as the header itself) are dropped, of `X-Forwarded-For` too.
    pub fn set_proto_host(
        req: &mut RequestHeader,
        scheme: &'static str,
        host: Option<http::HeaderValue>,
        trusted_peer: bool,
    ) {
        remove_where(req, |name| {
            name.as_str().contains('_')
                && [Self::FOR, Self::PROTO, Self::HOST]
                    .iter()
                    .any(|ours| eq_normalized(name.as_str(), ours))
        });
        if !(trusted_peer && req.headers.contains_key(Self::PROTO)) {
            let _ = req.insert_header(Self::PROTO, scheme);
        }
        if !(trusted_peer && req.headers.contains_key(Self::HOST)) {
            match host {
                Some(host) => {
                    let _ = req.insert_header(Self::HOST, host);
                }
                None => {
                    req.remove_header(Self::HOST);
                }
            }
        }
    }
}

/// Remove every header whose name `doomed` says, in both of the request's maps. The usual request
/// has none: they are looked for first, and only found ones are collected (and allocated for).
fn remove_where(req: &mut RequestHeader, doomed: impl Fn(&HeaderName) -> bool) {
    if !req.headers.keys().any(&doomed) {
        return;
    }
    let names: Vec<HeaderName> = req.headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in names {
        req.remove_header(&name);
    }
}

fn normalize(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        other => other.to_ascii_lowercase(),
    }
}

fn eq_normalized(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| normalize(x) == normalize(y))
}

fn starts_with_normalized(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && eq_normalized(&name[..prefix.len()], prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> IdentityHeaders {
        IdentityHeaders::new(
            HeaderName::from_static("x-user-openid"),
            HeaderName::from_static("x-wx-unionid"),
            HeaderName::from_static("x-user-phone"),
            HeaderName::from_static("x-user-app"),
        )
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/api/x", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn reserved_names() {
        let h = ids();
        for n in [
            "x-wx-openid",
            "x_wx_openid",
            "x-wx_appid",
            "x-wx-source",
            "x-user-openid",
            "x_user_openid",
            "x-user-app",
        ] {
            assert!(h.is_reserved(n), "{n}");
        }
        for n in ["x-wxopenid", "x-user", "authorization", "x-w", "token"] {
            assert!(!h.is_reserved(n), "{n}");
        }
    }

    #[test]
    fn strips_every_spelling_and_occurrence() {
        let h = ids();
        let mut req = request(&[
            ("X-WX-OpenID", "evil1"),
            ("x-wx-openid", "evil2"),
            ("X_WX_OPENID", "evil3"),
            ("X-User-OpenID", "evil4"),
            ("X-WX-APPID", "evil5"),
            ("Accept", "*/*"),
        ]);
        h.strip(&mut req);
        let left: Vec<_> = req.headers.keys().map(|k| k.as_str().to_string()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn cloud_hosting_set_replaces_client_copies() {
        let h = ids();
        let mut req = request(&[
            ("X-WX-OPENID", "evil1"),
            ("x_wx_source", "evil2"),
            ("X-Original-Forwarded-For", "6.6.6.6"),
            ("x_original_forwarded_for", "6.6.6.7"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("Accept", "*/*"),
        ]);
        CloudHosting::strip(&h, &mut req);
        let identity = Identity {
            values: Default::default(),
            openid: "o1".into(),
            unionid: None,
            sid: "s".into(),
            appid: "wx1".into(),
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        CloudHosting::inject(&mut req, Some(&identity), ip("203.0.113.7"));
        Forwarded::append_for(&mut req, ip("10.0.0.2").unwrap());
        let all = |name: &str| -> Vec<String> {
            req.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(all("x-wx-openid"), vec!["o1"]);
        assert_eq!(all("x-wx-appid"), vec!["wx1"]);
        assert!(all("x-wx-unionid").is_empty());
        assert_eq!(all("x-wx-source"), vec!["wxgate"]);
        assert!(all("x_wx_source").is_empty());
        assert_eq!(all("x-original-forwarded-for"), vec!["203.0.113.7"]);
        assert!(all("x_original_forwarded_for").is_empty());
        assert_eq!(all("x-forwarded-for"), vec!["203.0.113.7, 10.0.0.2"]);
        assert_eq!(all("accept"), vec!["*/*"]);

        // A public route: no identity, no source; the address all the same.
        let mut req = request(&[("X-WX-SOURCE", "wx_client")]);
        CloudHosting::strip(&h, &mut req);
        CloudHosting::inject(&mut req, None, ip("198.51.100.1"));
        Forwarded::append_for(&mut req, ip("198.51.100.1").unwrap());
        assert!(req.headers.get("x-wx-source").is_none());
        assert_eq!(
            req.headers.get("x-original-forwarded-for").unwrap(),
            "198.51.100.1"
        );
        assert_eq!(req.headers.get("x-forwarded-for").unwrap(), "198.51.100.1");
    }

    fn values(req: &RequestHeader, name: &str) -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn forwarded_for_gets_the_peer_appended_after_whatever_the_client_sent() {
        let peer: IpAddr = "198.51.100.9".parse().unwrap();
        let mut req = request(&[]);
        Forwarded::append_for(&mut req, peer);
        assert_eq!(values(&req, "x-forwarded-for"), ["198.51.100.9"]);
        let mut req = request(&[("X-Forwarded-For", "1.1.1.1")]);
        Forwarded::append_for(&mut req, peer);
        assert_eq!(values(&req, "x-forwarded-for"), ["1.1.1.1, 198.51.100.9"]);
        let mut req = request(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "3.3.3.3"),
        ]);
        Forwarded::append_for(&mut req, "2001:db8::1".parse().unwrap());
        assert_eq!(
            values(&req, "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 2001:db8::1"]
        );
        // Bytes that are not text (obs-text) pass as they came.
        let mut req = request(&[]);
        req.append_header(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff1.1.1.1").unwrap(),
        )
        .unwrap();
        Forwarded::append_for(&mut req, peer);
        assert_eq!(
            req.headers.get("x-forwarded-for").unwrap().as_bytes(),
            b"\xff1.1.1.1, 198.51.100.9"
        );
    }

    #[test]
    fn forwarded_proto_and_host_are_the_gateways_unless_a_trusted_proxy_sent_them() {
        let host = || Some(http::HeaderValue::from_static("api.example.com:8443"));
        let forged = [
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("x_forwarded_host", "evil2.example"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("Accept", "*/*"),
        ];
        let mut req = request(&forged);
        Forwarded::set_proto_host(&mut req, "http", host(), false);
        assert_eq!(values(&req, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&req, "x-forwarded-host"), ["api.example.com:8443"]);
        assert!(values(&req, "x_forwarded_host").is_empty());
        assert!(values(&req, "x_forwarded_for").is_empty());
        assert_eq!(values(&req, "accept"), ["*/*"]);
        // A trusted proxy in front (a load balancer ending TLS) says what it saw: kept.
        let mut req = request(&forged);
        Forwarded::set_proto_host(&mut req, "http", host(), true);
        assert_eq!(values(&req, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&req, "x-forwarded-host"), ["evil.example"]);
        assert!(
            values(&req, "x_forwarded_host").is_empty(),
            "never the _ spelling"
        );
        // ... and where it sent none, the gateway's own.
        let mut req = request(&[]);
        Forwarded::set_proto_host(&mut req, "https", None, true);
        assert_eq!(values(&req, "x-forwarded-proto"), ["https"]);
        assert!(values(&req, "x-forwarded-host").is_empty());
    }

    #[test]
    fn injects_identity() {
        let h = ids();
        let mut req = request(&[("x-user-openid", "evil")]);
        h.strip(&mut req);
        h.inject(
            &mut req,
            &Identity {
                values: Default::default(),
                openid: "o1".into(),
                unionid: Some("u1".into()),
                sid: "s".into(),
                appid: "wx1".into(),
            },
        );
        let got: Vec<_> = req.headers.get_all("x-user-openid").iter().collect();
        assert_eq!(got, vec!["o1"]);
        assert_eq!(req.headers.get("x-user-app").unwrap(), "wx1");
        assert_eq!(req.headers.get("x-wx-unionid").unwrap(), "u1");
    }
}

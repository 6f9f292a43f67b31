//! What the upstream sees of identity: client-sent copies of identity headers removed (every
//! case, every occurrence, `_` spelt for `-`, and the whole `X-WX-*` namespace, which belongs to
//! the gateway), then the verified identity set.

use crate::auth::Identity;
use crate::session::Phone;
use http::HeaderName;
use pingora::http::RequestHeader;

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
        IdentityHeaders {
            openid,
            unionid,
            phone,
            phone_country,
            appid,
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
        let doomed: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|name| self.is_reserved(name.as_str()))
            .cloned()
            .collect();
        for name in doomed {
            req.remove_header(&name);
        }
    }

    /// Set the verified identity (after [`Self::strip`]).
    pub fn inject(&self, req: &mut RequestHeader, identity: &Identity) {
        // Values come from our own signed token; a value that is not a valid header value
        // (impossible for WeChat ids) is left out rather than failing the request.
        let _ = req.insert_header(self.openid.clone(), identity.openid.as_str());
        let _ = req.insert_header(self.appid.clone(), &*identity.appid);
        if let Some(unionid) = &identity.unionid {
            let _ = req.insert_header(self.unionid.clone(), unionid.as_str());
        }
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
    fn injects_identity() {
        let h = ids();
        let mut req = request(&[("x-user-openid", "evil")]);
        h.strip(&mut req);
        h.inject(
            &mut req,
            &Identity {
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

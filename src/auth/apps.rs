//! Several mini programs behind one gateway. Each app has its own auth service ([`Login`]: its
//! WeChat client and access token, its sessions, refresh tokens and revocations, namespaced by
//! appid in Redis); all share the token keys. A login names its app with an `appid` parameter
//! (optional with one app); every other request is the app its token's `aud` names.

use super::extract::Presented;
use super::{Identity, Login};
use crate::reply::{Reject, TokenProblem};
use std::sync::Arc;

/// One mini program and its auth service.
pub struct App {
    /// `[[apps]] name` (`default` for the `[wechat]` form), as routes' `apps` name it.
    pub name: String,
    pub login: Arc<Login>,
}

/// The configured apps, the first being the default; never empty.
pub struct Apps {
    list: Vec<App>,
}

impl Apps {
    /// `None` without any app: a configuration always has one.
    pub fn new(list: Vec<App>) -> Option<Self> {
        (!list.is_empty()).then_some(Apps { list })
    }

    /// The first app (with `[wechat]`, the only one).
    pub fn first(&self) -> &Arc<Login> {
        &self.list[0].login
    }

    pub fn iter(&self) -> impl Iterator<Item = &App> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn by_appid(&self, appid: &str) -> Option<&App> {
        self.list.iter().find(|a| **a.login.appid() == *appid)
    }

    pub fn by_name(&self, name: &str) -> Option<&App> {
        self.list.iter().find(|a| a.name == name)
    }

    /// The app a login is for: the one named by `appid`, or the only one when none is named.
    pub fn for_login(&self, appid: Option<&str>) -> Result<&Arc<Login>, Reject> {
        match appid {
            Some(appid) => self
                .by_appid(appid)
                .map(|a| &a.login)
                .ok_or(Reject::UnknownApp),
            None if self.list.len() == 1 => Ok(self.first()),
            None => Err(Reject::AppidMissing),
        }
    }

    /// A presented token's identity: signature and claims (the keys are shared), then the
    /// revocation list of the app its `aud` names.
    pub fn verify(&self, presented: Presented<'_>) -> Result<Arc<Identity>, Reject> {
        let first = self.first();
        let identity = match presented {
            Presented::Missing => return Err(Reject::TokenMissing),
            Presented::Unusable => return Err(Reject::Token(TokenProblem::Malformed)),
            Presented::Token(t) => first.tokens().verify(t).map_err(Reject::Token)?,
        };
        let app = self
            .by_appid(&identity.appid)
            .ok_or(Reject::Token(TokenProblem::WrongAudience))?;
        app.login
            .revocations()
            .check(&identity.sid, app.login.now_ms())?;
        Ok(identity)
    }

    /// The auth service of the app whose token a request presents (for the endpoints that act
    /// on the caller's own session: `/isAuth`, logout, phone, decrypt).
    pub fn owner(&self, presented: Presented<'_>) -> Result<&Arc<Login>, Reject> {
        let identity = self.verify(presented)?;
        self.by_appid(&identity.appid)
            .map(|a| &a.login)
            .ok_or(Reject::Token(TokenProblem::WrongAudience))
    }
}

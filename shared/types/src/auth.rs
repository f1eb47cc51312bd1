//! Authentication vocabulary shared by kalamd (HTTP, and the checks themselves) and kalam-lived
//! (WebSocket upgrades): the loopback bypass rule, roles, identities and presented credentials
//! (api.md §1).

use std::net::IpAddr;

/// Headers that mark a request as coming from a browser page or through a proxy; such a
/// request never gets the loopback bypass.
pub const RELAY_HEADERS: [&str; 4] = ["origin", "x-forwarded-for", "forwarded", "x-real-ip"];

/// True when a request without credentials may act as the local default user: the bypass is
/// enabled, the TCP peer is a loopback address and no relay header is present.
pub fn loopback_bypass(enabled: bool, peer: IpAddr, has_header: impl Fn(&str) -> bool) -> bool {
    enabled && peer.is_loopback() && !RELAY_HEADERS.iter().any(|h| has_header(h))
}

/// The four roles (sql.md §17), from least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// End users: their own partitions and public shared tables.
    User,
    /// Backend integrations: may act for any user.
    Service,
    /// Administrators: DDL and user management.
    Dba,
    /// The built-in `system` user and the loopback bypass.
    System,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "service" => Some(Role::Service),
            "dba" => Some(Role::Dba),
            "system" => Some(Role::System),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Service => "service",
            Role::Dba => "dba",
            Role::System => "system",
        }
    }
}

/// Who a request runs as (api.md §1.2): the principal its credentials belong to, with the
/// principal's role (permissions use it), and the acting user (partitions, `CURRENT_USER()`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub principal: crate::ids::UserId,
    pub role: Role,
    pub acting: crate::ids::UserId,
}

impl Identity {
    /// The built-in `system` user acting as itself or as `acting` (internal work and tests).
    pub fn system(acting: crate::ids::UserId) -> Self {
        Identity { principal: crate::ids::UserId::system(), role: Role::System, acting }
    }
}

/// A header's value as [`Presented::read`] takes it. A value that is not text still counts as
/// present (it must not fall back to the loopback bypass), as a value no check accepts.
pub fn header_text(value: &(impl AsRef<[u8]> + ?Sized)) -> &str {
    std::str::from_utf8(value.as_ref()).unwrap_or("\u{fffd}")
}

/// The credentials and identity headers of one request, as the process that received it read
/// them: kalamd for HTTP, kalam-lived for the WebSocket upgrade. Only kalamd holds the users and
/// the JWT secret, so kalam-lived sends this to kalamd to be checked.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Presented {
    /// `X-API-KEY` (or `?api_key=`).
    pub api_key: Option<String>,
    /// The token of `Authorization: Bearer <token>` (or `?token=`).
    pub bearer: Option<String>,
    /// `Authorization` was present but not a bearer token.
    pub malformed_authorization: bool,
    /// `X-USER-ID` (or `?user_id=`).
    pub acting: Option<String>,
    /// The loopback bypass applies to this request ([`loopback_bypass`], judged where the TCP
    /// peer is known).
    pub bypass: bool,
}

// Credentials never reach a log line, even through `{:?}`.
impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presented")
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("bearer", &self.bearer.as_ref().map(|_| "***"))
            .field("malformed_authorization", &self.malformed_authorization)
            .field("acting", &self.acting)
            .field("bypass", &self.bypass)
            .finish()
    }
}

impl Presented {
    /// Reads a request's credentials: `header(name)` gives a header's value, `query(name)` a
    /// query parameter's (the WebSocket's browser-friendly spellings; `None` for HTTP).
    pub fn read<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
        query: impl Fn(&str) -> Option<&'a str>,
        bypass: bool,
    ) -> Self {
        let authorization = header("authorization");
        let bearer = authorization
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_owned())
            .or_else(|| query("token").map(str::to_owned));
        Presented {
            api_key: header("x-api-key").or_else(|| query("api_key")).map(|k| k.trim().to_owned()),
            malformed_authorization: authorization.is_some() && bearer.is_none(),
            bearer,
            acting: header("x-user-id").or_else(|| query("user_id")).map(|u| u.trim().to_owned()),
            bypass,
        }
    }

    pub fn has_credentials(&self) -> bool {
        self.api_key.is_some() || self.bearer.is_some() || self.malformed_authorization
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_direct_loopback_requests_get_the_bypass() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        let remote: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(loopback_bypass(true, lo, |_| false));
        assert!(loopback_bypass(true, v6, |_| false));
        assert!(!loopback_bypass(false, lo, |_| false));
        assert!(!loopback_bypass(true, remote, |_| false));
        assert!(!loopback_bypass(true, lo, |h| h == "origin"));
        assert!(!loopback_bypass(true, lo, |h| h == "x-forwarded-for"));
    }

    #[test]
    fn credentials_are_read_from_headers_or_query_and_never_printed() {
        let headers = [("authorization", "Bearer abc.def.ghi"), ("x-user-id", " bob ")];
        let header = |h: &str| headers.iter().find(|(k, _)| *k == h).map(|(_, v)| *v);
        let p = Presented::read(header, |_| None, false);
        assert_eq!((p.bearer.as_deref(), p.acting.as_deref()), (Some("abc.def.ghi"), Some("bob")));
        assert!(p.has_credentials() && !p.malformed_authorization);
        let p = Presented::read(|_| None, |q| (q == "api_key").then_some("k-1"), true);
        assert_eq!(p.api_key.as_deref(), Some("k-1"));
        assert!(!format!("{p:?}").contains("k-1"));
        let p = Presented::read(|h| (h == "authorization").then_some("Basic dTpw"), |_| None, true);
        assert!(p.malformed_authorization && p.bearer.is_none());
        assert_eq!(Role::parse("dba"), Some(Role::Dba));
        assert!(Role::User < Role::Service && Role::Dba < Role::System);
    }
}

//! The loopback bypass rule (api.md §1.1), shared by kalamd (HTTP) and kalam-lived (WebSocket).

use std::net::IpAddr;

/// Headers that mark a request as coming from a browser page or through a proxy; such a
/// request never gets the loopback bypass.
pub const RELAY_HEADERS: [&str; 4] = ["origin", "x-forwarded-for", "forwarded", "x-real-ip"];

/// True when a request without credentials may act as the local default user: the bypass is
/// enabled, the TCP peer is a loopback address and no relay header is present.
pub fn loopback_bypass(enabled: bool, peer: IpAddr, has_header: impl Fn(&str) -> bool) -> bool {
    enabled && peer.is_loopback() && !RELAY_HEADERS.iter().any(|h| has_header(h))
}

/// A credential a request carries (api.md §1.1): an API key (`X-API-KEY`, or `?api_key=` on
/// the WebSocket) or a bearer token (`Authorization: Bearer`, or `?token=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    ApiKey,
    Token,
}

impl Credential {
    /// The credential a request presents, if any (an API key wins over a token).
    pub fn presented(has_header: impl Fn(&str) -> bool, has_query: impl Fn(&str) -> bool) -> Option<Credential> {
        if has_header("x-api-key") || has_query("api_key") {
            Some(Credential::ApiKey)
        } else if has_header("authorization") || has_query("token") {
            Some(Credential::Token)
        } else {
            None
        }
    }

    /// The refusal of a credential that matches no user. No credential store exists yet (users
    /// and keys come with user management), so every presented credential is refused, even
    /// from loopback: credentials are always validated, never ignored in favour of the bypass.
    pub fn refusal(self) -> crate::error::KalamError {
        match self {
            Credential::ApiKey => crate::error::KalamError::new(crate::ErrorCode::InvalidApiKey, "Invalid API key"),
            Credential::Token => crate::error::KalamError::new(crate::ErrorCode::InvalidToken, "Invalid token"),
        }
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
    fn presented_credentials_are_recognised() {
        assert_eq!(Credential::presented(|h| h == "x-api-key", |_| false), Some(Credential::ApiKey));
        assert_eq!(Credential::presented(|h| h == "authorization", |q| q == "api_key"), Some(Credential::ApiKey));
        assert_eq!(Credential::presented(|_| false, |q| q == "token"), Some(Credential::Token));
        assert_eq!(Credential::presented(|h| h == "x-user-id", |q| q == "user_id"), None);
        assert_eq!(Credential::ApiKey.refusal().code.http_status(), 401);
    }
}

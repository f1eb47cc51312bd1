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
}

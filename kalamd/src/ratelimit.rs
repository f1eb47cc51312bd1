//! The per-principal SQL request limit (api.md §2.4): principals of role `user` may send at
//! most `rate_limit.max_queries_per_sec` requests per second, as a token bucket of that size
//! refilled at that rate. Other roles and loopback-bypass requests are not limited.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kalam_types::auth::{Identity, Role};

/// How often (in checks) buckets that are full again are dropped, so the table holds only
/// principals active in the last second or so.
const RETAIN_EVERY: u64 = 4096;

pub struct QueryLimiter {
    /// `None` when the limit is 0 (disabled).
    buckets: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
}

impl QueryLimiter {
    pub fn new(per_second: u32) -> Self {
        let buckets = NonZeroU32::new(per_second).map(|n| RateLimiter::keyed(Quota::per_second(n)));
        QueryLimiter { buckets, checks: AtomicU64::new(0) }
    }

    /// Takes a token for `identity`'s request; false when its bucket is empty.
    pub fn allow(&self, identity: &Identity, bypass: bool) -> bool {
        let Some(buckets) = &self.buckets else { return true };
        if bypass || identity.role != Role::User {
            return true;
        }
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            buckets.retain_recent();
            buckets.shrink_to_fit();
        }
        buckets.check_key(&identity.principal.as_str().to_owned()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kalam_types::ids::UserId;

    fn user(name: &str, role: Role) -> Identity {
        let id = UserId::parse(name).expect("user id");
        Identity { principal: id.clone(), role, acting: id }
    }

    #[test]
    fn each_user_principal_has_its_own_bucket_and_other_roles_are_free() {
        let limiter = QueryLimiter::new(5);
        let (alice, bob) = (user("alice", Role::User), user("bob", Role::User));
        assert_eq!((0..10).filter(|_| limiter.allow(&alice, false)).count(), 5);
        assert!(limiter.allow(&bob, false), "bob's bucket is separate");
        assert!(limiter.allow(&alice, true), "loopback bypass is not limited");
        let service = user("svc", Role::Service);
        assert!((0..100).all(|_| limiter.allow(&service, false)));
        let unlimited = QueryLimiter::new(0);
        assert!((0..100).all(|_| unlimited.allow(&alice, false)));
    }
}

//! Rate limits: token buckets per key, per account, and per key for proxied calls (requests
//! and estimated tokens), each refilled continuously.
//!
//! A bucket holds up to one minute's allowance, so a key may burst its whole minute and
//! then proceeds at the steady rate. The token budget of the proxy is charged after the
//! fact of a call's size being known (an estimate before the call): a call is admitted
//! while the bucket holds at least one token and may take it below zero, and the key then
//! waits until the debt is refilled — so a budget is never exceeded by more than one call
//! (itself bounded by a minute's allowance). Each map is bounded: past [`BUCKETS_MAX`],
//! buckets that have refilled completely (idle keys) are dropped, which loses nothing
//! because a full bucket is the same as no bucket.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

/// Buckets kept per limiter before idle ones are swept.
pub(crate) const BUCKETS_MAX: usize = 100_000;

struct Bucket {
    /// May be negative: a proxied call's tokens are charged in full (see the module docs).
    tokens: f64,
    updated: Instant,
}

pub(crate) struct RateLimiter {
    /// Allowance per minute per id; 0 disables limiting.
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `id` at `now`. `Err(seconds)` says how long until one is free.
    pub(crate) fn check(&self, id: &str, now: Instant) -> Result<(), u64> {
        self.take(id, 1, now)
    }

    /// Admits `id` if its bucket holds at least one token and charges `cost` (at most a
    /// minute's allowance), which may leave the bucket in debt. `Err(seconds)`: how long
    /// until the bucket holds a token again.
    pub(crate) fn take(&self, id: &str, cost: u64, now: Instant) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= BUCKETS_MAX && !buckets.contains_key(id) {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < capacity
            });
        }
        let bucket = buckets.entry(id.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let refill = now.saturating_duration_since(bucket.updated).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= (cost as f64).clamp(1.0, capacity);
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / per_second).ceil();
            Err((wait as u64).max(1))
        }
    }

    /// Charges `cost` more to `id` without asking for admission (what a proxied answer
    /// turned out to cost beyond its estimate), at most a minute's allowance, and never
    /// below one minute's debt.
    pub(crate) fn charge(&self, id: &str, cost: u64, now: Instant) {
        if self.per_minute == 0 || cost == 0 {
            return;
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(id.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let refill = now.saturating_duration_since(bucket.updated).as_secs_f64() * per_second;
        bucket.tokens =
            ((bucket.tokens + refill).min(capacity) - (cost as f64).min(capacity)).max(-capacity);
        bucket.updated = now;
    }
}

/// Every limit `[limits]` configures.
pub(crate) struct Limits {
    /// `requests_per_minute`, by key id.
    pub key: RateLimiter,
    /// `account_requests_per_minute`, by account id.
    pub account: RateLimiter,
    /// `proxy_requests_per_minute`, by key id: proxied calls only.
    pub proxy_requests: RateLimiter,
    /// `proxy_tokens_per_minute`, by key id: estimated tokens of proxied calls.
    pub proxy_tokens: RateLimiter,
}

impl Limits {
    pub(crate) fn new(limits: &crate::config::Limits) -> Self {
        Self {
            key: RateLimiter::new(limits.requests_per_minute),
            account: RateLimiter::new(limits.account_requests_per_minute),
            proxy_requests: RateLimiter::new(limits.proxy_requests_per_minute),
            proxy_tokens: RateLimiter::new(limits.proxy_tokens_per_minute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_minute_then_refuses_then_refills() {
        let limiter = RateLimiter::new(60);
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(limiter.check("a", t0).is_ok());
        }
        assert_eq!(limiter.check("a", t0), Err(1));
        assert!(limiter.check("b", t0).is_ok(), "keys are independent");
        assert!(limiter.check("a", t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = RateLimiter::new(0);
        for _ in 0..10_000 {
            assert!(limiter.take("a", 1_000_000, Instant::now()).is_ok());
        }
    }

    /// A token budget admits a call while one token is left, charges it in full, and the
    /// key then waits for the debt: 6,000 tokens a minute is 100 a second.
    #[test]
    fn a_token_budget_charges_in_full_and_waits_out_the_debt() {
        let limiter = RateLimiter::new(6_000);
        let t0 = Instant::now();
        assert!(limiter.take("k", 5_000, t0).is_ok());
        assert!(limiter.take("k", 5_000, t0).is_ok(), "1,000 left: admitted");
        // -4,000: a token again after 40.01 s.
        assert_eq!(limiter.take("k", 1, t0), Err(41));
        assert!(limiter.take("k", 1, t0 + Duration::from_secs(39)).is_err());
        assert!(limiter.take("k", 1, t0 + Duration::from_secs(41)).is_ok());
        // A call larger than a minute's allowance is charged one minute's worth.
        let big = RateLimiter::new(600);
        assert!(big.take("k", u64::MAX, t0).is_ok());
        assert_eq!(big.take("k", 1, t0), Err(1));
        // An answer longer than estimated is charged afterwards, down to a minute's debt.
        let after = RateLimiter::new(6_000);
        assert!(after.take("k", 100, t0).is_ok());
        after.charge("k", 5_900, t0);
        assert_eq!(
            after.take("k", 1, t0),
            Err(1),
            "0 left: 1 token is 0.01 s away"
        );
        after.charge("k", u64::MAX, t0);
        after.charge("k", u64::MAX, t0);
        assert_eq!(
            after.take("k", 1, t0),
            Err(61),
            "never more than a minute's debt"
        );
    }
}

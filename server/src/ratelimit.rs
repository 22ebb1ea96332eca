//! Per-key rate limiting: a token bucket per key id, refilled continuously.
//!
//! The bucket holds up to one minute's allowance, so a key may burst its whole minute and
//! then proceeds at the steady rate. The map is bounded: when it passes
//! [`BUCKETS_MAX`], buckets that have refilled completely (idle keys) are dropped, which
//! loses nothing because a full bucket is the same as no bucket.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

/// Buckets kept before idle ones are swept.
pub(crate) const BUCKETS_MAX: usize = 100_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub(crate) struct RateLimiter {
    /// Requests per minute per key; 0 disables limiting.
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

    /// Takes one token for `key_id` at `now`. `Err(seconds)` says how long until one is free.
    pub(crate) fn check(&self, key_id: &str, now: Instant) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= BUCKETS_MAX && !buckets.contains_key(key_id) {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < capacity
            });
        }
        let bucket = buckets.entry(key_id.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let refill = now.saturating_duration_since(bucket.updated).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / per_second).ceil();
            Err((wait as u64).max(1))
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
            assert!(limiter.check("a", Instant::now()).is_ok());
        }
    }
}

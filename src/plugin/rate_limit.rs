//! Per-instance outgoing rate limiting (seed 002 `rate_limit_config`) for the external calls a plugin makes:
//! a token bucket of `burst_size` refilled at `max_requests_per_minute`, plus a full stop of `backoff_seconds`
//! (or the service's own `Retry-After`, if longer) after the service answered "too many requests".

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    backoff: Duration,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    blocked_until: Option<Instant>,
}

impl RateLimiter {
    /// `max_requests_per_minute` refill a bucket of `burst_size`; a "too many requests" stops calls for
    /// `backoff` (the instance's `rate_limit` config).
    pub fn new(max_requests_per_minute: u32, burst_size: u32, backoff: Duration) -> Self {
        Self::with_rate(f64::from(max_requests_per_minute.max(1)) / 60.0, burst_size, backoff)
    }

    fn with_rate(per_second: f64, burst: u32, backoff: Duration) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            per_second,
            burst,
            backoff,
            bucket: Mutex::new(Bucket { tokens: burst, refilled: Instant::now(), blocked_until: None }),
        }
    }

    /// The calls per minute it allows once the burst is spent.
    pub fn per_minute(&self) -> u32 {
        (self.per_second * 60.0).round() as u32
    }

    /// Waits until one more call may be made. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        while let Err(wait) = self.try_acquire().await {
            tokio::time::sleep(wait).await;
        }
        started.elapsed()
    }

    /// Takes a call's token if there is one now; otherwise says how long until there would be (nothing taken).
    pub async fn try_acquire(&self) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().await;
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled = now;
        match bucket.blocked_until {
            Some(until) if until > now => Err(until - now),
            _ if bucket.tokens >= 1.0 => {
                bucket.tokens -= 1.0;
                Ok(())
            }
            _ => Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second)),
        }
    }

    /// The external service said "too many requests": no calls for `backoff_seconds`, or `retry_after` if longer.
    pub async fn back_off(&self, retry_after: Option<Duration>) {
        let pause = retry_after.map_or(self.backoff, |r| r.max(self.backoff));
        let mut bucket = self.bucket.lock().await;
        bucket.blocked_until = Some(Instant::now() + pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time, scaled: 20 calls per second instead of per minute keeps the test short.
    #[tokio::test]
    async fn the_burst_goes_at_once_then_the_rate_holds() {
        let limiter = RateLimiter::with_rate(20.0, 3, Duration::from_millis(500));
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.acquire().await < Duration::from_millis(5));
        }
        assert!(start.elapsed() < Duration::from_millis(10), "the burst is immediate");
        for _ in 0..10 {
            limiter.acquire().await;
        }
        // 10 calls beyond the burst at 20 per second: about 0.5 s, never less.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(480) && elapsed < Duration::from_millis(800), "{elapsed:?}");
    }

    #[tokio::test]
    async fn back_off_stops_calls_for_the_longer_of_the_two() {
        let limiter = RateLimiter::with_rate(1000.0, 5, Duration::from_millis(300));
        limiter.acquire().await;
        let start = Instant::now();
        limiter.back_off(Some(Duration::from_millis(50))).await;
        limiter.acquire().await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(450), "{waited:?}");
        let start = Instant::now();
        limiter.back_off(Some(Duration::from_millis(600))).await;
        limiter.acquire().await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(600) && waited < Duration::from_millis(750), "{waited:?}");
    }

    #[tokio::test]
    async fn try_acquire_takes_a_token_or_says_how_long_to_wait() {
        let limiter = RateLimiter::new(6, 2, Duration::from_secs(30));
        assert_eq!(limiter.try_acquire().await, Ok(()));
        assert_eq!(limiter.try_acquire().await, Ok(()));
        let wait = limiter.try_acquire().await.unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= Duration::from_secs(10), "{wait:?}");
        limiter.back_off(None).await;
        assert!(limiter.try_acquire().await.unwrap_err() > Duration::from_secs(29));
    }

    #[test]
    fn config_maps_to_a_per_second_rate() {
        let limiter = RateLimiter::new(30, 2, Duration::from_secs(7));
        assert_eq!(limiter.per_second, 0.5);
        assert_eq!(limiter.burst, 2.0);
        assert_eq!(limiter.backoff, Duration::from_secs(7));
    }
}

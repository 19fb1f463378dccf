//! Login throttling: per client address and per user name, a few attempts are free, then each attempt that is
//! let through to the password check opens a growing pause (1 s, 2 s, 4 s ... at most 5 min) during which
//! attempts are refused with 429 and `Retry-After`, before any hashing. A successful login clears both.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Attempts per key before pauses start.
pub const FREE_ATTEMPTS: u32 = 3;
/// The longest pause.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);
/// Keys idle this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Most keys remembered; the oldest are forgotten first.
const MAX_KEYS: usize = 10_000;

#[derive(Clone, Copy)]
struct Entry {
    attempts: u32,
    blocked_until: Instant,
    last: Instant,
}

#[derive(Default)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<String, Entry>>,
}

fn pause(attempts: u32) -> Duration {
    if attempts <= FREE_ATTEMPTS {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (attempts - FREE_ATTEMPTS - 1).min(16)).min(MAX_PAUSE)
}

impl LoginThrottle {
    /// Lets an attempt for `keys` through (counting it), or says how long to wait.
    pub fn attempt(&self, keys: &[String]) -> Result<(), Duration> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let wait = keys
            .iter()
            .filter_map(|k| entries.get(k))
            .map(|e| e.blocked_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            return Err(wait);
        }
        if entries.len() >= MAX_KEYS {
            entries.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
            if entries.len() >= MAX_KEYS {
                let oldest = entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        for key in keys {
            let entry = entries.entry(key.clone()).or_insert(Entry { attempts: 0, blocked_until: now, last: now });
            if now.duration_since(entry.last) > FORGET_AFTER {
                entry.attempts = 0;
            }
            entry.attempts += 1;
            entry.last = now;
            entry.blocked_until = now + pause(entry.attempts);
        }
        Ok(())
    }

    /// A login succeeded: its keys start over.
    pub fn succeeded(&self, keys: &[String]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_beyond_the_free_ones_open_growing_pauses() {
        let throttle = LoginThrottle::default();
        let keys = ["ip:127.0.0.1".to_owned(), "user:admin".to_owned()];
        for _ in 0..FREE_ATTEMPTS {
            assert!(throttle.attempt(&keys).is_ok());
        }
        assert!(throttle.attempt(&keys).is_ok(), "the fourth goes through and opens a pause");
        let wait = throttle.attempt(&keys).unwrap_err();
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1), "{wait:?}");
        // Another user from the same address waits too; the same user from elsewhere as well.
        assert!(throttle.attempt(&["ip:127.0.0.1".to_owned(), "user:bob".to_owned()]).is_err());
        assert!(throttle.attempt(&["ip:10.0.0.1".to_owned(), "user:admin".to_owned()]).is_err());
        throttle.succeeded(&keys);
        assert!(throttle.attempt(&keys).is_ok());
        assert_eq!(pause(FREE_ATTEMPTS + 2), Duration::from_secs(2));
        assert_eq!(pause(100), MAX_PAUSE);
    }
}

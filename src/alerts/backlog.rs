//! Notices waiting for the sending bot: errors raised while the host starts (a bot that is not set up, a store
//! that does not match) come before the notifying bot's session is restored, and are posted once it is.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most this many notices wait; beyond it the oldest is dropped (it stays in the journal).
pub const MAX_WAITING: usize = 32;
/// A notice the sending bot could not take within this long is dropped: by then the journal is the place to look.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Backlog {
    waiting: VecDeque<(String, Instant)>,
}

impl Backlog {
    /// Queues `body` behind what already waits (notices keep their order). Returns whether the oldest was dropped
    /// to make room.
    pub fn push(&mut self, body: String, now: Instant) -> bool {
        let full = self.waiting.len() >= MAX_WAITING;
        if full {
            self.waiting.pop_front();
        }
        self.waiting.push_back((body, now));
        full
    }

    /// Drops the notices that waited longer than [`MAX_WAIT`]; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(|(_, since)| now.duration_since(*since) <= MAX_WAIT);
        before - self.waiting.len()
    }

    pub fn front(&self) -> Option<&str> {
        self.waiting.front().map(|(body, _)| body.as_str())
    }

    pub fn pop_front(&mut self) {
        self.waiting.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_wait_in_order_the_oldest_make_room_and_old_ones_expire() {
        let start = Instant::now();
        let mut backlog = Backlog::default();
        for n in 0..MAX_WAITING {
            assert!(!backlog.push(format!("n{n}"), start));
        }
        assert!(backlog.push("late".into(), start + Duration::from_secs(300)));
        assert_eq!(backlog.front(), Some("n1"), "the oldest made room");

        assert_eq!(backlog.expire(start + MAX_WAIT), 0, "exactly MAX_WAIT old is still kept");
        assert_eq!(backlog.expire(start + MAX_WAIT + Duration::from_secs(1)), MAX_WAITING - 1);
        assert_eq!(backlog.front(), Some("late"));
        backlog.pop_front();
        assert_eq!(backlog.front(), None);
    }
}

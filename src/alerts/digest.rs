//! Deduplication and rate limiting of admin-room notifications: a crash loop sends one message and later a count,
//! not a flood.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::telemetry::capture::rfc3339;
use crate::telemetry::{Alert, Severity};

/// A message ready for the admin room (not yet scrubbed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    instance: Option<String>,
    severity: Severity,
    message: String,
}

struct Seen {
    first_sent: Instant,
    suppressed: u32,
    severity: Severity,
}

pub struct Digest {
    window: Duration,
    per_minute: u32,
    seen: HashMap<Key, Seen>,
    sent: VecDeque<Instant>,
    held_back: u32,
}

impl Digest {
    pub fn new(window: Duration, per_minute: u32) -> Self {
        Digest { window, per_minute: per_minute.max(1), seen: HashMap::new(), sent: VecDeque::new(), held_back: 0 }
    }

    fn allowed(&mut self, now: Instant) -> bool {
        while self.sent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            self.sent.pop_front();
        }
        if self.sent.len() < self.per_minute as usize {
            self.sent.push_back(now);
            true
        } else {
            false
        }
    }

    /// What to send for a new alert, if anything.
    pub fn offer(&mut self, alert: &Alert, now: Instant) -> Option<Outgoing> {
        let key = Key { instance: alert.instance.clone(), severity: alert.severity, message: alert.message.clone() };
        if let Some(seen) = self.seen.get_mut(&key)
            && now.duration_since(seen.first_sent) < self.window
        {
            seen.suppressed += 1;
            return None;
        }
        if !self.allowed(now) {
            self.held_back += 1;
            return None;
        }
        self.seen.insert(key, Seen { first_sent: now, suppressed: 0, severity: alert.severity });
        Some(Outgoing { body: format_alert(alert) })
    }

    /// Summaries due at `now`: counts of repeats whose window ended, and of alerts held back by the rate limit.
    pub fn flush(&mut self, now: Instant) -> Vec<Outgoing> {
        let window = self.window;
        let mut due: Vec<(Key, Seen)> = Vec::new();
        let expired: Vec<Key> = self
            .seen
            .iter()
            .filter(|(_, s)| now.duration_since(s.first_sent) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(seen) = self.seen.remove(&key)
                && seen.suppressed > 0
            {
                due.push((key, seen));
            }
        }
        let mut out = Vec::new();
        for (key, seen) in due {
            if !self.allowed(now) {
                self.held_back += 1;
                continue;
            }
            let label = if seen.severity == Severity::Critical { "CRITICAL" } else { "ERROR" };
            out.push(Outgoing {
                body: format!(
                    "{label} · {} · repeated {} more time{} in the last {} s: {}",
                    key.instance.as_deref().unwrap_or("host"),
                    seen.suppressed,
                    if seen.suppressed == 1 { "" } else { "s" },
                    window.as_secs(),
                    key.message
                ),
            });
        }
        if self.held_back > 0 && self.allowed(now) {
            out.push(Outgoing {
                body: format!(
                    "{} more notification{} held back by the rate limit ({} per minute); see the journal",
                    self.held_back,
                    if self.held_back == 1 { " was" } else { "s were" },
                    self.per_minute
                ),
            });
            self.held_back = 0;
        }
        out
    }
}

fn format_alert(alert: &Alert) -> String {
    let label = match alert.severity {
        Severity::Critical => "CRITICAL",
        Severity::Error => "ERROR",
    };
    let mut body =
        format!("{label} · {} · {}\n{}", alert.instance.as_deref().unwrap_or("host"), rfc3339(alert.at), alert.message);
    if !alert.context.is_empty() {
        body.push('\n');
        let parts: Vec<String> = alert.context.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        body.push_str(&parts.join(", "));
    }
    if !alert.trace.is_empty() {
        body.push_str("\nlast log lines:");
        for line in &alert.trace {
            let _ = write!(body, "\n  {line}");
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn alert(message: &str) -> Alert {
        Alert {
            at: SystemTime::UNIX_EPOCH,
            instance: Some("ping".into()),
            severity: Severity::Error,
            message: message.into(),
            context: BTreeMap::from([("room_id".to_owned(), "!r:x".to_owned())]),
            trace: vec!["a line".into()],
        }
    }

    #[test]
    fn repeats_are_counted_and_summarized_once_the_window_ends() {
        let start = Instant::now();
        let mut digest = Digest::new(Duration::from_secs(600), 6);
        let first = digest.offer(&alert("instance failed"), start).expect("the first one is sent");
        assert!(
            first.body.contains("ERROR · ping")
                && first.body.contains("room_id: !r:x")
                && first.body.contains("a line")
        );
        for i in 1..50 {
            assert_eq!(digest.offer(&alert("instance failed"), start + Duration::from_secs(i)), None);
        }
        assert!(digest.flush(start + Duration::from_secs(60)).is_empty(), "nothing before the window ends");
        let summary = digest.flush(start + Duration::from_secs(601));
        assert_eq!(summary.len(), 1);
        assert!(summary[0].body.contains("repeated 49 more times"), "{:?}", summary);
        assert!(digest.flush(start + Duration::from_secs(1300)).is_empty());
    }

    #[test]
    fn distinct_alerts_are_rate_limited_and_the_rest_counted() {
        let start = Instant::now();
        let mut digest = Digest::new(Duration::from_secs(600), 3);
        let sent = (0..10).filter(|i| digest.offer(&alert(&format!("problem {i}")), start).is_some()).count();
        assert_eq!(sent, 3);
        let later = digest.flush(start + Duration::from_secs(61));
        assert!(later.iter().any(|o| o.body.contains("7 more notifications were held back")), "{later:?}");
    }
}

//! What the host learns from its own logs: recent lines per instance (served by the management API), recent
//! errors (a health indicator), error counts (metrics), and ERROR/CRITICAL events for the admin room.

pub mod capture;
pub mod fields;
pub mod scrub;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

/// Lines kept per instance (and for the host itself).
pub const RING_LINES: usize = 200;
/// The key for lines that belong to no instance.
pub const HOST: &str = "host";

/// How bad an event is, as the admin room sees it. `CRITICAL` is an ERROR event with `severity = "CRITICAL"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Critical,
}

/// An ERROR or CRITICAL event on its way to the admin room.
#[derive(Debug, Clone)]
pub struct Alert {
    pub at: SystemTime,
    pub instance: Option<String>,
    pub severity: Severity,
    pub message: String,
    /// Structured fields: room_id, event_id, error, ...
    pub context: BTreeMap<String, String>,
    /// The last lines logged for the same instance, oldest first.
    pub trace: Vec<String>,
}

#[derive(Default)]
pub struct Telemetry {
    rings: Mutex<HashMap<String, VecDeque<String>>>,
    errors: Mutex<VecDeque<Instant>>,
    error_counts: Mutex<HashMap<String, u64>>,
    alerts: OnceLock<mpsc::Sender<Alert>>,
}

impl Telemetry {
    /// Where ERROR/CRITICAL events go from now on (the admin-room sender).
    pub fn route_alerts(&self, sender: mpsc::Sender<Alert>) {
        let _ = self.alerts.set(sender);
    }

    pub(crate) fn push_line(&self, key: &str, line: String) {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let ring = rings.entry(key.to_owned()).or_default();
        if ring.len() == RING_LINES {
            ring.pop_front();
        }
        ring.push_back(line);
    }

    pub(crate) fn record_error(&self, instance: Option<&str>) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.push_back(Instant::now());
        while errors.len() > 1000 {
            errors.pop_front();
        }
        drop(errors);
        *self
            .error_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(instance.unwrap_or(HOST).to_owned())
            .or_default() += 1;
    }

    pub(crate) fn alert(&self, alert: Alert) {
        if let Some(sender) = self.alerts.get() {
            // Never block logging: when the sender lags, the alert is dropped (it is in the journal anyway).
            let _ = sender.try_send(alert);
        }
    }

    /// The last `limit` lines logged for `key` (an instance id or [`HOST`]), oldest first.
    pub fn recent_lines(&self, key: &str, limit: usize) -> Vec<String> {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings
            .get(key)
            .map(|ring| ring.iter().skip(ring.len().saturating_sub(limit)).cloned().collect())
            .unwrap_or_default()
    }

    /// ERROR events logged within `window`.
    pub fn errors_within(&self, window: Duration) -> usize {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.iter().rev().take_while(|at| at.elapsed() <= window).count()
    }

    /// ERROR events logged for an instance (or [`HOST`]) since start.
    pub fn error_count(&self, key: &str) -> u64 {
        self.error_counts.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or_default()
    }
}

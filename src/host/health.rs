//! The host's health, from the seed-002 indicators: every enabled bot running, every running bot synced within
//! the last 10 minutes, no ERROR or CRITICAL event in the last 5 minutes.

use std::time::Duration;

use serde::Serialize;

use super::view::{InstanceView, State};

pub const STALE_SYNC: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Instances meant to run (enabled, set up, not stopped) and how many of them run.
    pub enabled: usize,
    pub running: usize,
    /// Running instances whose last sync is older than 10 minutes (or that never synced).
    pub stale_syncs: Vec<String>,
    /// Instances meant to run that are failed or restarting.
    pub failing: Vec<String>,
    /// Enabled instances that are not set up (`created`): configured, but setup has not made their state.
    pub not_set_up: Vec<String>,
    pub errors_last_5_min: usize,
}

pub fn assess(views: &[InstanceView], errors_last_5_min: usize) -> Health {
    let wanted: Vec<&InstanceView> = views.iter().filter(|v| v.wanted()).collect();
    let running = wanted.iter().filter(|v| v.state == State::Running).count();
    let stale_syncs: Vec<String> = wanted
        .iter()
        .filter(|v| v.state == State::Running)
        .filter(|v| v.last_sync_age_secs.is_none_or(|age| age > STALE_SYNC.as_secs()))
        .map(|v| v.id.clone())
        .collect();
    let failing: Vec<String> =
        wanted.iter().filter(|v| matches!(v.state, State::Failed | State::Restarting)).map(|v| v.id.clone()).collect();
    let not_set_up: Vec<String> =
        views.iter().filter(|v| v.enabled && v.state == State::Created).map(|v| v.id.clone()).collect();
    let status = if !wanted.is_empty() && running == 0 {
        HealthStatus::Failed
    } else if running < wanted.len() || !stale_syncs.is_empty() || !not_set_up.is_empty() || errors_last_5_min > 0 {
        HealthStatus::Degraded
    } else {
        HealthStatus::Healthy
    };
    Health { status, enabled: wanted.len(), running, stale_syncs, failing, not_set_up, errors_last_5_min }
}

impl Health {
    /// The systemd `STATUS=` line.
    pub fn status_line(&self, views: &[InstanceView]) -> String {
        let status = match self.status {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Failed => "failed",
        };
        let syncing = views.iter().filter(|v| v.wanted() && v.state == State::Running && v.syncing).count();
        let mut line = if self.enabled == 0 {
            format!("{status}: no bots enabled")
        } else {
            format!("{status}: {syncing}/{} bots syncing", self.enabled)
        };
        let mut details = Vec::new();
        for view in views.iter().filter(|v| v.wanted()) {
            let what = match view.state {
                State::Running if view.syncing => continue,
                State::Running => "sync failing",
                State::Enabled => "starting",
                State::Failed => "failed",
                State::Restarting => "restarting",
                _ => continue,
            };
            let why = view.last_error.as_deref().map(|e| format!(" ({})", shorten(e))).unwrap_or_default();
            details.push(format!("{} {what}{why}", view.id));
        }
        if !self.not_set_up.is_empty() {
            details.push(format!("not set up: {}", self.not_set_up.join(", ")));
        }
        if self.errors_last_5_min > 0 && details.is_empty() {
            details.push(format!("{} errors in the last 5 min", self.errors_last_5_min));
        }
        if !details.is_empty() {
            line.push_str("; ");
            line.push_str(&details.join("; "));
        }
        line
    }
}

fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::view::CounterView;

    fn view(id: &str, state: State, age: Option<u64>) -> InstanceView {
        InstanceView {
            id: id.into(),
            kind: "ping".into(),
            user: format!("@{id}:x"),
            state,
            enabled: true,
            stopped: false,
            device_id: None,
            last_sync: None,
            last_sync_age_secs: age,
            syncing: state == State::Running,
            first_sync_done: true,
            last_error: None,
            progress_age_secs: None,
            restarts: 0,
            next_restart_in_secs: None,
            restart_delay_ms: None,
            counters: CounterView::default(),
        }
    }

    #[test]
    fn indicators() {
        let healthy = [view("a", State::Running, Some(5)), view("b", State::Running, Some(1))];
        assert_eq!(assess(&healthy, 0).status, HealthStatus::Healthy);
        assert_eq!(assess(&healthy, 0).status_line(&healthy), "healthy: 2/2 bots syncing");
        assert_eq!(assess(&healthy, 2).status, HealthStatus::Degraded, "recent errors");
        let stale = [view("a", State::Running, Some(601))];
        assert_eq!(assess(&stale, 0).stale_syncs, vec!["a".to_owned()]);
        let one_down = [view("a", State::Running, Some(5)), view("b", State::Restarting, None)];
        let health = assess(&one_down, 0);
        assert_eq!(health.status, HealthStatus::Degraded);
        assert!(health.status_line(&one_down).contains("b restarting"));
        let all_down = [view("a", State::Failed, None)];
        assert_eq!(assess(&all_down, 0).status, HealthStatus::Failed);
        let mut disabled = view("a", State::Configured, None);
        disabled.enabled = false;
        assert_eq!(assess(&[disabled], 0).status, HealthStatus::Healthy, "nothing wanted, nothing wrong");
        let not_set_up = [view("a", State::Running, Some(5)), view("b", State::Created, None)];
        let health = assess(&not_set_up, 0);
        assert_eq!(health.status, HealthStatus::Degraded);
        assert_eq!(health.status_line(&not_set_up), "degraded: 1/1 bots syncing; not set up: b");
    }
}

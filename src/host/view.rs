//! What the host shows of its instances: the seed-002 state machine and the numbers behind it. Published by the
//! supervisor, read by the management API, the health summary, metrics and the systemd status line.

use serde::Serialize;

/// The instance state machine (seed 002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Configured, but `maubot setup` has not created its login and store yet.
    Created,
    /// Set up, but disabled (by the config or at run time).
    Configured,
    /// Enabled and starting: restoring the session, first sync under way.
    Enabled,
    /// Syncing and handling events.
    Running,
    /// Stopped at run time (kept across restarts until started again).
    Stopped,
    /// Its loop ended with an error.
    Failed,
    /// Waiting (backoff) before starting again after a failure.
    Restarting,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Configured => "configured",
            State::Enabled => "enabled",
            State::Running => "running",
            State::Stopped => "stopped",
            State::Failed => "failed",
            State::Restarting => "restarting",
        }
    }

    pub const ALL: [State; 7] = [
        State::Created,
        State::Configured,
        State::Enabled,
        State::Running,
        State::Stopped,
        State::Failed,
        State::Restarting,
    ];
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CounterView {
    pub events_handled: u64,
    pub commands_answered: u64,
    pub errors: u64,
    pub decryption_failures: u64,
    pub syncs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub user: String,
    pub state: State,
    /// Whether the instance should run (config, or the run-time override).
    pub enabled: bool,
    /// Stopped at run time.
    pub stopped: bool,
    pub device_id: Option<String>,
    /// RFC 3339 time of the last completed sync.
    pub last_sync: Option<String>,
    pub last_sync_age_secs: Option<u64>,
    /// Whether the loop's last sync succeeded (false while it is retrying).
    pub syncing: bool,
    pub first_sync_done: bool,
    pub last_error: Option<String>,
    /// Seconds since the running loop last made progress (a sync returned or an error was handled).
    pub progress_age_secs: Option<u64>,
    pub restarts: u64,
    pub next_restart_in_secs: Option<u64>,
    /// The backoff chosen before the pending (or last) restart, in milliseconds.
    pub restart_delay_ms: Option<u64>,
    pub counters: CounterView,
}

impl InstanceView {
    /// Enabled and not stopped: it is meant to be running.
    pub fn wanted(&self) -> bool {
        self.enabled && !self.stopped && self.state != State::Created
    }
}

//! The supervisor: runs every instance that is set up and enabled as its own task, restarts failed ones with
//! capped exponential backoff and jitter, carries out start/stop/restart/enable/disable (persisted in the
//! database) and reloads, and publishes what it sees as [`InstanceView`]s. One failing, panicking or slow
//! instance never stops the others: each has its own task, client and store, and the supervisor never waits
//! on an instance (stops finish in helper tasks that report back).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use matrix_sdk::ruma::OwnedUserId;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::slot::{Reply, Slot, Then};
use super::view::InstanceView;
use crate::config::{Config, InstanceConfig};
use crate::state::db::Override;
use crate::state::{Database, InstanceRecord, Layout};

pub use super::slot::{MAX_RESTART_DELAY, restart_delay};

/// What the management API can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Start,
    Stop,
    Restart,
    Enable,
    Disable,
}

impl Control {
    pub fn parse(action: &str) -> Option<Control> {
        Some(match action {
            "start" => Control::Start,
            "stop" => Control::Stop,
            "restart" => Control::Restart,
            "enable" => Control::Enable,
            "disable" => Control::Disable,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("no instance `{0}` is configured")]
    NotFound(String),
    #[error("instance `{0}` was never set up; run `{cmd} --add-instance {0}` first", cmd = crate::state::setup_command())]
    NotSetUp(String),
    #[error("instance `{0}` is disabled; enable it first")]
    Disabled(String),
    #[error("the change could not be saved: {0}")]
    Storage(String),
    #[error("the host is shutting down")]
    ShuttingDown,
}

pub struct Request {
    pub id: String,
    pub control: Control,
    pub reply: Reply,
}

/// A new configuration and the sessions read for it, to apply without restarting what did not change. (The
/// run-time overrides are read by the supervisor itself, so that a control handled meanwhile is not undone.)
pub struct Reload {
    pub config: Arc<Config>,
    pub records: Vec<InstanceRecord>,
    pub reply: oneshot::Sender<ReloadSummary>,
}

/// What a reload changed, by instance id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub removed: Vec<String>,
    pub not_set_up: Vec<String>,
}

pub enum Command {
    Control(Request),
    Reload(Reload),
}

/// The registry of running clients, by instance id: the supervisor owns it (a client is added when its
/// instance's session is restored and removed when the instance stops); the admin-room sender reads it.
pub type Clients = Arc<RwLock<HashMap<String, matrix_sdk::Client>>>;

/// What every instance task needs from the host.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<Config>,
    pub layout: Layout,
    pub db: Arc<Database>,
    /// Users of every bot in this host; their messages are never commands.
    pub bot_users: Arc<RwLock<HashSet<OwnedUserId>>>,
    pub clients: Clients,
    pub changed: Arc<Notify>,
    /// The running instances whose plugins serve HTTP (the management server's `/_plugins/<id>/`).
    pub endpoints: crate::plugin::http::Endpoints,
    /// What instances publish for each other (a `space` instance's users, for a `guard`).
    pub directory: crate::plugin::directory::Directory,
}

/// Running this long without failing resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(120);
/// How often handled events that are too old to matter are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long the key of a finished job is remembered (and a job with that key refused).
const JOB_KEYS_KEPT_SECS: i64 = 7 * 24 * 3600;

/// An instance that made no progress (no completed or failed sync) for this long is hung: its task is aborted
/// and it is restarted like a failed one. A sync long-polls for `sync_timeout`, so this leaves 90 s to spare.
pub fn hung_after(config: &Config) -> Duration {
    Duration::from_secs(config.host.sync_timeout_secs) + Duration::from_secs(90)
}

/// Whether an instance is enabled: the config, unless a run-time override was made under the same config.
fn effective_enabled(id: &str, config: &InstanceConfig, saved: &Override) -> (bool, bool) {
    match (saved.enabled, saved.config_enabled) {
        (Some(enabled), Some(was)) if was == config.enabled => (enabled, false),
        (Some(_), _) => {
            tracing::info!(instance = %id, "the config changed `enabled`; it wins over the earlier run-time change");
            (config.enabled, true)
        }
        _ => (config.enabled, false),
    }
}

pub fn bot_users(config: &Config) -> HashSet<OwnedUserId> {
    config.instances.values().filter_map(|i| OwnedUserId::try_from(i.user.as_str()).ok()).collect()
}

pub struct Supervisor {
    shared: Shared,
    slots: BTreeMap<String, Slot>,
    views: watch::Sender<Vec<InstanceView>>,
    stopped_tx: mpsc::UnboundedSender<String>,
    stopped_rx: mpsc::UnboundedReceiver<String>,
}

impl Supervisor {
    /// Slots for every configured instance, with the run-time overrides applied (a changed config wins over an
    /// override made under the old config; such overrides are forgotten).
    pub async fn new(
        shared: Shared,
        views: watch::Sender<Vec<InstanceView>>,
    ) -> Result<Self, crate::state::StateError> {
        let records: HashMap<String, InstanceRecord> =
            shared.db.instances().await?.into_iter().map(|r| (r.id.clone(), r)).collect();
        let overrides = shared.db.overrides().await?;
        let mut slots = BTreeMap::new();
        for (id, config) in &shared.config.instances {
            let saved = overrides.get(id).cloned().unwrap_or_default();
            let (enabled, forget) = effective_enabled(id, config, &saved);
            if forget {
                shared.db.clear_enabled_override(id).await?;
            }
            let slot = Slot::new(id, config.clone(), records.get(id).cloned(), enabled, saved.stopped);
            slots.insert(id.clone(), slot);
        }
        for id in records.keys().filter(|id| !shared.config.instances.contains_key(*id)) {
            tracing::warn!(instance = %id, "state exists for an instance that is no longer configured; keeping it");
        }
        let (stopped_tx, stopped_rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor { shared, slots, views, stopped_tx, stopped_rx };
        // Readers see every configured bot from the start: `run` decides READY=1 on these views, and an empty
        // list would read as "no bots enabled, all started" before `run` has spawned anything.
        supervisor.publish();
        Ok(supervisor)
    }

    /// Runs until `shutdown`; then stops every instance, waiting at most `grace`.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let shared = self.shared.clone();
        for slot in self.slots.values_mut() {
            if slot.wanted() {
                slot.spawn(&shared);
            }
        }
        self.report_not_set_up(None);
        self.publish();
        let changed = self.shared.changed.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_prune = Instant::now() - PRUNE_EVERY + Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = crate::stopping(&mut shutdown) => break,
                command = commands.recv() => match command {
                    Some(Command::Control(request)) => self.control(request).await,
                    Some(Command::Reload(reload)) => self.reload(reload).await,
                    None => break,
                },
                Some(id) = self.stopped_rx.recv() => self.stop_finished(&id),
                _ = changed.notified() => {}
                _ = tick.tick() => {}
            }
            self.reap().await;
            let now = Instant::now();
            let shared = self.shared.clone();
            for slot in self.slots.values_mut() {
                slot.start_if_due(&shared, now);
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                self.prune();
            }
            self.publish();
        }
        let deadline = tokio::time::Instant::now() + grace;
        let shared = self.shared.clone();
        for slot in self.slots.values_mut() {
            slot.begin_shutdown();
        }
        // One deadline for all: the last of them waits at most `grace` in total.
        for slot in self.slots.values_mut() {
            slot.stop_now(&shared, deadline).await;
        }
        self.publish();
    }

    async fn control(&mut self, request: Request) {
        let Request { id, control, reply } = request;
        let shared = self.shared.clone();
        let Some(slot) = self.slots.get_mut(&id) else {
            let _ = reply.send(Err(ControlError::NotFound(id)));
            return;
        };
        let needs_setup = matches!(control, Control::Start | Control::Restart | Control::Enable);
        if needs_setup && slot.record.is_none() {
            let _ = reply.send(Err(ControlError::NotSetUp(id)));
            return;
        }
        if matches!(control, Control::Start | Control::Restart) && !slot.enabled {
            let _ = reply.send(Err(ControlError::Disabled(id)));
            return;
        }
        let saved = match control {
            Control::Start | Control::Restart if slot.stopped => shared.db.set_stopped(&id, false).await,
            Control::Stop => shared.db.set_stopped(&id, true).await,
            Control::Enable => shared.db.set_enabled_override(&id, true, slot.config.enabled).await,
            Control::Disable => shared.db.set_enabled_override(&id, false, slot.config.enabled).await,
            _ => Ok(()),
        };
        if let Err(e) = saved {
            let _ = reply.send(Err(ControlError::Storage(e.to_string())));
            return;
        }
        tracing::info!(instance = %id, action = ?control, "instance control");
        let reply = match control {
            Control::Start => {
                slot.stopped = false;
                slot.start_fresh(&shared);
                Some(reply)
            }
            Control::Restart => {
                slot.stopped = false;
                slot.failures_in_row = 0;
                if slot.is_running() {
                    slot.begin_stop(&shared, Then::Start, None, &self.stopped_tx);
                } else {
                    slot.start_fresh(&shared);
                }
                Some(reply)
            }
            Control::Enable => {
                slot.enabled = true;
                if slot.wanted() && !slot.is_running() {
                    slot.start_fresh(&shared);
                }
                Some(reply)
            }
            // Answered when the instance has stopped, without holding up the supervisor meanwhile.
            Control::Stop => {
                slot.stopped = true;
                slot.begin_stop(&shared, Then::Rest, Some(reply), &self.stopped_tx);
                None
            }
            Control::Disable => {
                slot.enabled = false;
                slot.begin_stop(&shared, Then::Rest, Some(reply), &self.stopped_tx);
                None
            }
        };
        // Published before the answer, so that a read of the instances right after it sees the change.
        let answer = reply.map(|reply| (reply, slot.view()));
        self.publish();
        if let Some((reply, view)) = answer {
            let _ = reply.send(Ok(view));
        }
    }

    /// A stop in progress finished.
    fn stop_finished(&mut self, id: &str) {
        let shared = self.shared.clone();
        let Some(slot) = self.slots.get_mut(id) else { return };
        if slot.stop_finished(&shared) == Then::Remove {
            self.slots.remove(id);
            tracing::info!(instance = %id, "instance removed from the configuration; stopped (its state is kept)");
        }
    }

    /// Applies a new configuration: starts what is newly set up or enabled, stops what was removed or disabled,
    /// restarts what changed, and leaves everything else running.
    async fn reload(&mut self, reload: Reload) {
        let Reload { config, records, reply } = reload;
        let records: HashMap<String, InstanceRecord> = records.into_iter().map(|r| (r.id.clone(), r)).collect();
        let overrides = match self.shared.db.overrides().await {
            Ok(overrides) => overrides,
            Err(e) => {
                tracing::error!(error = %e, "reload: cannot read the run-time overrides; keeping the running state");
                let _ = reply.send(ReloadSummary::default());
                return;
            }
        };
        let old_config = self.shared.config.clone();
        self.shared.config = config.clone();
        *self.shared.bot_users.write().unwrap_or_else(|p| p.into_inner()) = bot_users(&config);
        let shared = self.shared.clone();
        let mut summary = ReloadSummary::default();
        let mut newly_configured = HashSet::new();

        let removed: Vec<String> =
            self.slots.keys().filter(|id| !config.instances.contains_key(*id)).cloned().collect();
        for id in removed {
            let slot = self.slots.get_mut(&id).expect("listed above");
            if slot.is_running() || slot.is_stopping() {
                slot.begin_stop(&shared, Then::Remove, None, &self.stopped_tx);
            } else {
                self.slots.remove(&id);
            }
            summary.removed.push(id);
        }
        for (id, instance) in &config.instances {
            let saved = overrides.get(id).cloned().unwrap_or_default();
            let (enabled, forget) = effective_enabled(id, instance, &saved);
            if forget && let Err(e) = shared.db.clear_enabled_override(id).await {
                tracing::warn!(instance = %id, error = %e, "could not forget a run-time override");
            }
            let record = records.get(id).cloned();
            let Some(slot) = self.slots.get_mut(id) else {
                newly_configured.insert(id.clone());
                let mut slot = Slot::new(id, instance.clone(), record, enabled, saved.stopped);
                if slot.wanted() {
                    slot.spawn(&shared);
                    summary.started.push(id.clone());
                }
                self.slots.insert(id.clone(), slot);
                continue;
            };
            let homeserver = |c: &Config| c.homeserver_of(instance).map(|(_, hs)| hs.url.clone());
            // Of the host settings, instances use the sync timeout.
            let changed = slot.config != *instance
                || slot.record != record
                || homeserver(&old_config) != homeserver(&config)
                || old_config.host.sync_timeout_secs != config.host.sync_timeout_secs;
            let was_wanted = slot.wanted();
            slot.config = instance.clone();
            slot.record = record;
            slot.enabled = enabled;
            slot.stopped = saved.stopped;
            if slot.is_stopping() {
                // A stop in progress (maybe the removal by an earlier reload): what follows is decided anew.
                slot.set_after_stop(if slot.wanted() { Then::Start } else { Then::Rest });
                if slot.wanted() {
                    summary.restarted.push(id.clone());
                }
            } else if !slot.wanted() && slot.is_running() {
                slot.begin_stop(&shared, Then::Rest, None, &self.stopped_tx);
                summary.stopped.push(id.clone());
            } else if slot.wanted() && slot.is_running() && changed {
                slot.begin_stop(&shared, Then::Start, None, &self.stopped_tx);
                summary.restarted.push(id.clone());
            } else if slot.wanted() && !slot.is_running() && (changed || !was_wanted) {
                // Unchanged instances waiting out a backoff, or failed for good, are left as they are.
                slot.start_fresh(&shared);
                summary.started.push(id.clone());
            }
        }
        summary.not_set_up = self.report_not_set_up(Some(&newly_configured));
        tracing::info!(
            started = ?summary.started,
            stopped = ?summary.stopped,
            restarted = ?summary.restarted,
            removed = ?summary.removed,
            "configuration reloaded"
        );
        self.publish();
        let _ = reply.send(summary);
    }

    /// Reports (at ERROR: the admin room hears of it) enabled instances that are not set up: all of them at
    /// start, only the newly configured ones at a reload. Returns every enabled instance that is not set up.
    fn report_not_set_up(&self, only: Option<&HashSet<String>>) -> Vec<String> {
        let missing: Vec<String> =
            self.slots.values().filter(|s| s.record.is_none() && s.enabled).map(|s| s.id.clone()).collect();
        for id in &missing {
            if only.is_none_or(|only| only.contains(id)) {
                let fix = format!("{} --add-instance {id}", crate::state::setup_command());
                tracing::error!(
                    instance = %id,
                    "instance `{id}` is configured but not set up: it is not started (no login, no device) until \
                     `{fix}` has created its state. The other bots run"
                );
            }
        }
        missing
    }

    /// Collects finished tasks and aborts hung ones; failures are scheduled for a restart.
    async fn reap(&mut self) {
        let shared = self.shared.clone();
        let hung = hung_after(&shared.config);
        for slot in self.slots.values_mut() {
            slot.reap(&shared, hung, HEALTHY_AFTER).await;
        }
    }

    /// Forgets handled events too old to be answered again and old finished job keys, off the supervisor's loop.
    fn prune(&self) {
        let max_age = self.shared.config.instances.values().map(|i| i.max_command_age_secs).max().unwrap_or(300);
        let keep_secs = (max_age as i64).saturating_mul(2).max(3600);
        let db = self.shared.db.clone();
        tokio::spawn(async move {
            match db.prune_handled(keep_secs).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "forgot old handled events"),
                Err(e) => tracing::warn!(error = %e, "could not prune handled events"),
            }
            // A finished job's key is refused for a week (GitHub redelivers by hand days later).
            if let Err(e) = db.prune_jobs_done(JOB_KEYS_KEPT_SECS).await {
                tracing::warn!(error = %e, "could not prune finished job keys");
            }
        });
    }

    fn publish(&self) {
        self.views.send_replace(self.slots.values().map(Slot::view).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Purpose, Sources};
    use crate::host::view::State;

    #[tokio::test]
    async fn the_views_list_every_configured_bot_before_the_supervisor_runs() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        let config_file = dir.path().join("config.yaml");
        std::fs::write(
            &config_file,
            format!(
                "state_dir: {}\nhomeservers:\n  local:\n    url: http://127.0.0.1:1\ninstances:\n  \
                 ready:\n    type: ping\n    user: \"@ready:example.org\"\n    password: {{credential: pw}}\n  \
                 waiting:\n    type: ping\n    user: \"@waiting:example.org\"\n    password: {{credential: pw}}\n",
                state_dir.display()
            ),
        )
        .unwrap();
        let sources = Sources {
            config_files: vec![config_file],
            override_files: vec![],
            state_directory: None,
            credentials_directory: None,
            env: vec![],
        };
        let config = crate::config::load(&sources, Purpose::Run).unwrap().config;
        let layout = Layout::new(&config);
        let db = Database::create(&layout.database()).unwrap();
        db.insert_instance(&crate::state::db::record("ready"), None).await.unwrap();
        let config = Arc::new(config);
        let shared = Shared {
            config: config.clone(),
            layout,
            db: Arc::new(db),
            bot_users: Arc::new(RwLock::new(bot_users(&config))),
            clients: Arc::default(),
            changed: Arc::new(Notify::new()),
            endpoints: Default::default(),
            directory: Default::default(),
        };
        let (views_tx, views) = watch::channel(Vec::new());

        let _supervisor = Supervisor::new(shared, views_tx).await.unwrap();

        // Nothing has run yet, and `run`'s readiness check must already see one bot to wait for.
        let views = views.borrow();
        let states: Vec<(&str, State, bool)> =
            views.iter().map(|v| (v.id.as_str(), v.state, v.first_sync_done)).collect();
        assert_eq!(states, [("ready", State::Enabled, false), ("waiting", State::Created, false)]);
    }
}

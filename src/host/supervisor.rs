//! The supervisor: runs every enabled instance as its own task, restarts failed ones with capped exponential
//! backoff and jitter, carries out start/stop/restart/enable/disable (persisted in the database), and publishes
//! what it sees as [`InstanceView`]s. One failing, panicking or slow instance never stops the others: each has
//! its own task, client and store, and the supervisor never waits on an instance.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::view::{CounterView, InstanceView, State};
use crate::alerts::sender::Clients;
use crate::config::{Config, InstanceConfig};
use crate::instance::{Counters, Instance, Outcome, Phase, RateLimiter, Status};
use crate::matrix::client;
use crate::plugin::{self, PluginContext};
use crate::state::{Database, InstanceRecord, Layout};
use crate::telemetry::capture::rfc3339;

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
    #[error("instance `{0}` was never set up; run `maubot setup --add-instance {0}` first")]
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
    pub reply: oneshot::Sender<Result<InstanceView, ControlError>>,
}

/// What every instance task needs from the host.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<Config>,
    pub layout: Layout,
    pub db: Arc<Database>,
    pub bot_users: Arc<HashSet<OwnedUserId>>,
    pub clients: Clients,
    pub changed: Arc<Notify>,
}

/// Longest wait before restarting a failed instance.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(300);
/// Failures within this window that make a restart loop (reported as CRITICAL).
const LOOP_WINDOW: Duration = Duration::from_secs(600);
const LOOP_FAILURES: usize = 3;
/// How long a stop, restart or disable through the API waits for the instance to finish.
const CONTROL_STOP_GRACE: Duration = Duration::from_secs(10);
/// Running this long without failing resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(120);

/// An instance that made no progress (no completed or failed sync) for this long is hung: its task is aborted
/// and it is restarted like a failed one. A sync long-polls for `sync_timeout`, so this leaves 90 s to spare.
pub fn hung_after(config: &Config) -> Duration {
    Duration::from_secs(config.host.sync_timeout_secs) + Duration::from_secs(90)
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Outcome>,
    started: Instant,
}

struct Slot {
    id: String,
    config: InstanceConfig,
    record: Option<InstanceRecord>,
    enabled: bool,
    stopped: bool,
    status: Arc<watch::Sender<Status>>,
    counters: Arc<Counters>,
    limiter: Arc<RateLimiter>,
    run: Option<Running>,
    next_start: Option<Instant>,
    failures_in_row: u32,
    failure_times: VecDeque<Instant>,
    loop_reported: bool,
    restarts: u64,
    last_error: Option<String>,
    failed: bool,
    restart_delay: Option<Duration>,
}

/// Exponential backoff with jitter for restarts: about 1 s, 2 s, 4 s ... capped at five minutes.
pub fn restart_delay(failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(9));
    let jitter = rand::random::<f64>() * 0.25 + 0.875;
    base.min(MAX_RESTART_DELAY).mul_f64(jitter).min(MAX_RESTART_DELAY)
}

pub struct Supervisor {
    shared: Shared,
    slots: BTreeMap<String, Slot>,
    views: watch::Sender<Vec<InstanceView>>,
}

impl Supervisor {
    /// Slots for every configured instance, with the run-time overrides applied (a changed config wins over an
    /// override made under the old config).
    pub fn new(shared: Shared, views: watch::Sender<Vec<InstanceView>>) -> Result<Self, crate::state::StateError> {
        let overrides = shared.db.overrides()?;
        let mut slots = BTreeMap::new();
        for (id, config) in &shared.config.instances {
            let record = shared.db.instance(id)?;
            let saved = overrides.get(id).cloned().unwrap_or_default();
            let enabled = match (saved.enabled, saved.config_enabled) {
                (Some(enabled), Some(was)) if was == config.enabled => enabled,
                (Some(_), _) => {
                    tracing::info!(instance = %id, "the config changed `enabled`; it wins over the earlier run-time change");
                    shared.db.clear_enabled_override(id)?;
                    config.enabled
                }
                _ => config.enabled,
            };
            slots.insert(
                id.clone(),
                Slot {
                    id: id.clone(),
                    config: config.clone(),
                    record,
                    enabled,
                    stopped: saved.stopped,
                    status: Arc::new(watch::channel(Status::new()).0),
                    counters: Arc::default(),
                    limiter: Arc::new(RateLimiter::new(&config.rate_limit)),
                    run: None,
                    next_start: None,
                    failures_in_row: 0,
                    failure_times: VecDeque::new(),
                    loop_reported: false,
                    restarts: 0,
                    last_error: None,
                    failed: false,
                    restart_delay: None,
                },
            );
        }
        Ok(Supervisor { shared, slots, views })
    }

    /// The instances that will run (enabled, not stopped), for the start-up checks.
    pub fn wanted(&self) -> impl Iterator<Item = (&String, Option<&InstanceRecord>)> {
        self.slots.values().filter(|s| s.enabled && !s.stopped).map(|s| (&s.id, s.record.as_ref()))
    }

    /// Runs until `shutdown`; then stops every instance, waiting at most `grace`.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        for slot in self.slots.values_mut() {
            if slot.enabled && !slot.stopped && slot.record.is_some() {
                slot.spawn(&self.shared);
            }
        }
        self.publish();
        let changed = self.shared.changed.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = crate::stopping(&mut shutdown) => break,
                request = requests.recv() => match request {
                    Some(request) => {
                        let result = self.control(&request.id, request.control).await;
                        let _ = request.reply.send(result);
                    }
                    None => break,
                },
                _ = changed.notified() => {}
                _ = tick.tick() => {}
            }
            self.reap().await;
            self.start_due();
            self.publish();
        }
        let deadline = tokio::time::Instant::now() + grace;
        for slot in self.slots.values_mut() {
            slot.stop_task(&self.shared, deadline).await;
        }
        self.publish();
    }

    async fn control(&mut self, id: &str, control: Control) -> Result<InstanceView, ControlError> {
        let shared = self.shared.clone();
        let slot = self.slots.get_mut(id).ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
        let storage = |e: crate::state::StateError| ControlError::Storage(e.to_string());
        match control {
            Control::Start | Control::Restart => {
                if slot.record.is_none() {
                    return Err(ControlError::NotSetUp(id.to_owned()));
                }
                if !slot.enabled {
                    return Err(ControlError::Disabled(id.to_owned()));
                }
                if control == Control::Restart {
                    slot.stop_task(&shared, tokio::time::Instant::now() + CONTROL_STOP_GRACE).await;
                }
                if slot.stopped {
                    shared.db.set_stopped(id, false).map_err(storage)?;
                    slot.stopped = false;
                }
                slot.failures_in_row = 0;
                slot.next_start = None;
                if slot.run.is_none() {
                    slot.spawn(&shared);
                }
            }
            Control::Stop => {
                shared.db.set_stopped(id, true).map_err(storage)?;
                slot.stopped = true;
                slot.next_start = None;
                slot.stop_task(&shared, tokio::time::Instant::now() + CONTROL_STOP_GRACE).await;
            }
            Control::Enable => {
                shared.db.set_enabled_override(id, true, slot.config.enabled).map_err(storage)?;
                slot.enabled = true;
                if slot.record.is_some() && !slot.stopped && slot.run.is_none() {
                    slot.failures_in_row = 0;
                    slot.spawn(&shared);
                }
            }
            Control::Disable => {
                shared.db.set_enabled_override(id, false, slot.config.enabled).map_err(storage)?;
                slot.enabled = false;
                slot.next_start = None;
                slot.stop_task(&shared, tokio::time::Instant::now() + CONTROL_STOP_GRACE).await;
            }
        }
        tracing::info!(instance = %id, action = ?control, "instance control");
        let view = slot.view();
        self.publish();
        Ok(view)
    }

    /// Collects finished tasks; failures are scheduled for a restart.
    async fn reap(&mut self) {
        let shared = self.shared.clone();
        for slot in self.slots.values_mut() {
            let finished = slot.run.as_ref().is_some_and(|r| r.task.is_finished());
            if let Some(running) = slot.run.as_ref()
                && !finished
                && slot.failures_in_row > 0
                && running.started.elapsed() > HEALTHY_AFTER
                && slot.status.borrow().phase == Phase::Syncing
            {
                slot.failures_in_row = 0;
                slot.loop_reported = false;
            }
            let hung = !finished
                && slot.run.is_some()
                && slot.status.borrow().last_progress.elapsed() > hung_after(&shared.config);
            if hung {
                let running = slot.run.take().expect("checked above");
                running.task.abort();
                slot.shared_clients_remove(&shared);
                slot.on_failure(format!(
                    "made no progress for {} s (hung); aborted it",
                    hung_after(&shared.config).as_secs()
                ));
                continue;
            }
            if !finished {
                continue;
            }
            let Some(running) = slot.run.take() else { continue };
            slot.shared_clients_remove(&shared);
            let outcome = match running.task.await {
                Ok(outcome) => outcome,
                Err(e) if e.is_panic() => Outcome::Failed("the bot's task panicked".into()),
                Err(_) => Outcome::Stopped,
            };
            if let Outcome::Failed(why) = outcome {
                slot.on_failure(why);
            }
        }
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        let shared = self.shared.clone();
        for slot in self.slots.values_mut() {
            if slot.next_start.is_some_and(|at| at <= now) && slot.enabled && !slot.stopped && slot.run.is_none() {
                slot.next_start = None;
                slot.restarts += 1;
                tracing::info!(instance = %slot.id, restarts = slot.restarts, "restarting");
                slot.spawn(&shared);
            }
        }
    }

    fn publish(&self) {
        self.views.send_replace(self.slots.values().map(Slot::view).collect());
    }
}

impl Slot {
    fn spawn(&mut self, shared: &Shared) {
        let Some(record) = self.record.clone() else { return };
        let (stop, stop_rx) = watch::channel(false);
        self.status.send_modify(|s| {
            let last_error = s.last_error.take();
            *s = Status::new();
            s.last_error = last_error;
        });
        self.failed = false;
        let context = PluginContext { instance: self.id.clone(), limiter: self.limiter.clone() };
        let task = tokio::spawn(run_instance(
            shared.clone(),
            self.config.clone(),
            record,
            self.status.clone(),
            self.counters.clone(),
            context,
            stop_rx,
        ));
        self.run = Some(Running { stop, task, started: Instant::now() });
    }

    /// Asks the running task to stop, waits until `deadline`, then abandons it; its client stops being offered
    /// for admin-room notifications.
    async fn stop_task(&mut self, shared: &Shared, deadline: tokio::time::Instant) {
        if let Some(running) = self.run.take() {
            let _ = running.stop.send(true);
            let abort = running.task.abort_handle();
            if tokio::time::timeout_at(deadline, running.task).await.is_err() {
                tracing::warn!(instance = %self.id, "did not stop in time; abandoning it");
                abort.abort();
            }
            self.shared_clients_remove(shared);
        }
    }

    fn shared_clients_remove(&self, shared: &Shared) {
        shared.clients.write().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }

    fn on_failure(&mut self, why: String) {
        let now = Instant::now();
        self.failed = true;
        self.failures_in_row += 1;
        self.failure_times.push_back(now);
        while self.failure_times.front().is_some_and(|t| now.duration_since(*t) > LOOP_WINDOW) {
            self.failure_times.pop_front();
        }
        let delay = restart_delay(self.failures_in_row);
        self.next_start = Some(now + delay);
        self.restart_delay = Some(delay);
        self.last_error = Some(why.clone());
        tracing::error!(
            instance = %self.id,
            error = %why,
            retry_in_ms = delay.as_millis() as u64,
            "instance failed; restarting it after a backoff"
        );
        if self.failure_times.len() >= LOOP_FAILURES && !self.loop_reported {
            self.loop_reported = true;
            tracing::error!(
                instance = %self.id,
                severity = "CRITICAL",
                failures = self.failure_times.len(),
                error = %why,
                "restart loop: the instance keeps failing"
            );
        }
    }

    fn view(&self) -> InstanceView {
        let status = self.status.borrow().clone();
        let state = if self.record.is_none() {
            State::Created
        } else if !self.enabled {
            State::Configured
        } else if self.stopped {
            State::Stopped
        } else if self.run.is_some() {
            match status.phase {
                Phase::Starting => State::Enabled,
                Phase::Syncing | Phase::Retrying(_) => State::Running,
                Phase::Failed(_) => State::Failed,
                Phase::Stopped => State::Stopped,
            }
        } else if self.next_start.is_some() {
            State::Restarting
        } else if self.failed {
            State::Failed
        } else {
            State::Enabled
        };
        let counters = &self.counters;
        InstanceView {
            id: self.id.clone(),
            kind: self.config.kind.clone(),
            user: self.config.user.clone(),
            state,
            enabled: self.enabled,
            stopped: self.stopped,
            device_id: self.record.as_ref().map(|r| r.device_id.clone()),
            last_sync: status.last_sync.map(rfc3339),
            last_sync_age_secs: status
                .last_sync
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default().as_secs()),
            syncing: status.phase == Phase::Syncing,
            first_sync_done: status.first_sync_done,
            last_error: status.last_error.clone().or_else(|| self.last_error.clone()),
            progress_age_secs: self.run.as_ref().map(|_| status.last_progress.elapsed().as_secs()),
            restarts: self.restarts,
            next_restart_in_secs: self.next_start.map(|at| at.saturating_duration_since(Instant::now()).as_secs()),
            restart_delay_ms: self.restart_delay.map(|d| d.as_millis() as u64),
            counters: CounterView {
                events_handled: counters.events_handled.load(Ordering::Relaxed),
                commands_answered: counters.commands_answered.load(Ordering::Relaxed),
                errors: counters.handling_errors.load(Ordering::Relaxed),
                decryption_failures: counters.decryption_failures.load(Ordering::Relaxed),
                syncs: counters.syncs.load(Ordering::Relaxed),
            },
        }
    }
}

/// One run of an instance: check the store, restore the session, run the plugin's sync loop.
async fn run_instance(
    shared: Shared,
    config: InstanceConfig,
    record: InstanceRecord,
    status: Arc<watch::Sender<Status>>,
    counters: Arc<Counters>,
    context: PluginContext,
    stop: watch::Receiver<bool>,
) -> Outcome {
    let id = record.id.clone();
    let store_dir = shared.layout.store_dir(&id);
    if let Err(e) = client::verify_store(&record, &store_dir).await {
        return Outcome::Failed(e.to_string());
    }
    let plugin = match plugin::registry::lookup(&config.kind).map(|kind| kind.build(&config.config)) {
        Some(Ok(plugin)) => plugin,
        Some(Err(problem)) => return Outcome::Failed(format!("plugin config: {}: {}", problem.key, problem.message)),
        None => return Outcome::Failed(format!("unknown plugin type `{}`", config.kind)),
    };
    let position = match shared.db.sync_token(&id) {
        Ok(position) => position,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    // The configured URL wins over the one recorded at setup: it may have moved (a new port, a proxy).
    let url =
        shared.config.homeserver_of(&config).map(|(_, hs)| hs.url.clone()).unwrap_or(record.homeserver_url.clone());
    let client = match client::restore(&url, &store_dir, &record, position.as_deref()).await {
        Ok(client) => client,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    tracing::info!(instance = %id, user = %record.user_id, device = %record.device_id, "session restored");
    shared.clients.write().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), client.clone());
    let instance = Instance {
        id,
        client,
        plugin,
        context,
        db: shared.db.clone(),
        bot_users: shared.bot_users.clone(),
        room_subscriptions: config
            .room_subscriptions
            .iter()
            .filter_map(|r| OwnedRoomId::try_from(r.as_str()).ok())
            .collect(),
        max_command_age: Duration::from_secs(config.max_command_age_secs),
        sync_timeout: Duration::from_secs(shared.config.host.sync_timeout_secs),
        status,
        counters,
        on_change: shared.changed.clone(),
    };
    instance.run(stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays_grow_and_are_capped() {
        assert!(restart_delay(1) < Duration::from_millis(1200));
        assert!(restart_delay(3) > Duration::from_secs(3) && restart_delay(3) < Duration::from_secs(5));
        for failures in [9, 10, 30, u32::MAX] {
            assert!(restart_delay(failures) <= MAX_RESTART_DELAY);
        }
        assert!(restart_delay(12) > Duration::from_secs(250));
    }

    #[test]
    fn controls_parse() {
        assert_eq!(Control::parse("restart"), Some(Control::Restart));
        assert_eq!(Control::parse("explode"), None);
    }
}

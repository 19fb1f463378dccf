//! One configured instance as the supervisor keeps it: its config and recorded session, whether it should run,
//! its running (or stopping) task, its failures and restarts, and what observers see of it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::instance_task;
use super::supervisor::{ControlError, Shared};
use super::view::{CounterView, InstanceView, State};
use crate::config::InstanceConfig;
use crate::instance::{Counters, Outcome, Phase, Status};
use crate::plugin::RateLimiter;
use crate::state::InstanceRecord;
use crate::telemetry::capture::rfc3339;

/// Longest wait before restarting a failed instance.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(300);
/// Failures within this window that make a restart loop (reported as CRITICAL).
const LOOP_WINDOW: Duration = Duration::from_secs(600);
const LOOP_FAILURES: usize = 3;
/// How long a stop waits for the instance to finish before abandoning its task.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Exponential backoff with jitter for restarts: about 1 s, 2 s, 4 s ... capped at five minutes.
pub fn restart_delay(failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(9));
    let jitter = rand::random::<f64>() * 0.25 + 0.875;
    base.min(MAX_RESTART_DELAY).mul_f64(jitter).min(MAX_RESTART_DELAY)
}

pub type Reply = oneshot::Sender<Result<InstanceView, ControlError>>;

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Outcome>,
    started: Instant,
}

/// What happens when a stop in progress has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Rest,
    Start,
    Remove,
}

struct Stopping {
    then: Then,
    waiting: Vec<Reply>,
}

/// Why an instance is not running although it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Restarted after a backoff.
    Transient,
    /// Stays failed until an operator acts (API start/restart, or a reload that changes it).
    Permanent,
}

pub struct Slot {
    pub id: String,
    pub config: InstanceConfig,
    pub record: Option<InstanceRecord>,
    pub enabled: bool,
    pub stopped: bool,
    status: Arc<watch::Sender<Status>>,
    counters: Arc<Counters>,
    limiter: Arc<RateLimiter>,
    run: Option<Running>,
    stopping: Option<Stopping>,
    next_start: Option<Instant>,
    pub failures_in_row: u32,
    failure_times: VecDeque<Instant>,
    loop_reported: bool,
    restarts: u64,
    last_error: Option<String>,
    failed: Option<Failure>,
    restart_delay: Option<Duration>,
}

impl Slot {
    pub fn new(id: &str, config: InstanceConfig, record: Option<InstanceRecord>, enabled: bool, stopped: bool) -> Self {
        Slot {
            id: id.to_owned(),
            limiter: Arc::new(RateLimiter::new(
                config.rate_limit.max_requests_per_minute,
                config.rate_limit.burst_size,
                Duration::from_secs(config.rate_limit.backoff_seconds),
            )),
            config,
            record,
            enabled,
            stopped,
            status: Arc::new(watch::channel(Status::new()).0),
            counters: Arc::default(),
            run: None,
            stopping: None,
            next_start: None,
            failures_in_row: 0,
            failure_times: VecDeque::new(),
            loop_reported: false,
            restarts: 0,
            last_error: None,
            failed: None,
            restart_delay: None,
        }
    }

    /// Set up, enabled and not stopped: it is meant to run.
    pub fn wanted(&self) -> bool {
        self.record.is_some() && self.enabled && !self.stopped
    }

    pub fn is_running(&self) -> bool {
        self.run.is_some()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    pub fn failed_permanently(&self) -> bool {
        self.failed == Some(Failure::Permanent)
    }

    /// Starts the instance's task (if it is set up and nothing runs or stops).
    pub fn spawn(&mut self, shared: &Shared) {
        if self.run.is_some() || self.stopping.is_some() {
            return;
        }
        let Some(record) = self.record.clone() else { return };
        let (stop, stop_rx) = watch::channel(false);
        self.status.send_modify(|s| {
            let last_error = s.last_error.take();
            *s = Status::new();
            s.last_error = last_error;
        });
        self.failed = None;
        self.next_start = None;
        let task = tokio::spawn(instance_task::run(
            shared.clone(),
            self.config.clone(),
            record,
            self.status.clone(),
            self.counters.clone(),
            self.limiter.clone(),
            stop_rx,
        ));
        self.run = Some(Running { stop, task, started: Instant::now() });
    }

    /// Starts (or restarts after a failure) from an operator's action: the backoff starts over.
    pub fn start_fresh(&mut self, shared: &Shared) {
        self.failures_in_row = 0;
        self.loop_reported = false;
        self.next_start = None;
        if self.stopping.is_some() {
            self.after_stop(Then::Start);
        } else {
            self.spawn(shared);
        }
    }

    /// Asks the running task to stop without waiting for it: a helper task waits (at most [`STOP_GRACE`]),
    /// then reports the id on `stopped`. `then` says what follows; `reply`, if any, is answered afterwards.
    /// Without a running task, `reply` is answered at once.
    pub fn begin_stop(
        &mut self,
        shared: &Shared,
        then: Then,
        reply: Option<Reply>,
        stopped: &mpsc::UnboundedSender<String>,
    ) {
        self.next_start = None;
        if let Some(stopping) = self.stopping.as_mut() {
            stopping.then = merge(stopping.then, then);
            stopping.waiting.extend(reply);
            return;
        }
        let Some(running) = self.run.take() else {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(self.view()));
            }
            if then == Then::Start {
                self.spawn(shared);
            }
            return;
        };
        remove_client(shared, &self.id);
        let _ = running.stop.send(true);
        let (id, stopped) = (self.id.clone(), stopped.clone());
        tokio::spawn(async move {
            let abort = running.task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, running.task).await.is_err() {
                tracing::warn!(instance = %id, "did not stop in time; abandoning it");
                abort.abort();
            }
            let _ = stopped.send(id);
        });
        self.stopping = Some(Stopping { then, waiting: reply.into_iter().collect() });
    }

    /// Decides anew what follows the stop in progress (a reload re-adding an instance being removed, say).
    pub fn set_after_stop(&mut self, then: Then) {
        if let Some(stopping) = self.stopping.as_mut() {
            stopping.then = then;
        }
    }

    /// Changes what follows the stop in progress.
    pub fn after_stop(&mut self, then: Then) {
        if let Some(stopping) = self.stopping.as_mut() {
            stopping.then = merge(stopping.then, then);
        }
    }

    /// The stop in progress finished: answers who waited and returns what follows.
    pub fn stop_finished(&mut self, shared: &Shared) -> Then {
        let Some(stopping) = self.stopping.take() else { return Then::Rest };
        self.status.send_modify(|s| s.phase = Phase::Stopped);
        if stopping.then == Then::Start && self.wanted() {
            self.spawn(shared);
        }
        let view = self.view();
        for reply in stopping.waiting {
            let _ = reply.send(Ok(view.clone()));
        }
        stopping.then
    }

    /// Tells the running task to stop (at shutdown, before waiting for any of them).
    pub fn begin_shutdown(&self) {
        if let Some(running) = self.run.as_ref() {
            let _ = running.stop.send(true);
        }
    }

    /// Stops at shutdown: waits until `deadline`, then abandons the task.
    pub async fn stop_now(&mut self, shared: &Shared, deadline: tokio::time::Instant) {
        if let Some(running) = self.run.take() {
            let _ = running.stop.send(true);
            let abort = running.task.abort_handle();
            if tokio::time::timeout_at(deadline, running.task).await.is_err() {
                tracing::warn!(instance = %self.id, "did not stop in time; abandoning it");
                abort.abort();
            }
            remove_client(shared, &self.id);
        }
    }

    /// Collects a task that ended by itself, and aborts one that hangs. Failures are recorded.
    pub async fn reap(&mut self, shared: &Shared, hung_after: Duration, healthy_after: Duration) {
        let Some(running) = self.run.as_ref() else { return };
        let finished = running.task.is_finished();
        if !finished {
            if self.failures_in_row > 0
                && running.started.elapsed() > healthy_after
                && self.status.borrow().phase == Phase::Syncing
            {
                self.failures_in_row = 0;
                self.loop_reported = false;
            }
            if self.status.borrow().last_progress.elapsed() > hung_after {
                let running = self.run.take().expect("checked above");
                running.task.abort();
                remove_client(shared, &self.id);
                self.on_failure(format!("made no progress for {} s (hung); aborted it", hung_after.as_secs()), false);
            }
            return;
        }
        let running = self.run.take().expect("checked above");
        remove_client(shared, &self.id);
        let outcome = match running.task.await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => Outcome::Failed("the bot's task panicked".into()),
            Err(_) => Outcome::Stopped,
        };
        match outcome {
            Outcome::Stopped => {}
            Outcome::Failed(why) => self.on_failure(why, false),
            Outcome::FailedPermanently(why) => self.on_failure(why, true),
        }
    }

    /// Starts the instance when its restart is due.
    pub fn start_if_due(&mut self, shared: &Shared, now: Instant) {
        if self.next_start.is_some_and(|at| at <= now) && self.wanted() && self.run.is_none() && self.stopping.is_none()
        {
            self.next_start = None;
            self.restarts += 1;
            tracing::info!(instance = %self.id, restarts = self.restarts, "restarting");
            self.spawn(shared);
        }
    }

    fn on_failure(&mut self, why: String, permanent: bool) {
        let now = Instant::now();
        self.last_error = Some(why.clone());
        if permanent {
            self.failed = Some(Failure::Permanent);
            self.next_start = None;
            self.restart_delay = None;
            tracing::error!(
                instance = %self.id,
                error = %why,
                "instance failed and will not be restarted automatically: fix the cause, then start it through the \
                 management API or reload the service"
            );
            return;
        }
        self.failed = Some(Failure::Transient);
        self.failures_in_row += 1;
        self.failure_times.push_back(now);
        while self.failure_times.front().is_some_and(|t| now.duration_since(*t) > LOOP_WINDOW) {
            self.failure_times.pop_front();
        }
        let delay = restart_delay(self.failures_in_row);
        self.next_start = Some(now + delay);
        self.restart_delay = Some(delay);
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

    pub fn view(&self) -> InstanceView {
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
        } else if self.next_start.is_some() || self.stopping.as_ref().is_some_and(|s| s.then == Then::Start) {
            State::Restarting
        } else if self.failed.is_some() {
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
            last_error: if self.record.is_none() {
                Some(format!("not set up: run `{} --add-instance {}`", crate::state::setup_command(), self.id))
            } else {
                status.last_error.clone().or_else(|| self.last_error.clone())
            },
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

/// The stronger of two plans for after a stop: removal beats starting, starting beats resting.
fn merge(a: Then, b: Then) -> Then {
    match (a, b) {
        (Then::Remove, _) | (_, Then::Remove) => Then::Remove,
        (Then::Start, _) | (_, Then::Start) => Then::Start,
        _ => Then::Rest,
    }
}

fn remove_client(shared: &Shared, id: &str) {
    shared.clients.write().unwrap_or_else(|p| p.into_inner()).remove(id);
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
    fn stop_plans_merge() {
        assert_eq!(merge(Then::Rest, Then::Start), Then::Start);
        assert_eq!(merge(Then::Start, Then::Remove), Then::Remove);
        assert_eq!(merge(Then::Rest, Then::Rest), Then::Rest);
    }
}

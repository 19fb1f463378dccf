//! `maubot run`: opens the state (never creates it), restores every enabled bot's session, runs each bot as its
//! own task, and keeps systemd informed: `READY=1` after the first syncs, `STATUS=`, watchdog pings while the
//! host is healthy, `STOPPING=1` on SIGTERM/SIGINT. Shutdown never logs out: that would delete the device keys.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::instance::{Instance, Phase, Status};
use crate::matrix::client::{self, ClientError};
use crate::plugin;
use crate::state::{self, Layout, StateError};
use crate::systemd::Notifier;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("instance `{id}`: {source}")]
    Client { id: String, source: ClientError },
    #[error("instance `{id}`: plugin config: {message}")]
    Plugin { id: String, message: String },
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
}

impl RunError {
    /// Whether the fix is in the config or the state (exit code 78, no restart loop).
    pub fn is_config_or_state(&self) -> bool {
        matches!(self, RunError::State(_) | RunError::Plugin { .. })
    }
}

/// How long a bot may go without any progress (a sync returning or an error being handled) before the host
/// counts it as wedged and stops feeding the watchdog.
fn wedged_after(config: &Config) -> Duration {
    Duration::from_secs(config.host.sync_timeout_secs) + Duration::from_secs(90)
}

/// Time allowed for bots to finish what they are doing after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

struct Running {
    id: String,
    status: watch::Receiver<Status>,
    task: JoinHandle<()>,
}

pub async fn run(config: &Config, notifier: &Notifier) -> Result<(), RunError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;

    let layout = Layout::new(config);
    let db = Arc::new(state::open(&layout)?);
    let enabled: Vec<(&String, &crate::config::InstanceConfig)> =
        config.instances.iter().filter(|(_, i)| i.enabled).collect();

    // Everything that can be checked offline is checked before any bot touches the network.
    let mut records = Vec::new();
    for (id, instance) in &enabled {
        let record = db
            .instance(id)?
            .ok_or_else(|| StateError::InstanceNotSetUp { id: id.to_string(), db: db.path().to_owned() })?;
        if record.user_id != instance.user {
            return Err(StateError::UserChanged {
                id: id.to_string(),
                recorded: record.user_id,
                configured: instance.user.clone(),
            }
            .into());
        }
        client::verify_store(&record, &layout.store_dir(id)).await?;
        records.push(record);
    }
    for id in db.instance_ids()? {
        if !config.instances.contains_key(&id) {
            tracing::warn!(instance = %id, "state exists for an instance that is no longer configured; keeping it");
        }
    }

    let bot_users: Arc<HashSet<OwnedUserId>> =
        Arc::new(config.instances.values().filter_map(|i| OwnedUserId::try_from(i.user.as_str()).ok()).collect());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = Vec::new();
    for ((id, instance), record) in enabled.iter().zip(&records) {
        let kind = plugin::registry::lookup(&instance.kind).expect("validated plugin type");
        let plugin = kind
            .build(&instance.config)
            .map_err(|p| RunError::Plugin { id: id.to_string(), message: format!("{}: {}", p.key, p.message) })?;
        let client_error = |source| RunError::Client { id: id.to_string(), source };
        // The configured URL wins over the one recorded at setup: it may have moved (a new port, a proxy).
        let (_, homeserver) = config.homeserver_of(instance).expect("validated: the instance has a homeserver");
        let client = client::build(&homeserver.url, &layout.store_dir(id)).await.map_err(client_error)?;
        client::align_sync_position(&client, db.sync_token(id)?.as_deref()).await.map_err(client_error)?;
        let session = client::session_of(record).map_err(client_error)?;
        client.restore_session(session).await.map_err(|e| client_error(e.into()))?;
        tracing::info!(instance = %id, user = %record.user_id, device = %record.device_id, "session restored");

        let (status_tx, status_rx) = watch::channel(Status::new());
        let status_tx = Arc::new(status_tx);
        let bot = Instance {
            id: id.to_string(),
            client,
            plugin,
            db: db.clone(),
            bot_users: bot_users.clone(),
            room_subscriptions: instance
                .room_subscriptions
                .iter()
                .filter_map(|r| OwnedRoomId::try_from(r.as_str()).ok())
                .collect(),
            max_command_age: Duration::from_secs(instance.max_command_age_secs),
            sync_timeout: Duration::from_secs(config.host.sync_timeout_secs),
            status: status_tx.clone(),
        };
        let task = supervise(id.to_string(), status_tx, tokio::spawn(bot.run(stop_rx.clone())));
        running.push(Running { id: id.to_string(), status: status_rx, task });
    }

    let started = Instant::now();
    let ready_deadline = started + Duration::from_secs(config.host.ready_timeout_secs);
    let mut ready = false;
    let mut last_status = String::new();
    let watchdog_every = notifier.watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let wedged_after = wedged_after(config);
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = tick.tick() => {}
            _ = watchdog.tick(), if watchdog_every.is_some() => {
                match wedged(&running, wedged_after) {
                    None => notifier.watchdog(),
                    Some(id) => tracing::error!(instance = %id, "bot made no progress; withholding the watchdog ping"),
                }
            }
        }
        let summary = summarize(&running);
        if !ready && (summary.all_first_synced || Instant::now() >= ready_deadline) {
            ready = true;
            notifier.ready(&summary.line);
            tracing::info!(status = %summary.line, after_ms = started.elapsed().as_millis() as u64, "ready");
            last_status = summary.line;
        } else if ready && summary.line != last_status {
            notifier.status(&summary.line);
            tracing::info!(status = %summary.line, "status");
            last_status = summary.line;
        }
    }

    notifier.stopping("stopping: finishing current work");
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    for bot in running {
        let abort = bot.task.abort_handle();
        if tokio::time::timeout_at(deadline, bot.task).await.is_err() {
            tracing::warn!(instance = %bot.id, "did not stop in time; abandoning it");
            abort.abort();
        }
    }
    Ok(())
}

/// A bot whose task panics is marked failed; the others go on.
fn supervise(id: String, status: Arc<watch::Sender<Status>>, task: JoinHandle<()>) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!(instance = %id, "the bot's task panicked; it is stopped, the others go on");
            status.send_modify(|s| s.phase = Phase::Failed("panicked".into()));
        }
    })
}

fn wedged(running: &[Running], limit: Duration) -> Option<String> {
    running
        .iter()
        .find(|bot| {
            let status = bot.status.borrow();
            matches!(status.phase, Phase::Starting | Phase::Syncing | Phase::Retrying(_))
                && status.last_progress.elapsed() > limit
        })
        .map(|bot| bot.id.clone())
}

struct Summary {
    line: String,
    all_first_synced: bool,
}

fn summarize(running: &[Running]) -> Summary {
    let total = running.len();
    let mut syncing = 0;
    let mut problems: BTreeMap<String, String> = BTreeMap::new();
    let mut all_first_synced = true;
    for bot in running {
        let status = bot.status.borrow();
        all_first_synced &= status.first_sync_done || matches!(status.phase, Phase::Failed(_) | Phase::Stopped);
        match &status.phase {
            Phase::Syncing => syncing += 1,
            Phase::Starting => {
                problems.insert(bot.id.clone(), "starting".into());
            }
            Phase::Retrying(why) => {
                problems.insert(bot.id.clone(), format!("retrying: {}", shorten(why)));
            }
            Phase::Failed(why) => {
                problems.insert(bot.id.clone(), format!("failed: {}", shorten(why)));
            }
            Phase::Stopped => {
                problems.insert(bot.id.clone(), "stopped".into());
            }
        }
    }
    let mut line = if total == 0 { "no bots enabled".to_owned() } else { format!("{syncing}/{total} bots syncing") };
    if !problems.is_empty() {
        let details: Vec<String> = problems.iter().map(|(id, p)| format!("{id} {p}")).collect();
        line.push_str("; degraded: ");
        line.push_str(&details.join("; "));
    }
    Summary { line, all_first_synced }
}

fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(MAX).collect::<String>())
    }
}

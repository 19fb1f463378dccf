//! `maubot run`: opens the state (never creates it), checks every bot that will run before touching the network,
//! then runs the supervisor (one task per bot), the management API and the admin-room notifier, and keeps
//! systemd informed: `READY=1` after the first syncs, `STATUS=` from the health summary, watchdog pings while the
//! host is not wedged, `STOPPING=1` on SIGTERM/SIGINT. Shutdown never logs out: that would delete device keys.

pub mod health;
pub mod supervisor;
pub mod view;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use matrix_sdk::ruma::OwnedUserId;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, watch};

use self::supervisor::{Shared, Supervisor};
use self::view::{InstanceView, State};
use crate::alerts::Scrubber;
use crate::alerts::sender::{AlertSender, QUEUE};
use crate::api;
use crate::config::Config;
use crate::matrix::client;
use crate::state::{self, Layout, StateError};
use crate::systemd::Notifier;
use crate::telemetry::Telemetry;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "cannot listen on {address} for the management API: {source}. Is another maubot running? Change \
         `server.port` (or `server.hostname`)"
    )]
    Bind { address: String, source: std::io::Error },
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
}

impl RunError {
    /// Whether the fix is in the config or the state (exit code 78, no restart loop).
    pub fn is_config_or_state(&self) -> bool {
        matches!(self, RunError::State(_))
    }
}

/// Time allowed for bots to finish what they are doing after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The supervisor publishes its view every 500 ms; silence this long means it is wedged.
const SUPERVISOR_SILENT: Duration = Duration::from_secs(30);

pub async fn run(config: &Config, notifier: &Notifier, telemetry: Arc<Telemetry>) -> Result<(), RunError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let started = Instant::now();

    let layout = Layout::new(config);
    let db = Arc::new(state::open(&layout)?);
    let config = Arc::new(config.clone());
    let shared = Shared {
        config: config.clone(),
        layout: layout.clone(),
        db: db.clone(),
        bot_users: Arc::new(
            config
                .instances
                .values()
                .filter_map(|i| OwnedUserId::try_from(i.user.as_str()).ok())
                .collect::<HashSet<_>>(),
        ),
        clients: Arc::new(RwLock::default()),
        changed: Arc::new(Notify::new()),
    };
    let (views_tx, mut views) = watch::channel(Vec::<InstanceView>::new());
    let supervisor = Supervisor::new(shared.clone(), views_tx)?;

    // Everything that can be checked offline is checked before any bot touches the network.
    for (id, record) in supervisor.wanted() {
        let record = record.ok_or_else(|| StateError::InstanceNotSetUp { id: id.clone(), db: db.path().to_owned() })?;
        let configured = &config.instances[id].user;
        if &record.user_id != configured {
            return Err(StateError::UserChanged {
                id: id.clone(),
                recorded: record.user_id.clone(),
                configured: configured.clone(),
            }
            .into());
        }
        client::verify_store(record, &layout.store_dir(id)).await?;
    }
    // Every recorded access token (also of instances no longer configured) is a secret to scrub.
    let mut access_tokens = Vec::new();
    for id in db.instance_ids()? {
        if !config.instances.contains_key(&id) {
            tracing::warn!(instance = %id, "state exists for an instance that is no longer configured; keeping it");
        }
        if let Some(record) = db.instance(&id)? {
            access_tokens.push(record.access_token);
        }
    }

    let address = format!("{}:{}", config.server.hostname, config.server.port);
    let listener = api::bind(&config.server.hostname, config.server.port)
        .await
        .map_err(|source| RunError::Bind { address, source })?;

    crate::alerts::scrub::install(Scrubber::new(config.secret_values().into_iter().chain(access_tokens)));
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(notifications) = &config.notifications {
        let (alerts_tx, alerts_rx) = mpsc::channel(QUEUE);
        telemetry.route_alerts(alerts_tx);
        let sender = AlertSender {
            config: notifications.clone(),
            instance_levels: config.instances.iter().map(|(id, i)| (id.clone(), i.error_notification_level)).collect(),
            clients: shared.clients.clone(),
        };
        tokio::spawn(sender.run(alerts_rx, stop_rx.clone()));
    }

    let (control_tx, control_rx) = mpsc::channel(16);
    let mut supervisor_task = tokio::spawn(supervisor.run(control_rx, stop_rx.clone(), SHUTDOWN_GRACE));
    let api_state = api::AppState {
        views: views.clone(),
        control: control_tx,
        telemetry: telemetry.clone(),
        auth: Arc::new(api::auth::Auth::from_config(&config)),
        schema_version: db.schema_version()?,
        error_window: Duration::from_secs(config.host.error_window_secs),
    };
    let api_task = tokio::spawn(api::serve(listener, api_state, stop_rx.clone()));

    let ready_deadline = tokio::time::Instant::now() + Duration::from_secs(config.host.ready_timeout_secs);
    let mut ready = false;
    let mut last_status = String::new();
    let watchdog_every = notifier.watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut last_views = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = views.changed() => last_views = tokio::time::Instant::now(),
            _ = tokio::time::sleep_until(ready_deadline), if !ready => {}
            _ = watchdog.tick(), if watchdog_every.is_some() => {
                // A hung bot is the supervisor's to restart; the host is wedged when the supervisor itself
                // stopped or stopped publishing (it does so every 500 ms).
                if supervisor_task.is_finished() {
                    tracing::error!("the supervisor stopped; withholding the watchdog ping");
                } else if last_views.elapsed() > SUPERVISOR_SILENT {
                    tracing::error!(silent_secs = last_views.elapsed().as_secs(), "the supervisor is not responding; withholding the watchdog ping");
                } else {
                    notifier.watchdog();
                }
            }
            _ = &mut supervisor_task => {
                tracing::error!(severity = "CRITICAL", "the supervisor stopped unexpectedly; shutting down");
                break;
            }
        }
        let current = views.borrow_and_update().clone();
        let health =
            health::assess(&current, telemetry.errors_within(Duration::from_secs(config.host.error_window_secs)));
        let line = health.status_line(&current);
        let all_started = current
            .iter()
            .filter(|v| v.wanted())
            .all(|v| v.first_sync_done || matches!(v.state, State::Failed | State::Restarting | State::Stopped));
        if !ready && (all_started || tokio::time::Instant::now() >= ready_deadline) {
            ready = true;
            notifier.ready(&line);
            tracing::info!(status = %line, after_ms = started.elapsed().as_millis() as u64, "ready");
            crate::memory::release_free_heap();
            last_status = line;
        } else if ready && line != last_status {
            notifier.status(&line);
            tracing::info!(status = %line, "status");
            last_status = line;
        }
    }

    notifier.stopping("stopping: finishing current work");
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    if !supervisor_task.is_finished() {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(2), &mut supervisor_task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), api_task).await;
    Ok(())
}

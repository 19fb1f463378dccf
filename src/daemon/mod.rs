//! `maubot run`: opens the host state (never creates it), runs the supervisor (one task per bot), the management
//! API and the admin-room notifier, and keeps systemd informed: `READY=1` after the first syncs, `STATUS=` from
//! the health summary, watchdog pings while the host is not wedged, `RELOADING=1` on SIGHUP, `STOPPING=1` on
//! SIGTERM/SIGINT. Only a missing or unusable host state ends `run` (exit 78): a bot that is not set up, or
//! whose store does not match, is shown as such while the others run. Shutdown never logs out: that would
//! delete device keys.

pub mod signals;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot, watch};

use self::signals::{Asked, Signals};
use crate::alerts::sender::{AlertSender, QUEUE};
use crate::api;
use crate::config::{self, Config, Loaded, Purpose, Sources};
use crate::host::health;
use crate::host::supervisor::{self, Command, Reload, Shared, Supervisor};
use crate::host::view::{InstanceView, State};
use crate::state::{self, Database, Layout, StateError};
use crate::systemd::Notifier;
use crate::telemetry::Telemetry;
use crate::telemetry::scrub::Scrubber;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "cannot listen on {address} for the management API: {source}. Is another maubot running? Change \
         `server.port` (or `server.hostname`)"
    )]
    Bind { address: String, source: std::io::Error },
    #[error(transparent)]
    Public(#[from] api::public::PublicError),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
}

impl RunError {
    /// Whether the fix is in the config or the state (exit code 78, no restart loop).
    pub fn is_config_or_state(&self) -> bool {
        matches!(self, RunError::State(_) | RunError::Public(api::public::PublicError::Config(_)))
    }
}

/// Time allowed for bots to finish what they are doing after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The supervisor publishes its view every 500 ms; silence this long means it is wedged.
const SUPERVISOR_SILENT: Duration = Duration::from_secs(30);

pub async fn run(
    loaded: Loaded,
    sources: Sources,
    purpose: Purpose,
    notifier: &Notifier,
    telemetry: Arc<Telemetry>,
) -> Result<(), RunError> {
    let mut signals = Signals::install().map_err(RunError::Signals)?;
    let started = Instant::now();
    let mut config = Arc::new(loaded.config);
    warn_if_too_few_open_files(config.instances.len());
    let layout = Layout::new(&config);
    let opened = state::open(&layout)?;
    let _host_lock = opened.lock;
    let db = Arc::new(opened.db);
    let shared = Shared {
        config: config.clone(),
        layout: layout.clone(),
        db: db.clone(),
        bot_users: Arc::new(RwLock::new(supervisor::bot_users(&config))),
        clients: Arc::new(RwLock::default()),
        changed: Arc::new(Notify::new()),
        endpoints: Default::default(),
        directory: Default::default(),
    };
    let (views_tx, mut views) = watch::channel(Vec::<InstanceView>::new());
    let supervisor = Supervisor::new(shared.clone(), views_tx).await?;
    install_scrubber(&config, &db).await?;

    let address = format!("{}:{}", config.server.hostname, config.server.port);
    let listener = api::bind(&config.server.hostname, config.server.port)
        .await
        .map_err(|source| RunError::Bind { address, source })?;
    let public = match &config.server.public_listener {
        Some(listener) => Some(api::public::Public::bind(listener).await?),
        None => None,
    };

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

    let (commands, commands_rx) = mpsc::channel(16);
    let mut supervisor_task = tokio::spawn(supervisor.run(commands_rx, stop_rx.clone(), SHUTDOWN_GRACE));
    let epoch = match db.meta(api::auth::EPOCH_KEY).await? {
        Some(epoch) => epoch,
        None => {
            let epoch = api::auth::new_epoch();
            db.set_meta(api::auth::EPOCH_KEY, &epoch).await?;
            epoch
        }
    };
    let epoch: api::auth::Epoch = Arc::new(RwLock::new(epoch));
    let auth = Arc::new(RwLock::new(Arc::new(api::auth::Auth::from_config(&config, epoch.clone()))));
    let guards = Arc::new(api::auth::LoginGuards {
        throttle: api::throttle::LoginThrottle::default(),
        hashing: api::hashing::HashPool::start(),
    });
    let api_state = api::AppState {
        views: views.clone(),
        control: commands.clone(),
        telemetry: telemetry.clone(),
        auth: auth.clone(),
        guards,
        epoch: epoch.clone(),
        db: db.clone(),
        schema_version: db.schema_version().await?,
        error_window: Duration::from_secs(config.host.error_window_secs),
        endpoints: shared.endpoints.clone(),
        trusted_proxies: Arc::new(config.server.trusted_networks()),
    };
    let limits = api::limits::Limits::from_config(&config.server);
    if let Some(public) = public {
        tracing::info!(address = %public.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving plugins' routes on the public listener");
        tokio::spawn(public.serve(api_state.clone(), limits, stop_rx.clone()));
    }
    let api_task = tokio::spawn(api::serve(listener, api_state, limits, stop_rx.clone()));

    let ready_deadline = tokio::time::Instant::now() + Duration::from_secs(config.host.ready_timeout_secs);
    let mut ready = false;
    let mut reloaded = false;
    let mut last_status = String::new();
    let watchdog_every = notifier.watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut last_views = tokio::time::Instant::now();
    loop {
        tokio::select! {
            asked = signals.next() => match asked {
                Asked::Stop => break,
                Asked::Reload => {
                    // Before READY=1 systemd is still starting the unit: the READY=1 to come ends the start.
                    if ready {
                        notifier.reloading("reloading the configuration");
                    }
                    if let Some(new) = reload(&sources, purpose, &config, &db, &commands, &auth, &epoch).await {
                        config = new;
                    }
                    reloaded = ready;
                }
                Asked::Nothing(name) => tracing::info!(signal = name, "ignoring the signal (SIGHUP reloads, SIGTERM stops)"),
            },
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
            crate::memory::release_startup_code();
            last_status = line;
        } else if reloaded {
            // A reload is over once its changes were applied; bots it started report their syncs afterwards.
            reloaded = false;
            notifier.ready(&line);
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

/// Every known secret, including every recorded access token (also of instances no longer configured), is
/// removed from text that leaves the process.
async fn install_scrubber(config: &Config, db: &Database) -> Result<(), StateError> {
    let tokens = db.instances().await?.into_iter().map(|r| r.access_token);
    crate::telemetry::scrub::install(Scrubber::new(config.secret_values().into_iter().chain(tokens)));
    Ok(())
}

/// Re-reads the configuration and the state and hands both to the supervisor, which starts, stops and restarts
/// only what changed. A configuration that does not load is reported and the running one is kept. Returns the
/// new configuration when it was applied.
async fn reload(
    sources: &Sources,
    purpose: Purpose,
    current: &Config,
    db: &Database,
    commands: &mpsc::Sender<Command>,
    auth: &RwLock<Arc<api::auth::Auth>>,
    epoch: &api::auth::Epoch,
) -> Option<Arc<Config>> {
    tracing::info!("reloading the configuration (SIGHUP)");
    let loaded = match config::load(sources, purpose) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; the running configuration stays in effect");
            return None;
        }
    };
    let new = Arc::new(loaded.config);
    for (key, changed) in [
        ("server", new.server.hostname != current.server.hostname || new.server.port != current.server.port),
        ("logging", new.logging != current.logging),
        ("notifications", new.notifications != current.notifications),
        ("state_dir", new.state_dir != current.state_dir || new.database != current.database),
    ] {
        if changed {
            tracing::warn!(key, "this part of the configuration changed; it takes effect at the next restart");
        }
    }
    let records = match db.instances().await {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(error = %e, "reload failed: cannot read the state; the running configuration stays in effect");
            return None;
        }
    };
    if let Err(e) = install_scrubber(&new, db).await {
        tracing::warn!(error = %e, "could not refresh the list of secrets to scrub");
    }
    let (reply, applied) = oneshot::channel();
    let reload = Reload { config: new.clone(), records, reply };
    if commands.send(Command::Reload(reload)).await.is_err() || applied.await.is_err() {
        tracing::error!("reload failed: the supervisor is gone");
        return None;
    }
    *auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(api::auth::Auth::from_config(&new, epoch.clone()));
    Some(new)
}

/// main raised the soft limit on open files to the hard one; if even that is too low for the configured bots,
/// some would fail to open their stores with SQLite's "unable to open database file": say so up front.
fn warn_if_too_few_open_files(bots: usize) {
    let needed = crate::open_files::needed(bots);
    match crate::open_files::current() {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            bots,
            needed,
            "the limit on open files is too low for this many bots: some will fail to open their stores (\"unable \
             to open database file\"); raise the hard limit (LimitNOFILE= in the systemd unit, ulimit -Hn in a shell)"
        ),
        Ok(limit) => tracing::debug!(limit, bots, "limit on open files"),
        Err(e) => tracing::warn!(error = %e, "cannot read the limit on open files"),
    }
}

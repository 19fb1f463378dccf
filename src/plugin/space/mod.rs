//! `space`: a deployment's Space and rooms, declared in the config and bootstrapped idempotently
//! (`bootstrap.rs`), and the user-lifecycle API a deploy app calls over mutual TLS (`lifecycle.rs`), from
//! seed 004 (python-matrix-rmapi).
//!
//! The bootstrap runs beside the sync loop when the bot starts, waiting for a homeserver that is not up yet
//! (`homeserver_wait_seconds`). Lifecycle calls that arrive before it finished are answered with success and
//! kept in the plugin's database (the last action per user wins), then carried out in order once it is done.
//! Who is a member and who an admin is kept too (`roster.rs`) and published for `guard` instances once the
//! rooms are ready.

pub mod bootstrap;
pub mod config;
pub mod lifecycle;
pub mod roster;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use self::bootstrap::Rooms;
use self::config::SpaceConfig;
use super::storage::PluginDatabase;
use super::{
    ConfigProblem, Event, Plugin, PluginContext, PluginError, PluginType, Subscriptions, UnpromptedSink, http,
    parse_config,
};

pub struct SpaceType;

impl PluginType for SpaceType {
    fn name(&self) -> &'static str {
        "space"
    }

    fn description(&self) -> &'static str {
        "keeps a Space and its rooms as the config declares them, and joins, promotes, demotes and deactivates \
         users when a deploy app calls its lifecycle API over mutual TLS"
    }

    fn check_config(&self, config: &serde_json::Value) -> Vec<ConfigProblem> {
        match parse_config::<SpaceConfig>(config) {
            Ok(parsed) => parsed.problems(),
            Err(problem) => vec![problem],
        }
    }

    fn build(&self, config: &serde_json::Value) -> Result<Box<dyn Plugin>, ConfigProblem> {
        Ok(Box::new(Space {
            config: parse_config(config)?,
            rooms: watch::Sender::new(None),
            database: OnceLock::new(),
            one_at_a_time: tokio::sync::Mutex::new(()),
            server_admin: Default::default(),
        }))
    }
}

pub struct Space {
    config: SpaceConfig,
    /// Set when the bootstrap finished: the gate lifecycle calls check.
    rooms: watch::Sender<Option<Arc<Rooms>>>,
    database: OnceLock<PluginDatabase>,
    /// Lifecycle actions are carried out one at a time, in the order they came.
    one_at_a_time: tokio::sync::Mutex<()>,
    /// How this homeserver lets the bot force-join and deactivate users (detected once).
    server_admin: super::server_admin::Detected,
}

/// The first wait after the homeserver could not be reached; doubled up to [`LONGEST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(15);

impl Space {
    /// Bootstraps, trying again while the homeserver is unreachable or failing, for up to
    /// `homeserver_wait_seconds`. A permanent failure (the bot may not create or change a room) needs an
    /// operator: the instance fails and the other bots go on.
    async fn bootstrap(
        &self,
        context: &PluginContext,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Rooms>, PluginError> {
        let view = context.matrix.paced_by_homeserver();
        let deadline = Instant::now() + Duration::from_secs(self.config.homeserver_wait_seconds);
        let mut wait = FIRST_RETRY;
        loop {
            let error = match bootstrap::bootstrap(&view, &self.config).await {
                Ok((rooms, report)) => {
                    tracing::info!(
                        instance = %context.instance,
                        created = report.created.len(),
                        state_sent = report.state_sent.len(),
                        rooms = rooms.public.len() + rooms.admin.len(),
                        room_version = %rooms.room_version,
                        "the Space and its rooms are as the config says"
                    );
                    return Ok(Some(rooms));
                }
                Err(e) => e,
            };
            if !error.is_transient() {
                return Err(PluginError::permanent(format!(
                    "the Space bootstrap failed: {error}. Fix it on the homeserver or in the config, then restart the bot"
                )));
            }
            if Instant::now() + wait > deadline {
                return Err(PluginError::transient(format!(
                    "the Space bootstrap gave up after {} s: {error}",
                    self.config.homeserver_wait_seconds
                )));
            }
            tracing::warn!(instance = %context.instance, error = %error, retry_in_s = wait.as_secs(), "the Space bootstrap could not reach the homeserver; trying again");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
            }
            wait = (wait * 2).min(LONGEST_RETRY);
        }
    }

    fn database(&self) -> Result<&PluginDatabase, PluginError> {
        self.database.get().ok_or_else(|| PluginError::transient("the plugin database is not open"))
    }
}

#[async_trait]
impl Plugin for Space {
    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::of([])
    }

    async fn start(&self, context: &PluginContext, _unprompted: UnpromptedSink) -> Result<(), PluginError> {
        let database =
            context.open_database(lifecycle::MIGRATIONS).await.map_err(|e| PluginError::permanent(e.to_string()))?;
        let _ = self.database.set(database);
        Ok(())
    }

    async fn on_event(&self, _context: &PluginContext, _event: &Event) -> Result<Vec<super::Action>, PluginError> {
        Ok(Vec::new())
    }

    async fn run(
        &self,
        context: &PluginContext,
        _unprompted: UnpromptedSink,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), PluginError> {
        let Some(rooms) = self.bootstrap(context, &mut shutdown).await? else {
            return Ok(());
        };
        let rooms = Arc::new(rooms);
        // Deferred calls are carried out before the gate opens, so that a call arriving meanwhile comes after them.
        let _one = self.one_at_a_time.lock().await;
        self.drain_deferred(context, &rooms).await?;
        self.rooms.send_replace(Some(rooms.clone()));
        self.seed_and_publish(context, &rooms.space).await?;
        Ok(())
    }

    fn http(&self) -> Option<http::HttpSpec> {
        Some(http::HttpSpec { max_body_bytes: lifecycle::MAX_BODY_BYTES })
    }

    async fn on_http(
        &self,
        context: &PluginContext,
        request: http::HttpRequest,
        _unprompted: &UnpromptedSink,
    ) -> http::HttpResponse {
        self.lifecycle_call(context, request).await
    }
}

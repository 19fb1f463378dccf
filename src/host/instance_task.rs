//! One run of an instance: take its store lock, check the store offline, restore the session, run the sync loop.
//! Problems only an operator can fix (a foreign or missing store, a changed user, a bad plugin config) end it
//! for good; everything else is retried by the supervisor.

use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::ruma::OwnedRoomId;
use tokio::sync::watch;

use super::supervisor::Shared;
use crate::config::InstanceConfig;
use crate::instance::listeners::Listener;
use crate::instance::{Counters, Instance, Outcome, Status};
use crate::matrix::client;
use crate::plugin::{self, PluginContext};
use crate::state::{InstanceRecord, StateError, StateLock};

pub async fn run(
    shared: Shared,
    config: InstanceConfig,
    record: InstanceRecord,
    status: Arc<watch::Sender<Status>>,
    counters: Arc<Counters>,
    limiter: Arc<plugin::RateLimiter>,
    stop: watch::Receiver<bool>,
) -> Outcome {
    let id = record.id.clone();
    if record.user_id != config.user {
        let changed = StateError::UserChanged { id, recorded: record.user_id, configured: config.user };
        return Outcome::FailedPermanently(changed.to_string());
    }
    // Checked read-only first: a missing store is said as such, not as a lock file that cannot be made.
    let store_dir = shared.layout.store_dir(&id);
    match client::verify_store(&record, &store_dir).await {
        Ok(()) => {}
        Err(e @ StateError::StoreUnreadable { .. }) => return Outcome::Failed(e.to_string()),
        Err(e) => return Outcome::FailedPermanently(e.to_string()),
    }
    // Held as long as this run uses the store: no second process (another host, a setup) can open it.
    let _lock = match StateLock::acquire(&shared.layout.instance_lock(&id), &format!("run, instance {id}")) {
        Ok(lock) => lock,
        Err(e @ StateError::Locked { .. }) => return Outcome::Failed(e.to_string()),
        Err(e) => return Outcome::FailedPermanently(e.to_string()),
    };
    if let Some(why) = &config.unusable_secret {
        return Outcome::FailedPermanently(format!("a plugin secret cannot be read: {why}"));
    }
    // Every plugin finds its private directory in place (mode 0700, kept across restarts).
    let data_dir = shared.layout.plugin_data_dir(&id);
    if let Err(e) = crate::state::create_private_dir(&data_dir) {
        return Outcome::Failed(format!("the plugin's private directory: {e}"));
    }
    let plugin = match plugin::registry::lookup(&config.kind).map(|kind| kind.build(&config.resolved_config())) {
        Some(Ok(plugin)) => std::sync::Arc::<dyn plugin::Plugin>::from(plugin),
        Some(Err(problem)) => {
            return Outcome::FailedPermanently(format!("plugin config: {}: {}", problem.key, problem.message));
        }
        None => return Outcome::FailedPermanently(format!("unknown plugin type `{}`", config.kind)),
    };
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for (index, listener) in config.listeners.iter().enumerate() {
        match Listener::prepare(listener, &format!("instances.{id}.listeners.{index}")) {
            Ok(listener) => listeners.push(listener),
            Err(e) => return Outcome::FailedPermanently(e.to_string()),
        }
    }
    let position = match shared.db.sync_token(&id).await {
        Ok(position) => position,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    // The configured URL wins over the one recorded at setup: it may have moved (a new port, a proxy).
    let url =
        shared.config.homeserver_of(&config).map(|(_, hs)| hs.url.clone()).unwrap_or(record.homeserver_url.clone());
    let http = match client::shared_http_client() {
        Ok(http) => http,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let client = match client::restore(&url, &store_dir, &record, position.as_deref()).await {
        Ok(client) => client,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    tracing::info!(instance = %id, user = %record.user_id, device = %record.device_id, "session restored");
    shared.clients.write().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), client.clone());
    let context = PluginContext {
        instance: id.clone(),
        user_id: record.user_id.clone(),
        data_dir,
        database_path: shared.layout.plugin_database(&id),
        matrix: plugin::MatrixView::new(client.clone(), limiter.clone(), http),
        limiter,
        directory: shared.directory.clone(),
    };
    let instance = Instance {
        id,
        client,
        plugin,
        context: Arc::new(context),
        endpoints: shared.endpoints.clone(),
        listeners,
        db: shared.db.clone(),
        bot_users: shared.bot_users.clone(),
        room_subscriptions: config
            .room_subscriptions
            .iter()
            .filter_map(|r| OwnedRoomId::try_from(r.as_str()).ok())
            .collect(),
        max_command_age: Duration::from_secs(config.max_command_age_secs),
        sender_limit: config.max_commands_per_sender_per_minute,
        sync_timeout: Duration::from_secs(shared.config.host.sync_timeout_secs),
        status,
        counters,
        on_change: shared.changed.clone(),
    };
    instance.run(stop).await
}

//! Bot plugins: built-in types behind one trait, registered by type name (`registry.rs`); each type in its own
//! file or folder (`ping.rs`, `exec/`).
//!
//! A plugin subscribes to the kinds of event it wants (`event.rs`: messages, notices, edits, reactions,
//! membership and state changes, invites), sees each once, and answers with [`Action`]s; the host carries actions
//! out. Keeping the
//! sending in the host is what makes replies exactly-once across crashes: each action is sent with a transaction
//! id derived from the event it answers (or from the idempotency key the plugin gives), so a re-delivered event
//! produces the same request and the homeserver deduplicates it. Side effects outside Matrix are the plugin's:
//! they happen at least once (an event whose answer was not recorded before a crash is delivered again).

pub mod directory;
pub mod event;
pub mod exec;
pub mod file;
pub mod github;
pub mod guard;
pub mod http;
pub mod invites;
pub mod job;
pub mod matrix_view;
pub mod media;
pub mod ping;
pub mod rate_limit;
pub mod registry;
pub mod room_ops;
pub mod server_admin;
pub mod space;
pub mod storage;

use async_trait::async_trait;
pub use event::{ChangedBy, Event, EventKind, EventType, Membership, Message, MessageKind, Relation, Subscriptions};
pub use file::FileSpec;
pub use job::{Job, JobOrigin};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
pub use matrix_view::MatrixView;
pub use rate_limit::RateLimiter;
pub use room_ops::{MemberChange, RoomSpec, StateSpec};

/// A problem in a plugin's `config`, relative to it (`key` is a dotted path below `instances.<id>.config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

/// A plugin type: checks its config and builds plugin values.
pub trait PluginType: Sync {
    /// The `type` name in `instances.<id>.type`.
    fn name(&self) -> &'static str;
    /// One line for `--help` and docs.
    fn description(&self) -> &'static str;
    /// Checks an instance's `config`; empty when valid.
    fn check_config(&self, config: &serde_json::Value) -> Vec<ConfigProblem>;
    /// Builds the plugin for one instance. The config has passed `check_config`.
    fn build(&self, config: &serde_json::Value) -> Result<Box<dyn Plugin>, ConfigProblem>;
}

/// What a plugin may use besides the event: its instance id, its private directory (mode 0700, kept across
/// restarts), its own database (opened when it asks), and the instance's outgoing rate limiter, which it must
/// `acquire()` before every external call (and `back_off()` when the service says "too many requests").
pub struct PluginContext {
    pub instance: String,
    pub user_id: String,
    pub data_dir: std::path::PathBuf,
    /// Where the plugin's database is (`open_database`); nothing is there until a plugin opens it.
    pub database_path: std::path::PathBuf,
    /// The narrow view of the bot's Matrix client (`matrix_view.rs`): rooms, members, state, and room
    /// operations that check before they act; each call behind `limiter`.
    pub matrix: MatrixView,
    pub limiter: std::sync::Arc<RateLimiter>,
    /// What the host's instances publish for each other (`directory.rs`): a `space` instance's users.
    pub directory: directory::Directory,
}

impl PluginContext {
    /// Opens the plugin's database (mode 0600), bringing it to the schema `migrations` describe (the n-th
    /// migration makes version n; each runs in a transaction with its version). Call it from `start`.
    pub async fn open_database(
        &self,
        migrations: &'static [&'static str],
    ) -> Result<storage::PluginDatabase, storage::StorageError> {
        let path = self.database_path.clone();
        tokio::task::spawn_blocking(move || storage::PluginDatabase::open(&path, migrations))
            .await
            .map_err(|e| storage::StorageError::Worker(e.to_string()))?
    }
}

/// What a plugin wants done. In answer to an event, the host derives each action's transaction id from the
/// event and the action's place among the answers, unless the action names its own idempotency key.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send this content as a reply to the event (the host adds the reply relation).
    Reply(RoomMessageEventContent),
    /// Send this content to a room the bot is joined to. `key`: the idempotency key (required outside an event).
    /// `link_previews: false` asks clients not to preview the message's links (a bot's notices full of links).
    Send { room_id: OwnedRoomId, content: RoomMessageEventContent, key: Option<String>, link_previews: bool },
    /// React to an event in the room of the event being answered.
    React { to: OwnedEventId, reaction: String },
    /// Replace the content of an earlier message of this bot (`to`, in the room of the event being answered):
    /// clients show the new content in its place.
    Edit { to: OwnedEventId, content: RoomMessageEventContent },
    /// Redact (remove the content of) an event in the room of the event being answered; the bot needs the
    /// power to redact others' events for theirs.
    Redact { event: OwnedEventId, reason: Option<String> },
    /// Accept a job (`job.rs`): kept with the mark that the event was handled, then run by
    /// [`Plugin::run_job`] off the sync loop; its replies answer this event. Not accepted twice per key.
    Job { key: String, payload: serde_json::Value },
    /// Invite, kick, ban or unban a user, unless their membership already is so (read from the homeserver
    /// first). Needs the power to do it.
    Member { room_id: OwnedRoomId, user_id: OwnedUserId, change: MemberChange, reason: Option<String> },
    /// Set a state event, unless the room already has it with this content.
    SetState { room_id: OwnedRoomId, state: StateSpec },
    /// Give a user a power level, unless they have it (in room version 12 on, creators need none).
    SetPowerLevel { room_id: OwnedRoomId, user_id: OwnedUserId, level: i64 },
    /// Create a room or Space, unless its alias exists already (looked up first).
    CreateRoom(Box<RoomSpec>),
    /// Upload a file from the plugin's private directory and post it to a joined room (encrypted where the
    /// room is): the upload happens at least once, the post once (its transaction id is derived like a send's).
    SendFile { room_id: OwnedRoomId, file: Box<FileSpec>, key: Option<String> },
}

/// What a plugin does on its own, outside any event (its `run` task, a timer, a program wrote it, an HTTP
/// request): persisted before it is carried out, deduplicated by its key.
#[derive(Debug)]
pub enum Unprompted {
    /// Send a message to a joined room, once per key.
    Send { room_id: OwnedRoomId, content: Box<RoomMessageEventContent>, key: String },
    /// Accept a job, once per key. `accepted` (if given) hears whether the job is kept (`true`: new and
    /// persisted; `false`: a job with the key was accepted before), once it is on disk: an HTTP handler answers
    /// its caller after that.
    Job { key: String, payload: serde_json::Value, accepted: Option<tokio::sync::oneshot::Sender<bool>> },
}

/// Where a plugin hands what it does on its own. The host queues it like answers (persisted first).
pub type UnpromptedSink = tokio::sync::mpsc::UnboundedSender<Unprompted>;

/// A plugin that cannot go on: the host stops the instance, and the supervisor restarts it with its backoff
/// (or, when `permanent`, leaves it failed until an operator acts).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    pub message: String,
    pub permanent: bool,
}

impl PluginError {
    pub fn transient(message: impl Into<String>) -> Self {
        PluginError { message: message.into(), permanent: false }
    }

    /// Only an operator can fix it (a program that does not exist, a directory that cannot be made).
    pub fn permanent(message: impl Into<String>) -> Self {
        PluginError { message: message.into(), permanent: true }
    }
}

/// One bot's behaviour.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// Whether to join a room `inviter` invited the bot to. Default: never.
    fn accepts_invite_from(&self, _inviter: &str) -> bool {
        false
    }

    /// Whether the plugin changes rooms: memberships, state, power levels, new rooms ([`Action::Member`],
    /// [`Action::SetState`], [`Action::SetPowerLevel`], [`Action::CreateRoom`]). When it does not, the bot's own
    /// events are left out of its syncs (the timeline filter's `not_senders`): its answers do not come back to
    /// it, each costing matrix-sdk a sync's work (about half the CPU per `!ping`, docs/benchmark.md). matrix-sdk's
    /// view of the bot's rooms (encryption, who gets room keys) then comes from others' events and from the full
    /// state a newly joined room arrives with, which is the whole of it for a bot that changes nothing; the
    /// plugin is not handed the bot's own membership changes. A room change asked for anyway is refused (an
    /// event's handling or a job fails). Default: yes, nothing is left out.
    fn changes_rooms(&self) -> bool {
        true
    }

    /// Called once before the first event of each run of the instance. Default: nothing to start.
    async fn start(&self, _context: &PluginContext, _unprompted: UnpromptedSink) -> Result<(), PluginError> {
        Ok(())
    }

    /// The kinds of event the plugin wants; asked before each sync (the sync filter asks the homeserver for no
    /// more) and for each event. Default: text and emote messages.
    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::messages()
    }

    /// Handles an event of a subscribed kind; the returned actions are carried out in order. An error stops the
    /// instance (the event is delivered again after the restart).
    async fn on_event(&self, context: &PluginContext, event: &Event) -> Result<Vec<Action>, PluginError>;

    /// The plugin's background work beside the sync loop, for the whole run of the instance (timers,
    /// reconcilers): what it does goes to `unprompted`. It should return soon after `shutdown` turns true (the
    /// host waits a few seconds, then drops it). Returning `Ok` ends only the background work; an error stops
    /// the instance. Default: none.
    async fn run(
        &self,
        _context: &PluginContext,
        _unprompted: UnpromptedSink,
        _shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Carries out a job the plugin accepted, off the sync loop (events keep coming while it runs; several jobs
    /// may run at once). The returned actions are queued in the transaction that marks the job done, with
    /// transaction ids derived from the job key: replies, reactions, edits and redactions go to the room of the
    /// event the job was accepted for. An error fails this attempt: it is tried again after a backoff, up to
    /// [`job::MAX_ATTEMPTS`] times (a permanent error gives it up at once); the instance goes on. A job is run
    /// again after a crash or restart: what it does outside Matrix happens at least once.
    async fn run_job(&self, _context: &PluginContext, _job: &Job) -> Result<Vec<Action>, PluginError> {
        Err(PluginError::permanent("this plugin type runs no jobs"))
    }

    /// Whether the plugin serves HTTP (`http.rs`), asked once after `start`. Default: no.
    fn http(&self) -> Option<http::HttpSpec> {
        None
    }

    /// Answers one HTTP request (its body read whole, within the plugin's limit). The plugin decides who may
    /// call it (a signature, the client certificate's name). What it accepts as work goes to `unprompted`: a
    /// job with an `accepted` channel is on disk when the channel answers, so a 2xx sent after that is a
    /// promise kept across crashes.
    async fn on_http(
        &self,
        _context: &PluginContext,
        _request: http::HttpRequest,
        _unprompted: &UnpromptedSink,
    ) -> http::HttpResponse {
        http::HttpResponse::error(404, "not_found", "this bot serves no HTTP")
    }

    /// Resolves when the plugin fails on its own, between events (a program that exited). Default: never.
    async fn failed(&self) -> PluginError {
        std::future::pending().await
    }

    /// Called when the instance stops. Default: nothing to stop.
    async fn stop(&self) {}
}

/// The keys that ask clients not to preview a message's links: Element's (`uk.half-shot.unstable.show_url_previews`,
/// honoured since mid-2026) and Beeper's (`com.beeper.linkpreviews`, MSC4095: the message's previews, none).
pub fn without_link_previews(content: &mut serde_json::Value) {
    if let Some(map) = content.as_object_mut() {
        map.insert("uk.half-shot.unstable.show_url_previews".into(), serde_json::Value::Bool(false));
        map.insert("com.beeper.linkpreviews".into(), serde_json::Value::Array(Vec::new()));
    }
}

/// A secret in a plugin's config: as written, a reference (`{ credential: NAME }`); once built, the secret's
/// text. Its `Debug` never shows the value.
#[derive(Clone, Default, PartialEq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretValue(pub serde_json::Value);

impl SecretValue {
    /// The secret's text (once built; `None` while it is still a reference).
    pub fn text(&self) -> Option<&str> {
        self.0.as_str()
    }

    /// Whether it is written as a reference, as it must be in a config as written.
    pub fn is_reference(&self) -> bool {
        is_secret_reference(&self.0)
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_reference() { write!(f, "{}", self.0) } else { f.write_str("<secret>") }
    }
}

/// Whether a value of a plugin's config as written (what `check_config` sees) is a secret reference,
/// `{ credential: NAME }` or `{ file: PATH }`, rather than a value written into the config. Built, the plugin
/// gets the secret's text in its place.
pub fn is_secret_reference(value: &serde_json::Value) -> bool {
    value.as_object().is_some_and(|map| {
        map.len() == 1 && map.iter().all(|(key, value)| (key == "credential" || key == "file") && value.is_string())
    })
}

/// Seconds since the epoch (what plugins keep in their databases and reports).
pub fn unix_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Deserializes a plugin config, reporting the path of the first problem.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &serde_json::Value) -> Result<T, ConfigProblem> {
    serde_path_to_error::deserialize(config).map_err(|e| {
        let key = e.path().to_string();
        ConfigProblem { key: if key == "." { String::new() } else { key }, message: e.into_inner().to_string() }
    })
}

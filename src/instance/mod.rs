//! One bot instance at run time: a restored Matrix client, its plugin, the sync loop that hands each event to
//! the plugin exactly once (`handling.rs`), and the sender that carries out what the plugin asked for
//! (`outbox.rs`).
//!
//! Exactly once, across restarts and crashes:
//! - the sync position is the host's own (in the database), saved only after every event before it was handled,
//!   so a crash re-delivers instead of skipping;
//! - an event is marked handled in the same transaction that queues its answers in the outbox, so a re-delivered
//!   event is skipped and a queued answer is never lost;
//! - each answer is sent with a transaction id derived from the event it answers; a send interrupted between the
//!   homeserver's acceptance and its removal from the outbox is repeated with the same id, and the homeserver
//!   returns the first send instead of posting again;
//! - an encrypted event whose room key has not arrived yet waits (persisted) and is handled when the key comes,
//!   within the command's maximum age (`pending.rs`);
//! - a job a plugin accepted is kept until it is done and runs beside the sync loop (`jobs.rs`).

mod handling;
mod incoming;
mod jobs;
pub mod listeners;
pub mod outbox;
mod pending;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use matrix_sdk::Client;
use matrix_sdk::config::{SyncSettings, SyncToken};
use matrix_sdk::ruma::api::client::filter::{FilterDefinition, RoomEventFilter, RoomFilter};
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::{OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomId, UInt, UserId};
use tokio::sync::{Notify, mpsc, watch};

use crate::matrix_errors::{is_permanent, retry_after};
use crate::plugin::{EventType, Plugin, PluginContext, PluginError, Subscriptions};
use crate::state::db::{JobRecord, OutboxEntry, PendingEvent};
use crate::state::{Database, StateError};
use crate::telemetry::scrub::scrubbed;

/// Where a running instance's loop is, as the supervisor and the status line see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Syncing,
    /// Sync or handling failed; retrying with backoff.
    Retrying(String),
    /// The loop ended with an error; the supervisor decides what follows.
    Failed(String),
    Stopped,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub phase: Phase,
    pub first_sync_done: bool,
    /// Last time the loop made progress (a sync returned, or an error was handled).
    pub last_progress: Instant,
    pub last_sync: Option<SystemTime>,
    pub last_error: Option<String>,
}

impl Status {
    pub fn new() -> Self {
        Status {
            phase: Phase::Starting,
            first_sync_done: false,
            last_progress: Instant::now(),
            last_sync: None,
            last_error: None,
        }
    }
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters for metrics, kept across restarts of the instance.
#[derive(Debug, Default)]
pub struct Counters {
    pub events_handled: AtomicU64,
    pub commands_answered: AtomicU64,
    pub handling_errors: AtomicU64,
    pub decryption_failures: AtomicU64,
    pub syncs: AtomicU64,
}

/// How a run of the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to stop.
    Stopped,
    /// Gave up for now; the supervisor restarts it after a backoff.
    Failed(String),
    /// Cannot work until an operator acts (a revoked login, a deactivated account, a store that does not match):
    /// the supervisor leaves it failed.
    FailedPermanently(String),
}

/// Handling stopped part-way; the batch is retried from the same sync position.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Matrix(#[from] matrix_sdk::Error),
    #[error("the plugin failed: {0}")]
    Plugin(#[from] PluginError),
}

impl HandleError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            HandleError::Matrix(e) => retry_after(e),
            HandleError::State(_) | HandleError::Plugin(_) => None,
        }
    }
}

pub struct Instance {
    pub id: String,
    pub client: Client,
    pub plugin: Arc<dyn Plugin>,
    pub context: Arc<PluginContext>,
    /// Where the plugin is made reachable over HTTP while it runs (if it serves HTTP).
    pub endpoints: crate::plugin::http::Endpoints,
    /// The instance's own HTTP listeners, bound for each run.
    pub listeners: Vec<listeners::Listener>,
    pub db: Arc<Database>,
    /// Users of every bot in this host; their messages are never commands.
    pub bot_users: Arc<RwLock<HashSet<OwnedUserId>>>,
    pub room_subscriptions: HashSet<OwnedRoomId>,
    pub max_command_age: Duration,
    /// At most this many answered commands per sender per minute (none: no limit).
    pub sender_limit: Option<u32>,
    pub sync_timeout: Duration,
    pub status: Arc<watch::Sender<Status>>,
    pub counters: Arc<Counters>,
    /// Woken on every status change, so that the host reacts at once (READY, STATUS=).
    pub on_change: Arc<Notify>,
}

/// What one run of an instance keeps besides its configuration.
struct Run<'a> {
    instance: &'a Instance,
    outbox: mpsc::UnboundedSender<OutboxEntry>,
    outstanding: Arc<outbox::Outstanding>,
    /// Jobs accepted during this run, for the job runner.
    jobs: mpsc::UnboundedSender<JobRecord>,
    pending: Mutex<Vec<PendingEvent>>,
    recent_commands: Mutex<HashMap<OwnedUserId, VecDeque<Instant>>>,
    /// Rooms the bot joined in this run whose join has not come in a sync yet: until it has, syncs carry the bot's
    /// own events (the join marks where history ends, and tells the plugin of the invite it answered).
    joins_unsynced: Mutex<HashSet<OwnedRoomId>>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Consecutive failed syncs after which the loop gives up and lets the supervisor restart it.
pub const FAILURES_BEFORE_GIVING_UP: u32 = 5;
/// How long the sender may finish its sends in flight after the loop ended.
const SENDER_DRAIN: Duration = Duration::from_secs(5);
/// Events waiting for their room key are tried again at least this often.
const PENDING_RETRY_EVERY: Duration = Duration::from_secs(30);
/// At most this many events wait for their room key per instance; beyond, the oldest is given up.
pub(crate) const MAX_PENDING: usize = 100;
/// How long the plugin's `run` task has to end after the instance was asked to stop.
const BACKGROUND_DRAIN: Duration = Duration::from_secs(5);
/// At most this long the sync loop lets a batch's answers go out before its next long poll: their echoes then
/// come back in one sync instead of waking the poll once per answer. Short, because under load new commands wait
/// meanwhile (a whole second here made the round trip with 8 senders 1.2 s against Python maubot's 0.3 s). Not
/// for a bot whose syncs leave out its own events: there is no echo to gather, and the wait only held new
/// commands back (round-trip median under load 19% lower without it, pongs/s the same: docs/benchmark.md).
const ANSWERS_FIRST: Duration = Duration::from_millis(100);

impl Instance {
    fn own_user(&self) -> OwnedUserId {
        self.client.user_id().expect("session restored").to_owned()
    }

    fn is_bot(&self, user: &UserId) -> bool {
        self.client.user_id() == Some(user) || self.bot_users.read().unwrap_or_else(|p| p.into_inner()).contains(user)
    }

    fn update(&self, change: impl FnOnce(&mut Status)) {
        self.status.send_modify(change);
        self.on_change.notify_one();
    }

    fn set_phase(&self, phase: Phase) {
        self.update(|s| {
            if let Phase::Retrying(why) | Phase::Failed(why) = &phase {
                s.last_error = Some(why.clone());
            }
            s.phase = phase;
            s.last_progress = Instant::now();
        });
    }

    /// A sync response arrived: the bot is syncing (and has had its first sync).
    fn mark_synced(&self) {
        self.update(|s| {
            s.phase = Phase::Syncing;
            s.first_sync_done = true;
            s.last_progress = Instant::now();
            s.last_sync = Some(SystemTime::now());
        });
    }

    fn subscribed(&self, room_id: &RoomId) -> bool {
        self.room_subscriptions.is_empty() || self.room_subscriptions.contains(room_id)
    }

    /// Syncs until `shutdown` turns true, the session is rejected, or syncing keeps failing. The sender runs
    /// beside the loop and is given a moment to finish its sends when the loop ends.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Outcome {
        let (outbox, queue) = mpsc::unbounded_channel();
        let kept = async {
            Ok::<_, StateError>((
                self.db.outbox(&self.id).await?,
                self.db.pending(&self.id).await?,
                self.db.jobs(&self.id).await?,
            ))
        };
        let (owed, pending, kept_jobs) = match kept.await {
            Ok(state) => state,
            Err(e) => return Outcome::Failed(format!("cannot read the outbox and the jobs: {e}")),
        };
        let (sender_stop, sender_stopped) = watch::channel(false);
        let outstanding = Arc::new(outbox::Outstanding::default());
        outstanding.add(owed.len());
        let sender = outbox::Sender {
            id: self.id.clone(),
            client: self.client.clone(),
            db: self.db.clone(),
            counters: self.counters.clone(),
            outstanding: outstanding.clone(),
            private_dir: Arc::new(self.context.data_dir.clone()),
        };
        let sender = sender.run(owed, queue, sender_stopped);
        tokio::pin!(sender);
        let (unprompted, mut unprompted_queue) = mpsc::unbounded_channel();
        let (jobs, accepted_jobs) = mpsc::unbounded_channel();
        let run = Run {
            instance: &self,
            outbox,
            outstanding,
            jobs,
            pending: Mutex::new(pending),
            recent_commands: Mutex::default(),
            joins_unsynced: Mutex::default(),
        };
        let (background_stop, background_stopped) = watch::channel(false);
        let (http_stop, http_stopped) = watch::channel(false);
        let mut _reachable = None;
        let started = match self.plugin.start(&self.context, unprompted.clone()).await {
            Err(e) => Err(plugin_failed(e)),
            Ok(()) => self.serve_http(&unprompted, http_stopped).await.map(|registration| _reachable = registration),
        };
        let outcome = match started {
            Err(outcome) => outcome,
            Ok(()) => {
                // The plugin's own task: its end is told (`ended`), an error ends the run.
                let (ended, mut background_ended) = watch::channel(false);
                let background = async {
                    let result = self.plugin.run(&self.context, unprompted, background_stopped).await;
                    let _ = ended.send(true);
                    match result {
                        Ok(()) => std::future::pending().await,
                        Err(e) => plugin_failed(e),
                    }
                };
                tokio::pin!(background);
                let outcome = tokio::select! {
                    outcome = run.sync_loop(&mut shutdown) => outcome,
                    () = &mut sender => Outcome::Failed("the sender stopped".into()),
                    error = self.plugin.failed() => plugin_failed(error),
                    outcome = run.queue_unprompted(&mut unprompted_queue) => outcome,
                    outcome = run.run_jobs(kept_jobs, accepted_jobs) => outcome,
                    outcome = &mut background => outcome,
                };
                // Cooperative: the background task is asked to end and given a moment (what it hands on
                // meanwhile is persisted by the queue), unless it ended already.
                let _ = background_stop.send(true);
                if !*background_ended.borrow() {
                    let drained = async {
                        tokio::select! {
                            _ = &mut background => {}
                            _ = background_ended.wait_for(|ended| *ended) => {}
                            _ = run.queue_unprompted(&mut unprompted_queue) => {}
                        }
                    };
                    let _ = tokio::time::timeout(BACKGROUND_DRAIN, drained).await;
                }
                // What is still queued is persisted (nothing waits in the channel to be lost).
                while let Ok(unprompted) = unprompted_queue.try_recv() {
                    if let Err(outcome) = run.queue_one(unprompted).await {
                        tracing::warn!(instance = %self.id, outcome = ?outcome, "could not keep what the plugin did on its own at the end");
                        break;
                    }
                }
                outcome
            }
        };
        // No more requests: the listeners close and `/_plugins/<id>/` answers 503.
        let _ = http_stop.send(true);
        drop(_reachable);
        self.plugin.stop().await;
        let _ = sender_stop.send(true);
        let _ = tokio::time::timeout(SENDER_DRAIN, &mut sender).await;
        match &outcome {
            Outcome::Stopped => self.set_phase(Phase::Stopped),
            Outcome::Failed(why) | Outcome::FailedPermanently(why) => {
                // The supervisor reports the failure (at ERROR, once) and decides about the restart.
                tracing::warn!(instance = %self.id, error = %why, "the bot stopped with an error");
                self.set_phase(Phase::Failed(why.clone()));
            }
        }
        outcome
    }
}

impl Instance {
    /// Makes a plugin that serves HTTP reachable: under the management server and on the instance's own
    /// listeners (all bound, or the run fails naming the one that could not be).
    async fn serve_http(
        &self,
        unprompted: &crate::plugin::UnpromptedSink,
        stop: watch::Receiver<bool>,
    ) -> Result<Option<crate::plugin::http::Registration>, Outcome> {
        let Some(mut spec) = self.plugin.http() else {
            if !self.listeners.is_empty() {
                tracing::warn!(instance = %self.id, "listeners are configured, but the plugin serves no HTTP; not binding them");
            }
            return Ok(None);
        };
        spec.max_body_bytes = spec.max_body_bytes.min(crate::plugin::http::MAX_BODY_LIMIT);
        let endpoint = Arc::new(crate::plugin::http::Endpoint {
            plugin: self.plugin.clone(),
            context: self.context.clone(),
            unprompted: unprompted.clone(),
            spec,
        });
        listeners::start(&self.id, &self.listeners, endpoint.clone(), stop).await.map_err(Outcome::Failed)?;
        let registration = self.endpoints.register(&self.id, endpoint);
        tracing::info!(instance = %self.id, path = %format!("/_plugins/{}/", self.id), "the plugin's HTTP routes are reachable on the management API");
        Ok(Some(registration))
    }
}

impl Run<'_> {
    /// Queues what the plugin does on its own: sends (persisted first, then handed to the sender) and jobs
    /// (persisted, then handed to the job runner).
    async fn queue_unprompted(&self, queue: &mut mpsc::UnboundedReceiver<crate::plugin::Unprompted>) -> Outcome {
        while let Some(unprompted) = queue.recv().await {
            if let Err(outcome) = self.queue_one(unprompted).await {
                return outcome;
            }
        }
        std::future::pending().await
    }

    /// Persists one thing the plugin did on its own and hands it on.
    async fn queue_one(&self, unprompted: crate::plugin::Unprompted) -> Result<(), Outcome> {
        let me = self.instance;
        match unprompted {
            crate::plugin::Unprompted::Send { room_id, content, key } => {
                let send = handling::unprompted_send(&room_id, &content, &key);
                let queued = me
                    .db
                    .queue_sends(&me.id, vec![send])
                    .await
                    .map_err(|e| Outcome::Failed(format!("cannot queue a send the plugin made: {e}")))?;
                self.outstanding.add(queued.len());
                for send in queued {
                    let _ = self.outbox.send(send);
                }
            }
            crate::plugin::Unprompted::Job { key, payload, accepted } => {
                let Some(job) = handling::to_new_job(&me.id, None, key, &payload) else {
                    if let Some(accepted) = accepted {
                        let _ = accepted.send(false);
                    }
                    return Ok(());
                };
                let new = me
                    .db
                    .accept_jobs(&me.id, vec![job])
                    .await
                    .map_err(|e| Outcome::Failed(format!("cannot keep a job the plugin accepted: {e}")))?;
                if let Some(accepted) = accepted {
                    let _ = accepted.send(!new.is_empty());
                }
                for job in new {
                    let _ = self.jobs.send(job);
                }
            }
        }
        Ok(())
    }

    async fn sync_loop(&self, shutdown: &mut watch::Receiver<bool>) -> Outcome {
        let me = self.instance;
        let mut since = match me.db.sync_token(&me.id).await {
            Ok(token) => token,
            Err(e) => return Outcome::Failed(format!("cannot read the sync position: {e}")),
        };
        match self.answer_pending_invites().await {
            Ok(()) => {}
            Err(HandleError::Plugin(e)) => return plugin_failed(e),
            Err(e) => {
                tracing::warn!(instance = %me.id, error = %scrubbed(&e.to_string()), "could not answer the invites that came while the bot was down; trying at the next start")
            }
        }
        let mut failures = 0u32;
        let mut last_retry = Instant::now();
        // A bot that changes no rooms does not need its own events back (`Plugin::changes_rooms`): its answers
        // would only wake its long poll again. They come all the same in the run's first sync and after a join
        // until the join has come (`joins_unsynced`): the bot's own join is where a room's history ends, and it
        // may have joined just before a crash.
        let own_events_left_out = (!me.plugin.changes_rooms()).then(|| me.own_user());
        let definition = sync_filter(me.plugin.subscriptions(), own_events_left_out.as_deref());
        let with_own_events = sync_filter(me.plugin.subscriptions(), None);
        // Uploaded after the first sync that worked (the homeserver is reachable then), tried once per run.
        let mut filter_id: Option<String> = None;
        let mut filter_tried = false;
        let mut synced_in_this_run = false;
        loop {
            if *shutdown.borrow() {
                return Outcome::Stopped;
            }
            let own_events_needed = own_events_left_out.is_some()
                && (!synced_in_this_run || !self.joins_unsynced.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
            let filter = match &filter_id {
                _ if own_events_needed => Filter::FilterDefinition(with_own_events.clone()),
                Some(id) => Filter::FilterId(id.clone()),
                None => Filter::FilterDefinition(definition.clone()),
            };
            let first = !me.status.borrow().first_sync_done;
            let settings = SyncSettings::default()
                .filter(filter)
                .timeout(if first { Duration::ZERO } else { me.sync_timeout })
                .token(since.clone().map(SyncToken::Specific).unwrap_or(SyncToken::NoToken));
            let result = tokio::select! {
                _ = crate::stopping(shutdown) => return Outcome::Stopped,
                result = me.client.sync_once(settings) => result,
            };
            let mut keys_may_have_arrived = false;
            let outcome: Result<String, (String, Option<Duration>)> = match result {
                Ok(response) => {
                    if first {
                        // The bot is up: READY does not wait for the backlog after a downtime, which is
                        // answered from here on (each event once, as always).
                        me.mark_synced();
                    }
                    let next = response.next_batch.clone();
                    keys_may_have_arrived = !response.to_device.is_empty();
                    match self.handle(response, since.as_deref()).await {
                        Ok(()) => match me.db.save_sync_token(&me.id, &next).await {
                            Ok(()) => Ok(next),
                            Err(e) => Err((e.to_string(), None)),
                        },
                        // The plugin has to start over: the run ends (the batch is delivered again afterwards).
                        Err(HandleError::Plugin(e)) => return plugin_failed(e),
                        Err(e) => {
                            me.counters.handling_errors.fetch_add(1, Ordering::Relaxed);
                            Err((scrubbed(&format!("handling events failed: {e}")), e.retry_after()))
                        }
                    }
                }
                Err(e) if is_permanently_refused(&e) => {
                    return Outcome::FailedPermanently(scrubbed(&format!(
                        "the homeserver rejected the access token ({e}); the device was logged out or deleted, or \
                         the account deactivated. A deleted device cannot come back: restore the state directory \
                         from a backup only if the device still exists; otherwise configure the bot under a new \
                         instance id (its user's old cross-signing identity must be reset from another client \
                         first) and run setup"
                    )));
                }
                Err(e) => {
                    // A homeserver that forgot the uploaded filter (reset, or the state moved to another one)
                    // refuses the sync: the filter goes inline again for the rest of the run.
                    if filter_id.is_some() && is_permanent(&e) {
                        filter_id = None;
                    }
                    Err((scrubbed(&format!("sync failed: {e}")), retry_after(&e)))
                }
            };
            match outcome {
                Ok(next) => {
                    since = Some(next);
                    failures = 0;
                    synced_in_this_run = true;
                    if !filter_tried {
                        filter_tried = true;
                        filter_id = tokio::select! {
                            _ = crate::stopping(shutdown) => return Outcome::Stopped,
                            id = upload_filter(&me.client, &definition) => id,
                        };
                    }
                    me.counters.syncs.fetch_add(1, Ordering::Relaxed);
                    me.mark_synced();
                    // Room keys arrive as to-device messages (or from the key backup, which a failed decryption
                    // asks for): try what waits for one when some came, and now and then in any case.
                    if keys_may_have_arrived || last_retry.elapsed() >= PENDING_RETRY_EVERY {
                        last_retry = Instant::now();
                        if let Err(e) = self.retry_pending().await {
                            tracing::warn!(instance = %me.id, error = %e, "could not retry events waiting for their room key");
                        }
                    }
                    // The answers' echoes come back in one sync, not one each (a bot whose own events are left
                    // out of its syncs has none, and polls again at once).
                    if self.outstanding.count() > 0 && own_events_left_out.is_none() {
                        tokio::select! {
                            _ = crate::stopping(shutdown) => return Outcome::Stopped,
                            _ = tokio::time::timeout(ANSWERS_FIRST, self.outstanding.idle()) => {}
                        }
                    }
                }
                Err((message, retry_after)) => {
                    failures += 1;
                    if failures >= FAILURES_BEFORE_GIVING_UP {
                        return Outcome::Failed(format!("{failures} attempts in a row failed; last: {message}"));
                    }
                    // The homeserver's own Retry-After wins over our backoff when it asks for longer.
                    let delay = retry_after.map_or_else(|| backoff(failures), |r| r.max(backoff(failures)));
                    tracing::warn!(instance = %me.id, error = %message, retry_in_ms = delay.as_millis() as u64, "retrying");
                    me.set_phase(Phase::Retrying(message));
                    // A deliberate wait is not a hang: progress is due when the wait ends.
                    me.update(|s| s.last_progress = Instant::now() + delay);
                    tokio::select! {
                        _ = crate::stopping(shutdown) => return Outcome::Stopped,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// How a run ends when its plugin failed.
fn plugin_failed(error: PluginError) -> Outcome {
    let why = scrubbed(&format!("the plugin failed: {}", error.message));
    if error.permanent { Outcome::FailedPermanently(why) } else { Outcome::Failed(why) }
}

/// Event types no plugin is handed, kept out of every sync.
const NEVER_HANDED: &[&str] =
    &["m.call.*", "m.poll.*", "org.matrix.msc3381.poll.*", "m.sticker", "org.matrix.msc3401.call.member"];

/// Only what bots use: no presence, typing, receipts or room account data (global account data stays: E2EE
/// needs it), lazy-loaded members, enough timeline per room that a short downtime needs no extra requests, and
/// in the timeline no event types the plugin did not subscribe to, where that can be said: state events and
/// encrypted events always come (E2EE and the room's membership need them; what an encrypted event holds is
/// known only after decryption), and messages too (the default subscription). `leave_out_events_of`: the bot,
/// when its plugin changes no rooms (its own answers would only wake its long poll again).
fn sync_filter(subscriptions: Subscriptions, leave_out_events_of: Option<&UserId>) -> FilterDefinition {
    let mut timeline = RoomEventFilter::default();
    timeline.not_senders = leave_out_events_of.into_iter().map(ToOwned::to_owned).collect();
    timeline.limit = Some(UInt::from(50u32));
    timeline.not_types = NEVER_HANDED.iter().map(|t| (*t).to_owned()).collect();
    if !subscriptions.contains(EventType::Reaction) {
        timeline.not_types.push("m.reaction".into());
    }
    let mut state = RoomEventFilter::default();
    state.lazy_load_options =
        matrix_sdk::ruma::api::client::filter::LazyLoadOptions::Enabled { include_redundant_members: false };
    let mut room = RoomFilter::default();
    room.timeline = timeline;
    room.state = state;
    // Typing notifications, read receipts and per-room account data (tags, read markers): no plugin uses them.
    room.ephemeral = RoomEventFilter::ignore_all();
    room.account_data = RoomEventFilter::ignore_all();
    let mut filter = FilterDefinition::default();
    filter.room = room;
    filter.presence = matrix_sdk::ruma::api::client::filter::Filter::ignore_all();
    filter
}

/// Uploads the sync filter once, so that each `/sync` names it instead of carrying it. matrix-sdk keeps the id
/// in the bot's state store under a name derived from the definition: a changed filter (other subscriptions, a
/// new release) is uploaded anew. None (the filter goes inline) while the upload fails.
async fn upload_filter(client: &Client, definition: &FilterDefinition) -> Option<String> {
    use sha2::Digest;
    let json = serde_json::to_vec(definition).ok()?;
    let name = format!("maubot-{}", &hex::encode(sha2::Sha256::digest(&json))[..16]);
    match client.get_or_upload_filter(&name, definition.clone()).await {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::debug!(error = %scrubbed(&e.to_string()), "could not upload the sync filter; sending it inline");
            None
        }
    }
}

/// The transaction id for the `index`-th action answering `event_id`: the same on every retry.
pub fn transaction_id(event_id: &str, index: usize) -> OwnedTransactionId {
    OwnedTransactionId::from(format!("maubot.{index}.{}", escape_for_transaction_id(event_id)))
}

/// The transaction id for an action with the idempotency key `key` (a plugin's own, outside any event).
pub fn keyed_transaction_id(key: &str) -> OwnedTransactionId {
    OwnedTransactionId::from(format!("maubot.k.{}", escape_for_transaction_id(key)))
}

/// The transaction id for the `index`-th action of the finished job `key`.
pub fn job_transaction_id(key: &str, index: usize) -> OwnedTransactionId {
    OwnedTransactionId::from(format!("maubot.j{index}.{}", escape_for_transaction_id(key)))
}

/// Unreserved URL characters stay, everything else (including `~`) becomes `~xx`: a one-to-one mapping.
fn escape_for_transaction_id(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 8);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("~{byte:02x}"));
        }
    }
    escaped
}

/// The login is gone for good: a revoked or unknown token (a soft logout would need a new login, which `run`
/// never does), or a deactivated account.
fn is_permanently_refused(error: &matrix_sdk::Error) -> bool {
    matches!(error.client_api_error_kind(), Some(ErrorKind::UnknownToken(_) | ErrorKind::UserDeactivated))
}

/// Exponential backoff with jitter between retries inside one run: about 0.5 s, 1 s, 2 s, 4 s ... up to 30 s
/// (after [`FAILURES_BEFORE_GIVING_UP`] the supervisor takes over with its own, longer backoff).
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(250u64.saturating_mul(1u64 << failures.min(7)));
    let capped = base.min(MAX_BACKOFF);
    let jitter = rand::random::<f64>() * 0.25 + 0.875;
    capped.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_are_stable_and_distinct_per_action() {
        let a = transaction_id("$abc:example.org", 0);
        assert_eq!(a, transaction_id("$abc:example.org", 0));
        assert_ne!(a, transaction_id("$abc:example.org", 1));
        assert_ne!(a, transaction_id("$abd:example.org", 0));
        assert_eq!(a.as_str(), "maubot.0.~24abc~3aexample.org");
        assert_ne!(transaction_id("$abc:example.org", 0), transaction_id("$abce:xample.org", 0));
    }

    #[test]
    fn the_sync_filter_leaves_out_what_no_subscription_asks_for() {
        let types = |subscriptions: Subscriptions| {
            let filter = sync_filter(subscriptions, None);
            (filter.room.timeline.types.clone(), filter.room.timeline.not_types.clone())
        };
        let (only, not) = types(Subscriptions::messages());
        assert_eq!(only, None, "state and encrypted events always come");
        assert!(not.contains(&"m.reaction".to_owned()) && not.contains(&"m.call.*".to_owned()), "{not:?}");
        let (_, not) = types(Subscriptions::of([EventType::Message, EventType::Reaction]));
        assert!(!not.contains(&"m.reaction".to_owned()), "{not:?}");
    }

    #[test]
    fn the_sync_filter_leaves_out_the_bots_own_events_only_when_asked() {
        let bot = matrix_sdk::ruma::user_id!("@bot:example.org");
        let filter = sync_filter(Subscriptions::messages(), Some(bot));
        assert_eq!(filter.room.timeline.not_senders, vec![bot.to_owned()]);
        assert!(filter.room.state.not_senders.is_empty(), "the state filter is not the timeline's");
        assert!(sync_filter(Subscriptions::messages(), None).room.timeline.not_senders.is_empty());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) < Duration::from_millis(700));
        assert!(backoff(3) > Duration::from_millis(1700));
        for failures in [8, 20, u32::MAX] {
            assert!(backoff(failures) <= MAX_BACKOFF.mul_f64(1.125));
        }
    }
}

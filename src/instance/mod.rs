//! One bot instance at run time: a restored Matrix client, its plugin, and the sync loop that hands each event
//! to the plugin exactly once.
//!
//! Exactly once, across restarts and crashes:
//! - the sync position is the host's own (in the database), saved only after every event before it was handled,
//!   so a crash re-delivers instead of skipping;
//! - handled event ids are recorded after their actions succeeded, so a re-delivered event is skipped;
//! - an action interrupted between sending and recording is re-sent with the same transaction id, derived from
//!   the event, and the homeserver returns the first send instead of posting again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use matrix_sdk::config::{SyncSettings, SyncToken};
use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::filter::{FilterDefinition, RoomEventFilter, RoomFilter};
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::{
    AddMentions, ForwardThread, MessageType, OriginalSyncRoomMessageEvent, Relation, ReplyMetadata,
};
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncStateEvent, AnySyncTimelineEvent, SyncMessageLikeEvent, SyncStateEvent,
};
use matrix_sdk::ruma::{OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomId, UInt};
use matrix_sdk::{Client, Room};
use tokio::sync::{Notify, watch};

use crate::alerts::scrub::scrubbed;
use crate::plugin::{Action, IncomingMessage, Plugin, PluginContext};
use crate::state::{Database, StateError};

pub mod rate_limit;

pub use rate_limit::RateLimiter;

/// Where a running instance's loop is, as the supervisor and the status line see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Syncing,
    /// Sync or handling failed; retrying with backoff.
    Retrying(String),
    /// The loop ended with an error; the supervisor restarts it.
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
    /// Gave up; the supervisor decides when to try again.
    Failed(String),
}

/// Handling stopped part-way; the batch is retried from the same sync position.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Matrix(#[from] matrix_sdk::Error),
}

impl HandleError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            HandleError::Matrix(e) => retry_after(e),
            HandleError::State(_) => None,
        }
    }
}

pub struct Instance {
    pub id: String,
    pub client: Client,
    pub plugin: Box<dyn Plugin>,
    pub context: PluginContext,
    pub db: Arc<Database>,
    /// Users of every bot in this host; their messages are never commands.
    pub bot_users: Arc<HashSet<OwnedUserId>>,
    pub room_subscriptions: HashSet<OwnedRoomId>,
    pub max_command_age: Duration,
    pub sync_timeout: Duration,
    pub status: Arc<watch::Sender<Status>>,
    pub counters: Arc<Counters>,
    /// Woken on every status change, so that the host reacts at once (READY, STATUS=).
    pub on_change: Arc<Notify>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Consecutive failed syncs after which the loop gives up and lets the supervisor restart it.
pub const FAILURES_BEFORE_GIVING_UP: u32 = 5;
/// Most events fetched to fill one gap after downtime.
const MAX_BACKFILL_EVENTS: usize = 2000;

impl Instance {
    fn own_user(&self) -> OwnedUserId {
        self.client.user_id().expect("session restored").to_owned()
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

    fn subscribed(&self, room_id: &RoomId) -> bool {
        self.room_subscriptions.is_empty() || self.room_subscriptions.contains(room_id)
    }

    /// Syncs until `shutdown` turns true, the session is rejected, or syncing keeps failing.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Outcome {
        let outcome = self.sync_loop(&mut shutdown).await;
        match &outcome {
            Outcome::Stopped => self.set_phase(Phase::Stopped),
            Outcome::Failed(why) => {
                // The supervisor reports the failure (at ERROR, once) and decides about the restart.
                tracing::warn!(instance = %self.id, error = %why, "the bot stopped with an error");
                self.set_phase(Phase::Failed(why.clone()));
            }
        }
        outcome
    }

    async fn sync_loop(&self, shutdown: &mut watch::Receiver<bool>) -> Outcome {
        let mut since = match self.db.sync_token(&self.id) {
            Ok(token) => token,
            Err(e) => return Outcome::Failed(format!("cannot read the sync position: {e}")),
        };
        self.answer_pending_invites().await;
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                return Outcome::Stopped;
            }
            let first = !self.status.borrow().first_sync_done;
            let settings = SyncSettings::default()
                .filter(sync_filter())
                .timeout(if first { Duration::ZERO } else { self.sync_timeout })
                .token(since.clone().map(SyncToken::Specific).unwrap_or(SyncToken::NoToken));
            let result = tokio::select! {
                _ = crate::stopping(shutdown) => return Outcome::Stopped,
                result = self.client.sync_once(settings) => result,
            };
            let outcome: Result<String, (String, Option<Duration>)> = match result {
                Ok(response) => {
                    let next = response.next_batch.clone();
                    match self.handle(response, since.as_deref()).await {
                        Ok(()) => match self.db.save_sync_token(&self.id, &next) {
                            Ok(()) => Ok(next),
                            Err(e) => Err((e.to_string(), None)),
                        },
                        Err(e) => {
                            self.counters.handling_errors.fetch_add(1, Ordering::Relaxed);
                            Err((scrubbed(&format!("handling events failed: {e}")), e.retry_after()))
                        }
                    }
                }
                Err(e) if is_session_revoked(&e) => {
                    return Outcome::Failed(scrubbed(&format!(
                        "the homeserver rejected the access token ({e}); the device was logged out or deleted. \
                         Restore the state from a backup, or set the instance up again"
                    )));
                }
                Err(e) => Err((scrubbed(&format!("sync failed: {e}")), retry_after(&e))),
            };
            match outcome {
                Ok(next) => {
                    since = Some(next);
                    failures = 0;
                    self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                    self.update(|s| {
                        s.phase = Phase::Syncing;
                        s.first_sync_done = true;
                        s.last_progress = Instant::now();
                        s.last_sync = Some(SystemTime::now());
                    });
                }
                Err((message, retry_after)) => {
                    failures += 1;
                    if failures >= FAILURES_BEFORE_GIVING_UP {
                        return Outcome::Failed(format!("{failures} attempts in a row failed; last: {message}"));
                    }
                    // The homeserver's own Retry-After wins over our backoff when it asks for longer.
                    let delay = retry_after.map_or_else(|| backoff(failures), |r| r.max(backoff(failures)));
                    tracing::warn!(instance = %self.id, error = %message, retry_in_ms = delay.as_millis() as u64, "retrying");
                    self.set_phase(Phase::Retrying(message));
                    // A deliberate wait is not a hang: progress is due when the wait ends.
                    self.update(|s| s.last_progress = Instant::now() + delay);
                    tokio::select! {
                        _ = crate::stopping(shutdown) => return Outcome::Stopped,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn handle(&self, response: matrix_sdk::sync::SyncResponse, since: Option<&str>) -> Result<(), HandleError> {
        for room_id in response.rooms.invited.keys() {
            self.answer_invite(room_id).await;
        }
        for (room_id, update) in response.rooms.joined {
            if !self.subscribed(&room_id) {
                continue;
            }
            let Some(room) = self.client.get_room(&room_id) else {
                continue;
            };
            let mut events = update.timeline.events;
            if since.is_none() {
                // No position at all (never synced): everything is history.
                continue;
            }
            if update.timeline.limited
                && let Some(prev_batch) = update.timeline.prev_batch
            {
                let mut older = self.backfill(&room, prev_batch, since).await?;
                older.append(&mut events);
                events = older;
            }
            self.handle_timeline(&room, &events).await?;
        }
        Ok(())
    }

    /// Fetches the events a limited sync left out, back to the previous position or the age limit.
    async fn backfill(
        &self,
        room: &Room,
        prev_batch: String,
        since: Option<&str>,
    ) -> Result<Vec<TimelineEvent>, HandleError> {
        let oldest_wanted = SystemTime::now() - self.max_command_age;
        let mut collected = Vec::new();
        let mut from = Some(prev_batch);
        while let Some(token) = from.take() {
            let mut options = MessagesOptions::backward().from(Some(token.as_str()));
            options.to = since.map(str::to_owned);
            options.limit = UInt::from(100u32);
            let page = room.messages(options).await?;
            let page_len = page.chunk.len();
            let mut reached_old = false;
            for event in page.chunk {
                if timestamp(&event).is_some_and(|ts| ts < oldest_wanted) {
                    reached_old = true;
                }
                collected.push(event);
            }
            if page_len == 0 || reached_old || collected.len() >= MAX_BACKFILL_EVENTS {
                break;
            }
            from = page.end;
        }
        tracing::debug!(instance = %self.id, room_id = %room.room_id(), events = collected.len(), "filled a sync gap");
        collected.reverse();
        Ok(collected)
    }

    async fn handle_timeline(&self, room: &Room, events: &[TimelineEvent]) -> Result<(), HandleError> {
        let own_user = self.own_user();
        // What was said before the bot joined is history, not commands.
        let start = events.iter().rposition(|e| is_join_of(e, &own_user)).map_or(0, |i| i + 1);
        for event in &events[start..] {
            self.counters.events_handled.fetch_add(1, Ordering::Relaxed);
            // Each event is progress: a plugin waiting on its rate limiter is slow, not hung.
            self.update(|s| s.last_progress = Instant::now());
            let Ok(parsed) = event.raw().deserialize() else {
                continue;
            };
            match parsed {
                AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                    SyncMessageLikeEvent::Original(message),
                )) => {
                    self.handle_message(room, &message, event.encryption_info().is_some()).await?;
                }
                AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomEncrypted(encrypted)) => {
                    self.counters.decryption_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        instance = %self.id,
                        room_id = %room.room_id(),
                        event_id = %encrypted.event_id(),
                        "cannot decrypt an event (the sender did not share the key with this bot's device)"
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn handle_message(
        &self,
        room: &Room,
        message: &OriginalSyncRoomMessageEvent,
        encrypted: bool,
    ) -> Result<(), HandleError> {
        if message.sender == self.own_user() || self.bot_users.contains(&message.sender) {
            return Ok(());
        }
        let MessageType::Text(text) = &message.content.msgtype else {
            return Ok(());
        };
        if matches!(message.content.relates_to, Some(Relation::Replacement(_))) {
            return Ok(());
        }
        let sent_at = message.origin_server_ts.to_system_time().unwrap_or(SystemTime::UNIX_EPOCH);
        let age = SystemTime::now().duration_since(sent_at).unwrap_or_default();
        if age > self.max_command_age {
            tracing::debug!(instance = %self.id, event_id = %message.event_id, age_s = age.as_secs(), "too old to answer");
            return Ok(());
        }
        if self.db.is_handled(&self.id, message.event_id.as_str())? {
            return Ok(());
        }
        let incoming = IncomingMessage {
            room_id: room.room_id().to_owned(),
            event_id: message.event_id.clone(),
            sender: message.sender.clone(),
            body: text.body.clone(),
            age,
            encrypted,
        };
        let actions = self.plugin.on_message(&self.context, &incoming).await;
        let answered = !actions.is_empty();
        for (index, action) in actions.into_iter().enumerate() {
            self.perform(room, message, index, action).await?;
        }
        fault_injection::after_reply_sent();
        self.db.mark_handled(&self.id, message.event_id.as_str())?;
        if answered {
            self.counters.commands_answered.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                instance = %self.id,
                room_id = %room.room_id(),
                event_id = %message.event_id,
                age_ms = age.as_millis() as u64,
                "answered"
            );
        }
        Ok(())
    }

    async fn perform(
        &self,
        room: &Room,
        message: &OriginalSyncRoomMessageEvent,
        index: usize,
        action: Action,
    ) -> Result<(), HandleError> {
        match action {
            Action::Reply(content) => {
                let content = content.make_reply_to(
                    ReplyMetadata::new(&message.event_id, &message.sender, thread_of(message)),
                    ForwardThread::Yes,
                    AddMentions::No,
                );
                let txn_id = transaction_id(message.event_id.as_str(), index);
                match room.send(content).with_transaction_id(txn_id).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_permanent(&e) => {
                        // Retrying cannot help (no permission, room gone...): give up on this action only.
                        tracing::error!(
                            instance = %self.id,
                            room_id = %room.room_id(),
                            event_id = %message.event_id,
                            error = %scrubbed(&e.to_string()),
                            "the homeserver refused the reply; not retrying"
                        );
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Invites that arrived while the bot was down.
    async fn answer_pending_invites(&self) {
        for room in self.client.invited_rooms() {
            self.answer_invite(room.room_id()).await;
        }
    }

    async fn answer_invite(&self, room_id: &RoomId) {
        let Some(room) = self.client.get_room(room_id) else {
            return;
        };
        let inviter =
            room.invite_details().await.ok().and_then(|details| details.inviter).map(|m| m.user_id().to_owned());
        let allowed =
            inviter.as_ref().is_some_and(|u| self.plugin.accepts_invite_from(u.as_str())) && self.subscribed(room_id);
        let inviter = inviter.map(|u| u.to_string()).unwrap_or_else(|| "unknown".into());
        if allowed {
            for attempt in 1..=3u32 {
                match self.client.join_room_by_id(room_id).await {
                    Ok(_) => {
                        tracing::info!(instance = %self.id, room_id = %room_id, %inviter, "joined on invite");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(instance = %self.id, room_id = %room_id, error = %scrubbed(&e.to_string()), attempt, "joining failed");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
            }
        } else {
            tracing::info!(instance = %self.id, room_id = %room_id, %inviter, "declining an invite from a user not in allow_invites_from");
            if let Err(e) = room.leave().await {
                tracing::warn!(instance = %self.id, room_id = %room_id, error = %scrubbed(&e.to_string()), "declining the invite failed");
            }
        }
    }
}

/// Only what bots use: no presence, typing, receipts or room account data (global account data stays: E2EE
/// needs it), lazy-loaded members, and enough timeline per room that a short downtime needs no extra requests.
fn sync_filter() -> Filter {
    let mut timeline = RoomEventFilter::default();
    timeline.limit = Some(UInt::from(50u32));
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
    Filter::FilterDefinition(filter)
}

/// The transaction id for the `index`-th action answering `event_id`: the same on every retry.
pub fn transaction_id(event_id: &str, index: usize) -> OwnedTransactionId {
    // Unreserved URL characters stay, everything else (including `~`) becomes `~xx`: a one-to-one mapping.
    let mut escaped = String::with_capacity(event_id.len() + 8);
    for byte in event_id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("~{byte:02x}"));
        }
    }
    OwnedTransactionId::from(format!("maubot.{index}.{escaped}"))
}

fn thread_of(message: &OriginalSyncRoomMessageEvent) -> Option<&matrix_sdk::ruma::events::relation::Thread> {
    match &message.content.relates_to {
        Some(Relation::Thread(thread)) => Some(thread),
        _ => None,
    }
}

fn is_join_of(event: &TimelineEvent, user: &OwnedUserId) -> bool {
    matches!(
        event.raw().deserialize(),
        Ok(AnySyncTimelineEvent::State(AnySyncStateEvent::RoomMember(SyncStateEvent::Original(member))))
            if member.state_key == *user && member.content.membership == MembershipState::Join
    )
}

fn timestamp(event: &TimelineEvent) -> Option<SystemTime> {
    event
        .raw()
        .get_field::<matrix_sdk::ruma::MilliSecondsSinceUnixEpoch>("origin_server_ts")
        .ok()
        .flatten()?
        .to_system_time()
}

/// How long the homeserver asked us to wait (`M_LIMIT_EXCEEDED`, `retry_after_ms` / `Retry-After`).
pub fn retry_after(error: &matrix_sdk::Error) -> Option<Duration> {
    match error.client_api_error_kind() {
        Some(ErrorKind::LimitExceeded(data)) => match data.retry_after.as_ref()? {
            matrix_sdk::ruma::api::error::RetryAfter::Delay(delay) => Some(*delay),
            matrix_sdk::ruma::api::error::RetryAfter::DateTime(at) => {
                Some(at.duration_since(SystemTime::now()).unwrap_or_default())
            }
        },
        _ => None,
    }
}

fn is_session_revoked(error: &matrix_sdk::Error) -> bool {
    // A soft logout would need a new login, which `run` never does: treat it the same.
    matches!(error.client_api_error_kind(), Some(ErrorKind::UnknownToken(_)))
}

/// A 4xx other than rate limiting: the same request will fail again.
fn is_permanent(error: &matrix_sdk::Error) -> bool {
    error.as_client_api_error().is_some_and(|e| e.status_code.is_client_error() && e.status_code.as_u16() != 429)
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
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) < Duration::from_millis(700));
        assert!(backoff(3) > Duration::from_millis(1700));
        for failures in [8, 20, u32::MAX] {
            assert!(backoff(failures) <= MAX_BACKOFF.mul_f64(1.125));
        }
    }
}

/// Test-only fault injection: `MAUBOT_FAULT_ABORT_AFTER_REPLIES=N` aborts the process right after the N-th
/// answered command was sent and before it was recorded, the one window in which only the transaction id
/// prevents a duplicate. Unset (always, outside tests), it does nothing.
mod fault_injection {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static SENT: AtomicU64 = AtomicU64::new(0);

    pub fn after_reply_sent() {
        let limit =
            LIMIT.get_or_init(|| std::env::var("MAUBOT_FAULT_ABORT_AFTER_REPLIES").ok().and_then(|v| v.parse().ok()));
        if let Some(limit) = limit
            && SENT.fetch_add(1, Ordering::SeqCst) + 1 >= *limit
        {
            eprintln!("fault injection: aborting after a sent, unrecorded reply");
            std::process::abort();
        }
    }
}

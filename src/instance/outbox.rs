//! The sender: carries out the sends the outbox holds, beside the sync loop.
//!
//! - Fair: rooms take turns (round robin), so a flood of commands in one room cannot starve the others; sends
//!   to one room go out one at a time and in order; a few rooms are served at once.
//! - Within the homeserver's limits: `M_LIMIT_EXCEEDED` pauses sending for the `retry_after_ms` it names (the
//!   limit is per user, so for every room), and the send is repeated afterwards: no answer is dropped.
//! - Exactly once: each send carries the transaction id derived from the event it answers, and leaves the
//!   outbox only after the homeserver accepted it; a repeat after a crash is deduplicated by the homeserver.
//!   A send the homeserver refuses for good (no permission, left the room) is logged and dropped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::attachment::{
    AttachmentConfig, AttachmentInfo, BaseAudioInfo, BaseFileInfo, BaseImageInfo, BaseVideoInfo,
};
use matrix_sdk::ruma::events::room::message::TextMessageEventContent;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, TransactionId, UInt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Counters, backoff};
use crate::matrix_errors::{is_permanent, retry_after};
use crate::plugin::FileSpec;
use crate::plugin::room_ops::{self, MemberChange, Outcome, RoomOpError, RoomSpec, StateSpec};
use crate::state::Database;
use crate::state::db::{OutboxEntry, now_unix};
use crate::telemetry::scrub::scrubbed;

/// Rooms served at the same time.
const MAX_IN_FLIGHT: usize = 4;

/// The `event_type` of an outbox entry that redacts: its content is `{"redacts": EVENT_ID, "reason": ...}`, and it
/// goes out as `PUT /rooms/{room}/redact/{event}/{txn}` (with the same transaction-id deduplication as a send).
pub const REDACTION: &str = "m.room.redaction";
/// Outbox entries for room operations that check before they act (`plugin::room_ops`); their content is the
/// operation. Repeated after a crash they find the room as asked and send nothing.
pub const MEMBER: &str = "maubot.member";
pub const STATE: &str = "maubot.state";
pub const POWER_LEVEL: &str = "maubot.power_level";
/// Queued under `#<alias>` as its room: the room has no id yet.
pub const CREATE_ROOM: &str = "maubot.create_room";
/// A file of the plugin's to upload and post ([`FileSpec`]), with the entry's transaction id.
pub const FILE: &str = "maubot.file";

/// How many sends the outbox holds that are not done yet, for the sync loop: it lets the sends of a batch go out
/// before it starts its next long poll (each answer would otherwise wake that poll at once, one sync per answer).
#[derive(Default)]
pub struct Outstanding {
    count: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Outstanding {
    pub fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::SeqCst);
    }

    fn done(&self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once nothing is outstanding.
    pub async fn idle(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            changed.await;
        }
    }
}

pub struct Sender {
    pub id: String,
    pub client: Client,
    pub db: Arc<Database>,
    pub counters: Arc<Counters>,
    pub outstanding: Arc<Outstanding>,
    /// The plugin's private directory: the only place files are posted from.
    pub private_dir: Arc<PathBuf>,
}

enum Sent {
    Done,
    /// A room operation found the room as asked: nothing was sent.
    Unchanged,
    /// Wait this long, then send again (rate limited).
    Limited(Duration),
    /// Refused for good.
    Refused(String),
    /// Failed this time; try again after a backoff.
    Failed(String),
}

#[derive(Default)]
struct Queues {
    rooms: BTreeMap<String, VecDeque<OutboxEntry>>,
    busy: HashSet<String>,
    not_before: HashMap<String, Instant>,
    attempts: HashMap<i64, u32>,
    /// The room served last: the next turn goes to the room after it.
    cursor: Option<String>,
    paused_until: Option<Instant>,
}

impl Queues {
    fn push(&mut self, entry: OutboxEntry) {
        let queue = self.rooms.entry(entry.room_id.clone()).or_default();
        if !queue.iter().any(|e| e.seq == entry.seq) {
            queue.push_back(entry);
        }
    }

    /// The next room whose turn it is and that may send now.
    fn next_room(&mut self, now: Instant) -> Option<String> {
        if self.paused_until.is_some_and(|until| until > now) {
            return None;
        }
        let ready = |room: &String, queue: &VecDeque<OutboxEntry>| {
            !queue.is_empty() && !self.busy.contains(room) && self.not_before.get(room).is_none_or(|at| *at <= now)
        };
        let after = self.cursor.clone();
        let later = self.rooms.iter().filter(|(room, _)| after.as_ref().is_none_or(|c| *room > c));
        let earlier = self.rooms.iter().filter(|(room, _)| after.as_ref().is_some_and(|c| *room <= c));
        let room = later.chain(earlier).find(|(room, queue)| ready(room, queue)).map(|(room, _)| room.clone())?;
        self.cursor = Some(room.clone());
        Some(room)
    }

    /// When something blocked may go again: the end of a rate-limit pause, or of a failed room's backoff (for
    /// rooms with a send waiting and none in flight). `None` when nothing waits on time. Expired waits are
    /// forgotten, so that a past instant never wakes the loop again and again.
    fn wake_at(&mut self, now: Instant) -> Option<Instant> {
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
        }
        self.not_before.retain(|_, at| *at > now);
        let waiting = |room: &String| self.rooms.get(room).is_some_and(|q| !q.is_empty()) && !self.busy.contains(room);
        let room_waits = self.not_before.iter().filter(|(room, _)| waiting(room)).map(|(_, at)| *at);
        room_waits.chain(self.paused_until).min()
    }

    fn is_empty(&self) -> bool {
        self.rooms.values().all(VecDeque::is_empty)
    }
}

impl Sender {
    /// Sends what `owed` holds (the outbox at start) and what arrives on `incoming`, until `stop` turns true;
    /// then finishes the sends in flight.
    pub async fn run(
        self,
        owed: Vec<OutboxEntry>,
        mut incoming: mpsc::UnboundedReceiver<OutboxEntry>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut queues = Queues::default();
        if !owed.is_empty() {
            tracing::info!(instance = %self.id, sends = owed.len(), "sending what was owed before the restart");
        }
        for entry in owed {
            queues.push(entry);
        }
        let mut in_flight: JoinSet<(OutboxEntry, Sent)> = JoinSet::new();
        let mut stopping = false;
        loop {
            let now = Instant::now();
            while !stopping && in_flight.len() < MAX_IN_FLIGHT {
                let Some(room) = queues.next_room(now) else { break };
                let entry = queues.rooms[&room].front().cloned().expect("a ready room has a send");
                queues.busy.insert(room);
                in_flight.spawn(send(self.client.clone(), self.private_dir.clone(), entry));
            }
            if stopping && in_flight.is_empty() {
                return;
            }
            let wake = queues.wake_at(now).filter(|_| !stopping);
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => match done {
                    Ok((entry, outcome)) => self.finished(&mut queues, entry, outcome).await,
                    Err(e) => tracing::error!(instance = %self.id, error = %e, "a send task failed"),
                },
                entry = incoming.recv(), if !stopping => match entry {
                    Some(entry) => queues.push(entry),
                    None => stopping = true,
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
                _ = crate::stopping(&mut stop), if !stopping => stopping = true,
            }
            if stopping && queues.is_empty() && in_flight.is_empty() {
                return;
            }
        }
    }

    async fn finished(&self, queues: &mut Queues, entry: OutboxEntry, outcome: Sent) {
        queues.busy.remove(&entry.room_id);
        let answers = entry.answers.as_deref().unwrap_or("-");
        match outcome {
            Sent::Done | Sent::Unchanged | Sent::Refused(_) => {
                if let Sent::Unchanged = &outcome {
                    tracing::info!(instance = %self.id, room_id = %entry.room_id, event_id = %answers, operation = %entry.event_type, "already as asked; nothing sent");
                } else if let Sent::Refused(why) = &outcome {
                    tracing::error!(
                        instance = %self.id,
                        room_id = %entry.room_id,
                        event_id = %answers,
                        error = %why,
                        "the homeserver refused the answer; not retrying"
                    );
                } else {
                    self.counters.commands_answered.fetch_add(1, Ordering::Relaxed);
                    let waited_ms = (now_unix() - entry.queued_at).max(0) * 1000;
                    tracing::info!(instance = %self.id, room_id = %entry.room_id, event_id = %answers, queued_ms = waited_ms, "answered");
                }
                if let Some(queue) = queues.rooms.get_mut(&entry.room_id) {
                    queue.retain(|e| e.seq != entry.seq);
                }
                queues.attempts.remove(&entry.seq);
                queues.not_before.remove(&entry.room_id);
                self.outstanding.done();
                if let Err(e) = self.db.remove_sent(&self.id, entry.seq).await {
                    // It stays owed: sent again after a restart, and deduplicated by its transaction id.
                    tracing::warn!(instance = %self.id, error = %e, "could not remove a sent answer from the outbox");
                } else if entry.event_type == FILE && matches!(outcome, Sent::Done) {
                    self.remove_posted_file(&entry);
                }
            }
            Sent::Limited(wait) => {
                tracing::info!(
                    instance = %self.id,
                    room_id = %entry.room_id,
                    wait_ms = wait.as_millis() as u64,
                    "the homeserver's message limit was reached; sending again after the wait it asked for"
                );
                let until = Instant::now() + wait;
                queues.paused_until = Some(queues.paused_until.map_or(until, |p| p.max(until)));
            }
            Sent::Failed(why) => {
                let attempts = queues.attempts.entry(entry.seq).or_default();
                *attempts += 1;
                let delay = backoff(*attempts);
                tracing::warn!(
                    instance = %self.id,
                    room_id = %entry.room_id,
                    error = %why,
                    retry_in_ms = delay.as_millis() as u64,
                    "sending an answer failed; trying again"
                );
                queues.not_before.insert(entry.room_id.clone(), Instant::now() + delay);
            }
        }
    }

    /// Deletes a posted file whose plugin asked for that (only after its entry left the outbox: a crash before
    /// leaves the file for the repeat).
    fn remove_posted_file(&self, entry: &OutboxEntry) {
        let Ok(spec) = serde_json::from_str::<FileSpec>(&entry.content) else { return };
        if !spec.remove {
            return;
        }
        if let Ok(path) = spec.resolve_inside(&self.private_dir)
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!(instance = %self.id, path = %path.display(), error = %e, "could not delete a posted file");
        }
    }
}

async fn send(client: Client, private_dir: Arc<PathBuf>, entry: OutboxEntry) -> (OutboxEntry, Sent) {
    let content = match serde_json::from_str::<serde_json::Value>(&entry.content) {
        Ok(content) => content,
        Err(e) => return (entry, Sent::Refused(format!("the queued content is not JSON: {e}"))),
    };
    let outcome = match entry.event_type.as_str() {
        MEMBER | STATE | POWER_LEVEL | CREATE_ROOM => room_operation(&client, &entry, content).await,
        _ => match joined_room(&client, &entry.room_id) {
            Err(why) => why,
            Ok(room) => {
                let txn_id = <&TransactionId>::from(entry.txn_id.as_str());
                let result = match entry.event_type.as_str() {
                    REDACTION => redact(&room, &content, txn_id).await,
                    FILE => match send_file(&room, &private_dir, content, txn_id).await {
                        Ok(result) => result,
                        Err(why) => return (entry, Sent::Refused(why)),
                    },
                    _ => room.send_raw(&entry.event_type, content).with_transaction_id(txn_id).await.map(|_| ()),
                };
                match result {
                    Ok(()) => Sent::Done,
                    Err(e) => failed(&e),
                }
            }
        },
    };
    (entry, outcome)
}

/// How a failed request goes on: after the wait the homeserver asked for, never (a 4xx), or after a backoff.
fn failed(e: &matrix_sdk::Error) -> Sent {
    match retry_after(e) {
        Some(wait) => Sent::Limited(wait),
        None if is_permanent(e) => Sent::Refused(scrubbed(&e.to_string())),
        None => Sent::Failed(scrubbed(&e.to_string())),
    }
}

/// The room to send to, if the bot is joined and the room synced (else how the send goes on).
fn joined_room(client: &Client, room_id: &str) -> Result<matrix_sdk::Room, Sent> {
    match OwnedRoomId::try_from(room_id).ok().and_then(|id| client.get_room(&id)) {
        None => Err(Sent::Refused("the bot is not in this room any more".into())),
        Some(room) if room.state() != matrix_sdk::RoomState::Joined => {
            Err(Sent::Refused("the bot is not in this room (it left, was removed, or was only invited)".into()))
        }
        // Joined moments ago and not synced since: the client does not know yet whether the room is encrypted
        // (it would send in the clear). The room's next sync tells; until then the send waits its turn again.
        Some(room) if !room.is_state_fully_synced() => {
            Err(Sent::Failed("the bot joined this room moments ago; waiting for its first sync before sending".into()))
        }
        Some(room) => Ok(room),
    }
}

/// Carries out a room operation that checks before it acts (`room_ops`): repeated after a crash, it finds the
/// room as asked and sends nothing.
async fn room_operation(client: &Client, entry: &OutboxEntry, content: serde_json::Value) -> Sent {
    let room =
        || OwnedRoomId::try_from(entry.room_id.as_str()).map_err(|_| RoomOpError::Invalid("not a room ID".into()));
    let user = |content: &serde_json::Value| {
        content["user_id"]
            .as_str()
            .and_then(|u| OwnedUserId::try_from(u).ok())
            .ok_or_else(|| RoomOpError::Invalid("the queued operation names no user".into()))
    };
    let invalid = |e: serde_json::Error| RoomOpError::Invalid(format!("the queued operation cannot be read: {e}"));
    let result = async {
        match entry.event_type.as_str() {
            MEMBER => {
                let change: MemberChange = serde_json::from_value(content["change"].clone()).map_err(invalid)?;
                let reason = content["reason"].as_str();
                room_ops::ensure_membership(client, &room()?, &user(&content)?, change, reason).await
            }
            STATE => {
                let state: StateSpec = serde_json::from_value(content).map_err(invalid)?;
                room_ops::ensure_state(client, &room()?, &state.event_type, &state.state_key, &state.content).await
            }
            POWER_LEVEL => {
                let level = content["level"].as_i64().ok_or_else(|| RoomOpError::Invalid("no level".into()))?;
                room_ops::ensure_power_level(client, &room()?, &user(&content)?, level).await
            }
            _ => {
                let spec: RoomSpec = serde_json::from_value(content).map_err(invalid)?;
                let (room_id, outcome) = room_ops::ensure_room(client, &spec).await?;
                tracing::info!(alias = %spec.alias, room_id = %room_id, "the room exists");
                Ok(outcome)
            }
        }
    }
    .await;
    match result {
        Ok(Outcome::Changed) => Sent::Done,
        Ok(Outcome::AlreadySo) => Sent::Unchanged,
        Err(RoomOpError::Invalid(why)) => Sent::Refused(why),
        Err(RoomOpError::Matrix(e)) => failed(&e),
    }
}

/// Uploads a file of the plugin's and posts it. The outer error: the request is wrong (refused for good).
async fn send_file(
    room: &matrix_sdk::Room,
    private_dir: &Path,
    content: serde_json::Value,
    txn_id: &TransactionId,
) -> Result<matrix_sdk::Result<()>, String> {
    let spec: FileSpec = serde_json::from_value(content).map_err(|e| format!("the queued file cannot be read: {e}"))?;
    spec.check()?;
    let path = spec.resolve_inside(private_dir)?;
    let data = tokio::fs::read(&path).await.map_err(|e| format!("{}: {e}", path.display()))?;
    let mimetype: mime::Mime = spec.mimetype.parse().map_err(|_| "not a MIME type".to_owned())?;
    let size = UInt::new(data.len() as u64);
    let (width, height) = (spec.width.map(UInt::from), spec.height.map(UInt::from));
    let duration = spec.duration_ms.map(Duration::from_millis);
    let info = match mimetype.type_() {
        mime::IMAGE => AttachmentInfo::Image(BaseImageInfo { width, height, size, ..Default::default() }),
        mime::VIDEO => AttachmentInfo::Video(BaseVideoInfo { duration, width, height, size, ..Default::default() }),
        mime::AUDIO => AttachmentInfo::Audio(BaseAudioInfo { duration, size, ..Default::default() }),
        _ => AttachmentInfo::File(BaseFileInfo { size }),
    };
    let caption = spec.caption.clone().map(TextMessageEventContent::plain);
    let config = AttachmentConfig::new().txn_id(txn_id.to_owned()).info(info).caption(caption);
    Ok(room.send_attachment(spec.shown_name(), &mimetype, data, config).await.map(|_| ()))
}

async fn redact(
    room: &matrix_sdk::Room,
    content: &serde_json::Value,
    txn_id: &TransactionId,
) -> matrix_sdk::Result<()> {
    let Some(event_id) = content["redacts"].as_str().and_then(|e| OwnedEventId::try_from(e).ok()) else {
        // Written by the host itself: only a bug gets here. Nothing to repeat.
        tracing::error!(room_id = %room.room_id(), "a queued redaction names no event; dropped");
        return Ok(());
    };
    let reason = content["reason"].as_str();
    room.redact(&event_id, reason, Some(txn_id.to_owned())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, room: &str) -> OutboxEntry {
        OutboxEntry {
            seq,
            room_id: room.into(),
            txn_id: format!("t{seq}"),
            event_type: "m.room.message".into(),
            content: "{}".into(),
            answers: None,
            queued_at: 0,
        }
    }

    #[test]
    fn rooms_take_turns_and_one_room_sends_one_at_a_time() {
        let mut queues = Queues::default();
        for seq in 0..5 {
            queues.push(entry(seq, "!flood:x"));
        }
        queues.push(entry(9, "!quiet:x"));
        let now = Instant::now();
        let first = queues.next_room(now).unwrap();
        queues.busy.insert(first.clone());
        let second = queues.next_room(now).unwrap();
        assert_ne!(first, second, "the quiet room gets the second turn");
        queues.busy.insert(second);
        assert_eq!(queues.next_room(now), None, "each room has a send in flight");
        queues.busy.clear();
        queues.rooms.get_mut("!quiet:x").unwrap().clear();
        assert_eq!(queues.next_room(now).as_deref(), Some("!flood:x"));
        queues.paused_until = Some(now + Duration::from_secs(5));
        assert_eq!(queues.next_room(now), None, "paused by a rate limit");
        assert_eq!(queues.wake_at(now), queues.paused_until);
        // Once the pause is over, it wakes nothing any more (a past instant would wake the loop without end).
        let later = now + Duration::from_secs(6);
        assert_eq!(queues.wake_at(later), None);
        assert!(queues.paused_until.is_none());
        queues.not_before.insert("!flood:x".into(), later + Duration::from_secs(1));
        queues.busy.insert("!flood:x".into());
        assert_eq!(queues.wake_at(later), None, "a room with a send in flight waits for it, not for the clock");
    }
}

//! The sender: carries out the sends the outbox holds, beside the sync loop.
//!
//! - Fair: rooms take turns (round robin), so a flood of commands in one room cannot starve the others.
//! - Concurrent where order does not matter: answers to different events are relations to their own events, so
//!   several go out at once, in one room and across rooms; the actions answering one event go out one after the
//!   other and in order, as do a plugin's own sends to one room and the room operations of one room (they read
//!   the room before they change it).
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

/// Sends in flight at once, in all rooms together and in one room. Under load the homeserver is what is slow
/// (Synapse took 150-250 ms per PUT with 8 clients sending at once): answers waiting here for a turn would only
/// add to that (docs/benchmark.md, "Where a round trip goes under load"). A room keeps half, so others get turns.
const MAX_IN_FLIGHT: usize = 64;
const MAX_IN_FLIGHT_PER_ROOM: usize = 32;
/// Files in flight at once: each is read whole into memory to be uploaded.
const MAX_FILES_IN_FLIGHT: usize = 2;

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
    /// The entries in flight (still in their room's queue until done), by room.
    busy: HashMap<String, HashSet<i64>>,
    /// Sends that failed wait until then (by `seq`): one send's backoff holds up only what must follow it.
    not_before: HashMap<i64, Instant>,
    attempts: HashMap<i64, u32>,
    /// The room served last: the next turn goes to the room after it.
    cursor: Option<String>,
    /// How many of the entries in flight post a file.
    files_in_flight: usize,
    paused_until: Option<Instant>,
}

impl Queues {
    fn push(&mut self, entry: OutboxEntry) {
        let queue = self.rooms.entry(entry.room_id.clone()).or_default();
        if !queue.iter().any(|e| e.seq == entry.seq) {
            queue.push_back(entry);
        }
    }

    /// The next send whose room's turn it is and that may go now (marked in flight).
    fn next_send(&mut self, now: Instant) -> Option<OutboxEntry> {
        if self.paused_until.is_some_and(|until| until > now) {
            return None;
        }
        let after = self.cursor.clone();
        let later = self.rooms.keys().filter(|room| after.as_ref().is_none_or(|c| *room > c));
        let earlier = self.rooms.keys().filter(|room| after.as_ref().is_some_and(|c| *room <= c));
        let (room, index) = later.chain(earlier).find_map(|room| Some((room.clone(), self.ready_in(room, now)?)))?;
        let entry = self.rooms[&room][index].clone();
        self.busy.entry(room.clone()).or_default().insert(entry.seq);
        self.files_in_flight += usize::from(entry.event_type == FILE);
        self.cursor = Some(room);
        Some(entry)
    }

    /// Where in `room`'s queue the first send is that may go now: not in flight, not backing off, with no
    /// earlier send of the same room it must follow, the room below its share of sends in flight, and, for a
    /// file, fewer than `MAX_FILES_IN_FLIGHT` files in flight.
    fn ready_in(&self, room: &str, now: Instant) -> Option<usize> {
        let busy = self.busy.get(room);
        if busy.is_some_and(|b| b.len() >= MAX_IN_FLIGHT_PER_ROOM) {
            return None;
        }
        // A send must wait for an earlier one of its room when both answer the same event (or neither answers
        // one: a plugin's own sends), or when both are room operations. One pass: what the entries before this
        // one answer, and whether one of them is a room operation, is all that asks of them.
        let mut answered_before: HashSet<Option<&str>> = HashSet::new();
        let mut room_operation_before = false;
        for (i, entry) in self.rooms[room].iter().enumerate() {
            let follows = answered_before.contains(&entry.answers.as_deref())
                || (room_operation_before && is_room_operation(entry));
            if !follows
                && !busy.is_some_and(|b| b.contains(&entry.seq))
                && self.not_before.get(&entry.seq).is_none_or(|at| *at <= now)
                && (entry.event_type != FILE || self.files_in_flight < MAX_FILES_IN_FLIGHT)
            {
                return Some(i);
            }
            answered_before.insert(entry.answers.as_deref());
            room_operation_before |= is_room_operation(entry);
        }
        None
    }

    /// Forgets a send that is done (sent, unchanged or refused); a room whose queue is empty is dropped.
    fn finish(&mut self, entry: &OutboxEntry) {
        if let Some(queue) = self.rooms.get_mut(&entry.room_id) {
            queue.retain(|e| e.seq != entry.seq);
            if queue.is_empty() {
                self.rooms.remove(&entry.room_id);
            }
        }
        self.attempts.remove(&entry.seq);
        self.not_before.remove(&entry.seq);
    }

    /// Marks a send no longer in flight.
    fn done_with(&mut self, entry: &OutboxEntry) {
        if let Some(busy) = self.busy.get_mut(&entry.room_id) {
            if busy.remove(&entry.seq) && entry.event_type == FILE {
                self.files_in_flight -= 1;
            }
            if busy.is_empty() {
                self.busy.remove(&entry.room_id);
            }
        }
    }

    /// When something blocked may go again: the end of a rate-limit pause, or of a failed send's backoff.
    /// `None` when nothing waits on time. Expired waits are forgotten, so that a past instant never wakes the
    /// loop again and again.
    fn wake_at(&mut self, now: Instant) -> Option<Instant> {
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
        }
        self.not_before.retain(|_, at| *at > now);
        self.not_before.values().copied().chain(self.paused_until).min()
    }

    fn is_empty(&self) -> bool {
        self.rooms.values().all(VecDeque::is_empty)
    }
}

/// An entry carried out by `room_ops` (it reads the room before it changes it), not sent as an event.
fn is_room_operation(entry: &OutboxEntry) -> bool {
    matches!(entry.event_type.as_str(), MEMBER | STATE | POWER_LEVEL | CREATE_ROOM)
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
        let mut spawned = HashMap::new();
        let mut stopping = false;
        loop {
            let now = Instant::now();
            while !stopping && in_flight.len() < MAX_IN_FLIGHT {
                let Some(entry) = queues.next_send(now) else { break };
                let task = in_flight.spawn(send(self.client.clone(), self.private_dir.clone(), entry.clone()));
                spawned.insert(task.id(), entry);
            }
            if stopping && in_flight.is_empty() {
                return;
            }
            let wake = queues.wake_at(now).filter(|_| !stopping);
            tokio::select! {
                Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => match done {
                    Ok((task, (entry, outcome))) => {
                        spawned.remove(&task);
                        self.finished(&mut queues, entry, outcome).await;
                    }
                    Err(e) => {
                        tracing::error!(instance = %self.id, error = %e, "a send task failed; trying again");
                        if let Some(entry) = spawned.remove(&e.id()) {
                            self.finished(&mut queues, entry, Sent::Failed(e.to_string())).await;
                        }
                    }
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
        queues.done_with(&entry);
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
                queues.finish(&entry);
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
                queues.not_before.insert(entry.seq, Instant::now() + delay);
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
    let outcome = if is_room_operation(&entry) {
        room_operation(&client, &entry, content).await
    } else {
        match joined_room(&client, &entry.room_id) {
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
        }
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

    fn answering(seq: i64, room: &str, event: &str) -> OutboxEntry {
        OutboxEntry { answers: Some(event.into()), ..entry(seq, room) }
    }

    #[test]
    fn rooms_take_turns_answers_to_different_events_go_out_together_and_one_events_in_order() {
        let mut queues = Queues::default();
        // Two actions answering $a, one answering $b, then a plugin's own send, in the busy room.
        queues.push(answering(0, "!flood:x", "$a"));
        queues.push(answering(1, "!flood:x", "$a"));
        queues.push(answering(2, "!flood:x", "$b"));
        queues.push(entry(3, "!flood:x"));
        queues.push(answering(9, "!quiet:x", "$q"));
        let now = Instant::now();
        let seqs =
            |queues: &mut Queues| std::iter::from_fn(|| queues.next_send(now).map(|e| e.seq)).collect::<Vec<_>>();
        let first_round = seqs(&mut queues);
        assert_eq!(first_round, vec![0, 9, 2, 3], "rooms alternate; $a's second action waits for its first");
        let done = queues.rooms["!flood:x"][0].clone();
        queues.done_with(&done);
        queues.rooms.get_mut("!flood:x").unwrap().pop_front();
        assert_eq!(queues.next_send(now).map(|e| e.seq), Some(1), "then $a's second action goes");
        assert_eq!(queues.next_send(now), None, "everything else is in flight");

        // Room operations of one room go one at a time even when they answer different events.
        let mut queues = Queues::default();
        queues.push(OutboxEntry { event_type: POWER_LEVEL.into(), ..answering(0, "!r:x", "$a") });
        queues.push(OutboxEntry { event_type: STATE.into(), ..answering(1, "!r:x", "$b") });
        queues.push(answering(2, "!r:x", "$c"));
        assert_eq!(seqs(&mut queues), vec![0, 2]);

        // A room has at most its share in flight.
        let mut queues = Queues::default();
        for seq in 0..2 * MAX_IN_FLIGHT_PER_ROOM as i64 {
            queues.push(answering(seq, "!r:x", &format!("${seq}")));
        }
        assert_eq!(seqs(&mut queues).len(), MAX_IN_FLIGHT_PER_ROOM);
    }

    #[test]
    fn at_most_two_files_are_in_flight_and_what_follows_a_waiting_file_waits_with_it() {
        let mut queues = Queues::default();
        let file = |seq, room, event| OutboxEntry { event_type: FILE.into(), ..answering(seq, room, event) };
        queues.push(file(0, "!a:x", "$a"));
        queues.push(file(1, "!a:x", "$b"));
        queues.push(file(2, "!b:x", "$c"));
        queues.push(answering(3, "!b:x", "$c"));
        queues.push(answering(4, "!b:x", "$d"));
        let now = Instant::now();
        let mut sent = std::iter::from_fn(|| queues.next_send(now)).collect::<Vec<_>>();
        assert_eq!(
            sent.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![0, 2, 4],
            "two files, then only what answers another event: $c's text follows its file"
        );
        let done = sent.remove(0);
        queues.done_with(&done);
        queues.finish(&done);
        assert_eq!(queues.next_send(now).map(|e| e.seq), Some(1), "a file done lets the next one go");
        assert_eq!(queues.next_send(now), None);
        let file_in_b = sent.remove(0);
        queues.done_with(&file_in_b);
        queues.finish(&file_in_b);
        assert_eq!(queues.next_send(now).map(|e| e.seq), Some(3));
        assert_eq!(queues.files_in_flight, 1);
    }

    #[test]
    fn a_room_whose_sends_are_all_done_is_forgotten() {
        let mut queues = Queues::default();
        queues.push(answering(0, "!once:x", "$a"));
        queues.push(answering(1, "!busy:x", "$b"));
        queues.push(answering(2, "!busy:x", "$c"));
        let now = Instant::now();
        let sent = std::iter::from_fn(|| queues.next_send(now)).collect::<Vec<_>>();
        assert_eq!(sent.len(), 3);
        for entry in &sent[..2] {
            queues.done_with(entry);
            queues.finish(entry);
        }
        assert_eq!(queues.rooms.keys().collect::<Vec<_>>(), ["!busy:x"], "the room with nothing left is dropped");
        assert_eq!(queues.busy.keys().collect::<Vec<_>>(), ["!busy:x"]);
        queues.done_with(&sent[2]);
        queues.finish(&sent[2]);
        assert!(queues.rooms.is_empty() && queues.busy.is_empty() && queues.is_empty());
    }

    #[test]
    fn a_rate_limit_pauses_every_room_and_a_failed_send_backs_off_alone() {
        let mut queues = Queues::default();
        queues.push(answering(0, "!flood:x", "$a"));
        let now = Instant::now();
        queues.paused_until = Some(now + Duration::from_secs(5));
        assert_eq!(queues.next_send(now), None, "paused by a rate limit");
        assert_eq!(queues.wake_at(now), queues.paused_until);
        // Once the pause is over, it wakes nothing any more (a past instant would wake the loop without end).
        let later = now + Duration::from_secs(6);
        assert_eq!(queues.wake_at(later), None);
        assert!(queues.paused_until.is_none());
        // The first send failed and backs off; an answer to another event goes meanwhile, and its success does
        // not end the other's wait.
        queues.not_before.insert(0, later + Duration::from_secs(1));
        queues.push(answering(1, "!flood:x", "$b"));
        assert_eq!(queues.next_send(later).map(|e| e.seq), Some(1), "one send's backoff holds up no other");
        let other = queues.rooms["!flood:x"][1].clone();
        queues.done_with(&other);
        queues.rooms.get_mut("!flood:x").unwrap().pop_back();
        assert_eq!(queues.next_send(later), None, "the failed send still backs off");
        assert_eq!(queues.wake_at(later), Some(later + Duration::from_secs(1)));
        let sent = queues.next_send(later + Duration::from_secs(2)).unwrap();
        assert_eq!(sent.seq, 0);
        assert_eq!(queues.wake_at(later + Duration::from_secs(2)), None, "nothing waits on the clock any more");
    }
}

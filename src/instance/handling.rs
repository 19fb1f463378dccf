//! Turning a sync response into work: invites answered, limited timelines filled, each new event (`incoming.rs`)
//! the plugin subscribed to handed to it once, and its answers queued in the outbox together with the mark that
//! the event was handled. No answer is sent here: the sync loop never waits on the homeserver's message limits.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use matrix_sdk::Room;
use matrix_sdk::deserialized_responses::{RawAnySyncOrStrippedState, TimelineEvent};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::events::StateEventType;
use matrix_sdk::ruma::events::relation::Thread;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::{AddMentions, ForwardThread, ReplacementMetadata, ReplyMetadata};
use matrix_sdk::ruma::events::{AnySyncStateEvent, AnySyncTimelineEvent, SyncStateEvent};
use matrix_sdk::ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedUserId, RoomId, UInt, UserId};

use super::incoming::{Incoming, age_of, incoming};
use super::{HandleError, Run, backoff, keyed_transaction_id, outbox, transaction_id};
use crate::plugin::{Action, Event, EventKind, EventType, JobOrigin, Message, PluginError, Relation, job};
use crate::state::db::{NewJob, OutboxEntry, PendingEvent, now_unix};
use crate::telemetry::scrub::scrubbed;

/// Most events fetched to fill one gap after downtime.
const MAX_BACKFILL_EVENTS: usize = 2000;

impl Run<'_> {
    pub(super) async fn handle(
        &self,
        response: matrix_sdk::sync::SyncResponse,
        since: Option<&str>,
    ) -> Result<(), HandleError> {
        let me = self.instance;
        for room_id in response.rooms.invited.keys() {
            self.answer_invite(room_id).await?;
        }
        for (room_id, update) in response.rooms.joined {
            if !me.subscribed(&room_id) {
                continue;
            }
            let Some(room) = me.client.get_room(&room_id) else {
                continue;
            };
            let mut events = update.timeline.events;
            if since.is_none() {
                // No position at all (never synced): everything is history, the bot's join included.
                self.joins_unsynced.lock().unwrap_or_else(|p| p.into_inner()).remove(&room_id);
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
        let oldest_wanted = SystemTime::now() - self.instance.max_command_age;
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
        tracing::debug!(instance = %self.instance.id, room_id = %room.room_id(), events = collected.len(), "filled a sync gap");
        collected.reverse();
        Ok(collected)
    }

    async fn handle_timeline(&self, room: &Room, events: &[TimelineEvent]) -> Result<(), HandleError> {
        let me = self.instance;
        let own_user = me.own_user();
        // What was said before the bot joined is history, not commands.
        let join = events.iter().rposition(|e| is_join_of(e, &own_user));
        if join.is_some() {
            self.joins_unsynced.lock().unwrap_or_else(|p| p.into_inner()).remove(room.room_id());
        }
        // The invite the bot joined on is told once the join is synced: only then does the host know the room
        // (its encryption above all), so that what a plugin says about the invite goes out as the room needs.
        if let Some(join) = join
            && me.plugin.subscriptions().contains(EventType::Invite)
            && let Some(invite) = self.invite_joined(room, &events[..=join]).await
        {
            self.deliver(room, invite).await?;
        }
        let start = join.map_or(0, |i| i + 1);
        for event in &events[start..] {
            me.counters.events_handled.fetch_add(1, Ordering::Relaxed);
            // Each event is progress: a plugin waiting on its rate limiter is slow, not hung.
            me.update(|s| s.last_progress = Instant::now());
            self.handle_event(room, event).await?;
        }
        Ok(())
    }

    /// The invite the bot's join (the last of `events`) replaced: found among the events before it, or fetched.
    async fn invite_joined(&self, room: &Room, events: &[TimelineEvent]) -> Option<Event> {
        let (join, before) = events.split_last()?;
        let field = |path: &str| join.raw().get_field::<serde_json::Value>(path).ok().flatten();
        let replaced = field("unsigned")
            .and_then(|u| u.get("replaces_state").cloned())
            .or_else(|| field("replaces_state"))
            .and_then(|v| OwnedEventId::try_from(v.as_str()?).ok())?;
        let fetched;
        let invite = match before.iter().find(|e| e.event_id().as_deref() == Some(&*replaced)) {
            Some(found) => found,
            None => {
                fetched = room.event(&replaced, None).await.ok()?;
                &fetched
            }
        };
        let me = self.instance;
        match incoming(room.room_id(), invite, &|user| me.is_bot(user)) {
            Incoming::Event(Event { kind: EventKind::Membership(m), event_id, sender, timestamp_ms, age, .. })
                if m.membership == "invite" =>
            {
                Some(Event {
                    room_id: room.room_id().to_owned(),
                    event_id,
                    sender,
                    timestamp_ms,
                    age,
                    encrypted: false,
                    kind: EventKind::Invite { joined: true },
                })
            }
            _ => None,
        }
    }

    /// One timeline event (decrypted where its key was at hand).
    pub(super) async fn handle_event(&self, room: &Room, event: &TimelineEvent) -> Result<(), HandleError> {
        let me = self.instance;
        match incoming(room.room_id(), event, &|user| me.is_bot(user)) {
            Incoming::Event(event) => self.deliver(room, event).await,
            Incoming::Undecryptable { event_id, sent } => self.wait_for_key(room, event, event_id.as_str(), sent).await,
            Incoming::Nothing => Ok(()),
        }
    }

    /// An encrypted event whose room key has not arrived (yet): kept until it does, if it is young enough to
    /// be a command.
    async fn wait_for_key(
        &self,
        room: &Room,
        event: &TimelineEvent,
        event_id: &str,
        sent: matrix_sdk::ruma::MilliSecondsSinceUnixEpoch,
    ) -> Result<(), HandleError> {
        let me = self.instance;
        if age_of(sent) > me.max_command_age || me.db.is_handled(&me.id, event_id).await? {
            return Ok(());
        }
        me.counters.decryption_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            instance = %me.id,
            room_id = %room.room_id(),
            event_id = %event_id,
            "cannot decrypt the event yet (its room key has not reached this device); waiting for the key"
        );
        let pending = PendingEvent {
            event_id: event_id.to_owned(),
            room_id: room.room_id().to_string(),
            event: event.raw().json().get().to_owned(),
            received_at: now_unix(),
        };
        me.db.add_pending(&me.id, &pending).await?;
        let dropped = {
            let mut waiting = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if !waiting.iter().any(|p| p.event_id == pending.event_id) {
                waiting.push(pending);
            }
            // Anyone in a room can send undecryptable events: the wait list is bounded, oldest out first.
            (waiting.len() > super::MAX_PENDING).then(|| waiting.remove(0))
        };
        if let Some(dropped) = dropped {
            tracing::warn!(instance = %me.id, event_id = %dropped.event_id, "too many events wait for their room key; giving up the oldest");
            me.db.remove_pending(&me.id, &dropped.event_id).await?;
        }
        Ok(())
    }

    /// Hands an event to the plugin, if it subscribed to its kind and has not handled it yet, and queues its
    /// answers together with the mark that it was handled.
    async fn deliver(&self, room: &Room, event: Event) -> Result<(), HandleError> {
        let me = self.instance;
        let kind = event.kind.event_type();
        if !me.plugin.subscriptions().contains(kind) {
            return Ok(());
        }
        // Messages, edits and reactions are commands: too old, and they are history; membership and state
        // changes are facts a plugin may need however late they arrive.
        let is_command = matches!(kind, EventType::Message | EventType::Notice | EventType::Edit | EventType::Reaction);
        if is_command && event.age > me.max_command_age {
            tracing::debug!(instance = %me.id, event_id = %event.event_id, age_s = event.age.as_secs(), "too old to answer");
            return Ok(());
        }
        if me.db.is_handled(&me.id, event.event_id.as_str()).await? {
            return Ok(());
        }
        let actions = me.plugin.on_event(&me.context, &event).await?;
        if actions.is_empty() {
            return Ok(());
        }
        if is_command && !self.sender_may_command(&event.sender) {
            tracing::info!(
                instance = %me.id,
                room_id = %room.room_id(),
                event_id = %event.event_id,
                sender = %event.sender,
                "not answering: the sender is over the per-sender command limit"
            );
            me.db.mark_handled(&me.id, event.event_id.as_str(), Vec::new(), Vec::new()).await?;
            return Ok(());
        }
        let origin = origin_of(&event);
        let derived = |index| transaction_id(event.event_id.as_str(), index).to_string();
        let (mut sends, mut jobs) = (Vec::new(), Vec::new());
        for (index, action) in actions.into_iter().enumerate() {
            match action {
                Action::Job { key, payload } => jobs.extend(to_new_job(&me.id, Some(&origin), key, &payload)),
                action => sends.push(
                    to_send(Some(&origin), &derived, index, action, me.plugin.changes_rooms())
                        .map_err(PluginError::permanent)?,
                ),
            }
        }
        let (queued, accepted) = me.db.mark_handled(&me.id, event.event_id.as_str(), sends, jobs).await?;
        self.outstanding.add(queued.len());
        for send in queued {
            let _ = self.outbox.send(send);
        }
        for job in accepted {
            let _ = self.jobs.send(job);
        }
        Ok(())
    }

    /// Counts a command against its sender's limit (`sender_limit` per minute); whether it may be answered.
    fn sender_may_command(&self, sender: &OwnedUserId) -> bool {
        let Some(limit) = self.instance.sender_limit else { return true };
        let mut recent = self.recent_commands.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        recent.retain(|_, times| {
            while times.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = recent.entry(sender.clone()).or_default();
        if times.len() >= limit as usize {
            return false;
        }
        times.push_back(now);
        true
    }

    /// Invites that arrived while the bot was down.
    pub(super) async fn answer_pending_invites(&self) -> Result<(), HandleError> {
        for room in self.instance.client.invited_rooms() {
            self.answer_invite(room.room_id()).await?;
        }
        Ok(())
    }

    /// Joins on an invite from a user the plugin accepts (in a room the instance may use), declines others,
    /// and tells a plugin that subscribed to invites of a declined one (of a joined one once the join is
    /// synced). A join that keeps failing is tried again at the next start (the invite is still there).
    async fn answer_invite(&self, room_id: &RoomId) -> Result<(), HandleError> {
        let me = self.instance;
        let Some(room) = me.client.get_room(room_id) else {
            return Ok(());
        };
        let inviter =
            room.invite_details().await.ok().and_then(|details| details.inviter).map(|m| m.user_id().to_owned());
        let allowed =
            inviter.as_ref().is_some_and(|u| me.plugin.accepts_invite_from(u.as_str())) && me.subscribed(room_id);
        let shown = inviter.as_ref().map(|u| u.to_string()).unwrap_or_else(|| "unknown".into());
        if allowed {
            for attempt in 1..=3u32 {
                match me.client.join_room_by_id(room_id).await {
                    Ok(_) => {
                        // The plugin hears of it when the join is synced (`handle_timeline`); until then the
                        // syncs carry the bot's own events, the join among them.
                        self.joins_unsynced.lock().unwrap_or_else(|p| p.into_inner()).insert(room_id.to_owned());
                        tracing::info!(instance = %me.id, room_id = %room_id, inviter = %shown, "joined on invite");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(instance = %me.id, room_id = %room_id, error = %scrubbed(&e.to_string()), attempt, "joining failed");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
            }
            return Ok(());
        }
        // Told before the invite is declined: should the plugin fail, the invite is still there after the restart.
        if let Some(inviter) = inviter {
            let (event_id, sent) = invite_event(&room, &me.own_user()).await;
            let sent = sent.unwrap_or_else(MilliSecondsSinceUnixEpoch::now);
            let event = Event {
                room_id: room_id.to_owned(),
                event_id: event_id.unwrap_or_else(|| made_invite_id(room_id, sent)),
                sender: inviter,
                timestamp_ms: sent.0.into(),
                age: age_of(sent),
                encrypted: false,
                kind: EventKind::Invite { joined: false },
            };
            self.deliver(&room, event).await?;
        }
        tracing::info!(instance = %me.id, room_id = %room_id, inviter = %shown, "declining an invite from a user not in allow_invites_from");
        if let Err(e) = room.leave().await {
            tracing::warn!(instance = %me.id, room_id = %room_id, error = %scrubbed(&e.to_string()), "declining the invite failed");
        }
        Ok(())
    }
}

/// An id for an invite the homeserver sent without one: `$~invite~<room id without its sigil>~<milliseconds>`.
fn made_invite_id(room_id: &RoomId, sent: MilliSecondsSinceUnixEpoch) -> OwnedEventId {
    let room = room_id.as_str().trim_start_matches('!');
    OwnedEventId::try_from(format!("$~invite~{room}~{}", sent.0)).expect("a room id makes an event id")
}

/// The id and time of the invite of `own` to `room`, where the homeserver's invite state has them.
async fn invite_event(room: &Room, own: &UserId) -> (Option<OwnedEventId>, Option<MilliSecondsSinceUnixEpoch>) {
    let raw = match room.get_state_event(StateEventType::RoomMember, own.as_str()).await {
        Ok(Some(RawAnySyncOrStrippedState::Stripped(raw))) => Some(raw.cast::<serde_json::Value>()),
        Ok(Some(RawAnySyncOrStrippedState::Sync(raw))) => Some(raw.cast::<serde_json::Value>()),
        _ => None,
    };
    let field = |name: &str| raw.as_ref().and_then(|r| r.get_field::<serde_json::Value>(name).ok().flatten());
    let event_id = field("event_id").and_then(|v| OwnedEventId::try_from(v.as_str()?).ok());
    let sent = field("origin_server_ts").and_then(|v| serde_json::from_value(v).ok());
    (event_id, sent)
}

/// The event an action answers: an event being handled, or the one a job was accepted for.
pub(super) fn origin_of(event: &Event) -> JobOrigin {
    let thread = match &event.kind {
        EventKind::Message(Message { relation: Some(Relation::Thread { root, .. }), .. }) => Some(root.clone()),
        _ => None,
    };
    JobOrigin { room_id: event.room_id.clone(), event_id: event.event_id.clone(), sender: event.sender.clone(), thread }
}

/// The outbox entry for the `index`-th action answering `origin` (an event; for a job, the event it was
/// accepted for, if any); `derived` makes the action's transaction id from its index. Jobs are not sends. A room
/// change is refused unless the plugin `changes_rooms` ([`crate::plugin::Plugin::changes_rooms`]).
pub(super) fn to_send(
    origin: Option<&JobOrigin>,
    derived: &dyn Fn(usize) -> String,
    index: usize,
    action: Action,
    changes_rooms: bool,
) -> Result<OutboxEntry, String> {
    let room_change = matches!(
        action,
        Action::Member { .. } | Action::SetState { .. } | Action::SetPowerLevel { .. } | Action::CreateRoom(_)
    );
    if room_change && !changes_rooms {
        return Err("a room change (membership, state, power level or a new room) from a plugin type that says it \
                    makes none (Plugin::changes_rooms is false, so its syncs leave out the bot's own events and \
                    matrix-sdk would not see the change): refused; the plugin type has to say it changes rooms (an \
                    `exec` program: drop `\"changes_rooms\":false` from its `ready`)"
            .to_owned());
    }
    let here = || {
        origin.map(|o| o.room_id.to_string()).ok_or_else(|| {
            "a reply, reaction, edit or redaction needs an event to answer; this job was accepted outside one: \
             use a send with a room"
                .to_owned()
        })
    };
    let (room_id, txn_id, event_type, content) = match action {
        Action::Reply(content) => {
            let room = here()?;
            let origin = origin.expect("checked by here()");
            // A reply to a message in a thread stays in the thread.
            let thread = origin.thread.as_ref().map(|root| Thread::plain(root.clone(), origin.event_id.clone()));
            let content = content.make_reply_to(
                ReplyMetadata::new(&origin.event_id, &origin.sender, thread.as_ref()),
                ForwardThread::Yes,
                AddMentions::No,
            );
            (room, derived(index), "m.room.message", json(&content))
        }
        Action::Send { room_id, content, key, link_previews } => {
            let txn_id = key.map(|k| keyed_transaction_id(&k).to_string()).unwrap_or_else(|| derived(index));
            let mut content = serde_json::to_value(&content).expect("event content serializes");
            if !link_previews {
                crate::plugin::without_link_previews(&mut content);
            }
            (room_id.to_string(), txn_id, "m.room.message", content.to_string())
        }
        Action::React { to, reaction } => {
            let content = matrix_sdk::ruma::events::reaction::ReactionEventContent::new(
                matrix_sdk::ruma::events::relation::Annotation::new(to, reaction),
            );
            (here()?, derived(index), "m.reaction", json(&content))
        }
        Action::Edit { to, content } => {
            let content = content.make_replacement(ReplacementMetadata::new(to, None));
            (here()?, derived(index), "m.room.message", json(&content))
        }
        Action::Redact { event, reason } => {
            let content = serde_json::json!({"redacts": event, "reason": reason});
            (here()?, derived(index), outbox::REDACTION, content.to_string())
        }
        Action::Member { room_id, user_id, change, reason } => {
            let content = serde_json::json!({"user_id": user_id, "change": change, "reason": reason});
            (room_id.to_string(), derived(index), outbox::MEMBER, content.to_string())
        }
        Action::SetState { room_id, state } => (room_id.to_string(), derived(index), outbox::STATE, json(&state)),
        Action::SetPowerLevel { room_id, user_id, level } => {
            let content = serde_json::json!({"user_id": user_id, "level": level});
            (room_id.to_string(), derived(index), outbox::POWER_LEVEL, content.to_string())
        }
        // Queued under its alias: it has no room id yet.
        Action::CreateRoom(spec) => (format!("#{}", spec.alias), derived(index), outbox::CREATE_ROOM, json(&spec)),
        Action::SendFile { room_id, file, key } => {
            let txn_id = key.map(|k| keyed_transaction_id(&k).to_string()).unwrap_or_else(|| derived(index));
            (room_id.to_string(), txn_id, outbox::FILE, json(&file))
        }
        Action::Job { .. } => unreachable!("jobs are kept, not sent"),
    };
    Ok(OutboxEntry {
        seq: 0,
        room_id,
        txn_id,
        event_type: event_type.into(),
        content,
        answers: origin.map(|o| o.event_id.to_string()),
        queued_at: 0,
    })
}

/// The job an action accepts, for the database (None, logged, when its key or payload cannot be kept).
pub(super) fn to_new_job(
    instance: &str,
    origin: Option<&JobOrigin>,
    key: String,
    payload: &serde_json::Value,
) -> Option<NewJob> {
    if let Err(e) = job::check(&key, payload) {
        tracing::warn!(instance = %instance, key = %scrubbed(&key), error = %e, "the plugin's job was not accepted");
        return None;
    }
    Some(NewJob { key, payload: payload.to_string(), origin: origin.map(json) })
}

/// The outbox entry for a send a plugin made on its own.
pub(super) fn unprompted_send(
    room_id: &matrix_sdk::ruma::RoomId,
    content: &matrix_sdk::ruma::events::room::message::RoomMessageEventContent,
    key: &str,
) -> OutboxEntry {
    OutboxEntry {
        seq: 0,
        room_id: room_id.to_string(),
        txn_id: keyed_transaction_id(key).to_string(),
        event_type: "m.room.message".into(),
        content: json(content),
        answers: None,
        queued_at: 0,
    }
}

fn json(content: &impl serde::Serialize) -> String {
    serde_json::to_string(content).expect("event content serializes")
}

fn is_join_of(event: &TimelineEvent, user: &OwnedUserId) -> bool {
    matches!(
        event.raw().deserialize(),
        Ok(AnySyncTimelineEvent::State(AnySyncStateEvent::RoomMember(SyncStateEvent::Original(member))))
            if member.state_key == *user && member.content.membership == MembershipState::Join
                // A join after a join is a profile change (name, avatar), not the bot joining.
                && member.unsigned.prev_content.as_ref().is_none_or(|p| p.membership != MembershipState::Join)
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

#[cfg(test)]
mod tests {
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
    use matrix_sdk::ruma::{event_id, room_id, user_id};

    use super::*;

    fn origin() -> JobOrigin {
        JobOrigin {
            room_id: room_id!("!r:example.org").to_owned(),
            event_id: event_id!("$e:example.org").to_owned(),
            sender: user_id!("@alice:example.org").to_owned(),
            thread: None,
        }
    }

    #[test]
    fn a_plugin_that_changes_no_rooms_may_answer_but_not_change_a_room() {
        let derived = |index: usize| format!("t{index}");
        let reply = || Action::Reply(RoomMessageEventContent::notice_plain("pong"));
        let power = || Action::SetPowerLevel {
            room_id: room_id!("!r:example.org").to_owned(),
            user_id: user_id!("@alice:example.org").to_owned(),
            level: 50,
        };
        let answer = to_send(Some(&origin()), &derived, 0, reply(), false).expect("answers are fine");
        assert_eq!((answer.event_type.as_str(), answer.txn_id.as_str()), ("m.room.message", "t0"));
        let refused = to_send(Some(&origin()), &derived, 1, power(), false).expect_err("a room change is refused");
        assert!(refused.contains("Plugin::changes_rooms"), "{refused}");
        let allowed = to_send(Some(&origin()), &derived, 1, power(), true).expect("allowed when declared");
        assert_eq!(allowed.event_type, outbox::POWER_LEVEL);
    }
}

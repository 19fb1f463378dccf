//! Turning a sync response into work: invites answered, limited timelines filled, each new message handed to the
//! plugin once, and its answers queued in the outbox together with the mark that the message was handled. No
//! answer is sent here: the sync loop never waits on the homeserver's message limits.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use matrix_sdk::Room;
use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::{
    AddMentions, ForwardThread, MessageFormat, MessageType, OriginalSyncRoomMessageEvent, Relation, ReplyMetadata,
};
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncStateEvent, AnySyncTimelineEvent, SyncMessageLikeEvent, SyncStateEvent,
};
use matrix_sdk::ruma::{OwnedUserId, RoomId, UInt};

use super::{HandleError, Run, backoff, keyed_transaction_id, transaction_id};
use crate::plugin::{Action, IncomingMessage, MessageKind};
use crate::state::db::{OutboxEntry, PendingEvent, now_unix};
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
            self.answer_invite(room_id).await;
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
        let start = events.iter().rposition(|e| is_join_of(e, &own_user)).map_or(0, |i| i + 1);
        for event in &events[start..] {
            me.counters.events_handled.fetch_add(1, Ordering::Relaxed);
            // Each event is progress: a plugin waiting on its rate limiter is slow, not hung.
            me.update(|s| s.last_progress = Instant::now());
            self.handle_event(room, event).await?;
        }
        Ok(())
    }

    /// One timeline event (decrypted where its key was at hand).
    pub(super) async fn handle_event(&self, room: &Room, event: &TimelineEvent) -> Result<(), HandleError> {
        let Ok(parsed) = event.raw().deserialize() else {
            return Ok(());
        };
        match parsed {
            AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                SyncMessageLikeEvent::Original(message),
            )) => self.handle_message(room, &message, event.encryption_info().is_some()).await,
            AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomEncrypted(encrypted)) => {
                self.wait_for_key(room, event, encrypted.event_id().as_str(), encrypted.origin_server_ts()).await
            }
            _ => Ok(()),
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

    async fn handle_message(
        &self,
        room: &Room,
        message: &OriginalSyncRoomMessageEvent,
        encrypted: bool,
    ) -> Result<(), HandleError> {
        let me = self.instance;
        if me.is_bot(&message.sender) {
            return Ok(());
        }
        let (kind, body, formatted) = match &message.content.msgtype {
            MessageType::Text(text) => (MessageKind::Text, &text.body, &text.formatted),
            MessageType::Emote(emote) => (MessageKind::Emote, &emote.body, &emote.formatted),
            _ => return Ok(()),
        };
        if matches!(message.content.relates_to, Some(Relation::Replacement(_))) {
            return Ok(());
        }
        let age = age_of(message.origin_server_ts);
        if age > me.max_command_age {
            tracing::debug!(instance = %me.id, event_id = %message.event_id, age_s = age.as_secs(), "too old to answer");
            return Ok(());
        }
        if me.db.is_handled(&me.id, message.event_id.as_str()).await? {
            return Ok(());
        }
        let incoming = IncomingMessage {
            room_id: room.room_id().to_owned(),
            event_id: message.event_id.clone(),
            sender: message.sender.clone(),
            kind,
            body: body.clone(),
            formatted_body: formatted.as_ref().filter(|f| f.format == MessageFormat::Html).map(|f| f.body.clone()),
            age,
            encrypted,
        };
        let actions = me.plugin.on_message(&me.context, &incoming).await?;
        if actions.is_empty() {
            return Ok(());
        }
        if !self.sender_may_command(&message.sender) {
            tracing::info!(
                instance = %me.id,
                room_id = %room.room_id(),
                event_id = %message.event_id,
                sender = %message.sender,
                "not answering: the sender is over the per-sender command limit"
            );
            me.db.mark_handled(&me.id, message.event_id.as_str(), Vec::new()).await?;
            return Ok(());
        }
        let sends =
            actions.into_iter().enumerate().map(|(index, action)| to_send(room, message, index, action)).collect();
        let queued = me.db.mark_handled(&me.id, message.event_id.as_str(), sends).await?;
        self.outstanding.add(queued.len());
        for send in queued {
            let _ = self.outbox.send(send);
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
    pub(super) async fn answer_pending_invites(&self) {
        for room in self.instance.client.invited_rooms() {
            self.answer_invite(room.room_id()).await;
        }
    }

    async fn answer_invite(&self, room_id: &RoomId) {
        let me = self.instance;
        let Some(room) = me.client.get_room(room_id) else {
            return;
        };
        let inviter =
            room.invite_details().await.ok().and_then(|details| details.inviter).map(|m| m.user_id().to_owned());
        let allowed =
            inviter.as_ref().is_some_and(|u| me.plugin.accepts_invite_from(u.as_str())) && me.subscribed(room_id);
        let inviter = inviter.map(|u| u.to_string()).unwrap_or_else(|| "unknown".into());
        if allowed {
            for attempt in 1..=3u32 {
                match me.client.join_room_by_id(room_id).await {
                    Ok(_) => {
                        tracing::info!(instance = %me.id, room_id = %room_id, %inviter, "joined on invite");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(instance = %me.id, room_id = %room_id, error = %scrubbed(&e.to_string()), attempt, "joining failed");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
            }
        } else {
            tracing::info!(instance = %me.id, room_id = %room_id, %inviter, "declining an invite from a user not in allow_invites_from");
            if let Err(e) = room.leave().await {
                tracing::warn!(instance = %me.id, room_id = %room_id, error = %scrubbed(&e.to_string()), "declining the invite failed");
            }
        }
    }
}

/// The outbox entry for the `index`-th action answering `message`.
fn to_send(room: &Room, message: &OriginalSyncRoomMessageEvent, index: usize, action: Action) -> OutboxEntry {
    let derived = || transaction_id(message.event_id.as_str(), index).to_string();
    let (room_id, txn_id, event_type, content) = match action {
        Action::Reply(content) => {
            let content = content.make_reply_to(
                ReplyMetadata::new(&message.event_id, &message.sender, thread_of(message)),
                ForwardThread::Yes,
                AddMentions::No,
            );
            (room.room_id().to_string(), derived(), "m.room.message", json(&content))
        }
        Action::Send { room_id, content, key } => {
            let txn_id = key.map(|k| keyed_transaction_id(&k).to_string()).unwrap_or_else(derived);
            (room_id.to_string(), txn_id, "m.room.message", json(&content))
        }
        Action::React { to, reaction } => {
            let content = matrix_sdk::ruma::events::reaction::ReactionEventContent::new(
                matrix_sdk::ruma::events::relation::Annotation::new(to, reaction),
            );
            (room.room_id().to_string(), derived(), "m.reaction", json(&content))
        }
    };
    OutboxEntry {
        seq: 0,
        room_id,
        txn_id,
        event_type: event_type.into(),
        content,
        answers: Some(message.event_id.to_string()),
        queued_at: 0,
    }
}

/// The outbox entry for a send a plugin made on its own.
pub(super) fn unprompted_send(unprompted: crate::plugin::Unprompted) -> OutboxEntry {
    OutboxEntry {
        seq: 0,
        room_id: unprompted.room_id.to_string(),
        txn_id: keyed_transaction_id(&unprompted.key).to_string(),
        event_type: "m.room.message".into(),
        content: json(&unprompted.content),
        answers: None,
        queued_at: 0,
    }
}

fn json(content: &impl serde::Serialize) -> String {
    serde_json::to_string(content).expect("event content serializes")
}

fn age_of(sent: matrix_sdk::ruma::MilliSecondsSinceUnixEpoch) -> Duration {
    let sent = sent.to_system_time().unwrap_or(SystemTime::UNIX_EPOCH);
    SystemTime::now().duration_since(sent).unwrap_or_default()
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

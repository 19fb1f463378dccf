//! Where an event enters: a timeline event (decrypted where its key was at hand) turned into what a plugin is
//! handed (`plugin::Event`), or recognised as one that waits for its room key, or as nothing for a plugin.

use std::time::{Duration, SystemTime};

use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent, Relation};
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncStateEvent, AnySyncTimelineEvent, SyncMessageLikeEvent, SyncStateEvent,
};
use matrix_sdk::ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, UserId};

use crate::plugin::{self, ChangedBy, Event, EventKind, Membership, Message, MessageKind};

/// What a timeline event is to the host.
pub(super) enum Incoming {
    /// For the plugin, if it subscribed to its type.
    Event(Event),
    /// Encrypted, and its room key has not reached this device (yet).
    Undecryptable { event_id: OwnedEventId, sent: MilliSecondsSinceUnixEpoch },
    /// Nothing a plugin is handed: redacted, of a kind no plugin gets, or a message of one of this host's bots.
    Nothing,
}

/// Classifies one timeline event of `room_id`. `is_bot` tells this host's bots: their messages, edits,
/// reactions and state changes are not handed over; their membership changes are, marked as theirs.
pub(super) fn incoming(room_id: &RoomId, event: &TimelineEvent, is_bot: &dyn Fn(&UserId) -> bool) -> Incoming {
    let Ok(parsed) = event.raw().deserialize() else {
        return Incoming::Nothing;
    };
    let encrypted = event.encryption_info().is_some();
    let made = |event_id: &OwnedEventId, sender: &UserId, sent: MilliSecondsSinceUnixEpoch, kind| {
        Incoming::Event(Event {
            room_id: room_id.to_owned(),
            event_id: event_id.clone(),
            sender: sender.to_owned(),
            timestamp_ms: sent.0.into(),
            age: age_of(sent),
            encrypted,
            kind,
        })
    };
    match parsed {
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomEncrypted(encrypted)) => {
            Incoming::Undecryptable { event_id: encrypted.event_id().to_owned(), sent: encrypted.origin_server_ts() }
        }
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(SyncMessageLikeEvent::Original(
            message,
        ))) if !is_bot(&message.sender) => match to_message(&message) {
            Some(content) => {
                made(&message.event_id, &message.sender, message.origin_server_ts, EventKind::Message(content))
            }
            None => Incoming::Nothing,
        },
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::Reaction(SyncMessageLikeEvent::Original(
            reaction,
        ))) if !is_bot(&reaction.sender) => {
            let annotation = reaction.content.relates_to;
            let kind = EventKind::Reaction { to: annotation.event_id, key: annotation.key };
            made(&reaction.event_id, &reaction.sender, reaction.origin_server_ts, kind)
        }
        AnySyncTimelineEvent::State(AnySyncStateEvent::RoomMember(SyncStateEvent::Original(member))) => {
            let by = if is_bot(&member.sender) {
                ChangedBy::Bot
            } else if member.sender == member.state_key {
                ChangedBy::Member
            } else {
                ChangedBy::Other
            };
            let kind = EventKind::Membership(Membership {
                user: member.state_key.clone(),
                membership: member.content.membership.as_str().to_owned(),
                previous: member.unsigned.prev_content.as_ref().map(|c| c.membership.as_str().to_owned()),
                by,
                reason: member.content.reason.clone(),
            });
            made(&member.event_id, &member.sender, member.origin_server_ts, kind)
        }
        AnySyncTimelineEvent::State(state) if !is_bot(state.sender()) && state.original_content().is_some() => {
            let content = event.raw().get_field::<serde_json::Value>("content").ok().flatten().unwrap_or_default();
            let kind = EventKind::State {
                event_type: state.event_type().to_string(),
                state_key: state.state_key().to_owned(),
                content,
            };
            made(&state.event_id().to_owned(), state.sender(), state.origin_server_ts(), kind)
        }
        _ => Incoming::Nothing,
    }
}

/// A text, emote or notice message with its relation; for an edit, the new content.
fn to_message(message: &OriginalSyncRoomMessageEvent) -> Option<Message> {
    let (relation, msgtype) = match &message.content.relates_to {
        Some(Relation::Replacement(replacement)) => {
            (Some(plugin::Relation::Edit { of: replacement.event_id.clone() }), &replacement.new_content.msgtype)
        }
        Some(Relation::Reply(reply)) => {
            (Some(plugin::Relation::Reply { to: reply.in_reply_to.event_id.clone() }), &message.content.msgtype)
        }
        Some(Relation::Thread(thread)) => {
            // A falling-back `in_reply_to` only names the thread's latest event for older clients.
            let reply_to = thread.in_reply_to.as_ref().filter(|_| !thread.is_falling_back).map(|r| r.event_id.clone());
            (Some(plugin::Relation::Thread { root: thread.event_id.clone(), reply_to }), &message.content.msgtype)
        }
        _ => (None, &message.content.msgtype),
    };
    let (kind, body, formatted) = match msgtype {
        MessageType::Text(text) => (MessageKind::Text, &text.body, &text.formatted),
        MessageType::Emote(emote) => (MessageKind::Emote, &emote.body, &emote.formatted),
        MessageType::Notice(notice) => (MessageKind::Notice, &notice.body, &notice.formatted),
        _ => return None,
    };
    let html = matrix_sdk::ruma::events::room::message::MessageFormat::Html;
    Some(Message {
        kind,
        body: body.clone(),
        formatted_body: formatted.as_ref().filter(|f| f.format == html).map(|f| f.body.clone()),
        relation,
    })
}

pub(super) fn age_of(sent: MilliSecondsSinceUnixEpoch) -> Duration {
    let sent = sent.to_system_time().unwrap_or(SystemTime::UNIX_EPOCH);
    SystemTime::now().duration_since(sent).unwrap_or_default()
}

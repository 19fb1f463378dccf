//! What a plugin is handed: the events of the bot's joined rooms it subscribed to, each with who sent it, when,
//! and whether it arrived encrypted.
//!
//! The host filters before a plugin sees anything: messages, edits and reactions of this host's own bots are
//! never delivered (bots must not answer bots), nor are messages older than the instance's
//! `max_command_age_secs`. Membership changes are delivered whoever made them (the event says who: the member,
//! one of this host's bots, or someone else), and state changes are delivered as the timeline shows them (the
//! room's state before the bot joined is not replayed).

use std::time::Duration;

use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

/// The kinds of event a plugin can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    /// `m.text` and `m.emote` messages (not edits).
    Message,
    /// `m.notice` messages (what bots send; from people too).
    Notice,
    /// Edits (`m.replace`) of text, emote and notice messages, with the new content.
    Edit,
    /// Reactions (`m.reaction` annotations).
    Reaction,
    /// Membership changes (`m.room.member`): joins, leaves, invites, kicks, bans, knocks.
    Membership,
    /// Other state changes (`m.room.topic`, `m.room.power_levels`, `m.space.child`, custom types ...).
    State,
    /// Invites of the bot to a room (after the host decided whether to join, by `allow_invites_from`).
    Invite,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::Message,
        EventType::Notice,
        EventType::Edit,
        EventType::Reaction,
        EventType::Membership,
        EventType::State,
        EventType::Invite,
    ];

    /// The name in an `exec` program's `subscribe` list and in docs.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Message => "message",
            EventType::Notice => "notice",
            EventType::Edit => "edit",
            EventType::Reaction => "reaction",
            EventType::Membership => "membership",
            EventType::State => "state",
            EventType::Invite => "invite",
        }
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }
}

// One bit each in `Subscriptions`.
const _: () = assert!(EventType::ALL.len() <= 8);

/// The event types a plugin wants: one bit per [`EventType`], so that asking costs nothing per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriptions(u8);

impl Subscriptions {
    /// Text and emote messages only: what a plugin gets unless it asks for more.
    pub fn messages() -> Self {
        Self::of([EventType::Message])
    }

    pub fn of(types: impl IntoIterator<Item = EventType>) -> Self {
        Subscriptions(types.into_iter().fold(0, |bits, kind| bits | 1 << kind as u8))
    }

    pub fn contains(self, kind: EventType) -> bool {
        self.0 & 1 << kind as u8 != 0
    }
}

impl Default for Subscriptions {
    fn default() -> Self {
        Self::messages()
    }
}

/// One event for a plugin.
#[derive(Debug, Clone)]
pub struct Event {
    pub room_id: OwnedRoomId,
    /// The event's id; what answers derive their transaction ids from. For a declined invite the homeserver
    /// gave no id for, a host-made one (`$~invite~<room id without its sigil>~<milliseconds>`).
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    /// The homeserver's timestamp (milliseconds since the epoch).
    pub timestamp_ms: u64,
    /// How long ago the homeserver received it.
    pub age: Duration,
    /// Whether it arrived encrypted (answers in such rooms are encrypted by the host).
    pub encrypted: bool,
    pub kind: EventKind,
}

#[derive(Debug, Clone)]
pub enum EventKind {
    Message(Message),
    Reaction {
        /// The event reacted to.
        to: OwnedEventId,
        /// The reaction (usually an emoji).
        key: String,
    },
    Membership(Membership),
    State {
        event_type: String,
        state_key: String,
        content: serde_json::Value,
    },
    /// The bot was invited to `room_id` by `sender`; `joined` says whether the host accepted.
    Invite {
        joined: bool,
    },
}

impl EventKind {
    /// The subscription that delivers this event.
    pub fn event_type(&self) -> EventType {
        match self {
            EventKind::Message(m) if matches!(m.relation, Some(Relation::Edit { .. })) => EventType::Edit,
            EventKind::Message(m) if m.kind == MessageKind::Notice => EventType::Notice,
            EventKind::Message(_) => EventType::Message,
            EventKind::Reaction { .. } => EventType::Reaction,
            EventKind::Membership(_) => EventType::Membership,
            EventKind::State { .. } => EventType::State,
            EventKind::Invite { .. } => EventType::Invite,
        }
    }
}

/// The message types a plugin is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Emote,
    Notice,
}

impl MessageKind {
    /// The `msgtype` of the event.
    pub fn msgtype(self) -> &'static str {
        match self {
            MessageKind::Text => "m.text",
            MessageKind::Emote => "m.emote",
            MessageKind::Notice => "m.notice",
        }
    }
}

/// A text, emote or notice message (for an edit: the new content).
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: MessageKind,
    pub body: String,
    /// The HTML body (`org.matrix.custom.html`), when the message has one.
    pub formatted_body: Option<String>,
    pub relation: Option<Relation>,
}

/// How a message relates to an earlier event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// A reply to `to`.
    Reply { to: OwnedEventId },
    /// In the thread that starts at `root` (`reply_to`: the event it answers inside the thread, if it says).
    Thread { root: OwnedEventId, reply_to: Option<OwnedEventId> },
    /// An edit of `of`; the message carries the new content.
    Edit { of: OwnedEventId },
}

/// A membership change of `user`.
#[derive(Debug, Clone)]
pub struct Membership {
    pub user: OwnedUserId,
    /// `join`, `leave`, `invite`, `ban` or `knock`.
    pub membership: String,
    /// The membership before, when the homeserver said (`unsigned.prev_content`).
    pub previous: Option<String>,
    pub by: ChangedBy,
    pub reason: Option<String>,
}

/// Who made a membership change: decisive for reconcilers (a leave by the member is their own choice; a kick by
/// someone else is a human decision; one by this host's bots is the host's own doing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangedBy {
    Member,
    Bot,
    Other,
}

impl ChangedBy {
    pub fn name(self) -> &'static str {
        match self {
            ChangedBy::Member => "member",
            ChangedBy::Bot => "bot",
            ChangedBy::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_each_event_has_its_subscription() {
        for kind in EventType::ALL {
            assert_eq!(EventType::from_name(kind.name()), Some(kind));
        }
        assert_eq!(EventType::from_name("typing"), None);
        let message =
            |kind, relation| EventKind::Message(Message { kind, body: "b".into(), formatted_body: None, relation });
        let of: OwnedEventId = "$a:x".try_into().unwrap();
        assert_eq!(message(MessageKind::Text, None).event_type(), EventType::Message);
        assert_eq!(
            message(MessageKind::Emote, Some(Relation::Reply { to: of.clone() })).event_type(),
            EventType::Message
        );
        assert_eq!(message(MessageKind::Notice, None).event_type(), EventType::Notice);
        assert_eq!(message(MessageKind::Text, Some(Relation::Edit { of })).event_type(), EventType::Edit);
        for kind in EventType::ALL {
            let only = Subscriptions::of([kind]);
            assert_eq!(EventType::ALL.iter().filter(|k| only.contains(**k)).collect::<Vec<_>>(), vec![&kind]);
        }
        assert!(Subscriptions::default().contains(EventType::Message));
        assert!(!Subscriptions::default().contains(EventType::Notice));
    }
}

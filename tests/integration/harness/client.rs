//! A person on the homeserver: a second matrix-sdk client with its own crypto store, syncing in the background
//! and recording every message it sees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::filter::FilterDefinition;
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoomRequest;
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, Relation, RoomMessageEventContent,
};
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncTimelineEvent, InitialStateEvent, SyncMessageLikeEvent,
};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use matrix_sdk::{Client, Room, RoomMemberships};
use tokio::task::JoinHandle;

use super::eventually;
use super::synapse::{Synapse, register_with_secret};

#[derive(Debug, Clone)]
pub struct Seen {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    pub body: String,
    pub in_reply_to: Option<OwnedEventId>,
    pub encrypted: bool,
    /// The homeserver's timestamp, in milliseconds since the epoch.
    pub ts_ms: u64,
    /// The HTML body (`formatted_body`) of a text or notice message that has one.
    pub html: Option<String>,
}

pub struct TestUser {
    pub client: Client,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    sync: JoinHandle<()>,
    _store: tempfile::TempDir,
}

impl Drop for TestUser {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

impl TestUser {
    /// Registers a new user and logs in with a fresh crypto store; starts syncing.
    pub async fn new(synapse: &Synapse, prefix: &str) -> TestUser {
        Self::new_at(synapse, &synapse.url, prefix).await
    }

    /// As [`TestUser::new`], with the client talking to `url` (a test proxy in front of `synapse`).
    pub async fn new_at(synapse: &Synapse, url: &str, prefix: &str) -> TestUser {
        let localpart = super::unique(prefix);
        let password = "person-password";
        register_with_secret(&synapse.url, &localpart, password, false).await.unwrap();
        let store = tempfile::tempdir().unwrap();
        let client = Client::builder()
            .homeserver_url(url)
            .respect_login_well_known(false)
            .sqlite_store(store.path(), None)
            .build()
            .await
            .unwrap();
        client.matrix_auth().login_username(&localpart, password).send().await.unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let sink = seen.clone();
        client.add_event_handler(
            move |event: OriginalSyncRoomMessageEvent, room: Room, encryption: Option<EncryptionInfo>| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(to_seen(room.room_id(), &event, encryption.is_some()));
                }
            },
        );
        client.sync_once(every_event()).await.unwrap();
        let syncing = client.clone();
        let sync = tokio::spawn(async move {
            let _ = syncing.sync(every_event().timeout(Duration::from_secs(2))).await;
        });
        TestUser { client, seen, sync, _store: store }
    }

    /// Creates a room (optionally encrypted) and invites `invite`.
    pub async fn create_room(&self, encrypted: bool, invite: &[&str]) -> Room {
        let mut request = CreateRoomRequest::new();
        request.invite = invite.iter().map(|u| UserId::parse(*u).unwrap()).collect();
        if encrypted {
            let content = RoomEncryptionEventContent::with_recommended_defaults();
            request.initial_state = vec![InitialStateEvent::with_empty_state_key(content).to_raw_any()];
        }
        self.client.create_room(request).await.unwrap()
    }

    /// Waits until `user` has joined `room`, as this client sees it.
    pub async fn wait_for_join(&self, room: &Room, user: &str) {
        let user = UserId::parse(user).unwrap();
        eventually(Duration::from_secs(30), &format!("{user} to join"), || {
            let room = room.clone();
            let user = user.clone();
            async move {
                let members = room.members(RoomMemberships::JOIN).await.ok()?;
                members.iter().any(|m| m.user_id() == user).then_some(())
            }
        })
        .await
    }

    pub async fn send_text(&self, room: &Room, body: &str) -> OwnedEventId {
        room.send(RoomMessageEventContent::text_plain(body)).await.unwrap().response.event_id
    }

    /// Messages from `sender` that reply to `event_id`.
    pub fn replies_to(&self, event_id: &OwnedEventId, sender: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.in_reply_to.as_ref() == Some(event_id) && s.sender.as_str() == sender)
            .cloned()
            .collect()
    }

    /// Waits for the first reply from `sender` to `event_id`.
    pub async fn wait_for_reply(&self, event_id: &OwnedEventId, sender: &str, timeout: Duration) -> Seen {
        eventually(timeout, &format!("a reply from {sender} to {event_id}"), || {
            let found = self.replies_to(event_id, sender).into_iter().next();
            async move { found }
        })
        .await
    }

    /// Every message in the room, oldest first, as the homeserver has it (paginated, nothing missed).
    pub async fn room_history(&self, room: &Room) -> Vec<Seen> {
        let mut out = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut options = MessagesOptions::backward();
            options.from = from.clone();
            options.limit = 500u32.into();
            let page = room.messages(options).await.unwrap();
            for event in &page.chunk {
                let encrypted = event.encryption_info().is_some();
                if let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                    SyncMessageLikeEvent::Original(message),
                ))) = event.raw().deserialize()
                {
                    out.push(to_seen(room.room_id(), &message, encrypted));
                }
            }
            if page.chunk.is_empty() || page.end.is_none() {
                break;
            }
            from = page.end;
        }
        out.reverse();
        out
    }

    pub fn user_id(&self) -> String {
        self.client.user_id().expect("logged in").to_string()
    }

    /// All messages seen from `sender`.
    pub fn messages_from(&self, sender: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.sender.as_str() == sender).cloned().collect()
    }
}

/// Syncs whose timeline holds up to 500 events per room: a burst between two of this client's syncs (a bot
/// answering several commands in a second) is seen whole, not cut to Synapse's default of the last 10 with the
/// rest skipped as `limited`.
fn every_event() -> SyncSettings {
    let mut filter = FilterDefinition::default();
    filter.room.timeline.limit = Some(500u32.into());
    SyncSettings::default().filter(Filter::FilterDefinition(filter))
}

fn to_seen(room_id: &RoomId, event: &OriginalSyncRoomMessageEvent, encrypted: bool) -> Seen {
    let in_reply_to = match &event.content.relates_to {
        Some(Relation::Reply(reply)) => Some(reply.in_reply_to.event_id.clone()),
        _ => None,
    };
    let formatted = match &event.content.msgtype {
        MessageType::Notice(notice) => notice.formatted.as_ref(),
        MessageType::Text(text) => text.formatted.as_ref(),
        _ => None,
    };
    Seen {
        room_id: room_id.to_owned(),
        html: formatted.map(|f| f.body.clone()),
        event_id: event.event_id.clone(),
        sender: event.sender.clone(),
        body: event.content.body().to_owned(),
        in_reply_to,
        encrypted,
        ts_ms: event.origin_server_ts.0.into(),
    }
}

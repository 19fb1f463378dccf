//! Encrypted events that arrived before their room key: after each sync (room keys come with syncs) they are
//! decrypted again; one that decrypts is handled like any message, one older than the command age limit is
//! given up with an error naming it.

use std::time::{Duration, SystemTime};

use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{MilliSecondsSinceUnixEpoch, RoomId};

use super::{HandleError, Run};

impl Run<'_> {
    pub(super) async fn retry_pending(&self) -> Result<(), HandleError> {
        let me = self.instance;
        let waiting = self.pending.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for pending in waiting {
            let raw: Option<Raw<OriginalSyncRoomEncryptedEvent>> = Raw::from_json_string(pending.event.clone()).ok();
            let room = RoomId::parse(&pending.room_id).ok().and_then(|id| me.client.get_room(&id));
            let sent = raw
                .as_ref()
                .and_then(|r| r.get_field::<MilliSecondsSinceUnixEpoch>("origin_server_ts").ok().flatten())
                .and_then(|ts| ts.to_system_time());
            let too_old =
                sent.is_none_or(|at| SystemTime::now().duration_since(at).unwrap_or_default() > me.max_command_age);
            let done = match (raw, room) {
                (Some(raw), Some(room)) if !too_old => {
                    let event = room.decrypt_event(&raw, None).await?;
                    if event.encryption_info().is_some() {
                        tracing::info!(instance = %me.id, event_id = %pending.event_id, "the room key arrived; handling the event");
                        self.handle_event(&room, &event).await?;
                        true
                    } else {
                        false
                    }
                }
                _ => {
                    // WARN, not ERROR: anyone in a room can send events nobody can decrypt.
                    tracing::warn!(
                        instance = %me.id,
                        room_id = %pending.room_id,
                        event_id = %pending.event_id,
                        waited_secs = Duration::from_secs((crate::state::db::now_unix() - pending.received_at).max(0) as u64).as_secs(),
                        "gave up on an encrypted event: its room key never reached this device within the command age limit"
                    );
                    true
                }
            };
            if done {
                me.db.remove_pending(&me.id, &pending.event_id).await?;
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| p.event_id != pending.event_id);
            }
        }
        Ok(())
    }
}

//! A bot's state as the daemon left it: its recorded session, and what its E2EE store can decrypt.

use std::path::Path;

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::encryption::{BackupDownloadStrategy, EncryptionSettings};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId};
use matrix_sdk::{Client, SessionMeta, SessionTokens};

/// What the bot's record in a state directory says: (device id, access token).
pub fn session(database: &Path, id: &str) -> (String, String) {
    rusqlite::Connection::open(database)
        .unwrap()
        .query_row("SELECT device_id, access_token FROM instances WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
}

/// The body of `event` in `room`, as a client with a bot's store and session decrypts it: with the
/// keys that store holds (never downloaded from the key backup on the way).
pub async fn decrypted_with_store(
    homeserver: &str,
    store: &Path,
    user: &str,
    device: &str,
    token: &str,
    room: &OwnedRoomId,
    event: &OwnedEventId,
) -> String {
    let client = Client::builder()
        .homeserver_url(homeserver)
        .respect_login_well_known(false)
        .sqlite_store(store, None)
        .with_encryption_settings(EncryptionSettings {
            backup_download_strategy: BackupDownloadStrategy::Manual,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let session = MatrixSession {
        meta: SessionMeta { user_id: user.try_into().unwrap(), device_id: device.into() },
        tokens: SessionTokens { access_token: token.to_owned(), refresh_token: None },
    };
    client.restore_session(session).await.unwrap();
    let room = client.get_room(room).expect("the restored state store knows the room");
    let event = room.event(event, None).await.unwrap();
    assert!(event.encryption_info().is_some(), "the event was encrypted");
    let json: serde_json::Value = serde_json::from_str(event.raw().json().get()).unwrap();
    json["content"]["body"].as_str().unwrap_or_default().to_owned()
}

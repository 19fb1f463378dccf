//! E2EE bootstrap for `setup`: cross-signing for the bot's device, then secret storage and key backup, whose
//! recovery key the operator keeps. Never run by `run`.
//!
//! Every step can be repeated after an interruption: the bot's store keeps the private cross-signing keys from
//! the moment they are made (matrix-sdk saves them before uploading), so a second attempt uploads the same
//! identity instead of meeting "already has a cross-signing identity"; a key backup this device created but
//! never finished setting up is replaced. Identities and backups made by anyone else are never touched.

use matrix_sdk::Client;
use matrix_sdk::encryption::recovery::RecoveryError;
use matrix_sdk::ruma::UserId;
use matrix_sdk::ruma::api::client::backup::{delete_backup_version, get_latest_backup_info};
use matrix_sdk::ruma::api::client::uiaa::{AuthData, MatrixUserIdentifier, Password, UserIdentifier};

#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    #[error(
        "{user} already has a cross-signing identity on the homeserver that this bot's store does not hold the keys \
         of (set up by another client, or by a maubot whose state was lost). Setup does not replace it: restore the \
         state backup instead. If the old identity is really gone, reset it from another client (or delete the \
         user's cross-signing keys with the homeserver's admin tools) and run setup again"
    )]
    IdentityExists { user: String },
    #[error(
        "{user} already has a key backup on the homeserver that another device made; setup does not delete it. \
         Restore the state backup, or delete the old key backup from another client and run setup again"
    )]
    BackupExists { user: String },
    #[error("the homeserver wants a password to upload cross-signing keys, but none is configured for this bot")]
    NeedsPassword,
    #[error("cross-signing bootstrap failed: {0}")]
    CrossSigning(matrix_sdk::Error),
    #[error("enabling recovery (secret storage and key backup) failed: {0}")]
    Recovery(RecoveryError),
    #[error(transparent)]
    Matrix(#[from] matrix_sdk::Error),
    #[error("the crypto store failed: {0}")]
    Store(String),
}

/// Makes sure the bot has a cross-signing identity whose private keys its store holds, and that its device is
/// signed by it. The device keys must already be uploaded (one sync does that).
pub async fn ensure_cross_signing(client: &Client, password: Option<&str>) -> Result<(), E2eeError> {
    let user_id = client.user_id().expect("logged in").to_owned();
    let encryption = client.encryption();
    // Asks the homeserver; if the identity there differs from the one in our store, matrix-sdk forgets ours.
    let on_server = encryption.request_user_identity(&user_id).await?;
    let complete = encryption.cross_signing_status().await.is_some_and(|s| s.is_complete());
    if let Some(identity) = on_server {
        if !(identity.is_verified() && complete) {
            return Err(E2eeError::IdentityExists { user: user_id.to_string() });
        }
        let device = encryption.get_own_device().await.map_err(|e| E2eeError::Store(e.to_string()))?;
        if device.is_some_and(|d| d.is_cross_signed_by_owner()) {
            tracing::info!(user = %user_id, "cross-signing was set up by an earlier attempt; keeping it");
            return Ok(());
        }
        tracing::info!(user = %user_id, "the identity from an earlier attempt is on the server; signing the device");
    }
    if let Err(first) = encryption.bootstrap_cross_signing(None).await {
        let Some(uiaa) = first.as_uiaa_response() else {
            return Err(E2eeError::CrossSigning(first));
        };
        let auth = password_auth(&user_id, password.ok_or(E2eeError::NeedsPassword)?, uiaa.session.clone());
        encryption.bootstrap_cross_signing(Some(auth)).await.map_err(E2eeError::CrossSigning)?;
    }
    Ok(())
}

/// The bot's password as the answer to a homeserver's user-interactive authentication (`session` from its
/// challenge), as uploading or replacing cross-signing keys needs it.
pub fn password_auth(user: &UserId, password: &str, session: Option<String>) -> AuthData {
    let mut auth = Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new(user.localpart().to_owned())),
        password.to_owned(),
    );
    auth.session = session;
    AuthData::Password(auth)
}

/// Enables recovery (secret storage and key backup); returns the new recovery key.
pub async fn enable_recovery(client: &Client) -> Result<String, E2eeError> {
    let user_id = client.user_id().expect("logged in").to_owned();
    let encryption = client.encryption();
    // The backup state of an earlier attempt is loaded from the store in the background: wait for it.
    encryption.wait_for_e2ee_initialization_tasks().await;
    match encryption.recovery().enable().wait_for_backups_to_upload().await {
        Ok(key) => return Ok(key),
        Err(RecoveryError::BackupExistsOnServer) => {}
        Err(e) => return Err(E2eeError::Recovery(e)),
    }
    // A backup exists that this store cannot use. If this very device made it (an interrupted attempt), it holds
    // nothing the store does not have: replace it. Anything else belongs to someone else.
    let latest =
        client.send(get_latest_backup_info::v3::Request::new()).await.map_err(|e| E2eeError::Matrix(e.into()))?;
    let algorithm: serde_json::Value = latest.algorithm.deserialize_as().unwrap_or_default();
    let device_key = format!("ed25519:{}", client.device_id().expect("logged in"));
    let ours = algorithm["auth_data"]["signatures"][user_id.as_str()].get(&device_key).is_some();
    if !ours {
        return Err(E2eeError::BackupExists { user: user_id.to_string() });
    }
    tracing::info!(user = %user_id, version = %latest.version, "replacing the key backup an interrupted setup of this device left");
    client
        .send(delete_backup_version::v3::Request::new(latest.version))
        .await
        .map_err(|e| E2eeError::Matrix(e.into()))?;
    encryption.recovery().enable().wait_for_backups_to_upload().await.map_err(E2eeError::Recovery)
}

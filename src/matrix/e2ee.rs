//! E2EE bootstrap for `setup`: cross-signing for the bot's device, then secret storage and key backup, whose
//! recovery key the operator keeps. Never run by `run`.

use matrix_sdk::Client;
use matrix_sdk::encryption::recovery::RecoveryError;
use matrix_sdk::ruma::api::client::uiaa::{AuthData, MatrixUserIdentifier, Password, UserIdentifier};

#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    #[error(
        "{user} already has a cross-signing identity on the homeserver (set up earlier, e.g. by a maubot whose state \
         was lost). Setup does not replace it: restore the state backup instead. If the old identity is really \
         gone, reset it from another client (or delete the user's cross-signing keys with the homeserver's admin \
         tools) and run setup again"
    )]
    IdentityExists { user: String },
    #[error(
        "{user} already has a key backup on the homeserver that this new device cannot use; restore the state \
         backup, or delete the old key backup from another client and run setup again"
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
}

/// Cross-signs the device and enables recovery; returns the recovery key. The device keys must already be
/// uploaded (one sync does that).
pub async fn bootstrap(client: &Client, password: Option<&str>) -> Result<String, E2eeError> {
    let user_id = client.user_id().expect("logged in").to_owned();
    let encryption = client.encryption();
    if encryption.request_user_identity(&user_id).await?.is_some() {
        return Err(E2eeError::IdentityExists { user: user_id.to_string() });
    }
    if let Err(first) = encryption.bootstrap_cross_signing(None).await {
        let Some(uiaa) = first.as_uiaa_response() else {
            return Err(E2eeError::CrossSigning(first));
        };
        let password = password.ok_or(E2eeError::NeedsPassword)?;
        let mut auth = Password::new(
            UserIdentifier::Matrix(MatrixUserIdentifier::new(user_id.localpart().to_owned())),
            password.to_owned(),
        );
        auth.session = uiaa.session.clone();
        encryption.bootstrap_cross_signing(Some(AuthData::Password(auth))).await.map_err(E2eeError::CrossSigning)?;
    }
    match encryption.recovery().enable().wait_for_backups_to_upload().await {
        Ok(key) => Ok(key),
        Err(RecoveryError::BackupExistsOnServer) => Err(E2eeError::BackupExists { user: user_id.to_string() }),
        Err(e) => Err(E2eeError::Recovery(e)),
    }
}

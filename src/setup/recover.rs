//! `maubot setup --recover ID` and `maubot setup --reset-identity ID`: a bot whose E2EE store is lost gets its
//! identity back from the recovery key setup printed, or, only when asked, a new identity.
//!
//! Recovery logs in a new device (a device id whose keys were uploaded once can never upload new ones), syncs it,
//! opens secret storage with the recovery key (which imports the cross-signing keys, signs the new device with
//! them, and takes the key backup's decryption key), downloads every joined room's keys from the key backup, and
//! only then points the bot's record at the new device and logs the old one out.
//!
//! The new device is built in `instances/<id>/store.recovering`, with its login written beside it
//! (`session.json`) before anything else reaches the homeserver: an interrupted recovery resumes with the same
//! device instead of stranding one. The record is changed before the directories are swapped, so a rerun after a
//! crash in between only finishes the swap. A store that was there (damaged, or another device's) is kept as
//! `store.lost-<time>`, never deleted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::encryption::CrossSigningResetAuthType;
use matrix_sdk::encryption::recovery::RecoveryError;
use matrix_sdk::encryption::secret_storage::SecretStorageError;
use serde::{Deserialize, Serialize};

use super::instance::{InstanceSetupError, generate_device_id, token_is_valid};
use super::{RecoveryKey, Report, SetupError};
use crate::config::{Config, InstanceConfig};
use crate::matrix::client::{self, ClientError};
use crate::matrix::e2ee::{self, E2eeError};
use crate::state::db::now_unix;
use crate::state::{self, Database, InstanceRecord, Layout, StateError, StateLock};

/// What to do for a bot.
pub enum Repair {
    /// Get the identity and the message keys back with this recovery key.
    Recover { key: String },
    /// Make a new identity (and a new recovery key, shown once).
    ResetIdentity,
}

impl std::fmt::Debug for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Repair::Recover { .. } => "Recover",
            Repair::ResetIdentity => "ResetIdentity",
        })
    }
}

/// What was done, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub id: String,
    pub user_id: String,
    pub device_id: String,
    /// The device the bot used before, when a new one replaced it (logged out, unless that failed).
    pub old_device: Option<String>,
    /// Whether logging the old device out failed (it is dead either way: its keys are gone).
    pub old_device_logout_failed: bool,
    /// The joined rooms whose keys were downloaded from the key backup.
    pub rooms_restored: usize,
    /// Where a store that was in the way was moved.
    pub store_kept_at: Option<PathBuf>,
}

impl Repaired {
    /// The bot keeps the device its record names.
    fn same_device(record: &InstanceRecord, store_kept_at: Option<PathBuf>) -> Self {
        Repaired {
            id: record.id.clone(),
            user_id: record.user_id.clone(),
            device_id: record.device_id.clone(),
            old_device: None,
            old_device_logout_failed: false,
            rooms_restored: 0,
            store_kept_at,
        }
    }
}

/// The bot's password: the configured one, or the one setup generated and recorded.
fn password_of(instance: &InstanceConfig, record: &InstanceRecord) -> Option<String> {
    instance.password.as_ref().map(|p| p.expose().to_owned()).or(record.generated_password.clone())
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Setup(#[from] InstanceSetupError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(
        "the E2EE store of `{id}` holds the keys of its device {device}: there is nothing to recover. To give the bot a \
         new identity instead, use --reset-identity {id}"
    )]
    StoreIntact { id: String, device: String },
    #[error(
        "`{id}` logs in with an access token, but recovery logs in a new device, which needs the bot's password: set \
         `instances.{id}.password` (e.g. `{{ credential: {id}-password }}`) and run it again"
    )]
    NeedsPassword { id: String },
    #[error(
        "the recovery key does not open {user}'s secret storage: check that it is the key setup printed for `{id}` \
         (the newest one, if the identity was reset since). Nothing was changed for the bot; the new device {device} \
         is kept for the next attempt"
    )]
    WrongKey { id: String, user: String, device: String },
    #[error(
        "{user} has no secret storage on the homeserver (it was never set up, or was reset): there is nothing to \
         recover from. Use --reset-identity {id} to make a new identity"
    )]
    NoSecretStorage { id: String, user: String },
    #[error("login as {user} failed: {source}")]
    Login { user: String, source: matrix_sdk::Error },
    #[error("the first sync of the new device failed: {0}")]
    Sync(matrix_sdk::Error),
    #[error("recovery failed: {0}")]
    Recovery(RecoveryError),
    #[error(
        "the homeserver wants an OAuth approval to reset the identity, which maubot cannot give; reset it from a client"
    )]
    OAuthOnly,
    #[error("resetting the identity failed: {0}")]
    Reset(RecoveryError),
    #[error(transparent)]
    E2ee(#[from] E2eeError),
    #[error("{path}: {message}", path = .path.display())]
    SessionFile { path: PathBuf, message: String },
    #[error("secret storage opened, but the new device {device} is not signed by the bot's identity")]
    NotCrossSigned { device: String },
    #[error(transparent)]
    Report(Box<SetupError>),
}

impl RepairError {
    /// Whether the fix is in the config, the state or the operator's input (exit 78) rather than a passing fault.
    pub fn is_config_or_state(&self) -> bool {
        match self {
            RepairError::State(_)
            | RepairError::StoreIntact { .. }
            | RepairError::NeedsPassword { .. }
            | RepairError::WrongKey { .. }
            | RepairError::NoSecretStorage { .. }
            | RepairError::OAuthOnly
            | RepairError::SessionFile { .. } => true,
            RepairError::Setup(e) => e.is_config_or_state(),
            RepairError::Report(e) => e.is_config_or_state(),
            RepairError::Login { source, .. } => {
                source.as_client_api_error().is_some_and(|e| e.status_code.as_u16() == 403)
            }
            RepairError::E2ee(e) => matches!(e, E2eeError::NeedsPassword | E2eeError::BackupExists { .. }),
            _ => false,
        }
    }
}

/// The login of the device being recovered, kept beside its store until the swap.
#[derive(Serialize, Deserialize)]
struct PendingSession {
    device_id: String,
    access_token: String,
    refresh_token: Option<String>,
}

const SESSION_FILE: &str = "session.json";

/// Recovers or resets bot `id`. A reset shows its new recovery key through `report` before the bot's record is
/// changed.
pub async fn repair(
    config: &Config,
    id: &str,
    repair: Repair,
    report: &mut dyn Report,
) -> Result<Repaired, SetupError> {
    run(config, id, repair, report).await.map_err(|e| SetupError::Repair { id: id.to_owned(), error: Box::new(e) })
}

async fn run(config: &Config, id: &str, repair: Repair, report: &mut dyn Report) -> Result<Repaired, RepairError> {
    let instance = config.instances.get(id).ok_or_else(|| StateError::InstanceNotConfigured { id: id.to_owned() })?;
    let layout = Layout::new(config);
    let db = Database::open(&layout.database())?;
    let record = db
        .instance(id)
        .await?
        .ok_or_else(|| StateError::InstanceNotSetUp { id: id.to_owned(), db: layout.database() })?;
    if record.user_id != instance.user {
        return Err(StateError::UserChanged {
            id: id.to_owned(),
            recorded: record.user_id.clone(),
            configured: instance.user.clone(),
        }
        .into());
    }
    let _lock = StateLock::acquire(&layout.instance_lock(id), &format!("setup --recover of instance {id}"))?;
    let store = layout.store_dir(id);
    let staging = layout.instance_dir(id).join("store.recovering");

    // A rerun after a crash between the record's change and the swap: only the swap is left.
    if let Some(pending) = read_pending(&staging)?
        && pending.device_id == record.device_id
    {
        tracing::info!(instance = %id, device = %record.device_id, "finishing an interrupted recovery");
        let store_kept_at = swap_in(&staging, &store)?;
        return Ok(Repaired::same_device(&record, store_kept_at));
    }

    let intact = match client::verify_store(&record, &store).await {
        Ok(()) => true,
        // Not lost: only a newer maubot can read it, and recovering would replace a working device.
        Err(e @ StateError::StoreTooNew { .. }) => return Err(e.into()),
        Err(_) => false,
    };
    match (&repair, intact) {
        (Repair::Recover { .. }, true) => {
            return Err(RepairError::StoreIntact { id: id.to_owned(), device: record.device_id.clone() });
        }
        (Repair::ResetIdentity, true) => return reset_in_place(config, &db, id, instance, record, report).await,
        _ => {}
    }
    let password = password_of(instance, &record).ok_or_else(|| RepairError::NeedsPassword { id: id.to_owned() })?;

    let (_, homeserver) = config.homeserver_of(instance).expect("validated: the instance has a homeserver");
    let pending = log_in_new_device(&homeserver.url, id, instance, &password, &staging).await?;
    let new_record = InstanceRecord {
        device_id: pending.device_id.clone(),
        access_token: pending.access_token.clone(),
        refresh_token: pending.refresh_token.clone(),
        homeserver_url: homeserver.url.clone(),
        ..record.clone()
    };
    let client = client::build(&homeserver.url, &staging).await?;
    client.restore_session(client::session_of(&new_record)?).await.map_err(ClientError::from)?;
    // A full sync: the new store learns the bot's rooms and their state, and uploads the device's keys. `run`
    // still starts from the bot's recorded position, so nothing said meanwhile is missed or answered twice.
    client.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.map_err(RepairError::Sync)?;
    client.encryption().wait_for_e2ee_initialization_tasks().await;

    let mut rooms_restored = 0;
    match &repair {
        Repair::Recover { key } => {
            open_secret_storage(&client, id, &record.user_id, &pending.device_id, key).await?;
            rooms_restored = download_room_keys(&client, id).await;
        }
        Repair::ResetIdentity => {
            let key = reset(&client, Some(&password)).await?;
            show_key(report, id, &new_record, key)?;
        }
    }
    let new_record = InstanceRecord { ed25519_key: client.encryption().ed25519_key().await, ..new_record };
    drop(client);

    db.replace_session(&new_record).await?;
    let store_kept_at = swap_in(&staging, &store)?;
    let logout_failed = !log_out(&homeserver.url, &record.access_token).await;
    Ok(Repaired {
        id: id.to_owned(),
        user_id: record.user_id,
        device_id: new_record.device_id,
        old_device: Some(record.device_id),
        old_device_logout_failed: logout_failed,
        rooms_restored,
        store_kept_at,
    })
}

/// `--reset-identity` for a bot whose store is fine: the same device gets a new identity.
async fn reset_in_place(
    config: &Config,
    db: &Database,
    id: &str,
    instance: &InstanceConfig,
    record: InstanceRecord,
    report: &mut dyn Report,
) -> Result<Repaired, RepairError> {
    let (_, homeserver) = config.homeserver_of(instance).expect("validated: the instance has a homeserver");
    let password = password_of(instance, &record);
    let position = db.sync_token(id).await?;
    let client =
        client::restore(&homeserver.url, &Layout::new(config).store_dir(id), &record, position.as_deref()).await?;
    client.encryption().wait_for_e2ee_initialization_tasks().await;
    let key = reset(&client, password.as_deref()).await?;
    show_key(report, id, &record, key)?;
    Ok(Repaired::same_device(&record, None))
}

fn show_key(report: &mut dyn Report, id: &str, record: &InstanceRecord, key: String) -> Result<(), RepairError> {
    let key = RecoveryKey {
        instance: id.to_owned(),
        user_id: record.user_id.clone(),
        device_id: record.device_id.clone(),
        key,
    };
    report.recovery_key(&key).map_err(|e| RepairError::Report(Box::new(e)))
}

/// The login recorded beside `staging` by an interrupted attempt, or a new device's (recorded before its keys
/// exist anywhere).
async fn log_in_new_device(
    homeserver: &str,
    id: &str,
    instance: &InstanceConfig,
    password: &str,
    staging: &Path,
) -> Result<PendingSession, RepairError> {
    if let Some(pending) = read_pending(staging)? {
        if token_is_valid(homeserver, &pending.access_token).await? {
            tracing::info!(instance = %id, device = %pending.device_id, "resuming the recovery of an earlier attempt");
            return Ok(pending);
        }
        tracing::warn!(instance = %id, device = %pending.device_id, "the device of an earlier attempt was logged out; starting over");
    }
    if staging.exists() {
        std::fs::remove_dir_all(staging).map_err(state::io(staging))?;
    }
    state::create_private_dir(staging)?;
    let client = Client::builder()
        .homeserver_url(homeserver)
        .respect_login_well_known(false)
        .build()
        .await
        .map_err(|e| ClientError::Build { homeserver: homeserver.to_owned(), source: Box::new(e) })?;
    let device_id = generate_device_id();
    let response = client
        .matrix_auth()
        .login_username(&instance.user, password)
        .device_id(&device_id)
        .initial_device_display_name(&instance.device_name_or_default(id))
        .send()
        .await
        .map_err(|source| RepairError::Login { user: instance.user.clone(), source })?;
    let pending = PendingSession {
        device_id: response.device_id.to_string(),
        access_token: response.access_token,
        refresh_token: response.refresh_token,
    };
    write_pending(staging, &pending)?;
    tracing::info!(instance = %id, device = %pending.device_id, "logged in a new device for the recovery");
    Ok(pending)
}

fn read_pending(staging: &Path) -> Result<Option<PendingSession>, RepairError> {
    let path = staging.join(SESSION_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RepairError::SessionFile { path, message: format!("{e}; move the directory away") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::Io { path, source: e }.into()),
    }
}

/// Writes the login (mode 0600) to a temp file, makes it durable and renames it into place.
fn write_pending(staging: &Path, pending: &PendingSession) -> Result<(), RepairError> {
    let path = staging.join(SESSION_FILE);
    let text = serde_json::to_vec(pending).expect("plain strings");
    crate::durable::write_private_file(&path, &text).map_err(|e| state::io(&path)(e).into())
}

fn sync_dir(dir: &Path) -> Result<(), RepairError> {
    crate::durable::sync_dir(dir).map_err(|e| state::io(dir)(e).into())
}

/// Puts the recovered store in place: what was at `store` is kept beside it, the login file goes.
fn swap_in(staging: &Path, store: &Path) -> Result<Option<PathBuf>, RepairError> {
    let kept = if store.exists() {
        let aside = store.with_file_name(format!("store.lost-{}", now_unix()));
        std::fs::rename(store, &aside).map_err(state::io(&aside))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(staging, store).map_err(state::io(store))?;
    let session = store.join(SESSION_FILE);
    std::fs::remove_file(&session).map_err(state::io(&session))?;
    sync_dir(store.parent().expect("a store has an instance directory"))?;
    Ok(kept)
}

/// Opens secret storage with `key`: imports the cross-signing keys (signing this device) and the key backup's
/// decryption key.
async fn open_secret_storage(
    client: &Client,
    id: &str,
    user: &str,
    device: &str,
    key: &str,
) -> Result<(), RepairError> {
    match client.encryption().recovery().recover(key).await {
        Ok(()) => {}
        Err(RecoveryError::SecretStorage(SecretStorageError::SecretStorageKey(_))) => {
            return Err(RepairError::WrongKey { id: id.to_owned(), user: user.to_owned(), device: device.to_owned() });
        }
        Err(RecoveryError::SecretStorage(SecretStorageError::MissingKeyInfo { .. })) => {
            return Err(RepairError::NoSecretStorage { id: id.to_owned(), user: user.to_owned() });
        }
        Err(e) => return Err(RepairError::Recovery(e)),
    }
    let own = client.encryption().get_own_device().await.map_err(|e| E2eeError::Store(e.to_string()))?;
    if !own.is_some_and(|d| d.is_cross_signed_by_owner()) {
        return Err(RepairError::NotCrossSigned { device: device.to_owned() });
    }
    Ok(())
}

/// Downloads every joined room's keys from the key backup; returns in how many rooms that worked. A room whose
/// download fails is logged and left to the download `run` does on a decryption failure.
async fn download_room_keys(client: &Client, id: &str) -> usize {
    let mut done = 0;
    for room in client.joined_rooms() {
        match client.encryption().backups().download_room_keys_for_room(room.room_id()).await {
            Ok(()) => done += 1,
            Err(e) => {
                tracing::warn!(instance = %id, room = %room.room_id(), error = %e, "downloading the room's keys from the key backup failed")
            }
        }
    }
    done
}

/// Replaces the bot's cross-signing identity, secret storage and key backup; returns the new recovery key.
async fn reset(client: &Client, password: Option<&str>) -> Result<String, RepairError> {
    let user = client.user_id().expect("logged in");
    let recovery = client.encryption().recovery();
    if let Some(handle) = recovery.reset_identity().await.map_err(RepairError::Reset)? {
        let auth = match handle.auth_type() {
            CrossSigningResetAuthType::Uiaa(uiaa) => {
                e2ee::password_auth(user, password.ok_or(E2eeError::NeedsPassword)?, uiaa.session.clone())
            }
            CrossSigningResetAuthType::OAuth(_) => {
                handle.cancel().await;
                return Err(RepairError::OAuthOnly);
            }
        };
        handle.reset(Some(auth)).await.map_err(RepairError::Reset)?;
    }
    Ok(e2ee::enable_recovery(client).await?)
}

/// Logs the old device out (the homeserver deletes it and its keys, so nobody encrypts for it any more).
/// Whether it is gone: an access token the homeserver no longer knows counts as gone.
async fn log_out(homeserver: &str, token: &str) -> bool {
    let url = format!("{}/_matrix/client/v3/logout", homeserver.trim_end_matches('/'));
    match reqwest::Client::new().post(&url).bearer_auth(token).json(&serde_json::json!({})).send().await {
        Ok(response) if response.status().is_success() || response.status().as_u16() == 401 => true,
        Ok(response) => {
            tracing::warn!(status = %response.status(), "logging the old device out failed");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "logging the old device out failed");
            false
        }
    }
}

/// The recovery key for instance `id` in what the operator gave: the key itself on one line, or the key file
/// setup wrote (`instance user device key` lines, comments starting with `#`).
pub fn key_from_input(id: &str, text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for line in &lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 3 && fields[0] == id && fields[1].starts_with('@') {
            return Some(fields[3..].join(" "));
        }
    }
    match lines.as_slice() {
        [only] if !only.split_whitespace().nth(1).is_some_and(|f| f.starts_with('@')) => Some(only.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_found_alone_or_in_the_key_file_setup_wrote() {
        let key = "EsTc ABCD efgh";
        assert_eq!(key_from_input("a", &format!("  {key}  \n")).as_deref(), Some(key));
        let file = format!(
            "# maubot E2EE recovery keys: instance, user, device, key. Keep this safe.\n\
             b @b:x MAUBOTB EsTb 1111\na @a:x MAUBOTA {key}\n"
        );
        assert_eq!(key_from_input("a", &file).as_deref(), Some(key));
        assert_eq!(key_from_input("c", &file), None, "another bot's key is never taken");
        assert_eq!(key_from_input("c", "b @b:x MAUBOTB EsTb 1111\n"), None);
        assert_eq!(key_from_input("a", ""), None);
        assert_eq!(key_from_input("a", "one\ntwo\n"), None, "two candidate lines: ambiguous");
    }
}

//! One bot's setup, as a unit of work that can be resumed. Before each step that creates something on the
//! homeserver, what that step needs again is recorded (`setup_progress`):
//!
//! 1. a device id and, when setup registers the bot without a configured password, a generated password: both
//!    recorded before registering or logging in, so a repeated login reuses the same device and password;
//! 2. the login's access token (or an adopted token);
//! 3. the first sync uploads the device keys into the bot's store at `instances/<id>/store`, which is kept;
//! 4. cross-signing: the store keeps the private keys from the moment they are made, so a rerun uploads the same
//!    identity (`matrix::e2ee`);
//! 5. recovery: its key is recorded as soon as it exists, then shown, then the instance is committed.

use std::path::Path;
use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use serde::Deserialize;

use super::keys::RecoveryKey;
use crate::config::{Config, HomeserverConfig, InstanceConfig};
use crate::matrix::client::{self, ClientError};
use crate::matrix::e2ee::{self, E2eeError};
use crate::matrix::register::{self, RegisterError, Registered, Registration};
use crate::state::db::{SetupProgress, now_unix};
use crate::state::{Database, InstanceRecord, Layout, StateError};

#[derive(Debug, thiserror::Error)]
pub enum InstanceSetupError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("registration failed: {0}")]
    Register(#[from] RegisterError),
    #[error(
        "{user} already exists on the homeserver and no password is configured to log in with; set \
         `instances.<id>.password` (e.g. `{{ credential: <id>-password }}`)"
    )]
    UserExistsWithoutPassword { user: String },
    #[error("login as {user} failed: {source}")]
    Login { user: String, source: matrix_sdk::Error },
    #[error("the access token belongs to {actual}, not to the configured user {configured}")]
    WrongUser { actual: String, configured: String },
    #[error("the access token was rejected by the homeserver: {0}")]
    Whoami(String),
    #[error(
        "an unfinished setup of this instance is for {recorded}, but the config now says {configured}; change the \
         config back to finish it (the account may already have a device and keys that only this setup can resume)"
    )]
    UserChangedSinceLastAttempt { recorded: String, configured: String },
    #[error(
        "the store {path} holds the keys of device {store_device}, but this setup logged in device {device}; move \
         the store away and run setup again",
        path = .path.display()
    )]
    StoreOfAnotherDevice { path: std::path::PathBuf, store_device: String, device: String },
    #[error("the first sync failed: {0}")]
    Sync(matrix_sdk::Error),
    #[error(transparent)]
    E2ee(#[from] E2eeError),
}

impl InstanceSetupError {
    /// Whether the fix is in the config or the state rather than a passing fault.
    pub fn is_config_or_state(&self) -> bool {
        match self {
            InstanceSetupError::State(_)
            | InstanceSetupError::UserExistsWithoutPassword { .. }
            | InstanceSetupError::WrongUser { .. }
            | InstanceSetupError::UserChangedSinceLastAttempt { .. }
            | InstanceSetupError::StoreOfAnotherDevice { .. } => true,
            InstanceSetupError::Login { source, .. } => {
                source.as_client_api_error().is_some_and(|e| e.status_code.as_u16() == 403)
            }
            InstanceSetupError::Register(e) => {
                matches!(e, RegisterError::BadSharedSecret | RegisterError::BadToken | RegisterError::NotOffered { .. })
            }
            InstanceSetupError::E2ee(e) => {
                matches!(
                    e,
                    E2eeError::IdentityExists { .. } | E2eeError::BackupExists { .. } | E2eeError::NeedsPassword
                )
            }
            _ => false,
        }
    }
}

/// A bot that is done, to be shown and committed.
pub struct Finished {
    pub record: InstanceRecord,
    pub sync_token: Option<String>,
    pub key: RecoveryKey,
}

/// What an earlier attempt did, for the plan.
pub fn describe_progress(progress: &SetupProgress) -> String {
    if progress.recovery_key.is_some() {
        "resuming: set up, recovery key not yet shown".into()
    } else if progress.access_token.is_some() {
        format!("resuming: device {} exists", progress.device_id)
    } else {
        format!("resuming: not logged in yet (device {} reserved)", progress.device_id)
    }
}

pub async fn set_up(config: &Config, layout: &Layout, db: &Database, id: &str) -> Result<Finished, InstanceSetupError> {
    let instance = &config.instances[id];
    let (_, homeserver) = config.homeserver_of(instance).expect("validated: the instance has a homeserver");
    let store_dir = layout.store_dir(id);
    let earlier = match db.setup_progress(id).await? {
        Some(progress) if progress.user_id != instance.user && progress.access_token.is_none() => {
            // The earlier attempt never logged in (a mistyped user, say): nothing of it is on the homeserver.
            tracing::info!(instance = %id, earlier = %progress.user_id, "the user changed before any login; starting over");
            db.discard_setup_progress(id).await?;
            None
        }
        Some(progress) if progress.user_id != instance.user => {
            return Err(InstanceSetupError::UserChangedSinceLastAttempt {
                recorded: progress.user_id,
                configured: instance.user.clone(),
            });
        }
        other => other,
    };
    let resumed = earlier.is_some();
    let mut progress = match earlier {
        Some(progress) => {
            tracing::info!(instance = %id, progress = %describe_progress(&progress), "resuming an unfinished setup");
            progress
        }
        None => begin(db, id, instance, homeserver, &store_dir).await?,
    };
    if resumed
        && !progress.adopted
        && let Some(token) = progress.access_token.clone()
        && !token_is_valid(&progress.homeserver_url, &token).await?
    {
        // The device of the earlier attempt was logged out meanwhile (the homeserver deleted it and its keys): a
        // new device, with a new store. The old store is moved aside, not deleted: it holds whatever private
        // keys that attempt made.
        let aside = store_dir.with_file_name(format!("store.logged-out-{}", now_unix()));
        if store_dir.exists() {
            std::fs::rename(&store_dir, &aside).map_err(crate::state::io(&aside))?;
        }
        tracing::warn!(
            instance = %id,
            device = %progress.device_id,
            old_store = %aside.display(),
            "the device of the unfinished setup was logged out; logging in again with a new device"
        );
        progress.device_id = generate_device_id();
        progress.access_token = None;
        progress.refresh_token = None;
        db.save_setup_progress(&progress).await?;
    }
    if let Some(store_device) = client::store_device(id, &store_dir).await?
        && store_device != progress.device_id
    {
        return Err(InstanceSetupError::StoreOfAnotherDevice {
            path: store_dir,
            store_device,
            device: progress.device_id.clone(),
        });
    }
    let client = client::build(&homeserver.url, &store_dir).await?;
    if progress.access_token.is_none() {
        log_in(config, db, id, instance, &client, &mut progress, resumed).await?;
    } else {
        client.restore_session(client::session_of(&record_of(id, &progress))?).await.map_err(ClientError::from)?;
    }
    let record = record_of(id, &progress);

    // The first sync uploads the device keys and marks the position `run` starts from: what was said in the
    // bot's rooms before setup is history, not commands.
    let response =
        client.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.map_err(InstanceSetupError::Sync)?;
    let password = instance.password.as_ref().map(|p| p.expose().to_owned()).or(progress.generated_password.clone());
    e2ee::ensure_cross_signing(&client, password.as_deref()).await?;
    let key = match progress.recovery_key.clone() {
        Some(key) => key,
        None => {
            let key = e2ee::enable_recovery(&client).await?;
            progress.recovery_key = Some(key.clone());
            db.save_setup_progress(&progress).await?;
            key
        }
    };
    let record = InstanceRecord { ed25519_key: client.encryption().ed25519_key().await, ..record };
    Ok(Finished {
        key: RecoveryKey {
            instance: id.to_owned(),
            user_id: record.user_id.clone(),
            device_id: record.device_id.clone(),
            key,
        },
        record,
        sync_token: Some(response.next_batch),
    })
}

fn record_of(id: &str, progress: &SetupProgress) -> InstanceRecord {
    InstanceRecord {
        id: id.to_owned(),
        user_id: progress.user_id.clone(),
        device_id: progress.device_id.clone(),
        homeserver_url: progress.homeserver_url.clone(),
        access_token: progress.access_token.clone().unwrap_or_default(),
        refresh_token: progress.refresh_token.clone(),
        ed25519_key: None,
        created_at: now_unix(),
        generated_password: progress.generated_password.clone(),
    }
}

/// The first attempt: records the device id (and a generated password) before anything reaches the homeserver,
/// or adopts a configured access token.
async fn begin(
    db: &Database,
    id: &str,
    instance: &InstanceConfig,
    homeserver: &HomeserverConfig,
    store_dir: &Path,
) -> Result<SetupProgress, InstanceSetupError> {
    if store_dir.exists() {
        if client::store_device(id, store_dir).await?.is_some() {
            return Err(StateError::PartialState { path: store_dir.to_owned() }.into());
        }
        // A store without device keys holds nothing: what an older maubot's interrupted setup left.
        std::fs::remove_dir_all(store_dir).map_err(crate::state::io(store_dir))?;
    }
    let mut progress = SetupProgress {
        id: id.to_owned(),
        user_id: instance.user.clone(),
        device_id: generate_device_id(),
        homeserver_url: homeserver.url.clone(),
        generated_password: None,
        access_token: None,
        refresh_token: None,
        adopted: false,
        recovery_key: None,
        started_at: now_unix(),
    };
    if let Some(token) = &instance.access_token {
        let device_id = adopt_token(&homeserver.url, instance, token.expose()).await?;
        progress =
            SetupProgress { device_id, access_token: Some(token.expose().to_owned()), adopted: true, ..progress };
    } else if instance.password.is_none() {
        progress.generated_password = Some(generate_password());
    }
    db.save_setup_progress(&progress).await?;
    Ok(progress)
}

/// Registers the bot when its homeserver has a registration secret, then logs in with the recorded device id.
async fn log_in(
    config: &Config,
    db: &Database,
    id: &str,
    instance: &InstanceConfig,
    client: &Client,
    progress: &mut SetupProgress,
    resumed: bool,
) -> Result<(), InstanceSetupError> {
    let configured = instance.password.as_ref().map(|p| p.expose().to_owned());
    let generated = configured.is_none();
    let password = configured.or(progress.generated_password.clone()).expect("validated: a password or a secret");
    let registered = register_if_configured(config, instance, &password).await?;
    let login = client
        .matrix_auth()
        .login_username(&instance.user, &password)
        .device_id(&progress.device_id)
        .initial_device_display_name(&instance.device_name_or_default(id))
        .send()
        .await;
    let response = match login {
        Ok(response) => response,
        // The account was there before this setup registered anything, and it does not take the password setup
        // made up: it is someone's, with a password nobody configured.
        Err(e)
            if generated
                && !resumed
                && registered == Some(Registered::AlreadyExists)
                && e.as_client_api_error().is_some_and(|e| e.status_code.as_u16() == 403) =>
        {
            tracing::debug!(error = %e, "login with the generated password failed");
            return Err(InstanceSetupError::UserExistsWithoutPassword { user: instance.user.clone() });
        }
        Err(source) => return Err(InstanceSetupError::Login { user: instance.user.clone(), source }),
    };
    progress.device_id = response.device_id.to_string();
    progress.access_token = Some(response.access_token);
    progress.refresh_token = response.refresh_token;
    db.save_setup_progress(progress).await?;
    tracing::info!(instance = %id, device = %progress.device_id, "logged in");
    Ok(())
}

/// Registers the bot when its homeserver has a registration secret. `None` when there is nothing to register
/// with (the user must exist).
async fn register_if_configured(
    config: &Config,
    instance: &InstanceConfig,
    password: &str,
) -> Result<Option<Registered>, InstanceSetupError> {
    let (_, homeserver) = config.homeserver_of(instance).expect("validated");
    let shared_secret = homeserver.registration_shared_secret.as_ref().map(|s| s.expose());
    let token = homeserver.registration_token.as_ref().map(|s| s.expose());
    if shared_secret.is_none() && token.is_none() {
        return Ok(None);
    }
    let url = url::Url::parse(&homeserver.url).expect("validated URL");
    let localpart = instance.user.trim_start_matches('@').split(':').next().unwrap_or_default();
    let outcome = register::register(
        &reqwest::Client::new(),
        &Registration { homeserver: &url, localpart, password, shared_secret, token, admin: instance.server_admin },
    )
    .await?;
    match outcome {
        Registered::AlreadyExists if instance.server_admin => tracing::warn!(
            user = %instance.user,
            "the user exists already; logging in. `server_admin` applies only to a user setup registers: make it a \
             server admin on the homeserver if it is not one"
        ),
        Registered::AlreadyExists => tracing::info!(user = %instance.user, "the user exists already; logging in"),
        how => tracing::info!(user = %instance.user, method = ?how, "registered the bot user"),
    }
    Ok(Some(outcome))
}

fn generate_password() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}

/// `MAUBOT` and ten random upper-case letters and digits.
pub(super) fn generate_device_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let random: [u8; 10] = rand::random();
    let suffix: String = random.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    format!("MAUBOT{suffix}")
}

/// Whether the homeserver still takes `token` (`false` for an unknown or revoked one).
pub(super) async fn token_is_valid(homeserver: &str, token: &str) -> Result<bool, InstanceSetupError> {
    let response = whoami(homeserver, token).await?;
    match response.status().as_u16() {
        200 => Ok(true),
        401 => Ok(false),
        status => Err(InstanceSetupError::Whoami(format!("HTTP {status}"))),
    }
}

#[derive(Deserialize)]
struct Whoami {
    user_id: String,
    device_id: Option<String>,
}

/// `GET /account/whoami` with `token`.
pub(super) async fn whoami(homeserver: &str, token: &str) -> Result<reqwest::Response, InstanceSetupError> {
    let url = format!("{}/_matrix/client/v3/account/whoami", homeserver.trim_end_matches('/'));
    reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| InstanceSetupError::Whoami(e.to_string()))
}

/// Checks whose an existing access token is; returns its device id.
async fn adopt_token(homeserver: &str, instance: &InstanceConfig, token: &str) -> Result<String, InstanceSetupError> {
    let response = whoami(homeserver, token).await?;
    if !response.status().is_success() {
        return Err(InstanceSetupError::Whoami(format!("HTTP {}", response.status())));
    }
    let whoami: Whoami = response.json().await.map_err(|e| InstanceSetupError::Whoami(e.to_string()))?;
    if whoami.user_id != instance.user {
        return Err(InstanceSetupError::WrongUser { actual: whoami.user_id, configured: instance.user.clone() });
    }
    whoami.device_id.ok_or_else(|| InstanceSetupError::Whoami("the token has no device (an appservice token?)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_distinct_and_plain() {
        let a = generate_device_id();
        assert!(a.starts_with("MAUBOT") && a.len() == 16, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        assert_ne!(a, generate_device_id());
    }
}

//! `maubot setup`: creates the state `run` needs — one login, one device and one store per bot — and the E2EE
//! recovery keys the operator keeps. Refuses to touch existing state unless told exactly what to add.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use serde::Deserialize;

use crate::config::{Config, InstanceConfig};
use crate::matrix::client::{self, ClientError};
use crate::matrix::e2ee::{self, E2eeError};
use crate::matrix::register::{self, RegisterError, Registered, Registration};
use crate::state::db::now_unix;
use crate::state::staging::Staging;
use crate::state::{Database, InstanceRecord, Layout, StateError};

/// What to set up.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// Set up only these newly configured instances in existing state.
    pub add_instances: Vec<String>,
    /// Write the recovery keys to this file (mode 0400) instead of printing them.
    pub recovery_key_file: Option<PathBuf>,
}

/// A recovery key, shown once.
pub struct RecoveryKey {
    pub instance: String,
    pub user_id: String,
    pub device_id: String,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path} already exists; setup will not overwrite a recovery key file. Choose another path", path = .path.display())]
    RecoveryKeyFileExists { path: PathBuf },
    #[error("cannot write the recovery key file {path}: {source}", path = .path.display())]
    RecoveryKeyFile { path: PathBuf, source: std::io::Error },
    #[error("instance `{id}`: {source}")]
    Instance { id: String, source: Box<InstanceSetupError> },
}

impl SetupError {
    /// Whether the fix is in the config or the state (exit code 78) rather than elsewhere.
    pub fn is_config_or_state(&self) -> bool {
        match self {
            SetupError::State(_) | SetupError::RecoveryKeyFileExists { .. } => true,
            SetupError::Instance { source, .. } => matches!(
                **source,
                InstanceSetupError::UserExistsWithoutPassword { .. } | InstanceSetupError::WrongUser { .. }
            ),
            SetupError::RecoveryKeyFile { .. } => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceSetupError {
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
    #[error("the first sync failed: {0}")]
    Sync(matrix_sdk::Error),
    #[error(transparent)]
    E2ee(#[from] E2eeError),
}

/// Runs setup: a fresh state, or `--add-instance` into an existing one. Returns the recovery keys, which the
/// caller prints (unless they went to `recovery_key_file`).
pub async fn setup(config: &Config, options: &SetupOptions) -> Result<Vec<RecoveryKey>, SetupError> {
    if let Some(path) = &options.recovery_key_file
        && path.exists()
    {
        return Err(SetupError::RecoveryKeyFileExists { path: path.clone() });
    }
    let layout = Layout::new(config);
    if options.add_instances.is_empty() {
        setup_fresh(config, &layout, options).await
    } else {
        add_instances(config, &layout, options).await
    }
}

async fn setup_fresh(config: &Config, layout: &Layout, options: &SetupOptions) -> Result<Vec<RecoveryKey>, SetupError> {
    if layout.database().exists() {
        return Err(StateError::AlreadySetUp { path: layout.database() }.into());
    }
    if layout.instances_dir().exists() {
        return Err(StateError::PartialState { path: layout.instances_dir() }.into());
    }
    let staging = Staging::new(layout)?;
    let ids: Vec<&String> = config.instances.keys().collect();
    let done = create_instances(config, staging.layout(), &ids).await?;
    let recorded = Database::create(&staging.layout().database())
        .and_then(|db| done.0.iter().try_for_each(|made| db.insert_instance(&made.record, made.sync_token.as_deref())));
    if let Err(e) = recorded {
        done.discard().await;
        return Err(e.into());
    }
    let keys = done.keys();
    write_key_file(options, &keys)?;
    if let Err(e) = staging.commit_fresh(layout) {
        remove_key_file(options);
        done.discard().await;
        return Err(e.into());
    }
    tracing::info!(instances = ids.len(), state_dir = %layout.root().display(), "setup complete");
    Ok(keys)
}

async fn add_instances(
    config: &Config,
    layout: &Layout,
    options: &SetupOptions,
) -> Result<Vec<RecoveryKey>, SetupError> {
    let db = crate::state::open(layout)?;
    for id in &options.add_instances {
        if !config.instances.contains_key(id) {
            return Err(StateError::InstanceNotConfigured { id: id.clone() }.into());
        }
        if db.instance(id)?.is_some() {
            return Err(StateError::InstanceAlreadySetUp { id: id.clone() }.into());
        }
        if layout.instance_dir(id).exists() {
            return Err(StateError::PartialState { path: layout.instance_dir(id) }.into());
        }
    }
    let staging = Staging::new(layout)?;
    let ids: Vec<&String> = options.add_instances.iter().collect();
    let done = create_instances(config, staging.layout(), &ids).await?;
    let keys = done.keys();
    write_key_file(options, &keys)?;
    // Each row is written only once its store is in place: the row is the commit point.
    for made in &done.0 {
        let committed = staging
            .commit_instance(layout, &made.record.id)
            .and_then(|()| db.insert_instance(&made.record, made.sync_token.as_deref()));
        if let Err(e) = committed {
            remove_key_file(options);
            return Err(e.into());
        }
    }
    staging.finish()?;
    tracing::info!(instances = ?options.add_instances, "instances added");
    Ok(keys)
}

struct Made {
    record: InstanceRecord,
    sync_token: Option<String>,
    recovery_key: String,
    client: Client,
    /// Whether setup created the device (and may delete it again on failure).
    created_device: bool,
}

struct MadeAll(Vec<Made>);

impl MadeAll {
    fn keys(&self) -> Vec<RecoveryKey> {
        self.0
            .iter()
            .map(|m| RecoveryKey {
                instance: m.record.id.clone(),
                user_id: m.record.user_id.clone(),
                device_id: m.record.device_id.clone(),
                key: m.recovery_key.clone(),
            })
            .collect()
    }

    /// Deletes the devices setup created (their state is being thrown away).
    async fn discard(self) {
        for made in self.0 {
            discard_device(&made.client, made.created_device).await;
        }
    }
}

async fn discard_device(client: &Client, created_device: bool) {
    if created_device && let Err(e) = client.logout().await {
        tracing::warn!(error = %e, "could not delete the device of a failed setup; remove it with another client");
    }
}

async fn create_instances(config: &Config, layout: &Layout, ids: &[&String]) -> Result<MadeAll, SetupError> {
    let mut done = MadeAll(Vec::new());
    for id in ids {
        let instance = &config.instances[id.as_str()];
        let store_dir = layout.store_dir(id);
        if let Err(e) = crate::state::create_private_dir(&store_dir) {
            done.discard().await;
            return Err(e.into());
        }
        match create_instance(config, id, instance, &store_dir).await {
            Ok(made) => {
                tracing::info!(instance = %id, user = %made.record.user_id, device = %made.record.device_id, "bot set up");
                done.0.push(made);
            }
            Err((source, client)) => {
                if let Some((client, created)) = client {
                    discard_device(&client, created).await;
                }
                done.discard().await;
                return Err(SetupError::Instance { id: id.to_string(), source: Box::new(source) });
            }
        }
    }
    Ok(done)
}

type Failed = (InstanceSetupError, Option<(Client, bool)>);

async fn create_instance(
    config: &Config,
    id: &str,
    instance: &InstanceConfig,
    store_dir: &Path,
) -> Result<Made, Failed> {
    let (_, homeserver) = config.homeserver_of(instance).expect("validated: the instance has a homeserver");
    let client = client::build(&homeserver.url, store_dir).await.map_err(|e| (e.into(), None))?;
    let password = instance.password.as_ref().map(|p| p.expose().to_owned());

    let (created_device, password) = if let Some(token) = &instance.access_token {
        adopt_token(&client, &homeserver.url, instance, token.expose()).await.map_err(|e| (e, None))?;
        (false, password)
    } else {
        let password = register_if_configured(config, instance, password).await.map_err(|e| (e, None))?;
        client
            .matrix_auth()
            .login_username(&instance.user, &password)
            .initial_device_display_name(&instance.device_name_or_default(id))
            .send()
            .await
            .map_err(|source| (InstanceSetupError::Login { user: instance.user.clone(), source }, None))?;
        (true, Some(password))
    };
    let fail = |e: InstanceSetupError| (e, Some((client.clone(), created_device)));

    // The first sync uploads the device keys and marks the position `run` starts from: what was said in the
    // bot's rooms before setup is history, not commands.
    let response = client
        .sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await
        .map_err(|e| fail(InstanceSetupError::Sync(e)))?;
    let recovery_key = e2ee::bootstrap(&client, password.as_deref()).await.map_err(|e| fail(e.into()))?;

    let session = client.matrix_auth().session().expect("logged in");
    let record = InstanceRecord {
        id: id.to_owned(),
        user_id: session.meta.user_id.to_string(),
        device_id: session.meta.device_id.to_string(),
        homeserver_url: homeserver.url.clone(),
        access_token: session.tokens.access_token.clone(),
        refresh_token: session.tokens.refresh_token.clone(),
        ed25519_key: client.encryption().ed25519_key().await,
        created_at: now_unix(),
    };
    Ok(Made { record, sync_token: Some(response.next_batch), recovery_key, client, created_device })
}

/// Registers the bot when its homeserver has a registration secret; returns the password to log in with.
async fn register_if_configured(
    config: &Config,
    instance: &InstanceConfig,
    password: Option<String>,
) -> Result<String, InstanceSetupError> {
    let (_, homeserver) = config.homeserver_of(instance).expect("validated");
    let shared_secret = homeserver.registration_shared_secret.as_ref().map(|s| s.expose());
    let token = homeserver.registration_token.as_ref().map(|s| s.expose());
    if shared_secret.is_none() && token.is_none() {
        return Ok(password.expect("validated: password, access token or a registration secret"));
    }
    let login_password = password.clone().unwrap_or_else(generate_password);
    let url = url::Url::parse(&homeserver.url).expect("validated URL");
    let localpart = instance.user.trim_start_matches('@').split(':').next().unwrap_or_default();
    let http = reqwest::Client::new();
    let outcome = register::register(
        &http,
        &Registration { homeserver: &url, localpart, password: &login_password, shared_secret, token },
    )
    .await?;
    match outcome {
        Registered::AlreadyExists if password.is_none() => {
            Err(InstanceSetupError::UserExistsWithoutPassword { user: instance.user.clone() })
        }
        Registered::AlreadyExists => {
            tracing::info!(user = %instance.user, "the user exists already; logging in with the configured password");
            Ok(login_password)
        }
        how => {
            tracing::info!(user = %instance.user, method = ?how, "registered the bot user");
            Ok(login_password)
        }
    }
}

fn generate_password() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}

#[derive(Deserialize)]
struct Whoami {
    user_id: String,
    device_id: Option<String>,
}

/// Adopts an existing access token: asks the homeserver whose token it is and restores that session.
async fn adopt_token(
    client: &Client,
    homeserver: &str,
    instance: &InstanceConfig,
    token: &str,
) -> Result<(), InstanceSetupError> {
    let url = format!("{}/_matrix/client/v3/account/whoami", homeserver.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| InstanceSetupError::Whoami(e.to_string()))?;
    if !response.status().is_success() {
        return Err(InstanceSetupError::Whoami(format!("HTTP {}", response.status())));
    }
    let whoami: Whoami = response.json().await.map_err(|e| InstanceSetupError::Whoami(e.to_string()))?;
    if whoami.user_id != instance.user {
        return Err(InstanceSetupError::WrongUser { actual: whoami.user_id, configured: instance.user.clone() });
    }
    let device_id = whoami
        .device_id
        .ok_or_else(|| InstanceSetupError::Whoami("the token has no device (an appservice token?)".into()))?;
    let record = InstanceRecord {
        id: String::new(),
        user_id: whoami.user_id,
        device_id,
        homeserver_url: homeserver.to_owned(),
        access_token: token.to_owned(),
        refresh_token: None,
        ed25519_key: None,
        created_at: 0,
    };
    let session = client::session_of(&record)?;
    client.restore_session(session).await.map_err(|e| InstanceSetupError::Client(e.into()))
}

fn write_key_file(options: &SetupOptions, keys: &[RecoveryKey]) -> Result<(), SetupError> {
    let Some(path) = &options.recovery_key_file else {
        return Ok(());
    };
    let error = |source| SetupError::RecoveryKeyFile { path: path.clone(), source };
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(path).map_err(error)?;
    let mut text = String::from("# maubot E2EE recovery keys: instance, user, device, key. Keep this safe.\n");
    for key in keys {
        text.push_str(&format!("{} {} {} {}\n", key.instance, key.user_id, key.device_id, key.key));
    }
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(error)
}

fn remove_key_file(options: &SetupOptions) {
    if let Some(path) = &options.recovery_key_file {
        let _ = std::fs::remove_file(path);
    }
}

//! Matrix clients for bot instances: one SQLite store per bot, sessions restored from the database, and the
//! store check that keeps `run` from ever creating new device keys for an existing device.

use std::path::Path;
use std::time::Duration;

use matrix_sdk::config::RequestConfig;

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::StoreConfig;
use matrix_sdk::cross_process_lock::CrossProcessLockConfig;
use matrix_sdk::encryption::{BackupDownloadStrategy, EncryptionSettings};
use matrix_sdk::ruma::{OwnedDeviceId, OwnedUserId};
use matrix_sdk::store::{StateStoreDataKey, StateStoreDataValue};
use matrix_sdk::{Client, SessionMeta, SessionTokens, SqliteCryptoStore, SqliteStateStore, SqliteStoreConfig};
use matrix_sdk_base::crypto::store::CryptoStore;

use crate::state::{CRYPTO_STORE_FILE, InstanceRecord, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot create the Matrix client for {homeserver}: {source}")]
    Build { homeserver: String, source: Box<matrix_sdk::ClientBuildError> },
    #[error("cannot create the HTTP client: {0}")]
    Http(String),
    #[error("the recorded session is malformed ({what}); restore the state from a backup")]
    BadSession { what: &'static str },
    #[error(transparent)]
    Matrix(#[from] matrix_sdk::Error),
}

/// SQLite settings for one bot's stores. A bot sees a trickle of events, not a user's whole account: two
/// connections per database (one writer, one reader; matrix-sdk's minimum) instead of four per CPU core, and a
/// 16 KiB page cache per connection instead of 2 MiB (the files stay in the kernel's page cache anyway).
/// Measured in docs/benchmark.md.
pub fn store_config(store_dir: &Path) -> SqliteStoreConfig {
    SqliteStoreConfig::new(store_dir).pool_max_size(2).cache_size(16 * 1024).journal_size_limit(2 * 1024 * 1024)
}

/// Idle connections kept per homeserver, beyond those in use (every bot's long poll holds one).
const IDLE_CONNECTIONS_PER_HOMESERVER: usize = 8;

/// One HTTP client for every bot in the process: one TLS configuration and root store, one connection pool
/// (bots on the same homeserver reuse connections), instead of one of each per bot. Settings as matrix-sdk's own.
pub(crate) fn shared_http_client() -> Result<reqwest::Client, ClientError> {
    static SHARED: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = SHARED.get() {
        return Ok(client.clone());
    }
    let client = reqwest::Client::builder()
        .user_agent(concat!("maubot/", env!("CARGO_PKG_VERSION")))
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .timeout(Duration::from_secs(30))
        // Each bot holds one connection in its long poll; what start-up and bursts open beyond that is kept
        // idle only up to a few per homeserver (about 30 KiB of buffers each), not all of it for 90 s.
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOMESERVER)
        .build()
        .map_err(|e| ClientError::Http(e.to_string()))?;
    Ok(SHARED.get_or_init(|| client).clone())
}

/// The stores of a bot in `store_dir`: what must survive a restart (the state store: rooms, members, the sync
/// position matrix-sdk keeps; the crypto store: the device's keys and sessions) in SQLite; the event cache and the
/// media cache in memory, as matrix-sdk's default `StoreConfig` has them. A bot never subscribes to the event cache
/// and never downloads media through the cache, so on disk they were two more databases per bot (four SQLite
/// connections, about 80 KiB of heap each bot, measured in docs/benchmark.md) holding nothing. One process uses a
/// store (the instance lock, `instances/<id>/lock`, says which), so matrix-sdk's cross-process lease lock is off.
async fn stores(store_dir: &Path) -> Result<StoreConfig, matrix_sdk::ClientBuildError> {
    let config = store_config(store_dir);
    let (state, crypto) =
        tokio::try_join!(SqliteStateStore::open_with_config(&config), SqliteCryptoStore::open_with_config(&config))?;
    Ok(StoreConfig::new(CrossProcessLockConfig::SingleProcess).state_store(state).crypto_store(crypto))
}

/// A client whose stores live in `store_dir`. Builds no network connection.
pub async fn build(homeserver_url: &str, store_dir: &Path) -> Result<Client, ClientError> {
    let build_error = |source| ClientError::Build { homeserver: homeserver_url.to_owned(), source: Box::new(source) };
    Client::builder()
        .homeserver_url(homeserver_url)
        // The configured URL is the one to use (often loopback, past the reverse proxy that the homeserver's
        // public base URL names): a login's `well_known` never replaces it.
        .respect_login_well_known(false)
        .http_client(shared_http_client()?)
        // Let failures reach our own loop (which honours Retry-After and escalates to the supervisor) instead of
        // matrix-sdk's default of retrying for up to 15 minutes.
        .request_config(RequestConfig::new().retry_limit(3).max_retry_time(Duration::from_secs(30)))
        .store_config(stores(store_dir).await.map_err(build_error)?)
        .cross_process_store_config(CrossProcessLockConfig::SingleProcess)
        .with_encryption_settings(EncryptionSettings {
            // Cross-signing is bootstrapped explicitly by `setup`, never implicitly.
            auto_enable_cross_signing: false,
            backup_download_strategy: BackupDownloadStrategy::AfterDecryptionFailure,
            auto_enable_backups: false,
        })
        .build()
        .await
        .map_err(build_error)
}

/// The session `setup` recorded, in matrix-sdk's form.
pub fn session_of(record: &InstanceRecord) -> Result<MatrixSession, ClientError> {
    let user_id =
        OwnedUserId::try_from(record.user_id.as_str()).map_err(|_| ClientError::BadSession { what: "user id" })?;
    let device_id = OwnedDeviceId::from(record.device_id.as_str());
    Ok(MatrixSession {
        meta: SessionMeta { user_id, device_id },
        tokens: SessionTokens {
            access_token: record.access_token.clone(),
            refresh_token: record.refresh_token.clone(),
        },
    })
}

/// The user and device whose E2EE account `store_dir` holds, without network access and without creating
/// anything: `None` when there is no crypto store or it holds no account.
async fn store_account(id: &str, store_dir: &Path) -> Result<Option<(String, String)>, StateError> {
    let unreadable =
        |e: &dyn std::fmt::Display| StateError::StoreUnreadable { id: id.to_owned(), message: e.to_string() };
    if !crypto_file_exists(id, &store_dir.join(CRYPTO_STORE_FILE))? {
        return Ok(None);
    }
    // Opening the store with matrix-sdk migrates it (and would use one a newer matrix-sdk wrote): its version is
    // checked, and a copy taken, before that.
    super::store_versions::check(id, store_dir)?;
    let store = SqliteCryptoStore::open_with_config(&store_config(store_dir)).await.map_err(|e| unreadable(&e))?;
    let account = store.load_account().await.map_err(|e| unreadable(&e))?;
    Ok(account.map(|a| (a.user_id().to_string(), a.device_id().to_string())))
}

/// Whether the crypto store file exists: `false` only when it does not; a file that cannot be looked at
/// (permission denied, say) is an error that says so, never "missing".
fn crypto_file_exists(id: &str, file: &Path) -> Result<bool, StateError> {
    match std::fs::metadata(file) {
        Ok(meta) if meta.is_file() => Ok(true),
        Ok(_) => {
            Err(StateError::StoreUnreadable { id: id.to_owned(), message: format!("{} is not a file", file.display()) })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StateError::StoreUnreadable { id: id.to_owned(), message: format!("{}: {e}", file.display()) }),
    }
}

/// The device whose keys `store_dir` holds, if any (for `setup` of instance `id`, which creates the store).
pub async fn store_device(id: &str, store_dir: &Path) -> Result<Option<String>, StateError> {
    Ok(store_account(id, store_dir).await?.map(|(_, device)| device))
}

/// Checks, without network access and without creating anything, that `store_dir` holds the E2EE account of
/// the recorded session. A missing, empty or foreign store is an error: restoring a session onto it would make
/// matrix-sdk create and upload new keys for an existing device.
pub async fn verify_store(record: &InstanceRecord, store_dir: &Path) -> Result<(), StateError> {
    let id = record.id.clone();
    let crypto_file = store_dir.join(CRYPTO_STORE_FILE);
    if !crypto_file_exists(&id, &crypto_file)? {
        return Err(StateError::StoreMissing { id, path: crypto_file });
    }
    let Some((store_user, store_device)) = store_account(&id, store_dir).await? else {
        return Err(StateError::StoreEmpty { id, path: crypto_file });
    };
    if store_user != record.user_id || store_device != record.device_id {
        return Err(StateError::StoreMismatch {
            id,
            store_user,
            store_device,
            session_user: record.user_id.clone(),
            session_device: record.device_id.clone(),
        });
    }
    Ok(())
}

/// Makes matrix-sdk's own sync position equal to the host's before the session is restored.
///
/// matrix-sdk drops a sync response whose `next_batch` equals the position it stored last. After a crash in
/// the middle of handling a batch, the host syncs again from its older position and the homeserver answers
/// with that same `next_batch`: without this, the re-delivered events would be silently dropped.
pub async fn align_sync_position(client: &Client, position: Option<&str>) -> Result<(), ClientError> {
    let store = client.state_store();
    match position {
        Some(token) => {
            store.set_kv_data(StateStoreDataKey::SyncToken, StateStoreDataValue::SyncToken(token.to_owned())).await
        }
        None => store.remove_kv_data(StateStoreDataKey::SyncToken).await,
    }
    .map_err(|e| ClientError::Matrix(e.into()))
}

/// A client for a set-up instance with its session restored. No network access: the store must have been
/// checked with [`verify_store`] first.
pub async fn restore(
    homeserver_url: &str,
    store_dir: &Path,
    record: &InstanceRecord,
    sync_position: Option<&str>,
) -> Result<Client, ClientError> {
    let client = build(homeserver_url, store_dir).await?;
    align_sync_position(&client, sync_position).await?;
    client.restore_session(session_of(record)?).await?;
    Ok(client)
}

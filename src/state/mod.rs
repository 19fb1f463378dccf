//! Bot state on disk: `setup` creates it, `run` opens it and never creates it.
//!
//! ```text
//! <state_dir>/            mode 0700
//!   maubot.db             sessions, sync positions, handled events (schema-versioned)
//!   instances/<id>/store/ the bot's own matrix-sdk SQLite stores (state, crypto, event cache)
//! ```
//!
//! `setup` builds everything in `<state_dir>/.setup-*` and moves it into place at the end; the database appears
//! last, so a failed or interrupted setup leaves no state that `run` would accept.

pub mod db;
pub mod staging;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use db::{Database, InstanceRecord};

use crate::config::Config;

/// The file matrix-sdk keeps the E2EE keys in, inside a store directory.
pub const CRYPTO_STORE_FILE: &str = "matrix-sdk-crypto.sqlite3";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {path} does not exist. Run `maubot setup` to create the bot logins and stores, or restore \
         a backup of it; `run` never creates state",
        path = .path.display()
    )]
    StateDirMissing { path: PathBuf },
    #[error(
        "no database at {path}: this state directory was never set up. Run `maubot setup`, or restore a backup",
        path = .path.display()
    )]
    DatabaseMissing { path: PathBuf },
    #[error("{path} is not a maubot database (no schema version); restore a backup or move it away and run `maubot setup`", path = .path.display())]
    NotADatabase { path: PathBuf },
    #[error(
        "database {path} has schema version {found} and needs maubot with schema >= {compat}, but this maubot knows \
         {supported}. This happens after a rollback (`nixos-rebuild --rollback`) past an incompatible upgrade: \
         switch back to the newer generation, or restore the backup taken before the upgrade",
        path = .path.display()
    )]
    SchemaTooNew { path: PathBuf, found: u32, compat: u32, supported: u32 },
    #[error("database {path}: {source}", path = .path.display())]
    Database { path: PathBuf, source: rusqlite::Error },
    #[error(
        "state already exists ({path}); setup changes nothing. To set up a newly configured instance run \
         `maubot setup --add-instance ID`; to start over, stop the service and move the state directory away",
        path = .path.display()
    )]
    AlreadySetUp { path: PathBuf },
    #[error(
        "{path} exists but there is no database beside it: partial state (an interrupted setup, or a lost \
         database). Restore a backup, or move it away and run `maubot setup` again",
        path = .path.display()
    )]
    PartialState { path: PathBuf },
    #[error(
        "instance `{id}` is configured but was never set up (no session in {db}). Run `maubot setup --add-instance \
         {id}`, or disable it",
        db = .db.display()
    )]
    InstanceNotSetUp { id: String, db: PathBuf },
    #[error("instance `{id}` is already set up; nothing changed. To redo it, remove it from the state first")]
    InstanceAlreadySetUp { id: String },
    #[error("`{id}` is not a configured instance; add `instances.{id}` to the config first")]
    InstanceNotConfigured { id: String },
    #[error(
        "instance `{id}`: the E2EE store {path} is missing. Restore it from a backup (the session alone cannot be \
         used: a new store would create new device keys and break encrypted rooms)",
        path = .path.display()
    )]
    StoreMissing { id: String, path: PathBuf },
    #[error(
        "instance `{id}`: the E2EE store holds no device keys ({path}). Restore it from a backup; `run` will not \
         create new keys for an existing device",
        path = .path.display()
    )]
    StoreEmpty { id: String, path: PathBuf },
    #[error(
        "instance `{id}`: the E2EE store belongs to {store_user} device {store_device}, but the session is for \
         {session_user} device {session_device}. The store and the database do not match (mixed backups?): restore \
         both from the same backup"
    )]
    StoreMismatch { id: String, store_user: String, store_device: String, session_user: String, session_device: String },
    #[error("instance `{id}`: cannot open the E2EE store: {message}")]
    StoreUnreadable { id: String, message: String },
    #[error(
        "instance `{id}` was set up as {recorded} but the config now says {configured}. Change the config back, or \
         set up the new user as a new instance id"
    )]
    UserChanged { id: String, recorded: String, configured: String },
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_owned(), source }
}

/// Where things live under a state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    database: PathBuf,
}

impl Layout {
    pub fn new(config: &Config) -> Self {
        Layout { root: config.state_dir.clone(), database: config.database.clone() }
    }

    /// The same layout rooted elsewhere (a staging directory).
    pub fn rebased(&self, root: &Path) -> Self {
        let relative = self.database.strip_prefix(&self.root).unwrap_or(&self.database).to_owned();
        Layout { root: root.to_owned(), database: relative }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn database(&self) -> PathBuf {
        self.root.join(&self.database)
    }

    pub fn instances_dir(&self) -> PathBuf {
        self.root.join("instances")
    }

    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.instances_dir().join(id)
    }

    pub fn store_dir(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("store")
    }
}

/// Opens existing state for `run`: the directory and database must exist. Creates nothing.
pub fn open(layout: &Layout) -> Result<Database, StateError> {
    if !layout.root().is_dir() {
        return Err(StateError::StateDirMissing { path: layout.root().to_owned() });
    }
    let mode = std::fs::metadata(layout.root()).map_err(io(layout.root()))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %layout.root().display(),
            mode = format!("{mode:o}"),
            "the state directory is readable by others; it holds access tokens and E2EE keys (chmod 700 it)"
        );
    }
    Database::open(&layout.database())
}

/// Creates a directory (and parents) and sets mode 0700 on it.
pub fn create_private_dir(path: &Path) -> Result<(), StateError> {
    std::fs::create_dir_all(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io(path))
}

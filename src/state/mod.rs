//! Bot state on disk: `setup` creates it, `run` opens it and never creates it.
//!
//! ```text
//! <state_dir>/              mode 0700
//!   maubot.db               sessions, sync positions, handled events, outbox, setup progress (schema-versioned)
//!   maubot.lock             held by `run` (flock): one host per state directory
//!   instances/<id>/store/   the bot's own matrix-sdk SQLite stores (state, crypto, event cache)
//!   instances/<id>/lock     held by whoever uses that store (`run`'s instance task, or `setup`)
//! ```
//!
//! The database is created first (an empty host state), then each instance is set up on its own: its progress
//! is recorded before every step that creates something on the homeserver, and its record replaces that
//! progress in one transaction when it is done (see `src/setup/`). `run` uses only recorded instances.

pub mod db;
pub mod lock;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use db::{Database, InstanceRecord};
pub use lock::StateLock;

use crate::config::Config;

/// The file matrix-sdk keeps the E2EE keys in, inside a store directory.
pub const CRYPTO_STORE_FILE: &str = "matrix-sdk-crypto.sqlite3";
/// The file matrix-sdk keeps rooms, members and its sync position in, inside a store directory.
pub const STATE_STORE_FILE: &str = "matrix-sdk-state.sqlite3";

static SETUP_COMMAND: OnceLock<String> = OnceLock::new();

/// How operators run setup where this process runs: `maubot setup`, or what `host.setup_command` says (the
/// NixOS module sets `maubot-setup`, its wrapper that runs setup under the service's sandbox).
pub fn setup_command() -> &'static str {
    SETUP_COMMAND.get().map(String::as_str).unwrap_or("maubot setup")
}

/// Sets what [`setup_command`] says (once, from the config).
pub fn set_setup_command(command: &str) {
    let _ = SETUP_COMMAND.set(command.to_owned());
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {path} does not exist. Run `{cmd}` to create the bot logins and stores, or restore a \
         backup of it; `run` never creates state",
        path = .path.display(), cmd = setup_command()
    )]
    StateDirMissing { path: PathBuf },
    #[error(
        "no database at {path}: this state directory was never set up. Run `{cmd}`, or restore a backup",
        path = .path.display(), cmd = setup_command()
    )]
    DatabaseMissing { path: PathBuf },
    #[error("{path} is not a maubot database (no schema version); restore a backup or move it away and run `{cmd}`", path = .path.display(), cmd = setup_command())]
    NotADatabase { path: PathBuf },
    #[error(
        "database {path} has schema version {found} and needs maubot with schema >= {compat}, but this maubot knows \
         {supported}. This happens after a rollback (`nixos-rebuild --rollback`) past an incompatible upgrade: \
         switch back to the newer generation, or restore {backups}",
        path = .path.display()
    )]
    SchemaTooNew { path: PathBuf, found: u32, compat: u32, supported: u32, backups: String },
    #[error("database {path}: {source}", path = .path.display())]
    Database { path: PathBuf, source: rusqlite::Error },
    #[error("database {path}: its thread stopped", path = .path.display())]
    DatabaseClosed { path: PathBuf },
    #[error("state already exists ({path})", path = .path.display())]
    AlreadySetUp { path: PathBuf },
    #[error(
        "{path} holds files that are not maubot state ({entries}); setup uses only a new or empty directory, so that \
         it never takes over another service's data. Point `state_dir` at a directory of its own",
        path = .path.display()
    )]
    ForeignDirectory { path: PathBuf, entries: String },
    #[error("{path} is not a directory", path = .path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} is in use by another maubot ({holder}). One process per state directory (and per bot store): \
         stop the other one first",
        path = .path.display()
    )]
    Locked { path: PathBuf, holder: String },
    #[error(
        "{path} exists but the database records neither the instance nor its setup (a copy from elsewhere, or what \
         an older maubot's interrupted setup left). It holds E2EE keys: restore the matching database, or move it \
         away and run `{cmd}` again",
        path = .path.display(), cmd = setup_command()
    )]
    PartialState { path: PathBuf },
    #[error(
        "instance `{id}` is configured but was never set up (no session in {db}). Run `{cmd} --add-instance {id}`, \
         or disable it",
        db = .db.display(), cmd = setup_command()
    )]
    InstanceNotSetUp { id: String, db: PathBuf },
    #[error("`{id}` is not a configured instance; add `instances.{id}` to the config first")]
    InstanceNotConfigured { id: String },
    #[error(
        "instance `{id}`: the E2EE store {path} is missing. Restore it from a backup, or recover the bot with the key \
         setup printed: `{cmd} --recover {id}` (a new device that gets the identity and message keys back). The \
         session alone cannot be used: a new store would create new keys for an existing device",
        path = .path.display(), cmd = setup_command()
    )]
    StoreMissing { id: String, path: PathBuf },
    #[error(
        "instance `{id}`: the E2EE store holds no device keys ({path}). Restore it from a backup, or recover the bot \
         with the key setup printed: `{cmd} --recover {id}`; `run` will not create new keys for an existing device",
        path = .path.display(), cmd = setup_command()
    )]
    StoreEmpty { id: String, path: PathBuf },
    #[error(
        "instance `{id}`: the E2EE store belongs to {store_user} device {store_device}, but the session is for \
         {session_user} device {session_device}. The store and the database do not match (mixed backups?): restore \
         both from the same backup"
    )]
    StoreMismatch { id: String, store_user: String, store_device: String, session_user: String, session_device: String },
    #[error(
        "instance `{id}`: the store {path} is at version {found}, written by a newer matrix-sdk than this maubot's \
         (which knows {known}): a rollback past an upgrade. This bot stays stopped so that its store is not damaged; \
         the others run. Switch back to the newer generation, or stop maubot and restore {backups}",
        path = .path.display()
    )]
    StoreTooNew { id: String, path: PathBuf, found: u8, known: u8, backups: String },
    #[error("instance `{id}`: cannot open the E2EE store: {message}")]
    StoreUnreadable { id: String, message: String },
    #[error(
        "instance `{id}` was set up as {recorded} but the config now says {configured}. Change the config back, or \
         set up the new user as a new instance id"
    )]
    UserChanged { id: String, recorded: String, configured: String },
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{message}; nothing was migrated. Free space or fix the permissions, then start again")]
    MigrationBackup { message: String },
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

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn database(&self) -> PathBuf {
        self.root.join(&self.database)
    }

    pub fn host_lock(&self) -> PathBuf {
        self.root.join("maubot.lock")
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

    /// The plugin's private directory (files it keeps across restarts).
    pub fn plugin_data_dir(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("data")
    }

    /// The plugin's own database (opened only for plugins that use one).
    pub fn plugin_database(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("plugin.db")
    }

    pub fn instance_lock(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("lock")
    }
}

/// What `run` holds while it uses a state directory.
pub struct Opened {
    pub db: Database,
    /// Released when dropped (or when the process ends).
    pub lock: StateLock,
}

/// Opens existing state for `run`: the directory and database must exist, and no other `run` may use them.
/// Creates nothing in a directory that holds no state, and writes nothing to a database it refuses.
pub fn open(layout: &Layout) -> Result<Opened, StateError> {
    let meta = match std::fs::metadata(layout.root()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StateError::StateDirMissing { path: layout.root().to_owned() });
        }
        // Permission denied, a symlink loop...: said as what it is, never as "does not exist".
        Err(e) => return Err(io(layout.root())(e)),
        Ok(meta) if !meta.is_dir() => return Err(StateError::NotADirectory { path: layout.root().to_owned() }),
        Ok(meta) => meta,
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %layout.root().display(),
            mode = format!("{mode:o}"),
            "the state directory is readable by others; it holds access tokens and E2EE keys (chmod 700 it)"
        );
    }
    db::Database::check(&layout.database())?;
    let lock = StateLock::acquire(&layout.host_lock(), "run")?;
    let db = Database::open(&layout.database())?;
    Ok(Opened { db, lock })
}

/// Readies the state directory for `setup`: creates it (mode 0700) when it does not exist, and otherwise accepts
/// only an empty directory or one that holds maubot state. Returns whether a database is there already.
pub fn prepare_for_setup(layout: &Layout) -> Result<bool, StateError> {
    let root = layout.root();
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_private_dir(root)?;
            return Ok(false);
        }
        Err(e) => return Err(io(root)(e)),
        Ok(meta) if !std::fs::metadata(root).map(|m| m.is_dir()).unwrap_or(meta.is_dir()) => {
            return Err(StateError::NotADirectory { path: root.to_owned() });
        }
        Ok(_) => {}
    }
    let has_database = layout.database().is_file();
    let ours = |name: &str| {
        name == "instances"
            || name == "maubot.lock"
            || name.starts_with(".setup-")
            || name.starts_with(".recovery-keys.")
            || name.starts_with("maubot.db")
    };
    let foreign: Vec<String> = std::fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !ours(name))
        .collect();
    if !has_database && !foreign.is_empty() {
        let mut shown: Vec<String> = foreign.iter().take(5).cloned().collect();
        if foreign.len() > 5 {
            shown.push(format!("and {} more", foreign.len() - 5));
        }
        return Err(StateError::ForeignDirectory { path: root.to_owned(), entries: shown.join(", ") });
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io(root))?;
    Ok(has_database)
}

/// Creates a directory (and parents) and sets mode 0700 on it.
pub fn create_private_dir(path: &Path) -> Result<(), StateError> {
    std::fs::create_dir_all(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(root: &Path) -> Layout {
        Layout { root: root.to_owned(), database: "maubot.db".into() }
    }

    #[test]
    fn setup_creates_a_new_directory_and_uses_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("state");
        assert!(!prepare_for_setup(&layout(&new)).unwrap());
        assert_eq!(std::fs::metadata(&new).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(!prepare_for_setup(&layout(&new)).unwrap(), "an empty directory is fine");
    }

    #[test]
    fn setup_refuses_a_directory_of_someone_else_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("postgresql");
        std::fs::create_dir(&other).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(other.join("PG_VERSION"), "16").unwrap();
        let err = prepare_for_setup(&layout(&other)).unwrap_err();
        assert!(matches!(err, StateError::ForeignDirectory { .. }), "{err}");
        assert!(err.to_string().contains("PG_VERSION"), "{err}");
        assert_eq!(std::fs::metadata(&other).unwrap().permissions().mode() & 0o777, 0o755, "mode changed");
        assert!(!other.join("maubot.db").exists());
    }

    #[test]
    fn run_refuses_an_empty_directory_and_creates_nothing_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = open(&layout(dir.path())).err().unwrap();
        assert!(matches!(err, StateError::DatabaseMissing { .. }), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

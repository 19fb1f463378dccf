//! `maubot backup` and `maubot restore`: the state directory (or one bot of it) as one archive, taken while the
//! bots run, and put back only where it cannot overwrite anything.
//!
//! A backup (`snapshot.rs`) copies each SQLite database through `VACUUM INTO` (a consistent snapshot, never a
//! raw file copy), the host database first, then every bot's stores, plugin database and private files, into a
//! staging directory beside the archive; the archive (`archive.rs`: a tar file, the manifest first, with every
//! file's SHA-256: `manifest.rs`) is written to a temporary file, mode 0600, synced and renamed into place.
//!
//! A restore reads the whole archive into a staging directory and checks it (format, versions, every file's
//! checksum, no path outside the state directory) before anything is written where the state goes: into an
//! empty state directory for a whole host, or, for one bot (`--instance`), into an existing state directory
//! that does not know that bot yet (its rows are copied in one transaction: `rows.rs`).

pub mod archive;
pub mod encryption;
pub mod manifest;
pub mod rows;
pub mod snapshot;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use sha2::Digest;

use self::manifest::{FileEntry, InstanceEntry, Kind, Manifest};
use crate::config::Config;
use crate::state::Layout;

/// The database's name inside an archive (whatever `database` says in the config).
const DATABASE: &str = "maubot.db";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path} already exists; a backup never overwrites a file. Choose a new name")]
    TargetExists { path: PathBuf },
    #[error("there is no state to back up at {path} (no database): nothing was written")]
    NoState { path: PathBuf },
    #[error("`{id}` is not a bot of this host (it has no state in {db})", db = .db.display())]
    UnknownInstance { id: String, db: PathBuf },
    #[error(
        "{path} is not empty ({entries}); a whole-host restore only goes into an empty or new state directory, so \
         that it never overwrites state. Move the old state away first, or restore one bot with `--instance ID`",
        path = .path.display()
    )]
    TargetNotEmpty { path: PathBuf, entries: String },
    #[error(
        "bot `{id}` exists in {path} already; restore it only where it does not exist (remove it from the target \
         first, or choose another host)",
        path = .path.display()
    )]
    InstanceExists { id: String, path: PathBuf },
    #[error("the archive holds no bot `{id}` (it holds: {holds})")]
    NotInArchive { id: String, holds: String },
    #[error("{path} is not a maubot backup: {reason}. Nothing was written", path = .path.display())]
    NotAnArchive { path: PathBuf, reason: String },
    #[error(
        "the archive {path} is damaged: {reason}. Nothing was written; use another copy of the backup",
        path = .path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the archive {path} was written by {written_by} (archive format {format}, database schema {schema} \
         needing >= {compat}); this maubot reads format {known_format} and schema {known_schema}. Restore it with \
         that version or a newer one. Nothing was written",
        path = .path.display()
    )]
    TooNew {
        path: PathBuf,
        written_by: String,
        format: u32,
        schema: u32,
        compat: u32,
        known_format: u32,
        known_schema: u32,
    },
    #[error(
        "a whole-host archive restores into an empty state directory, and `restore --instance` needs an existing \
         one: there is none at {path} (run `maubot setup` there first, or restore the whole host)",
        path = .path.display()
    )]
    NoTargetState { path: PathBuf },
    #[error(
        "--encrypt-to {recipient}: not an age X25519 recipient ({reason}); give the `age1…` public key age-keygen printed"
    )]
    BadRecipient { recipient: String, reason: String },
    #[error("--identity {path}: {reason}", path = .path.display())]
    BadIdentity { path: PathBuf, reason: String },
    #[error(
        "{path} is encrypted with age: give the identity file of one of its recipients with --identity FILE. \
         Nothing was written",
        path = .path.display()
    )]
    Encrypted { path: PathBuf },
    #[error(
        "{path} cannot be decrypted with the given identity ({reason}): it was encrypted to another recipient. \
         Nothing was written",
        path = .path.display()
    )]
    CannotDecrypt { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Database { what: String, source: rusqlite::Error },
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl BackupError {
    /// Whether the fix is the operator's (a path, an archive, the state): exit 78.
    pub fn is_operator_error(&self) -> bool {
        !matches!(self, BackupError::Io { .. } | BackupError::Database { .. })
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

fn db(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Database { what, source }
}

/// What a backup wrote.
#[derive(Debug)]
pub struct Written {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub bytes: u64,
    /// Files left out (links, sockets).
    pub skipped: Vec<PathBuf>,
    /// For `--instance`: it was disabled here (it must not run on two hosts).
    pub disabled_here: Option<String>,
}

/// A directory of its own beside `near`, removed when dropped.
struct Staging(PathBuf);

impl Staging {
    fn beside(near: &Path, what: &str) -> Result<Staging, BackupError> {
        let parent = near.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = near.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = parent.join(format!(".{name}.{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(io(&path))?;
        Ok(Staging(path))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn create_dirs(path: &Path) -> Result<(), BackupError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io(path))
}

/// SHA-256 of the configuration as serialized (secrets cannot serialize their values).
fn config_digest(config: &Config) -> String {
    let text = serde_json::to_string(config).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The bots a host database records (set up, or with a setup under way), with their users and devices.
fn recorded_instances(conn: &Connection) -> rusqlite::Result<Vec<InstanceEntry>> {
    let mut stmt = conn.prepare(
        "SELECT id, user_id, device_id FROM instances
         UNION SELECT id, user_id, device_id FROM setup_progress WHERE id NOT IN (SELECT id FROM instances)
         ORDER BY 1",
    )?;
    stmt.query_map([], |r| Ok(InstanceEntry { id: r.get(0)?, user_id: r.get(1)?, device_id: r.get(2)? }))?.collect()
}

/// Takes a backup of the state `config` names (or of one bot) into the new file `to`.
pub fn backup(
    config: &Config,
    to: &Path,
    instance: Option<&str>,
    encrypt_to: &[String],
) -> Result<Written, BackupError> {
    let recipients = encryption::parse_recipients(encrypt_to)?;
    if to.exists() {
        return Err(BackupError::TargetExists { path: to.to_owned() });
    }
    let layout = Layout::new(config);
    let database = layout.database();
    if !database.is_file() {
        return Err(BackupError::NoState { path: database });
    }
    let staging = Staging::beside(to, "staging")?;
    // The host database first (see snapshot.rs), then each bot.
    let copied_db = staging.0.join(DATABASE);
    snapshot::database(&database, &copied_db).map_err(db(format!("copying {}", database.display())))?;
    let copy = Connection::open(&copied_db).map_err(db("the copied database"))?;
    let (schema_version, compat_version) =
        crate::state::db::schema::read_versions(&copy).map_err(db("the copied database's versions"))?;
    let mut instances = recorded_instances(&copy).map_err(db("the copied database's bots"))?;
    if let Some(id) = instance {
        instances.retain(|i| i.id == id);
        if instances.is_empty() {
            return Err(BackupError::UnknownInstance { id: id.to_owned(), db: database });
        }
        rows::keep_only(&copy, id).map_err(db("keeping one bot in the copy"))?;
        copy.execute_batch("VACUUM").map_err(db("compacting the copy"))?;
    }
    drop(copy);
    let mut paths = vec![DATABASE.to_owned()];
    let mut skipped = Vec::new();
    for entry in &instances {
        paths.extend(copy_instance(&layout, &entry.id, &staging.0, &mut skipped)?);
    }
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let (size, sha256) = manifest::digest(&staging.0.join(&path)).map_err(io(&staging.0.join(&path)))?;
        files.push(FileEntry { path, size, sha256 });
    }
    let manifest = Manifest {
        format: manifest::FORMAT,
        kind: if instance.is_some() { Kind::Instance } else { Kind::Host },
        created_at: crate::state::db::now_unix(),
        written_by: format!("maubot {}", env!("CARGO_PKG_VERSION")),
        schema_version,
        compat_version,
        config_digest: config_digest(config),
        instances,
        files,
    };
    let bytes = archive::write(to, &manifest, &staging.0, &recipients)?;
    let disabled_here = match instance {
        Some(id) => {
            disable(&database, id, config.instances.get(id).is_none_or(|i| i.enabled))?;
            Some(id.to_owned())
        }
        None => None,
    };
    Ok(Written { path: to.to_owned(), manifest, bytes, skipped, disabled_here })
}

/// Copies one bot's stores, plugin database and private files into `staging`; returns their relative paths.
fn copy_instance(
    layout: &Layout,
    id: &str,
    staging: &Path,
    skipped: &mut Vec<PathBuf>,
) -> Result<Vec<String>, BackupError> {
    let mut paths = Vec::new();
    let relative_dir = format!("instances/{id}");
    for name in snapshot::STORE_FILES {
        let source = layout.store_dir(id).join(name);
        if source.is_file() {
            let path = format!("{relative_dir}/store/{name}");
            create_dirs(&staging.join(&relative_dir).join("store"))?;
            snapshot::database(&source, &staging.join(&path)).map_err(db(format!("copying {}", source.display())))?;
            paths.push(path);
        }
    }
    let plugin_db = layout.plugin_database(id);
    if plugin_db.is_file() {
        let path = format!("{relative_dir}/plugin.db");
        create_dirs(&staging.join(&relative_dir))?;
        snapshot::database(&plugin_db, &staging.join(&path)).map_err(db(format!("copying {}", plugin_db.display())))?;
        paths.push(path);
    }
    let data = layout.plugin_data_dir(id);
    for file in snapshot::files_below(&data, skipped).map_err(io(&data))? {
        let path = format!("{relative_dir}/data/{file}");
        let target = staging.join(&path);
        create_dirs(target.parent().expect("inside the staging directory"))?;
        std::fs::copy(data.join(&file), &target).map_err(io(&data.join(&file)))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Disables a moved bot at its source: one device must never run on two hosts.
fn disable(database: &Path, id: &str, config_enabled: bool) -> Result<(), BackupError> {
    let conn = Connection::open(database).map_err(db(database.display().to_string()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(db(database.display().to_string()))?;
    conn.execute(
        "INSERT INTO instance_overrides (id, enabled, config_enabled, stopped, updated_at)
         VALUES (?1, 0, ?2, 0, ?3)
         ON CONFLICT (id) DO UPDATE SET enabled = 0, config_enabled = excluded.config_enabled,
                                        updated_at = excluded.updated_at",
        params![id, config_enabled, crate::state::db::now_unix()],
    )
    .map_err(db(format!("disabling {id} here")))?;
    Ok(())
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    /// The bots now in the state (all of the archive's, or the one asked for).
    pub instances: Vec<InstanceEntry>,
}

/// Restores the archive `from` into the state `config` names: all of it into an empty state directory, or
/// one bot into an existing one that does not know it.
pub fn restore(
    config: &Config,
    from: &Path,
    instance: Option<&str>,
    identity: Option<&Path>,
) -> Result<Restored, BackupError> {
    let identities = identity.map(encryption::read_identities).transpose()?.unwrap_or_default();
    let layout = Layout::new(config);
    let root = layout.root().to_owned();
    match instance {
        None => {
            if let Some(entries) = non_empty(&root)? {
                return Err(BackupError::TargetNotEmpty { path: root, entries });
            }
        }
        Some(_) if !layout.database().is_file() => return Err(BackupError::NoTargetState { path: root }),
        Some(_) => {}
    }
    // Staged where the rename into place stays within one directory the process may write: beside a state
    // directory that does not exist yet, inside an empty one (under systemd, `StateDirectory=` is all the
    // sandbox may write, and it may not be removed), inside `instances/` for one bot.
    let existing_root = root.is_dir();
    let near = match instance {
        Some(_) => layout.instances_dir().join("restoring"),
        None if existing_root => root.join("restoring"),
        None => root.clone(),
    };
    if instance.is_some() {
        create_dirs(&layout.instances_dir())?;
    } else if !existing_root && let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    let staging = Staging::beside(&near, "restoring")?;
    let manifest = archive::read_checked(from, &staging.0, &identities)?;
    check_versions(from, &manifest)?;
    match instance {
        None => {
            let configured = layout.database();
            if configured.file_name().is_some_and(|n| n != DATABASE) {
                std::fs::rename(staging.0.join(DATABASE), staging.0.join(configured.file_name().expect("named")))
                    .map_err(io(&configured))?;
            }
            if existing_root {
                // Everything checked: each entry moves in, the database last (state without it is not used,
                // so an interruption leaves nothing `run` would take for a host).
                let database_name = configured.file_name().expect("named").to_owned();
                let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&staging.0)
                    .map_err(io(&staging.0))?
                    .flatten()
                    .map(|e| e.file_name())
                    .filter(|n| *n != database_name)
                    .collect();
                names.push(database_name);
                for name in names {
                    std::fs::rename(staging.0.join(&name), root.join(&name)).map_err(io(&root.join(&name)))?;
                }
                std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).map_err(io(&root))?;
                sync_dir(&root);
            } else {
                // Everything checked: the staged state becomes the state directory in one rename.
                std::fs::rename(&staging.0, &root).map_err(io(&root))?;
                std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).map_err(io(&root))?;
                sync_dir(root.parent().unwrap_or(Path::new("/")));
            }
            Ok(Restored { instances: manifest.instances.clone(), manifest })
        }
        Some(id) => restore_instance(&layout, from, &manifest, &staging.0, id),
    }
}

/// Puts one bot from the checked `staging` into the existing state: its directory first, then its rows in one
/// transaction (if the rows fail, the directory is taken back out).
fn restore_instance(
    layout: &Layout,
    from: &Path,
    manifest: &Manifest,
    staging: &Path,
    id: &str,
) -> Result<Restored, BackupError> {
    let Some(entry) = manifest.instances.iter().find(|i| i.id == id).cloned() else {
        let holds = manifest.instances.iter().map(|i| i.id.as_str()).collect::<Vec<_>>().join(", ");
        return Err(BackupError::NotInArchive { id: id.to_owned(), holds });
    };
    let target_db = layout.database();
    let target_dir = layout.instance_dir(id);
    let mut conn = Connection::open(&target_db).map_err(db(target_db.display().to_string()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(db(target_db.display().to_string()))?;
    let (target_schema, _) = crate::state::db::schema::read_versions(&conn)
        .map_err(|_| BackupError::NotAnArchive { path: target_db.clone(), reason: "not a maubot database".into() })?;
    if manifest.schema_version > target_schema {
        return Err(too_new(from, manifest, target_schema));
    }
    if target_dir.exists() || rows::has_rows(&conn, id).map_err(db("reading the target's bots"))? {
        return Err(BackupError::InstanceExists { id: id.to_owned(), path: layout.root().to_owned() });
    }
    let staged_dir = staging.join("instances").join(id);
    if staged_dir.exists() {
        std::fs::rename(&staged_dir, &target_dir).map_err(io(&target_dir))?;
    } else {
        std::fs::DirBuilder::new().mode(0o700).create(&target_dir).map_err(io(&target_dir))?;
    }
    if let Err(e) = rows::copy_into(&mut conn, &staging.join(DATABASE), id) {
        let _ = std::fs::remove_dir_all(&target_dir);
        return Err(db(format!("copying {id}'s rows into {}", target_db.display()))(e));
    }
    sync_dir(&layout.instances_dir());
    Ok(Restored { manifest: manifest.clone(), instances: vec![entry] })
}

/// Refuses an archive this build cannot read.
fn check_versions(from: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let known_schema = crate::state::db::SCHEMA_VERSION;
    if manifest.format > manifest::FORMAT || manifest.compat_version > known_schema {
        return Err(too_new(from, manifest, known_schema));
    }
    Ok(())
}

/// The refusal of an archive newer than what reads it (this build, or the target's database at `known_schema`).
fn too_new(from: &Path, manifest: &Manifest, known_schema: u32) -> BackupError {
    BackupError::TooNew {
        path: from.to_owned(),
        written_by: manifest.written_by.clone(),
        format: manifest.format,
        schema: manifest.schema_version,
        compat: manifest.compat_version,
        known_format: manifest::FORMAT,
        known_schema,
    }
}

/// What a directory holds, when it exists and holds anything.
fn non_empty(dir: &Path) -> Result<Option<String>, BackupError> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(dir)(e)),
        Ok(entries) => {
            let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            Ok((!names.is_empty()).then(|| names.into_iter().take(5).collect::<Vec<_>>().join(", ")))
        }
    }
}

fn sync_dir(dir: &Path) {
    let _ = crate::durable::sync_dir(dir);
}

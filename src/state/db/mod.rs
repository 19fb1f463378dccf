//! The host's SQLite database: bot sessions, sync positions, handled events, the outbox, run-time overrides and
//! setup progress, with a schema version (`schema.rs`).
//!
//! One connection, owned by a dedicated thread: async code sends it closures and awaits the answer, so SQLite
//! never blocks a runtime worker and never queues behind matrix-sdk's stores on the blocking pool.

mod events;
mod instances;
mod jobs;
pub mod schema;
mod setup_progress;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, params};

pub use self::events::{OutboxEntry, PendingEvent};
/// A sample instance record, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) use self::instances::tests::record;
pub use self::instances::{InstanceRecord, Override};
pub use self::jobs::{JobRecord, NewJob};
pub use self::schema::{COMPAT_VERSION, SCHEMA_VERSION};
pub use self::setup_progress::SetupProgress;
use super::StateError;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle to the database thread. Cheap to share behind an `Arc`; the thread ends when the handle is dropped,
/// and the drop waits for it: the connection is closed (its WAL checkpointed and removed) before the process
/// can exit.
pub struct Database {
    path: PathBuf,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Database {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |source| StateError::Database { path: path.to_owned(), source }
}

/// Where the host database's copies from before a migration are kept: beside it, in the state directory.
fn backups_dir(database: &Path) -> PathBuf {
    database.parent().map(Path::to_owned).unwrap_or_default()
}

pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

impl Database {
    /// Creates a new database at `path`, which must not exist, at the current schema. The file is built beside
    /// it and renamed into place, so that an interrupted creation leaves no half-made database.
    pub fn create(path: &Path) -> Result<Self, StateError> {
        if path.exists() {
            return Err(StateError::AlreadySetUp { path: path.to_owned() });
        }
        let building = path.with_extension("db.new");
        for leftover in [building.clone(), wal_of(&building), shm_of(&building)] {
            let _ = std::fs::remove_file(leftover);
        }
        {
            let flags =
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let mut conn = Connection::open_with_flags(&building, flags).map_err(sqlite(path))?;
            conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sqlite(path))?;
            schema::migrate(&mut conn, 0).map_err(sqlite(path))?;
            let tx = conn.transaction().map_err(sqlite(path))?;
            for (key, value) in [
                ("created_at", now_unix().to_string()),
                ("created_by", format!("maubot {}", env!("CARGO_PKG_VERSION"))),
            ] {
                tx.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", params![key, value])
                    .map_err(sqlite(path))?;
            }
            tx.commit().map_err(sqlite(path))?;
            // Still in rollback-journal mode: the whole database is this one file, which is renamed next.
        }
        std::fs::File::open(&building).and_then(|f| f.sync_all()).map_err(super::io(&building))?;
        std::fs::rename(&building, path).map_err(super::io(path))?;
        if let Some(dir) = path.parent() {
            crate::durable::sync_dir(dir).map_err(super::io(dir))?;
        }
        Self::open(path)
    }

    /// Opens an existing database, migrating it forward if it is older than this build. The file is first
    /// checked through a read-only connection: a file that is not a maubot database (or is too new) is refused
    /// without a single byte written to it.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let (version, _) = Self::check(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(sqlite(path))?;
        configure(&conn).map_err(sqlite(path))?;
        if version > SCHEMA_VERSION {
            tracing::warn!(
                found = version,
                supported = SCHEMA_VERSION,
                "the database was written by a newer maubot; it declares itself compatible, using it as is"
            );
        } else if version < SCHEMA_VERSION {
            // The rollback's way back: the database as it was, taken before the migration touches it.
            let copy = crate::migration_backup::take(&conn, path, &backups_dir(path), &format!("schema-{version}"))
                .map_err(|e| StateError::MigrationBackup { message: e.to_string() })?;
            tracing::info!(
                from = version,
                to = SCHEMA_VERSION,
                copy = %copy.display(),
                "migrating the database schema; a copy of it as it was is kept for a rollback"
            );
            schema::migrate(&mut conn, version).map_err(sqlite(path))?;
        }
        Ok(Self::serve(path, conn))
    }

    /// Checks through a read-only connection that `path` is a maubot database this build can use; returns its
    /// (schema, compat) versions. Writes nothing.
    pub fn check(path: &Path) -> Result<(u32, u32), StateError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::DatabaseMissing { path: path.to_owned() });
            }
            Err(e) => return Err(super::io(path)(e)),
            Ok(meta) if !meta.is_file() => return Err(StateError::NotADatabase { path: path.to_owned() }),
            Ok(_) => {}
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sqlite(path))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sqlite(path))?;
        let (version, compat) =
            schema::read_versions(&conn).map_err(|_| StateError::NotADatabase { path: path.to_owned() })?;
        if version > SCHEMA_VERSION && compat > SCHEMA_VERSION {
            return Err(StateError::SchemaTooNew {
                path: path.to_owned(),
                found: version,
                compat,
                supported: SCHEMA_VERSION,
                backups: crate::migration_backup::describe(path, &backups_dir(path)),
            });
        }
        Ok((version, compat))
    }

    /// Starts the thread that owns `conn`.
    fn serve(path: &Path, mut conn: Connection) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("maubot-db".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job(&mut conn);
                }
            })
            .expect("starting the database thread");
        Database { path: path.to_owned(), jobs: Some(jobs), thread: Some(thread) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the database thread and waits for its answer without blocking the caller's thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        let closed = || StateError::DatabaseClosed { path: self.path.clone() };
        self.jobs.as_ref().ok_or_else(closed)?.send(job).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?.map_err(sqlite(&self.path))
    }

    /// A value of the `meta` table.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        let key = key.to_owned();
        self.call(move |conn| {
            use rusqlite::OptionalExtension;
            conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0)).optional()
        })
        .await
    }

    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(drop)
        })
        .await
    }

    /// The schema version stored in the file.
    pub async fn schema_version(&self) -> Result<u32, StateError> {
        self.call(|conn| schema::read_versions(conn).map(|(v, _)| v)).await
    }
}

fn wal_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", path.display()))
}

fn shm_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-shm", path.display()))
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL survives a killed process without losing committed transactions; NORMAL is enough for that.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_refuses_a_missing_file_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maubot.db");
        assert!(matches!(Database::open(&path), Err(StateError::DatabaseMissing { .. })));
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_refused_and_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maubot.db");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(Database::open(&path), Err(StateError::NotADatabase { .. })));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "the empty file was written to");
        std::fs::write(&path, b"not sqlite at all, just text").unwrap();
        assert!(Database::open(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"not sqlite at all, just text");
    }

    #[tokio::test]
    async fn a_newer_incompatible_schema_is_refused_a_compatible_one_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maubot.db");
        drop(Database::create(&path).unwrap());
        let set = |key: &str, value: u32| {
            let conn = Connection::open(&path).unwrap();
            conn.execute("UPDATE meta SET value = ?2 WHERE key = ?1", params![key, value.to_string()]).unwrap();
        };
        set("schema_version", SCHEMA_VERSION + 1);
        assert!(Database::open(&path).is_ok(), "compatible newer schema is usable");
        set("compat_version", SCHEMA_VERSION + 1);
        let err = Database::open(&path).err().unwrap();
        assert!(matches!(err, StateError::SchemaTooNew { .. }));
        assert!(err.to_string().contains("rollback"), "{err}");
        assert!(matches!(Database::create(&path), Err(StateError::AlreadySetUp { .. })));
    }

    #[tokio::test]
    async fn a_schema_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maubot.db");
        drop(Database::create(&path).unwrap());
        {
            // Roll the file back to schema 1, as an older maubot would have left it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "DROP TABLE instance_overrides; DROP TABLE setup_progress; DROP TABLE outbox;
                 DROP TABLE pending_decryption; DROP TABLE jobs; DROP TABLE jobs_done;
                 ALTER TABLE instances DROP COLUMN generated_password;
                 UPDATE meta SET value = '1' WHERE key = 'schema_version';",
            )
            .unwrap();
        }
        let db = Database::open(&path).unwrap();
        assert_eq!(db.schema_version().await.unwrap(), SCHEMA_VERSION);
        db.set_stopped("a", true).await.unwrap();
        assert!(db.overrides().await.unwrap()["a"].stopped);
        drop(db);

        // The database as it was is kept beside it, and an older maubot that cannot read the migrated one is
        // told about that copy.
        let copies: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("maubot.db.schema-1."))
            .collect();
        assert_eq!(copies.len(), 1, "{copies:?}");
        let conn = Connection::open(&copies[0]).unwrap();
        assert_eq!(schema::read_versions(&conn).unwrap().0, 1, "the copy is at schema 1");
        let conn = Connection::open(&path).unwrap();
        let by: String = conn.query_row("SELECT value FROM meta WHERE key = 'migrated_by'", [], |r| r.get(0)).unwrap();
        assert_eq!(by, format!("maubot {}", env!("CARGO_PKG_VERSION")));
        conn.execute("UPDATE meta SET value = '99' WHERE key IN ('schema_version', 'compat_version')", []).unwrap();
        let refused = Database::open(&path).err().unwrap().to_string();
        assert!(refused.contains(copies[0].to_str().unwrap()), "{refused}");
    }
}

//! A plugin's own database (seed 002 "Bot Database"): `<state_dir>/instances/<id>/plugin.db`, mode 0600, opened
//! only for plugins that ask for one (`PluginContext::open_database`), with the plugin's own schema.
//!
//! The schema is a list of migrations, the n-th bringing the database to version n (`PRAGMA user_version`). Each
//! runs in a transaction together with its version bump, so a migration that fails leaves the database at the
//! version before it, with its data, and the plugin's start fails naming the migration. Each migration records
//! the maubot that applied it (`maubot_migrations`, in the same transaction). A database written by a
//! newer version of the plugin (more migrations than this one knows) is refused, never downgraded, naming the
//! copy taken before the migration (`crate::migration_backup`, in `instances/<id>/migration-backups/`).
//!
//! SQLite calls block: `call` runs them on tokio's blocking pool, one at a time per database.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the plugin database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "the plugin database {path} is at schema version {found}, but this plugin knows {known} migrations: a newer \
         version of the plugin wrote it (a rollback past an upgrade). Run that version again, or stop maubot and \
         restore {backups}"
    )]
    Newer { path: PathBuf, found: u32, known: u32, backups: String },
    #[error("{0}; nothing was migrated")]
    Backup(String),
    #[error(
        "migration {version} of the plugin database {path} failed (the database stays at version {stays}): {source}"
    )]
    Migration { path: PathBuf, version: u32, stays: u32, source: rusqlite::Error },
    #[error("the plugin database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the plugin database's worker thread ended: {0}")]
    Worker(String),
}

/// One instance's plugin database.
#[derive(Clone)]
pub struct PluginDatabase {
    connection: Arc<Mutex<Connection>>,
}

impl PluginDatabase {
    /// Opens (creating it, mode 0600) the database at `path` and applies the migrations it has not had.
    pub fn open(path: &Path, migrations: &[&str]) -> Result<PluginDatabase, StorageError> {
        let open = |reason: String| StorageError::Open { path: path.to_owned(), reason };
        // Created private before SQLite writes a byte; SQLite gives its journal the same mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| open(e.to_string()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| open(e.to_string()))?;
        let mut conn = Connection::open(path).map_err(|e| open(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn, path, migrations)?;
        Ok(PluginDatabase { connection: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `work` with the connection, off the async workers.
    pub async fn call<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = connection.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| StorageError::Worker(e.to_string()))?;
        Ok(result?)
    }
}

/// Which maubot applied each migration, and when: kept in the plugin's database beside its own tables, written in
/// the migration's transaction.
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS maubot_migrations (
    version INTEGER PRIMARY KEY NOT NULL,
    migrated_by TEXT NOT NULL,
    migrated_at INTEGER NOT NULL
);";

/// The schema version the database is at.
pub fn schema_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<(), StorageError> {
    let known = migrations.len() as u32;
    let found = schema_version(conn)?;
    let backups = path.parent().unwrap_or(Path::new(".")).join(crate::migration_backup::DIR_NAME);
    if found > known {
        let backups = crate::migration_backup::describe(path, &backups);
        return Err(StorageError::Newer { path: path.to_owned(), found, known, backups });
    }
    if found > 0 && found < known {
        let copy = crate::migration_backup::take(conn, path, &backups, &format!("schema-{found}"))
            .map_err(|e| StorageError::Backup(e.to_string()))?;
        tracing::info!(database = %path.display(), copy = %copy.display(), "copied the plugin database before migrating it");
    }
    for (index, sql) in migrations.iter().enumerate().skip(found as usize) {
        let version = index as u32 + 1;
        let failed = |source| StorageError::Migration { path: path.to_owned(), version, stays: version - 1, source };
        let tx = conn.transaction().map_err(failed)?;
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", version).map_err(failed)?;
        tx.execute_batch(MIGRATIONS_TABLE).map_err(failed)?;
        tx.execute(
            "INSERT OR REPLACE INTO maubot_migrations (version, migrated_by, migrated_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, concat!("maubot ", env!("CARGO_PKG_VERSION")), crate::plugin::unix_seconds()],
        )
        .map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::info!(database = %path.display(), version, "migrated the plugin database");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "CREATE TABLE seen (event_id TEXT PRIMARY KEY NOT NULL, at INTEGER NOT NULL);";
    const V2: &str = "ALTER TABLE seen ADD COLUMN room_id TEXT NOT NULL DEFAULT '';";

    #[tokio::test]
    async fn migrations_run_once_in_order_and_data_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.db");
        let db = PluginDatabase::open(&path, &[V1]).unwrap();
        db.call(|c| c.execute("INSERT INTO seen VALUES ('$a', 1)", [])).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        drop(db);
        let db = PluginDatabase::open(&path, &[V1, V2]).unwrap();
        let (version, room) = db
            .call(|c| {
                let room: String = c.query_row("SELECT room_id FROM seen WHERE event_id = '$a'", [], |r| r.get(0))?;
                Ok((schema_version(c)?, room))
            })
            .await
            .unwrap();
        assert_eq!((version, room.as_str()), (2, ""), "V1 was not run again (it would fail: the table exists)");
        let by: Vec<(u32, String)> = db
            .call(|c| {
                let mut stmt = c.prepare("SELECT version, migrated_by FROM maubot_migrations ORDER BY version")?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
            })
            .await
            .unwrap();
        let this = format!("maubot {}", env!("CARGO_PKG_VERSION"));
        assert_eq!(by, vec![(1, this.clone()), (2, this)], "each migration records the maubot that ran it");
    }

    #[tokio::test]
    async fn a_failed_migration_leaves_the_version_and_the_data_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.db");
        let db = PluginDatabase::open(&path, &[V1]).unwrap();
        db.call(|c| c.execute("INSERT INTO seen VALUES ('$a', 1)", [])).await.unwrap();
        drop(db);
        // The second migration creates a table, then fails: the table must not stay behind.
        let broken = "CREATE TABLE half (x INTEGER); INSERT INTO nowhere VALUES (1);";
        let err = PluginDatabase::open(&path, &[V1, broken]).err().unwrap();
        assert!(matches!(err, StorageError::Migration { version: 2, stays: 1, .. }), "{err}");
        assert!(err.to_string().contains("no such table: nowhere"), "{err}");
        let conn = Connection::open(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), 1);
        let half: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'half'", [], |r| r.get(0)).unwrap();
        assert_eq!(half, 0, "the failed migration was rolled back");
        let rows: i64 = conn.query_row("SELECT count(*) FROM seen", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn a_database_of_a_newer_plugin_is_refused_naming_the_copy_from_before_its_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.db");
        drop(PluginDatabase::open(&path, &[V1]).unwrap());
        drop(PluginDatabase::open(&path, &[V1, V2]).unwrap());
        let copy = std::fs::read_dir(dir.path().join("migration-backups")).unwrap().next().unwrap().unwrap().path();
        assert_eq!(schema_version(&Connection::open(&copy).unwrap()).unwrap(), 1, "the copy is the schema-1 database");
        let err = PluginDatabase::open(&path, &[V1]).err().unwrap();
        assert!(matches!(err, StorageError::Newer { found: 2, known: 1, .. }), "{err}");
        assert!(err.to_string().contains(copy.to_str().unwrap()), "{err}");
    }
}

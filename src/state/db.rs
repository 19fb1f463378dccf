//! The host's SQLite database: bot sessions, sync positions and handled events, with a schema version.
//!
//! Schema versions survive `nixos-rebuild --rollback`: each database records the version that wrote it and the
//! oldest version that can still use it (`compat_version`). A newer daemon migrates forward in one transaction;
//! an older daemon opens a newer database only if that database says it is compatible, and otherwise refuses
//! with a message instead of guessing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::StateError;

/// The schema this build writes.
pub const SCHEMA_VERSION: u32 = 2;
/// The oldest schema reader that can use a database at `SCHEMA_VERSION` (bump on incompatible changes only).
pub const COMPAT_VERSION: u32 = 1;

/// Forward migrations: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
     CREATE TABLE instances (
         id TEXT PRIMARY KEY NOT NULL,
         user_id TEXT NOT NULL,
         device_id TEXT NOT NULL,
         homeserver_url TEXT NOT NULL,
         access_token TEXT NOT NULL,
         refresh_token TEXT,
         ed25519_key TEXT,
         created_at INTEGER NOT NULL,
         sync_token TEXT
     );
     CREATE TABLE handled_events (
         instance_id TEXT NOT NULL,
         event_id TEXT NOT NULL,
         handled_at INTEGER NOT NULL,
         PRIMARY KEY (instance_id, event_id)
     );
     CREATE INDEX handled_events_by_age ON handled_events (handled_at);",
    // 1 -> 2: runtime start/stop/enable/disable (additive: schema-1 readers ignore it).
    "CREATE TABLE instance_overrides (
         id TEXT PRIMARY KEY NOT NULL,
         enabled INTEGER,
         config_enabled INTEGER,
         stopped INTEGER NOT NULL DEFAULT 0,
         updated_at INTEGER NOT NULL
     );",
];

/// What the management API changed about an instance at run time. `enabled` overrides the config only while
/// the config still says what it said when the override was made (`config_enabled`): a changed config wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Override {
    pub enabled: Option<bool>,
    pub config_enabled: Option<bool>,
    pub stopped: bool,
}

/// A bot instance's login, as `setup` recorded it.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: String,
    pub user_id: String,
    pub device_id: String,
    pub homeserver_url: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub ed25519_key: Option<String>,
    pub created_at: i64,
}

impl std::fmt::Debug for InstanceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceRecord")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("homeserver_url", &self.homeserver_url)
            .field("access_token", &crate::config::secret::REDACTED)
            .finish_non_exhaustive()
    }
}

pub struct Database {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |source| StateError::Database { path: path.to_owned(), source }
}

pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

impl Database {
    /// Creates a new database file (which must not exist) at the current schema.
    pub fn create(path: &Path) -> Result<Self, StateError> {
        if path.exists() {
            return Err(StateError::AlreadySetUp { path: path.to_owned() });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(sqlite(path))?;
        configure(&conn).map_err(sqlite(path))?;
        migrate(&mut conn, 0).map_err(sqlite(path))?;
        let tx = conn.transaction().map_err(sqlite(path))?;
        for (key, value) in
            [("created_at", now_unix().to_string()), ("created_by", format!("maubot {}", env!("CARGO_PKG_VERSION")))]
        {
            tx.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", params![key, value]).map_err(sqlite(path))?;
        }
        tx.commit().map_err(sqlite(path))?;
        Ok(Database { path: path.to_owned(), conn: Mutex::new(conn) })
    }

    /// Opens an existing database, migrating it forward if it is older than this build.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if !path.is_file() {
            return Err(StateError::DatabaseMissing { path: path.to_owned() });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(sqlite(path))?;
        configure(&conn).map_err(sqlite(path))?;
        let (version, compat) = read_versions(&conn).map_err(|_| StateError::NotADatabase { path: path.to_owned() })?;
        if version > SCHEMA_VERSION {
            if compat > SCHEMA_VERSION {
                return Err(StateError::SchemaTooNew {
                    path: path.to_owned(),
                    found: version,
                    compat,
                    supported: SCHEMA_VERSION,
                });
            }
            tracing::warn!(
                found = version,
                supported = SCHEMA_VERSION,
                "the database was written by a newer maubot; it declares itself compatible, using it as is"
            );
        } else if version < SCHEMA_VERSION {
            tracing::info!(from = version, to = SCHEMA_VERSION, "migrating the database schema");
            migrate(&mut conn, version).map_err(sqlite(path))?;
        }
        Ok(Database { path: path.to_owned(), conn: Mutex::new(conn) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StateError> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut conn).map_err(sqlite(&self.path))
    }

    /// The schema version stored in the file.
    pub fn schema_version(&self) -> Result<u32, StateError> {
        self.with(|conn| read_versions(conn).map(|(v, _)| v))
    }

    /// Records a new instance and the sync position its stores were set up at.
    pub fn insert_instance(&self, record: &InstanceRecord, sync_token: Option<&str>) -> Result<(), StateError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO instances (id, user_id, device_id, homeserver_url, access_token, refresh_token,
                                        ed25519_key, created_at, sync_token)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    record.id,
                    record.user_id,
                    record.device_id,
                    record.homeserver_url,
                    record.access_token,
                    record.refresh_token,
                    record.ed25519_key,
                    record.created_at,
                    sync_token
                ],
            )
            .map(drop)
        })
    }

    pub fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StateError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT id, user_id, device_id, homeserver_url, access_token, refresh_token, ed25519_key, created_at
                 FROM instances WHERE id = ?1",
                params![id],
                |row| {
                    Ok(InstanceRecord {
                        id: row.get(0)?,
                        user_id: row.get(1)?,
                        device_id: row.get(2)?,
                        homeserver_url: row.get(3)?,
                        access_token: row.get(4)?,
                        refresh_token: row.get(5)?,
                        ed25519_key: row.get(6)?,
                        created_at: row.get(7)?,
                    })
                },
            )
            .optional()
        })
    }

    pub fn instance_ids(&self) -> Result<Vec<String>, StateError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT id FROM instances ORDER BY id")?;
            stmt.query_map([], |row| row.get(0))?.collect()
        })
    }

    pub fn sync_token(&self, id: &str) -> Result<Option<String>, StateError> {
        self.with(|conn| {
            conn.query_row("SELECT sync_token FROM instances WHERE id = ?1", params![id], |row| row.get(0))
                .optional()
                .map(Option::flatten)
        })
    }

    /// Stores the position the next sync starts from. Called only after every event before it was handled.
    pub fn save_sync_token(&self, id: &str, token: &str) -> Result<(), StateError> {
        self.with(|conn| {
            conn.execute("UPDATE instances SET sync_token = ?2 WHERE id = ?1", params![id, token]).map(drop)
        })
    }

    /// Runtime overrides by instance id.
    pub fn overrides(&self) -> Result<std::collections::HashMap<String, Override>, StateError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT id, enabled, config_enabled, stopped FROM instance_overrides")?;
            stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Override { enabled: row.get(1)?, config_enabled: row.get(2)?, stopped: row.get(3)? },
                ))
            })?
            .collect()
        })
    }

    /// Records a runtime enable/disable made while the config said `config_enabled`.
    pub fn set_enabled_override(&self, id: &str, enabled: bool, config_enabled: bool) -> Result<(), StateError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO instance_overrides (id, enabled, config_enabled, stopped, updated_at)
                 VALUES (?1, ?2, ?3, 0, ?4)
                 ON CONFLICT (id) DO UPDATE SET enabled = excluded.enabled, config_enabled = excluded.config_enabled,
                                                updated_at = excluded.updated_at",
                params![id, enabled, config_enabled, now_unix()],
            )
            .map(drop)
        })
    }

    /// Forgets a runtime enable/disable (the config changed, so it is authoritative again).
    pub fn clear_enabled_override(&self, id: &str) -> Result<(), StateError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE instance_overrides SET enabled = NULL, config_enabled = NULL, updated_at = ?2 WHERE id = ?1",
                params![id, now_unix()],
            )
            .map(drop)
        })
    }

    /// Records a runtime stop (kept across restarts until started again).
    pub fn set_stopped(&self, id: &str, stopped: bool) -> Result<(), StateError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO instance_overrides (id, enabled, config_enabled, stopped, updated_at)
                 VALUES (?1, NULL, NULL, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET stopped = excluded.stopped, updated_at = excluded.updated_at",
                params![id, stopped, now_unix()],
            )
            .map(drop)
        })
    }

    pub fn is_handled(&self, id: &str, event_id: &str) -> Result<bool, StateError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT 1 FROM handled_events WHERE instance_id = ?1 AND event_id = ?2",
                params![id, event_id],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
        })
    }

    pub fn mark_handled(&self, id: &str, event_id: &str) -> Result<(), StateError> {
        self.with(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO handled_events (instance_id, event_id, handled_at) VALUES (?1, ?2, ?3)",
                params![id, event_id, now_unix()],
            )
            .map(drop)
        })
    }

    /// Forgets handled events older than `max_age_secs` (they are too old to be answered again anyway).
    pub fn prune_handled(&self, max_age_secs: i64) -> Result<usize, StateError> {
        self.with(|conn| {
            conn.execute("DELETE FROM handled_events WHERE handled_at < ?1", params![now_unix() - max_age_secs])
        })
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL survives a killed process without losing committed transactions; NORMAL is enough for that.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn read_versions(conn: &Connection) -> rusqlite::Result<(u32, u32)> {
    let get = |key: &str| -> rusqlite::Result<u32> {
        let value: String = conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0))?;
        value.parse().map_err(|_| rusqlite::Error::InvalidQuery)
    };
    Ok((get("schema_version")?, get("compat_version")?))
}

/// Applies the migrations after `from` and records the new version, all in one transaction.
fn migrate(conn: &mut Connection, from: u32) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for sql in &MIGRATIONS[from as usize..] {
        tx.execute_batch(sql)?;
    }
    for (key, value) in [("schema_version", SCHEMA_VERSION), ("compat_version", COMPAT_VERSION)] {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value.to_string()],
        )?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            user_id: format!("@{id}:example.org"),
            device_id: "DEVICE".into(),
            homeserver_url: "http://127.0.0.1:8008".into(),
            access_token: "syt_secret".into(),
            refresh_token: None,
            ed25519_key: None,
            created_at: 1,
        }
    }

    #[test]
    fn create_then_open_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maubot.db");
        let db = Database::create(&path).unwrap();
        db.insert_instance(&record("a"), Some("s0")).unwrap();
        assert_eq!(db.sync_token("a").unwrap().as_deref(), Some("s0"));
        db.save_sync_token("a", "s1").unwrap();
        db.mark_handled("a", "$e1").unwrap();
        drop(db);
        let db = Database::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(db.instance("a").unwrap(), Some(record("a")));
        assert_eq!(db.sync_token("a").unwrap().as_deref(), Some("s1"));
        assert!(db.is_handled("a", "$e1").unwrap());
        assert!(!db.is_handled("a", "$e2").unwrap());
        assert!(matches!(Database::create(&path), Err(StateError::AlreadySetUp { .. })));
    }

    #[test]
    fn open_refuses_a_missing_file_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maubot.db");
        assert!(matches!(Database::open(&path), Err(StateError::DatabaseMissing { .. })));
        assert!(!path.exists());
    }

    #[test]
    fn a_newer_incompatible_schema_is_refused_a_compatible_one_is_used() {
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
    }

    #[test]
    fn overrides_round_trip_and_a_schema_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maubot.db");
        drop(Database::create(&path).unwrap());
        {
            // Roll the file back to schema 1, as an older maubot would have left it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "DROP TABLE instance_overrides; UPDATE meta SET value = '1' WHERE key = 'schema_version';",
            )
            .unwrap();
        }
        let db = Database::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        db.set_enabled_override("a", false, true).unwrap();
        db.set_stopped("a", true).unwrap();
        db.set_stopped("b", true).unwrap();
        let overrides = db.overrides().unwrap();
        assert_eq!(overrides["a"], Override { enabled: Some(false), config_enabled: Some(true), stopped: true });
        db.clear_enabled_override("a").unwrap();
        db.set_stopped("b", false).unwrap();
        let overrides = db.overrides().unwrap();
        assert_eq!(overrides["a"], Override { enabled: None, config_enabled: None, stopped: true });
        assert!(!overrides["b"].stopped);
    }

    #[test]
    fn debug_hides_the_access_token() {
        assert!(!format!("{:?}", record("a")).contains("syt_secret"));
    }
}

//! matrix-sdk's own store migrations, made safe for rollbacks.
//!
//! matrix-sdk's SQLite stores record a version (the `version` key of their `kv` table) and migrate forward when
//! opened, but open a store newer than they know without a word and use it. A rollback to an older generation
//! would then run an older matrix-sdk on a store a newer one migrated. Before a bot's client is built:
//!
//! - a store newer than this build's matrix-sdk writes is refused: that bot alone fails, naming both versions and
//!   the copy to restore, and the others run;
//! - a store older than that (the first start after an upgrade of matrix-sdk) is copied first, into
//!   `instances/<id>/migration-backups/`, so that a rollback can restore it; the copy is named in the log, and
//!   which maubot let matrix-sdk migrate it is recorded beside the store (`maubot-migrations.json`).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::migration_backup;
use crate::state::{CRYPTO_STORE_FILE, STATE_STORE_FILE, StateError};

/// The store versions this build's matrix-sdk writes (checked against freshly made stores by a unit test, so a
/// matrix-sdk upgrade that changes them cannot go unnoticed).
pub const KNOWN_VERSIONS: &[(&str, u8)] = &[(STATE_STORE_FILE, 15), (CRYPTO_STORE_FILE, 17)];

/// Which maubot migrated a store last (matrix-sdk's stores have no place for it): `<store>/maubot-migrations.json`,
/// by file name, written (temp file and rename, 0600) when this maubot lets matrix-sdk migrate a store.
const RECORD_FILE: &str = "maubot-migrations.json";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Migration {
    pub from: u8,
    pub version: u8,
    pub migrated_by: String,
    pub migrated_at: i64,
}

/// The migrations recorded beside `store_dir`'s stores (none when there is no readable record).
pub fn read_record(store_dir: &Path) -> std::collections::BTreeMap<String, Migration> {
    std::fs::read(store_dir.join(RECORD_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn write_record(
    store_dir: &Path,
    record: &std::collections::BTreeMap<String, Migration>,
) -> Result<(), std::io::Error> {
    crate::durable::write_private_file(
        &store_dir.join(RECORD_FILE),
        &serde_json::to_vec_pretty(record).expect("plain data"),
    )
}

/// The version a matrix-sdk store records (`None`: no such file, or no version yet).
pub fn version_of(database: &Path) -> rusqlite::Result<Option<u8>> {
    if !database.is_file() {
        return Ok(None);
    }
    let conn =
        Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let has_kv: bool =
        conn.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'kv'", [], |r| {
            r.get(0)
        })?;
    if !has_kv {
        return Ok(None);
    }
    let value: Option<Vec<u8>> =
        conn.query_row("SELECT value FROM kv WHERE key = 'version'", [], |r| r.get(0)).optional()?;
    Ok(value.and_then(|v| v.first().copied()))
}

/// Checks bot `id`'s stores in `store_dir` before matrix-sdk opens them; copies those it is about to migrate
/// into `migration-backups/` beside the store directory. Returns the copies taken. Called by
/// `client::store_account`, the first place anything opens a set-up bot's store.
pub fn check(id: &str, store_dir: &Path) -> Result<Vec<PathBuf>, StateError> {
    let backups_dir = &store_dir.with_file_name(migration_backup::DIR_NAME);
    let unreadable =
        |e: &dyn std::fmt::Display| StateError::StoreUnreadable { id: id.to_owned(), message: e.to_string() };
    let mut taken = Vec::new();
    for (file, known) in KNOWN_VERSIONS {
        let database = store_dir.join(file);
        let Some(found) = version_of(&database).map_err(|e| unreadable(&format!("{}: {e}", database.display())))?
        else {
            continue;
        };
        if found > *known {
            let by = read_record(store_dir)
                .remove(*file)
                .map(|m| format!("{} migrated it; ", m.migrated_by))
                .unwrap_or_default();
            return Err(StateError::StoreTooNew {
                id: id.to_owned(),
                path: database.clone(),
                found,
                known: *known,
                backups: format!("{by}{}", migration_backup::describe(&database, backups_dir)),
            });
        }
        if found < *known {
            let conn = Connection::open_with_flags(&database, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| unreadable(&format!("{}: {e}", database.display())))?;
            let copy = migration_backup::take(&conn, &database, backups_dir, &format!("version-{found}"))
                .map_err(|e| unreadable(&e))?;
            tracing::warn!(
                instance = %id,
                store = %database.display(),
                from = found,
                to = *known,
                copy = %copy.display(),
                "matrix-sdk is about to migrate the store; a copy of it as it was is kept for a rollback"
            );
            taken.push(copy);
            let mut record = read_record(store_dir);
            record.insert(
                (*file).to_owned(),
                Migration {
                    from: found,
                    version: *known,
                    migrated_by: format!("maubot {}", env!("CARGO_PKG_VERSION")),
                    migrated_at: crate::state::db::now_unix(),
                },
            );
            write_record(store_dir, &record).map_err(|e| unreadable(&e))?;
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use matrix_sdk::{SqliteCryptoStore, SqliteStateStore};

    /// The stores this build's matrix-sdk makes carry the versions `KNOWN_VERSIONS` says. When this fails after
    /// a matrix-sdk upgrade, update `KNOWN_VERSIONS`: the upgrade migrates stores, and the copies are what a
    /// rollback needs.
    #[tokio::test]
    async fn the_known_versions_are_those_matrix_sdk_writes() {
        let dir = tempfile::tempdir().unwrap();
        let state = SqliteStateStore::open(dir.path(), None).await.unwrap();
        let crypto = SqliteCryptoStore::open(dir.path(), None).await.unwrap();
        drop((state, crypto));
        for (file, known) in KNOWN_VERSIONS {
            assert_eq!(version_of(&dir.path().join(file)).unwrap(), Some(*known), "{file}");
        }
    }

    fn set_version(database: &Path, version: u8) {
        Connection::open(database)
            .unwrap()
            .execute("UPDATE kv SET value = ?1 WHERE key = 'version'", [vec![version]])
            .unwrap();
    }

    #[tokio::test]
    async fn a_newer_store_is_refused_and_an_older_one_copied_before_it_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        drop(SqliteCryptoStore::open(&store, None).await.unwrap());
        assert_eq!(check("a", &store).unwrap(), Vec::<PathBuf>::new(), "current: nothing to do");

        let crypto = store.join(CRYPTO_STORE_FILE);
        set_version(&crypto, 16);
        let taken = check("a", &store).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(version_of(&taken[0]).unwrap(), Some(16), "the copy is the store as it was");
        let migration = read_record(&store).remove(CRYPTO_STORE_FILE).expect("the migration is recorded");
        assert_eq!((migration.from, migration.version), (16, 17));
        assert_eq!(migration.migrated_by, format!("maubot {}", env!("CARGO_PKG_VERSION")));

        // Looking at a store the way run and setup do (before a client is built) copies it before matrix-sdk
        // opens, and so migrates, it.
        std::fs::remove_dir_all(dir.path().join(migration_backup::DIR_NAME)).unwrap();
        set_version(&crypto, 16);
        let _ = crate::matrix::client::store_device("a", &store).await;
        let copies: Vec<PathBuf> = std::fs::read_dir(dir.path().join(migration_backup::DIR_NAME))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(version_of(&copies[0]).unwrap(), Some(16), "copied before matrix-sdk migrated it");

        set_version(&crypto, 18);
        let refused = check("a", &store).unwrap_err().to_string();
        assert!(refused.contains("version 18") && refused.contains("knows 17"), "{refused}");
        assert!(refused.contains(copies[0].to_str().unwrap()), "names the copy to restore: {refused}");
        assert!(refused.contains(&format!("maubot {} migrated it", env!("CARGO_PKG_VERSION"))), "{refused}");
    }
}

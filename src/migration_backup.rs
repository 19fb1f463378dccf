//! Copies of a SQLite database taken just before a migration changes it. A rollback to the binary before the
//! migration (`nixos-rebuild --rollback`) cannot always read what the migration wrote; the copy is what it can
//! restore. Each copy is named after the database and the version it holds
//! (`maubot.db.schema-3.1765000000.bak`), logged when taken, and named again by an older binary that refuses
//! the migrated database. Copies are kept: they are small, and whether one is still needed is the operator's
//! call.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// The directory beside a bot's databases that holds their copies (`instances/<id>/migration-backups`).
pub const DIR_NAME: &str = "migration-backups";

#[derive(Debug, thiserror::Error)]
pub enum MigrationBackupError {
    #[error("cannot copy {database} before migrating it to {target}: {source}", database = .database.display(), target = .target.display())]
    Copy { database: PathBuf, target: PathBuf, source: rusqlite::Error },
    #[error("cannot copy {database} before migrating it: {path}: {source}", database = .database.display(), path = .path.display())]
    Io { database: PathBuf, path: PathBuf, source: std::io::Error },
}

/// Copies the database `conn` has open (at `database`) into `dir` (created 0700), as `<file>.<version>.<time>.bak`
/// (mode 0600), through `VACUUM INTO`: a consistent copy, never a raw one. Returns the copy's path.
pub fn take(conn: &Connection, database: &Path, dir: &Path, version: &str) -> Result<PathBuf, MigrationBackupError> {
    let io = |path: &Path| {
        let (database, path) = (database.to_owned(), path.to_owned());
        move |source| MigrationBackupError::Io { database, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let name = database.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let target = dir.join(format!("{name}.{version}.{now}.bak"));
    let _ = std::fs::remove_file(&target);
    conn.execute("VACUUM INTO ?1", [target.to_string_lossy()]).map_err(|source| MigrationBackupError::Copy {
        database: database.to_owned(),
        target: target.clone(),
        source,
    })?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).map_err(io(&target))?;
    std::fs::File::open(&target).and_then(|f| f.sync_all()).map_err(io(&target))?;
    crate::durable::sync_dir(dir).map_err(io(dir))?;
    Ok(target)
}

/// The copies of `database` in `dir`, newest first, for a message ("none" when there are none).
pub fn describe(database: &Path, dir: &Path) -> String {
    let name = database.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!("{name}.");
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let middle = file.strip_prefix(&prefix)?.strip_suffix(".bak")?;
            let time = middle.rsplit('.').next()?.parse().ok()?;
            Some((time, entry.path()))
        })
        .collect();
    found.sort_by_key(|(time, _)| std::cmp::Reverse(*time));
    if found.is_empty() {
        return "no copy from before a migration was found".to_owned();
    }
    let shown: Vec<String> = found.iter().take(3).map(|(_, path)| path.display().to_string()).collect();
    format!("the copy taken before the migration: {}", shown.join(", or "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_private_consistent_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("maubot.db");
        let conn = Connection::open(&database).unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (7);").unwrap();
        let backups = dir.path().join("backups");
        assert!(describe(&database, &backups).starts_with("no copy"));
        let copy = take(&conn, &database, &backups, "schema-3").unwrap();
        assert!(copy.file_name().unwrap().to_string_lossy().starts_with("maubot.db.schema-3."));
        assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&backups).unwrap().permissions().mode() & 0o777, 0o700);
        let x: i64 = Connection::open(&copy).unwrap().query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 7);
        assert!(describe(&database, &backups).contains(copy.to_str().unwrap()));
        assert!(describe(&dir.path().join("other.db"), &backups).starts_with("no copy"));
    }
}

//! Consistent copies of the state while the bots run: each SQLite database through `VACUUM INTO` on a
//! read-only connection (one read transaction: a snapshot of that moment, while writers go on; never a raw
//! copy of a file that may be half-written), and the plugins' private files as they are.
//!
//! The host database is copied first, the bots' stores after it: a store can only be ahead of the host's sync
//! position, never behind it, and ahead is safe (events after the host's position are fetched again and each
//! handled once, as after any restart; the crypto store has every key the host's events needed).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

/// The matrix-sdk stores a bot uses (its caches are kept in memory and not backed up).
pub const STORE_FILES: &[&str] = &[crate::state::STATE_STORE_FILE, crate::state::CRYPTO_STORE_FILE];

/// Copies the database at `source` into the new file `target` (a consistent snapshot, compacted).
pub fn database(source: &Path, target: &Path) -> rusqlite::Result<()> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(source, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.execute("VACUUM INTO ?1", [target.to_string_lossy()])?;
    Ok(())
}

/// The regular files below `dir`, relative to it, `/`-separated; links and special files are left out and
/// named in `skipped`.
pub fn files_below(dir: &Path, skipped: &mut Vec<PathBuf>) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let entries = match std::fs::read_dir(dir.join(&relative)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = relative.join(entry.file_name());
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                match path.to_str() {
                    Some(text) => out.push(text.to_owned()),
                    None => skipped.push(dir.join(&path)),
                }
            } else {
                skipped.push(dir.join(&path));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_copied_while_a_writer_holds_it_open() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let writer = Connection::open(&live).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);").unwrap();
        let copy = dir.path().join("copy.db");
        database(&live, &copy).unwrap();
        writer.execute("INSERT INTO t VALUES (3)", []).unwrap();
        let count: i64 =
            Connection::open(&copy).unwrap().query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(count, 2, "the snapshot is of the moment it was taken");
        assert!(database(&live, &copy).is_err(), "never over an existing file");
    }

    #[test]
    fn only_regular_files_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/c.txt"), "c").unwrap();
        std::fs::write(dir.path().join("top"), "t").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let mut skipped = Vec::new();
        assert_eq!(files_below(dir.path(), &mut skipped).unwrap(), ["a/b/c.txt", "top"]);
        assert_eq!(skipped, [dir.path().join("link")]);
        assert!(files_below(&dir.path().join("missing"), &mut skipped).unwrap().is_empty());
    }
}

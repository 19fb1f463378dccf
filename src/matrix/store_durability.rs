//! How durably matrix-sdk's SQLite stores commit. matrix-sdk opens them in WAL mode with SQLite's default
//! `synchronous = FULL`: one fsync per commit, and each sync commits to the state store (the response) and to
//! the crypto store (the Olm account, every time), so two fsyncs per sync.
//!
//! The state, event-cache and media stores hold what the homeserver can send again: with `synchronous = NORMAL`
//! (WAL mode) a commit survives a crash of the process, and only a power loss may take back the last few, which
//! the next sync repeats (the host's own sync position and handled marks are in its database, and every send
//! carries a transaction id the homeserver deduplicates). The crypto store keeps `FULL`: a lost commit there
//! could re-use one-time keys or ratchet state that other devices already saw.
//!
//! matrix-sdk has no setting for it, so an SQLite auto-extension (run for every connection the process opens,
//! after the database file is attached) sets it for the stores it applies to, by file name.

use std::ffi::{CStr, c_char, c_int};

use rusqlite::ffi;

/// The stores whose commits need not reach the disk before the call returns (file names matrix-sdk-sqlite uses).
const RELAXED_STORES: &[&[u8]] =
    &[b"/matrix-sdk-state.sqlite3", b"/matrix-sdk-event-cache.sqlite3", b"/matrix-sdk-media.sqlite3"];

/// Whether a database at `path` gets `synchronous = NORMAL`.
fn is_relaxed(path: &[u8]) -> bool {
    RELAXED_STORES.iter().any(|name| path.ends_with(name))
}

unsafe extern "C" fn relax_regenerable_stores(
    db: *mut ffi::sqlite3,
    _error: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: SQLite calls this with an open connection; the file name it returns lives as long as the
    // connection (null for in-memory databases).
    unsafe {
        let name = ffi::sqlite3_db_filename(db, c"main".as_ptr());
        if !name.is_null() && is_relaxed(CStr::from_ptr(name).to_bytes()) {
            // If it fails, the connection keeps FULL: slower, not less safe.
            ffi::sqlite3_exec(
                db,
                c"PRAGMA synchronous = NORMAL".as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }
    ffi::SQLITE_OK
}

/// Installs the auto-extension; call once before any store opens.
pub fn relax_regenerable_stores_once() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        // SAFETY: the function has the signature SQLite's auto-extensions take and only runs a pragma.
        if let Err(e) = unsafe { rusqlite::auto_extension::register_auto_extension(relax_regenerable_stores) } {
            tracing::warn!(error = %e, "cannot relax the durability of the regenerable stores; they stay at FULL");
        }
    });
}

/// The `synchronous` setting of an open connection (0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA), for tests.
pub fn synchronous_of(conn: &rusqlite::Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "synchronous", |row| row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_regenerable_stores_are_relaxed() {
        relax_regenerable_stores_once();
        let dir = tempfile::tempdir().unwrap();
        for (name, expected) in [
            ("matrix-sdk-state.sqlite3", 1),
            ("matrix-sdk-event-cache.sqlite3", 1),
            ("matrix-sdk-media.sqlite3", 1),
            ("matrix-sdk-crypto.sqlite3", 2),
            ("maubot.sqlite3", 2),
        ] {
            let conn = rusqlite::Connection::open(dir.path().join(name)).unwrap();
            assert_eq!(synchronous_of(&conn).unwrap(), expected, "{name}");
        }
    }
}

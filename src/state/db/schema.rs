//! The host database's schema: forward migrations, the two version numbers every database records, and the
//! maubot that migrated it last (`migrated_by`).
//!
//! `schema_version` is the version that wrote the file; `compat_version` is the oldest reader that can still use
//! it. A newer daemon migrates forward in one transaction; an older daemon opens a newer database only if that
//! database says it is compatible (additive changes), and otherwise refuses with a message instead of guessing.

use rusqlite::{Connection, params};

/// The schema this build writes.
pub const SCHEMA_VERSION: u32 = 4;
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
    // 2 -> 3 (additive): resumable setup, the password setup generated, the outbox of sends the host still owes,
    // and encrypted events waiting for their room key. Older readers ignore all of it (they neither resume a
    // setup nor drain the outbox).
    "ALTER TABLE instances ADD COLUMN generated_password TEXT;
     CREATE TABLE setup_progress (
         id TEXT PRIMARY KEY NOT NULL,
         user_id TEXT NOT NULL,
         device_id TEXT NOT NULL,
         homeserver_url TEXT NOT NULL,
         generated_password TEXT,
         access_token TEXT,
         refresh_token TEXT,
         adopted INTEGER NOT NULL DEFAULT 0,
         recovery_key TEXT,
         started_at INTEGER NOT NULL
     );
     CREATE TABLE outbox (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         instance_id TEXT NOT NULL,
         room_id TEXT NOT NULL,
         txn_id TEXT NOT NULL,
         event_type TEXT NOT NULL,
         content TEXT NOT NULL,
         answers TEXT,
         queued_at INTEGER NOT NULL,
         UNIQUE (instance_id, txn_id)
     );
     CREATE TABLE pending_decryption (
         instance_id TEXT NOT NULL,
         event_id TEXT NOT NULL,
         room_id TEXT NOT NULL,
         event TEXT NOT NULL,
         received_at INTEGER NOT NULL,
         PRIMARY KEY (instance_id, event_id)
     );",
    // 3 -> 4 (additive): the jobs plugins accepted and have not finished, and the keys of those finished
    // lately (a job key is accepted once). Older readers ignore them (they run no jobs).
    "CREATE TABLE jobs (
         instance_id TEXT NOT NULL,
         key TEXT NOT NULL,
         payload TEXT NOT NULL,
         origin TEXT,
         attempts INTEGER NOT NULL DEFAULT 0,
         accepted_at INTEGER NOT NULL,
         PRIMARY KEY (instance_id, key)
     );
     CREATE TABLE jobs_done (
         instance_id TEXT NOT NULL,
         key TEXT NOT NULL,
         done_at INTEGER NOT NULL,
         PRIMARY KEY (instance_id, key)
     );
     CREATE INDEX jobs_done_by_age ON jobs_done (done_at);",
];

pub fn read_versions(conn: &Connection) -> rusqlite::Result<(u32, u32)> {
    let get = |key: &str| -> rusqlite::Result<u32> {
        let value: String = conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0))?;
        value.parse().map_err(|_| rusqlite::Error::InvalidQuery)
    };
    Ok((get("schema_version")?, get("compat_version")?))
}

/// Applies the migrations after `from` and records the new version, all in one transaction.
pub fn migrate(conn: &mut Connection, from: u32) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for sql in &MIGRATIONS[from as usize..] {
        tx.execute_batch(sql)?;
    }
    for (key, value) in [
        ("schema_version", SCHEMA_VERSION.to_string()),
        ("compat_version", COMPAT_VERSION.to_string()),
        ("migrated_by", format!("maubot {}", env!("CARGO_PKG_VERSION"))),
    ] {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
    }
    tx.commit()
}

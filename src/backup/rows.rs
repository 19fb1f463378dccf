//! One bot's rows in the host database, for moving it between hosts: which tables hold them, keeping only one
//! bot's rows in a copy, and copying them into another host's database in one transaction.

use std::path::Path;

use rusqlite::{Connection, params};

/// The host database's tables that hold a bot's rows, with the column that names the bot. A unit test keeps
/// this list in step with the schema.
pub const INSTANCE_TABLES: &[(&str, &str)] = &[
    ("instances", "id"),
    ("instance_overrides", "id"),
    ("setup_progress", "id"),
    ("handled_events", "instance_id"),
    ("outbox", "instance_id"),
    ("pending_decryption", "instance_id"),
    ("jobs", "instance_id"),
    ("jobs_done", "instance_id"),
];

/// Columns a copy leaves to the receiving table (its own sequence).
const RENUMBERED: &[(&str, &str)] = &[("outbox", "seq")];

/// Deletes every row of other bots from the (copied) database.
pub fn keep_only(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    for (table, column) in INSTANCE_TABLES {
        if table_exists(conn, "main", table)? {
            conn.execute(&format!("DELETE FROM {table} WHERE {column} != ?1"), params![id])?;
        }
    }
    Ok(())
}

/// Whether `id` has any row in the database.
pub fn has_rows(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    for (table, column) in INSTANCE_TABLES {
        if table_exists(conn, "main", table)?
            && conn.query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {column} = ?1)"),
                params![id],
                |r| r.get::<_, bool>(0),
            )?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn table_exists(conn: &Connection, schema: &str, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?1)"),
        params![table],
        |r| r.get(0),
    )
}

fn columns(conn: &Connection, schema: &str, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA {schema}.table_info({table})"))?;
    stmt.query_map([], |r| r.get::<_, String>(1))?.collect()
}

/// Copies `id`'s rows from the database file `source` into `target`, in one transaction, column by column
/// name (columns the source lacks take the target's defaults). Returns the rows copied.
pub fn copy_into(target: &mut Connection, source: &Path, id: &str) -> rusqlite::Result<usize> {
    target.execute("ATTACH DATABASE ?1 AS archived", [source.to_string_lossy()])?;
    let copied = (|| {
        let tx = target.transaction()?;
        let mut copied = 0;
        for (table, column) in INSTANCE_TABLES {
            if !table_exists(&tx, "archived", table)? || !table_exists(&tx, "main", table)? {
                continue;
            }
            let theirs = columns(&tx, "archived", table)?;
            let shared: Vec<String> = columns(&tx, "main", table)?
                .into_iter()
                .filter(|c| theirs.contains(c) && !RENUMBERED.contains(&(table, c.as_str())))
                .collect();
            let list = shared.join(", ");
            let order =
                RENUMBERED.iter().find(|(t, _)| t == table).map(|(_, c)| format!(" ORDER BY {c}")).unwrap_or_default();
            copied += tx.execute(
                &format!(
                    "INSERT INTO main.{table} ({list}) SELECT {list} FROM archived.{table} WHERE {column} = ?1{order}"
                ),
                params![id],
            )?;
        }
        tx.commit()?;
        Ok(copied)
    })();
    target.execute("DETACH DATABASE archived", [])?;
    copied
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table of the current schema that names a bot is in [`INSTANCE_TABLES`] (a new table must be added
    /// there, or a moved bot would leave part of itself behind).
    #[test]
    fn the_list_covers_every_table_that_names_a_bot() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state::Database::create(&dir.path().join("maubot.db")).unwrap();
        drop(db);
        let conn = Connection::open(dir.path().join("maubot.db")).unwrap();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for table in tables {
            let cols = columns(&conn, "main", &table).unwrap();
            let names_a_bot = cols.iter().any(|c| c == "instance_id")
                || ["instances", "instance_overrides", "setup_progress"].contains(&table.as_str());
            let listed = INSTANCE_TABLES.iter().any(|(t, _)| *t == table);
            assert_eq!(names_a_bot, listed, "table {table} (columns {cols:?})");
        }
    }

    #[test]
    fn one_bots_rows_move_and_the_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from.db"), dir.path().join("to.db"));
        drop(crate::state::Database::create(&from).unwrap());
        drop(crate::state::Database::create(&to).unwrap());
        let source = Connection::open(&from).unwrap();
        for id in ["a", "b"] {
            source
                .execute(
                    "INSERT INTO instances (id, user_id, device_id, homeserver_url, access_token, created_at, sync_token)
                     VALUES (?1, ?2, 'DEV', 'http://hs', 'tok', 0, 's1')",
                    params![id, format!("@{id}:x")],
                )
                .unwrap();
            source
                .execute(
                    "INSERT INTO outbox (instance_id, room_id, txn_id, event_type, content, queued_at)
                     VALUES (?1, '!r:x', ?2, 'm.room.message', '{}', 0)",
                    params![id, format!("t-{id}")],
                )
                .unwrap();
        }
        keep_only(&source, "b").unwrap();
        drop(source);
        let mut target = Connection::open(&to).unwrap();
        target
            .execute(
                "INSERT INTO outbox (instance_id, room_id, txn_id, event_type, content, queued_at)
                 VALUES ('c', '!r:x', 't-c', 'm.room.message', '{}', 0)",
                [],
            )
            .unwrap();
        assert!(!has_rows(&target, "b").unwrap());
        assert_eq!(copy_into(&mut target, &from, "b").unwrap(), 2);
        assert!(has_rows(&target, "b").unwrap());
        assert!(!has_rows(&target, "a").unwrap(), "the other bot was not in the archive");
        let seqs: Vec<(i64, String)> = target
            .prepare("SELECT seq, instance_id FROM outbox ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(seqs, [(1, "c".to_owned()), (2, "b".to_owned())], "the outbox renumbered after the target's own");
        assert!(copy_into(&mut target, &from, "b").is_err(), "not twice: the rows exist");
    }
}

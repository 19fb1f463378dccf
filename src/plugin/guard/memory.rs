//! What the guard remembers, in its plugin database: the users it removed itself (so that only its own
//! removals are undone), and the users an operator cleared to be invited again after their own or a human's
//! decision kept them out. Both are per room; an invite the guard makes forgets both for that user.

use std::collections::HashSet;

use matrix_sdk::ruma::RoomId;

use super::Guard;
use super::plan::{Change, Step};

pub const MIGRATIONS: &[&str] = &["CREATE TABLE removed_by_guard (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (room_id, user_id)
    );
    CREATE TABLE cleared (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        by TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (room_id, user_id)
    );"];

use crate::plugin::unix_seconds as now;

/// Forgets what is remembered of `user` in `room`.
fn forget_user(conn: &rusqlite::Connection, room: &str, user: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM cleared WHERE room_id = ?1 AND user_id = ?2", [room, user])?;
    conn.execute("DELETE FROM removed_by_guard WHERE room_id = ?1 AND user_id = ?2", [room, user])?;
    Ok(())
}

impl Guard {
    fn db(&self) -> Result<&crate::plugin::storage::PluginDatabase, String> {
        self.database.get().ok_or_else(|| "the plugin database is not open".to_owned())
    }

    /// `(removed by the guard, cleared by an operator)` in `room`.
    pub(super) async fn memory_of(&self, room: &RoomId) -> Result<(HashSet<String>, HashSet<String>), String> {
        let room = room.to_string();
        self.db()?
            .call(move |conn| {
                let read = |table: &str| -> rusqlite::Result<HashSet<String>> {
                    let mut statement =
                        conn.prepare_cached(&format!("SELECT user_id FROM {table} WHERE room_id = ?1"))?;
                    let rows = statement.query_map([&room], |r| r.get(0))?;
                    rows.collect()
                };
                Ok((read("removed_by_guard")?, read("cleared")?))
            })
            .await
            .map_err(|e| format!("cannot read what the guard remembers: {e}"))
    }

    /// Records a change the guard made.
    pub(super) async fn remember(&self, room: &RoomId, step: &Step) -> Result<(), String> {
        let (room, user, change) = (room.to_string(), step.user_id.clone(), step.change);
        self.db()?
            .call(move |conn| {
                match change {
                    Change::Remove => {
                        conn.execute(
                            "INSERT OR REPLACE INTO removed_by_guard (room_id, user_id, at) VALUES (?1, ?2, ?3)",
                            rusqlite::params![room, user, now()],
                        )?;
                    }
                    Change::Invite => forget_user(conn, &room, &user)?,
                }
                Ok(())
            })
            .await
            .map_err(|e| format!("cannot record the change: {e}"))
    }

    /// Forgets what is remembered of `users` in `room` (they are back in it).
    pub(super) async fn forget(&self, room: &RoomId, users: Vec<String>) -> Result<(), String> {
        let room = room.to_string();
        self.db()?
            .call(move |conn| {
                let tx = conn.transaction()?;
                for user in &users {
                    forget_user(&tx, &room, user)?;
                }
                tx.commit()
            })
            .await
            .map_err(|e| format!("cannot update what the guard remembers: {e}"))
    }

    /// Lets `user` be invited to `room` once more, whatever kept them out.
    pub(super) async fn clear(&self, room: &RoomId, user: &str, by: &str) -> Result<(), String> {
        let (room, user, by) = (room.to_string(), user.to_owned(), by.to_owned());
        self.db()?
            .call(move |conn| {
                conn.execute(
                    "INSERT OR REPLACE INTO cleared (room_id, user_id, by, at) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![room, user, by, now()],
                )
            })
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot record the clearing: {e}"))
    }
}

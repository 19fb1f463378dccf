//! What the `github` plugin keeps in its database: the deliveries it has seen (deduplicated by hook and
//! delivery id, for [`DELIVERIES_KEPT_SECS`]: manual redeliveries come days later) and the notices waiting for
//! their digest window to end.
//!
//! A delivery and its notices are written in one transaction before the webhook is answered, so an accepted
//! delivery is posted even after a crash. Posting takes two steps that survive a crash between them: due
//! notices are first claimed by a flush (the id of its first notice) in one transaction, then handed to the
//! host as a job keyed by that flush, and deleted once the job is on disk. A flush found claimed after a
//! restart is handed over again under the same key, and the host accepts a key once: posted once.

use rusqlite::{OptionalExtension, params};

use super::filter::Notice;
use super::render::Item;
use crate::plugin::storage::{PluginDatabase, StorageError};

/// How long a delivery id is remembered (GitHub lets a delivery be redelivered for 3 days, 7 on GHES).
pub const DELIVERIES_KEPT_SECS: i64 = 30 * 86400;

pub const MIGRATIONS: &[&str] = &["CREATE TABLE deliveries (
         hook_id TEXT NOT NULL,
         delivery_id TEXT NOT NULL,
         event TEXT NOT NULL,
         received_at INTEGER NOT NULL,
         notices INTEGER NOT NULL,
         PRIMARY KEY (hook_id, delivery_id)
     );
     CREATE INDEX deliveries_by_age ON deliveries (received_at);
     CREATE TABLE notices (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         room_id TEXT NOT NULL,
         grp TEXT NOT NULL,
         item TEXT NOT NULL,
         due_at_ms INTEGER NOT NULL,
         flush INTEGER
     );
     CREATE INDEX notices_by_due ON notices (flush, due_at_ms);"];

/// What became of a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Seen before (a redelivery): nothing new was kept.
    Duplicate,
    /// Kept, with this many notices.
    New(usize),
}

/// Notices claimed to be posted as one message.
#[derive(Debug, PartialEq)]
pub struct Flush {
    pub id: i64,
    pub room_id: String,
    pub items: Vec<Item>,
}

/// Keeps a delivery and its notices. A notice joins the window of a waiting notice of its room and group, or
/// opens one that ends `digest_ms` from now.
pub async fn record(
    db: &PluginDatabase,
    hook_id: &str,
    delivery_id: &str,
    event: &str,
    notices: &[Notice],
    now_ms: i64,
    digest_ms: i64,
) -> Result<Recorded, StorageError> {
    let (hook_id, delivery_id, event) = (hook_id.to_owned(), delivery_id.to_owned(), event.to_owned());
    let rows: Vec<(String, String, String)> = notices
        .iter()
        .map(|n| (n.room.to_string(), n.group.clone(), serde_json::to_string(&n.item).unwrap_or_default()))
        .collect();
    db.call(move |conn| {
        let tx = conn.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO deliveries (hook_id, delivery_id, event, received_at, notices)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hook_id, delivery_id, event, now_ms / 1000, rows.len() as i64],
        )?;
        if inserted == 0 {
            return Ok(Recorded::Duplicate);
        }
        for (room, group, item) in &rows {
            let due: Option<i64> = tx
                .prepare_cached("SELECT MIN(due_at_ms) FROM notices WHERE room_id = ?1 AND grp = ?2 AND flush IS NULL")?
                .query_row(params![room, group], |r| r.get(0))?;
            tx.prepare_cached("INSERT INTO notices (room_id, grp, item, due_at_ms) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![room, group, item, due.unwrap_or(now_ms + digest_ms)])?;
        }
        tx.commit()?;
        Ok(Recorded::New(rows.len()))
    })
    .await
}

/// Claims the groups whose window has ended, and returns every claimed flush (those of earlier runs too),
/// oldest first.
pub async fn claim_due(db: &PluginDatabase, now_ms: i64) -> Result<Vec<Flush>, StorageError> {
    db.call(move |conn| {
        let tx = conn.transaction()?;
        let groups: Vec<(String, String, i64)> = tx
            .prepare_cached(
                "SELECT room_id, grp, MIN(id) FROM notices WHERE flush IS NULL AND due_at_ms <= ?1
                 GROUP BY room_id, grp",
            )?
            .query_map(params![now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (room, group, first) in &groups {
            tx.prepare_cached("UPDATE notices SET flush = ?1 WHERE room_id = ?2 AND grp = ?3 AND flush IS NULL")?
                .execute(params![first, room, group])?;
        }
        let rows: Vec<(i64, String, String)> = tx
            .prepare_cached("SELECT flush, room_id, item FROM notices WHERE flush IS NOT NULL ORDER BY flush, id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        tx.commit()?;
        let mut flushes: Vec<Flush> = Vec::new();
        for (id, room_id, item) in rows {
            // An item this version cannot read is dropped from the message rather than stopping every post.
            let Ok(item) = serde_json::from_str::<Item>(&item) else { continue };
            match flushes.last_mut() {
                Some(flush) if flush.id == id => flush.items.push(item),
                _ => flushes.push(Flush { id, room_id, items: vec![item] }),
            }
        }
        Ok(flushes)
    })
    .await
}

/// Forgets a flush's notices: the host has the job that posts them.
pub async fn done(db: &PluginDatabase, flush: i64) -> Result<(), StorageError> {
    db.call(move |conn| conn.execute("DELETE FROM notices WHERE flush = ?1", params![flush]).map(|_| ())).await
}

/// When the next waiting window ends (milliseconds since the epoch), if any notice waits.
pub async fn next_due(db: &PluginDatabase) -> Result<Option<i64>, StorageError> {
    db.call(|conn| {
        conn.query_row("SELECT MIN(due_at_ms) FROM notices WHERE flush IS NULL", [], |r| r.get::<_, Option<i64>>(0))
            .optional()
            .map(Option::flatten)
    })
    .await
}

/// Forgets deliveries older than [`DELIVERIES_KEPT_SECS`].
pub async fn prune(db: &PluginDatabase, now_secs: i64) -> Result<usize, StorageError> {
    db.call(move |conn| {
        conn.execute("DELETE FROM deliveries WHERE received_at < ?1", params![now_secs - DELIVERIES_KEPT_SECS])
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(text: &str) -> Item {
        Item::sample(text)
    }

    fn notice(room: &str, group: &str, text: &str) -> Notice {
        Notice { room: room.try_into().unwrap(), group: group.into(), item: item(text) }
    }

    fn open() -> (tempfile::TempDir, PluginDatabase) {
        let dir = tempfile::tempdir().unwrap();
        let db = PluginDatabase::open(&dir.path().join("plugin.db"), MIGRATIONS).unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn a_redelivery_is_a_duplicate_and_another_hook_is_not() {
        let (_dir, db) = open();
        let n = [notice("!a:x", "g", "one")];
        assert_eq!(record(&db, "h1", "d1", "push", &n, 1_000, 0).await.unwrap(), Recorded::New(1));
        assert_eq!(record(&db, "h1", "d1", "push", &n, 2_000, 0).await.unwrap(), Recorded::Duplicate);
        assert_eq!(record(&db, "h2", "d1", "push", &n, 2_000, 0).await.unwrap(), Recorded::New(1));
        // Kept for 30 days, then forgotten.
        assert_eq!(prune(&db, 1 + DELIVERIES_KEPT_SECS).await.unwrap(), 0);
        assert_eq!(prune(&db, 3 + DELIVERIES_KEPT_SECS).await.unwrap(), 2);
        assert_eq!(record(&db, "h1", "d1", "push", &n, 4_000, 0).await.unwrap(), Recorded::New(1));
    }

    #[tokio::test]
    async fn a_window_gathers_its_group_and_a_claimed_flush_survives_until_done() {
        let (_dir, db) = open();
        record(&db, "", "d1", "issues", &[notice("!a:x", "#7", "labeled bug")], 0, 10_000).await.unwrap();
        record(
            &db,
            "",
            "d2",
            "issues",
            &[notice("!a:x", "#7", "labeled ui"), notice("!b:x", "#7", "b")],
            4_000,
            10_000,
        )
        .await
        .unwrap();
        assert_eq!(next_due(&db).await.unwrap(), Some(10_000));
        assert_eq!(claim_due(&db, 9_999).await.unwrap(), vec![]);
        let flushes = claim_due(&db, 10_000).await.unwrap();
        assert_eq!(flushes.len(), 1, "{flushes:?}");
        let texts: Vec<&str> = flushes[0].items.iter().map(|i| i.summary.text.as_str()).collect();
        assert_eq!((flushes[0].room_id.as_str(), texts), ("!a:x", vec!["labeled bug", "labeled ui"]));
        // A notice arriving after the claim opens a window of its own; the claimed flush is unchanged.
        record(&db, "", "d3", "issues", &[notice("!a:x", "#7", "closed")], 10_001, 10_000).await.unwrap();
        let again = claim_due(&db, 13_999).await.unwrap();
        assert_eq!(again, flushes, "claimed again after a crash: the same flush, the same items");
        done(&db, flushes[0].id).await.unwrap();
        let later = claim_due(&db, 20_001).await.unwrap();
        let rooms: Vec<&str> = later.iter().map(|f| f.room_id.as_str()).collect();
        assert_eq!(rooms, ["!b:x", "!a:x"]);
        assert_eq!(later[1].items[0].summary.text, "closed");
    }
}

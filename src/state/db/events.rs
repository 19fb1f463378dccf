//! What makes event handling exactly-once: the events already handled, the outbox of sends the host still owes
//! (written in the same transaction that marks their event handled), and encrypted events that wait for their
//! room key.

use rusqlite::params;

use super::{Database, JobRecord, NewJob, now_unix};
use crate::state::StateError;

/// One send the host owes: a room event with the transaction id it must be sent with (derived from the event it
/// answers, so that a repeated send is deduplicated by the homeserver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Order of queueing (per database); sends to one room go out in this order.
    pub seq: i64,
    pub room_id: String,
    pub txn_id: String,
    pub event_type: String,
    /// The event content as JSON.
    pub content: String,
    /// The event this answers, for logs.
    pub answers: Option<String>,
    pub queued_at: i64,
}

/// An encrypted event that could not be decrypted yet, kept until its room key arrives or it is too old.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub event_id: String,
    pub room_id: String,
    /// The raw event as JSON.
    pub event: String,
    pub received_at: i64,
}

impl Database {
    pub async fn is_handled(&self, id: &str, event_id: &str) -> Result<bool, StateError> {
        let (id, event_id) = (id.to_owned(), event_id.to_owned());
        self.call(move |conn| {
            conn.prepare_cached("SELECT 1 FROM handled_events WHERE instance_id = ?1 AND event_id = ?2")?
                .exists(params![id, event_id])
        })
        .await
    }

    /// Marks `event_id` handled and queues what answers it (sends, and jobs accepted for it), in one
    /// transaction. Returns the queued entries with their sequence numbers, and the jobs that were new.
    pub async fn mark_handled(
        &self,
        id: &str,
        event_id: &str,
        sends: Vec<OutboxEntry>,
        jobs: Vec<NewJob>,
    ) -> Result<(Vec<OutboxEntry>, Vec<JobRecord>), StateError> {
        let (id, event_id) = (id.to_owned(), event_id.to_owned());
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let now = now_unix();
            let queued = insert_sends(&tx, &id, sends, now)?;
            let accepted = super::jobs::insert_jobs(&tx, &id, jobs, now)?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO handled_events (instance_id, event_id, handled_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, event_id, now])?;
            tx.commit()?;
            Ok((queued, accepted))
        })
        .await
    }

    /// Queues sends that answer no event (a plugin's own, with idempotency keys). A send whose transaction id
    /// is queued already is left out. Returns the queued entries.
    pub async fn queue_sends(&self, id: &str, sends: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let queued = insert_sends(&tx, &id, sends, now_unix())?;
            tx.commit()?;
            Ok(queued)
        })
        .await
    }

    /// The sends an instance still owes, oldest first.
    pub async fn outbox(&self, id: &str) -> Result<Vec<OutboxEntry>, StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, room_id, txn_id, event_type, content, answers, queued_at FROM outbox
                 WHERE instance_id = ?1 ORDER BY seq",
            )?;
            stmt.query_map(params![id], |row| {
                Ok(OutboxEntry {
                    seq: row.get(0)?,
                    room_id: row.get(1)?,
                    txn_id: row.get(2)?,
                    event_type: row.get(3)?,
                    content: row.get(4)?,
                    answers: row.get(5)?,
                    queued_at: row.get(6)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// Forgets a send that went out (or that the homeserver refused for good).
    pub async fn remove_sent(&self, id: &str, seq: i64) -> Result<(), StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.prepare_cached("DELETE FROM outbox WHERE instance_id = ?1 AND seq = ?2")?
                .execute(params![id, seq])
                .map(drop)
        })
        .await
    }

    /// Forgets handled events older than `max_age_secs` (they are too old to be answered again anyway).
    pub async fn prune_handled(&self, max_age_secs: i64) -> Result<usize, StateError> {
        self.call(move |conn| {
            conn.execute("DELETE FROM handled_events WHERE handled_at < ?1", params![now_unix() - max_age_secs])
        })
        .await
    }

    /// Keeps an encrypted event until its room key arrives.
    pub async fn add_pending(&self, id: &str, event: &PendingEvent) -> Result<(), StateError> {
        let (id, event) = (id.to_owned(), event.clone());
        self.call(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO pending_decryption (instance_id, event_id, room_id, event, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, event.event_id, event.room_id, event.event, event.received_at],
            )
            .map(drop)
        })
        .await
    }

    /// The events an instance is waiting to decrypt, oldest first.
    pub async fn pending(&self, id: &str) -> Result<Vec<PendingEvent>, StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT event_id, room_id, event, received_at FROM pending_decryption WHERE instance_id = ?1
                 ORDER BY received_at, event_id",
            )?;
            stmt.query_map(params![id], |row| {
                Ok(PendingEvent {
                    event_id: row.get(0)?,
                    room_id: row.get(1)?,
                    event: row.get(2)?,
                    received_at: row.get(3)?,
                })
            })?
            .collect()
        })
        .await
    }

    pub async fn remove_pending(&self, id: &str, event_id: &str) -> Result<(), StateError> {
        let (id, event_id) = (id.to_owned(), event_id.to_owned());
        self.call(move |conn| {
            conn.execute(
                "DELETE FROM pending_decryption WHERE instance_id = ?1 AND event_id = ?2",
                params![id, event_id],
            )
            .map(drop)
        })
        .await
    }
}

/// Inserts sends into the outbox (those not there yet); returns them with their sequence numbers.
pub(super) fn insert_sends(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    sends: Vec<OutboxEntry>,
    now: i64,
) -> rusqlite::Result<Vec<OutboxEntry>> {
    let mut queued = Vec::with_capacity(sends.len());
    for mut send in sends {
        let inserted = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO outbox (instance_id, room_id, txn_id, event_type, content, answers, queued_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![id, send.room_id, send.txn_id, send.event_type, send.content, send.answers, now])?;
        if inserted == 1 {
            send.seq = tx.last_insert_rowid();
            send.queued_at = now;
            queued.push(send);
        }
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(txn: &str) -> OutboxEntry {
        OutboxEntry {
            seq: 0,
            room_id: "!r:x".into(),
            txn_id: txn.into(),
            event_type: "m.room.message".into(),
            content: "{}".into(),
            answers: Some("$e".into()),
            queued_at: 0,
        }
    }

    #[tokio::test]
    async fn handling_and_queueing_are_one_step_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(&dir.path().join("maubot.db")).unwrap();
        assert!(!db.is_handled("a", "$e").await.unwrap());
        let (queued, _) = db.mark_handled("a", "$e", vec![send("t0"), send("t1")], Vec::new()).await.unwrap();
        assert_eq!(queued.len(), 2);
        assert!(queued[0].seq < queued[1].seq);
        assert!(db.is_handled("a", "$e").await.unwrap());
        assert!(!db.is_handled("b", "$e").await.unwrap());
        // The same event handled again queues nothing twice.
        assert!(db.mark_handled("a", "$e", vec![send("t0")], Vec::new()).await.unwrap().0.is_empty());
        assert_eq!(db.outbox("a").await.unwrap(), queued);
        db.remove_sent("a", queued[0].seq).await.unwrap();
        assert_eq!(db.outbox("a").await.unwrap(), queued[1..].to_vec());
        assert_eq!(db.prune_handled(3600).await.unwrap(), 0);
        assert_eq!(db.prune_handled(-10).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn pending_events_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(&dir.path().join("maubot.db")).unwrap();
        let event = PendingEvent { event_id: "$e".into(), room_id: "!r:x".into(), event: "{}".into(), received_at: 3 };
        db.add_pending("a", &event).await.unwrap();
        db.add_pending("a", &event).await.unwrap();
        assert_eq!(db.pending("a").await.unwrap(), vec![event]);
        db.remove_pending("a", "$e").await.unwrap();
        assert!(db.pending("a").await.unwrap().is_empty());
    }
}

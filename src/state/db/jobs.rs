//! The jobs plugins accepted: kept until done (or given up), and the keys of finished ones for a while, so that
//! a job key is accepted once.

use rusqlite::{OptionalExtension, params};

use super::events::insert_sends;
use super::{Database, OutboxEntry, now_unix};
use crate::state::StateError;

/// A job to accept: its key, payload and (JSON) origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub key: String,
    /// JSON.
    pub payload: String,
    /// JSON: the event it answers, if any.
    pub origin: Option<String>,
}

/// A job the host keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub key: String,
    pub payload: String,
    pub origin: Option<String>,
    /// How often it was started.
    pub attempts: u32,
    pub accepted_at: i64,
}

impl Database {
    /// Accepts jobs a plugin made on its own; returns those that were new (a key waiting or done lately is
    /// not accepted twice).
    pub async fn accept_jobs(&self, id: &str, jobs: Vec<NewJob>) -> Result<Vec<JobRecord>, StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let accepted = insert_jobs(&tx, &id, jobs, now_unix())?;
            tx.commit()?;
            Ok(accepted)
        })
        .await
    }

    /// The jobs an instance has not finished, oldest first.
    pub async fn jobs(&self, id: &str) -> Result<Vec<JobRecord>, StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, payload, origin, attempts, accepted_at FROM jobs WHERE instance_id = ?1
                 ORDER BY accepted_at, rowid",
            )?;
            stmt.query_map(params![id], |row| {
                Ok(JobRecord {
                    key: row.get(0)?,
                    payload: row.get(1)?,
                    origin: row.get(2)?,
                    attempts: row.get(3)?,
                    accepted_at: row.get(4)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// Counts a start of the job `key`; returns the attempt it is (1 the first time), or None when the job is
    /// not kept (any more).
    pub async fn start_job(&self, id: &str, key: &str) -> Result<Option<u32>, StateError> {
        let (id, key) = (id.to_owned(), key.to_owned());
        self.call(move |conn| {
            conn.prepare_cached(
                "UPDATE jobs SET attempts = attempts + 1 WHERE instance_id = ?1 AND key = ?2 RETURNING attempts",
            )?
            .query_row(params![id, key], |row| row.get(0))
            .optional()
        })
        .await
    }

    /// Marks the job `key` done and queues what it sends and the jobs it accepts in turn, in one transaction
    /// (a finished job's answers are never lost and never queued twice). A job given up finishes with nothing.
    pub async fn finish_job(
        &self,
        id: &str,
        key: &str,
        sends: Vec<OutboxEntry>,
        jobs: Vec<NewJob>,
    ) -> Result<(Vec<OutboxEntry>, Vec<JobRecord>), StateError> {
        let (id, key) = (id.to_owned(), key.to_owned());
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let now = now_unix();
            let removed =
                tx.prepare_cached("DELETE FROM jobs WHERE instance_id = ?1 AND key = ?2")?.execute(params![id, key])?;
            tx.prepare_cached("INSERT OR IGNORE INTO jobs_done (instance_id, key, done_at) VALUES (?1, ?2, ?3)")?
                .execute(params![id, key, now])?;
            let done = if removed == 1 {
                (insert_sends(&tx, &id, sends, now)?, insert_jobs(&tx, &id, jobs, now)?)
            } else {
                Default::default()
            };
            tx.commit()?;
            Ok(done)
        })
        .await
    }

    /// Forgets the keys of jobs finished more than `max_age_secs` ago (a key may be used again after that).
    pub async fn prune_jobs_done(&self, max_age_secs: i64) -> Result<usize, StateError> {
        self.call(move |conn| {
            conn.execute("DELETE FROM jobs_done WHERE done_at < ?1", params![now_unix() - max_age_secs])
        })
        .await
    }
}

/// Inserts the jobs whose key is neither kept nor done lately; returns those.
pub(super) fn insert_jobs(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    jobs: Vec<NewJob>,
    now: i64,
) -> rusqlite::Result<Vec<JobRecord>> {
    let mut accepted = Vec::with_capacity(jobs.len());
    for job in jobs {
        let done = tx
            .prepare_cached("SELECT 1 FROM jobs_done WHERE instance_id = ?1 AND key = ?2")?
            .exists(params![id, job.key])?;
        if done {
            continue;
        }
        let inserted = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO jobs (instance_id, key, payload, origin, attempts, accepted_at)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5)",
            )?
            .execute(params![id, job.key, job.payload, job.origin, now])?;
        if inserted == 1 {
            accepted.push(JobRecord {
                key: job.key,
                payload: job.payload,
                origin: job.origin,
                attempts: 0,
                accepted_at: now,
            });
        }
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(key: &str) -> NewJob {
        NewJob { key: key.into(), payload: "{}".into(), origin: None }
    }

    #[tokio::test]
    async fn a_job_key_is_accepted_once_and_its_answers_queued_when_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(&dir.path().join("maubot.db")).unwrap();
        assert_eq!(db.accept_jobs("a", vec![job("j1"), job("j1")]).await.unwrap().len(), 1);
        assert!(db.accept_jobs("a", vec![job("j1")]).await.unwrap().is_empty(), "waiting: not again");
        assert_eq!(db.accept_jobs("b", vec![job("j1")]).await.unwrap().len(), 1, "keys are per instance");
        assert_eq!(db.start_job("a", "j1").await.unwrap(), Some(1));
        assert_eq!(db.start_job("a", "j1").await.unwrap(), Some(2));
        assert_eq!(db.jobs("a").await.unwrap()[0].attempts, 2);
        let send = OutboxEntry {
            seq: 0,
            room_id: "!r:x".into(),
            txn_id: "t".into(),
            event_type: "m.room.message".into(),
            content: "{}".into(),
            answers: None,
            queued_at: 0,
        };
        let (queued, follow_ups) = db.finish_job("a", "j1", vec![send.clone()], vec![job("j2")]).await.unwrap();
        assert_eq!((queued.len(), follow_ups.len()), (1, 1));
        assert_eq!(
            db.finish_job("a", "j1", vec![send], vec![job("j3")]).await.unwrap(),
            Default::default(),
            "finished once"
        );
        let kept: Vec<String> = db.jobs("a").await.unwrap().into_iter().map(|j| j.key).collect();
        assert_eq!(kept, vec!["j2".to_owned()], "the follow-up is kept, the finished job is not");
        assert_eq!(db.start_job("a", "j1").await.unwrap(), None);
        assert!(db.accept_jobs("a", vec![job("j1")]).await.unwrap().is_empty(), "done lately: not again");
        assert_eq!(db.prune_jobs_done(-10).await.unwrap(), 1);
        assert_eq!(db.accept_jobs("a", vec![job("j1")]).await.unwrap().len(), 1);
    }
}

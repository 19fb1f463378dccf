//! The job runner: the jobs a plugin accepted (`plugin/job.rs`), carried out beside the sync loop, a few at
//! a time, each tried again after a failure with a backoff and resumed after a restart; what a finished job
//! sends is queued with the mark that it is done.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::handling::{to_new_job, to_send};
use super::{Outcome, Run, backoff, job_transaction_id};
use crate::plugin::{Action, Job, JobOrigin, job};
use crate::state::db::{JobRecord, NewJob, OutboxEntry};
use crate::telemetry::scrub::scrubbed;

/// Jobs of one instance that run at the same time; more wait their turn.
pub const MAX_CONCURRENT_JOBS: usize = 4;

impl Run<'_> {
    /// Runs the jobs kept from earlier runs, then those accepted while this run lasts. Ends only when the
    /// database cannot be used.
    pub(super) async fn run_jobs(
        &self,
        kept: Vec<JobRecord>,
        mut accepted: mpsc::UnboundedReceiver<JobRecord>,
    ) -> Outcome {
        if !kept.is_empty() {
            tracing::info!(instance = %self.instance.id, jobs = kept.len(), "resuming the jobs accepted before");
        }
        let mut waiting: VecDeque<JobRecord> = kept.into();
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < MAX_CONCURRENT_JOBS
                && let Some(job) = waiting.pop_front()
            {
                running.push(self.carry_out(job));
            }
            tokio::select! {
                Some(job) = accepted.recv() => waiting.push_back(job),
                Some(result) = running.next(), if !running.is_empty() => {
                    if let Err(outcome) = result {
                        return outcome;
                    }
                }
            }
        }
    }

    /// One job, tried until it finishes or is given up.
    async fn carry_out(&self, record: JobRecord) -> Result<(), Outcome> {
        let me = self.instance;
        let db_failed = |e: crate::state::StateError| Outcome::Failed(format!("cannot keep the plugin's jobs: {e}"));
        let key = scrubbed(&record.key);
        loop {
            let Some(attempt) = me.db.start_job(&me.id, &record.key).await.map_err(db_failed)? else {
                return Ok(());
            };
            if attempt > job::MAX_ATTEMPTS {
                tracing::error!(instance = %me.id, job = %key, attempts = attempt - 1, "giving up a job that was tried {} times (it was started and did not finish)", job::MAX_ATTEMPTS);
                me.db.finish_job(&me.id, &record.key, Vec::new(), Vec::new()).await.map_err(db_failed)?;
                return Ok(());
            }
            let job = match to_job(&record, attempt) {
                Ok(job) => job,
                Err(why) => {
                    tracing::error!(instance = %me.id, job = %key, error = %why, "giving up a job that cannot be read");
                    me.db.finish_job(&me.id, &record.key, Vec::new(), Vec::new()).await.map_err(db_failed)?;
                    return Ok(());
                }
            };
            tracing::info!(instance = %me.id, job = %key, attempt, "running a job");
            let error = match me.plugin.run_job(&me.context, &job).await {
                Ok(actions) => match self.answers_of(&job, actions) {
                    Ok((sends, jobs)) => {
                        let (queued, accepted) =
                            me.db.finish_job(&me.id, &record.key, sends, jobs).await.map_err(db_failed)?;
                        self.outstanding.add(queued.len());
                        for send in queued {
                            let _ = self.outbox.send(send);
                        }
                        for job in accepted {
                            let _ = self.jobs.send(job);
                        }
                        tracing::info!(instance = %me.id, job = %key, attempt, "the job is done");
                        return Ok(());
                    }
                    Err(why) => crate::plugin::PluginError::permanent(why),
                },
                Err(error) => error,
            };
            let why = scrubbed(&error.message);
            if error.permanent || attempt >= job::MAX_ATTEMPTS {
                tracing::error!(instance = %me.id, job = %key, attempt, error = %why, "the job failed; giving it up");
                me.db.finish_job(&me.id, &record.key, Vec::new(), Vec::new()).await.map_err(db_failed)?;
                return Ok(());
            }
            let delay = job_backoff(attempt);
            tracing::warn!(instance = %me.id, job = %key, attempt, error = %why, retry_in_s = delay.as_secs(), "the job failed; trying again");
            tokio::time::sleep(delay).await;
        }
    }

    /// What a finished job sends, and the jobs it accepts in turn (answering the same event).
    fn answers_of(&self, job: &Job, actions: Vec<Action>) -> Result<(Vec<OutboxEntry>, Vec<NewJob>), String> {
        let derived = |index| job_transaction_id(&job.key, index).to_string();
        let (mut sends, mut jobs) = (Vec::new(), Vec::new());
        for (index, action) in actions.into_iter().enumerate() {
            match action {
                Action::Job { key, payload } => {
                    jobs.extend(to_new_job(&self.instance.id, job.origin.as_ref(), key, &payload));
                }
                action => sends.push(to_send(
                    job.origin.as_ref(),
                    &derived,
                    index,
                    action,
                    self.instance.plugin.changes_rooms(),
                )?),
            }
        }
        Ok((sends, jobs))
    }
}

/// The plugin's view of a kept job.
fn to_job(record: &JobRecord, attempt: u32) -> Result<Job, String> {
    let payload = serde_json::from_str(&record.payload).map_err(|e| format!("payload: {e}"))?;
    let origin: Option<JobOrigin> = match &record.origin {
        Some(origin) => Some(serde_json::from_str(origin).map_err(|e| format!("origin: {e}"))?),
        None => None,
    };
    Ok(Job { key: record.key.clone(), payload, origin, attempt, accepted_at: record.accepted_at })
}

/// About 4 s, 8 s, 16 s, then 30 s between a job's attempts.
fn job_backoff(attempt: u32) -> Duration {
    backoff(attempt + 3)
}

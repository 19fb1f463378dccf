//! Password hashing (bcrypt) on a thread of its own with a short queue: a flood of logins waits here, or is
//! refused, but never takes the runtime's blocking threads, which the bots' stores use.

use std::sync::mpsc;

use tokio::sync::oneshot;

/// Hashes waiting besides the one being computed; more are refused at once.
pub const QUEUE: usize = 4;

struct Job {
    password: String,
    hash: String,
    reply: oneshot::Sender<bool>,
}

/// The thread starts with the first check: most hosts see few logins, and an idle thread still costs memory.
pub struct HashPool {
    jobs: std::sync::OnceLock<mpsc::SyncSender<Job>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// The queue is full: answer "try again".
    Full,
}

impl HashPool {
    pub fn start() -> Self {
        HashPool { jobs: std::sync::OnceLock::new() }
    }

    fn jobs(&self) -> &mpsc::SyncSender<Job> {
        self.jobs.get_or_init(Self::spawn)
    }

    fn spawn() -> mpsc::SyncSender<Job> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("maubot-bcrypt".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    let matches = bcrypt::verify(&job.password, &job.hash).unwrap_or(false);
                    let _ = job.reply.send(matches);
                }
            })
            .expect("starting the hashing thread");
        jobs
    }

    /// Whether `password` matches the bcrypt `hash`, or [`Busy`] when too many checks wait already.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, Busy> {
        let (reply, answer) = oneshot::channel();
        let job = Job { password: password.to_owned(), hash: hash.to_owned(), reply };
        self.jobs().try_send(job).map_err(|_| Busy::Full)?;
        Ok(answer.await.unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_passwords_and_refuses_when_the_queue_is_full() {
        let pool = HashPool::start();
        let hash = bcrypt::hash("right", 4).unwrap();
        assert_eq!(pool.verify("right", &hash).await, Ok(true));
        assert_eq!(pool.verify("wrong", &hash).await, Ok(false));
        let slow = bcrypt::hash("x", 10).unwrap();
        let pool = std::sync::Arc::new(pool);
        let attempts: Vec<_> = (0..20)
            .map(|_| {
                let (pool, slow) = (pool.clone(), slow.clone());
                tokio::spawn(async move { pool.verify("y", &slow).await })
            })
            .collect();
        let mut results = Vec::new();
        for attempt in attempts {
            results.push(attempt.await.unwrap());
        }
        assert!(results.contains(&Err(Busy::Full)), "a flood is refused, not queued without end");
        assert!(results.iter().filter(|r| r.is_ok()).count() <= QUEUE + 1, "{results:?}");
    }
}

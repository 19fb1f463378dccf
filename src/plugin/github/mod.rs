//! `github`: GitHub webhook deliveries posted into rooms, quiet by default (seed 003: "The bot is super verbose
//! and posts all comments on all issues").
//!
//! GitHub posts to `/_plugins/<instance>/webhook` (the management server, the host's public listener, or a
//! listener of the instance's own). A delivery's signature is checked over the raw body before anything else
//! (`delivery.rs`); the routes and their filters decide which rooms hear of it (`filter.rs`) and what it says
//! (`render.rs`); the delivery and its notices are kept in the plugin's database before the answer goes out
//! (`queue.rs`: a redelivery, even days later, is recognised), and the plugin's background task posts each
//! room's notices once their digest window has ended, as a job (posted once, across crashes).

pub mod config;
pub mod delivery;
pub mod filter;
pub mod queue;
pub mod render;

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use matrix_sdk::ruma::OwnedRoomId;
use matrix_sdk::ruma::events::Mentions;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, oneshot, watch};

use self::config::GithubConfig;
use self::filter::{CompiledRoute, Routed};
use super::storage::PluginDatabase;
use super::{
    Action, ConfigProblem, Event, EventType, Job, Plugin, PluginContext, PluginError, PluginType, Subscriptions,
    Unprompted, UnpromptedSink, http, invites, parse_config,
};

/// GitHub's largest webhook payload.
const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;
/// How often deliveries past their time are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The wait after the database failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

pub struct GithubType;

impl PluginType for GithubType {
    fn name(&self) -> &'static str {
        "github"
    }

    fn description(&self) -> &'static str {
        "posts GitHub webhook deliveries into rooms, quiet by default (pushes to the default branch, releases, \
         pull requests and issues opened or closed, failed workflow runs)"
    }

    fn check_config(&self, config: &serde_json::Value) -> Vec<ConfigProblem> {
        match parse_config::<GithubConfig>(config) {
            Ok(parsed) => parsed.problems(),
            Err(problem) => vec![problem],
        }
    }

    fn build(&self, config: &serde_json::Value) -> Result<Box<dyn Plugin>, ConfigProblem> {
        let config: GithubConfig = parse_config(config)?;
        let secret = config.secret.text().map(|s| s.as_bytes().to_vec()).ok_or_else(|| ConfigProblem {
            key: "secret".into(),
            message: "the webhook secret was not read: name it as `{ credential: NAME }`".into(),
        })?;
        if secret.is_empty() {
            return Err(ConfigProblem { key: "secret".into(), message: "the webhook secret is empty".into() });
        }
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                CompiledRoute::new(route).ok_or_else(|| ConfigProblem {
                    key: format!("routes.{i}"),
                    message: "the route is not valid".into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(Github { config, secret, routes, database: OnceLock::new(), wake: Notify::new() }))
    }
}

pub struct Github {
    config: GithubConfig,
    secret: Vec<u8>,
    routes: Vec<CompiledRoute>,
    database: OnceLock<PluginDatabase>,
    /// Woken when a delivery left notices to post.
    wake: Notify,
}

/// A post the background task hands to the host as a job.
#[derive(Debug, Deserialize)]
struct Post {
    room_id: OwnedRoomId,
    body: String,
    html: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Github {
    /// Hands the due notices to the host, one job per room and group.
    async fn post_due(&self, database: &PluginDatabase, unprompted: &UnpromptedSink, instance: &str) -> Round {
        let flushes = match queue::claim_due(database, now_ms()).await {
            Ok(flushes) => flushes,
            Err(e) => {
                tracing::error!(instance = %instance, error = %e, "cannot read the notices waiting to be posted");
                return Round::Failed;
            }
        };
        for flush in flushes {
            let (body, html) = render::message(&flush.items);
            let key = format!("post {}", flush.id);
            let payload = json!({"room_id": flush.room_id, "body": body, "html": html});
            if let Err(e) = super::job::check(&key, &payload) {
                // Cannot happen with the message caps of render.rs; said loudly if they ever change.
                tracing::error!(instance = %instance, error = %e, "a digest cannot be posted; dropped");
            } else {
                let (accepted, kept) = oneshot::channel();
                if unprompted.send(Unprompted::Job { key, payload, accepted: Some(accepted) }).is_err() {
                    return Round::Stopping;
                }
                // Kept now, or kept before a crash under the same key: the host posts it once.
                if kept.await.is_err() {
                    return Round::Stopping;
                }
            }
            if let Err(e) = queue::done(database, flush.id).await {
                tracing::error!(instance = %instance, error = %e, "cannot forget notices already handed over; they are handed over again (and posted once)");
                return Round::Failed;
            }
        }
        Round::Done
    }

    /// Answers one webhook delivery.
    async fn receive(&self, context: &PluginContext, request: http::HttpRequest) -> http::HttpResponse {
        if request.path != "/webhook" {
            return http::HttpResponse::error(404, "not_found", "the webhook is at /webhook");
        }
        if request.method != "POST" {
            return http::HttpResponse::error(405, "method_not_allowed", "GitHub POSTs to the webhook");
        }
        let delivery = match delivery::read(&self.secret, &request) {
            Ok(delivery) => delivery,
            Err(refused) => {
                tracing::info!(instance = %context.instance, client = %request.peer, status = refused.status, "refused a webhook delivery");
                return refused;
            }
        };
        let log_id = crate::telemetry::scrub::for_log(&delivery.id);
        let event = crate::telemetry::scrub::for_log(&delivery.event);
        if delivery.event == "ping" {
            tracing::info!(instance = %context.instance, delivery = %log_id, "GitHub pinged the webhook");
            return http::HttpResponse::json(200, &json!({"status": "pong", "zen": delivery.payload["zen"]}));
        }
        let Some(database) = self.database.get() else {
            return http::HttpResponse::error(503, "starting", "the bot is starting; redeliver in a moment");
        };
        let routed = filter::route(&self.routes, &delivery.event, &delivery.payload);
        let notices = match &routed {
            Routed::Notices(notices) => notices.as_slice(),
            Routed::Ignored(_) => &[],
        };
        let digest_ms = self.config.digest_secs as i64 * 1000;
        match queue::record(database, &delivery.hook_id, &delivery.id, &delivery.event, notices, now_ms(), digest_ms)
            .await
        {
            Ok(queue::Recorded::Duplicate) => {
                tracing::info!(instance = %context.instance, delivery = %log_id, event = %event, "a delivery seen before; not posted again");
                http::HttpResponse::json(200, &json!({"status": "duplicate"}))
            }
            Ok(queue::Recorded::New(0)) => {
                let reason = match routed {
                    Routed::Ignored(reason) => reason,
                    Routed::Notices(_) => String::new(),
                };
                tracing::info!(instance = %context.instance, delivery = %log_id, event = %event, reason = %crate::telemetry::scrub::for_log(&reason), "a delivery with nothing to post");
                http::HttpResponse::json(202, &json!({"status": "ignored", "reason": reason}))
            }
            Ok(queue::Recorded::New(count)) => {
                tracing::info!(instance = %context.instance, delivery = %log_id, event = %event, notices = count, "a delivery queued for posting");
                self.wake.notify_one();
                http::HttpResponse::json(202, &json!({"status": "queued", "notices": count}))
            }
            Err(e) => {
                tracing::error!(instance = %context.instance, delivery = %log_id, error = %e, "cannot keep a webhook delivery; GitHub shows it failed and it can be redelivered");
                http::HttpResponse::error(503, "not_kept", "the delivery could not be kept; redeliver it")
            }
        }
    }
}

/// How a round of posting went.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    Done,
    /// The database failed: the next round waits a little.
    Failed,
    /// The instance is stopping.
    Stopping,
}

/// Resolves when the instance stops.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[async_trait]
impl Plugin for Github {
    /// Answers and notices only: the bot's own events stay out of its syncs.
    fn changes_rooms(&self) -> bool {
        false
    }

    fn accepts_invite_from(&self, inviter: &str) -> bool {
        invites::allowed(&self.config.allow_invites_from, inviter)
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::of([EventType::Invite])
    }

    async fn start(&self, context: &PluginContext, _unprompted: UnpromptedSink) -> Result<(), PluginError> {
        let database =
            context.open_database(queue::MIGRATIONS).await.map_err(|e| PluginError::permanent(e.to_string()))?;
        // A 2xx is a promise to post: the delivery is on disk (not only in the OS's cache) before it goes out.
        database
            .call(|conn| conn.pragma_update(None, "synchronous", "FULL"))
            .await
            .map_err(|e| PluginError::transient(e.to_string()))?;
        let _ = self.database.set(database);
        Ok(())
    }

    async fn on_event(&self, _context: &PluginContext, _event: &Event) -> Result<Vec<Action>, PluginError> {
        Ok(Vec::new())
    }

    async fn run(
        &self,
        context: &PluginContext,
        unprompted: UnpromptedSink,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), PluginError> {
        let Some(database) = self.database.get() else {
            return Err(PluginError::transient("the plugin database is not open"));
        };
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_prune {
                match queue::prune(database, super::unix_seconds()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(instance = %context.instance, forgotten = n, "forgot old delivery ids"),
                    Err(e) => {
                        tracing::warn!(instance = %context.instance, error = %e, "cannot forget old delivery ids")
                    }
                }
                next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
            }
            let round = self.post_due(database, &unprompted, &context.instance).await;
            if round == Round::Stopping {
                return Ok(());
            }
            let wait = match queue::next_due(database).await {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64),
                Ok(None) => PRUNE_EVERY,
                Err(e) => {
                    tracing::error!(instance = %context.instance, error = %e, "cannot read when notices are due");
                    RETRY_AFTER_FAILURE
                }
            };
            // A database that fails is not asked again at once (no busy loop on a full disk).
            let wait = if round == Round::Failed { wait.max(RETRY_AFTER_FAILURE) } else { wait };
            let until = (tokio::time::Instant::now() + wait).min(next_prune);
            tokio::select! {
                () = stopped(&mut shutdown) => return Ok(()),
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn run_job(&self, _context: &PluginContext, job: &Job) -> Result<Vec<Action>, PluginError> {
        let post: Post = serde_json::from_value(job.payload.clone())
            .map_err(|e| PluginError::permanent(format!("a post job that cannot be read: {e}")))?;
        // No one is mentioned: an issue titled "@room ..." or with someone's name pings nobody (an empty
        // `m.mentions` turns off the homeserver's matching of the body).
        let content = RoomMessageEventContent::notice_html(post.body, post.html).add_mentions(Mentions::new());
        Ok(vec![Action::Send { room_id: post.room_id, content, key: Some(job.key.clone()), link_previews: false }])
    }

    fn http(&self) -> Option<http::HttpSpec> {
        Some(http::HttpSpec { max_body_bytes: MAX_BODY_BYTES })
    }

    async fn on_http(
        &self,
        context: &PluginContext,
        request: http::HttpRequest,
        _unprompted: &UnpromptedSink,
    ) -> http::HttpResponse {
        self.receive(context, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::github::filter::Notice;
    use crate::plugin::github::render::Item;

    fn notice(text: &str) -> Notice {
        Notice { room: "!a:x".try_into().unwrap(), group: "g".into(), item: Item::sample(text) }
    }

    /// A host that keeps jobs: answers each with `kept` and records the keys.
    fn host(kept: bool) -> (UnpromptedSink, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let (sink, mut jobs) = tokio::sync::mpsc::unbounded_channel::<Unprompted>();
        let keys = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = keys.clone();
        tokio::spawn(async move {
            while let Some(Unprompted::Job { key, accepted, .. }) = jobs.recv().await {
                seen.lock().unwrap().push(key);
                let _ = accepted.unwrap().send(kept);
            }
        });
        (sink, keys)
    }

    #[tokio::test]
    async fn a_flush_claimed_before_a_crash_is_handed_over_again_under_its_key_and_then_forgotten() {
        let config = json!({"secret": "s", "routes": [{"repository": "o/r", "room": "!a:x"}], "digest_secs": 0});
        let built = GithubType.build(&config).unwrap();
        let github = Github {
            config: parse_config(&config).unwrap(),
            secret: b"s".to_vec(),
            routes: vec![],
            database: OnceLock::new(),
            wake: Notify::new(),
        };
        drop(built);
        let dir = tempfile::tempdir().unwrap();
        let db = PluginDatabase::open(&dir.path().join("plugin.db"), queue::MIGRATIONS).unwrap();
        queue::record(&db, "h", "d1", "push", &[notice("one")], now_ms(), 0).await.unwrap();
        let (sink, keys) = host(true);
        assert_eq!(github.post_due(&db, &sink, "gh").await, Round::Done);
        assert_eq!(*keys.lock().unwrap(), ["post 1"]);
        assert_eq!(queue::claim_due(&db, now_ms()).await.unwrap(), vec![], "handed over, then forgotten");

        // Claimed, then the process died before handing it over: the next round hands over the same flush
        // under the same key, which the host already has (`false`), and forgets it.
        queue::record(&db, "h", "d2", "push", &[notice("two")], now_ms(), 0).await.unwrap();
        let claimed = queue::claim_due(&db, now_ms()).await.unwrap();
        let (sink, keys) = host(false);
        assert_eq!(github.post_due(&db, &sink, "gh").await, Round::Done);
        assert_eq!(*keys.lock().unwrap(), [format!("post {}", claimed[0].id)]);
        assert_eq!(queue::claim_due(&db, now_ms()).await.unwrap(), vec![]);

        // A host that is going away: the notices stay for the next run.
        queue::record(&db, "h", "d3", "push", &[notice("three")], now_ms(), 0).await.unwrap();
        let (sink, jobs) = tokio::sync::mpsc::unbounded_channel::<Unprompted>();
        drop(jobs);
        assert_eq!(github.post_due(&db, &sink, "gh").await, Round::Stopping);
        assert_eq!(queue::claim_due(&db, now_ms()).await.unwrap().len(), 1);
    }
}

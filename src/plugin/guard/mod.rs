//! `guard`: keeps the membership of the rooms it is given as its policy says (seed 001), without going
//! against anyone's choice.
//!
//! The policy (`config.rs`, and a JSON file read again when it changes: `policy.rs`) names the users who
//! belong in each room: listed users, the members or admins of a `space` instance of the same host (from the
//! host's directory), globs of users who may stay, and globs who must go. A pass (`pass.rs`) reads each room's
//! members in one call and plans (`plan.rs`) the invites and removals; users whose latest membership event
//! someone other than the guard sent (they left or declined, a human kicked or banned them) are left alone
//! until an operator clears them (`api.rs`), and bans are never touched. Passes run at start, on an
//! interval, after a membership change in a managed room that the bot did not make, when the policy file or
//! a named space instance's users change, and when an operator asks; a dry run plans and reports only.

pub mod api;
pub mod config;
pub mod memory;
pub mod pass;
pub mod plan;
pub mod policy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use matrix_sdk::ruma::OwnedRoomId;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use self::config::{GuardConfig, RoomPolicy};
use self::pass::PassReport;
use self::policy::PolicyFile;
use super::storage::PluginDatabase;
use super::{
    ChangedBy, ConfigProblem, Event, EventKind, EventType, Plugin, PluginContext, PluginError, PluginType,
    Subscriptions, UnpromptedSink, http, invites, parse_config,
};

/// How long a pass waits after a membership change for more of them (a burst of joins is one pass).
const SETTLE: Duration = Duration::from_millis(500);
/// How often the policy file and the named space instances are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub struct GuardType;

impl PluginType for GuardType {
    fn name(&self) -> &'static str {
        "guard"
    }

    fn description(&self) -> &'static str {
        "invites the users a policy names to its rooms and removes the ones it says must go, never against a \
         person's or a room admin's choice"
    }

    fn check_config(&self, config: &serde_json::Value) -> Vec<ConfigProblem> {
        match parse_config::<GuardConfig>(config) {
            Ok(parsed) => parsed.problems(),
            Err(problem) => vec![problem],
        }
    }

    fn build(&self, config: &serde_json::Value) -> Result<Box<dyn Plugin>, ConfigProblem> {
        let (sender, receiver) = mpsc::unbounded_channel();
        Ok(Box::new(Guard {
            config: parse_config(config)?,
            database: OnceLock::new(),
            triggers: sender,
            receiver: Mutex::new(Some(receiver)),
            managed: RwLock::new(HashMap::new()),
            last_report: Mutex::new(None),
            passes: AtomicU64::new(0),
            server_admin: Default::default(),
        }))
    }
}

/// Why a pass is wanted.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A membership change in this managed room.
    Room(OwnedRoomId),
    /// Every room (an operator asked; `why` goes into the report).
    All(&'static str),
}

pub struct Guard {
    config: GuardConfig,
    database: OnceLock<PluginDatabase>,
    triggers: mpsc::UnboundedSender<Trigger>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Trigger>>>,
    /// The managed rooms' ids (as last resolved) and the names the policy gives them.
    managed: RwLock<HashMap<OwnedRoomId, String>>,
    last_report: Mutex<Option<PassReport>>,
    passes: AtomicU64,
    server_admin: super::server_admin::Detected,
}

impl Guard {
    fn keep(&self, report: PassReport) {
        *self.last_report.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// The policy's rooms a trigger names (by their names in the policy).
    fn rooms_of(&self, room: &OwnedRoomId) -> Option<String> {
        self.managed.read().unwrap_or_else(|p| p.into_inner()).get(room).cloned()
    }
}

/// The space instances a policy names, each watched for changes to its users.
fn watch_spaces(
    policy: &BTreeMap<String, RoomPolicy>,
    directory: &super::directory::Directory,
) -> BTreeMap<String, watch::Receiver<super::directory::Published>> {
    let ids: BTreeSet<&String> = policy.values().flat_map(|p| p.spaces.iter().chain(&p.space_admins)).collect();
    ids.into_iter()
        .map(|id| {
            let mut receiver = directory.watch(id);
            receiver.mark_unchanged();
            (id.clone(), receiver)
        })
        .collect()
}

/// Resolves when the instance stops (holding no borrow of the flag).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[async_trait]
impl Plugin for Guard {
    fn accepts_invite_from(&self, inviter: &str) -> bool {
        invites::allowed(&self.config.allow_invites_from, inviter)
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::of([EventType::Membership, EventType::Invite])
    }

    async fn start(&self, context: &PluginContext, _unprompted: UnpromptedSink) -> Result<(), PluginError> {
        let database =
            context.open_database(memory::MIGRATIONS).await.map_err(|e| PluginError::permanent(e.to_string()))?;
        let _ = self.database.set(database);
        Ok(())
    }

    async fn on_event(&self, _context: &PluginContext, event: &Event) -> Result<Vec<super::Action>, PluginError> {
        // The guard's own changes need no pass; anyone else's in a managed room do, and so does the bot's own
        // arrival in one (a room it could not read before: told once the join is synced).
        let wanted = match &event.kind {
            EventKind::Membership(change) => change.by != ChangedBy::Bot,
            EventKind::Invite { joined } => *joined,
            _ => false,
        };
        if wanted && self.rooms_of(&event.room_id).is_some() {
            let _ = self.triggers.send(Trigger::Room(event.room_id.clone()));
        }
        Ok(Vec::new())
    }

    async fn run(
        &self,
        context: &PluginContext,
        _unprompted: UnpromptedSink,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), PluginError> {
        let Some(mut triggers) = self.receiver.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err(PluginError::transient("the guard's background work runs once per instance run"));
        };
        let mut file = self.config.policy_file.clone().map(PolicyFile::new);
        if let Some(file) = &mut file
            && let Err(e) = file.reload_if_changed()
        {
            tracing::error!(instance = %context.instance, error = %e, "the policy file cannot be used; its rooms are not managed until it can");
        }
        let mut policy = policy::merged(&self.config.rooms, file.as_ref());
        let mut spaces = watch_spaces(&policy, &context.directory);
        let interval = Duration::from_secs(self.config.interval_seconds);
        let mut next_full = Instant::now();
        let mut started = false;
        // Created once: a steady stream of membership changes must not starve the looks at the file and rosters.
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger: String;
            let mut only: Option<BTreeSet<String>> = None;
            tokio::select! {
                () = stopped(&mut shutdown) => return Ok(()),
                () = tokio::time::sleep_until(next_full) => {
                    trigger = if started { "interval" } else { "start" }.into();
                    started = true;
                }
                Some(first) = triggers.recv() => {
                    // Settle: a burst of changes is one pass.
                    tokio::time::sleep(SETTLE).await;
                    let mut asked = vec![first];
                    while let Ok(more) = triggers.try_recv() {
                        asked.push(more);
                    }
                    let mut rooms = BTreeSet::new();
                    let mut all = None;
                    for asked in asked {
                        match asked {
                            Trigger::Room(room) => rooms.extend(self.rooms_of(&room)),
                            Trigger::All(why) => all = Some(why),
                        }
                    }
                    // Rooms the policy no longer names are not managed.
                    rooms.retain(|room| policy.contains_key(room));
                    match all {
                        Some(why) => trigger = why.into(),
                        None if rooms.is_empty() => continue,
                        None => {
                            trigger = "membership".into();
                            only = Some(rooms);
                        }
                    }
                }
                _ = look.tick() => {
                    let mut why = None;
                    if let Some(file) = &mut file {
                        match file.reload_if_changed() {
                            Ok(true) => why = Some("policy_file".to_owned()),
                            Ok(false) => {}
                            Err(e) => tracing::error!(instance = %context.instance, error = %e, "the policy file changed but cannot be used; the policy stays as it was"),
                        }
                    }
                    if why.is_some() {
                        policy = policy::merged(&self.config.rooms, file.as_ref());
                        spaces = watch_spaces(&policy, &context.directory);
                        // A room dropped from the policy is no longer managed: no passes, no `/clear`.
                        self.managed
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .retain(|_, name| policy.contains_key(name));
                    }
                    for (id, receiver) in &mut spaces {
                        if receiver.has_changed().unwrap_or(false) {
                            receiver.mark_unchanged();
                            why.get_or_insert_with(|| format!("space:{id}"));
                        }
                    }
                    let Some(why) = why else { continue };
                    trigger = why;
                }
            }
            let report = self.pass(context, &policy, only.as_ref(), &trigger, &shutdown).await;
            self.keep(report);
            if only.is_none() {
                next_full = Instant::now() + interval;
            }
        }
    }

    fn http(&self) -> Option<http::HttpSpec> {
        Some(http::HttpSpec { max_body_bytes: api::MAX_BODY_BYTES })
    }

    async fn on_http(
        &self,
        _context: &PluginContext,
        request: http::HttpRequest,
        _unprompted: &UnpromptedSink,
    ) -> http::HttpResponse {
        self.operator_call(request).await
    }
}

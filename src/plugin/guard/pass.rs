//! One pass over the managed rooms (all, or the ones a membership change or an operator named): per room one
//! `/members` call, the plan (`plan.rs`), and one request per change; then the report, logged and kept for the
//! management API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use matrix_sdk::ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId};
use serde::Serialize;

use super::Guard;
use super::config::{JoinMode, RoomPolicy};
use super::plan::{Change, Memory, Skip, Step, plan};
use super::policy;
use crate::plugin::room_ops::MemberChange;
use crate::plugin::server_admin::AdminError;
use crate::plugin::{MatrixView, PluginContext};

/// What one pass did.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    /// Counts from 1 in each run of the instance.
    pub pass: u64,
    /// What started it: `start`, `interval`, `membership`, `policy_file`, `space:<id>`, `operator`.
    pub trigger: String,
    pub dry_run: bool,
    /// Unix seconds.
    pub started_at: i64,
    pub seconds: f64,
    /// Requests made to the homeserver (alias lookups, member lists, changes).
    pub requests: u64,
    pub rooms: Vec<RoomReport>,
}

/// One room's part of a pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoomReport {
    /// As the policy names it (a room id or an alias).
    pub room: String,
    pub room_id: Option<String>,
    /// What the plan said to do (in a dry run, nothing more happens).
    pub planned: Vec<Step>,
    pub done: Vec<Step>,
    /// Changes the homeserver refused, with its answer.
    pub failed: Vec<Failed>,
    pub skipped: Vec<Skip>,
    /// Why the room was not reconciled at all (unknown alias, no access, a space list not published yet).
    pub error: Option<String>,
    /// Requests made for this room.
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    #[serde(flatten)]
    pub step: Step,
    pub error: String,
}

/// What one pass carries from room to room.
struct PassRun<'a> {
    context: &'a PluginContext,
    view: MatrixView,
    shutdown: &'a tokio::sync::watch::Receiver<bool>,
    /// The rooms reconciled so far, by the policy's name for them. A room the policy names twice (by its id
    /// and by an alias, or by two aliases) is reconciled once, by the first entry: two lists for one room
    /// would undo each other's changes.
    seen: BTreeMap<OwnedRoomId, String>,
}

impl PassReport {
    fn count(&self, of: impl Fn(&RoomReport) -> usize) -> usize {
        self.rooms.iter().map(of).sum()
    }
}

impl Guard {
    /// Reconciles the rooms of `policy` (those in `only`, when given).
    pub(super) async fn pass(
        &self,
        context: &PluginContext,
        policy: &BTreeMap<String, RoomPolicy>,
        only: Option<&BTreeSet<String>>,
        trigger: &str,
        shutdown: &tokio::sync::watch::Receiver<bool>,
    ) -> PassReport {
        let started = Instant::now();
        let pass = self.passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut report = PassReport {
            pass,
            trigger: trigger.to_owned(),
            dry_run: self.config.dry_run,
            started_at: crate::plugin::unix_seconds(),
            seconds: 0.0,
            requests: 0,
            rooms: Vec::new(),
        };
        let mut run = PassRun { context, view: context.matrix.paced_by_homeserver(), shutdown, seen: BTreeMap::new() };
        for (room, room_policy) in policy {
            if only.is_some_and(|only| !only.contains(room)) {
                continue;
            }
            if *shutdown.borrow() {
                break;
            }
            let mut room_report = RoomReport { room: room.clone(), ..Default::default() };
            if let Err(error) = self.reconcile(&mut run, room, room_policy, &mut room_report).await {
                room_report.error = Some(error);
            }
            report.requests += room_report.requests;
            report.rooms.push(room_report);
        }
        report.seconds = started.elapsed().as_secs_f64();
        let failed = report.count(|r| r.failed.len()) + report.count(|r| usize::from(r.error.is_some()));
        tracing::info!(
            instance = %context.instance,
            pass,
            trigger = %trigger,
            dry_run = self.config.dry_run,
            rooms = report.rooms.len(),
            planned = report.count(|r| r.planned.len()),
            done = report.count(|r| r.done.len()),
            skipped = report.count(|r| r.skipped.len()),
            failed,
            requests = report.requests,
            seconds = (report.seconds * 1000.0).round() / 1000.0,
            "guard pass finished"
        );
        for room in &report.rooms {
            if let Some(error) = &room.error {
                tracing::warn!(instance = %context.instance, room = %room.room, error = %error, "guard: room not reconciled");
            }
            for skip in &room.skipped {
                tracing::debug!(instance = %context.instance, room = %room.room, user = %skip.user_id, reason = %skip.reason, "guard: left alone");
            }
            if self.config.dry_run {
                for step in &room.planned {
                    tracing::info!(instance = %context.instance, room = %room.room, user = %step.user_id, change = step.change.name(), reason = %step.reason, "guard (dry run): would change");
                }
            }
        }
        report
    }

    /// One room: resolve it, read its members, plan, and (unless a dry run) carry the plan out.
    async fn reconcile(
        &self,
        run: &mut PassRun<'_>,
        room: &str,
        room_policy: &RoomPolicy,
        report: &mut RoomReport,
    ) -> Result<(), String> {
        let (context, view, shutdown) = (run.context, &run.view, run.shutdown);
        let wanted = policy::wanted(room_policy, &context.directory)?;
        let room_id = self.resolve(view, room, &mut report.requests).await?;
        report.room_id = Some(room_id.to_string());
        if let Some(first) = run.seen.get(&room_id) {
            return Err(format!(
                "the policy names this room twice, as {first:?} and as {room:?} (both are {room_id}): it is \
                 reconciled by {first:?} only; merge the two entries into one"
            ));
        }
        run.seen.insert(room_id.clone(), room.to_owned());
        self.managed.write().unwrap_or_else(|p| p.into_inner()).insert(room_id.clone(), room.to_owned());
        report.requests += 1;
        let members = view.members(&room_id).await.map_err(|e| {
            format!("cannot read the room's members ({e}): is the bot in the room, with the power to invite and kick?")
        })?;
        let (mut removed_by_guard, mut cleared) = self.memory_of(&room_id).await?;
        // What is remembered of a user who is back in the room (joined, invited, knocking) is spent: a later
        // removal by someone else, or their own leave, must count as such.
        let present: Vec<String> = members
            .iter()
            .filter(|m| matches!(m.membership.as_str(), "join" | "invite" | "knock"))
            .map(|m| m.user_id.clone())
            .filter(|u| removed_by_guard.contains(u) || cleared.contains(u))
            .collect();
        if !present.is_empty() && !self.config.dry_run {
            for user in &present {
                removed_by_guard.remove(user);
                cleared.remove(user);
            }
            self.forget(&room_id, present).await?;
        }
        let memory = Memory { bot: &context.user_id, removed_by_guard: &removed_by_guard, cleared: &cleared };
        let (steps, skipped) = plan(&wanted, &members, &memory);
        report.planned = steps.clone();
        report.skipped = skipped;
        if self.config.dry_run {
            return Ok(());
        }
        for step in steps {
            if *shutdown.borrow() {
                return Err("the instance is stopping: the rest waits for the next pass".into());
            }
            report.requests += 1;
            match self.carry_out(view, &room_id, &step).await {
                Ok(()) => {
                    tracing::info!(instance = %context.instance, room = %room, user = %step.user_id, change = step.change.name(), reason = %step.reason, "guard changed a membership");
                    self.remember(&room_id, &step).await?;
                    report.done.push(step);
                }
                Err(AdminError::Refused(error)) => {
                    tracing::warn!(instance = %context.instance, room = %room, user = %step.user_id, change = step.change.name(), error = %error, "guard: the homeserver refused a change");
                    report.failed.push(Failed { step, error });
                }
                Err(AdminError::Unavailable(error)) => {
                    report.failed.push(Failed { step, error: error.clone() });
                    return Err(format!("the homeserver is unavailable ({error}): the rest waits for the next pass"));
                }
            }
        }
        Ok(())
    }

    async fn resolve(&self, view: &MatrixView, room: &str, requests: &mut u64) -> Result<OwnedRoomId, String> {
        if room.starts_with('!') {
            return OwnedRoomId::try_from(room).map_err(|e| format!("{room:?} is not a room id: {e}"));
        }
        let alias = OwnedRoomAliasId::try_from(room).map_err(|e| format!("{room:?} is not a room alias: {e}"))?;
        *requests += 1;
        match view.resolve_alias(&alias).await {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(format!("the alias {room} does not exist")),
            Err(e) => Err(format!("cannot look the alias {room} up: {e}")),
        }
    }

    async fn carry_out(&self, view: &MatrixView, room: &OwnedRoomId, step: &Step) -> Result<(), AdminError> {
        let user = OwnedUserId::try_from(step.user_id.as_str())
            .map_err(|e| AdminError::Refused(format!("{:?} is not a user id: {e}", step.user_id)))?;
        match step.change {
            Change::Invite => {
                if self.config.join == JoinMode::ForceJoin {
                    let admin = self.server_admin.get(view).await?;
                    let txn = format!("guard-join-{room}-{user}-{}", crate::plugin::unix_seconds());
                    return admin.let_in(view, room, &user, step.membership.as_deref(), &txn).await;
                }
                view.change_membership(room, &user, MemberChange::Invite, None).await.map_err(AdminError::from)
            }
            Change::Remove => view
                .change_membership(room, &user, MemberChange::Kick, Some(&step.reason))
                .await
                .map_err(AdminError::from),
        }
    }
}

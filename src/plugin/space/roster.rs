//! The users the lifecycle API maintains, kept in the plugin's database and published in the host's
//! directory (`crate::plugin::directory`) for `guard` instances that name this one in their policy.
//!
//! A call is recorded when it is accepted (carried out at once or kept for later): the roster says who
//! should be a member and who an admin, whether or not the homeserver has caught up yet. A role call for a user
//! with no account call yet says nothing about membership (`member` stays unknown). The roster is published
//! only once the bootstrap finished and the Space's current members were added (those the API never named
//! are members too): before that, a `guard` sees no roster and leaves its rooms alone.

use super::Space;
use super::lifecycle::LifecycleAction;
use crate::plugin::directory::SpaceUsers;
use crate::plugin::{PluginContext, PluginError};

/// The roster's table: migration 2 of the plugin database.
pub const MIGRATION: &str = "CREATE TABLE roster (
        user_id TEXT PRIMARY KEY NOT NULL,
        member INTEGER,
        admin INTEGER NOT NULL
    )";

impl Space {
    /// Records an accepted call and publishes the roster again.
    pub(super) async fn record(
        &self,
        context: &PluginContext,
        action: LifecycleAction,
        user: &str,
    ) -> Result<(), PluginError> {
        // (member, admin) afterwards; `None`: as it was (a new user: not a member, not an admin).
        let (member, admin): (Option<bool>, Option<bool>) = match action {
            LifecycleAction::Created => (Some(true), None),
            LifecycleAction::Revoked => (Some(false), Some(false)),
            LifecycleAction::Promoted => (None, Some(true)),
            LifecycleAction::Demoted => (None, Some(false)),
        };
        let user = user.to_owned();
        self.database()?
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO roster (user_id, member, admin) VALUES (?1, ?2, coalesce(?3, 0))
                     ON CONFLICT (user_id) DO UPDATE SET member = coalesce(?2, member), admin = coalesce(?3, admin)",
                    rusqlite::params![user, member, admin],
                )
            })
            .await
            .map_err(|e| PluginError::transient(format!("cannot record the call in the roster: {e}")))?;
        if self.rooms.borrow().is_some() {
            self.publish(context).await?;
        }
        Ok(())
    }

    /// Adds the Space's joined and invited members the roster does not know as members, then publishes it.
    pub(super) async fn seed_and_publish(
        &self,
        context: &PluginContext,
        space: &matrix_sdk::ruma::RoomId,
    ) -> Result<(), PluginError> {
        let members = context
            .matrix
            .paced_by_homeserver()
            .members(space)
            .await
            .map_err(|e| PluginError::transient(format!("cannot read the Space's members: {e}")))?;
        let present: Vec<String> = members
            .into_iter()
            .filter(|m| matches!(m.membership.as_str(), "join" | "invite") && m.user_id != context.user_id)
            .map(|m| m.user_id)
            .collect();
        self.database()?
            .call(move |conn| {
                let tx = conn.transaction()?;
                for user in &present {
                    tx.execute(
                        "INSERT INTO roster (user_id, member, admin) VALUES (?1, 1, 0)
                         ON CONFLICT (user_id) DO UPDATE SET member = coalesce(member, 1)",
                        [user],
                    )?;
                }
                tx.commit()
            })
            .await
            .map_err(|e| PluginError::transient(format!("cannot record the Space's members: {e}")))?;
        self.publish(context).await
    }

    /// Publishes the roster as the database has it.
    pub(super) async fn publish(&self, context: &PluginContext) -> Result<(), PluginError> {
        let rows: Vec<(String, Option<bool>, bool)> = self
            .database()?
            .call(|conn| {
                let mut statement = conn.prepare("SELECT user_id, member, admin FROM roster")?;
                let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await
            .map_err(|e| PluginError::transient(format!("cannot read the roster: {e}")))?;
        let mut users = SpaceUsers::default();
        for (user, member, admin) in rows {
            match member {
                Some(true) => {
                    users.members.insert(user.clone());
                    if admin {
                        users.admins.insert(user.clone());
                    }
                }
                Some(false) => {}
                // Only a role call so far: neither a member nor revoked.
                None => continue,
            }
            users.known.insert(user);
        }
        context.directory.publish(&context.instance, users);
        Ok(())
    }
}

//! The users the lifecycle API maintains, kept in the plugin's database and published in the host's
//! directory (`crate::plugin::directory`) for `guard` instances that name this one in their policy.
//!
//! A call is recorded when it is accepted (carried out at once or kept for later): the roster says who
//! should be a member and who an admin, whether or not the homeserver has caught up yet.

use super::Space;
use super::lifecycle::LifecycleAction;
use crate::plugin::directory::SpaceUsers;
use crate::plugin::{PluginContext, PluginError};

/// The roster's table: migration 2 of the plugin database.
pub const MIGRATION: &str = "CREATE TABLE roster (
        user_id TEXT PRIMARY KEY NOT NULL,
        member INTEGER NOT NULL,
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
                    "INSERT INTO roster (user_id, member, admin) VALUES (?1, coalesce(?2, 0), coalesce(?3, 0))
                     ON CONFLICT (user_id) DO UPDATE SET member = coalesce(?2, member), admin = coalesce(?3, admin)",
                    rusqlite::params![user, member, admin],
                )
            })
            .await
            .map_err(|e| PluginError::transient(format!("cannot record the call in the roster: {e}")))?;
        self.publish(context).await
    }

    /// Publishes the roster as the database has it.
    pub(super) async fn publish(&self, context: &PluginContext) -> Result<(), PluginError> {
        let rows: Vec<(String, bool, bool)> = self
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
            if member {
                users.members.insert(user.clone());
                if admin {
                    users.admins.insert(user.clone());
                }
            }
            users.known.insert(user);
        }
        context.directory.publish(&context.instance, users);
        Ok(())
    }
}

//! How the bot administers users on its homeserver, detected once, never assumed:
//!
//! - Synapse with the bot a server admin: the admin API, `POST /_synapse/admin/v1/join/<room>` (force-join)
//!   and `POST /_synapse/admin/v1/deactivate/<user>` with `erase` (which hides the user's messages from people
//!   who join later; it deletes nothing).
//! - The conduwuit family (conduwuit, continuwuity, tuwunel), where the bot is in the admin room
//!   (`#admins:<server>`): commands there, `!admin users force-join-room <user> <room>` after an invite where
//!   the join rule needs one, and `!admin users deactivate <user>` (these servers have no erase).
//! - Neither: users are invited (they join themselves), and cannot be deactivated.

use matrix_sdk::ruma::{OwnedRoomAliasId, OwnedRoomId, RoomId, UserId};
use serde_json::json;

use crate::plugin::MatrixView;
use crate::plugin::room_ops::{MemberChange, Outcome, RoomOpError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAdmin {
    /// Synapse's admin API, the bot being a server admin.
    Synapse,
    /// The conduwuit family's admin room, which the bot is in.
    AdminRoom(OwnedRoomId),
    /// No way to administer users; why, for the answer and the log.
    None(String),
}

/// A server administration step that failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The homeserver could not be reached or failed (5xx): trying again later can help.
    #[error("the homeserver is unavailable: {0}")]
    Unavailable(String),
    /// The homeserver refused: the same request will fail again.
    #[error("{0}")]
    Refused(String),
}

impl From<RoomOpError> for AdminError {
    fn from(e: RoomOpError) -> Self {
        match &e {
            RoomOpError::Matrix(m) if !crate::matrix_errors::is_permanent(m) => AdminError::Unavailable(e.to_string()),
            _ => AdminError::Refused(e.to_string()),
        }
    }
}

/// What the Synapse admin API said, as an error unless it was a success.
fn synapse_answer(what: &str, (status, body): (u16, serde_json::Value)) -> Result<(), AdminError> {
    match status {
        200..=299 => Ok(()),
        429 | 500.. => Err(AdminError::Unavailable(format!("{what}: HTTP {status}"))),
        _ => Err(AdminError::Refused(format!(
            "{what}: HTTP {status} {}",
            body["error"].as_str().or(body["errcode"].as_str()).unwrap_or_default()
        ))),
    }
}

/// A POST to Synapse's admin API, `what` naming it in the error.
async fn synapse_post(view: &MatrixView, path: &str, body: &serde_json::Value, what: &str) -> Result<(), AdminError> {
    let answer = view.admin_api(reqwest::Method::POST, path, Some(body)).await.map_err(AdminError::Unavailable)?;
    synapse_answer(what, answer)
}

/// The admin-room command that force-joins `user` to `room`.
pub fn force_join_command(user: &UserId, room: &RoomId) -> String {
    format!("!admin users force-join-room {user} {room}")
}

/// The admin-room command that deactivates `user`.
pub fn deactivate_command(user: &UserId) -> String {
    format!("!admin users deactivate {user}")
}

/// The way a homeserver offers, kept for the run once one is found; finding none is asked again next time (an
/// operator may make the bot an admin meanwhile).
#[derive(Default)]
pub struct Detected(tokio::sync::OnceCell<ServerAdmin>);

impl Detected {
    pub async fn get(&self, view: &MatrixView) -> Result<ServerAdmin, AdminError> {
        if let Some(known) = self.0.get() {
            return Ok(known.clone());
        }
        let found = ServerAdmin::detect(view).await?;
        match &found {
            ServerAdmin::None(why) => tracing::warn!(why = %why, "users will be invited, not joined"),
            other => {
                tracing::info!(way = ?other, "administering users on the homeserver");
                let _ = self.0.set(other.clone());
            }
        }
        Ok(found)
    }
}

impl ServerAdmin {
    /// Finds out which way the homeserver offers.
    pub async fn detect(view: &MatrixView) -> Result<ServerAdmin, AdminError> {
        let bot = view.user_id().ok_or_else(|| AdminError::Refused("the bot is not logged in".into()))?;
        let (status, body) = view
            .admin_api(
                reqwest::Method::GET,
                &format!("_synapse/admin/v1/users/{}/admin", urlencode(bot.as_str())),
                None,
            )
            .await
            .map_err(AdminError::Unavailable)?;
        // Only Synapse's own JSON answers decide; anything else (a proxy's page, a client's fallback) leads to
        // the next way.
        let not_admin = (status == 200 && body["admin"] == json!(false))
            || (status == 403 && body["errcode"] == json!("M_FORBIDDEN"));
        match status {
            200 if body["admin"] == json!(true) => return Ok(ServerAdmin::Synapse),
            401 => return Err(AdminError::Refused("the homeserver does not accept the bot's access token".into())),
            429 => return Err(AdminError::Unavailable("the homeserver keeps rate-limiting the bot".into())),
            _ if not_admin => {
                return Ok(ServerAdmin::None(format!(
                    "the bot {bot} is not a server admin of this Synapse: set `instances.<id>.server_admin: true` \
                     before its setup, or make it one with Synapse's admin API (`PUT /_synapse/admin/v2/users/{bot}` \
                     with `\"admin\": true`)"
                )));
            }
            500.. => return Err(AdminError::Unavailable(format!("the Synapse admin API: HTTP {status}"))),
            _ => {}
        }
        let alias = OwnedRoomAliasId::try_from(format!("#admins:{}", bot.server_name()))
            .map_err(|e| AdminError::Refused(e.to_string()))?;
        let Some(room) = view.resolve_alias(&alias).await? else {
            return Ok(ServerAdmin::None(
                "the homeserver offers neither Synapse's admin API nor an admin room: users are invited instead of \
                 joined, and cannot be deactivated"
                    .into(),
            ));
        };
        // Asked of the homeserver, not of the last sync (which may not have stored the room yet).
        let membership = match view.state(&room, "m.room.member", bot.as_str()).await {
            Ok(membership) => membership,
            // Not allowed to read the room's state: the bot is not in it.
            Err(e) => match AdminError::from(e) {
                AdminError::Refused(_) => None,
                unavailable => return Err(unavailable),
            },
        };
        match membership.as_ref().and_then(|m| m["membership"].as_str()) {
            Some("join") => Ok(ServerAdmin::AdminRoom(room)),
            _ => Ok(ServerAdmin::None(format!(
                "the bot {bot} is not in the admin room {alias}: make it a server admin (`!admin users make-user-admin {bot}`) \
                 so that it can force-join and deactivate users"
            ))),
        }
    }

    /// Makes `user` a member of `room`: force-joined where the server lets the bot, invited otherwise.
    /// `txn` makes an admin-room command once per lifecycle call. Nothing is sent when they are joined already.
    pub async fn join(
        &self,
        view: &MatrixView,
        room: &RoomId,
        user: &UserId,
        txn: &str,
    ) -> Result<Outcome, AdminError> {
        let current = view.state(room, "m.room.member", user.as_str()).await?;
        let membership = current.as_ref().and_then(|c| c["membership"].as_str()).map(str::to_owned);
        let invited_is_all = matches!(self, ServerAdmin::None(_)) && membership.as_deref() == Some("invite");
        if membership.as_deref() == Some("join") || invited_is_all {
            return Ok(Outcome::AlreadySo);
        }
        if membership.as_deref() == Some("ban") {
            return Err(AdminError::Refused(format!("{user} is banned from {room}: unban them first")));
        }
        self.let_in(view, room, user, membership.as_deref(), txn).await?;
        Ok(Outcome::Changed)
    }

    /// Lets `user`, whose membership in `room` is `membership` (not `join`; `None`: never there), in: joined
    /// where the server lets the bot, invited otherwise. For callers that read the membership already.
    pub async fn let_in(
        &self,
        view: &MatrixView,
        room: &RoomId,
        user: &UserId,
        membership: Option<&str>,
        txn: &str,
    ) -> Result<(), AdminError> {
        match self {
            ServerAdmin::Synapse => {
                let path = format!("_synapse/admin/v1/join/{}", urlencode(room.as_str()));
                synapse_post(view, &path, &json!({"user_id": user}), &format!("force-joining {user} to {room}"))
                    .await?;
            }
            ServerAdmin::AdminRoom(admin_room) => {
                // A force-join is a normal join on these servers: the invite lets it through an invite-only or
                // restricted join rule.
                if membership != Some("invite") {
                    view.change_membership(room, user, MemberChange::Invite, None).await?;
                }
                view.send_admin_command(admin_room, &force_join_command(user, room), txn).await?;
            }
            ServerAdmin::None(_) if membership != Some("invite") => {
                view.change_membership(room, user, MemberChange::Invite, None).await?;
            }
            ServerAdmin::None(_) => {}
        }
        Ok(())
    }

    /// Deactivates `user` (with erase on Synapse). `Ok(note)`: done, with what the answer should add.
    pub async fn deactivate(&self, view: &MatrixView, user: &UserId, txn: &str) -> Result<Option<String>, AdminError> {
        match self {
            ServerAdmin::Synapse => {
                let path = format!("_synapse/admin/v1/deactivate/{}", urlencode(user.as_str()));
                synapse_post(view, &path, &json!({"erase": true}), &format!("deactivating {user}")).await?;
                Ok(Some("erased: the user's messages are hidden from people who join later, not deleted".into()))
            }
            ServerAdmin::AdminRoom(admin_room) => {
                view.send_admin_command(admin_room, &deactivate_command(user), txn).await?;
                Ok(Some(
                    "the deactivation command was sent to the admin room, which answers there; this homeserver has \
                     no erase: the user's messages stay"
                        .into(),
                ))
            }
            ServerAdmin::None(why) => Err(AdminError::Refused(format!("cannot deactivate {user}: {why}"))),
        }
    }
}

/// Percent-encodes a room or user id for a URL path.
fn urlencode(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_room_commands_are_the_conduwuit_family_s() {
        let user: &UserId = "@alice:example.org".try_into().unwrap();
        let room: &RoomId = "!abc:example.org".try_into().unwrap();
        assert_eq!(force_join_command(user, room), "!admin users force-join-room @alice:example.org !abc:example.org");
        assert_eq!(deactivate_command(user), "!admin users deactivate @alice:example.org");
    }

    #[test]
    fn ids_are_encoded_for_the_path() {
        assert_eq!(urlencode("!abc:example.org"), "%21abc%3Aexample.org");
        assert_eq!(urlencode("@a/b:example.org"), "%40a%2Fb%3Aexample.org");
    }

    #[test]
    fn synapse_errors_say_whether_to_try_again() {
        assert!(synapse_answer("x", (200, json!({}))).is_ok());
        assert!(matches!(synapse_answer("x", (502, json!(null))), Err(AdminError::Unavailable(_))));
        let refused = synapse_answer("joining", (403, json!({"errcode": "M_FORBIDDEN", "error": "not in room"})));
        assert!(matches!(refused, Err(AdminError::Refused(m)) if m == "joining: HTTP 403 not in room"));
    }
}

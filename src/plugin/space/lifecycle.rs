//! The user-lifecycle API (seed 004): the deploy app tells the bot that a user was created, revoked, promoted
//! or demoted, and the bot makes the homeserver agree.
//!
//! `POST /api/v1/users/{created,revoked,promoted,demoted}` and `PUT /api/v1/users/updated`, with the body the
//! deploy app sends (`{"uuid", "callsign", "x509cert"}`), served on the instance's TLS listener with
//! `client_ca` (and under `/_plugins/<id>/` on the management server, where no client certificate exists, so
//! every call is refused there). Only a client certificate that chained to the CA and whose subject common
//! name is in `callers` is let through; anyone else gets 403.
//!
//! Before the bootstrap finished, calls are answered with success and kept in the plugin's database: per user
//! the last account action (created / revoked) and the last role action (promoted / demoted) win, and they
//! are carried out in the order they came once the rooms are ready (a revoked user's role actions are
//! dropped). Every action is idempotent: a repeat finds the homeserver as asked and sends nothing.

use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};

use super::Space;
use super::bootstrap::{ADMIN_POWER, Rooms};
use crate::plugin::http::{HttpRequest, HttpResponse};
use crate::plugin::room_ops::{MemberChange, Outcome};
use crate::plugin::server_admin::{AdminError, ServerAdmin};
use crate::plugin::{PluginContext, PluginError};

/// The plugin database's schema: deferred calls, one per user and axis; the roster (`roster.rs`).
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE deferred (
        user_id TEXT NOT NULL,
        axis TEXT NOT NULL,
        action TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (user_id, axis)
    )",
    super::roster::MIGRATION,
];

/// The deploy app's bodies are small; a certificate in PEM is a few KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    Created,
    Revoked,
    Promoted,
    Demoted,
}

impl LifecycleAction {
    pub fn name(self) -> &'static str {
        match self {
            LifecycleAction::Created => "created",
            LifecycleAction::Revoked => "revoked",
            LifecycleAction::Promoted => "promoted",
            LifecycleAction::Demoted => "demoted",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Created, Self::Revoked, Self::Promoted, Self::Demoted].into_iter().find(|a| a.name() == name)
    }

    /// Which later action replaces this one while it waits: the account's (created, revoked) or the role's.
    fn axis(self) -> &'static str {
        match self {
            LifecycleAction::Created | LifecycleAction::Revoked => "account",
            LifecycleAction::Promoted | LifecycleAction::Demoted => "role",
        }
    }
}

/// What a request asks for, or the answer it gets instead.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Action(LifecycleAction),
    Updated,
}

fn route(request: &HttpRequest) -> Result<Route, HttpResponse> {
    let Some(name) = request.path.strip_prefix("/api/v1/users/") else {
        return Err(HttpResponse::error(404, "not_found", "the lifecycle API is at /api/v1/users/<event>"));
    };
    let (route, method) = match name {
        "updated" => (Route::Updated, "PUT"),
        other => match LifecycleAction::parse(other) {
            Some(action) => (Route::Action(action), "POST"),
            None => {
                return Err(HttpResponse::error(
                    404,
                    "not_found",
                    "unknown user event: created, revoked, promoted, demoted (POST) or updated (PUT)",
                ));
            }
        },
    };
    if request.method != method {
        let mut response = HttpResponse::error(405, "method_not_allowed", &format!("use {method} for {name}"));
        response.headers.push(("allow".into(), method.into()));
        return Err(response);
    }
    Ok(route)
}

/// Only a verified client certificate of an allowed caller passes.
fn authorize(request: &HttpRequest, callers: &[String]) -> Result<(), HttpResponse> {
    match &request.client_common_name {
        None => Err(HttpResponse::error(
            403,
            "client_certificate_required",
            "the lifecycle API needs a client certificate: call it on the bot's TLS listener (with `tls.client_ca`)",
        )),
        Some(name) if callers.iter().any(|c| c == name) => Ok(()),
        Some(name) => Err(HttpResponse::error(
            403,
            "forbidden",
            &format!(
                "the client certificate's common name {:?} is not an allowed caller",
                crate::telemetry::scrub::for_log(name)
            ),
        )),
    }
}

/// The user a body names, by the callsign rule (`user_id_template`).
fn user_of(body: &[u8], template: &str, server_name: &str) -> Result<OwnedUserId, HttpResponse> {
    let bad = |message: String| HttpResponse::error(400, "bad_request", &message);
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(bad("the body must be a JSON object with `uuid`, `callsign` and `x509cert`".into()));
    };
    let field = |name: &str, required: bool| match object.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(bad(format!("`{name}` is missing"))),
        Some(_) => Err(bad(format!("`{name}` must be a non-empty string"))),
    };
    field("uuid", true)?;
    field("x509cert", false)?;
    let callsign = field("callsign", true)?.unwrap_or_default().to_lowercase();
    if callsign.len() > 64
        || !callsign
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '=' | '-' | '/'))
    {
        return Err(bad(format!(
            "`callsign` {:?} cannot be a Matrix user name (letters, digits, `.`, `_`, `=`, `-`, `/`; at most 64)",
            crate::telemetry::scrub::for_log(&callsign)
        )));
    }
    let user = template.replace("{callsign}", &callsign).replace("{server_name}", server_name);
    OwnedUserId::try_from(user.as_str()).map_err(|e| {
        bad(format!("`callsign` gives {:?}, which is not a user id: {e}", crate::telemetry::scrub::for_log(&user)))
    })
}

/// Milliseconds since the epoch: makes transaction ids of admin-room commands unique across calls and restarts
/// (a repeated call is a new command; the command itself is idempotent).
fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
}

fn admin_error_response(e: &AdminError) -> HttpResponse {
    match e {
        AdminError::Unavailable(why) => HttpResponse::error(503, "homeserver_unavailable", why),
        AdminError::Refused(why) => HttpResponse::error(502, "homeserver_refused", why),
    }
}

/// What an action did.
struct Done {
    changed: Vec<OwnedRoomId>,
    note: Option<String>,
}

impl Space {
    /// Answers one call to the lifecycle API.
    pub(super) async fn lifecycle_call(&self, context: &PluginContext, request: HttpRequest) -> HttpResponse {
        if let Err(refused) = authorize(&request, &self.config.callers) {
            return refused;
        }
        let route = match route(&request) {
            Ok(route) => route,
            Err(answer) => return answer,
        };
        let Ok(bot) = OwnedUserId::try_from(context.user_id.as_str()) else {
            return HttpResponse::error(503, "not_ready", "the bot's own user id cannot be read");
        };
        let user = match user_of(&request.body, &self.config.user_id_template, bot.server_name().as_str()) {
            Ok(user) => user,
            Err(answer) => return answer,
        };
        if user == bot {
            return HttpResponse::error(
                409,
                "conflict",
                "the callsign names the bot itself, which the lifecycle API never changes",
            );
        }
        let Route::Action(action) = route else {
            // A new callsign is a new Matrix account, which the deploy app creates with `created`.
            return HttpResponse::json(
                200,
                &json!({"status": "ignored", "user_id": user,
                "note": "a callsign change needs a new Matrix account; nothing was changed"}),
            );
        };
        let _one = self.one_at_a_time.lock().await;
        if let Err(e) = self.record(context, action, user.as_str()).await {
            return HttpResponse::error(503, "not_ready", &e.message);
        }
        let rooms = self.rooms.borrow().clone();
        let Some(rooms) = rooms else {
            return match self.defer(action, &user).await {
                Ok(()) => {
                    tracing::info!(instance = %context.instance, action = action.name(), user = %user, "the rooms are not ready yet: kept for later");
                    HttpResponse::json(200, &json!({"status": "deferred", "action": action.name(), "user_id": user}))
                }
                Err(e) => HttpResponse::error(503, "not_ready", &e.message),
            };
        };
        let txn = format!("space-{}-{}-{}", action.name(), user, now_ms());
        match self.carry_out(context, &rooms, action, &user, &txn).await {
            Ok(done) => {
                tracing::info!(instance = %context.instance, action = action.name(), user = %user, changed = done.changed.len(), "lifecycle call carried out");
                let mut answer =
                    json!({"status": "done", "action": action.name(), "user_id": user, "changed": done.changed});
                if let Some(note) = done.note {
                    answer["note"] = note.into();
                }
                HttpResponse::json(200, &answer)
            }
            Err(e) => {
                tracing::warn!(instance = %context.instance, action = action.name(), user = %user, error = %e, "lifecycle call failed");
                admin_error_response(&e)
            }
        }
    }

    /// Keeps a call for when the rooms are ready, replacing a waiting one of the same user and axis.
    async fn defer(&self, action: LifecycleAction, user: &OwnedUserId) -> Result<(), PluginError> {
        let (user, axis, name) = (user.to_string(), action.axis(), action.name());
        self.database()?
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO deferred (user_id, axis, action, seq)
                     VALUES (?1, ?2, ?3, (SELECT coalesce(max(seq), 0) + 1 FROM deferred))
                     ON CONFLICT (user_id, axis) DO UPDATE SET action = excluded.action, seq = excluded.seq",
                    rusqlite::params![user, axis, name],
                )
            })
            .await
            .map(|_| ())
            .map_err(|e| PluginError::transient(format!("cannot keep the call for later: {e}")))
    }

    /// Carries out the deferred calls in order; each is removed once done (or refused for good, which is
    /// logged). A homeserver that became unavailable fails the run: the rest wait for the restart.
    pub(super) async fn drain_deferred(&self, context: &PluginContext, rooms: &Rooms) -> Result<(), PluginError> {
        let waiting: Vec<(String, String, String, i64)> = self
            .database()?
            .call(|conn| {
                let mut statement = conn.prepare("SELECT user_id, axis, action, seq FROM deferred ORDER BY seq")?;
                let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                rows.collect()
            })
            .await
            .map_err(|e| PluginError::transient(format!("cannot read the deferred calls: {e}")))?;
        let revoked: Vec<String> =
            waiting.iter().filter(|(_, _, action, _)| action == "revoked").map(|(user, ..)| user.clone()).collect();
        let count = waiting.len();
        for (user_id, axis, name, seq) in waiting {
            let (Some(action), Ok(user)) = (LifecycleAction::parse(&name), OwnedUserId::try_from(user_id.as_str()))
            else {
                tracing::error!(instance = %context.instance, user = %user_id, action = %name, "a deferred call cannot be read; dropped");
                self.forget(&user_id, &axis).await?;
                continue;
            };
            if axis == "role" && revoked.contains(&user_id) {
                tracing::info!(instance = %context.instance, user = %user, action = name, "dropped: the user is revoked");
            } else {
                match self.carry_out(context, rooms, action, &user, &format!("space-deferred-{seq}-{}", now_ms())).await
                {
                    Ok(done) => {
                        tracing::info!(instance = %context.instance, action = name, user = %user, changed = done.changed.len(), "deferred lifecycle call carried out");
                    }
                    Err(AdminError::Unavailable(why)) => {
                        return Err(PluginError::transient(format!("a deferred {name} of {user} failed: {why}")));
                    }
                    Err(AdminError::Refused(why)) => {
                        tracing::error!(instance = %context.instance, action = name, user = %user, error = %why, "a deferred lifecycle call was refused; dropped");
                    }
                }
            }
            self.forget(&user_id, &axis).await?;
        }
        if count > 0 {
            tracing::info!(instance = %context.instance, deferred = count, "carried out the lifecycle calls kept for later");
        }
        Ok(())
    }

    async fn forget(&self, user: &str, axis: &str) -> Result<(), PluginError> {
        let (user, axis) = (user.to_owned(), axis.to_owned());
        self.database()?
            .call(move |conn| conn.execute("DELETE FROM deferred WHERE user_id = ?1 AND axis = ?2", [user, axis]))
            .await
            .map(|_| ())
            .map_err(|e| PluginError::transient(format!("cannot update the deferred calls: {e}")))
    }

    async fn carry_out(
        &self,
        context: &PluginContext,
        rooms: &Rooms,
        action: LifecycleAction,
        user: &OwnedUserId,
        txn: &str,
    ) -> Result<Done, AdminError> {
        let view = context.matrix.paced_by_homeserver();
        let admin = self.server_admin.get(&view).await?;
        let community: Vec<&OwnedRoomId> = std::iter::once(&rooms.space).chain(&rooms.public).collect();
        let mut changed = Vec::new();
        let mut note = None;
        match action {
            LifecycleAction::Created => {
                for (i, room) in community.iter().enumerate() {
                    if admin.join(&view, room, user, &format!("{txn}-{i}")).await? == Outcome::Changed {
                        changed.push((*room).clone());
                    }
                }
                match &admin {
                    ServerAdmin::None(why) => note = Some(format!("invited, not joined: {why}")),
                    ServerAdmin::AdminRoom(_) => {
                        note = Some("force-join commands were sent to the admin room, which answers there".into());
                    }
                    ServerAdmin::Synapse => {}
                }
            }
            LifecycleAction::Revoked => match admin.deactivate(&view, user, txn).await {
                Ok(said) => note = said,
                Err(AdminError::Refused(why)) if matches!(admin, ServerAdmin::None(_)) => {
                    // The account cannot be deactivated here: it is at least out of every room, with no power.
                    for room in community.iter().copied().chain(&rooms.admin) {
                        let lowered = view.ensure_power_level(room, user, 0).await? == Outcome::Changed;
                        let kicked = view.ensure_membership(room, user, MemberChange::Kick, Some("revoked")).await?
                            == Outcome::Changed;
                        if lowered || kicked {
                            changed.push(room.clone());
                        }
                    }
                    note = Some(format!("not deactivated ({why}); removed from every room of the Space instead"));
                }
                Err(e) => return Err(e),
            },
            LifecycleAction::Promoted | LifecycleAction::Demoted => {
                let level = if action == LifecycleAction::Promoted { ADMIN_POWER } else { 0 };
                for room in &community {
                    if view.ensure_power_level(room, user, level).await? == Outcome::Changed {
                        changed.push((*room).clone());
                    }
                }
                for (i, room) in rooms.admin.iter().enumerate() {
                    let outcome = if action == LifecycleAction::Promoted {
                        admin.join(&view, room, user, &format!("{txn}-admin-{i}")).await?
                    } else {
                        view.ensure_membership(room, user, MemberChange::Kick, Some("no longer an admin")).await?
                    };
                    if outcome == Outcome::Changed {
                        changed.push(room.clone());
                    }
                }
            }
        }
        Ok(Done { changed, note })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, common_name: Option<&str>) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            path: path.into(),
            query: None,
            headers: Vec::new(),
            body: Vec::new(),
            peer: "127.0.0.1:1".parse().unwrap(),
            client_common_name: common_name.map(str::to_owned),
            operator: None,
        }
    }

    #[test]
    fn only_an_allowed_certificate_name_passes() {
        let callers = vec!["rasenmaeher".to_owned()];
        assert!(authorize(&request("POST", "/api/v1/users/created", Some("rasenmaeher")), &callers).is_ok());
        let wrong = authorize(&request("POST", "/api/v1/users/created", Some("mallory")), &callers).unwrap_err();
        assert_eq!(wrong.status, 403);
        let none = authorize(&request("POST", "/api/v1/users/created", None), &callers).unwrap_err();
        assert!(String::from_utf8(none.body).unwrap().contains("client_certificate_required"));
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(
            route(&request("POST", "/api/v1/users/promoted", None)).unwrap(),
            Route::Action(LifecycleAction::Promoted)
        );
        assert_eq!(route(&request("PUT", "/api/v1/users/updated", None)).unwrap(), Route::Updated);
        assert_eq!(route(&request("GET", "/api/v1/users/created", None)).unwrap_err().status, 405);
        assert_eq!(route(&request("POST", "/api/v1/users/updated", None)).unwrap_err().status, 405);
        assert_eq!(route(&request("POST", "/api/v1/users/exploded", None)).unwrap_err().status, 404);
        assert_eq!(route(&request("POST", "/elsewhere", None)).unwrap_err().status, 404);
    }

    #[test]
    fn the_callsign_becomes_the_user_or_a_400_naming_the_field() {
        let template = "@{callsign}:{server_name}";
        let body = br#"{"uuid": "u-1", "callsign": "ALPHA-1", "x509cert": "-----BEGIN CERTIFICATE-----"}"#;
        assert_eq!(user_of(body, template, "example.org").unwrap().as_str(), "@alpha-1:example.org");
        let message = |body: &[u8]| {
            let answer = user_of(body, template, "example.org").unwrap_err();
            assert_eq!(answer.status, 400);
            String::from_utf8(answer.body).unwrap()
        };
        assert!(message(br#"{"uuid": "u"}"#).contains("`callsign` is missing"));
        assert!(message(br#"{"callsign": "a"}"#).contains("`uuid` is missing"));
        assert!(message(br#"{"uuid": "u", "callsign": 7}"#).contains("`callsign` must be a non-empty string"));
        assert!(message(br#"{"uuid": "u", "callsign": "al ice"}"#).contains("cannot be a Matrix user name"));
        assert!(message(b"[1]").contains("JSON object"));
        assert!(message(b"{").contains("not JSON"));
    }

    #[test]
    fn a_later_call_replaces_a_waiting_one_of_the_same_axis_only() {
        assert_eq!(LifecycleAction::Promoted.axis(), LifecycleAction::Demoted.axis());
        assert_eq!(LifecycleAction::Created.axis(), LifecycleAction::Revoked.axis());
        assert_ne!(LifecycleAction::Created.axis(), LifecycleAction::Promoted.axis());
    }
}

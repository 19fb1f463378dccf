//! `call` lines: a program's questions to the host about Matrix, and room operations it wants done now (with
//! their result), answered with `result` lines at any time, beside events and jobs. Each goes through the
//! instance's rate limiter (`MatrixView`). The operations check before they act, so a program may repeat one
//! after a restart without harm; unlike actions, a call is not kept across a crash of the host.

use matrix_sdk::ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::protocol::CallError;
use crate::plugin::MatrixView;
use crate::plugin::room_ops::{MemberChange, Outcome, RoomOpError, RoomSpec};

/// Most calls a program may have waiting at once; more are answered `too_many_calls`.
pub const MAX_CALLS_IN_FLIGHT: usize = 16;

/// The methods a program may call.
pub const METHODS: &[&str] = &[
    "joined_rooms",
    "members",
    "state",
    "room_version",
    "resolve_alias",
    "create_room",
    "invite",
    "kick",
    "ban",
    "unban",
    "set_state",
    "set_power_level",
];

fn error(code: &str, message: impl Into<String>) -> CallError {
    CallError { code: code.into(), message: message.into() }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Room {
    room_id: OwnedRoomId,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    room_id: OwnedRoomId,
    event_type: String,
    #[serde(default)]
    state_key: String,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Member {
    room_id: OwnedRoomId,
    user_id: OwnedUserId,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerLevel {
    room_id: OwnedRoomId,
    user_id: OwnedUserId,
    level: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Alias {
    alias: OwnedRoomAliasId,
}

/// The call's params, read like a plugin config (`parse_config`: the error names the field).
fn params<T: serde::de::DeserializeOwned>(method: &str, params: Value) -> Result<T, CallError> {
    let params = if params.is_null() { json!({}) } else { params };
    crate::plugin::parse_config(&params).map_err(|problem| {
        let at = if problem.key.is_empty() { String::new() } else { format!(".{}", problem.key) };
        error("bad_params", format!("`{method}` params{at}: {}", problem.message))
    })
}

fn refused(e: RoomOpError) -> CallError {
    match e {
        RoomOpError::Invalid(why) => error("bad_params", why),
        RoomOpError::Matrix(e) => {
            let code = e.as_client_api_error().and_then(|api| api.error_kind()).map(|k| k.errcode().to_string());
            error(code.as_deref().unwrap_or("failed"), crate::telemetry::scrub::scrubbed(&e.to_string()))
        }
    }
}

fn changed(outcome: Outcome) -> Value {
    json!({"changed": outcome == Outcome::Changed})
}

/// Answers one call.
pub async fn answer(view: &MatrixView, method: &str, raw: Value) -> Result<Value, CallError> {
    let change = match method {
        "invite" => Some(MemberChange::Invite),
        "kick" => Some(MemberChange::Kick),
        "ban" => Some(MemberChange::Ban),
        "unban" => Some(MemberChange::Unban),
        _ => None,
    };
    if let Some(change) = change {
        let p: Member = params(method, raw)?;
        let outcome = view.ensure_membership(&p.room_id, &p.user_id, change, p.reason.as_deref()).await;
        return outcome.map(changed).map_err(refused);
    }
    match method {
        "joined_rooms" => {
            let _: serde_json::Map<String, Value> = params(method, raw)?;
            Ok(json!(view.joined_rooms()))
        }
        "members" => {
            let p: Room = params(method, raw)?;
            view.members(&p.room_id).await.map(|m| json!(m)).map_err(refused)
        }
        "state" => {
            let p: State = params(method, raw)?;
            view.state(&p.room_id, &p.event_type, &p.state_key).await.map(|c| c.unwrap_or(Value::Null)).map_err(refused)
        }
        "room_version" => {
            let p: Room = params(method, raw)?;
            view.room_creation(&p.room_id).await.map(|c| json!(c)).map_err(refused)
        }
        "resolve_alias" => {
            let p: Alias = params(method, raw)?;
            view.resolve_alias(&p.alias).await.map(|r| json!(r)).map_err(refused)
        }
        "create_room" => {
            // `ensure_room` checks the spec (a bad one is `bad_params`).
            let spec: RoomSpec = params(method, raw)?;
            let (room_id, outcome) = view.ensure_room(&spec).await.map_err(refused)?;
            Ok(json!({"room_id": room_id, "created": outcome == Outcome::Changed}))
        }
        "set_state" => {
            let p: State = params(method, raw)?;
            let content =
                p.content.ok_or_else(|| error("bad_params", "`set_state` params: missing field `content`"))?;
            view.ensure_state(&p.room_id, &p.event_type, &p.state_key, &content).await.map(changed).map_err(refused)
        }
        "set_power_level" => {
            let p: PowerLevel = params(method, raw)?;
            view.ensure_power_level(&p.room_id, &p.user_id, p.level).await.map(changed).map_err(refused)
        }
        other => Err(error(
            "unknown_method",
            format!(
                "`{}` is not a method; the methods are {}",
                crate::telemetry::scrub::for_log(other),
                METHODS.join(", ")
            ),
        )),
    }
}

//! Room operations that check before they act, so that doing one twice (after a crash, a retry, a second run
//! of a bootstrap) is harmless: creating a room looks its alias up first; invites, kicks, bans, unbans, power
//! levels and state events read the room's current state from the homeserver first and send nothing when it
//! is already as asked. The reads go to the homeserver, not to the local store: the sync filter keeps most
//! state out of it.

use matrix_sdk::Client;
use matrix_sdk::ruma::api::client::alias::get_alias;
use matrix_sdk::ruma::api::client::discovery::get_capabilities;
use matrix_sdk::ruma::api::client::membership::{ban_user, get_member_events, invite_user, kick_user, unban_user};
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::state::{get_state_event_for_key, send_state_event};
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::events::StateEventType;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What went wrong with an operation.
#[derive(Debug, thiserror::Error)]
pub enum RoomOpError {
    #[error(transparent)]
    Matrix(#[from] matrix_sdk::Error),
    /// The request itself is wrong (a bad alias, an impossible change): asking again will not help.
    #[error("{0}")]
    Invalid(String),
}

impl From<matrix_sdk::HttpError> for RoomOpError {
    fn from(e: matrix_sdk::HttpError) -> Self {
        RoomOpError::Matrix(e.into())
    }
}

/// Whether an operation changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    /// The room was already as asked: nothing was sent.
    AlreadySo,
}

/// A membership change the bot makes to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberChange {
    Invite,
    Kick,
    Ban,
    Unban,
}

impl MemberChange {
    pub fn name(self) -> &'static str {
        match self {
            MemberChange::Invite => "invite",
            MemberChange::Kick => "kick",
            MemberChange::Ban => "ban",
            MemberChange::Unban => "unban",
        }
    }

    /// Whether the change is needed for a user whose membership is `current` (`None`: never in the room).
    /// Inviting a banned user is an error: unban first.
    fn needed(self, current: Option<&str>) -> Result<bool, RoomOpError> {
        Ok(match self {
            MemberChange::Invite if current == Some("ban") => {
                return Err(RoomOpError::Invalid("the user is banned from the room: unban them first".into()));
            }
            MemberChange::Invite => !matches!(current, Some("join" | "invite")),
            MemberChange::Kick => matches!(current, Some("join" | "invite" | "knock")),
            MemberChange::Ban => current != Some("ban"),
            MemberChange::Unban => current == Some("ban"),
        })
    }
}

/// A room member as the homeserver has them: their latest membership event and who sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub user_id: String,
    pub membership: String,
    /// Who sent the membership event (the member themselves for a join or their own leave).
    pub sender: String,
    pub event_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A room's version and creators (from its `m.room.create` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomCreation {
    pub room_version: String,
    /// The creator and any `additional_creators`.
    pub creators: Vec<String>,
    /// Whether the creators have unlimited power and are not listed in the power levels (room version 12 on).
    pub creators_privileged: bool,
}

/// A state event to set, at creation or later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    pub event_type: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Value,
}

/// A room (or Space) to exist, found by its alias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomSpec {
    /// The alias's local part: the room is `#<alias>:<the bot's server>`. It is what makes creating once.
    pub alias: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// A Space (`m.space`) rather than a room.
    #[serde(default)]
    pub space: bool,
    /// `private_chat` (the default), `public_chat` or `trusted_private_chat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Encrypted (`m.megolm.v1.aes-sha2`) from its creation.
    #[serde(default)]
    pub encrypted: bool,
    /// The homeserver's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_version: Option<String>,
    /// Further state at creation (join rules, history visibility, Space children).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initial_state: Vec<StateSpec>,
    /// Replaces whole top-level keys of the power levels at creation (an override `users` replaces the map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_level_content_override: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invite: Vec<OwnedUserId>,
}

impl RoomSpec {
    /// Checks what the homeserver would refuse anyway, with the field that is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.alias.is_empty()
            || self.alias.len() > 200
            || self.alias.chars().any(|c| c == ':' || c == '#' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "`alias` {:?} must be the alias's local part (no `#`, `:` or spaces, at most 200 bytes)",
                crate::telemetry::scrub::for_log(&self.alias)
            ));
        }
        if let Some(preset) = &self.preset
            && !matches!(preset.as_str(), "private_chat" | "public_chat" | "trusted_private_chat")
        {
            return Err(format!("`preset` {preset:?} must be private_chat, public_chat or trusted_private_chat"));
        }
        if let Some(version) = &self.room_version
            && RoomVersionId::try_from(version.as_str()).is_err()
        {
            return Err(format!("`room_version` {version:?} is not a room version"));
        }
        if self.power_level_content_override.as_ref().is_some_and(|o| !o.is_object()) {
            return Err("`power_level_content_override` must be an object".into());
        }
        if let Some(bad) = self.initial_state.iter().find(|s| !s.content.is_object()) {
            return Err(format!("the `content` of initial state `{}` must be an object", bad.event_type));
        }
        Ok(())
    }

    /// The full alias on the bot's server.
    pub fn full_alias(&self, bot: &UserId) -> Result<OwnedRoomAliasId, RoomOpError> {
        OwnedRoomAliasId::try_from(format!("#{}:{}", self.alias, bot.server_name()))
            .map_err(|e| RoomOpError::Invalid(format!("`alias` {:?}: {e}", self.alias)))
    }
}

fn not_found(error: &matrix_sdk::HttpError) -> bool {
    matches!(error.client_api_error_kind(), Some(ErrorKind::NotFound))
        || error.as_client_api_error().is_some_and(|e| e.status_code.as_u16() == 404)
}

/// The room an alias points to, if any.
pub async fn resolve_alias(client: &Client, alias: &OwnedRoomAliasId) -> Result<Option<OwnedRoomId>, RoomOpError> {
    match client.send(get_alias::v3::Request::new(alias.clone())).await {
        Ok(response) => Ok(Some(response.room_id)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The content of a state event as the homeserver has it now (`None`: there is none).
pub async fn state(
    client: &Client,
    room: &RoomId,
    event_type: &str,
    state_key: &str,
) -> Result<Option<Value>, RoomOpError> {
    let request = get_state_event_for_key::v3::Request::new(room.to_owned(), event_type.into(), state_key.to_owned());
    match client.send(request).await {
        Ok(response) => Ok(Some(serde_json::from_str(response.event_or_content.get()).unwrap_or(Value::Null))),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every member of a room with their latest membership event (joined, invited, left, banned, knocking).
pub async fn members(client: &Client, room: &RoomId) -> Result<Vec<Member>, RoomOpError> {
    let response = client.send(get_member_events::v3::Request::new(room.to_owned())).await?;
    let field = |event: &Value, path: &[&str]| {
        path.iter().try_fold(event, |v, k| v.get(k)).and_then(Value::as_str).map(str::to_owned)
    };
    Ok(response
        .chunk
        .iter()
        .filter_map(|raw| serde_json::from_str::<Value>(raw.json().get()).ok())
        .filter_map(|event| {
            Some(Member {
                user_id: field(&event, &["state_key"])?,
                membership: field(&event, &["content", "membership"])?,
                sender: field(&event, &["sender"])?,
                event_id: field(&event, &["event_id"])?,
                reason: field(&event, &["content", "reason"]),
            })
        })
        .collect())
}

/// Whether rooms of `room_version` give their creators unlimited power, without listing them in the power
/// levels (room version 12 on). Unknown versions: no.
pub fn creators_privileged(room_version: &str) -> bool {
    RoomVersionId::try_from(room_version)
        .ok()
        .and_then(|v| v.rules())
        .is_some_and(|rules| rules.authorization.explicitly_privilege_room_creators)
}

/// The room version the homeserver gives new rooms when none is asked for (its capabilities).
pub async fn default_room_version(client: &Client) -> Result<String, RoomOpError> {
    let response = client.send(get_capabilities::v3::Request::new()).await?;
    Ok(response.capabilities.room_versions.default.to_string())
}

/// The room's version and creators.
pub async fn creation(client: &Client, room: &RoomId) -> Result<RoomCreation, RoomOpError> {
    let mut request =
        get_state_event_for_key::v3::Request::new(room.to_owned(), StateEventType::RoomCreate, String::new());
    request.format = get_state_event_for_key::v3::StateEventFormat::Event;
    let response = client.send(request).await?;
    let event: Value = serde_json::from_str(response.event_or_content.get()).unwrap_or(Value::Null);
    // Room version 1 has no `room_version` in its create event.
    let room_version = event["content"]["room_version"].as_str().unwrap_or("1").to_owned();
    let creators_privileged = creators_privileged(&room_version);
    let mut creators: Vec<String> = event["sender"].as_str().map(str::to_owned).into_iter().collect();
    if let Some(more) = event["content"]["additional_creators"].as_array() {
        creators.extend(more.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    Ok(RoomCreation { room_version, creators, creators_privileged })
}

/// Makes `user`'s membership what `change` asks for, unless it already is.
pub async fn ensure_membership(
    client: &Client,
    room: &RoomId,
    user: &UserId,
    change: MemberChange,
    reason: Option<&str>,
) -> Result<Outcome, RoomOpError> {
    let current = state(client, room, "m.room.member", user.as_str()).await?;
    let membership = current.as_ref().and_then(|c| c["membership"].as_str());
    if !change.needed(membership)? {
        return Ok(Outcome::AlreadySo);
    }
    change_membership(client, room, user, change, reason).await?;
    Ok(Outcome::Changed)
}

/// Makes the change without reading the membership first: for a caller that knows it already (a reconciler
/// that read every member in one call).
pub async fn change_membership(
    client: &Client,
    room: &RoomId,
    user: &UserId,
    change: MemberChange,
    reason: Option<&str>,
) -> Result<(), RoomOpError> {
    let (room, user, reason) = (room.to_owned(), user.to_owned(), reason.map(str::to_owned));
    match change {
        MemberChange::Invite => {
            let mut invitee = invite_user::v3::InviteUserId::new(user);
            invitee.reason = reason;
            client
                .send(invite_user::v3::Request::new(room, invite_user::v3::InvitationRecipient::UserId(invitee)))
                .await?;
        }
        MemberChange::Kick => {
            let mut request = kick_user::v3::Request::new(room, user);
            request.reason = reason;
            client.send(request).await?;
        }
        MemberChange::Ban => {
            let mut request = ban_user::v3::Request::new(room, user);
            request.reason = reason;
            client.send(request).await?;
        }
        MemberChange::Unban => {
            let mut request = unban_user::v3::Request::new(room, user);
            request.reason = reason;
            client.send(request).await?;
        }
    }
    Ok(())
}

/// Sets a state event unless the room already has one with this content.
pub async fn ensure_state(
    client: &Client,
    room: &RoomId,
    event_type: &str,
    state_key: &str,
    content: &Value,
) -> Result<Outcome, RoomOpError> {
    if !content.is_object() {
        return Err(RoomOpError::Invalid(format!("the content of `{event_type}` must be an object")));
    }
    if state(client, room, event_type, state_key).await?.as_ref() == Some(content) {
        return Ok(Outcome::AlreadySo);
    }
    let body = Raw::from_json(serde_json::value::to_raw_value(content).expect("JSON serializes"));
    let request =
        send_state_event::v3::Request::new_raw(room.to_owned(), event_type.into(), state_key.to_owned(), body);
    client.send(request).await?;
    Ok(Outcome::Changed)
}

/// Gives `user` the power level `level` in the room, unless they have it. In room versions where creators
/// have unlimited power (12 on), a creator has nothing to gain: nothing is sent.
pub async fn ensure_power_level(
    client: &Client,
    room: &RoomId,
    user: &UserId,
    level: i64,
) -> Result<Outcome, RoomOpError> {
    let creation = creation(client, room).await?;
    if creation.creators_privileged && creation.creators.iter().any(|c| c == user.as_str()) {
        return Ok(Outcome::AlreadySo);
    }
    let mut levels = state(client, room, "m.room.power_levels", "").await?.unwrap_or_else(|| serde_json::json!({}));
    let default = levels["users_default"].as_i64().unwrap_or(0);
    let current = levels["users"][user.as_str()].as_i64().unwrap_or(default);
    if current == level {
        return Ok(Outcome::AlreadySo);
    }
    if !levels["users"].is_object() {
        levels["users"] = serde_json::json!({});
    }
    levels["users"][user.as_str()] = level.into();
    ensure_state(client, room, "m.room.power_levels", "", &levels).await
}

/// The room `spec` describes: found by its alias, or created with it. Creating races nobody but a crash of this
/// bot between creating and recording; the alias, set in the same request, makes the repeat find the room.
pub async fn ensure_room(client: &Client, spec: &RoomSpec) -> Result<(OwnedRoomId, Outcome), RoomOpError> {
    spec.check().map_err(RoomOpError::Invalid)?;
    let bot = client.user_id().ok_or_else(|| RoomOpError::Invalid("the client is not logged in".into()))?.to_owned();
    let alias = spec.full_alias(&bot)?;
    if let Some(room) = resolve_alias(client, &alias).await? {
        return Ok((room, Outcome::AlreadySo));
    }
    let raw = |value: &Value| serde_json::value::to_raw_value(value).expect("JSON serializes");
    let mut initial_state: Vec<_> = spec
        .initial_state
        .iter()
        .map(|s| {
            Raw::from_json(raw(
                &serde_json::json!({"type": s.event_type, "state_key": s.state_key, "content": s.content}),
            ))
        })
        .collect();
    if spec.encrypted {
        let encryption = serde_json::json!({"type": "m.room.encryption", "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"}});
        initial_state.push(Raw::from_json(raw(&encryption)));
    }
    let mut request = create_room::v3::Request::new();
    request.room_alias_name = Some(spec.alias.clone());
    request.name = spec.name.clone();
    request.topic = spec.topic.clone();
    request.invite = spec.invite.clone();
    request.initial_state = initial_state;
    request.preset = Some(spec.preset.as_deref().unwrap_or("private_chat").into());
    request.room_version = spec.room_version.as_deref().and_then(|v| RoomVersionId::try_from(v).ok());
    request.power_level_content_override = spec.power_level_content_override.as_ref().map(|o| Raw::from_json(raw(o)));
    if spec.space {
        request.creation_content = Some(Raw::from_json(raw(&serde_json::json!({"type": "m.space"}))));
    }
    match client.create_room(request).await {
        Ok(room) => Ok((room.room_id().to_owned(), Outcome::Changed)),
        Err(e) if matches!(e.client_api_error_kind(), Some(ErrorKind::RoomInUse)) => {
            let room = resolve_alias(client, &alias).await?.ok_or_else(|| {
                RoomOpError::Invalid(format!("the alias {alias} is in use, but it cannot be resolved"))
            })?;
            Ok((room, Outcome::AlreadySo))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_change_is_made_only_where_needed() {
        use MemberChange::*;
        assert!(Invite.needed(None).unwrap() && Invite.needed(Some("leave")).unwrap());
        assert!(!Invite.needed(Some("join")).unwrap() && !Invite.needed(Some("invite")).unwrap());
        assert!(Invite.needed(Some("ban")).unwrap_err().to_string().contains("unban them first"));
        assert!(
            Kick.needed(Some("join")).unwrap() && !Kick.needed(Some("leave")).unwrap() && !Kick.needed(None).unwrap()
        );
        assert!(Ban.needed(Some("join")).unwrap() && Ban.needed(None).unwrap() && !Ban.needed(Some("ban")).unwrap());
        assert!(Unban.needed(Some("ban")).unwrap() && !Unban.needed(Some("leave")).unwrap());
    }

    #[test]
    fn a_room_spec_names_its_bad_field() {
        let spec = |json: Value| serde_json::from_value::<RoomSpec>(json).unwrap();
        assert!(spec(serde_json::json!({"alias": "ops"})).check().is_ok());
        assert!(spec(serde_json::json!({"alias": "#ops:x"})).check().unwrap_err().contains("`alias`"));
        assert!(spec(serde_json::json!({"alias": "a", "preset": "open"})).check().unwrap_err().contains("`preset`"));
        assert!(
            spec(serde_json::json!({"alias": "a", "room_version": ""})).check().unwrap_err().contains("room_version")
        );
        let bot = UserId::parse("@bot:example.org").unwrap();
        assert_eq!(spec(serde_json::json!({"alias": "ops"})).full_alias(&bot).unwrap().as_str(), "#ops:example.org");
        assert!(serde_json::from_value::<RoomSpec>(serde_json::json!({"alias": "a", "nmae": "x"})).is_err());
    }
}

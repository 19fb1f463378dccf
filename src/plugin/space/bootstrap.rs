//! The `space` bootstrap: the Space and its rooms made to exist and to look as the config says, idempotently.
//!
//! Each room is found by its alias or created with everything at once (name, topic, join rule, history
//! visibility, encryption, the Space parent, and power levels that keep the bot above the admins it makes:
//! 200 against 100, below room version 12; from 12 on the bot is the room's creator, whose power is unlimited
//! and who is not listed). Then every state event the config decides is read back from the homeserver and
//! sent only where it differs, so a second run sends none. Encryption is added where missing, never removed.

use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use serde::Serialize;
use serde_json::{Value, json};

use super::config::{RoomKind, SPACE_KEY, SpaceConfig};
use crate::plugin::room_ops::{self, Outcome, RoomOpError};
use crate::plugin::{MatrixView, RoomSpec, StateSpec};

/// The power level the bot gives itself below room version 12: above the admins (100) it promotes, so it can
/// always demote them.
pub const BOT_POWER: i64 = 200;
/// The power level of an admin.
pub const ADMIN_POWER: i64 = 100;

/// The rooms the bootstrap made sure of, by what they are for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rooms {
    pub space: OwnedRoomId,
    /// Open to the Space's members: created users join them.
    pub public: Vec<OwnedRoomId>,
    /// Invite only: promoted users join them.
    pub admin: Vec<OwnedRoomId>,
    pub room_version: String,
}

/// What one bootstrap did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Aliases of the rooms it created.
    pub created: Vec<String>,
    /// State events it sent to rooms that existed (`type` or `type/state_key`).
    pub state_sent: Vec<String>,
    /// Rooms that are encrypted although the config says `encrypted: false`: encryption cannot be undone.
    pub encrypted_against_config: Vec<String>,
}

/// A step that failed, naming the room and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct BootstrapError {
    pub step: String,
    #[source]
    pub source: RoomOpError,
}

impl BootstrapError {
    /// Whether trying again later can help: the homeserver was unreachable, failing (5xx) or rate-limiting.
    pub fn is_transient(&self) -> bool {
        match &self.source {
            RoomOpError::Matrix(e) => !crate::matrix_errors::is_permanent(e),
            RoomOpError::Invalid(_) => false,
        }
    }
}

fn at(step: impl Into<String>) -> impl FnOnce(RoomOpError) -> BootstrapError {
    let step = step.into();
    move |source| BootstrapError { step, source }
}

/// The `m.room.join_rules` content of a room of `kind` in the Space `space`.
fn join_rule(kind: RoomKind, space: &OwnedRoomId) -> Value {
    match kind {
        RoomKind::Public => {
            json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]})
        }
        RoomKind::Admin => json!({"join_rule": "invite"}),
    }
}

/// The state events the config decides for a room, besides encryption (`(type, state_key, content)`).
fn room_state(config: &SpaceConfig, key: &str, space: &OwnedRoomId, server: &str) -> Vec<StateSpec> {
    let room = &config.rooms[key];
    let mut state = vec![
        spec("m.room.name", "", json!({"name": room.name})),
        spec("m.room.join_rules", "", join_rule(room.kind, space)),
        spec("m.room.history_visibility", "", json!({"history_visibility": config.history_visibility})),
        spec("m.space.parent", space.as_str(), json!({"via": [server], "canonical": true})),
    ];
    if let Some(topic) = &room.topic {
        state.push(spec("m.room.topic", "", json!({"topic": topic})));
    }
    state
}

fn space_state(config: &SpaceConfig, children: &[OwnedRoomId], server: &str) -> Vec<StateSpec> {
    let mut state = vec![
        spec("m.room.name", "", json!({"name": config.space.name})),
        spec("m.room.join_rules", "", json!({"join_rule": "invite"})),
    ];
    if let Some(topic) = &config.space.topic {
        state.push(spec("m.room.topic", "", json!({"topic": topic})));
    }
    state.extend(children.iter().map(|child| spec("m.space.child", child.as_str(), json!({"via": [server]}))));
    state
}

fn spec(event_type: &str, state_key: &str, content: Value) -> StateSpec {
    StateSpec { event_type: event_type.into(), state_key: state_key.into(), content }
}

/// Power levels at creation: the bot at 200 where creators are listed (below room version 12).
fn power_override(bot: &OwnedUserId, room_version: &str) -> Option<Value> {
    (!room_ops::creators_privileged(room_version)).then(|| json!({"users": {bot.as_str(): BOT_POWER}}))
}

/// Makes the Space and its rooms exist and look as `config` says.
pub async fn bootstrap(view: &MatrixView, config: &SpaceConfig) -> Result<(Rooms, Report), BootstrapError> {
    let bot = view.user_id().ok_or_else(|| BootstrapError {
        step: "the bot's user id".into(),
        source: RoomOpError::Invalid("the client is not logged in".into()),
    })?;
    let server = bot.server_name().to_string();
    let room_version = match &config.room_version {
        Some(version) => version.clone(),
        None => view.default_room_version().await.map_err(at("reading the homeserver's default room version"))?,
    };
    let mut report = Report::default();

    let space_alias = config.alias(SPACE_KEY);
    let space_spec = RoomSpec {
        alias: space_alias.clone(),
        name: Some(config.space.name.clone()),
        // The topic goes in as the state event it is compared with (`topic` in the request would make the
        // homeserver add its own `m.topic`, and the next run would send it again).
        topic: None,
        space: true,
        preset: Some("private_chat".into()),
        encrypted: false,
        room_version: Some(room_version.clone()),
        initial_state: space_state(config, &[], &server)
            .into_iter()
            .filter(|s| s.event_type != "m.room.name")
            .collect(),
        power_level_content_override: power_override(&bot, &room_version),
        invite: Vec::new(),
    };
    let (space, outcome) =
        view.ensure_room(&space_spec).await.map_err(at(format!("making the Space #{space_alias}:{server}")))?;
    let space_created = outcome == Outcome::Changed;
    if space_created {
        report.created.push(format!("#{space_alias}:{server}"));
    }

    let mut rooms = Rooms { space: space.clone(), public: Vec::new(), admin: Vec::new(), room_version };
    let mut children = Vec::new();
    for (key, room) in &config.rooms {
        let alias = config.alias(key);
        let full_alias = format!("#{alias}:{server}");
        let wanted = room_state(config, key, &space, &server);
        let room_spec = RoomSpec {
            alias,
            name: Some(room.name.clone()),
            topic: None,
            space: false,
            preset: Some("private_chat".into()),
            encrypted: config.encrypted,
            room_version: Some(rooms.room_version.clone()),
            initial_state: wanted.iter().filter(|s| s.event_type != "m.room.name").cloned().collect(),
            power_level_content_override: power_override(&bot, &rooms.room_version),
            invite: Vec::new(),
        };
        let (id, outcome) = view.ensure_room(&room_spec).await.map_err(at(format!("making {full_alias}")))?;
        if outcome == Outcome::Changed {
            report.created.push(full_alias);
        } else {
            ensure_all(view, &id, &full_alias, &wanted, &mut report).await?;
            ensure_encryption(view, &id, &full_alias, config.encrypted, &mut report).await?;
        }
        match room.kind {
            RoomKind::Public => rooms.public.push(id.clone()),
            RoomKind::Admin => rooms.admin.push(id.clone()),
        }
        children.push(id);
    }

    let wanted = space_state(config, &children, &server);
    let space_name = format!("the Space #{space_alias}:{server}");
    if space_created {
        // Created with its name, topic and join rule: only the children are new (part of the creation, not
        // counted as state sent to a room that existed).
        let children: Vec<_> = wanted.into_iter().filter(|s| s.event_type == "m.space.child").collect();
        ensure_all(view, &space, &space_name, &children, &mut Report::default()).await?;
    } else {
        ensure_all(view, &space, &space_name, &wanted, &mut report).await?;
    }
    Ok((rooms, report))
}

/// Sends each of `wanted` that the room does not have as it is.
async fn ensure_all(
    view: &MatrixView,
    room: &OwnedRoomId,
    name: &str,
    wanted: &[StateSpec],
    report: &mut Report,
) -> Result<(), BootstrapError> {
    for state in wanted {
        let what = if state.state_key.is_empty() {
            state.event_type.clone()
        } else {
            format!("{}/{}", state.event_type, state.state_key)
        };
        let outcome = view
            .ensure_state(room, &state.event_type, &state.state_key, &state.content)
            .await
            .map_err(at(format!("setting {what} in {name}")))?;
        if outcome == Outcome::Changed {
            tracing::info!(room = %name, state = %what, "set the room's state as the config says");
            report.state_sent.push(format!("{name}: {what}"));
        }
    }
    Ok(())
}

/// Adds encryption where the config asks for it and the room has none; never removes it.
async fn ensure_encryption(
    view: &MatrixView,
    room: &OwnedRoomId,
    name: &str,
    wanted: bool,
    report: &mut Report,
) -> Result<(), BootstrapError> {
    let current =
        view.state(room, "m.room.encryption", "").await.map_err(at(format!("reading {name}'s encryption")))?;
    let encrypted = current.as_ref().is_some_and(|c| c.get("algorithm").is_some());
    match (wanted, encrypted) {
        (true, false) => {
            view.ensure_state(room, "m.room.encryption", "", &json!({"algorithm": "m.megolm.v1.aes-sha2"}))
                .await
                .map_err(at(format!("encrypting {name}")))?;
            tracing::info!(room = %name, "turned on end-to-end encryption, as the config says");
            report.state_sent.push(format!("{name}: m.room.encryption"));
        }
        (false, true) => {
            tracing::warn!(room = %name, "the room is encrypted although the config says `encrypted: false`; encryption cannot be turned off");
            report.encrypted_against_config.push(name.to_owned());
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SpaceConfig {
        crate::plugin::parse_config(&json!({
            "deployment": "demo",
            "space": {"name": "Demo", "topic": "all of us"},
            "rooms": {"general": {"name": "General"}, "admin": {"name": "Admins", "kind": "admin"}},
        }))
        .unwrap()
    }

    #[test]
    fn public_rooms_are_restricted_to_the_space_and_admin_rooms_invite_only() {
        let space: OwnedRoomId = "!space:example.org".try_into().unwrap();
        let general = room_state(&config(), "general", &space, "example.org");
        let rule = general.iter().find(|s| s.event_type == "m.room.join_rules").unwrap();
        assert_eq!(
            rule.content,
            json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!space:example.org"}]})
        );
        let parent = general.iter().find(|s| s.event_type == "m.space.parent").unwrap();
        assert_eq!(
            (parent.state_key.as_str(), &parent.content),
            ("!space:example.org", &json!({"via": ["example.org"], "canonical": true}))
        );
        let history = general.iter().find(|s| s.event_type == "m.room.history_visibility").unwrap();
        assert_eq!(history.content, json!({"history_visibility": "joined"}));
        let admin = room_state(&config(), "admin", &space, "example.org");
        assert_eq!(
            admin.iter().find(|s| s.event_type == "m.room.join_rules").unwrap().content,
            json!({"join_rule": "invite"})
        );
    }

    #[test]
    fn the_bot_is_listed_at_200_only_below_room_version_12() {
        let bot: OwnedUserId = "@bot:example.org".try_into().unwrap();
        assert_eq!(power_override(&bot, "10"), Some(json!({"users": {"@bot:example.org": 200}})));
        assert_eq!(power_override(&bot, "11"), Some(json!({"users": {"@bot:example.org": 200}})));
        assert_eq!(power_override(&bot, "12"), None);
    }

    #[test]
    fn the_space_lists_each_room_as_a_child_with_via() {
        let children: Vec<OwnedRoomId> = vec!["!a:example.org".try_into().unwrap()];
        let state = space_state(&config(), &children, "example.org");
        let child = state.iter().find(|s| s.event_type == "m.space.child").unwrap();
        assert_eq!((child.state_key.as_str(), &child.content), ("!a:example.org", &json!({"via": ["example.org"]})));
        assert!(state.iter().any(|s| s.event_type == "m.room.topic" && s.content == json!({"topic": "all of us"})));
    }
}

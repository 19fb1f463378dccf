//! The `space` plugin's config: the deployment's Space and its rooms, declared once (seed 004's Space and four
//! rooms), and who may call the user-lifecycle API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plugin::ConfigProblem;

/// What a room is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// Open to every member of the Space (join rule `restricted` to the Space); created users are joined.
    Public,
    /// Invite only; promoted users are joined, demoted ones removed.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default = "default_kind")]
    pub kind: RoomKind,
}

fn default_kind() -> RoomKind {
    RoomKind::Public
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceRoomConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceConfig {
    /// The aliases' prefix: the Space is `#<deployment>-space:<domain>`, room `general` is
    /// `#<deployment>-general:<domain>` (`<domain>`: the bot's server name).
    pub deployment: String,
    pub space: SpaceRoomConfig,
    /// The Space's rooms by key (the key is the alias's last part; `space` is taken by the Space).
    #[serde(default)]
    pub rooms: BTreeMap<String, RoomConfig>,
    /// The room version of rooms this plugin creates; the homeserver's default when absent. At least 8
    /// (restricted join rules); in 12 on, the bot is the creator and needs no power level entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_version: Option<String>,
    /// Rooms (not the Space) are end-to-end encrypted (`m.megolm.v1.aes-sha2`). Encryption is never turned off
    /// in a room that has it.
    #[serde(default = "default_true")]
    pub encrypted: bool,
    /// The rooms' `m.room.history_visibility`: `joined` (the default), `invited`, `shared` or `world_readable`.
    #[serde(default = "default_history_visibility")]
    pub history_visibility: String,
    /// How long the bootstrap keeps trying while the homeserver cannot be reached or answers 5xx, in seconds.
    #[serde(default = "default_homeserver_wait")]
    pub homeserver_wait_seconds: u64,
    /// The subject common names of the client certificates allowed to call the lifecycle API (the deploy
    /// app's service certificate). Empty: every call is refused.
    #[serde(default)]
    pub callers: Vec<String>,
    /// How a callsign becomes a Matrix user: `{callsign}` is the callsign in lower case, `{server_name}` the
    /// bot's server name.
    #[serde(default = "default_user_id_template")]
    pub user_id_template: String,
}

fn default_user_id_template() -> String {
    "@{callsign}:{server_name}".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_history_visibility() -> String {
    "joined".to_owned()
}

fn default_homeserver_wait() -> u64 {
    300
}

/// The key of the Space itself among the aliases.
pub const SPACE_KEY: &str = "space";

/// The first room version with restricted join rules.
const RESTRICTED_JOIN_SINCE: u32 = 8;

/// Characters the alias parts may use (the alias grammar's safe subset; no `:`, `#` or spaces).
fn alias_part_ok(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 64
        && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '=' | '-'))
}

impl SpaceConfig {
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push(ConfigProblem { key: key.into(), message });
        if !alias_part_ok(&self.deployment) {
            problem(
                "deployment",
                format!(
                    "{:?} must be 1-64 lower-case letters, digits, `.`, `_`, `=` or `-` (it prefixes every alias)",
                    self.deployment
                ),
            );
        }
        for key in self.rooms.keys() {
            if key == SPACE_KEY {
                problem("rooms.space", "`space` is the Space's own alias; give the room another key".into());
            } else if !alias_part_ok(key) {
                problem(
                    &format!("rooms.{key}"),
                    format!("the key {key:?} must be 1-64 lower-case letters, digits, `.`, `_`, `=` or `-`"),
                );
            }
        }
        if let Some(version) = &self.room_version {
            match version.parse::<u32>() {
                Ok(n) if n >= RESTRICTED_JOIN_SINCE => {}
                _ => problem(
                    "room_version",
                    format!("{version:?}: restricted join rules need room version 8 or later (10, 11 or 12)"),
                ),
            }
        }
        if !matches!(self.history_visibility.as_str(), "joined" | "invited" | "shared" | "world_readable") {
            problem(
                "history_visibility",
                format!("{:?} must be joined, invited, shared or world_readable", self.history_visibility),
            );
        }
        if !self.user_id_template.starts_with('@') || !self.user_id_template.contains("{callsign}") {
            problem(
                "user_id_template",
                format!(
                    "{:?} must start with `@` and contain `{{callsign}}`, like `@{{callsign}}:{{server_name}}`",
                    self.user_id_template
                ),
            );
        }
        if self.callers.iter().any(|c| c.is_empty()) {
            problem("callers", "a caller's certificate common name cannot be empty".into());
        }
        if self.homeserver_wait_seconds == 0 || self.homeserver_wait_seconds > 3600 {
            problem("homeserver_wait_seconds", format!("{} must be 1-3600", self.homeserver_wait_seconds));
        }
        problems
    }

    /// The alias local part of the room with `key` (or of the Space, for [`SPACE_KEY`]).
    pub fn alias(&self, key: &str) -> String {
        format!("{}-{key}", self.deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: serde_json::Value) -> SpaceConfig {
        crate::plugin::parse_config(&yaml).unwrap()
    }

    #[test]
    fn a_seed_deployment_is_valid_with_defaults() {
        let config = parse(serde_json::json!({
            "deployment": "demo",
            "space": {"name": "Demo"},
            "rooms": {"general": {"name": "General"}, "admin": {"name": "Admins", "kind": "admin"}},
        }));
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        assert!(config.encrypted);
        assert_eq!(config.history_visibility, "joined");
        assert_eq!(config.rooms["general"].kind, RoomKind::Public);
        assert_eq!(config.alias("general"), "demo-general");
        assert_eq!(config.alias(SPACE_KEY), "demo-space");
    }

    #[test]
    fn problems_name_the_key_and_the_fix() {
        let config = parse(serde_json::json!({
            "deployment": "Demo Team",
            "space": {"name": "Demo"},
            "rooms": {"space": {"name": "x"}, "Bad:key": {"name": "y"}},
            "room_version": "7",
            "history_visibility": "everyone",
        }));
        let keys: Vec<_> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["deployment", "rooms.Bad:key", "rooms.space", "room_version", "history_visibility"]);
        let unknown = crate::plugin::parse_config::<SpaceConfig>(&serde_json::json!({
            "deployment": "d", "space": {"name": "D"}, "rooms": {"a": {"name": "A", "kind": "secret"}},
        }))
        .unwrap_err();
        assert_eq!(unknown.key, "rooms.a.kind");
    }
}

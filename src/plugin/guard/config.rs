//! The `guard` plugin's config: which users belong in which rooms, how often to check, and how to let people in.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plugin::{ConfigProblem, invites};

/// Shortest interval between full passes.
pub const MIN_INTERVAL_SECONDS: u64 = 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// The managed rooms, by room id (`!id:server`) or alias (`#alias:server`).
    #[serde(default)]
    pub rooms: BTreeMap<String, RoomPolicy>,
    /// A JSON file with more rooms (`{"rooms": {...}}`, the same shape), read again when it changes. A room in
    /// both has the union of both lists.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    /// A full pass over every managed room this often (and one room's pass on its membership changes).
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
    /// Plan and report, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// How a missing user is let in: `invite` (they accept it themselves) or `force_join` (Synapse's admin API
    /// with the bot a server admin, or the conduwuit family's admin room; invited where neither is there).
    #[serde(default)]
    pub join: JoinMode,
    /// User ID globs whose invites to rooms the bot accepts (a managed room's admin invites the bot in).
    #[serde(default)]
    pub allow_invites_from: Vec<String>,
}

fn default_interval() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinMode {
    #[default]
    Invite,
    ForceJoin,
}

/// Who belongs in one room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoomPolicy {
    /// Users who belong: invited when they are not in the room.
    #[serde(default)]
    pub users: Vec<String>,
    /// `space` instances of this host whose members belong (invited); users such an instance revoked are
    /// removed.
    #[serde(default)]
    pub spaces: Vec<String>,
    /// `space` instances whose admins belong (invited); their other users are removed.
    #[serde(default)]
    pub space_admins: Vec<String>,
    /// User ID globs (`@*:example.org`) who may stay; never invited (a glob names nobody in particular).
    #[serde(default)]
    pub allow: Vec<String>,
    /// User ID globs who must not be in the room: removed (joined members kicked, invites withdrawn, knocks
    /// rejected), even when another list names them.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Also remove every member no list names or allows. Off: only users the policy names are touched.
    #[serde(default)]
    pub kick_unlisted: bool,
}

impl RoomPolicy {
    /// Adds another policy's lists to this one (a room in the config and in the policy file).
    pub fn merge(&mut self, other: &RoomPolicy) {
        for (mine, theirs) in [
            (&mut self.users, &other.users),
            (&mut self.spaces, &other.spaces),
            (&mut self.space_admins, &other.space_admins),
            (&mut self.allow, &other.allow),
            (&mut self.deny, &other.deny),
        ] {
            for item in theirs {
                if !mine.contains(item) {
                    mine.push(item.clone());
                }
            }
        }
        self.kick_unlisted |= other.kick_unlisted;
    }

    /// Problems of this room's policy, keys below `prefix` (`rooms.<room>`).
    pub fn problems(&self, room: &str, prefix: &str) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(ConfigProblem { key, message });
        // Room ids of version 12 on have no server part (`!<hash>`).
        let known = match room.chars().next() {
            Some('!') => matrix_sdk::ruma::RoomId::parse(room).is_ok(),
            Some('#') => matrix_sdk::ruma::RoomAliasId::parse(room).is_ok(),
            _ => false,
        };
        if !known {
            problem(
                prefix.to_owned(),
                format!("{room:?} must be a room id (`!id:server`, `!id`) or alias (`#alias:server`)"),
            );
        }
        for (i, user) in self.users.iter().enumerate() {
            if matrix_sdk::ruma::UserId::parse(user).is_err() {
                problem(format!("{prefix}.users.{i}"), format!("{user:?} is not a user id like `@alice:example.org`"));
            }
        }
        for (list, globs) in [("allow", &self.allow), ("deny", &self.deny)] {
            for (i, glob) in globs.iter().enumerate() {
                if !(glob == "*" || glob.starts_with('@') && glob.contains(':')) {
                    problem(
                        format!("{prefix}.{list}.{i}"),
                        format!("{glob:?} should match user ids, like `@*:example.org` or `@bot-*:example.org`"),
                    );
                }
            }
        }
        for (list, ids) in [("spaces", &self.spaces), ("space_admins", &self.space_admins)] {
            for (i, id) in ids.iter().enumerate() {
                if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c == '/') {
                    problem(format!("{prefix}.{list}.{i}"), format!("{id:?} must be the id of a `space` instance"));
                }
            }
        }
        problems
    }
}

impl GuardConfig {
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        for (room, policy) in &self.rooms {
            problems.extend(policy.problems(room, &format!("rooms.{room}")));
        }
        if self.interval_seconds < MIN_INTERVAL_SECONDS {
            problems.push(ConfigProblem {
                key: "interval_seconds".into(),
                message: format!("{} is too often: at least {MIN_INTERVAL_SECONDS}", self.interval_seconds),
            });
        }
        if let Some(path) = &self.policy_file
            && !path.is_absolute()
        {
            problems.push(ConfigProblem {
                key: "policy_file".into(),
                message: format!("{} must be an absolute path", path.display()),
            });
        }
        if self.rooms.is_empty() && self.policy_file.is_none() {
            problems.push(ConfigProblem {
                key: "rooms".into(),
                message: "name at least one room (or a `policy_file`): the guard manages only the rooms it is given"
                    .into(),
            });
        }
        problems.extend(invites::check_globs(&self.allow_invites_from));
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_key() {
        let config: GuardConfig = crate::plugin::parse_config(&serde_json::json!({
            "rooms": {
                "general": {"users": ["@a:x"]},
                "!v12roomid": {},
                "#no-server": {},
                "!r:x": {"users": ["alice"], "allow": ["bob"], "spaces": ["has space"]},
            },
            "interval_seconds": 1,
            "policy_file": "policy.json",
        }))
        .unwrap();
        let keys: Vec<_> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "rooms.!r:x.users.0",
                "rooms.!r:x.allow.0",
                "rooms.!r:x.spaces.0",
                "rooms.#no-server",
                "rooms.general",
                "interval_seconds",
                "policy_file"
            ]
        );
        let unknown =
            crate::plugin::parse_config::<GuardConfig>(&serde_json::json!({"rooms": {"!r:x": {"invite": []}}}))
                .unwrap_err();
        assert_eq!(unknown.key, "rooms.!r:x.invite");
        let nothing = crate::plugin::parse_config::<GuardConfig>(&serde_json::json!({})).unwrap();
        assert_eq!(nothing.problems()[0].key, "rooms");
    }

    #[test]
    fn merging_unites_the_lists() {
        let mut a = RoomPolicy { users: vec!["@a:x".into()], ..Default::default() };
        let b = RoomPolicy { users: vec!["@a:x".into(), "@b:x".into()], kick_unlisted: true, ..Default::default() };
        a.merge(&b);
        assert_eq!(a.users, ["@a:x", "@b:x"]);
        assert!(a.kick_unlisted);
    }
}

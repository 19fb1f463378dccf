//! `ping`: answers `!ping` with `pong` and the measured delay, as a reply to the command.

use async_trait::async_trait;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use serde::Deserialize;

use super::{
    Action, ConfigProblem, Event, EventKind, Message, MessageKind, Plugin, PluginContext, PluginError, PluginType,
    invites, parse_config,
};

pub struct PingType;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingConfig {
    /// The command word; a message whose first word is this gets a pong.
    #[serde(default = "default_command")]
    pub command: String,
    /// User ID globs (`*`, `?`) whose invites the bot accepts, e.g. `@*:example.org`. Empty: join nothing.
    #[serde(default)]
    pub allow_invites_from: Vec<String>,
}

fn default_command() -> String {
    "!ping".to_owned()
}

impl PluginType for PingType {
    fn name(&self) -> &'static str {
        "ping"
    }

    fn description(&self) -> &'static str {
        "answers `!ping` with `pong` and the delay the command took to arrive"
    }

    fn check_config(&self, config: &serde_json::Value) -> Vec<ConfigProblem> {
        let parsed: PingConfig = match parse_config(config) {
            Ok(parsed) => parsed,
            Err(problem) => return vec![problem],
        };
        let mut problems = Vec::new();
        if parsed.command.is_empty() || parsed.command.chars().any(char::is_whitespace) {
            problems.push(ConfigProblem {
                key: "command".into(),
                message: format!("`{}` must be one word, like `!ping`", parsed.command),
            });
        }
        problems.extend(invites::check_globs(&parsed.allow_invites_from));
        problems
    }

    fn build(&self, config: &serde_json::Value) -> Result<Box<dyn Plugin>, ConfigProblem> {
        Ok(Box::new(Ping { config: parse_config(config)? }))
    }
}

pub struct Ping {
    config: PingConfig,
}

impl Ping {
    fn is_command(&self, body: &str) -> bool {
        body.split_whitespace().next() == Some(self.config.command.as_str())
    }
}

#[async_trait]
impl Plugin for Ping {
    /// Answers and notices only: the bot's own events stay out of its syncs.
    fn changes_rooms(&self) -> bool {
        false
    }

    fn accepts_invite_from(&self, inviter: &str) -> bool {
        invites::allowed(&self.config.allow_invites_from, inviter)
    }

    async fn on_event(&self, _context: &PluginContext, event: &Event) -> Result<Vec<Action>, PluginError> {
        let EventKind::Message(Message { kind: MessageKind::Text, body, .. }) = &event.kind else {
            return Ok(Vec::new());
        };
        if !self.is_command(body) {
            return Ok(Vec::new());
        }
        let millis = event.age.as_millis();
        Ok(vec![Action::Reply(RoomMessageEventContent::notice_plain(format!("pong (took {millis} ms)")))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_problems_name_the_key() {
        let problems = PingType.check_config(&json!({"allow_invites_from": ["alice"]}));
        assert_eq!(problems[0].key, "allow_invites_from.0");
        let problems = PingType.check_config(&json!({"comand": "!p"}));
        assert!(problems[0].message.contains("unknown field `comand`"), "{problems:?}");
        assert!(PingType.check_config(&json!({})).is_empty());
    }

    #[test]
    fn command_is_the_first_word() {
        let ping = Ping { config: parse_config(&json!({})).unwrap() };
        assert!(ping.is_command("!ping"));
        assert!(ping.is_command("  !ping now"));
        assert!(!ping.is_command("!pingpong"));
        assert!(!ping.is_command("say !ping"));
    }

    #[test]
    fn invites_follow_the_allow_list() {
        let ping = Ping { config: parse_config(&json!({"allow_invites_from": ["@*:example.org"]})).unwrap() };
        assert!(ping.accepts_invite_from("@alice:example.org"));
        assert!(!ping.accepts_invite_from("@mallory:evil.org"));
        let ping = Ping { config: parse_config(&json!({"allow_invites_from": ["@alice*:example.org"]})).unwrap() };
        assert!(ping.accepts_invite_from("@alice:example.org"));
        assert!(!ping.accepts_invite_from("@alice:evil.org"));
    }
}

//! Bot plugins: built-in Rust types behind one trait, registered by type name.
//!
//! A plugin sees messages and invites and answers with [`Action`]s; the host carries actions out. Keeping the
//! sending in the host is what makes replies exactly-once across crashes: each action is sent with a transaction
//! id derived from the event it answers, so a re-delivered event produces the same request and the homeserver
//! deduplicates it.

pub mod ping;
pub mod registry;

use std::time::Duration;

use async_trait::async_trait;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

/// A problem in a plugin's `config`, relative to it (`key` is a dotted path below `instances.<id>.config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

/// A plugin type: checks its config and builds plugin values.
pub trait PluginType: Sync {
    /// The `type` name in `instances.<id>.type`.
    fn name(&self) -> &'static str;
    /// One line for `--help` and docs.
    fn description(&self) -> &'static str;
    /// Checks an instance's `config`; empty when valid.
    fn check_config(&self, config: &serde_json::Value) -> Vec<ConfigProblem>;
    /// Builds the plugin for one instance. The config has passed `check_config`.
    fn build(&self, config: &serde_json::Value) -> Result<Box<dyn Plugin>, ConfigProblem>;
}

/// A text message addressed to the bot's rooms, as the host hands it to a plugin.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    pub body: String,
    /// How long ago the homeserver received the message.
    pub age: Duration,
    /// Whether the message arrived encrypted (replies in such rooms are encrypted by the host).
    pub encrypted: bool,
}

/// What a plugin may use besides the event: its instance id and the instance's outgoing rate limiter, which it
/// must `acquire()` before every external call (and `back_off()` when the service says "too many requests").
pub struct PluginContext {
    pub instance: String,
    pub limiter: std::sync::Arc<crate::instance::RateLimiter>,
}

/// What a plugin wants done in answer to an event.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send this content as a reply to the event (the host adds the reply relation).
    Reply(RoomMessageEventContent),
}

/// One bot's behaviour.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// Whether to join a room `inviter` invited the bot to. Default: never.
    fn accepts_invite_from(&self, _inviter: &str) -> bool {
        false
    }

    /// Handles a text message; the returned actions are carried out in order.
    async fn on_message(&self, context: &PluginContext, message: &IncomingMessage) -> Vec<Action>;
}

/// Deserializes a plugin config, reporting the path of the first problem.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &serde_json::Value) -> Result<T, ConfigProblem> {
    serde_path_to_error::deserialize(config).map_err(|e| {
        let key = e.path().to_string();
        ConfigProblem { key: if key == "." { String::new() } else { key }, message: e.into_inner().to_string() }
    })
}

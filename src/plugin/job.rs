//! Jobs: work a plugin accepted and the host keeps until it is done, off the sync loop.
//!
//! A plugin accepts a job in answer to an event ([`crate::plugin::Action::Job`]: recorded in the same
//! transaction that marks the event handled) or on its own ([`crate::plugin::Unprompted::Job`]: from its `run`
//! task, a timer, an HTTP request). Either way the job is persisted before anything else happens, run by
//! [`crate::plugin::Plugin::run_job`] beside the sync loop (a multi-minute job holds up no event), and run
//! again after a crash or restart until it finishes or has been tried [`MAX_ATTEMPTS`] times. The actions a job
//! returns are queued in the same transaction that marks it done, with transaction ids derived from its key, so
//! a job that finished is never posted twice. What a job does outside Matrix happens at least once.

use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};

/// A job is tried at most this often (a restart in the middle of an attempt counts as one); then it is given
/// up, logged at ERROR.
pub const MAX_ATTEMPTS: u32 = 5;
/// Longest job key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Largest job payload, serialized.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// A job the host keeps for a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The plugin's name for it, unique per instance: a second job with a key already accepted (waiting,
    /// running or done within the last days) is not accepted again.
    pub key: String,
    /// What the plugin needs to do it.
    pub payload: serde_json::Value,
    /// The event it was accepted for, if any: replies, reactions and edits of the job go there.
    pub origin: Option<JobOrigin>,
    /// 1 on the first try.
    pub attempt: u32,
    /// Unix seconds.
    pub accepted_at: i64,
}

/// The event a job was accepted in answer to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOrigin {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    /// The thread the event is in, so that a reply stays in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<OwnedEventId>,
}

/// A job's key or payload that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRefused {
    #[error("a job needs a non-empty `key` of at most {MAX_KEY_BYTES} bytes")]
    Key,
    #[error("a job's payload is larger than {MAX_PAYLOAD_BYTES} bytes")]
    Payload,
}

/// Checks a job's key and payload before it is accepted.
pub fn check(key: &str, payload: &serde_json::Value) -> Result<(), JobRefused> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(JobRefused::Key);
    }
    if serde_json::to_vec(payload).map_or(true, |bytes| bytes.len() > MAX_PAYLOAD_BYTES) {
        return Err(JobRefused::Payload);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_payloads_are_bounded() {
        assert_eq!(check("", &serde_json::json!({})), Err(JobRefused::Key));
        assert_eq!(check(&"k".repeat(129), &serde_json::json!({})), Err(JobRefused::Key));
        let big = serde_json::json!({"x": "y".repeat(MAX_PAYLOAD_BYTES)});
        assert_eq!(check("k", &big), Err(JobRefused::Payload));
        assert_eq!(check("k", &serde_json::json!({"url": "https://x"})), Ok(()));
    }
}

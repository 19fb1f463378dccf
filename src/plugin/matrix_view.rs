//! The narrow view of the Matrix client a plugin gets: the rooms the bot is joined to, a room's members with
//! their latest membership event and who sent it, state lookups, the room version, alias lookups, and the room
//! operations that check before they act (`room_ops.rs`). Every call to the homeserver waits for the
//! instance's rate limiter first, and a "too many requests" answer stops the instance's calls for as long as
//! the homeserver (or `rate_limit.backoff_seconds`) says.
//!
//! Sends are not here: they are [`super::Action`]s, carried out by the host exactly once.

use std::sync::Arc;

use matrix_sdk::Client;
use matrix_sdk::ruma::{OwnedRoomAliasId, OwnedRoomId, RoomId, UserId};
use serde_json::Value;

use super::RateLimiter;
use crate::plugin::room_ops::{self, Member, MemberChange, Outcome, RoomCreation, RoomOpError, RoomSpec};

#[derive(Clone)]
pub struct MatrixView {
    client: Client,
    limiter: Arc<RateLimiter>,
}

impl MatrixView {
    pub fn new(client: Client, limiter: Arc<RateLimiter>) -> Self {
        MatrixView { client, limiter }
    }

    /// The rooms the bot is joined to, as of its last sync (no call).
    pub fn joined_rooms(&self) -> Vec<OwnedRoomId> {
        self.client.joined_rooms().iter().map(|r| r.room_id().to_owned()).collect()
    }

    /// Runs one call to the homeserver behind the limiter.
    async fn guarded<T>(&self, call: impl Future<Output = Result<T, RoomOpError>>) -> Result<T, RoomOpError> {
        self.limiter.acquire().await;
        let result = call.await;
        if let Err(RoomOpError::Matrix(e)) = &result
            && let Some(wait) = crate::matrix_errors::retry_after(e)
        {
            self.limiter.back_off(Some(wait)).await;
        }
        result
    }

    pub async fn members(&self, room: &RoomId) -> Result<Vec<Member>, RoomOpError> {
        self.guarded(room_ops::members(&self.client, room)).await
    }

    /// A state event's content as the homeserver has it now (`None`: there is none).
    pub async fn state(&self, room: &RoomId, event_type: &str, state_key: &str) -> Result<Option<Value>, RoomOpError> {
        self.guarded(room_ops::state(&self.client, room, event_type, state_key)).await
    }

    /// The room's version and its creators.
    pub async fn room_creation(&self, room: &RoomId) -> Result<RoomCreation, RoomOpError> {
        self.guarded(room_ops::creation(&self.client, room)).await
    }

    pub async fn resolve_alias(&self, alias: &OwnedRoomAliasId) -> Result<Option<OwnedRoomId>, RoomOpError> {
        self.guarded(room_ops::resolve_alias(&self.client, alias)).await
    }

    /// The room `spec` describes, created if its alias does not exist yet.
    pub async fn ensure_room(&self, spec: &RoomSpec) -> Result<(OwnedRoomId, Outcome), RoomOpError> {
        self.guarded(room_ops::ensure_room(&self.client, spec)).await
    }

    pub async fn ensure_membership(
        &self,
        room: &RoomId,
        user: &UserId,
        change: MemberChange,
        reason: Option<&str>,
    ) -> Result<Outcome, RoomOpError> {
        self.guarded(room_ops::ensure_membership(&self.client, room, user, change, reason)).await
    }

    pub async fn ensure_state(
        &self,
        room: &RoomId,
        event_type: &str,
        state_key: &str,
        content: &Value,
    ) -> Result<Outcome, RoomOpError> {
        self.guarded(room_ops::ensure_state(&self.client, room, event_type, state_key, content)).await
    }

    pub async fn ensure_power_level(&self, room: &RoomId, user: &UserId, level: i64) -> Result<Outcome, RoomOpError> {
        self.guarded(room_ops::ensure_power_level(&self.client, room, user, level)).await
    }
}

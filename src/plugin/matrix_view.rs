//! The narrow view of the Matrix client a plugin gets: the rooms the bot is joined to, a room's members with
//! their latest membership event and who sent it, state lookups, the room version, alias lookups, and the room
//! operations that check before they act (`room_ops.rs`). Every call to the homeserver waits for the
//! instance's rate limiter first, and a "too many requests" answer stops the instance's calls for as long as
//! the homeserver (or `rate_limit.backoff_seconds`) says.
//!
//! Plugins whose whole job is the homeserver (`space`, `guard`: a bootstrap of a dozen rooms, a reconcile of
//! thousands of members) take [`MatrixView::paced_by_homeserver`] instead: no bucket of their own, but each
//! `M_LIMIT_EXCEEDED` waited out (as long as the homeserver says) and the call made again.
//!
//! Sends are not here: they are [`super::Action`]s, carried out by the host exactly once.

use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::ruma::{OwnedRoomAliasId, OwnedRoomId, RoomId, UserId};
use serde_json::Value;

use super::RateLimiter;
use crate::plugin::room_ops::{self, Member, MemberChange, Outcome, RoomCreation, RoomOpError, RoomSpec};

/// How often one call is made again after the homeserver said "too many requests", when paced by it.
const RATE_LIMITED_ATTEMPTS: u32 = 20;
/// The longest single wait for the homeserver's rate limit (a longer `retry_after_ms` is cut to this).
const LONGEST_RATE_LIMIT_WAIT: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct MatrixView {
    client: Client,
    /// `None`: paced by the homeserver's own rate limits only.
    limiter: Option<Arc<RateLimiter>>,
    /// For the homeserver's own admin API, which matrix-sdk has no requests for (the client's shared one).
    http: reqwest::Client,
}

impl MatrixView {
    pub fn new(client: Client, limiter: Arc<RateLimiter>, http: reqwest::Client) -> Self {
        MatrixView { client, limiter: Some(limiter), http }
    }

    /// The same view without the instance's rate limiter: each call that the homeserver rate-limits waits as
    /// long as it says and is made again (up to 20 times).
    pub fn paced_by_homeserver(&self) -> MatrixView {
        MatrixView { client: self.client.clone(), limiter: None, http: self.http.clone() }
    }

    /// The bot's own user id.
    pub fn user_id(&self) -> Option<matrix_sdk::ruma::OwnedUserId> {
        self.client.user_id().map(ToOwned::to_owned)
    }

    /// The rooms the bot is joined to, as of its last sync (no call).
    pub fn joined_rooms(&self) -> Vec<OwnedRoomId> {
        self.client.joined_rooms().iter().map(|r| r.room_id().to_owned()).collect()
    }

    /// Runs one call to the homeserver behind the limiter, or, paced by the homeserver, again after each
    /// "too many requests" it answers.
    async fn guarded<T, F>(&self, call: impl Fn() -> F) -> Result<T, RoomOpError>
    where
        F: Future<Output = Result<T, RoomOpError>>,
    {
        let Some(limiter) = &self.limiter else {
            let mut attempt = 1;
            loop {
                match call().await {
                    Err(RoomOpError::Matrix(e)) if attempt < RATE_LIMITED_ATTEMPTS => {
                        let Some(wait) = crate::matrix_errors::retry_after(&e) else {
                            return Err(RoomOpError::Matrix(e));
                        };
                        self.wait_out(wait).await;
                        attempt += 1;
                    }
                    result => return result,
                }
            }
        };
        limiter.acquire().await;
        let result = call().await;
        if let Err(RoomOpError::Matrix(e)) = &result
            && let Some(wait) = crate::matrix_errors::retry_after(e)
        {
            self.wait_out(wait).await;
        }
        result
    }

    /// Waits out the homeserver's "too many requests": through the bot's limiter where it has one (which then
    /// paces its other calls too), else here, at most [`LONGEST_RATE_LIMIT_WAIT`].
    async fn wait_out(&self, wait: Duration) {
        match &self.limiter {
            Some(limiter) => limiter.back_off(Some(wait)).await,
            None => {
                tracing::info!(wait_ms = wait.as_millis() as u64, "the homeserver rate-limits the bot; waiting");
                tokio::time::sleep(wait.min(LONGEST_RATE_LIMIT_WAIT)).await;
            }
        }
    }

    pub async fn members(&self, room: &RoomId) -> Result<Vec<Member>, RoomOpError> {
        self.guarded(|| room_ops::members(&self.client, room)).await
    }

    /// A state event's content as the homeserver has it now (`None`: there is none).
    pub async fn state(&self, room: &RoomId, event_type: &str, state_key: &str) -> Result<Option<Value>, RoomOpError> {
        self.guarded(|| room_ops::state(&self.client, room, event_type, state_key)).await
    }

    /// The room's version and its creators.
    pub async fn room_creation(&self, room: &RoomId) -> Result<RoomCreation, RoomOpError> {
        self.guarded(|| room_ops::creation(&self.client, room)).await
    }

    /// The room version the homeserver gives new rooms.
    pub async fn default_room_version(&self) -> Result<String, RoomOpError> {
        self.guarded(|| room_ops::default_room_version(&self.client)).await
    }

    pub async fn resolve_alias(&self, alias: &OwnedRoomAliasId) -> Result<Option<OwnedRoomId>, RoomOpError> {
        self.guarded(|| room_ops::resolve_alias(&self.client, alias)).await
    }

    /// The room `spec` describes, created if its alias does not exist yet.
    pub async fn ensure_room(&self, spec: &RoomSpec) -> Result<(OwnedRoomId, Outcome), RoomOpError> {
        self.guarded(|| room_ops::ensure_room(&self.client, spec)).await
    }

    pub async fn ensure_membership(
        &self,
        room: &RoomId,
        user: &UserId,
        change: MemberChange,
        reason: Option<&str>,
    ) -> Result<Outcome, RoomOpError> {
        self.guarded(|| room_ops::ensure_membership(&self.client, room, user, change, reason)).await
    }

    /// Makes a membership change without reading the membership first (the caller read it with `members`).
    pub async fn change_membership(
        &self,
        room: &RoomId,
        user: &UserId,
        change: MemberChange,
        reason: Option<&str>,
    ) -> Result<(), RoomOpError> {
        self.guarded(|| room_ops::change_membership(&self.client, room, user, change, reason)).await
    }

    pub async fn ensure_state(
        &self,
        room: &RoomId,
        event_type: &str,
        state_key: &str,
        content: &Value,
    ) -> Result<Outcome, RoomOpError> {
        self.guarded(|| room_ops::ensure_state(&self.client, room, event_type, state_key, content)).await
    }

    pub async fn ensure_power_level(&self, room: &RoomId, user: &UserId, level: i64) -> Result<Outcome, RoomOpError> {
        self.guarded(|| room_ops::ensure_power_level(&self.client, room, user, level)).await
    }

    /// Whether `room` is encrypted (asked of the homeserver when the client does not know yet); a room the bot
    /// is not in is `Invalid`.
    pub async fn is_encrypted(&self, room: &RoomId) -> Result<bool, RoomOpError> {
        let room =
            self.client.get_room(room).ok_or_else(|| RoomOpError::Invalid(format!("the bot is not in {room}")))?;
        Ok(self.guarded(|| async { Ok(room.latest_encryption_state().await?) }).await?.is_encrypted())
    }

    /// The homeserver's upload limit in bytes (`m.upload.size`; asked once, then remembered by the client).
    pub async fn max_upload_size(&self) -> Result<u64, RoomOpError> {
        Ok(self.guarded(|| async { Ok(self.client.load_or_fetch_max_upload_size().await?) }).await?.into())
    }

    /// Uploads `data` to the media repository, encrypted (the homeserver sees only ciphertext; the key goes into
    /// the message) or not, and says where it is. Not deduplicated: an upload made again is a second copy.
    pub async fn upload(
        &self,
        data: Vec<u8>,
        mimetype: &mime::Mime,
        encrypted: bool,
    ) -> Result<matrix_sdk::ruma::events::room::MediaSource, RoomOpError> {
        use matrix_sdk::ruma::events::room::MediaSource;
        if encrypted {
            self.guarded(|| async {
                let mut reader = std::io::Cursor::new(data.as_slice());
                let file = self.client.upload_encrypted_file(&mut reader).await?;
                Ok(MediaSource::Encrypted(Box::new(file)))
            })
            .await
        } else {
            // matrix-sdk takes the bytes by value: each try gets a copy (a rate-limited upload is tried again).
            self.guarded(|| async {
                let response = self.client.media().upload(mimetype, data.clone(), None).await?;
                Ok(MediaSource::Plain(response.content_uri))
            })
            .await
        }
    }

    /// A request to the homeserver's own admin API (Synapse's `/_synapse/admin/...`: force-join, deactivate)
    /// with the bot's access token: the status and the JSON body (`null` when it is not JSON). A "too many
    /// requests" is waited out as for every call. `Err`: the homeserver could not be reached.
    pub async fn admin_api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let token = self.client.access_token().ok_or("the bot is not logged in")?;
        let url =
            format!("{}/{}", self.client.homeserver().as_str().trim_end_matches('/'), path.trim_start_matches('/'));
        let mut attempt = 1;
        loop {
            if let Some(limiter) = &self.limiter {
                limiter.acquire().await;
            }
            let mut request = self.http.request(method.clone(), &url).bearer_auth(&token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| format!("{path}: {e}"))?;
            let status = response.status().as_u16();
            let value: Value = response.json().await.unwrap_or(Value::Null);
            if status == 429 && attempt < RATE_LIMITED_ATTEMPTS {
                self.wait_out(Duration::from_millis(value["retry_after_ms"].as_u64().unwrap_or(1000))).await;
                attempt += 1;
                continue;
            }
            return Ok((status, value));
        }
    }

    /// Sends a text message to `room` with the transaction id `txn_id`: a command to the conduwuit family's
    /// admin room, which is how those servers are administered. Sending the same `txn_id` again is harmless
    /// (the homeserver deduplicates it). Bot replies are not sent this way but as [`super::Action`]s.
    pub async fn send_admin_command(&self, room_id: &RoomId, command: &str, txn_id: &str) -> Result<(), RoomOpError> {
        let room = match self.client.get_room(room_id) {
            Some(room) => room,
            // Joined on the homeserver, not stored yet by the first sync: joining again is harmless and gives
            // the client the room.
            None => {
                self.guarded(|| async { self.client.join_room_by_id(room_id).await.map_err(RoomOpError::from) }).await?
            }
        };
        let content = matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(command);
        let txn_id = matrix_sdk::ruma::OwnedTransactionId::from(txn_id);
        self.guarded(|| {
            let (room, content, txn_id) = (room.clone(), content.clone(), txn_id.clone());
            async move { room.send(content).with_transaction_id(txn_id).await.map(|_| ()).map_err(RoomOpError::from) }
        })
        .await
    }
}

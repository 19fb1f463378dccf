//! The task that posts alerts to the admin room, as one of the host's bots.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use matrix_sdk::Client;
use matrix_sdk::ruma::OwnedRoomId;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use tokio::sync::{mpsc, watch};

use super::Digest;
use super::backlog::{Backlog, MAX_WAIT, MAX_WAITING};
use crate::config::{NotificationLevel, model::NotificationsConfig};
use crate::telemetry::scrub::scrubbed;
use crate::telemetry::{Alert, Severity};

/// Queue length between the log layer and this task; alerts beyond it are dropped (they stay in the journal).
pub const QUEUE: usize = 256;

pub struct AlertSender {
    pub config: NotificationsConfig,
    /// Each instance's `error_notification_level`.
    pub instance_levels: HashMap<String, NotificationLevel>,
    /// The supervisor's registry of running clients (`host::supervisor::Clients`), by instance id.
    pub clients: Arc<RwLock<HashMap<String, Client>>>,
}

fn passes(level: NotificationLevel, severity: Severity) -> bool {
    match severity {
        Severity::Critical => true,
        Severity::Error => level <= NotificationLevel::Error,
    }
}

impl AlertSender {
    fn wanted(&self, alert: &Alert) -> bool {
        let instance_level = alert
            .instance
            .as_ref()
            .and_then(|id| self.instance_levels.get(id))
            .copied()
            .unwrap_or(NotificationLevel::Error);
        passes(self.config.level, alert.severity) && passes(instance_level, alert.severity)
    }

    pub async fn run(self, mut alerts: mpsc::Receiver<Alert>, mut stop: watch::Receiver<bool>) {
        let mut digest = Digest::new(Duration::from_secs(self.config.dedupe_window_secs), self.config.max_per_minute);
        let mut backlog = Backlog::default();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = crate::stopping(&mut stop) => break,
                alert = alerts.recv() => {
                    let Some(alert) = alert else { break };
                    if self.wanted(&alert) && let Some(out) = digest.offer(&alert, Instant::now()) {
                        self.queue(&mut backlog, out.body);
                    }
                }
                _ = tick.tick() => {
                    for out in digest.flush(Instant::now()) {
                        self.queue(&mut backlog, out.body);
                    }
                }
            }
            self.deliver(&mut backlog).await;
        }
    }

    fn queue(&self, backlog: &mut Backlog, body: String) {
        if backlog.push(body, Instant::now()) {
            tracing::warn!(
                sender = %self.config.instance,
                "admin-room notification dropped: {MAX_WAITING} are already waiting for the sending bot to run"
            );
        }
    }

    /// Posts what waits, in order, as long as the sending bot runs; what it cannot take yet stays queued.
    async fn deliver(&self, backlog: &mut Backlog) {
        let expired = backlog.expire(Instant::now());
        if expired > 0 {
            tracing::warn!(
                sender = %self.config.instance,
                count = expired,
                "admin-room notifications dropped: the sending bot did not run within {} s (they are in the journal)",
                MAX_WAIT.as_secs()
            );
        }
        while let Some(body) = backlog.front().map(str::to_owned) {
            match self.post(&body).await {
                Posted::SenderNotRunning => break,
                Posted::Sent | Posted::Failed => backlog.pop_front(),
            }
        }
    }

    /// Sends one notice, scrubbed with the scrubber `run` installed. Failures are logged at WARN: an ERROR here
    /// would become another alert.
    async fn post(&self, body: &str) -> Posted {
        let text = scrubbed(body);
        let client = self.clients.read().unwrap_or_else(|p| p.into_inner()).get(&self.config.instance).cloned();
        let Some(client) = client else { return Posted::SenderNotRunning };
        let Ok(room_id) = OwnedRoomId::try_from(self.config.room.as_str()) else { return Posted::Failed };
        let room = match client.get_room(&room_id) {
            Some(room) if room.state() == matrix_sdk::RoomState::Joined => room,
            _ => match client.join_room_by_id(&room_id).await {
                Ok(room) => room,
                Err(e) => {
                    tracing::warn!(room_id = %room_id, error = %e, "admin-room notification not sent: cannot join the admin room");
                    return Posted::Failed;
                }
            },
        };
        match room.send(RoomMessageEventContent::notice_plain(text)).await {
            Ok(_) => Posted::Sent,
            Err(e) => {
                tracing::warn!(room_id = %room_id, error = %e, "admin-room notification not sent");
                Posted::Failed
            }
        }
    }
}

enum Posted {
    Sent,
    /// The sending bot's client is not in the registry (not started yet, restarting, stopped): try again later.
    SenderNotRunning,
    /// Given up on (logged at WARN).
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_filter_severities() {
        assert!(passes(NotificationLevel::Error, Severity::Error));
        assert!(passes(NotificationLevel::Error, Severity::Critical));
        assert!(!passes(NotificationLevel::Critical, Severity::Error));
        assert!(passes(NotificationLevel::Critical, Severity::Critical));
        assert!(passes(NotificationLevel::Warn, Severity::Error));
    }
}

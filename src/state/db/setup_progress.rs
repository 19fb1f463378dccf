//! How far `setup` got with an instance that is not set up yet, so that an interrupted or failed setup resumes
//! with the same password, device and E2EE identity instead of stranding the bot's account. The row is written
//! before each step that creates something on the homeserver, and replaced by the instance's record (in one
//! transaction) when the instance is done.

use rusqlite::{OptionalExtension, params};

use super::{Database, InstanceRecord, instances};
use crate::state::StateError;

#[derive(Clone, PartialEq, Eq)]
pub struct SetupProgress {
    pub id: String,
    pub user_id: String,
    /// The device id chosen before the first login, so that a repeated login reuses the same device.
    pub device_id: String,
    pub homeserver_url: String,
    /// A password setup generated, stored before registering with it.
    pub generated_password: Option<String>,
    /// Set once logged in (or once an access token was adopted).
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    /// The session came from a configured access token (setup did not create the device).
    pub adopted: bool,
    /// Set once recovery is enabled; shown to the operator before the instance is committed.
    pub recovery_key: Option<String>,
    pub started_at: i64,
}

impl std::fmt::Debug for SetupProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetupProgress")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("logged_in", &self.access_token.is_some())
            .field("recovery_enabled", &self.recovery_key.is_some())
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, user_id, device_id, homeserver_url, generated_password, access_token, refresh_token, \
                       adopted, recovery_key, started_at";

fn progress_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<SetupProgress> {
    Ok(SetupProgress {
        id: row.get(0)?,
        user_id: row.get(1)?,
        device_id: row.get(2)?,
        homeserver_url: row.get(3)?,
        generated_password: row.get(4)?,
        access_token: row.get(5)?,
        refresh_token: row.get(6)?,
        adopted: row.get(7)?,
        recovery_key: row.get(8)?,
        started_at: row.get(9)?,
    })
}

impl Database {
    pub async fn setup_progress(&self, id: &str) -> Result<Option<SetupProgress>, StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.query_row(&format!("SELECT {COLUMNS} FROM setup_progress WHERE id = ?1"), params![id], progress_of)
                .optional()
        })
        .await
    }

    /// Every unfinished setup.
    pub async fn unfinished_setups(&self) -> Result<Vec<SetupProgress>, StateError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM setup_progress ORDER BY id"))?;
            stmt.query_map([], progress_of)?.collect()
        })
        .await
    }

    /// Writes (or replaces) the progress of one instance's setup.
    pub async fn save_setup_progress(&self, progress: &SetupProgress) -> Result<(), StateError> {
        let p = progress.clone();
        self.call(move |conn| {
            conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO setup_progress ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ),
                params![
                    p.id,
                    p.user_id,
                    p.device_id,
                    p.homeserver_url,
                    p.generated_password,
                    p.access_token,
                    p.refresh_token,
                    p.adopted,
                    p.recovery_key,
                    p.started_at
                ],
            )
            .map(drop)
        })
        .await
    }

    /// Forgets an unfinished setup (it left nothing on the homeserver that a new attempt would need).
    pub async fn discard_setup_progress(&self, id: &str) -> Result<(), StateError> {
        let id = id.to_owned();
        self.call(move |conn| conn.execute("DELETE FROM setup_progress WHERE id = ?1", params![id]).map(drop)).await
    }

    /// The commit point of one instance's setup: its record replaces its progress, in one transaction.
    pub async fn commit_setup(&self, record: &InstanceRecord, sync_token: Option<&str>) -> Result<(), StateError> {
        let (record, sync_token) = (record.clone(), sync_token.map(str::to_owned));
        self.call(move |conn| {
            let tx = conn.transaction()?;
            instances::insert(&tx, &record, sync_token.as_deref())?;
            tx.execute("DELETE FROM setup_progress WHERE id = ?1", params![record.id])?;
            tx.commit()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::db::instances::tests::record;

    #[tokio::test]
    async fn progress_is_replaced_by_the_record_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(&dir.path().join("maubot.db")).unwrap();
        let mut progress = SetupProgress {
            id: "a".into(),
            user_id: "@a:example.org".into(),
            device_id: "MAUBOTXYZ".into(),
            homeserver_url: "http://127.0.0.1:8008".into(),
            generated_password: Some("pw".into()),
            access_token: None,
            refresh_token: None,
            adopted: false,
            recovery_key: None,
            started_at: 5,
        };
        db.save_setup_progress(&progress).await.unwrap();
        progress.access_token = Some("syt_x".into());
        db.save_setup_progress(&progress).await.unwrap();
        assert_eq!(db.setup_progress("a").await.unwrap(), Some(progress.clone()));
        assert!(!format!("{progress:?}").contains("syt_x"));
        db.commit_setup(&record("a"), Some("s0")).await.unwrap();
        assert_eq!(db.setup_progress("a").await.unwrap(), None);
        assert!(db.unfinished_setups().await.unwrap().is_empty());
        assert_eq!(db.instance("a").await.unwrap(), Some(record("a")));
        // A second commit of the same instance fails and changes nothing.
        assert!(db.commit_setup(&record("a"), None).await.is_err());
    }
}

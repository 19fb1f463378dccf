//! Bot sessions as `setup` recorded them, their sync positions, and the run-time overrides of the management API.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Database, now_unix};
use crate::state::StateError;

/// A bot instance's login, as `setup` recorded it.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: String,
    pub user_id: String,
    pub device_id: String,
    pub homeserver_url: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub ed25519_key: Option<String>,
    pub created_at: i64,
    /// The password setup generated when it registered the bot (none when the operator gave one).
    pub generated_password: Option<String>,
}

impl std::fmt::Debug for InstanceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceRecord")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("homeserver_url", &self.homeserver_url)
            .field("access_token", &crate::config::secret::REDACTED)
            .finish_non_exhaustive()
    }
}

/// What the management API changed about an instance at run time. `enabled` overrides the config only while
/// the config still says what it said when the override was made (`config_enabled`): a changed config wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Override {
    pub enabled: Option<bool>,
    pub config_enabled: Option<bool>,
    pub stopped: bool,
}

const COLUMNS: &str =
    "id, user_id, device_id, homeserver_url, access_token, refresh_token, ed25519_key, created_at, generated_password";

fn record_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceRecord> {
    Ok(InstanceRecord {
        id: row.get(0)?,
        user_id: row.get(1)?,
        device_id: row.get(2)?,
        homeserver_url: row.get(3)?,
        access_token: row.get(4)?,
        refresh_token: row.get(5)?,
        ed25519_key: row.get(6)?,
        created_at: row.get(7)?,
        generated_password: row.get(8)?,
    })
}

/// Inserts a record (inside the caller's transaction).
pub(super) fn insert(conn: &Connection, record: &InstanceRecord, sync_token: Option<&str>) -> rusqlite::Result<()> {
    conn.execute(
        &format!("INSERT INTO instances ({COLUMNS}, sync_token) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
            record.id,
            record.user_id,
            record.device_id,
            record.homeserver_url,
            record.access_token,
            record.refresh_token,
            record.ed25519_key,
            record.created_at,
            record.generated_password,
            sync_token
        ],
    )
    .map(drop)
}

impl Database {
    /// Records a new instance and the sync position its stores were set up at.
    pub async fn insert_instance(&self, record: &InstanceRecord, sync_token: Option<&str>) -> Result<(), StateError> {
        let (record, sync_token) = (record.clone(), sync_token.map(str::to_owned));
        self.call(move |conn| insert(conn, &record, sync_token.as_deref())).await
    }

    /// Points instance `record.id` at another device of the same user (`setup --recover`): device, tokens and
    /// device key change; the sync position, the overrides and everything handled stay.
    pub async fn replace_session(&self, record: &InstanceRecord) -> Result<(), StateError> {
        let record = record.clone();
        self.call(move |conn| {
            let changed = conn.execute(
                "UPDATE instances SET device_id = ?2, homeserver_url = ?3, access_token = ?4, refresh_token = ?5, \
                 ed25519_key = ?6 WHERE id = ?1 AND user_id = ?7",
                params![
                    record.id,
                    record.device_id,
                    record.homeserver_url,
                    record.access_token,
                    record.refresh_token,
                    record.ed25519_key,
                    record.user_id
                ],
            )?;
            if changed == 1 { Ok(()) } else { Err(rusqlite::Error::QueryReturnedNoRows) }
        })
        .await
    }

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM instances WHERE id = ?1"))?
                .query_row(params![id], record_of)
                .optional()
        })
        .await
    }

    /// Every recorded instance, by id.
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>, StateError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM instances ORDER BY id"))?;
            stmt.query_map([], record_of)?.collect()
        })
        .await
    }

    pub async fn sync_token(&self, id: &str) -> Result<Option<String>, StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.prepare_cached("SELECT sync_token FROM instances WHERE id = ?1")?
                .query_row(params![id], |row| row.get(0))
                .optional()
                .map(Option::flatten)
        })
        .await
    }

    /// Stores the position the next sync starts from. Called only after every event before it was handled.
    pub async fn save_sync_token(&self, id: &str, token: &str) -> Result<(), StateError> {
        let (id, token) = (id.to_owned(), token.to_owned());
        self.call(move |conn| {
            conn.prepare_cached("UPDATE instances SET sync_token = ?2 WHERE id = ?1")?
                .execute(params![id, token])
                .map(drop)
        })
        .await
    }

    /// Runtime overrides by instance id.
    pub async fn overrides(&self) -> Result<HashMap<String, Override>, StateError> {
        self.call(|conn| {
            let mut stmt = conn.prepare("SELECT id, enabled, config_enabled, stopped FROM instance_overrides")?;
            stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Override { enabled: row.get(1)?, config_enabled: row.get(2)?, stopped: row.get(3)? },
                ))
            })?
            .collect()
        })
        .await
    }

    /// Records a runtime enable/disable made while the config said `config_enabled`.
    pub async fn set_enabled_override(&self, id: &str, enabled: bool, config_enabled: bool) -> Result<(), StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO instance_overrides (id, enabled, config_enabled, stopped, updated_at)
                 VALUES (?1, ?2, ?3, 0, ?4)
                 ON CONFLICT (id) DO UPDATE SET enabled = excluded.enabled, config_enabled = excluded.config_enabled,
                                                updated_at = excluded.updated_at",
                params![id, enabled, config_enabled, now_unix()],
            )
            .map(drop)
        })
        .await
    }

    /// Forgets a runtime enable/disable (the config changed, so it is authoritative again).
    pub async fn clear_enabled_override(&self, id: &str) -> Result<(), StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.execute(
                "UPDATE instance_overrides SET enabled = NULL, config_enabled = NULL, updated_at = ?2 WHERE id = ?1",
                params![id, now_unix()],
            )
            .map(drop)
        })
        .await
    }

    /// Records a runtime stop (kept across restarts until started again).
    pub async fn set_stopped(&self, id: &str, stopped: bool) -> Result<(), StateError> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO instance_overrides (id, enabled, config_enabled, stopped, updated_at)
                 VALUES (?1, NULL, NULL, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET stopped = excluded.stopped, updated_at = excluded.updated_at",
                params![id, stopped, now_unix()],
            )
            .map(drop)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn record(id: &str) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            user_id: format!("@{id}:example.org"),
            device_id: "DEVICE".into(),
            homeserver_url: "http://127.0.0.1:8008".into(),
            access_token: "syt_secret".into(),
            refresh_token: None,
            ed25519_key: None,
            created_at: 1,
            generated_password: Some("generated".into()),
        }
    }

    #[tokio::test]
    async fn records_and_positions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maubot.db");
        let db = Database::create(&path).unwrap();
        db.insert_instance(&record("a"), Some("s0")).await.unwrap();
        assert_eq!(db.sync_token("a").await.unwrap().as_deref(), Some("s0"));
        db.save_sync_token("a", "s1").await.unwrap();
        drop(db);
        let db = Database::open(&path).unwrap();
        assert_eq!(db.instance("a").await.unwrap(), Some(record("a")));
        assert_eq!(db.instances().await.unwrap(), vec![record("a")]);
        assert_eq!(db.sync_token("a").await.unwrap().as_deref(), Some("s1"));
        assert_eq!(db.instance("b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn overrides_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(&dir.path().join("maubot.db")).unwrap();
        db.set_enabled_override("a", false, true).await.unwrap();
        db.set_stopped("a", true).await.unwrap();
        db.set_stopped("b", true).await.unwrap();
        let overrides = db.overrides().await.unwrap();
        assert_eq!(overrides["a"], Override { enabled: Some(false), config_enabled: Some(true), stopped: true });
        db.clear_enabled_override("a").await.unwrap();
        db.set_stopped("b", false).await.unwrap();
        let overrides = db.overrides().await.unwrap();
        assert_eq!(overrides["a"], Override { enabled: None, config_enabled: None, stopped: true });
        assert!(!overrides["b"].stopped);
    }

    #[test]
    fn debug_hides_the_access_token() {
        assert!(!format!("{:?}", record("a")).contains("syt_secret"));
    }
}

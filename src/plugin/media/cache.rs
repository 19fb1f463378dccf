//! What the `media` plugin keeps in its database: for each link (canonical) it posted, the message it posted,
//! once for plain rooms and once for encrypted ones (an encrypted room gets an encrypted upload), so that the
//! same link posted again is answered with the same upload instead of a new fetch.

use rusqlite::{OptionalExtension, params};

use crate::plugin::storage::{PluginDatabase, StorageError};

pub const MIGRATIONS: &[&str] = &["CREATE TABLE uploads (
         url TEXT NOT NULL,
         encrypted INTEGER NOT NULL,
         content TEXT NOT NULL,
         posted_at INTEGER NOT NULL,
         PRIMARY KEY (url, encrypted)
     );"];

/// The message content posted for `url` (in a room encrypted or not), if any.
pub async fn find(db: &PluginDatabase, url: &str, encrypted: bool) -> Result<Option<serde_json::Value>, StorageError> {
    let url = url.to_owned();
    let content: Option<String> = db
        .call(move |conn| {
            conn.query_row(
                "SELECT content FROM uploads WHERE url = ?1 AND encrypted = ?2",
                params![url, encrypted],
                |r| r.get(0),
            )
            .optional()
        })
        .await?;
    Ok(content.and_then(|c| serde_json::from_str(&c).ok()))
}

/// Remembers the content posted for `url`.
pub async fn keep(
    db: &PluginDatabase,
    url: &str,
    encrypted: bool,
    content: &serde_json::Value,
) -> Result<(), StorageError> {
    let (url, content) = (url.to_owned(), content.to_string());
    db.call(move |conn| {
        conn.execute(
            "INSERT OR REPLACE INTO uploads (url, encrypted, content, posted_at) VALUES (?1, ?2, ?3, ?4)",
            params![url, encrypted, content, crate::plugin::unix_seconds()],
        )
        .map(|_| ())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_link_is_kept_apart_for_plain_and_encrypted_rooms() {
        let dir = tempfile::tempdir().unwrap();
        let db = PluginDatabase::open(&dir.path().join("plugin.db"), MIGRATIONS).unwrap();
        let url = "https://www.instagram.com/reel/x/";
        assert_eq!(find(&db, url, false).await.unwrap(), None);
        keep(&db, url, false, &serde_json::json!({"url": "mxc://a/b"})).await.unwrap();
        assert_eq!(find(&db, url, false).await.unwrap(), Some(serde_json::json!({"url": "mxc://a/b"})));
        assert_eq!(find(&db, url, true).await.unwrap(), None);
    }
}

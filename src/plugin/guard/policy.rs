//! The policy a pass works from: the config's rooms and the policy file's, merged, with the lists of the
//! `space` instances they name looked up in the host's directory.
//!
//! The policy file (`{"rooms": {"<room>": {...}}}`, the config's shape) is read again when its size or
//! modification time changes. A file that cannot be read or is not valid keeps the policy it had (logged at
//! ERROR, naming the file and the key): a typo in it never removes anyone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use super::config::RoomPolicy;
use super::plan::{Wanted, space_users};
use crate::plugin::directory::{Directory, Published};

/// Largest policy file read (a policy of tens of thousands of users fits).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    rooms: BTreeMap<String, RoomPolicy>,
}

/// Reads and checks a policy file.
pub fn read_file(path: &Path) -> Result<BTreeMap<String, RoomPolicy>, String> {
    let file = path.display();
    let size = std::fs::metadata(path).map_err(|e| format!("the policy file {file}: {e}"))?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!("the policy file {file} is larger than {MAX_FILE_BYTES} bytes"));
    }
    let text = std::fs::read(path).map_err(|e| format!("the policy file {file}: {e}"))?;
    let mut deserializer = serde_json::Deserializer::from_slice(&text);
    let shape: FileShape = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        format!(
            "the policy file {file}: at `{}`: {} (expected {{\"rooms\": {{\"!room:server\": {{\"users\": [...]}}}}}})",
            e.path(),
            e.inner()
        )
    })?;
    let problems: Vec<String> = shape
        .rooms
        .iter()
        .flat_map(|(room, policy)| policy.problems(room, &format!("rooms.{room}")))
        .map(|p| format!("`{}`: {}", p.key, p.message))
        .collect();
    if !problems.is_empty() {
        return Err(format!("the policy file {file}: {}", problems.join("; ")));
    }
    Ok(shape.rooms)
}

/// The policy file and what was last read from it.
pub struct PolicyFile {
    pub path: PathBuf,
    /// The size and modification time at the last look (`Some(None)`: the file was missing); `None`: never looked.
    seen: Option<Option<(SystemTime, u64)>>,
    pub rooms: BTreeMap<String, RoomPolicy>,
}

impl PolicyFile {
    pub fn new(path: PathBuf) -> Self {
        PolicyFile { path, seen: None, rooms: BTreeMap::new() }
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    /// Reads the file again if it changed since the last look: `Ok(true)` when it was read and is valid
    /// (the rooms replaced), `Ok(false)` when it did not change, `Err` when it changed and is not valid (the
    /// rooms stay as they were; the same content is not reported again).
    pub fn reload_if_changed(&mut self) -> Result<bool, String> {
        let stamp = self.stamp();
        if self.seen == Some(stamp) {
            return Ok(false);
        }
        self.seen = Some(stamp);
        self.rooms = read_file(&self.path)?;
        Ok(true)
    }
}

/// The config's rooms with the file's merged in.
pub fn merged(config: &BTreeMap<String, RoomPolicy>, file: Option<&PolicyFile>) -> BTreeMap<String, RoomPolicy> {
    let mut rooms = config.clone();
    for (room, policy) in file.map(|f| &f.rooms).into_iter().flatten() {
        rooms.entry(room.clone()).or_default().merge(policy);
    }
    rooms
}

/// Who belongs in a room under `policy`, or why that cannot be known yet (a space instance that has not
/// published its users).
pub fn wanted(policy: &RoomPolicy, directory: &Directory) -> Result<Wanted, String> {
    let mut lists: Vec<(String, Published, bool)> = Vec::new();
    for (ids, admins_only) in [(&policy.spaces, false), (&policy.space_admins, true)] {
        for id in ids {
            let published = directory.watch(id).borrow().clone();
            if published.is_none() {
                return Err(format!(
                    "the space instance `{id}` has not published its users yet (is it a `space` instance of this \
                     host, and running?): the room is left alone until it has"
                ));
            }
            lists.push((id.clone(), published, admins_only));
        }
    }
    let (mut invite, remove) = space_users(
        lists.iter().filter_map(|(id, users, admins_only)| Some((id.as_str(), users.as_deref()?, *admins_only))),
    );
    for user in &policy.users {
        invite.insert(user.clone(), "listed in the policy".into());
    }
    Ok(Wanted {
        invite,
        remove,
        allow: policy.allow.clone(),
        deny: policy.deny.clone(),
        kick_unlisted: policy.kick_unlisted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_file_names_the_key_and_keeps_the_rooms_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::write(&path, r#"{"rooms": {"!r:x": {"users": ["@a:x"]}}}"#).unwrap();
        let mut file = PolicyFile::new(path.clone());
        assert_eq!(file.reload_if_changed(), Ok(true));
        assert_eq!(file.rooms["!r:x"].users, ["@a:x"]);
        assert_eq!(file.reload_if_changed(), Ok(false), "unchanged: not read again");
        std::fs::write(&path, r#"{"rooms": {"!r:x": {"users": [7]}}}"#).unwrap();
        let error = file.reload_if_changed().unwrap_err();
        assert!(error.contains("policy.json") && error.contains("rooms.!r:x.users"), "{error}");
        assert_eq!(file.rooms["!r:x"].users, ["@a:x"], "kept");
        std::fs::write(&path, r#"{"rooms": {"!r:x": {"users": ["alice"]}}, "x": 1}"#).unwrap();
        assert!(file.reload_if_changed().unwrap_err().contains("unknown field `x`"));
        std::fs::write(&path, r#"{"rooms": {"!r:x": {"users": ["not-a-user-id"]}}}"#).unwrap();
        assert!(file.reload_if_changed().unwrap_err().contains("`rooms.!r:x.users.0`"));
    }

    #[test]
    fn a_room_waits_for_its_space_instance_and_the_config_and_file_merge() {
        let directory = Directory::default();
        let policy = RoomPolicy { users: vec!["@a:x".into()], spaces: vec!["team".into()], ..Default::default() };
        assert!(wanted(&policy, &directory).unwrap_err().contains("`team` has not published"));
        directory.publish(
            "team",
            crate::plugin::directory::SpaceUsers {
                members: ["@b:x".to_owned()].into(),
                known: ["@b:x".to_owned(), "@c:x".to_owned()].into(),
                ..Default::default()
            },
        );
        let wanted = wanted(&policy, &directory).unwrap();
        assert_eq!(wanted.invite.keys().collect::<Vec<_>>(), ["@a:x", "@b:x"]);
        assert_eq!(wanted.remove.keys().collect::<Vec<_>>(), ["@c:x"]);

        let mut file = PolicyFile::new("/nonexistent".into());
        file.rooms.insert("!r:x".into(), RoomPolicy { users: vec!["@z:x".into()], ..Default::default() });
        let config = BTreeMap::from([("!r:x".to_owned(), policy)]);
        assert_eq!(merged(&config, Some(&file))["!r:x"].users, ["@a:x", "@z:x"]);
    }
}

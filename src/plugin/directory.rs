//! What one instance publishes for the others of the same host: a `space` instance publishes the users its
//! lifecycle API maintains (the active members and the admins), and a `guard` instance that names it in its
//! policy watches the list and reconciles its rooms when it changes.
//!
//! A list is `None` until its instance published it (after it read its own database at start): a reader must
//! not take "not published yet" for "nobody", or a reconciler would remove everyone.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The users a `space` instance maintains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpaceUsers {
    /// Created and not revoked.
    pub members: BTreeSet<String>,
    /// Promoted (and not demoted or revoked since).
    pub admins: BTreeSet<String>,
    /// Every user the lifecycle API was ever told about: the ones not in `members` were revoked.
    pub known: BTreeSet<String>,
}

pub type Published = Option<Arc<SpaceUsers>>;

/// The host's lists, by the publishing instance's id.
#[derive(Clone, Default)]
pub struct Directory {
    lists: Arc<Mutex<HashMap<String, watch::Sender<Published>>>>,
}

impl Directory {
    fn sender(&self, instance: &str) -> watch::Sender<Published> {
        let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        lists.entry(instance.to_owned()).or_insert_with(|| watch::Sender::new(None)).clone()
    }

    /// Publishes `instance`'s users, replacing what it published before; watchers hear of it when it differs.
    pub fn publish(&self, instance: &str, users: SpaceUsers) {
        self.sender(instance).send_if_modified(|current| {
            if current.as_deref() == Some(&users) {
                return false;
            }
            *current = Some(Arc::new(users));
            true
        });
    }

    /// `instance`'s list, now and as it changes (`None` until it publishes).
    pub fn watch(&self, instance: &str) -> watch::Receiver<Published> {
        self.sender(instance).subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_list_is_unknown_until_published_and_watchers_hear_only_changes() {
        let directory = Directory::default();
        let mut watcher = directory.watch("team");
        assert!(watcher.borrow_and_update().is_none(), "not published is not empty");
        let users = SpaceUsers { members: ["@a:x".to_owned()].into(), ..Default::default() };
        directory.publish("team", users.clone());
        assert!(watcher.has_changed().unwrap());
        assert_eq!(watcher.borrow_and_update().as_deref(), Some(&users));
        directory.publish("team", users);
        assert!(!watcher.has_changed().unwrap(), "the same list again is no change");
        assert!(directory.watch("other").borrow().is_none());
    }
}

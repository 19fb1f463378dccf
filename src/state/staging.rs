//! A staging directory inside the state directory where `setup` builds new state before moving it into place.
//! Living inside the state directory keeps it on the same file system (renames are atomic) and inside the only
//! directory a hardened unit may write to. Dropping an uncommitted staging directory deletes it.

use std::path::{Path, PathBuf};

use super::{Layout, StateError, create_private_dir, io};

const PREFIX: &str = ".setup-";

pub struct Staging {
    dir: PathBuf,
    layout: Layout,
    done: bool,
}

impl Staging {
    /// Creates `<state_dir>/.setup-<random>`, first removing what interrupted setups left behind.
    pub fn new(target: &Layout) -> Result<Self, StateError> {
        create_private_dir(target.root())?;
        remove_leftovers(target.root())?;
        let dir = target.root().join(format!("{PREFIX}{:016x}", rand::random::<u64>()));
        create_private_dir(&dir)?;
        create_private_dir(&target.rebased(&dir).instances_dir())?;
        Ok(Staging { layout: target.rebased(&dir), dir, done: false })
    }

    /// The layout inside the staging directory.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Moves a fresh state into place: the instance stores first, the database last (the commit point).
    /// The staged database must be closed.
    pub fn commit_fresh(self, target: &Layout) -> Result<(), StateError> {
        rename(&self.layout.instances_dir(), &target.instances_dir())?;
        rename(&self.layout.database(), &target.database())?;
        sync_dir(target.root())?;
        self.finish()
    }

    /// Moves one staged instance into an existing state. Its database row is written by the caller afterwards.
    pub fn commit_instance(&self, target: &Layout, id: &str) -> Result<(), StateError> {
        create_private_dir(&target.instances_dir())?;
        rename(&self.layout.instance_dir(id), &target.instance_dir(id))?;
        sync_dir(&target.instances_dir())
    }

    /// Removes the (now empty of state) staging directory.
    pub fn finish(mut self) -> Result<(), StateError> {
        self.done = true;
        std::fs::remove_dir_all(&self.dir).map_err(io(&self.dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            tracing::warn!(path = %self.dir.display(), error = %e, "could not remove the setup staging directory");
        }
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), StateError> {
    std::fs::rename(from, to).map_err(io(to))
}

fn sync_dir(path: &Path) -> Result<(), StateError> {
    std::fs::File::open(path).and_then(|dir| dir.sync_all()).map_err(io(path))
}

fn remove_leftovers(root: &Path) -> Result<(), StateError> {
    for entry in std::fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        if entry.file_name().to_string_lossy().starts_with(PREFIX) {
            tracing::info!(path = %entry.path().display(), "removing what an interrupted setup left behind");
            std::fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    Ok(())
}

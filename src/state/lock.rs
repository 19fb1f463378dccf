//! Advisory locks (flock) that keep two processes from using the same state: `run` holds the state
//! directory's lock, and whoever uses a bot's store (`run`'s instance, or `setup`) holds that instance's lock.
//! The lock file says who holds it, so that the error can name the other process. The kernel releases a lock
//! when its holder exits, however it exits.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StateError;

/// A held lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock at `path` (creating the file, mode 0600), or says who holds it. `what` names this
    /// process's purpose in the file (`run`, `setup`, `run instance ping`).
    pub fn acquire(path: &Path, what: &str) -> Result<StateLock, StateError> {
        let io = super::io(path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(&io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "a process that did not say who it is".to_owned()
                } else {
                    holder.to_owned()
                };
                return Err(StateError::Locked { path: path.to_owned(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(&io)?;
        file.rewind().map_err(&io)?;
        writeln!(file, "pid {}: maubot {what}", std::process::id()).map_err(&io)?;
        Ok(StateLock { _file: file, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maubot.lock");
        let first = StateLock::acquire(&path, "run").unwrap();
        let err = StateLock::acquire(&path, "run").unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }));
        assert!(err.to_string().contains(&format!("pid {}: maubot run", std::process::id())), "{err}");
        drop(first);
        StateLock::acquire(&path, "setup").unwrap();
    }
}

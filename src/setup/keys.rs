//! Recovery keys: shown once, on stdout, or written to a new private file, one line per bot as each bot is done.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::SetupError;

/// A recovery key, shown once.
#[derive(Clone)]
pub struct RecoveryKey {
    pub instance: String,
    pub user_id: String,
    pub device_id: String,
    pub key: String,
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryKey").field("instance", &self.instance).finish_non_exhaustive()
    }
}

/// Refuses a key file path before anything is done: an existing file, or a path that a systemd unit's private
/// /tmp would swallow (setup would report a file that is gone once it exits).
pub fn check_key_file_path(path: &Path) -> Result<(), SetupError> {
    if path.exists() {
        return Err(SetupError::RecoveryKeyFileExists { path: path.to_owned() });
    }
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
    let in_tmp = ["/tmp", "/var/tmp"].iter().any(|tmp| path.starts_with(tmp));
    if under_systemd && in_tmp {
        return Err(SetupError::RecoveryKeyFileInSandbox { path: path.to_owned() });
    }
    Ok(())
}

/// The recovery key file: created (mode 0400, never over an existing file) when the first key is written.
pub struct KeyFile {
    path: PathBuf,
    file: Option<File>,
}

impl KeyFile {
    pub fn new(path: &Path) -> Self {
        KeyFile { path: path.to_owned(), file: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether any key was written.
    pub fn written(&self) -> bool {
        self.file.is_some()
    }

    /// Appends one key and makes it durable before returning.
    pub fn write(&mut self, key: &RecoveryKey) -> Result<(), SetupError> {
        let error = |source| SetupError::RecoveryKeyFile { path: self.path.clone(), source };
        if self.file.is_none() {
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&self.path).map_err(error)?;
            file.write_all(b"# maubot E2EE recovery keys: instance, user, device, key. Keep this safe.\n")
                .map_err(error)?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        let line = format!("{} {} {} {}\n", key.instance, key.user_id, key.device_id, key.key);
        file.write_all(line.as_bytes()).and_then(|()| file.sync_all()).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key(instance: &str) -> RecoveryKey {
        RecoveryKey {
            instance: instance.into(),
            user_id: "@a:x".into(),
            device_id: "D".into(),
            key: "EsT1 abcd".into(),
        }
    }

    #[test]
    fn keys_are_appended_to_a_new_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.txt");
        check_key_file_path(&path).unwrap();
        let mut file = KeyFile::new(&path);
        assert!(!file.written() && !path.exists());
        file.write(&key("a")).unwrap();
        file.write(&key("b")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("a @a:x D EsT1 abcd\n") && text.contains("b @a:x D EsT1 abcd\n"), "{text}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
        assert!(matches!(check_key_file_path(&path), Err(SetupError::RecoveryKeyFileExists { .. })));
        assert!(!format!("{:?}", key("a")).contains("EsT1"));
    }
}

//! The manifest at the head of every archive: what it holds (the host's whole state, or one bot), which
//! versions wrote it, and each file's size and SHA-256, so that a restore checks everything before it writes.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The archive format this build writes and reads.
pub const FORMAT: u32 = 1;
/// The manifest's name inside the archive (its first entry).
pub const NAME: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The whole state directory: every bot.
    Host,
    /// One bot, to be moved into another host's state.
    Instance,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub kind: Kind,
    /// Unix seconds.
    pub created_at: i64,
    /// `maubot <version>` that wrote it.
    pub written_by: String,
    /// The host database's schema and the oldest schema reader that can use it.
    pub schema_version: u32,
    pub compat_version: u32,
    /// SHA-256 of the configuration as it was (secrets left out), to tell which config the state went with.
    pub config_digest: String,
    pub instances: Vec<InstanceEntry>,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceEntry {
    pub id: String,
    pub user_id: String,
    pub device_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the state directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// A file's size and SHA-256.
pub fn digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Whether `path` (from an archive) is a plain relative path inside the state directory: no root, no `..`,
/// nothing empty.
pub fn is_safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && !path.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_safe() {
        assert!(is_safe_path("maubot.db"));
        assert!(is_safe_path("instances/ping/store/matrix-sdk-crypto.sqlite3"));
        for bad in ["", "/etc/passwd", "../x", "instances/../../x", "a//b", "./x", "a/./b"] {
            assert!(!is_safe_path(bad), "{bad}");
        }
    }
}

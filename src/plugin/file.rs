//! A file a plugin posts to a room ([`super::Action::SendFile`]): it lies in the plugin's private directory
//! (the host refuses any other path), is uploaded (encrypted in an encrypted room) and posted as an image,
//! video, audio or file message by its MIME type. The upload may happen twice after a crash; the message is
//! posted once. With `remove`, the host deletes the file once the message is posted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// An absolute path inside the plugin's private directory.
    pub path: PathBuf,
    /// The file name the room sees (default: the path's file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its MIME type (`video/mp4`, `image/png`, ...): decides the message type.
    pub mimetype: String,
    /// Text shown with the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// Delete the file once the message is posted.
    #[serde(default)]
    pub remove: bool,
    /// Duration of a video or audio clip, in milliseconds (the spec's unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

impl FileSpec {
    /// Checks what can be checked without the file; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if !self.path.is_absolute() {
            return Err(format!("`path` {} must be absolute (inside the private directory)", self.path.display()));
        }
        if self.mimetype.parse::<mime::Mime>().is_err() {
            return Err(format!("`mimetype` {:?} is not a MIME type", self.mimetype));
        }
        Ok(())
    }

    /// The name the room sees.
    pub fn shown_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into())
        })
    }

    /// The file's real path, if it lies inside `private_dir` (after resolving links and `..`).
    pub fn resolve_inside(&self, private_dir: &Path) -> Result<PathBuf, String> {
        let dir = private_dir.canonicalize().map_err(|e| format!("the private directory: {e}"))?;
        let real = self.path.canonicalize().map_err(|e| format!("{}: {e}", self.path.display()))?;
        if !real.starts_with(&dir) {
            return Err(format!("{} is outside the plugin's private directory {}", self.path.display(), dir.display()));
        }
        Ok(real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_must_lie_in_the_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("data");
        std::fs::create_dir(&private).unwrap();
        std::fs::write(private.join("clip.mp4"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        let spec = |path: PathBuf| FileSpec {
            path,
            name: None,
            mimetype: "video/mp4".into(),
            caption: None,
            remove: false,
            duration_ms: None,
            width: None,
            height: None,
        };
        assert!(spec(private.join("clip.mp4")).resolve_inside(&private).is_ok());
        assert_eq!(spec(private.join("clip.mp4")).shown_name(), "clip.mp4");
        let escape = spec(private.join("../secret"));
        assert!(escape.resolve_inside(&private).unwrap_err().contains("outside the plugin's private directory"));
        assert!(spec("clip.mp4".into()).check().unwrap_err().contains("`path`"));
        let mut odd = spec(private.join("clip.mp4"));
        odd.mimetype = "video".into();
        assert!(odd.check().unwrap_err().contains("`mimetype`"));
    }
}

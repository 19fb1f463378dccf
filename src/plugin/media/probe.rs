//! What a fetched file is: its MIME type (by its extension), its size, and, with ffprobe, its width, height
//! and length; and a JPEG thumbnail of a video, made with ffmpeg. Without ffprobe or ffmpeg, what yt-dlp said
//! is used and no thumbnail is made.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use super::process::{self, Ended};

/// Time ffprobe or ffmpeg may take for one file.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// The thumbnail's largest side.
const THUMBNAIL_SIDE: u32 = 640;
/// What ffprobe and ffmpeg may open: local files only, as one of these containers (a file from the web that is
/// really a playlist, say, is refused instead of followed to other files or addresses).
const PROTOCOLS: &str = "file";
const FORMATS: &str = "mov,mp4,m4a,matroska,webm,mp3,ogg,wav,flac,aac,image2,jpeg_pipe,png_pipe,webp_pipe,gif,mjpeg";

/// The kind of message a file becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Video,
    Image,
    Audio,
}

/// The MIME type and kind of a file, by its extension; `None` for what is not media.
pub fn mime_of(path: &Path) -> Option<(&'static str, Kind)> {
    let ext = path.extension().and_then(OsStr::to_str)?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "mp4" | "m4v" => ("video/mp4", Kind::Video),
        "webm" => ("video/webm", Kind::Video),
        "mov" => ("video/quicktime", Kind::Video),
        "mkv" => ("video/x-matroska", Kind::Video),
        "jpg" | "jpeg" => ("image/jpeg", Kind::Image),
        "png" => ("image/png", Kind::Image),
        "webp" => ("image/webp", Kind::Image),
        "gif" => ("image/gif", Kind::Image),
        "heic" => ("image/heic", Kind::Image),
        "m4a" => ("audio/mp4", Kind::Audio),
        "mp3" => ("audio/mpeg", Kind::Audio),
        "ogg" | "opus" => ("audio/ogg", Kind::Audio),
        "wav" => ("audio/wav", Kind::Audio),
        _ => return None,
    })
}

/// What ffprobe says of a file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Probed {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_secs: Option<f64>,
}

/// Asks ffprobe (`None` when it is not there or cannot read the file).
pub async fn probe(ffprobe: &Path, file: &Path, dir: &Path) -> Option<Probed> {
    let args = [
        OsStr::new("-v"),
        OsStr::new("error"),
        OsStr::new("-print_format"),
        OsStr::new("json"),
        OsStr::new("-show_streams"),
        OsStr::new("-show_format"),
        OsStr::new("-protocol_whitelist"),
        OsStr::new(PROTOCOLS),
        OsStr::new("-format_whitelist"),
        OsStr::new(FORMATS),
        OsStr::new("-i"),
        file.as_os_str(),
    ];
    let Ended::Exited { code: Some(0), stdout, .. } = process::run(ffprobe, &args, dir, TOOL_TIMEOUT).await else {
        return None;
    };
    let json: serde_json::Value = serde_json::from_str(&stdout).ok()?;
    let video = json["streams"].as_array()?.iter().find(|s| s["codec_type"] == "video");
    let dimension = |key: &str| video.and_then(|v| v[key].as_u64()).and_then(|n| u32::try_from(n).ok());
    let duration = json["format"]["duration"].as_str().and_then(|d| d.parse::<f64>().ok());
    Some(Probed { width: dimension("width"), height: dimension("height"), duration_secs: duration })
}

/// A JPEG of the video's first frame, at most [`THUMBNAIL_SIDE`] pixels wide (`None` without ffmpeg).
pub async fn thumbnail(ffmpeg: &Path, video: &Path, dir: &Path) -> Option<Vec<u8>> {
    let out = dir.join("thumbnail.jpg");
    let scale = format!("scale='min({THUMBNAIL_SIDE},iw)':-2");
    let args = [
        OsStr::new("-v"),
        OsStr::new("error"),
        OsStr::new("-nostdin"),
        OsStr::new("-y"),
        OsStr::new("-protocol_whitelist"),
        OsStr::new(PROTOCOLS),
        OsStr::new("-format_whitelist"),
        OsStr::new(FORMATS),
        OsStr::new("-i"),
        video.as_os_str(),
        OsStr::new("-frames:v"),
        OsStr::new("1"),
        OsStr::new("-vf"),
        OsStr::new(&scale),
        OsStr::new("-f"),
        OsStr::new("image2"),
        out.as_os_str(),
    ];
    match process::run(ffmpeg, &args, dir, TOOL_TIMEOUT).await {
        Ended::Exited { code: Some(0), .. } => tokio::fs::read(&out).await.ok().filter(|data| !data.is_empty()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_decide_the_message_type() {
        assert_eq!(mime_of(Path::new("/x/media.mp4")), Some(("video/mp4", Kind::Video)));
        assert_eq!(mime_of(Path::new("/x/media.JPG")), Some(("image/jpeg", Kind::Image)));
        assert_eq!(mime_of(Path::new("/x/media.m4a")), Some(("audio/mp4", Kind::Audio)));
        assert_eq!(mime_of(Path::new("/x/media.html")), None);
        assert_eq!(mime_of(Path::new("/x/media")), None);
    }
}

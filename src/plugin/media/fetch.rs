//! One fetch with yt-dlp: the link as an argument after `--` (never through a shell), into the job's own
//! directory, within the size limit, the time limit and the config's format, with the cookies file when there
//! is one; and what became of it, told apart by what yt-dlp printed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{self, Ended};

/// What was fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub path: PathBuf,
    /// yt-dlp's title, and what it knows of the media (the generic extractor knows little; ffprobe fills in).
    pub title: Option<String>,
    pub duration_secs: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// Why nothing was fetched; each is answered in the room with a short reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Larger than the limit (bytes, when yt-dlp said).
    TooLarge { size: Option<u64> },
    /// The site wants a login (Instagram, mostly): a cookies file is needed, or the one given has expired.
    LoginRequired,
    /// yt-dlp knows no way to get media from the link.
    Unsupported,
    /// The site said "too many requests".
    RateLimited,
    /// It took longer than `timeout_secs`.
    TimedOut,
    /// yt-dlp cannot be run.
    Missing(String),
    /// Anything else (a network error, a site error), with the last line yt-dlp printed.
    Other(String),
}

/// The arguments of one fetch (the link last, after `--`).
pub fn arguments<'a>(
    format: &'a str,
    extractors: &'a str,
    max_bytes: &'a str,
    cookies: Option<&'a Path>,
    url: &'a str,
) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = [
        "--ignore-config",
        "--no-cache-dir",
        "--no-playlist",
        "--no-progress",
        "--newline",
        "--no-mtime",
        "--restrict-filenames",
        "--socket-timeout",
        "30",
        "--retries",
        "2",
        "--write-info-json",
        "--format",
    ]
    .into_iter()
    .map(OsStr::new)
    .collect();
    args.push(OsStr::new(format));
    args.extend([OsStr::new("--use-extractors"), OsStr::new(extractors)]);
    args.extend([OsStr::new("--max-filesize"), OsStr::new(max_bytes)]);
    if let Some(cookies) = cookies {
        args.extend([OsStr::new("--cookies"), cookies.as_os_str()]);
    }
    args.extend([OsStr::new("--output"), OsStr::new("media.%(ext)s"), OsStr::new("--"), OsStr::new(url)]);
    args
}

/// Runs yt-dlp in `dir` (empty, the job's own).
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    yt_dlp: &Path,
    format: &str,
    extractors: &str,
    max_bytes: u64,
    cookies: Option<&Path>,
    url: &str,
    dir: &Path,
    timeout: Duration,
) -> Result<Fetched, Failure> {
    let max = max_bytes.to_string();
    let args = arguments(format, extractors, &max, cookies, url);
    match process::run(yt_dlp, &args, dir, timeout).await {
        Ended::NotStarted(e) => Err(Failure::Missing(format!("cannot run {}: {e}", yt_dlp.display()))),
        Ended::TimedOut => Err(Failure::TimedOut),
        Ended::Exited { code, stdout, stderr } => {
            let media = media_file(dir);
            match (code, media) {
                (Some(0), Some(path)) => Ok(described(dir, path)),
                _ => Err(classify(&stdout, &stderr)),
            }
        }
    }
}

/// The file yt-dlp wrote (`media.<ext>`, not its info JSON nor a partial download).
fn media_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        let name = p.file_name().and_then(OsStr::to_str).unwrap_or_default();
        name.starts_with("media.") && !name.ends_with(".json") && !name.ends_with(".part") && !name.ends_with(".ytdl")
    })
}

/// What the info JSON yt-dlp wrote says of the media.
fn described(dir: &Path, path: PathBuf) -> Fetched {
    let info: serde_json::Value = std::fs::read(dir.join("media.info.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let number = |key: &str| info[key].as_u64().and_then(|n| u32::try_from(n).ok());
    Fetched {
        path,
        title: info["title"].as_str().map(str::to_owned),
        duration_secs: info["duration"].as_f64(),
        width: number("width"),
        height: number("height"),
    }
}

/// Why yt-dlp fetched nothing, from what it printed.
pub fn classify(stdout: &str, stderr: &str) -> Failure {
    // The size message is yt-dlp's own (stdout); errors are on stderr, where a link cannot put words.
    let said = stdout.to_ascii_lowercase();
    if let Some(at) = said.find("larger than max-filesize") {
        let size = said[at..].split(['(', ' ']).find_map(|w| w.parse::<u64>().ok());
        return Failure::TooLarge { size };
    }
    let errors: String =
        stderr.lines().filter(|l| l.starts_with("ERROR:")).collect::<Vec<_>>().join("\n").to_ascii_lowercase();
    if ["login required", "sign in to confirm", "use --cookies", "private video"].iter().any(|w| errors.contains(w)) {
        return Failure::LoginRequired;
    }
    if errors.contains("http error 429") || errors.contains("too many requests") {
        return Failure::RateLimited;
    }
    let nothing =
        ["unsupported url", "no suitable extractor", "no video formats found", "no media found", "there is no video"];
    if nothing.iter().any(|w| errors.contains(w)) {
        return Failure::Unsupported;
    }
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("ERROR:"))
        .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("yt-dlp fetched nothing and said nothing");
    Failure::Other(last.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_yt_dlp_prints_tells_the_failures_apart() {
        assert_eq!(
            classify("[download] File is larger than max-filesize (1070215 bytes > 200000 bytes). Aborting.", ""),
            Failure::TooLarge { size: Some(1_070_215) }
        );
        let instagram = "ERROR: [Instagram] Cx1: Requested content is not available, rate-limit reached or login \
                         required. Use --cookies, --cookies-from-browser, --username and --password";
        assert_eq!(classify("", instagram), Failure::LoginRequired);
        assert_eq!(classify("", "ERROR: Unsupported URL: http://127.0.0.1:1/page.html"), Failure::Unsupported);
        assert_eq!(classify("", "ERROR: No suitable extractor found for URL http://x/a.mp4"), Failure::Unsupported);
        assert_eq!(classify("", "ERROR: [generic] x: HTTP Error 429: Too Many Requests"), Failure::RateLimited);
        assert_eq!(
            classify("", "WARNING: x\nERROR: [generic] x: Unable to download webpage: [Errno 111] Connection refused"),
            Failure::Other("ERROR: [generic] x: Unable to download webpage: [Errno 111] Connection refused".into())
        );
    }

    #[test]
    fn the_link_comes_last_after_a_double_dash() {
        let args = arguments("b", "default,-generic", "100", Some(Path::new("/tmp/j/cookies.txt")), "--exec=rm -rf /");
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(&args[args.len() - 2..], ["--", "--exec=rm -rf /"]);
        assert!(args.windows(2).any(|w| w == ["--cookies", "/tmp/j/cookies.txt"]));
        assert!(args.windows(2).any(|w| w == ["--max-filesize", "100"]));
        assert!(args.windows(2).any(|w| w == ["--use-extractors", "default,-generic"]));
    }
}

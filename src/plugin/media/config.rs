//! The `media` plugin's config: which links it fetches, with which programs, and the limits.

use std::path::PathBuf;

use serde::Deserialize;

use crate::plugin::{ConfigProblem, invites};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Host names whose links are fetched; a name also covers its subdomains (`instagram.com` covers
    /// `www.instagram.com`).
    #[serde(default = "default_hosts")]
    pub hosts: Vec<String>,
    /// The yt-dlp program: an absolute path, or a name looked up in `PATH`.
    #[serde(default = "default_yt_dlp")]
    pub yt_dlp: PathBuf,
    /// ffmpeg and ffprobe, for thumbnails and the size and length of what was fetched; without them, media is
    /// posted without a thumbnail and with what yt-dlp knows.
    #[serde(default = "default_ffmpeg")]
    pub ffmpeg: PathBuf,
    #[serde(default = "default_ffprobe")]
    pub ffprobe: PathBuf,
    /// Largest file posted, in bytes (the homeserver's own upload limit applies too, whichever is smaller).
    #[serde(default = "default_max_file_size")]
    pub max_file_size: u64,
    /// Longest clip posted, in seconds.
    #[serde(default = "default_max_duration_secs")]
    pub max_duration_secs: u64,
    /// Time one fetch may take (yt-dlp and what it runs), in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Links fetched from one message; more are left alone.
    #[serde(default = "default_max_urls_per_message")]
    pub max_urls_per_message: usize,
    /// How long a fetch may wait for the rate limit (`rate_limit` of the instance) before the bot says it is
    /// busy instead, in seconds.
    #[serde(default = "default_max_wait_secs")]
    pub max_wait_secs: u64,
    /// yt-dlp's format selection.
    #[serde(default = "default_format")]
    pub format: String,
    /// A cookies file (Netscape format) for sites that need a login: `{ credential: NAME }`, its text once built.
    #[serde(default)]
    pub cookies: Option<crate::plugin::SecretValue>,
    /// yt-dlp's extractors (`--use-extractors`): by default every site's own, but not the generic one, which
    /// follows any page's links and embeds, wherever they point (the host's own network too).
    #[serde(default = "default_extractors")]
    pub extractors: Vec<String>,
    /// User ID globs whose invites the bot accepts.
    #[serde(default)]
    pub allow_invites_from: Vec<String>,
}

fn default_hosts() -> Vec<String> {
    vec!["instagram.com".into()]
}
fn default_yt_dlp() -> PathBuf {
    "yt-dlp".into()
}
fn default_ffmpeg() -> PathBuf {
    "ffmpeg".into()
}
fn default_ffprobe() -> PathBuf {
    "ffprobe".into()
}
fn default_max_file_size() -> u64 {
    50_000_000
}
fn default_max_duration_secs() -> u64 {
    600
}
fn default_timeout_secs() -> u64 {
    120
}
fn default_max_urls_per_message() -> usize {
    3
}
fn default_max_wait_secs() -> u64 {
    30
}
fn default_extractors() -> Vec<String> {
    vec!["default".into(), "-generic".into()]
}
/// One file with video and sound, MP4 where there is one (no merging, which would need ffmpeg).
fn default_format() -> String {
    "b[ext=mp4]/b".into()
}

impl MediaConfig {
    /// What is wrong with the config, keys relative to it.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push(ConfigProblem { key: key.into(), message });
        if self.hosts.is_empty() {
            problem("hosts", "name at least one host, like `instagram.com`".into());
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let valid = !host.is_empty()
                && host.len() <= 253
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && !host.starts_with('.')
                && !host.ends_with('.');
            if !valid {
                problems.push(ConfigProblem {
                    key: format!("hosts.{i}"),
                    message: format!("`{host}` is not a host name like `instagram.com` (no scheme, port or path)"),
                });
            }
        }
        let mut problem = |key: &str, message: String| problems.push(ConfigProblem { key: key.into(), message });
        for (key, path) in [("yt_dlp", &self.yt_dlp), ("ffmpeg", &self.ffmpeg), ("ffprobe", &self.ffprobe)] {
            let bare_name = path.components().count() == 1;
            if !path.is_absolute() && !bare_name {
                problem(key, format!("`{}` must be an absolute path or a program name", path.display()));
            }
        }
        if self.max_file_size < 1024 {
            problem("max_file_size", format!("{} bytes is too small to post anything", self.max_file_size));
        }
        if !(1..=86_400).contains(&self.max_duration_secs) {
            problem("max_duration_secs", "must be between 1 second and a day (86400)".into());
        }
        if !(5..=3600).contains(&self.timeout_secs) {
            problem("timeout_secs", "must be between 5 seconds and an hour (3600)".into());
        }
        if !(1..=20).contains(&self.max_urls_per_message) {
            problem("max_urls_per_message", "must be between 1 and 20".into());
        }
        if self.max_wait_secs > 600 {
            problem("max_wait_secs", "must be at most 600 seconds".into());
        }
        if self.format.trim().is_empty() || self.format.starts_with('-') {
            problem("format", format!("`{}` is not a yt-dlp format selection like `b[ext=mp4]/b`", self.format));
        }
        if self.extractors.is_empty() {
            problem("extractors", "name at least one, like `default` (yt-dlp's `--use-extractors`)".into());
        }
        for extractor in &self.extractors {
            let valid = !extractor.is_empty()
                && !extractor.starts_with("--")
                && extractor.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.*+?".contains(&b));
            if !valid {
                problem("extractors", format!("`{extractor}` is not an extractor name like `instagram` or `-generic`"));
            }
        }
        if let Some(cookies) = &self.cookies
            && !cookies.is_reference()
        {
            problem(
                "cookies",
                "the cookies file is a login: name it as `{ credential: NAME }` or `{ file: PATH }`, never inline"
                    .into(),
            );
        }
        for p in invites::check_globs(&self.allow_invites_from) {
            problems.push(p);
        }
        problems
    }

    /// Whether links to `host` are fetched.
    pub fn covers(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|h| {
            let h = h.to_ascii_lowercase();
            host == h || host.strip_suffix(&h).is_some_and(|rest| rest.ends_with('.'))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugin::parse_config;

    #[test]
    fn defaults_fetch_instagram_and_problems_name_their_key() {
        let config: MediaConfig = parse_config(&json!({})).unwrap();
        assert!(config.problems().is_empty());
        assert!(
            config.covers("www.instagram.com") && config.covers("instagram.com") && config.covers("Instagram.COM.")
        );
        assert!(!config.covers("notinstagram.com") && !config.covers("instagram.com.evil.org"));
        let config: MediaConfig = parse_config(&json!({
            "hosts": ["https://x.org"], "yt_dlp": "bin/yt-dlp", "max_file_size": 10, "timeout_secs": 1,
            "cookies": "inline cookies", "format": "--exec rm"
        }))
        .unwrap();
        let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["hosts.0", "yt_dlp", "max_file_size", "timeout_secs", "format", "cookies"]);
    }
}

//! `media`: posts what a link points to (seed 002's Instagram flow: link → yt-dlp → upload → message), as a reply
//! to the message that had the link.
//!
//! A message with links of the configured hosts (`links.rs`) becomes a job per link, kept by the host (a fetch
//! accepted before a restart is finished after it). A job: the upload cache first (`cache.rs`: the same link
//! again is the same upload), then the instance's rate limit, then yt-dlp in a directory of the job's own
//! (`fetch.rs`, `process.rs`: no shell, the link after `--`, a size and a time limit, the cookies file copied
//! in), ffprobe and ffmpeg for the size, length and a thumbnail (`probe.rs`), the upload (encrypted in an
//! encrypted room) and the reply. What goes wrong is answered in the room with a short reason. The job's
//! directory is removed in every outcome, and whatever a crash left is removed when the bot starts.

pub mod cache;
pub mod config;
pub mod fetch;
pub mod links;
pub mod probe;
pub mod process;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use matrix_sdk::ruma::UInt;
use matrix_sdk::ruma::events::Mentions;
use matrix_sdk::ruma::events::room::message::{
    AudioInfo, AudioMessageEventContent, ImageMessageEventContent, MessageType, RoomMessageEventContent, VideoInfo,
    VideoMessageEventContent,
};
use matrix_sdk::ruma::events::room::{ImageInfo, MediaSource, ThumbnailInfo};
use serde_json::json;
use sha2::Digest;
use tokio::sync::Semaphore;

use self::config::MediaConfig;
use self::fetch::{Failure, Fetched};
use self::probe::Kind;
use super::storage::PluginDatabase;
use super::{
    Action, ConfigProblem, Event, EventKind, Job, Plugin, PluginContext, PluginError, PluginType, UnpromptedSink,
    invites, parse_config,
};

/// Fetches one instance runs at once (each may hold a file of up to `max_file_size` in memory to upload it).
const FETCHES_AT_ONCE: usize = 2;
/// Where the jobs' directories are, inside the plugin's private directory.
const FETCH_DIR: &str = "fetches";

pub struct MediaType;

impl PluginType for MediaType {
    fn name(&self) -> &'static str {
        "media"
    }

    fn description(&self) -> &'static str {
        "posts the video, image or sound a link of a configured site points to (yt-dlp), as a reply"
    }

    fn check_config(&self, config: &serde_json::Value) -> Vec<ConfigProblem> {
        match parse_config::<MediaConfig>(config) {
            Ok(parsed) => parsed.problems(),
            Err(problem) => vec![problem],
        }
    }

    fn build(&self, config: &serde_json::Value) -> Result<Box<dyn Plugin>, ConfigProblem> {
        let config: MediaConfig = parse_config(config)?;
        let cookies = match &config.cookies {
            None => None,
            Some(secret) => Some(secret.text().map(str::to_owned).ok_or_else(|| ConfigProblem {
                key: "cookies".into(),
                message: "the cookies file was not read: name it as `{ credential: NAME }`".into(),
            })?),
        };
        Ok(Box::new(Media {
            config,
            cookies,
            database: OnceLock::new(),
            tools: OnceLock::new(),
            fetches: Semaphore::new(FETCHES_AT_ONCE),
        }))
    }
}

/// The programs found at start.
struct Tools {
    yt_dlp: PathBuf,
    ffmpeg: Option<PathBuf>,
    ffprobe: Option<PathBuf>,
}

pub struct Media {
    config: MediaConfig,
    cookies: Option<String>,
    database: OnceLock<PluginDatabase>,
    tools: OnceLock<Tools>,
    fetches: Semaphore,
}

/// A job's directory, removed when dropped (whatever the outcome).
struct JobDir(PathBuf);

impl JobDir {
    fn create(parent: &Path, key: &str) -> std::io::Result<JobDir> {
        use std::os::unix::fs::DirBuilderExt;
        let name = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..12]);
        let path = parent.join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&path)?;
        Ok(JobDir(path))
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove a fetch's directory; it is removed at the next start");
        }
    }
}

/// A short answer; it mentions no one (the link it repeats may hold an `@`).
fn notice(text: impl Into<String>) -> Vec<Action> {
    vec![Action::Reply(RoomMessageEventContent::notice_plain(text).add_mentions(Mentions::new()))]
}

/// A length as people say it: seconds below two minutes, minutes above.
fn length(secs: f64) -> String {
    if secs < 120.0 { format!("{} s", secs.round() as u64) } else { format!("{} min", (secs / 60.0).round() as u64) }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

/// The job key of the `index`-th link of an event: bounded, whatever the event id's length.
fn job_key(event_id: &str, index: usize) -> String {
    let digest = sha2::Sha256::digest(format!("{event_id} {index}").as_bytes());
    format!("fetch {}", hex::encode(&digest[..16]))
}

impl Media {
    fn tools(&self) -> Result<&Tools, PluginError> {
        self.tools.get().ok_or_else(|| PluginError::transient("the media plugin has not started"))
    }

    /// Waits for the instance's rate limit, up to `max_wait_secs`; beyond it, how long it would take. A job tried
    /// again (after the site said "too many requests", which stopped the limiter) waits as long as it takes.
    async fn take_turn(&self, context: &PluginContext, attempt: u32) -> Result<(), Duration> {
        if attempt > 1 {
            context.limiter.acquire().await;
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(self.config.max_wait_secs);
        loop {
            match context.limiter.try_acquire().await {
                Ok(()) => return Ok(()),
                Err(wait) if Instant::now() + wait <= deadline => tokio::time::sleep(wait).await,
                Err(wait) => return Err(wait),
            }
        }
    }

    /// Fetches, checks, uploads: the content to post, or the answer to give instead.
    async fn fetch_and_upload(
        &self,
        context: &PluginContext,
        url: &str,
        encrypted: bool,
        dir: &Path,
        limit: u64,
    ) -> Result<RoomMessageEventContent, Answer> {
        let tools = self.tools().map_err(|e| Answer::Retry(e.message))?;
        let cookies = match &self.cookies {
            Some(text) => {
                let path = dir.join("cookies.txt");
                write_private(&path, text.as_bytes())
                    .map_err(|e| Answer::Retry(format!("cannot write the cookies file: {e}")))?;
                Some(path)
            }
            None => None,
        };
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let started = Instant::now();
        let extractors = self.config.extractors.join(",");
        let fetched =
            fetch::fetch(&tools.yt_dlp, &self.config.format, &extractors, limit, cookies.as_deref(), url, dir, timeout)
                .await
                .map_err(|failure| Answer::Failed(failure, url.to_owned()))?;
        let Fetched { path, title, duration_secs, width, height } = fetched;
        let Some((mimetype, kind)) = probe::mime_of(&path) else {
            return Err(Answer::Failed(Failure::Unsupported, url.to_owned()));
        };
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or_default();
        if size > limit {
            return Err(Answer::Failed(Failure::TooLarge { size: Some(size) }, url.to_owned()));
        }
        let probed = match &tools.ffprobe {
            Some(ffprobe) => probe::probe(ffprobe, &path, dir).await.unwrap_or_default(),
            None => probe::Probed::default(),
        };
        let duration = probed.duration_secs.or(duration_secs).filter(|d| d.is_finite() && *d >= 0.0);
        if kind != Kind::Image && duration.is_some_and(|d| d > self.config.max_duration_secs as f64) {
            return Err(Answer::TooLong { secs: duration.unwrap_or_default(), url: url.to_owned() });
        }
        let (width, height) = (probed.width.or(width), probed.height.or(height));
        let thumbnail = match (&tools.ffmpeg, kind) {
            (Some(ffmpeg), Kind::Video) => probe::thumbnail(ffmpeg, &path, dir).await,
            _ => None,
        };
        let data =
            tokio::fs::read(&path).await.map_err(|e| Answer::Retry(format!("cannot read the fetched file: {e}")))?;
        // Uploads are the homeserver's to pace: the instance's rate limit counts fetches only.
        let matrix = context.matrix.paced_by_homeserver();
        let mime: mime::Mime = mimetype.parse().expect("a known MIME type");
        let source = matrix
            .upload(data, &mime, encrypted)
            .await
            .map_err(|e| Answer::Retry(format!("the upload failed: {e}")))?;
        let thumbnail = match thumbnail {
            Some(jpeg) => {
                let jpeg_size = jpeg.len() as u64;
                let dimensions = image_size(&jpeg);
                let source = matrix
                    .upload(jpeg, &mime::IMAGE_JPEG, encrypted)
                    .await
                    .map_err(|e| Answer::Retry(format!("the thumbnail's upload failed: {e}")))?;
                let mut info = ThumbnailInfo::new();
                info.mimetype = Some("image/jpeg".into());
                info.size = UInt::new(jpeg_size);
                info.width = dimensions.map(|(w, _)| UInt::from(w));
                info.height = dimensions.map(|(_, h)| UInt::from(h));
                Some((source, info))
            }
            None => None,
        };
        let name = file_name(title.as_deref(), &path);
        let thumbnailed = thumbnail.is_some();
        let content = media_message(kind, name, source, mimetype, size, width, height, duration, thumbnail);
        tracing::info!(
            instance = %context.instance,
            thumbnail = thumbnailed,
            probed = probed != probe::Probed::default(),
            host = %url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default(),
            bytes = size,
            encrypted,
            seconds = started.elapsed().as_secs_f64(),
            "fetched and uploaded a link's media"
        );
        Ok(content)
    }
}

/// What a job answers instead of media.
enum Answer {
    /// yt-dlp fetched nothing, for this reason.
    Failed(Failure, String),
    /// Longer than `max_duration_secs`.
    TooLong { secs: f64, url: String },
    /// Something that may work next time (an upload, a file that could not be read).
    Retry(String),
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(data)
}

/// The name the room sees: the title (kept to letters, digits, `-` and `_`) or `media`, with the extension.
fn file_name(title: Option<&str>, path: &Path) -> String {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("bin");
    let stem: String = title
        .unwrap_or("media")
        .chars()
        .map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(60)
        .collect();
    let stem = stem.trim_matches('_');
    format!("{}.{ext}", if stem.is_empty() { "media" } else { stem })
}

/// The width and height of a JPEG, from its frame header.
fn image_size(jpeg: &[u8]) -> Option<(u32, u32)> {
    let mut at = 2;
    while at + 9 < jpeg.len() {
        if jpeg[at] != 0xFF {
            return None;
        }
        let marker = jpeg[at + 1];
        let length = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        if matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
            let height = u16::from_be_bytes([jpeg[at + 5], jpeg[at + 6]]);
            let width = u16::from_be_bytes([jpeg[at + 7], jpeg[at + 8]]);
            return Some((u32::from(width), u32::from(height)));
        }
        at += 2 + length;
    }
    None
}

/// The message for uploaded media: its kind, `info` (MIME type, size, width, height, length in milliseconds)
/// and the thumbnail.
#[allow(clippy::too_many_arguments)]
fn media_message(
    kind: Kind,
    name: String,
    source: MediaSource,
    mimetype: &str,
    size: u64,
    width: Option<u32>,
    height: Option<u32>,
    duration_secs: Option<f64>,
    thumbnail: Option<(MediaSource, ThumbnailInfo)>,
) -> RoomMessageEventContent {
    let duration = duration_secs.map(Duration::from_secs_f64);
    let (w, h) = (width.map(UInt::from), height.map(UInt::from));
    let message = match kind {
        Kind::Video => {
            let mut info = VideoInfo::new();
            info.mimetype = Some(mimetype.into());
            info.size = UInt::new(size);
            info.width = w;
            info.height = h;
            info.duration = duration;
            if let Some((source, thumbnail_info)) = thumbnail {
                info.thumbnail_source = Some(source);
                info.thumbnail_info = Some(Box::new(thumbnail_info));
            }
            let mut content = VideoMessageEventContent::new(name.clone(), source).info(Some(Box::new(info)));
            content.filename = Some(name);
            MessageType::Video(content)
        }
        Kind::Image => {
            let mut info = ImageInfo::new();
            info.mimetype = Some(mimetype.into());
            info.size = UInt::new(size);
            info.width = w;
            info.height = h;
            let mut content = ImageMessageEventContent::new(name.clone(), source).info(Some(Box::new(info)));
            content.filename = Some(name);
            MessageType::Image(content)
        }
        Kind::Audio => {
            let mut info = AudioInfo::new();
            info.mimetype = Some(mimetype.into());
            info.size = UInt::new(size);
            info.duration = duration;
            let mut content = AudioMessageEventContent::new(name.clone(), source).info(Some(Box::new(info)));
            content.filename = Some(name);
            MessageType::Audio(content)
        }
    };
    RoomMessageEventContent::new(message)
}

#[async_trait]
impl Plugin for Media {
    /// Answers and notices only: the bot's own events stay out of its syncs.
    fn changes_rooms(&self) -> bool {
        false
    }

    fn accepts_invite_from(&self, inviter: &str) -> bool {
        invites::allowed(&self.config.allow_invites_from, inviter)
    }

    async fn start(&self, context: &PluginContext, _unprompted: UnpromptedSink) -> Result<(), PluginError> {
        let Some(yt_dlp) = process::resolve(&self.config.yt_dlp) else {
            return Err(PluginError::permanent(format!(
                "yt-dlp is not at `{}` (instances.{}.config.yt_dlp): install it (Debian: pip install yt-dlp; NixOS: \
                 the module sets it to pkgs.yt-dlp) or point yt_dlp at the program",
                self.config.yt_dlp.display(),
                context.instance
            )));
        };
        let ffmpeg = process::resolve(&self.config.ffmpeg);
        let ffprobe = process::resolve(&self.config.ffprobe);
        if ffmpeg.is_none() || ffprobe.is_none() {
            tracing::info!(instance = %context.instance, "ffmpeg or ffprobe not found: media is posted without thumbnails, and with the size and length yt-dlp knows");
        }
        // What a crash left behind goes; every job starts with a directory of its own.
        let fetches = context.data_dir.join(FETCH_DIR);
        if let Err(e) = std::fs::remove_dir_all(&fetches)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(PluginError::transient(format!("cannot clean {}: {e}", fetches.display())));
        }
        let database =
            context.open_database(cache::MIGRATIONS).await.map_err(|e| PluginError::permanent(e.to_string()))?;
        let _ = self.database.set(database);
        let _ = self.tools.set(Tools { yt_dlp, ffmpeg, ffprobe });
        Ok(())
    }

    async fn on_event(&self, _context: &PluginContext, event: &Event) -> Result<Vec<Action>, PluginError> {
        let EventKind::Message(message) = &event.kind else {
            return Ok(Vec::new());
        };
        let found = links::links(&message.body, self.config.max_urls_per_message, |host| self.config.covers(host));
        Ok(found
            .into_iter()
            .enumerate()
            .map(|(index, url)| Action::Job {
                key: job_key(event.event_id.as_str(), index),
                payload: json!({"url": url.as_str()}),
            })
            .collect())
    }

    async fn run_job(&self, context: &PluginContext, job: &Job) -> Result<Vec<Action>, PluginError> {
        let Some(url) = job.payload["url"].as_str() else {
            return Err(PluginError::permanent("a fetch job without a link"));
        };
        let Some(origin) = &job.origin else {
            return Err(PluginError::permanent("a fetch job without the message it answers"));
        };
        let database = self.database.get().ok_or_else(|| PluginError::transient("the plugin database is not open"))?;
        let last_try = job.attempt >= super::job::MAX_ATTEMPTS;
        let encrypted = match context.matrix.paced_by_homeserver().is_encrypted(&origin.room_id).await {
            Ok(encrypted) => encrypted,
            Err(e) => {
                return self.retry_or_give_up(
                    context,
                    format!("cannot tell whether the room is encrypted: {e}"),
                    last_try,
                );
            }
        };
        match cache::find(database, url, encrypted).await {
            Ok(Some(content)) => match serde_json::from_value::<RoomMessageEventContent>(content) {
                Ok(content) => return Ok(vec![Action::Reply(content)]),
                Err(e) => {
                    tracing::warn!(instance = %context.instance, error = %e, "a cached upload cannot be read; fetching again")
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(instance = %context.instance, error = %e, "cannot read the upload cache; fetching again")
            }
        }
        let _turn = self.fetches.acquire().await.map_err(|_| PluginError::transient("stopping"))?;
        if let Err(wait) = self.take_turn(context, job.attempt).await {
            return Ok(notice(format!(
                "Too many links at once: this bot fetches {} a minute. Post it again in {} s.",
                context_rate(context),
                wait.as_secs().max(1)
            )));
        }
        let limit = match context.matrix.paced_by_homeserver().max_upload_size().await {
            Ok(server) => self.config.max_file_size.min(server),
            Err(e) => {
                tracing::debug!(instance = %context.instance, error = %e, "the homeserver's upload limit is unknown; using max_file_size");
                self.config.max_file_size
            }
        };
        let dir = match JobDir::create(&context.data_dir.join(FETCH_DIR), &job.key) {
            Ok(dir) => dir,
            Err(e) => {
                return self.retry_or_give_up(context, format!("cannot make the fetch's directory: {e}"), last_try);
            }
        };
        let answer = self.fetch_and_upload(context, url, encrypted, &dir.0, limit).await;
        drop(dir);
        match answer {
            Ok(content) => {
                match serde_json::to_value(&content) {
                    Ok(value) => {
                        if let Err(e) = cache::keep(database, url, encrypted, &value).await {
                            tracing::warn!(instance = %context.instance, error = %e, "cannot remember the upload; the link will be fetched again next time");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(instance = %context.instance, error = %e, "an upload's message cannot be kept")
                    }
                }
                Ok(vec![Action::Reply(content)])
            }
            Err(Answer::Failed(failure, url)) => self.answer_failure(context, failure, &url, limit, last_try).await,
            Err(Answer::TooLong { secs, url }) => Ok(notice(format!(
                "That is {} long; this bot posts up to {}: {url}",
                length(secs),
                length(self.config.max_duration_secs as f64)
            ))),
            Err(Answer::Retry(why)) => self.retry_or_give_up(context, why, last_try),
        }
    }
}

/// The instance's fetches per minute, for the busy answer.
fn context_rate(context: &PluginContext) -> String {
    context.limiter.per_minute().to_string()
}

impl Media {
    /// A failure that may pass: tried again, or, on the last try, answered (and logged at ERROR).
    fn retry_or_give_up(
        &self,
        context: &PluginContext,
        why: String,
        last_try: bool,
    ) -> Result<Vec<Action>, PluginError> {
        if last_try {
            tracing::error!(instance = %context.instance, error = %why, "gave up posting a link's media");
            Ok(notice("Sorry, that could not be posted. Try again later."))
        } else {
            Err(PluginError::transient(why))
        }
    }

    /// The answer for a fetch that failed, logged as what it means for the operator.
    async fn answer_failure(
        &self,
        context: &PluginContext,
        failure: Failure,
        url: &str,
        limit: u64,
        last_try: bool,
    ) -> Result<Vec<Action>, PluginError> {
        let instance = &context.instance;
        Ok(match failure {
            Failure::TooLarge { size } => {
                tracing::info!(instance = %instance, limit, size = size.unwrap_or_default(), "a link's media is over the size limit");
                let size = size.map(|s| format!("{}; ", megabytes(s))).unwrap_or_default();
                notice(format!("That is too large to post here ({size}the limit is {}): {url}", megabytes(limit)))
            }
            Failure::LoginRequired => {
                tracing::error!(instance = %instance, "the site asks for a login: give the bot a cookies file (config.cookies), or renew the one it has");
                notice("That site wants a login before it shares this; the bot's operator has been told.")
            }
            Failure::Unsupported => notice("There is nothing this bot can post from that link."),
            Failure::RateLimited => {
                context.limiter.back_off(None).await;
                if last_try {
                    tracing::error!(instance = %instance, "the site kept answering \"too many requests\"; gave up a link");
                    notice("The site is refusing requests right now. Try again later.")
                } else {
                    return Err(PluginError::transient("the site answered \"too many requests\"; trying again later"));
                }
            }
            Failure::TimedOut => {
                tracing::warn!(instance = %instance, timeout_secs = self.config.timeout_secs, "a fetch took too long");
                notice(format!("That took longer than {} s to fetch; not posted.", self.config.timeout_secs))
            }
            Failure::Missing(why) => {
                tracing::error!(instance = %instance, error = %why, "yt-dlp cannot be run");
                notice("The bot cannot fetch media right now; its operator has been told.")
            }
            Failure::Other(why) => {
                let why = crate::telemetry::scrub::for_log(&why);
                if last_try {
                    tracing::error!(instance = %instance, error = %why, "gave up fetching a link");
                    notice("That could not be fetched. Try again later.")
                } else {
                    tracing::warn!(instance = %instance, error = %why, "a fetch failed; trying again later");
                    return Err(PluginError::transient(format!("the fetch failed: {why}")));
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keys_and_jpeg_sizes() {
        assert_eq!(file_name(Some("Video by alice (2/3) 🎉"), Path::new("/d/media.mp4")), "Video_by_alice__2_3.mp4");
        assert_eq!(file_name(None, Path::new("/d/media.jpg")), "media.jpg");
        assert_eq!(file_name(Some("!!!"), Path::new("/d/media.mp4")), "media.mp4");
        let long = format!("$event:{}", "x".repeat(300));
        assert!(job_key(&long, 0).len() <= super::super::job::MAX_KEY_BYTES);
        assert_ne!(job_key("$a", 0), job_key("$a", 1));
        // A JPEG's SOF0 after an APP0 segment: 320 x 240.
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00, 0xF0, 0x01, 0x40, 0x03,
        ];
        assert_eq!(image_size(&jpeg), Some((320, 240)));
        assert_eq!(image_size(b"not a jpeg"), None);
        assert_eq!((length(5.2), length(119.0), length(600.0)), ("5 s".into(), "119 s".into(), "10 min".into()));
    }
}

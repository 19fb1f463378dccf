//! The `media` plugin against a real Synapse with the real yt-dlp (PyPI) and ffmpeg (Debian), fetching videos
//! that ffmpeg made from a web server on loopback: posted as a reply with its info and a thumbnail, in a plain
//! room and, encrypted, in an encrypted one (the person decrypts the exact bytes); the same link again reuses
//! the upload; tracking parameters are taken off and the cookies file is used; too large, too long and
//! unsupported links are answered with the reason; the rate limit is answered as such; a fetch cut by
//! `kill -9` is finished once after the restart; the job directories are gone after every case; a bot whose
//! yt-dlp is missing fails alone, naming it; without the generic extractor (the default) nothing is fetched.

use std::path::Path;
use std::time::Duration;

use matrix_sdk::Room;
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::ruma::events::room::MediaSource;
use serde_json::Value;

use crate::harness::bot::BotEnv;
use crate::harness::client::{Seen, TestUser};
use crate::harness::eventually;
use crate::harness::media_server::{MediaServer, make_video, yt_dlp};
use crate::harness::synapse::synapse;

const TIMEOUT: Duration = Duration::from_secs(90);
const COOKIES: &str = "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsessionid\tlogged-in-as-the-bot\n";

/// The bot's reply to `event` in the person's view.
async fn reply_to(person: &TestUser, bot: &str, event: &matrix_sdk::ruma::OwnedEventId) -> Seen {
    person.wait_for_reply(event, bot, TIMEOUT).await
}

/// The raw content of an event, as the homeserver gives it (decrypted for an encrypted room).
async fn content(room: &Room, seen: &Seen) -> Value {
    let event = room.event(&seen.event_id, None).await.unwrap();
    let json: Value = serde_json::from_str(event.raw().json().get()).unwrap();
    json["content"].clone()
}

async fn download(person: &TestUser, source: MediaSource) -> Vec<u8> {
    let request = MediaRequestParameters { source, format: MediaFormat::File };
    person.client.media().get_media_content(&request, false).await.unwrap()
}

/// The job directories the plugin left (none, once a job is done).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_fetched_with_yt_dlp_posted_encrypted_where_the_room_is_and_failures_are_answered() {
    let synapse = synapse();
    let site = MediaServer::start().await;
    make_video(&site.dir.path().join("clip.mp4"), 2, 320, 240, false);
    make_video(&site.dir.path().join("long.mp4"), 6, 64, 48, false);
    make_video(&site.dir.path().join("big.mp4"), 2, 320, 240, true);
    std::fs::copy(site.dir.path().join("clip.mp4"), site.dir.path().join("slow.mp4")).unwrap();
    std::fs::write(site.dir.path().join("page.html"), "<html><body>no media here</body></html>").unwrap();
    let clip = std::fs::read(site.dir.path().join("clip.mp4")).unwrap();
    assert!(std::fs::metadata(site.dir.path().join("big.mp4")).unwrap().len() > 300_000, "big.mp4 is big");

    let mut env = BotEnv::with_ping_bots(synapse, &["media", "broken", "strict"]).await;
    let bot = env.user_id("media");
    env.write_credential("media-cookies", COOKIES);
    env.plugins.insert(
        "media".into(),
        (
            "media".into(),
            vec![
                "hosts: [127.0.0.1]".into(),
                // Direct links to files: yt-dlp's generic extractor, off by default.
                "extractors: [default]".into(),
                format!("yt_dlp: {}", yt_dlp().display()),
                "max_file_size: 300000".into(),
                "max_duration_secs: 4".into(),
                "max_wait_secs: 0".into(),
                "timeout_secs: 60".into(),
                "cookies: {credential: media-cookies}".into(),
            ],
        ),
    );
    env.instances[0].extra.push("rate_limit: {max_requests_per_minute: 1, burst_size: 4}".into());
    env.plugins.insert("broken".into(), ("media".into(), vec!["yt_dlp: /nonexistent/yt-dlp".into()]));
    // The defaults but the host: no generic extractor, so a direct link to a file is nothing to post.
    env.plugins.insert(
        "strict".into(),
        ("media".into(), vec!["hosts: [127.0.0.1]".into(), format!("yt_dlp: {}", yt_dlp().display())]),
    );
    env.write_config();
    env.setup();
    let person = TestUser::new(synapse, "mia-").await;
    let plain = person.create_room(false, &[&bot]).await;
    let secret = person.create_room(true, &[&bot]).await;
    let strict_bot = env.user_id("strict");
    let strict = person.create_room(false, &[&strict_bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&plain, &bot).await;
    person.wait_for_join(&secret, &bot).await;
    person.wait_for_join(&strict, &strict_bot).await;
    let fetches = env.state_dir().join("instances/media/data/fetches");

    // A bot whose yt-dlp is not there fails alone, saying where it looked; the other one works.
    daemon.wait_for_log("yt-dlp is not at `/nonexistent/yt-dlp`", TIMEOUT);

    // 0. By default yt-dlp's generic extractor is off: it would follow a page anywhere (loopback included).
    let asked = person.send_text(&strict, &format!("{}/clip.mp4", site.url)).await;
    assert_eq!(reply_to(&person, &strict_bot, &asked).await.body, "There is nothing this bot can post from that link.");
    assert_eq!(site.requests_for("/clip.mp4"), 0, "nothing was fetched");

    // 1. A link in a plain room: the video as a reply, with its info and a thumbnail; tracking taken off, the
    // cookies file used.
    let url = format!("{}/clip.mp4", site.url);
    let asked = person.send_text(&plain, &format!("look at this {url}?utm_source=share&igsh=abc123 !")).await;
    let posted = reply_to(&person, &bot, &asked).await;
    let video = content(&plain, &posted).await;
    assert_eq!(video["msgtype"], "m.video", "{video}");
    let info = &video["info"];
    assert_eq!(
        (info["mimetype"].as_str(), info["w"].as_u64(), info["h"].as_u64()),
        (Some("video/mp4"), Some(320), Some(240)),
        "{video}"
    );
    assert_eq!(info["size"].as_u64(), Some(clip.len() as u64), "{video}");
    let duration = info["duration"].as_u64().unwrap();
    assert!((1900..=2200).contains(&duration), "duration in milliseconds: {duration}");
    assert_eq!(info["thumbnail_info"]["mimetype"], "image/jpeg", "{video}");
    assert_eq!(info["thumbnail_info"]["w"].as_u64(), Some(320), "{video}");
    assert!(info["thumbnail_url"].as_str().is_some_and(|u| u.starts_with("mxc://")), "{video}");
    let source: MediaSource = serde_json::from_value(video["url"].clone()).map(MediaSource::Plain).unwrap();
    assert_eq!(download(&person, source).await, clip, "the posted video is the one served");
    let requests = site.seen();
    assert!(requests.iter().all(|r| r.path_and_query == "/clip.mp4"), "tracking parameters taken off: {requests:?}");
    assert!(
        requests.iter().all(|r| r.cookie.as_deref() == Some("sessionid=logged-in-as-the-bot")),
        "the cookies file was used: {requests:?}"
    );
    assert_eq!(leftovers(&fetches), Vec::<String>::new());

    // 2. The same link in an encrypted room: uploaded encrypted (the homeserver holds ciphertext), decrypted by
    // the person to the same bytes.
    let asked = person.send_text(&secret, &url).await;
    let posted = reply_to(&person, &bot, &asked).await;
    assert!(posted.encrypted);
    let video = content(&secret, &posted).await;
    assert_eq!(video["msgtype"], "m.video", "{video}");
    assert!(video.get("url").is_none() && video["file"]["url"].is_string(), "an EncryptedFile, no plain url: {video}");
    assert!(video["info"]["thumbnail_file"]["url"].is_string(), "the thumbnail is encrypted too: {video}");
    let file: MediaSource = MediaSource::Encrypted(Box::new(serde_json::from_value(video["file"].clone()).unwrap()));
    assert_eq!(download(&person, file).await, clip);
    let stored = MediaSource::Plain(serde_json::from_value(video["file"]["url"].clone()).unwrap());
    assert_ne!(download(&person, stored).await, clip, "the homeserver never had the video itself");
    let fetched_so_far = site.requests_for("/clip.mp4");

    // 3. Again, with other tracking: the same upload, no new fetch.
    let asked = person.send_text(&secret, &format!("{url}?fbclid=zzz")).await;
    let again = content(&secret, &reply_to(&person, &bot, &asked).await).await;
    assert_eq!(again["file"]["url"], video["file"]["url"], "the earlier upload is reused");
    assert_eq!(site.requests_for("/clip.mp4"), fetched_so_far, "no second fetch");

    // 4. A fetch cut short by kill -9 is done after the restart, once; what the crash left is removed.
    site.hold("/slow.mp4");
    let slow = format!("{}/slow.mp4", site.url);
    let asked = person.send_text(&plain, &slow).await;
    eventually(TIMEOUT, "yt-dlp to ask for slow.mp4", || async { (site.requests_for("/slow.mp4") > 0).then_some(()) })
        .await;
    daemon.crash();
    assert_eq!(leftovers(&fetches).len(), 1, "the crash left the fetch's directory");
    std::fs::create_dir_all(fetches.join("left-by-an-older-crash")).unwrap();
    site.release();
    let mut daemon = env.spawn_run();
    let posted = reply_to(&person, &bot, &asked).await;
    assert_eq!(content(&plain, &posted).await["msgtype"], "m.video");
    assert_eq!(leftovers(&fetches), Vec::<String>::new(), "everything left by crashes is gone");

    // 5. Too large: the link instead. 6. Too long. 7. Nothing to post.
    let too_large = format!("{}/big.mp4", site.url);
    let asked = person.send_text(&plain, &too_large).await;
    let answer = reply_to(&person, &bot, &asked).await.body;
    assert!(
        answer.starts_with("That is too large to post here (")
            && answer.ends_with(&format!("the limit is 0.3 MB): {too_large}")),
        "{answer}"
    );
    let long = format!("{}/long.mp4", site.url);
    let asked = person.send_text(&plain, &long).await;
    assert_eq!(
        reply_to(&person, &bot, &asked).await.body,
        format!("That is 6 s long; this bot posts up to 4 s: {long}")
    );
    let asked = person.send_text(&plain, &format!("{}/page.html", site.url)).await;
    assert_eq!(reply_to(&person, &bot, &asked).await.body, "There is nothing this bot can post from that link.");
    assert_eq!(leftovers(&fetches), Vec::<String>::new());

    // 8. The burst of 4 fetches since the restart (slow, big, long, page) is spent: a new link is answered with the rate limit.
    let asked = person.send_text(&plain, &format!("{url}?v=2")).await;
    let answer = reply_to(&person, &bot, &asked).await.body;
    assert!(answer.starts_with("Too many links at once: this bot fetches 1 a minute. Post it again in "), "{answer}");
    assert_eq!(site.requests_for("/clip.mp4"), fetched_so_far, "not fetched");

    // Each message was answered once.
    let history = person.room_history(&plain).await;
    let replies: Vec<&Seen> = history.iter().filter(|s| s.sender.as_str() == bot).collect();
    assert_eq!(replies.len(), 6, "{replies:#?}");
    daemon.stop();
}

//! A web server on a free loopback port that serves the files of a directory, as a site the `media` plugin
//! fetches from would: it records every request (path with query, and the cookies sent), and can hold the
//! requests for one path until released.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use tokio::sync::watch;

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path_and_query: String,
    pub cookie: Option<String>,
}

#[derive(Clone)]
struct Shared {
    dir: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The path whose requests wait, and whether they may go on.
    hold: Arc<Mutex<Option<String>>>,
    released: watch::Receiver<bool>,
}

pub struct MediaServer {
    pub url: String,
    pub dir: tempfile::TempDir,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: watch::Sender<bool>,
    hold: Arc<Mutex<Option<String>>>,
}

impl MediaServer {
    pub async fn start() -> MediaServer {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (release, released) = watch::channel(false);
        let shared = Shared { dir: dir.path().to_owned(), seen: Arc::default(), hold: Arc::default(), released };
        let (seen, hold) = (shared.seen.clone(), shared.hold.clone());
        let app = axum::Router::new().fallback(serve).with_state(shared);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MediaServer { url, dir, seen, release, hold }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests asked for `path` (whatever their query).
    pub fn requests_for(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path_and_query.split('?').next() == Some(path)).count()
    }

    /// Requests for `path` wait from now on, until [`MediaServer::release`].
    pub fn hold(&self, path: &str) {
        *self.hold.lock().unwrap() = Some(path.to_owned());
    }

    pub fn release(&self) {
        let _ = self.release.send(true);
    }
}

async fn serve(State(shared): State<Shared>, request: Request) -> Response {
    let path_and_query = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let cookie = request.headers().get("cookie").and_then(|v| v.to_str().ok()).map(str::to_owned);
    shared.seen.lock().unwrap().push(Seen { path_and_query, cookie });
    let path = request.uri().path().to_owned();
    let held = shared.hold.lock().unwrap().as_deref() == Some(path.as_str());
    if held {
        let mut released = shared.released.clone();
        let _ = released.wait_for(|go| *go).await;
    }
    let name = path.trim_start_matches('/');
    if name.contains('/') || name.contains("..") {
        return Response::builder().status(StatusCode::NOT_FOUND).body(Body::empty()).unwrap();
    }
    match tokio::fs::read(shared.dir.join(name)).await {
        Ok(data) => {
            let content_type = match name.rsplit('.').next() {
                Some("mp4") => "video/mp4",
                Some("html") => "text/html",
                _ => "application/octet-stream",
            };
            Response::builder()
                .header("content-type", content_type)
                .header("content-length", data.len())
                .body(Body::from(data))
                .unwrap()
        }
        Err(_) => Response::builder().status(StatusCode::NOT_FOUND).body(Body::empty()).unwrap(),
    }
}

/// The yt-dlp the tests run, installed (with ffmpeg) by `scripts/install-media-tools.sh`.
pub fn yt_dlp() -> &'static std::path::Path {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-media-tools.sh");
        let output = std::process::Command::new("bash").arg(script).output().unwrap();
        assert!(output.status.success(), "install-media-tools.sh failed: {}", String::from_utf8_lossy(&output.stderr));
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

/// Makes a video with ffmpeg: `seconds` long, `width` x `height`, with sound; `noise` makes it large.
pub fn make_video(path: &std::path::Path, seconds: u32, width: u32, height: u32, noise: bool) {
    yt_dlp();
    let picture = if noise {
        format!("nullsrc=s={width}x{height}:d={seconds},geq=random(1)*255:128:128")
    } else {
        format!("testsrc=duration={seconds}:size={width}x{height}:rate=10")
    };
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", &picture, "-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p", "-b:v", if noise { "4M" } else { "200k" }])
        .args(["-c:a", "aac", "-shortest"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg could not make {}", path.display());
}

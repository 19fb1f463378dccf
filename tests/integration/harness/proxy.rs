//! A reverse proxy in front of the real Synapse for failure injection that a real homeserver cannot be asked
//! for: a blocked or rate-limited `/sync`, a request held at the worst moment (not forwarded, or forwarded with
//! its answer held back, as when a process dies after the homeserver acted), and to-device messages delivered
//! late. Everything else passes through untouched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// `/sync` answers 502.
    BlockSync,
    /// `/sync` answers 429 `M_LIMIT_EXCEEDED` with this `retry_after_ms`.
    RateLimitSync(u64),
    /// `/sync` answers 400 `M_UNKNOWN` with this error text.
    Error400(String),
}

/// Requests to hold: the first request whose method is `method` and whose path contains `path` (and every later
/// one) never gets an answer. With `forward`, it reaches the homeserver first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub method: &'static str,
    pub path: &'static str,
    pub forward: bool,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    mode: Arc<Mutex<Mode>>,
    hold: Arc<Mutex<Option<Hold>>>,
    to_device_delay: Arc<Mutex<Option<std::time::Duration>>>,
    held: Arc<AtomicU64>,
    observed: Arc<Observed>,
    http: reqwest::Client,
}

/// What the proxy saw of the bot's requests, for tests of how it talks to the homeserver.
#[derive(Default)]
pub struct Observed {
    /// Each `/sync`'s `filter` parameter, in order (one entry per `/sync` seen).
    pub sync_filters: Mutex<Vec<String>>,
    /// Filter uploads (`POST /user/{id}/filter`).
    pub filter_uploads: AtomicU64,
    /// Message sends (`PUT .../send/...`) in flight now, and the most at once.
    sends_in_flight: AtomicU64,
    pub most_sends_in_flight: AtomicU64,
    /// Each send is held this long before it is forwarded (so that sends in flight together can be seen).
    pub send_delay: Mutex<Option<std::time::Duration>>,
}

pub struct Proxy {
    pub url: String,
    mode: Arc<Mutex<Mode>>,
    hold: Arc<Mutex<Option<Hold>>>,
    to_device_delay: Arc<Mutex<Option<std::time::Duration>>>,
    held: Arc<AtomicU64>,
    pub observed: Arc<Observed>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let hold = Arc::new(Mutex::new(None));
        let to_device_delay = Arc::new(Mutex::new(None));
        let held = Arc::new(AtomicU64::new(0));
        let observed = Arc::new(Observed::default());
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            mode: mode.clone(),
            hold: hold.clone(),
            to_device_delay: to_device_delay.clone(),
            held: held.clone(),
            observed: observed.clone(),
            http: reqwest::Client::new(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(forward).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy { url, mode, hold, to_device_delay, held, observed, task }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Holds matching requests from now on (`None`: passes them again).
    pub fn hold(&self, hold: Option<Hold>) {
        *self.hold.lock().unwrap() = hold;
    }

    /// Requests held so far.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Answers `/sendToDevice` at once and delivers it to the homeserver `delay` later (`None`: at once).
    pub fn delay_to_device(&self, delay: Option<std::time::Duration>) {
        *self.to_device_delay.lock().unwrap() = delay;
    }

    /// `/sync` requests seen so far.
    pub fn syncs(&self) -> u64 {
        self.observed.sync_filters.lock().unwrap().len() as u64
    }
}

async fn forward(State(shared): State<Shared>, request: Request) -> Response {
    let path_and_query = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    if request.uri().path().ends_with("/sync") {
        let filter = url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .find(|(key, _)| key == "filter")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        shared.observed.sync_filters.lock().unwrap().push(filter);
        let mode = shared.mode.lock().unwrap().clone();
        match mode {
            Mode::Pass => {}
            Mode::BlockSync => return (StatusCode::BAD_GATEWAY, "blocked by the test proxy").into_response(),
            Mode::RateLimitSync(retry_after_ms) => {
                let body = serde_json::json!({"errcode": "M_LIMIT_EXCEEDED", "error": "Too many requests",
                                              "retry_after_ms": retry_after_ms});
                return (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
            }
            Mode::Error400(text) => {
                let body = serde_json::json!({"errcode": "M_UNKNOWN", "error": text});
                return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
            }
        }
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let hold = shared.hold.lock().unwrap().clone().filter(|h| h.method == method.as_str() && path.contains(h.path));
    if hold.as_ref().is_some_and(|h| !h.forward) {
        shared.held.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    if method == axum::http::Method::POST && path.ends_with("/filter") {
        shared.observed.filter_uploads.fetch_add(1, Ordering::SeqCst);
    }
    let is_send = method == axum::http::Method::PUT && path.contains("/send/");
    let _in_flight = is_send.then(|| SendInFlight::new(&shared.observed));
    let send_delay = *shared.observed.send_delay.lock().unwrap();
    if let Some(delay) = send_delay.filter(|_| is_send) {
        tokio::time::sleep(delay).await;
    }
    let mut headers: HeaderMap = request.headers().clone();
    headers.remove(axum::http::header::HOST);
    let body: Bytes = axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024).await.unwrap_or_default();
    let forward =
        shared.http.request(method, format!("{}{path_and_query}", shared.upstream)).headers(headers).body(body);
    let delay = *shared.to_device_delay.lock().unwrap();
    if let Some(delay) = delay.filter(|_| path.contains("/sendToDevice/")) {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = forward.send().await;
        });
        return axum::Json(serde_json::json!({})).into_response();
    }
    let upstream = forward.send().await;
    if hold.is_some() {
        // The homeserver acted; its answer never arrives.
        shared.held.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    match upstream {
        Ok(response) => {
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.unwrap_or_default();
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            for (name, value) in headers.iter() {
                if name != axum::http::header::TRANSFER_ENCODING && name != axum::http::header::CONTENT_LENGTH {
                    out.headers_mut().insert(name.clone(), value.clone());
                }
            }
            out
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// Counts a send in flight while it lives.
struct SendInFlight(Arc<Observed>);

impl SendInFlight {
    fn new(observed: &Arc<Observed>) -> SendInFlight {
        let now = observed.sends_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        observed.most_sends_in_flight.fetch_max(now, Ordering::SeqCst);
        SendInFlight(observed.clone())
    }
}

impl Drop for SendInFlight {
    fn drop(&mut self) {
        self.0.sends_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

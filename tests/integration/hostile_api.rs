//! The management API under attack from the same machine, against the real daemon and Synapse: a login flood
//! cannot stall the bots, slow and idle connections are closed and capped, every refusal is JSON with a stable
//! code, and all tokens can be revoked at once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::api::Api;
use crate::harness::bot::BotEnv;
use crate::harness::client::TestUser;
use crate::harness::synapse::synapse;

/// Sends raw bytes on a new connection and returns the status code and the JSON body of the answer.
fn raw_request(base: &str, request: &[u8]) -> (u16, Value) {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())))
}

/// Whether the server closed `stream` (a read returns end of file) within `timeout`.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Which of `streams` the server closes within `timeout` (indices), watched together.
fn closed_among(streams: &mut [TcpStream], timeout: Duration) -> Vec<usize> {
    let deadline = Instant::now() + timeout;
    let mut closed = Vec::new();
    for stream in streams.iter() {
        stream.set_nonblocking(true).unwrap();
    }
    let mut buf = [0u8; 512];
    while Instant::now() < deadline && closed.len() < streams.len() {
        for (i, stream) in streams.iter_mut().enumerate() {
            if closed.contains(&i) {
                continue;
            }
            match stream.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => closed.push(i),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for stream in streams.iter() {
        stream.set_nonblocking(false).unwrap();
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_does_not_stall_the_bots() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.enable_api_login();
    env.setup();
    let bot = env.user_id("ping");
    let mut daemon = env.spawn_run();
    let api = Api::new(&env);
    api.wait_up(&mut daemon).await;
    let person = TestUser::new(synapse, "zoe-").await;
    let room = person.create_room(false, &[&bot]).await;
    person.wait_for_join(&room, &bot).await;

    // 200 wrong-password logins, 50 at a time, while the person keeps pinging.
    let url = format!("{}/api/v1/login", api.base);
    let flood = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let wave: Vec<_> = (0..50)
                .map(|i| {
                    let (http, url) = (http.clone(), url.clone());
                    tokio::spawn(async move {
                        let response = http
                            .post(url)
                            .json(
                                &json!({"username": if i % 2 == 0 { "admin" } else { "nobody" }, "password": "wrong"}),
                            )
                            .send()
                            .await
                            .unwrap();
                        let retry_after = response.headers().get("retry-after").is_some();
                        let status = response.status().as_u16();
                        let body: Value = response.json().await.unwrap();
                        (status, retry_after, body["error"]["code"].as_str().unwrap_or_default().to_owned())
                    })
                })
                .collect();
            for request in wave {
                statuses.push(request.await.unwrap());
            }
        }
        statuses
    });
    let mut slowest = Duration::ZERO;
    while !flood.is_finished() {
        let sent = Instant::now();
        let ping = person.send_text(&room, "!ping").await;
        person.wait_for_reply(&ping, &bot, Duration::from_secs(30)).await;
        slowest = slowest.max(sent.elapsed());
    }
    let statuses = flood.await.unwrap();
    assert!(slowest < Duration::from_secs(5), "a ping took {slowest:?} during the flood");
    let refused: Vec<_> = statuses.iter().filter(|(status, _, _)| *status == 429).collect();
    assert!(refused.len() >= 180, "most attempts are refused before hashing: {} of 200", refused.len());
    assert!(refused.iter().all(|(_, retry_after, code)| *retry_after && code == "too_many_requests"));
    assert!(statuses.iter().all(|(status, _, _)| matches!(status, 401 | 429)), "{statuses:?}");
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_capped() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.server_extra.push("header_timeout_secs: 10".into());
    env.server_extra.push("max_connections: 20".into());
    env.write_config();
    env.setup();
    let mut daemon = env.spawn_run();
    let api = Api::new(&env);
    api.wait_up(&mut daemon).await;
    let address = api.base.trim_start_matches("http://").to_owned();

    // A client that sends half a request header and stops is cut off after the header timeout.
    let mut slow = TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut slow, Duration::from_secs(20)), "a slow header is not waited for forever");
    assert!(started.elapsed() >= Duration::from_secs(9));

    // 25 idle connections against a cap of 20: those over the cap are closed at once (long before the header
    // timeout would close them), and the daemon says so. One more may be closed when the test client's own
    // pooled connection from the start still holds a place.
    let mut idle: Vec<TcpStream> = (0..25).map(|_| TcpStream::connect(&address).unwrap()).collect();
    daemon.wait_for_log("connection limit", Duration::from_secs(10));
    let opened = Instant::now();
    let closed = closed_among(&mut idle, Duration::from_secs(4));
    assert!((5..=6).contains(&closed.len()), "over the cap, connections are closed at once: {closed:?}");
    assert!(opened.elapsed() < Duration::from_secs(9), "... well before the header timeout");
    // The others are closed after the header timeout; then the API answers again.
    let mut open: Vec<TcpStream> =
        idle.into_iter().enumerate().filter(|(i, _)| !closed.contains(i)).map(|(_, s)| s).collect();
    let count = open.len();
    assert_eq!(closed_among(&mut open, Duration::from_secs(20)).len(), count, "every idle connection is closed");
    let (status, _) = api.get("/health").await;
    assert_eq!(status, 200);
    // A kept-alive connection that goes idle after a request is closed too.
    let mut kept = TcpStream::connect(&address).unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_within(&mut kept, Duration::from_secs(20)));
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_json_and_tokens_can_all_be_revoked() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.enable_api_login();
    env.setup();
    let (mut daemon, mut api) = Api::start_logged_in(&env).await;
    let token = api.token.clone().unwrap();

    let long_uri =
        format!("GET /api/v1/instances/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a".repeat(3000));
    let (status, body) = raw_request(&api.base, long_uri.as_bytes());
    assert_eq!((status, body["error"]["code"].as_str()), (414, Some("uri_too_long")), "{body}");
    let big_headers =
        format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\nConnection: close\r\n\r\n", "j".repeat(10_000));
    let (status, body) = raw_request(&api.base, big_headers.as_bytes());
    assert_eq!((status, body["error"]["code"].as_str()), (431, Some("headers_too_large")), "{body}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    let (status, body) = raw_request(&api.base, many_headers.as_bytes());
    assert_eq!((status, body["error"]["code"].as_str()), (431, Some("headers_too_large")), "{body}");
    let bad_path = format!(
        "GET /api/v1/instances/%FF%FE HTTP/1.1\r\nHost: x\r\nAuthorization: bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw_request(&api.base, bad_path.as_bytes());
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_path")), "{body}");
    let bad_query = format!(
        "GET /api/v1/instances/ping/logs?limit=lots HTTP/1.1\r\nHost: x\r\nAuthorization: BEARER {token}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw_request(&api.base, bad_query.as_bytes());
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{body}");
    let lower = format!(
        "GET /api/v1/instances HTTP/1.1\r\nHost: x\r\nAuthorization: bearer {token}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_request(&api.base, lower.as_bytes()).0, 200, "the Bearer scheme is case-insensitive");

    // A user name cannot forge a log line or colour a terminal.
    let forged = "mallory\n2026-01-01T00:00:00.000000Z  INFO maubot: forged line\u{1b}[31m";
    let response = api
        .http
        .post(format!("{}/api/v1/login", api.base))
        .json(&json!({"username": forged, "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    daemon.wait_for_log("management API login failed", Duration::from_secs(10));
    let log = daemon.log();
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01T00:00:00")), "a forged line:\n{log}");
    assert!(!log.contains('\u{1b}') && log.contains("mallory\\n2026-01-01"), "{log}");

    // Tokens survive a restart until they expire...
    assert_eq!(daemon.stop().code(), Some(0));
    let mut daemon = env.spawn_run();
    api.wait_up(&mut daemon).await;
    assert_eq!(api.get("/api/v1/instances").await.0, 200, "a token from before the restart");
    // ...unless logout-all ends them all, for good.
    let (status, body) = api.post("/api/v1/logout-all").await;
    assert_eq!((status, &body["revoked"]), (200, &json!(true)), "{body}");
    assert_eq!(api.get("/api/v1/instances").await.0, 401);
    assert_eq!(daemon.stop().code(), Some(0));
    let mut daemon = env.spawn_run();
    api.wait_up(&mut daemon).await;
    assert_eq!(api.get("/api/v1/instances").await.0, 401, "revoked tokens stay revoked after a restart");
    api.login().await;
    assert_eq!(api.get("/api/v1/instances").await.0, 200);
    assert_eq!(daemon.stop().code(), Some(0));
}

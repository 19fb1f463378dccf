//! The bot host under operation: the management API, the instance state machine and supervisor, health,
//! metrics, rate limits honoured, and admin-room notifications, against the real Synapse.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::api::Api;
use crate::harness::bot::{ADMIN_PASSWORD, BotEnv, SECRET_KEY};
use crate::harness::client::TestUser;
use crate::harness::daemon::Daemon;
use crate::harness::proxy::{Mode, Proxy};
use crate::harness::synapse::synapse;
use matrix_sdk::Room;

const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Seconds since midnight (UTC, plus a day per day of month) of the timestamp in "ERROR · id · 2026-11-22T01:22:33.159Z".
fn alert_time_secs(notice: &str) -> f64 {
    let stamp = notice.lines().next().and_then(|l| l.rsplit(" · ").next()).unwrap_or_default();
    let parsed = (|| {
        let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
        let day: f64 = date.rsplit('-').next()?.parse().ok()?;
        let mut parts = time.split(':');
        let (h, m, s): (f64, f64, f64) =
            (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        Some(day * 86_400.0 + h * 3600.0 + m * 60.0 + s)
    })();
    parsed.unwrap_or_else(|| panic!("no timestamp in the first line of {notice:?}"))
}

/// Bots `a` and `b` running, the API logged in, and a person's room both bots joined.
struct TwoBots {
    a: String,
    b: String,
    person: TestUser,
    room: Room,
    daemon: Daemon,
    api: Api,
}

/// Starts the daemon of a set-up `env` with bots `a` and `b`, logs in to the API, and waits until both bots
/// joined a room a new person (`person_prefix`) created and invited them to.
async fn start_two_bots(env: &BotEnv, person_prefix: &str) -> TwoBots {
    let (a, b) = (env.user_id("a"), env.user_id("b"));
    let person = TestUser::new(synapse(), person_prefix).await;
    let room = person.create_room(false, &[&a, &b]).await;
    let mut daemon = env.spawn_run();
    let mut api = Api::new(env);
    api.wait_up(&mut daemon).await;
    api.login().await;
    person.wait_for_join(&room, &a).await;
    person.wait_for_join(&room, &b).await;
    TwoBots { a, b, person, room, daemon, api }
}

fn sign(claims: &Value, key: &str) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_authenticates_and_always_answers_json() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.enable_api_login();
    env.setup();
    let mut daemon = env.spawn_run();
    let mut api = Api::new(&env);
    api.wait_up(&mut daemon).await;

    let (status, body) = api.get("/health").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = api.get("/api/v1/version").await;
    assert_eq!(status, 200);
    assert_eq!(body["schema_version"], maubot::state::db::SCHEMA_VERSION);

    // No token, a tampered token, an expired token, a token signed with another key: the same 401.
    let (status, unauthenticated) = api.get("/api/v1/instances").await;
    assert_eq!((status, error_code(&unauthenticated)), (401, "unauthorized"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for token in [
        sign(&json!({"sub": "admin", "iat": now - 7200, "exp": now - 3600}), SECRET_KEY),
        sign(&json!({"sub": "admin", "iat": now, "exp": now + 3600}), "some other key of thirty-two bytes"),
        sign(&json!({"sub": "mallory", "iat": now, "exp": now + 3600}), SECRET_KEY),
        "not-a-token".to_owned(),
    ] {
        api.token = Some(token);
        let (status, body) = api.get("/api/v1/instances").await;
        assert_eq!((status, &body), (401, &unauthenticated), "no detail leaks");
    }
    let epoch: String = rusqlite::Connection::open(env.database_path())
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'token_epoch'", [], |r| r.get(0))
        .unwrap();
    api.token = Some(sign(&json!({"sub": "admin", "iat": now, "exp": now + 3600}), SECRET_KEY));
    assert_eq!(api.get("/api/v1/instances").await.0, 401, "a token of no epoch (as before logout-all existed)");
    api.token = Some(sign(&json!({"sub": "admin", "iat": now, "exp": now + 3600, "epoch": epoch}), SECRET_KEY));
    assert_eq!(api.get("/api/v1/instances").await.0, 200, "a valid token is accepted");
    api.token = None;

    // Wrong password and unknown user look the same.
    let login = |body: Value| {
        let http = api.http.clone();
        let url = format!("{}/api/v1/login", api.base);
        async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let wrong = login(json!({"username": "admin", "password": "wrong"})).await;
    let unknown = login(json!({"username": "nobody", "password": ADMIN_PASSWORD})).await;
    assert_eq!(wrong.0, 401);
    assert_eq!(wrong, unknown);
    assert!(!wrong.1.to_string().contains("admin"), "{}", wrong.1);

    // Bad JSON, a missing content type, an oversize body, unknown paths and methods: JSON errors with codes.
    let raw = |body: Vec<u8>, json_type: bool| {
        let http = api.http.clone();
        let url = format!("{}/api/v1/login", api.base);
        async move {
            let mut request = http.post(url).body(body);
            if json_type {
                request = request.header("content-type", "application/json");
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = raw(b"{not json".to_vec(), true).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_json"));
    let (status, body) = raw(br#"{"username":"admin"}"#.to_vec(), true).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"), "{body}");
    let (status, body) = raw(br#"{"username":"a","password":"b"}"#.to_vec(), false).await;
    assert_eq!((status, error_code(&body)), (415, "unsupported_media_type"));
    let huge = format!(r#"{{"username":"admin","password":"{}"}}"#, "x".repeat(64 * 1024));
    let (status, body) = raw(huge.into_bytes(), true).await;
    assert_eq!((status, error_code(&body)), (413, "body_too_large"));
    let (status, body) = api.get("/api/v1/nothing-here").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = api.request(reqwest::Method::DELETE, "/api/v1/version").await;
    assert_eq!((status, error_code(&body)), (405, "method_not_allowed"));

    // Logged in: instances, details, logs.
    api.login().await;
    let (status, body) = api.get("/api/v1/instances").await;
    assert_eq!(status, 200);
    assert_eq!(body["instances"][0]["id"], "ping");
    api.wait_state("ping", &["running"], Duration::from_secs(30)).await;
    let (status, body) = api.get("/api/v1/instances/ping/logs?limit=50").await;
    assert_eq!(status, 200);
    assert!(
        body["lines"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("session restored")),
        "{body}"
    );
    let (status, body) = api.post("/api/v1/instances/ping/explode").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = api.get("/api/v1/instances/nope").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));

    // The served API description covers every route.
    let spec = api.http.get(format!("{}/api/v1/openapi.yaml", api.base)).send().await.unwrap().text().await.unwrap();
    for path in [
        "/health:",
        "/metrics:",
        "/api/v1/version:",
        "/api/v1/health:",
        "/api/v1/login:",
        "/api/v1/logout-all:",
        "/api/v1/instances:",
        "/api/v1/instances/{id}:",
        "/api/v1/instances/{id}/logs:",
        "/api/v1/instances/{id}/{action}:",
        "/_plugins/{id}/{path}:",
    ] {
        assert!(spec.contains(path), "the OpenAPI description lacks {path}");
    }
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_controls_persist_and_the_config_stays_authoritative() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["a", "b"]).await;
    env.enable_api_login();
    env.setup();
    let TwoBots { a, b, person, room, mut daemon, api } = start_two_bots(&env, "oscar-").await;

    // stop: a stops answering, b goes on.
    let (status, view) = api.post("/api/v1/instances/a/stop").await;
    assert_eq!((status, view["state"].as_str()), (200, Some("stopped")), "{view}");
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &b, REPLY_TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(person.replies_to(&ping, &a).is_empty(), "a stopped bot does not answer");
    let metrics = api.metrics().await;
    assert!(metrics.contains("maubot_instance_state{instance=\"a\",state=\"stopped\"} 1"), "{metrics}");
    assert!(metrics.contains("maubot_commands_answered_total{instance=\"b\"} 1"), "{metrics}");
    assert!(!metrics.contains("maubot_events_handled_total{instance=\"b\"} 0"), "{metrics}");
    for gauge in ["maubot_resident_memory_bytes", "maubot_heap_in_use_bytes", "maubot_sqlite_memory_bytes"] {
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(gauge).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {gauge}:\n{metrics}"));
        assert!(value > 0, "{gauge} is 0");
    }

    // disable b; both changes survive a restart of the daemon.
    let (status, view) = api.post("/api/v1/instances/b/disable").await;
    assert_eq!((status, view["state"].as_str()), (200, Some("configured")));
    let (status, body) = api.post("/api/v1/instances/b/start").await;
    assert_eq!((status, error_code(&body)), (409, "disabled"));
    assert_eq!(daemon.stop().code(), Some(0));
    let mut daemon = env.spawn_run();
    api.wait_up(&mut daemon).await;
    assert_eq!(api.instance("a").await["state"], "stopped");
    assert_eq!(api.instance("b").await["state"], "configured");

    // start and enable bring them back.
    let (status, _) = api.post("/api/v1/instances/a/start").await;
    assert_eq!(status, 200);
    let (status, _) = api.post("/api/v1/instances/b/enable").await;
    assert_eq!(status, 200);
    api.wait_state("a", &["running"], Duration::from_secs(30)).await;
    api.wait_state("b", &["running"], Duration::from_secs(30)).await;
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &a, REPLY_TIMEOUT).await;
    person.wait_for_reply(&ping, &b, REPLY_TIMEOUT).await;
    let (status, view) = api.post("/api/v1/instances/a/restart").await;
    assert_eq!(status, 200, "{view}");
    api.wait_state("a", &["running"], Duration::from_secs(30)).await;

    // A run-time disable lasts only while the config still says what it said: changing `enabled` in the config
    // makes the config authoritative again.
    let (status, _) = api.post("/api/v1/instances/b/disable").await;
    assert_eq!(status, 200);
    assert_eq!(daemon.stop().code(), Some(0));
    env.instances.iter_mut().find(|i| i.id == "b").unwrap().extra.push("enabled: false".into());
    env.write_config();
    let mut daemon = env.spawn_run();
    api.wait_up(&mut daemon).await;
    assert_eq!(api.instance("b").await["state"], "configured", "config says disabled");
    assert_eq!(daemon.stop().code(), Some(0));
    env.instances.iter_mut().find(|i| i.id == "b").unwrap().extra.retain(|l| l != "enabled: false");
    env.write_config();
    let mut daemon = env.spawn_run();
    api.wait_up(&mut daemon).await;
    api.wait_state("b", &["running"], Duration::from_secs(30)).await;
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_restarts_with_backoff_while_the_other_keeps_answering() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let mut env = BotEnv::with_ping_bots(synapse, &["a", "b"]).await;
    env.extra_homeservers.push(("proxied".into(), proxy.url.clone()));
    env.instances[0].extra.push("homeserver: proxied".into());
    env.instances[1].extra.push("homeserver: local".into());
    env.host_extra.push("error_window_secs: 5".into());
    env.enable_api_login();
    env.setup();
    let TwoBots { a, b, person, room, mut daemon, api } = start_two_bots(&env, "peggy-").await;
    let (_, health) = api.get("/api/v1/health").await;
    assert_eq!(health["status"], "healthy", "{health}");

    // The path a's homeserver serves /sync on is blocked: a fails and is restarted, with growing pauses.
    proxy.set(Mode::BlockSync);
    let failed = api.wait_state("a", &["restarting"], Duration::from_secs(90)).await;
    assert!(failed["last_error"].as_str().unwrap_or_default().contains("sync failed"), "{failed}");
    // Its first pause is about a second: read health until it catches a (or a later pause) in the act.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, health) = api.get("/api/v1/health").await;
        assert_eq!((status, health["status"].as_str()), (200, Some("degraded")), "{health}");
        if health["failing"] == json!(["a"]) {
            break;
        }
        assert!(Instant::now() < deadline, "a never listed as failing: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Meanwhile b answers.
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &b, REPLY_TIMEOUT).await;

    // Restarts happen, each after a longer pause than the one before.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut delays: Vec<(u64, u64)> = Vec::new();
    while delays.len() < 3 {
        let view = api.instance("a").await;
        if view["state"] == "restarting" {
            let round = view["restarts"].as_u64().unwrap();
            let delay = view["restart_delay_ms"].as_u64().unwrap();
            if delays.last().is_none_or(|(r, _)| *r != round) {
                delays.push((round, delay));
            }
        }
        assert!(Instant::now() < deadline, "not enough restarts: {delays:?}\nlog:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delays.windows(2).all(|w| w[1].1 > w[0].1), "the pause before each restart grows: {delays:?}");
    let metrics = api.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("maubot_restarts_total{instance=\"a\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Unblocked: a comes back, and health turns healthy again once the errors age out.
    proxy.set(Mode::Pass);
    api.wait_state("a", &["running"], Duration::from_secs(120)).await;
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &a, REPLY_TIMEOUT).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, health) = api.get("/api/v1/health").await;
        if health["status"] == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "health did not recover: {health}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_login_fails_one_bot_and_not_the_other() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["a", "b"]).await;
    env.enable_api_login();
    env.setup();
    let TwoBots { a: _, b, person, room, mut daemon, api } = start_two_bots(&env, "rita-").await;

    // Someone logs a's device out (a password change does the same): its access token stops working.
    let token = env.access_token("a");
    let logout = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/logout", synapse.url))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 200);

    let failed = api.wait_state("a", &["failed"], Duration::from_secs(90)).await;
    let why = failed["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("rejected the access token") && why.contains("under a new instance id"), "{failed}");
    // Permanent: no restart is scheduled, and none happens.
    assert_eq!(failed["next_restart_in_secs"], Value::Null, "{failed}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let still = api.instance("a").await;
    assert_eq!((still["state"].as_str(), still["restarts"].as_u64()), (Some("failed"), Some(0)), "{still}");
    assert!(!daemon.log().contains(&token), "the token is not logged");
    let (_, health) = api.get("/api/v1/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &b, REPLY_TIMEOUT).await;
    assert_eq!(api.instance("b").await["state"], "running");
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_from_the_homeserver_are_honoured() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.homeserver_url = proxy.url.clone();
    env.write_config();
    env.setup();
    let mut daemon = env.spawn_run();
    daemon.wait_for_log("ready", Duration::from_secs(60));

    proxy.set(Mode::RateLimitSync(2000));
    let before = proxy.syncs();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let during = proxy.syncs() - before;
    // Waiting 2 s as asked allows about 4 requests in 7 s (one may have been under way); hammering would be
    // dozens.
    assert!(during <= 5, "{during} sync requests in 7 s despite retry_after_ms = 2000");
    assert!(during >= 1, "the bot keeps trying");
    proxy.set(Mode::Pass);
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_raised_while_the_host_starts_reach_the_admin_room_once_the_sending_bot_runs() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["herald"]).await;
    let admin = TestUser::new(synapse, "admin-").await;
    let herald = env.user_id("herald");
    let admin_room = admin.create_room(false, &[&herald]).await;
    env.top_extra.push(format!("notifications:\n  room: \"{}\"\n  instance: herald", admin_room.room_id()));
    env.write_config();
    env.setup();
    // A second bot is configured after setup: the host reports it (ERROR) as it starts, before herald's
    // session is restored.
    env.configure_ping_bot_not_set_up(synapse, "late").await;

    let mut daemon = env.spawn_run();
    let deadline = Instant::now() + Duration::from_secs(60);
    let notice = loop {
        let history = admin.room_history(&admin_room).await;
        if let Some(notice) = history.into_iter().find(|m| m.sender.as_str() == herald) {
            break notice.body;
        }
        assert!(Instant::now() < deadline, "no notice in the admin room; log:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(notice.starts_with("ERROR · late · "), "{notice}");
    assert!(
        notice.contains("configured but not set up") && notice.contains("maubot setup --add-instance late"),
        "{notice}"
    );
    assert!(!daemon.log().contains("notification not sent"), "{}", daemon.log());
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_the_admin_room_sanitised_and_deduplicated() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let mut env = BotEnv::with_ping_bots(synapse, &["failing", "herald"]).await;
    let admin = TestUser::new(synapse, "admin-").await;
    let herald = env.user_id("herald");
    let admin_room = admin.create_room(false, &[&herald]).await;
    env.top_extra.push(format!(
        "notifications:\n  room: \"{}\"\n  instance: herald\n  level: ERROR\n  dedupe_window_secs: 10",
        admin_room.room_id()
    ));
    env.extra_homeservers.push(("proxied".into(), proxy.url.clone()));
    env.instances[0].extra.push("homeserver: proxied".into());
    env.instances[1].extra.push("homeserver: local".into());
    env.enable_api_login();
    env.setup();
    let password = std::fs::read_to_string(env.credentials_dir().join("failing-password")).unwrap().trim().to_owned();
    let token = env.access_token("failing");

    let mut daemon = env.spawn_run();
    admin.wait_for_join(&admin_room, &herald).await;
    // The failing bot's homeserver answers /sync with an error that repeats secrets back.
    let planted =
        format!("upstream echoed password {password} and token {token} and syt_cGxhbnRlZA_AbCdEfGhIjKlMnOp_123456");
    proxy.set(Mode::Error400(planted.clone()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let notices = loop {
        let history = admin.room_history(&admin_room).await;
        let notices: Vec<(u64, String)> =
            history.into_iter().filter(|m| m.sender.as_str() == herald).map(|m| (m.ts_ms, m.body)).collect();
        let failed = notices.iter().filter(|(_, n)| n.contains("instance failed")).count();
        let summary = notices.iter().any(|(_, n)| n.contains("repeated") && n.contains("instance failed"));
        let critical = notices.iter().any(|(_, n)| n.starts_with("CRITICAL · failing") && n.contains("restart loop"));
        if failed >= 1 && summary && critical {
            break notices;
        }
        assert!(
            Instant::now() < deadline,
            "no notification, summary and CRITICAL; notices: {notices:#?}\nlog:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let all = notices.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join("\n---\n");
    for secret in [password.as_str(), token.as_str(), "syt_cGxhbnRlZA"] {
        assert!(!all.contains(secret), "a secret reached the admin room:\n{all}");
    }
    let first = &notices.iter().find(|(_, n)| n.contains("instance failed")).unwrap().1;
    assert!(first.starts_with("ERROR · failing · "), "{first}");
    assert!(first.contains("[redacted]") && first.contains("last log lines:"), "{first}");
    // What the server echoed is scrubbed everywhere it leaves the process: the log, the API, the status line.
    let mut api = Api::new(&env);
    api.login().await;
    let (_, logs) = api.get("/api/v1/instances/failing/logs").await;
    let (_, view) = api.get("/api/v1/instances/failing").await;
    let (_, health) = api.get("/api/v1/health").await;
    for (place, text) in [
        ("log", daemon.log()),
        ("API logs", logs.to_string()),
        ("API view", view.to_string()),
        ("health", health.to_string()),
    ] {
        for secret in [password.as_str(), token.as_str(), "syt_cGxhbnRlZA"] {
            assert!(!text.contains(secret), "a secret reached the {place}:\n{text}");
        }
    }
    assert!(view["last_error"].as_str().unwrap_or_default().contains("[redacted]"), "{view}");
    // Deduplicated: a full message for the same failure at most once per 10 s window (by the alert's own
    // timestamp), counts in between.
    let full: Vec<f64> = notices
        .iter()
        .filter(|(_, n)| n.lines().nth(1) == Some("instance failed; restarting it after a backoff"))
        .map(|(_, n)| alert_time_secs(n))
        .collect();
    for pair in full.windows(2) {
        assert!(pair[1] - pair[0] >= 9.9, "two full messages {:.3} s apart:\n{all}", pair[1] - pair[0]);
    }
    proxy.set(Mode::Pass);
    assert_eq!(daemon.stop().code(), Some(0));
}

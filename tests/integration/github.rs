//! The `github` plugin against a real Synapse: signed webhook deliveries (good, bad, missing signature), the
//! quiet defaults (a feature branch, a comment, a bot's pull request are not posted), a path filter into an
//! encrypted room, a digest of a burst of label changes, a redelivery recognised after a restart, a delivery
//! accepted just before a `kill -9` posted once after it, and the public listener (over TLS) serving plugins'
//! routes only.
//! What is asserted is what a person in the rooms sees.

use std::time::Duration;

use matrix_sdk::Room;
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::{Value, json};

use crate::harness::bot::BotEnv;
use crate::harness::client::{Seen, TestUser};
use crate::harness::eventually;
use crate::harness::pki::Pki;
use crate::harness::synapse::{free_port, synapse};

const TIMEOUT: Duration = Duration::from_secs(60);
const SECRET: &str = "a webhook secret only GitHub and the bot know";

/// Sends a delivery to `url` signed with `secret` (or unsigned); the answer's status and JSON.
async fn deliver(
    http: &reqwest::Client,
    url: &str,
    secret: Option<&str>,
    event: &str,
    id: &str,
    payload: &Value,
) -> (u16, Value) {
    let body = serde_json::to_vec(payload).unwrap();
    post_raw(http, url, secret, event, id, body).await
}

async fn post_raw(
    http: &reqwest::Client,
    url: &str,
    secret: Option<&str>,
    event: &str,
    id: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", id)
        .header("x-github-hook-id", "4242");
    if let Some(secret) = secret {
        request =
            request.header("x-hub-signature-256", maubot::plugin::github::delivery::sign(secret.as_bytes(), &body));
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn repository(name: &str) -> Value {
    json!({"full_name": name, "html_url": format!("https://github.com/{name}"), "default_branch": "main"})
}

fn push(repo: &str, branch: &str, files: &[&str], commits: usize) -> Value {
    let commits: Vec<Value> = (0..commits)
        .map(|i| {
            json!({"id": format!("{i}{}", "f".repeat(39)), "message": format!("Change {i}\n\nWhy it changed"),
                   "url": format!("https://github.com/{repo}/commit/{i}"), "author": {"name": "Alice Example"},
                   "added": files, "modified": [], "removed": []})
        })
        .collect();
    json!({"ref": format!("refs/heads/{branch}"), "compare": format!("https://github.com/{repo}/compare/a...b"),
           "created": false, "deleted": false, "forced": false, "commits": commits,
           "repository": repository(repo), "sender": {"login": "alice", "type": "User"}})
}

fn issue(repo: &str, action: &str, number: u64, extra: Value) -> Value {
    let mut payload = json!({"action": action, "repository": repository(repo), "sender": {"login": "bob", "type": "User"},
                             "issue": {"number": number, "title": "The parser breaks on emoji",
                                       "html_url": format!("https://github.com/{repo}/issues/{number}"),
                                       "labels": [], "body": "Steps to reproduce: paste 🎉."}});
    if let Value::Object(extra) = extra {
        payload.as_object_mut().unwrap().extend(extra);
    }
    payload
}

/// The bot's messages in `room`, as the person saw them.
fn posted(person: &TestUser, bot: &str, room: &Room) -> Vec<Seen> {
    person.messages_from(bot).into_iter().filter(|s| s.room_id == room.room_id()).collect()
}

/// Waits until the bot posted `count` messages in `room`; returns them.
async fn wait_posted(person: &TestUser, bot: &str, room: &Room, count: usize) -> Vec<Seen> {
    eventually(TIMEOUT, &format!("{count} messages from the bot in {}", room.room_id()), || {
        let seen = posted(person, bot, room);
        async move { (seen.len() >= count).then_some(seen) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_deliveries_are_verified_filtered_digested_and_posted_once_across_a_crash() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["gh"]).await;
    let bot = env.user_id("gh");
    let person = TestUser::new(synapse, "gina-").await;
    let room = person.create_room(false, &[&bot]).await;
    let docs = person.create_room(true, &[&bot]).await;
    let tracker = person.create_room(false, &[&bot]).await;
    env.write_credential("github-webhook", SECRET);
    // The public listener with a certificate of its own (GitHub would reach it over TLS).
    let pki = Pki::new("github test CA");
    let (certificate, key) = pki.issue("bots.test", &["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::write(env.dir.path().join("public.pem"), &certificate).unwrap();
    env.write_credential("public-key", &key);
    let public_port = free_port();
    env.server_extra.push(format!(
        "public_listener: {{address: 127.0.0.1, port: {public_port}, tls: {{certificate: {}, private_key: {{credential: public-key}}}}}}",
        env.dir.path().join("public.pem").display()
    ));
    env.plugins.insert(
        "gh".into(),
        (
            "github".into(),
            vec![
                "secret: {credential: github-webhook}".into(),
                "digest_secs: 2".into(),
                "routes:".into(),
                format!("  - {{repository: octo/app, room: \"{}\"}}", room.room_id()),
                format!("  - {{repository: \"octo/docs-*\", room: \"{}\", paths: [\"docs/**\"]}}", docs.room_id()),
                format!(
                    "  - {{repository: octo/tracker, room: \"{}\", events: [issues.opened, issues.labeled], exclude_labels: [spam]}}",
                    tracker.room_id()
                ),
            ],
        ),
    );
    env.write_config();
    env.setup();
    let mut daemon = env.spawn_run();
    for r in [&room, &docs, &tracker] {
        person.wait_for_join(r, &bot).await;
    }
    daemon.wait_for_log("serving plugins' routes on the public listener", TIMEOUT);
    let hook = format!("{}/_plugins/gh/webhook", env.api_url());
    let public_hook = format!("https://localhost:{public_port}/_plugins/gh/webhook");
    let (http, https) = (reqwest::Client::new(), pki.client(None));

    // Unsigned, or signed with another secret: 401, nothing posted.
    let main_push = push("octo/app", "main", &["src/lib.rs"], 3);
    let (status, answer) = deliver(&http, &hook, None, "push", "d-unsigned", &main_push).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("missing_signature")), "{answer}");
    let (status, answer) = deliver(&http, &hook, Some("guessed"), "push", "d-forged", &main_push).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("bad_signature")), "{answer}");
    // Signed but not JSON: 400 naming the problem.
    let (status, answer) = post_raw(&http, &hook, Some(SECRET), "push", "d-broken", b"{\"ref\": ".to_vec()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("not valid JSON"), "{answer}");
    // GitHub's ping when the hook is made.
    let (status, answer) =
        deliver(&http, &hook, Some(SECRET), "ping", "d-ping", &json!({"zen": "Design for failure.", "hook_id": 4242}))
            .await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("pong")), "{answer}");

    // A push to the default branch, through the public listener: queued, and posted.
    let (status, answer) = deliver(&https, &public_hook, Some(SECRET), "push", "d-push-main", &main_push).await;
    assert_eq!(
        (status, answer["status"].as_str(), answer["notices"].as_u64()),
        (202, Some("queued"), Some(1)),
        "{answer}"
    );
    // What the quiet default leaves out: a feature branch, a comment, a bot's pull request, an unknown event.
    let quiet: [(&str, Value, &str); 4] = [
        ("push", push("octo/app", "feature/x", &["src/lib.rs"], 1), "not the default branch"),
        (
            "issue_comment",
            issue(
                "octo/app",
                "created",
                5,
                json!({"comment": {"body": "+1", "html_url": "https://github.com/octo/app/issues/5#c1"}}),
            ),
            "not among the route's events",
        ),
        (
            "pull_request",
            json!({"action": "opened", "repository": repository("octo/app"),
            "sender": {"login": "dependabot[bot]", "type": "Bot"},
            "pull_request": {"number": 9, "title": "Bump serde", "html_url": "https://github.com/octo/app/pull/9", "labels": []}}),
            "is a bot",
        ),
        (
            "sponsorship",
            json!({"action": "created", "repository": repository("octo/app"), "sender": {"login": "bob"}}),
            "not among the route's events",
        ),
    ];
    for (i, (event, payload, why)) in quiet.iter().enumerate() {
        let (status, answer) = deliver(&http, &hook, Some(SECRET), event, &format!("d-quiet-{i}"), payload).await;
        assert_eq!((status, answer["status"].as_str()), (202, Some("ignored")), "{event}: {answer}");
        assert!(answer["reason"].as_str().unwrap().contains(why), "{event}: {answer}");
    }
    // The docs route: a push that changes no docs is not posted; one that does is, into the encrypted room.
    let (status, answer) =
        deliver(&http, &hook, Some(SECRET), "push", "d-docs-src", &push("octo/docs-site", "main", &["src/x.rs"], 1))
            .await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("ignored")), "{answer}");
    let (status, _) = deliver(
        &http,
        &hook,
        Some(SECRET),
        "push",
        "d-docs-md",
        &push("octo/docs-site", "main", &["docs/guide/setup.md"], 1),
    )
    .await;
    assert_eq!(status, 202);
    // A burst of label changes on one issue: one message; a label the route excludes keeps its delivery out.
    for (i, label) in ["bug", "parser", "help wanted"].iter().enumerate() {
        let payload = issue("octo/tracker", "labeled", 7, json!({"label": {"name": label}}));
        let (status, answer) = deliver(&http, &hook, Some(SECRET), "issues", &format!("d-label-{i}"), &payload).await;
        assert_eq!((status, answer["status"].as_str()), (202, Some("queued")), "{answer}");
    }
    let mut spam = issue("octo/tracker", "opened", 8, json!({}));
    spam["issue"]["labels"] = json!([{"name": "Spam"}]);
    let (status, answer) = deliver(&http, &hook, Some(SECRET), "issues", "d-spam", &spam).await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("ignored")), "{answer}");

    let main = wait_posted(&person, &bot, &room, 1).await;
    assert_eq!(
        main[0].body,
        "[octo/app] alice pushed 3 commits to main <https://github.com/octo/app/compare/a...b>\n\
         • 0ffffff Change 0 (Alice Example)\n• 1ffffff Change 1 (Alice Example)\n• 2ffffff Change 2 (Alice Example)"
    );
    let html = main[0].html.as_deref().unwrap_or_default();
    assert!(html.contains("<a href=\"https://github.com/octo/app/compare/a...b\">pushed 3 commits</a>"), "{html}");
    // A notice full of links asks clients not to preview them.
    let raw: Value =
        serde_json::from_str(room.event(&main[0].event_id, None).await.unwrap().raw().json().get()).unwrap();
    assert_eq!(raw["content"]["msgtype"], "m.notice", "{raw}");
    assert_eq!(raw["content"]["uk.half-shot.unstable.show_url_previews"], false, "{raw}");
    assert_eq!(raw["content"]["com.beeper.linkpreviews"], json!([]), "{raw}");
    let posted_docs = wait_posted(&person, &bot, &docs, 1).await;
    assert!(posted_docs[0].encrypted, "the docs room is encrypted, and so is the notice");
    assert!(
        posted_docs[0].body.starts_with("[octo/docs-site] alice pushed 1 commit to main"),
        "{}",
        posted_docs[0].body
    );
    let labels = wait_posted(&person, &bot, &tracker, 1).await;
    assert_eq!(
        labels[0].body,
        "[octo/tracker] issue #7: The parser breaks on emoji <https://github.com/octo/tracker/issues/7>\n\
         • bob labeled it with bug\n• bob labeled it with parser\n• bob labeled it with help wanted"
    );

    // A redelivery (GitHub's "Redeliver" button) is recognised.
    let (status, answer) = deliver(&http, &hook, Some(SECRET), "push", "d-push-main", &main_push).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("duplicate")), "{answer}");

    // Accepted, then the daemon is killed inside the digest window: posted once after the restart.
    let opened = issue("octo/app", "opened", 12, json!({}));
    let (status, answer) = deliver(&http, &hook, Some(SECRET), "issues", "d-before-crash", &opened).await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("queued")), "{answer}");
    daemon.crash();
    let mut daemon = env.spawn_run();
    let main = wait_posted(&person, &bot, &room, 2).await;
    assert_eq!(
        main[1].body,
        "[octo/app] bob opened issue #12: The parser breaks on emoji <https://github.com/octo/app/issues/12>\n\
         • > Steps to reproduce: paste 🎉."
    );
    // After the restart, the first push's redelivery is still recognised.
    let (status, answer) = eventually(TIMEOUT, "the webhook to answer after the restart", || async {
        let (status, answer) = deliver(&http, &hook, Some(SECRET), "push", "d-push-main", &main_push).await;
        (status != 503).then_some((status, answer))
    })
    .await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("duplicate")), "{answer}");
    // One more, to know that everything before it had its chance to arrive: then count.
    let release = json!({"action": "published", "repository": repository("octo/app"), "sender": {"login": "carol", "type": "User"},
                         "release": {"tag_name": "v1.0.0", "name": "v1.0.0", "html_url": "https://github.com/octo/app/releases/v1.0.0", "body": ""}});
    let (status, _) = deliver(&http, &hook, Some(SECRET), "release", "d-release", &release).await;
    assert_eq!(status, 202);
    let main = wait_posted(&person, &bot, &room, 3).await;
    assert_eq!(main[2].body, "[octo/app] carol published release v1.0.0 <https://github.com/octo/app/releases/v1.0.0>");
    let history: Vec<String> =
        person.room_history(&room).await.into_iter().filter(|s| s.sender.as_str() == bot).map(|s| s.body).collect();
    assert_eq!(history.len(), 3, "each delivery posted once: {history:#?}");
    assert_eq!(person.room_history(&tracker).await.iter().filter(|s| s.sender.as_str() == bot).count(), 1);

    // The public listener serves plugins' routes and nothing else.
    let response = https.get(format!("https://localhost:{public_port}/api/v1/instances")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    daemon.stop();
}

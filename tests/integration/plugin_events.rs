//! The events a plugin subscribes to, and the actions beyond replies, end to end against the real Synapse: a
//! probe program (`exec`) subscribes to every event type and says in the room what it saw; a person's client
//! makes each kind of event happen and reads what the bot said and did.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use matrix_sdk::Room;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::{OwnedEventId, UserId};
use serde_json::{Value, json};

use crate::harness::bot::BotEnv;
use crate::harness::client::TestUser;
use crate::harness::eventually;
use crate::harness::synapse::synapse;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Subscribes to everything; for each event, a notice in its room saying what it saw. `!edit ID TEXT` edits the
/// bot's message ID, `!redact ID` redacts it.
const PROBE: &str = r#"#!/usr/bin/env python3
import json, sys
def say(m):
    print(json.dumps(m), flush=True)
json.loads(sys.stdin.readline())
say({"type": "ready", "subscribe": ["notice", "edit", "reaction", "membership", "state", "invite", "typing"]})
for line in sys.stdin:
    m = json.loads(line)
    t = m["type"]
    if t == "shutdown":
        break
    desc = None
    if t == "message" and m["body"].startswith("!edit "):
        _, target, text = m["body"].split(" ", 2)
        say({"type": "edit", "to": target, "body": text, "notice": True})
    elif t == "message" and m["body"].startswith("!redact "):
        say({"type": "redact", "to": m["body"].split(" ")[1], "reason": "asked to"})
    elif t == "message":
        desc = f"{m['msgtype']} {m['body']}"
        if "replaces" in m:
            desc = f"edit of {m['replaces']}: {m['body']}"
        if "reply_to" in m:
            desc += f" (reply to {m['reply_to']})"
        if "thread" in m:
            desc += f" (in thread {m['thread']})"
        desc += f" encrypted={json.dumps(m['encrypted'])} ts={json.dumps(m['ts'] > 0)}"
    elif t == "reaction":
        desc = f"reaction {m['reaction']} to {m['to']}"
    elif t == "membership":
        desc = f"membership {m['user_id']} {m.get('previous')}->{m['membership']} by {m['by']}"
        if "reason" in m:
            desc += f" because {m['reason']}"
    elif t == "state":
        desc = f"state {m['event_type']} {json.dumps(m['content'], sort_keys=True)}"
    elif t == "invite":
        desc = f"invite from {m['sender']} joined={json.dumps(m['joined'])}"
    if desc:
        say({"type": "send", "room_id": m["room_id"], "body": "saw " + desc, "notice": True})
    say({"type": "done", "to": m["id"]})
"#;

/// The room's events as the homeserver has them (decrypted where the person has the key), newest first.
async fn raw_events(room: &Room) -> Vec<Value> {
    let mut options = MessagesOptions::backward();
    options.limit = 200u32.into();
    let page = room.messages(options).await.unwrap();
    page.chunk.iter().filter_map(|e| serde_json::from_str(e.raw().json().get()).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_kind_reaches_a_subscribed_plugin_and_edits_and_redactions_are_carried_out() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["probe"]).await;
    let bot = env.user_id("probe");
    let program = env.write_program("probe.py", PROBE);
    env.use_exec("probe", &program, &[]);
    env.setup();
    let mut daemon = env.spawn_run();
    daemon.wait_for_log("the program is ready", TIMEOUT);
    assert!(daemon.log().contains("unsupported=[\"typing\"]"), "an unknown subscription is named:\n{}", daemon.log());

    let person = TestUser::new(synapse, "pia-").await;
    let other = TestUser::new(synapse, "oto-").await;
    let room = person.create_room(true, &[&bot]).await;
    person.wait_for_join(&room, &bot).await;
    let saw = |line: String| {
        let (bot, person, daemon) = (bot.clone(), &person, &daemon);
        async move {
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                if let Some(found) = person.messages_from(&bot).into_iter().find(|m| m.body == line) {
                    return found;
                }
                let said: Vec<String> =
                    person.seen.lock().unwrap().iter().map(|m| format!("{}: {}", m.sender, m.body)).collect();
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the bot did not say {line:?}; it said {said:#?}\n{}",
                    daemon.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // The invite, after the host joined on it.
    saw(format!("saw invite from {} joined=true", person.user_id())).await;

    let hello = person.send_text(&room, "hello").await;
    saw("saw m.text hello encrypted=true ts=true".into()).await;
    room.send_raw("m.room.message", json!({"msgtype": "m.notice", "body": "fyi"})).await.unwrap();
    saw("saw m.notice fyi encrypted=true ts=true".into()).await;
    let reply = json!({"msgtype": "m.text", "body": "re", "m.relates_to": {"m.in_reply_to": {"event_id": hello}}});
    room.send_raw("m.room.message", reply).await.unwrap();
    saw(format!("saw m.text re (reply to {hello}) encrypted=true ts=true")).await;
    let in_thread = json!({"msgtype": "m.text", "body": "threaded",
        "m.relates_to": {"rel_type": "m.thread", "event_id": hello, "is_falling_back": true,
                         "m.in_reply_to": {"event_id": hello}}});
    room.send_raw("m.room.message", in_thread).await.unwrap();
    saw(format!("saw m.text threaded (in thread {hello}) encrypted=true ts=true")).await;
    let edit = json!({"msgtype": "m.text", "body": "* hello again",
        "m.new_content": {"msgtype": "m.text", "body": "hello again"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": hello}});
    room.send_raw("m.room.message", edit).await.unwrap();
    saw(format!("saw edit of {hello}: hello again encrypted=true ts=true")).await;
    let reaction = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": hello, "key": "👍"}});
    room.send_raw("m.reaction", reaction).await.unwrap();
    saw(format!("saw reaction 👍 to {hello}")).await;
    room.send_state_event_raw("m.room.topic", "", json!({"topic": "what we talk about"})).await.unwrap();
    saw("saw state m.room.topic {\"topic\": \"what we talk about\"}".into()).await;

    // Membership, with who made each change.
    let other_id = UserId::parse(other.user_id()).unwrap();
    room.invite_user_by_id(&other_id).await.unwrap();
    saw(format!("saw membership {other_id} None->invite by other")).await;
    other.client.join_room_by_id(room.room_id()).await.unwrap();
    saw(format!("saw membership {other_id} invite->join by member")).await;
    room.kick_user(&other_id, Some("testing")).await.unwrap();
    saw(format!("saw membership {other_id} join->leave by other because testing")).await;

    // Actions beyond replies: an edit of the bot's own message, and a redaction.
    let said = saw(format!("saw reaction 👍 to {hello}")).await.event_id;
    person.send_text(&room, &format!("!edit {said} edited by request")).await;
    let replacement = eventually(TIMEOUT, "the bot's edit", || {
        let (room, said, bot) = (room.clone(), said.clone(), bot.clone());
        async move {
            raw_events(&room).await.into_iter().find(|e| {
                e["sender"] == bot.as_str()
                    && e.pointer("/content/m.relates_to/rel_type") == Some(&json!("m.replace"))
                    && e.pointer("/content/m.relates_to/event_id") == Some(&json!(said.as_str()))
            })
        }
    })
    .await;
    assert_eq!(replacement["content"]["m.new_content"]["body"], "edited by request", "{replacement}");
    assert_eq!(replacement["content"]["m.new_content"]["msgtype"], "m.notice", "{replacement}");
    person.send_text(&room, &format!("!redact {said}")).await;
    let redacted: OwnedEventId = said.clone();
    eventually(TIMEOUT, "the bot's message to be redacted", || {
        let (room, redacted) = (room.clone(), redacted.clone());
        async move {
            let event = room.event(&redacted, None).await.ok()?;
            let json: Value = serde_json::from_str(event.raw().json().get()).ok()?;
            json.pointer("/unsigned/redacted_because").is_some().then_some(())
        }
    })
    .await;
    // The bot's own notices are never handed back to it (it would talk to itself), so each event was said once.
    let lines = person.messages_from(&bot);
    let hello_lines = lines.iter().filter(|m| m.body == "saw m.text hello encrypted=true ts=true").count();
    assert_eq!(hello_lines, 1, "{lines:?}");
    assert!(!lines.iter().any(|m| m.body.starts_with("saw m.notice saw")), "{lines:?}");
    // Including what it said about the invite, right after joining: the room is encrypted, so is every word.
    assert!(lines.iter().all(|m| m.encrypted), "{lines:?}");
    assert_eq!(daemon.stop().code(), Some(0));
    // The host made the plugin's private directory; no plugin database, as this plugin opened none.
    let instance = env.state_dir().join("instances/probe");
    assert_eq!(std::fs::metadata(instance.join("data")).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(!instance.join("plugin.db").exists());
}

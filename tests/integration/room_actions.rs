//! Room actions that check before they act, calls to the host's view of Matrix, and a file posted from the
//! plugin's private directory, end to end against the real Synapse: a probe program (`exec`) turns commands
//! into actions and calls; a person's client reads the room's state from the homeserver.

use std::time::Duration;

use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::ruma::api::client::state::get_state_event_for_key;
use matrix_sdk::ruma::events::room::message::{MessageType, RoomMessageEventContent};
use matrix_sdk::ruma::{Int, OwnedRoomAliasId, RoomId, UserId};
use serde_json::Value;

use crate::harness::bot::BotEnv;
use crate::harness::client::TestUser;
use crate::harness::eventually;
use crate::harness::synapse::synapse;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `!topic TEXT`, `!invite|kick|ban|unban USER`, `!power USER N`, `!create ALIAS`: actions. `!members`,
/// `!version`, `!ensure ALIAS`, `!nosuch`: calls, whose results it replies with. `!file`: writes a file in its
/// data directory and posts it (removed afterwards). Membership changes made by the bot it says in the room;
/// invites the host declined it logs.
const PROBE: &str = r#"#!/usr/bin/env python3
import json, os, sys
def say(m):
    print(json.dumps(m), flush=True)
calls = 0
def call(method, params):
    global calls
    calls += 1
    cid = f"c{calls}"
    say({"type": "call", "id": cid, "method": method, "params": params})
    for line in sys.stdin:
        m = json.loads(line)
        if m["type"] == "result" and m["to"] == cid:
            return m
    sys.exit(1)
json.loads(sys.stdin.readline())
say({"type": "ready", "subscribe": ["membership", "invite"]})
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "shutdown":
        break
    if m["type"] == "invite":
        if not m["joined"]:
            say({"type": "log", "level": "info", "message": f"declined {m['room_id']} from {m['sender']}"})
        say({"type": "done", "to": m["id"]})
        continue
    if m["type"] == "membership":
        if m["by"] == "bot":
            said = f"saw {m['user_id']} {m['membership']} by bot"
            say({"type": "send", "room_id": m["room_id"], "body": said, "notice": True})
        say({"type": "done", "to": m["id"]})
        continue
    room, words = m["room_id"], m["body"].split(" ")
    cmd, args = words[0], words[1:]
    def reply(text):
        say({"type": "reply", "to": m["id"], "body": text, "notice": True})
    if cmd == "!topic":
        say({"type": "set_state", "room_id": room, "event_type": "m.room.topic",
             "content": {"topic": " ".join(args)}})
    elif cmd in ("!invite", "!kick", "!ban", "!unban"):
        say({"type": cmd[1:], "room_id": room, "user_id": args[0], "reason": "asked"})
    elif cmd == "!power":
        say({"type": "set_power_level", "room_id": room, "user_id": args[0], "level": int(args[1])})
    elif cmd == "!create":
        say({"type": "create_room", "room": {"alias": args[0], "name": "Ops", "encrypted": True,
             "invite": [m["sender"]]}})
    elif cmd == "!members":
        r = call("members", {"room_id": room})["value"]
        reply(" ".join(sorted(f"{x['user_id']}:{x['membership']}:{x['sender']}" for x in r)))
    elif cmd == "!version":
        r = call("room_version", {"room_id": room})["value"]
        reply(f"version {r['room_version']} creators {','.join(r['creators'])}")
    elif cmd == "!ensure":
        r = call("create_room", {"alias": args[0]})["value"]
        reply(f"ensured {r['room_id']} created={json.dumps(r['created'])}")
    elif cmd == "!nosuch":
        r = call("teleport", {})
        reply(f"error {r['error']['code']}")
    elif cmd == "!file":
        path = os.path.join(os.environ["MAUBOT_DATA_DIR"], "report.txt")
        with open(path, "w") as f:
            f.write("the weekly report\n")
        say({"type": "send_file", "room_id": room, "key": "report-1",
             "file": {"path": "report.txt", "mimetype": "text/plain", "remove": True}})
    say({"type": "done", "to": m["id"]})
"#;

/// A state event's content as the homeserver has it now.
async fn server_state(person: &TestUser, room: &RoomId, event_type: &str, state_key: &str) -> Option<Value> {
    let request = get_state_event_for_key::v3::Request::new(room.to_owned(), event_type.into(), state_key.into());
    let response = person.client.send(request).await.ok()?;
    serde_json::from_str(response.event_or_content.get()).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_actions_check_before_they_act_calls_answer_and_a_file_is_posted_encrypted() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["rooms"]).await;
    let bot = env.user_id("rooms");
    let program = env.write_program("rooms.py", PROBE);
    // Invites only from the person (`rut-`), not from the other user (`oda-`).
    env.allow_invites_from = vec!["@rut-*:*".into()];
    env.use_exec("rooms", &program, &[]);
    env.setup();
    let mut daemon = env.spawn_run();
    daemon.wait_for_log("the program is ready", TIMEOUT);

    let person = TestUser::new(synapse, "rut-").await;
    let other = TestUser::new(synapse, "oda-").await;
    let room = person.create_room(true, &[&bot]).await;
    person.wait_for_join(&room, &bot).await;
    let bot_id = UserId::parse(&bot).unwrap();
    room.update_power_levels(vec![(&bot_id, Int::from(100))]).await.unwrap();
    let room_id = room.room_id().to_owned();
    let state = |event_type: &'static str, state_key: String| {
        let (person, room_id) = (&person, room_id.clone());
        async move { server_state(person, &room_id, event_type, &state_key).await }
    };
    let unchanged =
        |daemon: &crate::harness::daemon::Daemon| daemon.log().matches("already as asked; nothing sent").count();

    // A state event, and the same again: the second finds the room as asked and sends nothing.
    person.send_text(&room, "!topic Deploys go here").await;
    eventually(TIMEOUT, "the topic the bot set", || async {
        (state("m.room.topic", String::new()).await?["topic"] == "Deploys go here").then_some(())
    })
    .await;
    person.send_text(&room, "!topic Deploys go here").await;
    daemon.wait_for_log("already as asked; nothing sent", TIMEOUT);
    assert_eq!(unchanged(&daemon), 1, "{}", daemon.log());

    // Membership: invite (twice: once sent), then kick, ban and unban the member who joined.
    let other_id = other.user_id();
    let membership = |user: String| {
        let state = &state;
        async move { state("m.room.member", user).await.and_then(|c| c["membership"].as_str().map(str::to_owned)) }
    };
    person.send_text(&room, &format!("!invite {other_id}")).await;
    eventually(TIMEOUT, "the invite", || async { (membership(other_id.clone()).await? == "invite").then_some(()) })
        .await;
    person.send_text(&room, &format!("!invite {other_id}")).await;
    eventually(TIMEOUT, "the second invite to change nothing", || async { (unchanged(&daemon) == 2).then_some(()) })
        .await;
    other.client.join_room_by_id(&room_id).await.unwrap();
    for (command, expected) in [("!kick", "leave"), ("!ban", "ban"), ("!unban", "leave")] {
        person.send_text(&room, &format!("{command} {other_id}")).await;
        eventually(TIMEOUT, &format!("{command} to make {other_id} {expected}"), || {
            let seen = membership(other_id.clone());
            async move {
                let now = seen.await?;
                (now == expected).then_some(())
            }
        })
        .await;
    }

    // The plugin heard of the bot's own changes as the bot's.
    for change in ["invite", "leave", "ban"] {
        let line = format!("saw {other_id} {change} by bot");
        eventually(TIMEOUT, &line, || {
            let found = person.messages_from(&bot).iter().any(|m| m.body == line);
            async move { found.then_some(()) }
        })
        .await;
    }

    // An invite from someone not allowed: declined, and the plugin hears of it first.
    let elsewhere = other.create_room(false, &[&bot]).await;
    daemon.wait_for_log(&format!("program: declined {} from {other_id}", elsewhere.room_id()), TIMEOUT);
    eventually(TIMEOUT, "the bot to decline the invite", || {
        let elsewhere = elsewhere.room_id().to_owned();
        let other = &other;
        let bot = bot.clone();
        async move {
            let member = server_state(other, &elsewhere, "m.room.member", &bot).await?;
            (member["membership"] == "leave").then_some(())
        }
    })
    .await;

    // Power levels, read and written whole.
    person.send_text(&room, &format!("!power {other_id} 50")).await;
    eventually(TIMEOUT, "the power level", || async {
        let levels = state("m.room.power_levels", String::new()).await?;
        (levels["users"][other_id.as_str()] == 50 && levels["users"][bot.as_str()] == 100).then_some(())
    })
    .await;

    // Calls: members with who made their last change, the room version, an unknown method.
    let reply_to = |command: String| {
        let (person, room, bot) = (&person, &room, &bot);
        async move {
            let asked = person.send_text(room, &command).await;
            person.wait_for_reply(&asked, bot, TIMEOUT).await.body
        }
    };
    let members = reply_to("!members".into()).await;
    assert!(members.contains(&format!("{other_id}:leave:{bot}")), "the unban was the bot's doing: {members}");
    assert!(members.contains(&format!("{}:join:{}", person.user_id(), person.user_id())), "{members}");
    let version = reply_to("!version".into()).await;
    let expected_version = room.version().expect("the person's client knows the room version");
    assert_eq!(version, format!("version {expected_version} creators {}", person.user_id()));
    assert_eq!(reply_to("!nosuch".into()).await, "error unknown_method");

    // Creating a room looks its alias up first: the action creates it once, the call finds it.
    let alias = format!("ops-{}", person.user_id().trim_start_matches('@').split(':').next().unwrap());
    person.send_text(&room, &format!("!create {alias}")).await;
    let full_alias = OwnedRoomAliasId::try_from(format!("#{alias}:{}", bot_id.server_name())).unwrap();
    let created = eventually(TIMEOUT, "the room the bot created", || {
        let (person, full_alias) = (&person, full_alias.clone());
        async move { person.client.resolve_room_alias(&full_alias).await.ok().map(|r| r.room_id) }
    })
    .await;
    // The person was invited, as asked (Synapse sets the alias before it sends the invites: wait for the bot
    // to have finished); joining lets them read the room.
    daemon.wait_for_log("the room exists", TIMEOUT);
    person.client.join_room_by_id(&created).await.unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    let name = server_state(&person, &created, "m.room.name", "").await.unwrap();
    assert_eq!(name["name"], "Ops");
    assert!(server_state(&person, &created, "m.room.encryption", "").await.is_some(), "created encrypted");
    assert_eq!(reply_to(format!("!ensure {alias}")).await, format!("ensured {created} created=false"));
    person.send_text(&room, &format!("!create {alias}")).await;
    eventually(TIMEOUT, "the second create to find the room", || async { (unchanged(&daemon) == 3).then_some(()) })
        .await;

    // A file from the private directory, uploaded encrypted (the room is) and deleted once posted.
    person.send_text(&room, "!file").await;
    let posted = eventually(TIMEOUT, "the posted file", || {
        let (person, bot) = (&person, &bot);
        async move { person.messages_from(bot).into_iter().find(|m| m.body == "report.txt") }
    })
    .await;
    assert!(posted.encrypted, "the file went to an encrypted room encrypted");
    let event = room.event(&posted.event_id, None).await.unwrap();
    let json: Value = serde_json::from_str(event.raw().json().get()).unwrap();
    let content: RoomMessageEventContent = serde_json::from_value(json["content"].clone()).unwrap();
    let MessageType::File(file) = content.msgtype else { panic!("not a file message: {content:?}") };
    assert!(matches!(file.source, matrix_sdk::ruma::events::room::MediaSource::Encrypted(_)), "uploaded encrypted");
    let request = MediaRequestParameters { source: file.source.clone(), format: MediaFormat::File };
    let bytes = person.client.media().get_media_content(&request, false).await.unwrap();
    assert_eq!(bytes, b"the weekly report\n");
    let data_dir = env.state_dir().join("instances/rooms/data");
    eventually(TIMEOUT, "the posted file to be deleted", || {
        let gone = !data_dir.join("report.txt").exists();
        async move { gone.then_some(()) }
    })
    .await;
    assert_eq!(daemon.stop().code(), Some(0));
}

//! `exec` bots: programs in any language behind the line protocol, against the real Synapse.

use std::path::Path;
use std::time::Duration;

use matrix_sdk::Room;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::OwnedEventId;

use crate::harness::bot::{BotEnv, describe};
use crate::harness::client::TestUser;
use crate::harness::daemon::Daemon;
use crate::harness::eventually;
use crate::harness::proxy::Proxy;
use crate::harness::synapse::synapse;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/echo-bot.py");
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A program that misbehaves once per command word (remembered in its data directory), then answers:
/// `crash` exits, `hang` never answers, `garble` writes a line that is not protocol; `token` replies with the
/// SHA-256 of its `token` setting and prints the token itself to stderr.
const FAULTY: &str = r#"#!/usr/bin/env python3
import hashlib, json, os, sys, time
data = os.environ["MAUBOT_DATA_DIR"]
def say(m):
    print(json.dumps(m), flush=True)
hello = json.loads(sys.stdin.readline())
token = hello["config"].get("token", "")
say({"type": "ready"})
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] != "message":
        continue
    word = m["body"]
    marker = os.path.join(data, word)
    first = not os.path.exists(marker)
    if first:
        open(marker, "w").close()
    if first and word == "crash":
        sys.exit(3)
    if first and word == "hang":
        time.sleep(3600)
    if first and word == "garble":
        print("this is not json", flush=True)
        time.sleep(3600)
    body = f"{word}: answered"
    if word == "token":
        print(f"my token is {token}", file=sys.stderr, flush=True)
        body = hashlib.sha256(token.encode()).hexdigest()
    say({"type": "reply", "to": m["id"], "body": body})
    say({"type": "done", "to": m["id"]})
"#;

/// Sets the bots up, runs the host, and has a new person open a room (unencrypted) that `bot` joins.
async fn running_with_a_room(env: &BotEnv, bot: &str, person: &str) -> (Daemon, TestUser, Room) {
    env.setup();
    let daemon = env.spawn_run();
    let person = TestUser::new(synapse(), person).await;
    let room = person.create_room(false, &[bot]).await;
    person.wait_for_join(&room, bot).await;
    (daemon, person, room)
}

/// The reactions (sender, key) to `event_id` in the room's history.
async fn reactions_to(room: &Room, event_id: &OwnedEventId) -> Vec<(String, String)> {
    let page = room.messages(MessagesOptions::backward()).await.unwrap();
    page.chunk
        .iter()
        .filter_map(|event| {
            let json: serde_json::Value = serde_json::from_str(event.raw().json().get()).ok()?;
            let relation = json.pointer("/content/m.relates_to")?;
            if json["type"] != "m.reaction" || relation["event_id"] != event_id.as_str() {
                return None;
            }
            Some((json["sender"].as_str()?.to_owned(), relation["key"].as_str()?.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_program_replies_reacts_and_announces_in_an_encrypted_room() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["echo"]).await;
    let bot = env.user_id("echo");
    let person = TestUser::new(synapse, "eve-").await;
    let room = person.create_room(true, &[&bot]).await;
    env.use_exec("echo", Path::new(EXAMPLE), &[&format!("settings: {{announce_room: \"{}\"}}", room.room_id())]);
    env.setup();
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    daemon.wait_for_log(&format!("program stderr: echo bot echo started as {bot}"), REPLY_TIMEOUT);

    let echo = person.send_text(&room, "!echo hello from a program").await;
    let reply = person.wait_for_reply(&echo, &bot, REPLY_TIMEOUT).await;
    assert_eq!(reply.body, "hello from a program");
    assert!(reply.encrypted, "the host encrypts what the program answers in an encrypted room");
    let react = person.send_text(&room, "!react").await;
    let reactions = eventually(REPLY_TIMEOUT, "the bot's reaction", || {
        let (room, react) = (room.clone(), react.clone());
        async move {
            let found = reactions_to(&room, &react).await;
            (!found.is_empty()).then_some(found)
        }
    })
    .await;
    assert_eq!(reactions, vec![(bot.clone(), "👍".to_owned())]);
    // Only commands the program knows are answered; the others get `done` with no action.
    let other = person.send_text(&room, "just talking").await;
    let after = person.send_text(&room, "!echo after").await;
    person.wait_for_reply(&after, &bot, REPLY_TIMEOUT).await;
    assert!(person.replies_to(&other, &bot).is_empty());
    assert_eq!(daemon.stop().code(), Some(0));
    assert!(daemon.log().contains("the program stopped ended=exit status: 0"), "{}", daemon.log());

    // A send the program makes on its own (outside an event, with a key): the bot is in the room now, so the
    // second start's announcement arrives (the first start's may have raced the bot's join).
    let announced = || person.messages_from(&bot).into_iter().filter(|m| m.body == "echo is up").count();
    let before = announced();
    let mut daemon = env.spawn_run();
    daemon.wait_for_log("the program is ready", REPLY_TIMEOUT);
    eventually(REPLY_TIMEOUT, "the announcement of the second start", || {
        let more = announced() > before;
        async move { more.then_some(()) }
    })
    .await;
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_crashes_hangs_or_garbles_is_restarted_and_each_message_answered_once() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["faulty"]).await;
    let bot = env.user_id("faulty");
    let program = env.write_program("faulty.py", FAULTY);
    env.use_exec("faulty", &program, &["event_timeout_secs: 2"]);
    let (mut daemon, person, room) = running_with_a_room(&env, &bot, "fay-").await;

    for (word, logged) in [
        ("crash", "the program closed its output"),
        ("hang", "the program did not finish event"),
        (
            "garble",
            "the program wrote a line that is not protocol (expected ident at line 1 column 2): this is not json",
        ),
    ] {
        let sent = person.send_text(&room, word).await;
        let reply = person.wait_for_reply(&sent, &bot, REPLY_TIMEOUT).await;
        assert_eq!(reply.body, format!("{word}: answered"));
        assert!(daemon.log().contains(logged), "the log names the fault {logged:?}:\n{}", daemon.log());
    }
    assert!(daemon.log().contains("instance failed; restarting it after a backoff"));
    // Each message got exactly one answer, across three restarts of the program.
    let history = person.room_history(&room).await;
    for word in ["crash", "hang", "garble"] {
        let answers = history.iter().filter(|m| m.body == format!("{word}: answered")).count();
        assert_eq!(answers, 1, "{word} answered {answers} times");
    }
    // The program that hung was killed, not left behind.
    let left: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(program.to_str().unwrap()))
        .collect();
    assert_eq!(left.len(), 1, "only the running program is left");
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_the_settings_reaches_the_program_and_no_output() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["secretive"]).await;
    let bot = env.user_id("secretive");
    let token = format!("planted-secret-{:08x}", rand::random::<u32>());
    env.write_credential("secretive-token", &format!("{token}\n"));
    let program = env.write_program("faulty.py", FAULTY);
    env.use_exec("secretive", &program, &["settings: {token: {credential: secretive-token}}"]);
    let check = env.output(&["check-config"]);
    assert!(check.status.success(), "{}", describe(&check));
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(printed.contains("secretive-token") && !printed.contains(&token), "{printed}");
    let (mut daemon, person, room) = running_with_a_room(&env, &bot, "sam-").await;

    let sent = person.send_text(&room, "token").await;
    let reply = person.wait_for_reply(&sent, &bot, REPLY_TIMEOUT).await;
    use sha2::Digest;
    assert_eq!(reply.body, hex::encode(sha2::Sha256::digest(token.as_bytes())), "the program got the secret");
    daemon.wait_for_log("program stderr: my token is [redacted]", REPLY_TIMEOUT);
    assert_eq!(daemon.stop().code(), Some(0));
    assert!(!daemon.log().contains(&token), "the secret is in the log:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_cannot_be_started_or_lacks_its_secret_fails_alone_naming_why() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping", "missing", "nosecret"]).await;
    let ping_bot = env.user_id("ping");
    env.use_exec("missing", Path::new("/nonexistent/bot"), &[]);
    let program = env.write_program("faulty.py", FAULTY);
    env.use_exec("nosecret", &program, &["settings: {token: {credential: nosecret-token}}"]);
    // check-config (and setup) name the missing credential; run keeps the other bots going.
    let check = env.output(&["check-config"]);
    assert!(!check.status.success());
    assert!(describe(&check).contains("instances.nosecret.config.settings.token"), "{}", describe(&check));
    env.write_credential("nosecret-token", "a-token-for-setup\n");
    env.setup();
    std::fs::remove_file(env.credentials_dir().join("nosecret-token")).unwrap();
    let mut daemon = env.spawn_run();
    daemon.wait_for_log("cannot start the program /nonexistent/bot", REPLY_TIMEOUT);
    daemon.wait_for_log("a plugin secret cannot be read: instances.nosecret.config.settings.token", REPLY_TIMEOUT);
    assert!(daemon.log().contains("will not be restarted automatically"), "{}", daemon.log());
    // The other bot runs.
    let person = TestUser::new(synapse, "pat-").await;
    let room = person.create_room(false, &[&ping_bot]).await;
    person.wait_for_join(&room, &ping_bot).await;
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &ping_bot, REPLY_TIMEOUT).await;
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_holds_up_no_message_and_survives_a_crash_of_the_host() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["later"]).await;
    let bot = env.user_id("later");
    env.use_exec("later", Path::new(EXAMPLE), &[]);
    let (mut daemon, person, room) = running_with_a_room(&env, &bot, "lia-").await;

    // A job runs beside the messages: a ping sent after it is answered while the job still waits.
    let asked = std::time::Instant::now();
    let later = person.send_text(&room, "!later 8 eight seconds later").await;
    daemon.wait_for_log("attempt 1", REPLY_TIMEOUT);
    let ping = person.send_text(&room, "!ping").await;
    let pong = person.wait_for_reply(&ping, &bot, REPLY_TIMEOUT).await;
    assert!(pong.body.starts_with("pong"), "{pong:?}");
    assert!(asked.elapsed() < Duration::from_secs(8), "the ping waited for the job: {:?}", asked.elapsed());
    assert!(person.replies_to(&later, &bot).is_empty(), "the job finished before its time");
    let reply = person.wait_for_reply(&later, &bot, REPLY_TIMEOUT).await;
    assert_eq!(reply.body, "eight seconds later");
    assert!(asked.elapsed() >= Duration::from_secs(8));
    assert!(daemon.log().contains("the job is done"), "{}", daemon.log());

    // A job the host was running when it was killed is run again after the restart, and answered once.
    let later = person.send_text(&room, "!later 4 after the crash").await;
    daemon.wait_for_log(&format!("job later {later} started, attempt 1"), REPLY_TIMEOUT);
    daemon.crash();
    let mut daemon = env.spawn_run();
    daemon.wait_for_log("resuming the jobs accepted before instance=later jobs=1", REPLY_TIMEOUT);
    daemon.wait_for_log(&format!("job later {later} started, attempt 2"), REPLY_TIMEOUT);
    let reply = person.wait_for_reply(&later, &bot, REPLY_TIMEOUT).await;
    assert_eq!(reply.body, "after the crash");
    // A command after it is answered too; by then any second answer to the job would be in the room.
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &bot, REPLY_TIMEOUT).await;
    let answers = person.room_history(&room).await.into_iter().filter(|m| m.body == "after the crash").count();
    assert_eq!(answers, 1, "the resumed job answered {answers} times");
    // A stop in the middle of a job keeps it, too: it is resumed at the next start.
    let later = person.send_text(&room, "!later 2 after a stop").await;
    daemon.wait_for_log(&format!("job later {later} started, attempt 1"), REPLY_TIMEOUT);
    assert_eq!(daemon.stop().code(), Some(0));
    let mut daemon = env.spawn_run();
    let reply = person.wait_for_reply(&later, &bot, REPLY_TIMEOUT).await;
    assert_eq!(reply.body, "after a stop");
    assert_eq!(daemon.stop().code(), Some(0));
}

/// Asks for a tick every second; at each it sends the same keyed message and logs the tick's number.
const TICKER: &str = r#"#!/usr/bin/env python3
import json, sys
def say(m):
    print(json.dumps(m), flush=True)
hello = json.loads(sys.stdin.readline())
room = hello["config"]["room"]
say({"type": "ready", "tick_secs": 1})
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "shutdown":
        break
    if m["type"] == "tick":
        print("ticked " + m["id"], file=sys.stderr, flush=True)
        say({"type": "send", "room_id": room, "body": "the daily report", "key": "report-2026-12-01"})
    say({"type": "done", "to": m["id"]})
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_is_ticked_as_it_asked_and_a_keyed_send_is_posted_once() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ticker"]).await;
    let bot = env.user_id("ticker");
    let person = TestUser::new(synapse, "tia-").await;
    let room = person.create_room(false, &[&bot]).await;
    let program = env.write_program("ticker.py", TICKER);
    env.use_exec("ticker", &program, &[&format!("settings: {{room: \"{}\"}}", room.room_id())]);
    env.setup();
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    daemon.wait_for_log("program stderr: ticked tick-3", REPLY_TIMEOUT);
    let reports = || person.messages_from(&bot).into_iter().filter(|m| m.body == "the daily report").count();
    eventually(REPLY_TIMEOUT, "the report", || {
        let posted = reports() > 0;
        async move { posted.then_some(()) }
    })
    .await;
    daemon.wait_for_log("program stderr: ticked tick-5", REPLY_TIMEOUT);
    let history = person.room_history(&room).await;
    let posted = history.iter().filter(|m| m.body == "the daily report").count();
    assert_eq!(posted, 1, "one key, one message, however many ticks");
    assert_eq!(daemon.stop().code(), Some(0));
}

/// Says in `ready` that it changes no rooms; answers `kick` by kicking the sender anyway, anything else with a
/// reply.
const ANSWERS_ONLY: &str = r#"#!/usr/bin/env python3
import json, sys
def say(m):
    print(json.dumps(m), flush=True)
json.loads(sys.stdin.readline())
say({"type": "ready", "changes_rooms": False})
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "message" and m["body"] == "kick":
        say({"type": "kick", "room_id": m["room_id"], "user_id": m["sender"]})
    elif m["type"] == "message":
        say({"type": "reply", "to": m["id"], "body": "answered"})
    say({"type": "done", "to": m["id"]})
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_says_it_changes_no_rooms_is_not_woken_by_its_answers_and_may_not_change_one() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let mut env = BotEnv::with_ping_bots_behind(synapse, &proxy, &["answers"]).await;
    let bot = env.user_id("answers");
    let program = env.write_program("answers.py", ANSWERS_ONLY);
    env.use_exec("answers", &program, &[]);
    env.setup();
    let person = TestUser::new(synapse, "ana-").await;
    let room = person.create_room(true, &[&bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    let first = person.send_text(&room, "hello").await;
    assert!(person.wait_for_reply(&first, &bot, REPLY_TIMEOUT).await.encrypted);

    // Each command wakes the bot's long poll once; with its own answers in its syncs, twice (10 for 5).
    let before = proxy.syncs();
    for _ in 0..5 {
        let sent = person.send_text(&room, "hello").await;
        assert_eq!(person.wait_for_reply(&sent, &bot, REPLY_TIMEOUT).await.body, "answered");
    }
    let syncs = proxy.syncs() - before;
    assert!(syncs <= 7, "{syncs} syncs for 5 messages answered one after the other");

    // A room change after saying none is refused, naming what to change, and the bot is not restarted into it.
    person.send_text(&room, "kick").await;
    daemon.wait_for_log("will not be restarted automatically", REPLY_TIMEOUT);
    let log = daemon.log();
    assert!(log.contains("Plugin::changes_rooms") && log.contains(r#"drop `"changes_rooms":false`"#), "{log}");
    // Still a member: a kicked person could not send.
    person.send_text(&room, "still here").await;
    assert_eq!(daemon.stop().code(), Some(0));
}

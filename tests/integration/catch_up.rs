//! Nothing sent while the bot was down is lost, and nothing is answered twice, even after a crash.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use matrix_sdk::Room;
use matrix_sdk::ruma::OwnedEventId;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

use crate::harness::bot::BotEnv;
use crate::harness::client::TestUser;
use crate::harness::daemon::Daemon;
use crate::harness::proxy::{Hold, Proxy};
use crate::harness::synapse::synapse;

/// How many replies each of `pings` got from `bot`, from the room's full history on the homeserver.
async fn reply_counts(
    person: &TestUser,
    room: &Room,
    bot: &str,
    pings: &[OwnedEventId],
) -> HashMap<OwnedEventId, usize> {
    let mut counts: HashMap<OwnedEventId, usize> = pings.iter().map(|p| (p.clone(), 0)).collect();
    for message in person.room_history(room).await.into_iter().filter(|m| m.sender.as_str() == bot) {
        if let Some(target) = message.in_reply_to
            && let Some(count) = counts.get_mut(&target)
        {
            *count += 1;
        }
    }
    counts
}

async fn wait_until_all_answered(person: &TestUser, room: &Room, bot: &str, pings: &[OwnedEventId], daemon: &Daemon) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let counts = reply_counts(person, room, bot, pings).await;
        let answered = counts.values().filter(|c| **c >= 1).count();
        if answered == pings.len() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("only {answered} of {} pings answered; daemon log:\n{}", pings.len(), daemon.log());
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    // Give duplicates, if any, time to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
}

async fn assert_exactly_once(person: &TestUser, room: &Room, bot: &str, pings: &[OwnedEventId]) {
    let counts = reply_counts(person, room, bot, pings).await;
    let wrong: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
    assert!(wrong.is_empty(), "pings not answered exactly once: {wrong:?}");
    let from_bot = person.room_history(room).await.into_iter().filter(|m| m.sender.as_str() == bot).count();
    assert_eq!(from_bot, pings.len(), "no other messages from the bot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_sent_while_the_daemon_is_stopped_are_all_answered_once() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    let bot = env.user_id("ping");
    env.setup();
    let person = TestUser::new(synapse, "frank-").await;
    let room = person.create_room(false, &[&bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    assert_eq!(daemon.stop().code(), Some(0));

    let mut pings = Vec::new();
    for _ in 0..100 {
        pings.push(person.send_text(&room, "!ping").await);
    }
    let mut daemon = env.spawn_run();
    wait_until_all_answered(&person, &room, &bot, &pings, &daemon).await;
    assert_exactly_once(&person, &room, &bot, &pings).await;
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_burst_causes_no_duplicate() {
    let env = BotEnv::with_ping_bots(synapse(), &["ping"]).await;
    crash_in_the_middle_of_a_burst(env, "ping", 60, 0).await;
}

/// The same through an `exec` program (the example echo bot), with more of the burst sent while the host is
/// down: the host is killed while the program handles events; the program ends with its input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_bot_killed_in_the_middle_of_a_burst_answers_each_message_once() {
    let mut env = BotEnv::with_ping_bots(synapse(), &["echo"]).await;
    env.use_exec("echo", std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/echo-bot.py")), &[]);
    crash_in_the_middle_of_a_burst(env, "echo", 50, 50).await;
}

/// Sends `before` pings, kills the host (SIGKILL) once some are answered while the rest are still being sent,
/// sends `while_down` more, restarts it: every ping is answered exactly once.
async fn crash_in_the_middle_of_a_burst(env: BotEnv, id: &str, before: usize, while_down: usize) {
    let synapse = synapse();
    let bot = env.user_id(id);
    env.setup();
    let person = TestUser::new(synapse, "grace-").await;
    let room = person.create_room(false, &[&bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;

    // The burst is sent from its own task: the crash lands while it is still going on, not after a bot that
    // keeps pace with the sender has answered all of it.
    let sending_room = room.clone();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let sending = tokio::spawn(async move {
        let mut pings = Vec::new();
        for _ in 0..before {
            let response = sending_room.send(RoomMessageEventContent::text_plain("!ping")).await.unwrap();
            pings.push(response.response.event_id);
            counted.fetch_add(1, Ordering::SeqCst);
        }
        pings
    });
    // Crash once half the burst is sent and part of it answered.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::SeqCst) < before / 2 {
        assert!(Instant::now() < deadline, "half the burst was not sent within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.wait_for_log("answered", Duration::from_secs(60));
    daemon.crash();
    let mut pings = sending.await.unwrap();
    let answered_before = reply_counts(&person, &room, &bot, &pings).await.values().filter(|c| **c > 0).count();
    for _ in 0..while_down {
        pings.push(person.send_text(&room, "!ping").await);
    }

    let mut daemon = env.spawn_run();
    wait_until_all_answered(&person, &room, &bot, &pings, &daemon).await;
    assert_exactly_once(&person, &room, &bot, &pings).await;
    assert!(answered_before < before, "the crash happened before the burst was done ({answered_before})");
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_sending_and_recording_a_reply_causes_no_duplicate() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let env = BotEnv::with_ping_bots_behind(synapse, &proxy, &["ping"]).await;
    let bot = env.user_id("ping");
    env.setup();
    let person = TestUser::new(synapse, "heidi-").await;
    let room = person.create_room(false, &[&bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    assert_eq!(daemon.stop().code(), Some(0));

    let mut pings = Vec::new();
    for _ in 0..20 {
        pings.push(person.send_text(&room, "!ping").await);
    }
    // The first reply reaches the homeserver, and the process dies before it hears back, so it cannot record
    // the reply as sent: the worst moment, made by the test proxy in front of Synapse.
    proxy.hold(Some(Hold { method: "PUT", path: "/send/m.room.message/maubot.", forward: true }));
    let mut daemon = env.spawn_run();
    crate::harness::eventually(Duration::from_secs(60), "a reply to be sent and its answer held", || {
        let held = proxy.held() > 0;
        async move { held.then_some(()) }
    })
    .await;
    daemon.crash();
    proxy.hold(None);
    let answered = crate::harness::eventually(Duration::from_secs(30), "the sent reply to be visible", || async {
        let n = reply_counts(&person, &room, &bot, &pings).await.values().filter(|c| **c > 0).count();
        (n > 0).then_some(n)
    })
    .await;
    // Several replies are sent at once (up to 8 in a room), so as many may have reached the homeserver.
    assert!(answered >= 1, "replies went out before the crash");

    let mut daemon = env.spawn_run();
    wait_until_all_answered(&person, &room, &bot, &pings, &daemon).await;
    assert_exactly_once(&person, &room, &bot, &pings).await;
    assert_eq!(daemon.stop().code(), Some(0));
}

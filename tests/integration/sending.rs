//! How answers leave the bot, against a real Synapse: rooms take turns, the homeserver's own message limits
//! (Synapse's defaults) delay answers but lose none, a per-sender limit can stop one person from making the bot
//! spam a room, an encrypted command whose room key arrives late is answered once the key is there, and answers to
//! a burst go out several at a time while each sync names the filter uploaded once, and a bot that changes no
//! rooms is not woken by its own answers (yet sees its own joins).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use matrix_sdk::Room;
use matrix_sdk::ruma::OwnedEventId;

use crate::harness::bot::BotEnv;
use crate::harness::client::TestUser;
use crate::harness::eventually;
use crate::harness::proxy::Proxy;
use crate::harness::synapse::{synapse, synapse_with_default_limits};

/// The bot's replies to each of `pings`, from the room's history on the homeserver.
async fn replies(person: &TestUser, room: &Room, bot: &str, pings: &[OwnedEventId]) -> HashMap<OwnedEventId, Vec<u64>> {
    let mut found: HashMap<OwnedEventId, Vec<u64>> = pings.iter().map(|p| (p.clone(), Vec::new())).collect();
    for message in person.room_history(room).await {
        if message.sender.as_str() == bot
            && let Some(target) = message.in_reply_to.as_ref().and_then(|t| found.get_mut(t))
        {
            target.push(message.ts_ms);
        }
    }
    found
}

/// Waits until each of `pings` has a reply from `bot`, and checks that none has two; returns the replies' times.
async fn answered_once(
    person: &TestUser,
    room: &Room,
    bot: &str,
    pings: &[OwnedEventId],
    timeout: Duration,
) -> HashMap<OwnedEventId, Vec<u64>> {
    let answered = eventually(timeout, "every command to be answered", || async {
        let found = replies(person, room, bot, pings).await;
        found.values().all(|r| !r.is_empty()).then_some(found)
    })
    .await;
    for (event, times) in &answered {
        assert_eq!(times.len(), 1, "{event} answered {} times", times.len());
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_in_one_room_does_not_starve_another_and_message_limits_lose_nothing() {
    // Synapse's default limits: a bot may send a burst of 10 messages, then one every 5 s.
    let synapse = synapse_with_default_limits();
    let env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.setup();
    let bot = env.user_id("ping");
    let flooder = TestUser::new(synapse, "flood-").await;
    let other = TestUser::new(synapse, "calm-").await;
    // The people may send as fast as they like; only the bot is limited.
    synapse.exempt_from_rate_limits(&flooder.user_id()).await;
    synapse.exempt_from_rate_limits(&other.user_id()).await;
    let busy = flooder.create_room(false, &[&bot]).await;
    let quiet = other.create_room(false, &[&bot]).await;
    let mut daemon = env.spawn_run();
    flooder.wait_for_join(&busy, &bot).await;
    other.wait_for_join(&quiet, &bot).await;

    let mut flood = Vec::new();
    for _ in 0..16 {
        flood.push(flooder.send_text(&busy, "!ping").await);
    }
    let ping = other.send_text(&quiet, "!ping").await;
    other.wait_for_reply(&ping, &bot, Duration::from_secs(60)).await;

    // Every command of the flood is answered exactly once, though the homeserver kept saying "too many".
    let answered = answered_once(&flooder, &busy, &bot, &flood, Duration::from_secs(150)).await;
    let quiet_answer = replies(&other, &quiet, &bot, std::slice::from_ref(&ping)).await[&ping][0];
    let last_flood_answer = answered.values().map(|t| t[0]).max().unwrap();
    assert!(
        quiet_answer < last_flood_answer,
        "the quiet room's answer did not wait for the whole flood ({quiet_answer} >= {last_flood_answer})"
    );
    // The limit was really in force: 17 answers at a burst of 10 and then one per 5 s take more than 20 s.
    let first_answer = answered.values().map(|t| t[0]).chain([quiet_answer]).min().unwrap();
    assert!(last_flood_answer - first_answer > 20_000, "answers spread over {} ms", last_flood_answer - first_answer);
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_sender_limit_stops_one_person_from_making_the_bot_spam() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.instances[0].extra.push("max_commands_per_sender_per_minute: 3".into());
    env.write_config();
    env.setup();
    let bot = env.user_id("ping");
    let spammer = TestUser::new(synapse, "spam-").await;
    let other = TestUser::new(synapse, "polite-").await;
    let room = spammer.create_room(false, &[&bot, &other.user_id()]).await;
    let mut daemon = env.spawn_run();
    spammer.wait_for_join(&room, &bot).await;
    other.client.join_room_by_id(room.room_id()).await.unwrap();

    let mut pings = Vec::new();
    for _ in 0..6 {
        pings.push(spammer.send_text(&room, "!ping").await);
    }
    let polite_room = other.client.get_room(room.room_id()).unwrap();
    let polite = other.send_text(&polite_room, "!ping").await;
    other.wait_for_reply(&polite, &bot, Duration::from_secs(60)).await;
    daemon.wait_for_log("over the per-sender command limit", Duration::from_secs(30));
    let found = replies(&spammer, &room, &bot, &pings).await;
    let answered = found.values().filter(|r| !r.is_empty()).count();
    assert_eq!(answered, 3, "three of six answered: {found:?}");
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_command_whose_room_key_arrives_late_is_answered() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.setup();
    let bot = env.user_id("ping");
    // The person's client talks through a proxy that delivers its to-device messages (the room keys) late.
    let proxy = Proxy::start(&synapse.url).await;
    let person = TestUser::new_at(synapse, &proxy.url, "yara-").await;
    let room = person.create_room(true, &[&bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;

    proxy.delay_to_device(Some(Duration::from_secs(6)));
    let ping = person.send_text(&room, "!ping").await;
    daemon.wait_for_log("waiting for the key", Duration::from_secs(30));
    let pong = person.wait_for_reply(&ping, &bot, Duration::from_secs(60)).await;
    assert!(pong.encrypted && pong.body.starts_with("pong"), "{pong:?}");
    assert!(daemon.log().contains("the room key arrived"), "{}", daemon.log());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(person.replies_to(&ping, &bot).len(), 1, "answered once");
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_a_burst_go_out_several_at_once_and_syncs_name_the_filter_uploaded_once() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let env = BotEnv::with_ping_bots_behind(synapse, &proxy, &["ping"]).await;
    env.setup();
    let bot = env.user_id("ping");
    let person = TestUser::new(synapse, "burst-").await;
    let room = person.create_room(false, &[&bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;

    // Each send waits 4 s at the homeserver's door: sent one at a time, 12 answers would take 48 s, and all 12
    // pings are in before the first answer is through (even at Synapse's slowest, ~300 ms a send).
    *proxy.observed.send_delay.lock().unwrap() = Some(Duration::from_secs(4));
    let mut pings = Vec::new();
    for _ in 0..12 {
        pings.push(person.send_text(&room, "!ping").await);
    }
    answered_once(&person, &room, &bot, &pings, Duration::from_secs(60)).await;
    let most = proxy.observed.most_sends_in_flight.load(Ordering::SeqCst);
    // More than 8 at once: a room's answers are not held back behind a small share of sends in flight (under
    // load they would wait in the bot for a turn instead of going to the homeserver).
    assert!(most > 8, "the answers went out at most {most} at a time");

    // The first sync of `run` carries the filter (setup's own sync has none); from the upload on, every sync
    // names it by its id.
    let filters = proxy.observed.sync_filters.lock().unwrap().clone();
    let named = filters.iter().position(|f| !f.is_empty() && !f.starts_with('{')).expect("no sync named a filter id");
    assert!(filters[..named].iter().any(|f| f.starts_with('{')), "{filters:?}");
    assert!(filters[named..].iter().all(|f| *f == filters[named]), "{filters:?}");
    assert_eq!(proxy.observed.filter_uploads.load(Ordering::SeqCst), 1);
    assert_eq!(daemon.stop().code(), Some(0));

    // After a restart the stored id is used: nothing is uploaded again.
    *proxy.observed.send_delay.lock().unwrap() = None;
    let mut daemon = env.spawn_run();
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &bot, Duration::from_secs(60)).await;
    let id = filters[named].clone();
    eventually(Duration::from_secs(30), "the restarted bot's syncs to name the stored filter", || async {
        (proxy.observed.sync_filters.lock().unwrap().last() == Some(&id)).then_some(())
    })
    .await;
    assert_eq!(proxy.observed.filter_uploads.load(Ordering::SeqCst), 1);
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_changes_no_rooms_is_not_woken_by_its_own_answers() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let env = BotEnv::with_ping_bots_behind(synapse, &proxy, &["ping"]).await;
    env.setup();
    let bot = env.user_id("ping");
    let person = TestUser::new(synapse, "echo-").await;
    // Encrypted: the bot's own join is left out of its syncs too, and the room still has to be known as encrypted.
    let room = person.create_room(true, &[&bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    let first = person.send_text(&room, "!ping").await;
    assert!(person.wait_for_reply(&first, &bot, Duration::from_secs(60)).await.encrypted);

    // One command at a time: each wakes the bot's long poll once. Were its answers in its syncs, each would wake
    // it a second time (10 syncs for 5 commands).
    let before = proxy.syncs();
    for _ in 0..5 {
        let ping = person.send_text(&room, "!ping").await;
        let reply = person.wait_for_reply(&ping, &bot, Duration::from_secs(60)).await;
        assert!(reply.encrypted, "the answer went out in the clear: {reply:?}");
    }
    let syncs = proxy.syncs() - before;
    assert!(syncs <= 7, "{syncs} syncs for 5 commands answered one after the other");

    // Joined while running: its own join still comes, and what was said before it stays history.
    let later = person.create_room(false, &[]).await;
    let old = person.send_text(&later, "!ping").await;
    later.invite_user_by_id(<&matrix_sdk::ruma::UserId>::try_from(bot.as_str()).unwrap()).await.unwrap();
    person.wait_for_join(&later, &bot).await;
    let new = person.send_text(&later, "!ping").await;
    person.wait_for_reply(&new, &bot, Duration::from_secs(60)).await;
    let history = replies(&person, &later, &bot, std::slice::from_ref(&old)).await;
    assert!(history[&old].is_empty(), "a command from before the bot joined was answered");
    assert_eq!(daemon.stop().code(), Some(0));
}

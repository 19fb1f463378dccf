//! The setup/run invariant against a real Synapse: setup creates state, run needs it and never creates it.

use std::time::Duration;

use crate::harness::bot::{BotEnv, describe};
use crate::harness::client::TestUser;
use crate::harness::synapse::synapse;

const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The recovery key printed by setup (the indented line after the heading).
fn recovery_key(setup_stdout: &str) -> String {
    let mut lines = setup_stdout.lines().skip_while(|l| !l.starts_with("Recovery key for instance"));
    lines.next().expect("a recovery key heading");
    lines.find(|l| !l.trim().is_empty()).expect("a recovery key").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_then_run_answers_ping_in_plain_and_encrypted_rooms() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    let bot = env.user_id("ping");
    let output = env.setup();
    let key = recovery_key(&stdout(&output));
    assert!(key.starts_with("Es") && key.len() > 40, "recovery key looks wrong: {key}");
    assert!(!stderr(&output).contains(&key), "the recovery key must not be logged");

    let mut daemon = env.spawn_run();
    let person = TestUser::new(synapse, "alice-").await;

    let plain = person.create_room(false, &[&bot]).await;
    person.wait_for_join(&plain, &bot).await;
    let ping = person.send_text(&plain, "!ping").await;
    let pong = person.wait_for_reply(&ping, &bot, REPLY_TIMEOUT).await;
    assert!(pong.body.starts_with("pong (took "), "{}", pong.body);
    assert!(pong.body.ends_with(" ms)"), "{}", pong.body);
    assert!(!pong.encrypted);

    let secret = person.create_room(true, &[&bot]).await;
    person.wait_for_join(&secret, &bot).await;
    let ping = person.send_text(&secret, "!ping").await;
    let pong = person.wait_for_reply(&ping, &bot, REPLY_TIMEOUT).await;
    assert!(pong.body.starts_with("pong"), "{}", pong.body);
    assert!(pong.encrypted, "the reply in an encrypted room must be encrypted");

    // Setup cross-signed the bot's device: others see it as verified by its owner.
    let device_id = synapse.devices(&bot).await.pop().expect("one device");
    let bot_id = matrix_sdk::ruma::UserId::parse(bot.as_str()).unwrap();
    let device = person
        .client
        .encryption()
        .get_device(&bot_id, device_id.as_str().into())
        .await
        .unwrap()
        .expect("the person knows the bot's device");
    assert!(device.is_cross_signed_by_owner(), "the bot's device is cross-signed");

    // Not a command, and a message from the bot itself: no answer.
    let chat = person.send_text(&plain, "hello !ping").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(person.replies_to(&chat, &bot).is_empty());
    assert_eq!(daemon.stop().code(), Some(0), "log:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_same_device_and_shutdown_does_not_log_out() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    let bot = env.user_id("ping");
    env.setup();
    let devices = synapse.devices(&bot).await;
    assert_eq!(devices.len(), 1, "setup creates exactly one device: {devices:?}");

    let person = TestUser::new(synapse, "bob-").await;
    let room = person.create_room(false, &[&bot]).await;
    for round in 0..2 {
        let mut daemon = env.spawn_run();
        if round == 0 {
            person.wait_for_join(&room, &bot).await;
        }
        let ping = person.send_text(&room, "!ping").await;
        person.wait_for_reply(&ping, &bot, REPLY_TIMEOUT).await;
        assert_eq!(daemon.stop().code(), Some(0));
        assert_eq!(synapse.devices(&bot).await, devices, "round {round}: same device, still logged in");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_state_exits_78_and_creates_nothing() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    let bot = env.user_id("ping");

    let mut daemon = env.spawn_run();
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(78), "log:\n{}", daemon.log());
    assert!(daemon.log().contains("maubot setup"), "the message names the fix:\n{}", daemon.log());
    assert!(!env.state_dir().exists(), "run must not create the state directory");

    // systemd's StateDirectory= creates an empty directory: still no state.
    std::fs::create_dir(env.state_dir()).unwrap();
    let mut daemon = env.spawn_run();
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(78));
    assert!(daemon.log().contains("no database"), "{}", daemon.log());
    assert_eq!(std::fs::read_dir(env.state_dir()).unwrap().count(), 0, "nothing created inside it either");
    assert!(synapse.devices(&bot).await.is_empty(), "no device may be created on the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_twice_changes_nothing() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    let bot = env.user_id("ping");
    env.setup();
    let before = env.state_snapshot();
    let db_before = std::fs::read(env.database_path()).unwrap();
    let devices = synapse.devices(&bot).await;

    let output = env.output(&["setup"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        stdout(&output).contains("Nothing to set up: every configured bot is set up (ping)."),
        "{}",
        describe(&output)
    );
    assert!(!stdout(&output).contains("Recovery key"));
    assert_eq!(env.state_snapshot(), before);
    assert_eq!(std::fs::read(env.database_path()).unwrap(), db_before);
    assert_eq!(synapse.devices(&bot).await, devices);

    // Asking for a bot that is set up is refused, and changes nothing either.
    let output = env.output(&["setup", "--add-instance", "ping"]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(stderr(&output).contains("`ping` is already set up"), "{}", describe(&output));
    assert_eq!(env.state_snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_configured_instance_is_added_without_touching_the_others() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["first"]).await;
    env.setup();
    let first = env.user_id("first");
    let first_devices = synapse.devices(&first).await;

    // Configure a second bot.
    env.configure_ping_bot_not_set_up(synapse, "second").await;
    let second_user = env.user_id("second");

    let output = env.output(&["setup", "--add-instance", "second"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(stdout(&output).contains("instance `second`") && !stdout(&output).contains("instance `first`"));
    assert_eq!(synapse.devices(&first).await, first_devices, "the first bot is untouched");
    let again = env.output(&["setup", "--add-instance", "second"]);
    assert_eq!(again.status.code(), Some(78), "{}", describe(&again));

    let mut daemon = env.spawn_run();
    let person = TestUser::new(synapse, "carol-").await;
    let room = person.create_room(false, &[&first, &second_user]).await;
    person.wait_for_join(&room, &first).await;
    person.wait_for_join(&room, &second_user).await;
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &first, REPLY_TIMEOUT).await;
    person.wait_for_reply(&ping, &second_user, REPLY_TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The bots ignore each other's pongs: exactly one reply each, nothing more.
    assert_eq!(person.messages_from(&first).len(), 1);
    assert_eq!(person.messages_from(&second_user).len(), 1);
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_registers_with_a_registration_token() {
    let synapse = synapse();
    let mut env = BotEnv::empty(synapse);
    let token = synapse.registration_token().await;
    env.write_credential("registration-token", &format!("{token}\n"));
    env.homeserver_extra.push("registration_token: {credential: registration-token}".into());
    env.instances.push(crate::harness::bot::BotInstance {
        id: "ping".into(),
        localpart: crate::harness::unique("tokenbot-"),
        extra: vec![],
    });
    env.write_config();
    let bot = env.user_id("ping");
    assert!(!synapse.user_exists(&bot).await);
    let output = env.setup();
    assert!(synapse.user_exists(&bot).await, "setup registered the bot: {}", describe(&output));
    assert!(stderr(&output).contains("RegistrationToken"), "{}", describe(&output));

    let mut daemon = env.spawn_run();
    let person = TestUser::new(synapse, "dave-").await;
    let room = person.create_room(false, &[&bot]).await;
    person.wait_for_join(&room, &bot).await;
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &bot, REPLY_TIMEOUT).await;
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_registers_with_the_shared_secret_and_a_bad_token_is_reported() {
    let synapse = synapse();
    let mut env = BotEnv::empty(synapse);
    env.write_credential("registration-secret", crate::harness::synapse::SHARED_SECRET);
    env.homeserver_extra.push("registration_shared_secret: {credential: registration-secret}".into());
    env.instances.push(crate::harness::bot::BotInstance {
        id: "ping".into(),
        localpart: crate::harness::unique("secretbot-"),
        extra: vec![],
    });
    env.write_config();
    let output = env.setup();
    assert!(stderr(&output).contains("SharedSecret"), "{}", describe(&output));
    assert_eq!(synapse.devices(&env.user_id("ping")).await.len(), 1);

    // A token the server does not know: a clear error, no state left behind.
    let mut env = BotEnv::empty(synapse);
    env.write_credential("registration-token", "not-a-valid-token");
    env.homeserver_extra.push("registration_token: {credential: registration-token}".into());
    env.instances.push(crate::harness::bot::BotInstance {
        id: "ping".into(),
        localpart: crate::harness::unique("badtoken-"),
        extra: vec![],
    });
    env.write_config();
    let output = env.output(&["setup"]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(stderr(&output).contains("registration token"), "{}", describe(&output));
    assert!(!synapse.user_exists(&env.user_id("ping")).await);
    let recorded: i64 = rusqlite::Connection::open(env.database_path())
        .unwrap()
        .query_row("SELECT count(*) FROM instances", [], |r| r.get(0))
        .unwrap();
    assert_eq!(recorded, 0, "the bot is not set up");

    // Nothing blocks a rerun with a token that works.
    let token = synapse.registration_token().await;
    env.write_credential("registration-token", &token);
    let output = env.setup();
    assert!(stdout(&output).contains("Recovery key for instance `ping`"), "{}", describe(&output));
    assert!(synapse.user_exists(&env.user_id("ping")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_printed_config() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.write_credential("registration-secret", crate::harness::synapse::SHARED_SECRET);
    env.homeserver_extra.push("registration_shared_secret: {credential: registration-secret}".into());
    env.env.insert("RUST_LOG".into(), "debug".into());
    env.write_config();
    let bot = env.user_id("ping");
    let password = std::fs::read_to_string(env.credentials_dir().join("ping-password")).unwrap().trim().to_owned();

    let setup = env.setup();
    let key = recovery_key(&stdout(&setup));
    let token = env.access_token("ping");

    let mut daemon = env.spawn_run();
    let person = TestUser::new(synapse, "erin-").await;
    let room = person.create_room(true, &[&bot]).await;
    person.wait_for_join(&room, &bot).await;
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &bot, REPLY_TIMEOUT).await;
    daemon.stop();
    let check = env.output(&["check-config"]);
    assert!(check.status.success(), "{}", describe(&check));
    assert!(stdout(&check).contains("{credential: ping-password}"), "{}", stdout(&check));

    let texts = [
        ("setup log", stderr(&setup)),
        ("run log", daemon.log()),
        ("check-config output", format!("{}{}", stdout(&check), stderr(&check))),
    ];
    let secrets = [
        ("password", password.as_str()),
        ("access token", token.as_str()),
        ("recovery key", key.as_str()),
        ("registration secret", crate::harness::synapse::SHARED_SECRET),
    ];
    for (where_, text) in &texts {
        assert!(text.len() > 100, "{where_} is suspiciously short: {text}");
        for (what, secret) in &secrets {
            assert!(!text.contains(secret), "the {what} appears in the {where_}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_keys_can_go_to_a_new_private_file_instead_of_the_terminal() {
    use std::os::unix::fs::PermissionsExt;
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    let key_file = env.dir.path().join("recovery-keys.txt");
    let arg = key_file.to_str().unwrap();

    let output = env.output(&["setup", "--recovery-key-file", arg]);
    assert!(output.status.success(), "{}", describe(&output));
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);
    let text = std::fs::read_to_string(&key_file).unwrap();
    let line = text.lines().find(|l| l.starts_with("ping ")).expect("a line for the instance");
    let key: String = line.split(' ').skip(3).collect::<Vec<_>>().join(" ");
    assert!(key.starts_with("Es"), "{line}");
    assert!(!stdout(&output).contains(&key) && !stderr(&output).contains(&key), "the key is only in the file");
    assert!(stdout(&output).contains(arg));

    // An existing key file is never overwritten: refused before anything else happens.
    std::fs::remove_dir_all(env.state_dir()).unwrap();
    let again = env.output(&["setup", "--recovery-key-file", arg]);
    assert_eq!(again.status.code(), Some(78), "{}", describe(&again));
    assert!(stderr(&again).contains("will not overwrite"), "{}", describe(&again));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), text);
    assert!(!env.state_dir().exists());

    // Under a systemd unit, /tmp is the unit's own and is deleted with it: refused instead of a false success.
    let refused = env
        .command(&["setup", "--recovery-key-file", "/tmp/maubot-keys.txt"])
        .env("INVOCATION_ID", "x")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(78), "{}", describe(&refused));
    assert!(stderr(&refused).contains("private /tmp"), "{}", describe(&refused));
    assert!(!std::path::Path::new("/tmp/maubot-keys.txt").exists() && !env.state_dir().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_from_before_setup_are_joined_but_old_commands_are_history() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    let bot = env.user_id("ping");
    let person = TestUser::new(synapse, "ivan-").await;
    // Invited, and a command sent, before the bot was ever set up.
    let room = person.create_room(false, &[&bot]).await;
    let old_ping = person.send_text(&room, "!ping").await;

    env.setup();
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    let new_ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&new_ping, &bot, REPLY_TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = person.room_history(&room).await;
    let answered_old = history.iter().any(|m| m.in_reply_to.as_ref() == Some(&old_ping));
    assert!(!answered_old, "a command from before setup is history, not a command");
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_accepted_only_from_the_allow_list() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    let bot = env.user_id("ping");
    let friend = TestUser::new(synapse, "judy-").await;
    let stranger = TestUser::new(synapse, "mallory-").await;
    env.allow_invites_from = vec![friend.client.user_id().unwrap().to_string()];
    env.write_config();
    env.setup();
    let mut daemon = env.spawn_run();

    let declined = stranger.create_room(false, &[&bot]).await;
    let accepted = friend.create_room(false, &[&bot]).await;
    friend.wait_for_join(&accepted, &bot).await;
    let bot_id = matrix_sdk::ruma::UserId::parse(bot.as_str()).unwrap();
    crate::harness::eventually(Duration::from_secs(30), "the stranger's invite to be declined", || {
        let room = declined.clone();
        let bot_id = bot_id.clone();
        async move {
            let member = room.get_member(&bot_id).await.ok().flatten()?;
            (*member.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Leave).then_some(())
        }
    })
    .await;
    assert!(daemon.log().contains("declining an invite"), "{}", daemon.log());
    assert_eq!(daemon.stop().code(), Some(0));
}

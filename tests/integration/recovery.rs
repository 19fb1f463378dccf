//! `maubot setup --recover ID` and `--reset-identity ID` against a real Synapse: a bot whose E2EE store is lost
//! gets a new device, cross-signed by its old identity, with the keys of what was said before (from the key
//! backup), from the key file setup wrote; a missing or wrong key and an intact store are refused with nothing
//! changed; a reset gives a new identity and a new recovery key; the other bot is never touched.

use std::process::Stdio;
use std::time::Duration;

use matrix_sdk::ruma::{OwnedDeviceId, UserId};

use crate::harness::bot::{BotEnv, describe};
use crate::harness::client::TestUser;
use crate::harness::eventually;
use crate::harness::stores::{decrypted_with_store, session};
use crate::harness::synapse::synapse;

const TIMEOUT: Duration = Duration::from_secs(90);

/// How many room keys of `room` the user's current key backup holds.
async fn backed_up_keys(homeserver: &str, token: &str, room: &str) -> usize {
    let get = |path: String| async move {
        let response = reqwest::Client::new().get(format!("{homeserver}{path}")).bearer_auth(token).send().await;
        response.unwrap().json::<serde_json::Value>().await.unwrap()
    };
    let version = get("/_matrix/client/v3/room_keys/version".into()).await;
    let Some(version) = version["version"].as_str() else { return 0 };
    let keys = get(format!("/_matrix/client/v3/room_keys/keys/{room}?version={version}")).await;
    keys["sessions"].as_object().map_or(0, |s| s.len())
}

/// `maubot setup ARGS` with `input` on standard input.
fn with_stdin(env: &BotEnv, args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut command = env.command(args);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_is_recovered_with_the_key_and_what_was_said_before_still_decrypts() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["keeper", "bystander"]).await;
    let bot = env.user_id("keeper");
    env.write_config();
    let keys = env.dir.path().join("recovery-keys.txt");
    let output = env.output(&["setup", "--recovery-key-file", keys.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    let key_file = std::fs::read(&keys).unwrap();
    let person = TestUser::new(synapse, "rhea-").await;
    let room = person.create_room(true, &[&bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    let secret = person.send_text(&room, "said before the store was lost").await;
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &bot, TIMEOUT).await;
    let (old_device, old_token) = session(&env.database_path(), "keeper");
    let bystander_device = env.device_id("bystander");
    eventually(TIMEOUT, "the bot to back the room key up", || {
        let (url, token, room) = (synapse.url.clone(), old_token.clone(), room.room_id().to_string());
        async move { (backed_up_keys(&url, &token, &room).await > 0).then_some(()) }
    })
    .await;
    let master_key = synapse.master_key(&bot).await.expect("setup made an identity");
    daemon.stop();

    // The store is lost; `run` says how to recover.
    std::fs::remove_dir_all(env.state_dir().join("instances/keeper/store")).unwrap();
    let mut daemon = env.spawn_run();
    daemon.wait_for_log("--recover keeper", TIMEOUT);
    daemon.stop();

    // Without a key, or with another bot's, nothing changes for the bot.
    let output = with_stdin(&env, &["setup", "--recover", "keeper"], b"");
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no recovery key for `keeper`"), "{}", describe(&output));
    let others_key = String::from_utf8_lossy(&key_file)
        .lines()
        .find(|l| l.starts_with("bystander "))
        .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
        .unwrap();
    let output = with_stdin(&env, &["setup", "--recover", "keeper"], others_key.as_bytes());
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("does not open") && output.stdout.is_empty(),
        "{}",
        describe(&output)
    );
    assert_eq!(session(&env.database_path(), "keeper"), (old_device.clone(), old_token.clone()), "record unchanged");

    // The key file on standard input: recovered, resuming the device the refused attempt logged in.
    let output = with_stdin(&env, &["setup", "--recover", "keeper"], &key_file);
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("keys of 1 room were restored"), "{}", describe(&output));
    assert!(stdout.contains(&format!("The old device {old_device} was logged out")), "{}", describe(&output));
    let (device, token) = session(&env.database_path(), "keeper");
    assert_ne!(device, old_device, "a new device");
    assert_eq!(synapse.devices(&bot).await, vec![device.clone()], "the old device is gone, and no stray one");
    assert_eq!(synapse.master_key(&bot).await.as_ref(), Some(&master_key), "the same identity");
    assert!(!env.state_dir().join("instances/keeper/store.recovering").exists());
    assert!(!env.state_dir().join("instances/keeper/store/session.json").exists(), "no token left beside the store");

    // Others see the new device signed by the bot's identity.
    let bot_id = UserId::parse(&bot).unwrap();
    person.client.encryption().request_user_identity(&bot_id).await.unwrap();
    let seen = person.client.encryption().get_device(&bot_id, &OwnedDeviceId::from(device.as_str())).await.unwrap();
    assert!(seen.expect("the person's client knows the device").is_cross_signed_by_owner());

    // The recovered store decrypts what was said before the loss, with keys it holds itself.
    let body = decrypted_with_store(
        &synapse.url,
        &env.state_dir().join("instances/keeper/store"),
        &bot,
        &device,
        &token,
        &room.room_id().to_owned(),
        &secret,
    )
    .await;
    assert_eq!(body, "said before the store was lost");

    // It answers again, encrypted; the other bot kept its device.
    let mut daemon = env.spawn_run();
    let ping = person.send_text(&room, "!ping after the recovery").await;
    assert!(person.wait_for_reply(&ping, &bot, TIMEOUT).await.encrypted);
    daemon.stop();
    assert_eq!(env.device_id("bystander"), bystander_device);

    // An intact store has nothing to recover.
    let output = with_stdin(&env, &["setup", "--recover", "keeper"], &key_file);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing to recover"), "{}", describe(&output));

    // A reset, only when asked: a new identity and a new key, on the same device.
    let new_keys = env.dir.path().join("keys-after-reset.txt");
    let output =
        env.output(&["setup", "--reset-identity", "keeper", "--recovery-key-file", new_keys.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Room members will see"), "{}", describe(&output));
    let new_key_file = std::fs::read_to_string(&new_keys).unwrap();
    let new_line = new_key_file.lines().find(|l| l.starts_with("keeper ")).expect("a new key for keeper");
    assert!(!String::from_utf8_lossy(&key_file).contains(new_line.split_whitespace().nth(3).unwrap()));
    assert_ne!(synapse.master_key(&bot).await.as_ref(), Some(&master_key), "a new identity");
    assert_eq!(session(&env.database_path(), "keeper").0, device, "the same device");
}

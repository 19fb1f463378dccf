//! `maubot backup` and `maubot restore` against a real Synapse: a backup taken while a person sends 200
//! commands (every one answered once), restored into a new state directory where the bot runs with the same
//! device and still decrypts a message sent before the backup; a damaged archive, one from a newer maubot and a
//! state directory in use are refused with nothing written; one bot moved to another host (disabled at the
//! source), where it answers with its device while the host's own bot goes on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::api::Api;
use crate::harness::bot::{BotEnv, BotInstance, describe};
use crate::harness::client::TestUser;
use crate::harness::eventually;
use crate::harness::stores::{decrypted_with_store, session};
use crate::harness::synapse::synapse;

const TIMEOUT: Duration = Duration::from_secs(90);

/// Every file below `dir` (to show that nothing was written).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            out.push(entry.path());
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_with_the_same_device_and_history_and_bad_archives_are_refused() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["keeper"]).await;
    let bot = env.user_id("keeper");
    env.write_config();
    env.setup();
    let person = TestUser::new(synapse, "bea-").await;
    let room = person.create_room(true, &[&bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    let secret = person.send_text(&room, "the secret sent before the backup").await;
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, &bot, TIMEOUT).await;
    let (device, _) = session(&env.database_path(), "keeper");

    // 200 commands while the backup is taken.
    let sender = {
        let (client, room) = (person.client.clone(), room.room_id().to_owned());
        tokio::spawn(async move {
            let room = client.get_room(&room).unwrap();
            let mut sent = Vec::new();
            for i in 0..200 {
                let content =
                    matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(format!("!ping {i}"));
                sent.push(room.send(content).await.unwrap().response.event_id);
            }
            sent
        })
    };
    let archive = env.dir.path().join("backup.tar");
    eventually(TIMEOUT, "some commands to be answered", || {
        let answered = person.messages_from(&bot).len();
        async move { (answered > 20).then_some(()) }
    })
    .await;
    let output = {
        let command = env.command(&["backup", "--to", archive.to_str().unwrap()]);
        tokio::task::spawn_blocking(move || {
            let mut command = command;
            command.output().unwrap()
        })
        .await
        .unwrap()
    };
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 bot (keeper)"), "{}", describe(&output));
    assert_eq!(std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);
    let sent = sender.await.unwrap();
    for event in &sent {
        person.wait_for_reply(event, &bot, TIMEOUT).await;
    }
    daemon.stop();
    for event in &sent {
        assert_eq!(person.replies_to(event, &bot).len(), 1, "each command answered once");
    }

    // Nothing is restored over existing state.
    let output = env.output(&["restore", "--from", archive.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not empty"), "{}", describe(&output));

    // A damaged copy and one from a newer maubot are refused before anything is written.
    let old_state = env.dir.path().join("state-before");
    std::fs::rename(env.state_dir(), &old_state).unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    // A byte inside the host database's data (not the tar padding).
    let at = tar::Archive::new(std::fs::File::open(&archive).unwrap())
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some("maubot.db"))
        .map(|e| e.raw_file_position() as usize + 100)
        .unwrap();
    bytes[at] ^= 0xff;
    let damaged = env.dir.path().join("damaged.tar");
    std::fs::write(&damaged, &bytes).unwrap();
    let output = env.output(&["restore", "--from", damaged.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not match its checksum"), "{}", describe(&output));
    assert!(!env.state_dir().exists(), "nothing written");
    let newer = env.dir.path().join("newer.tar");
    {
        let manifest = serde_json::json!({"format": 99, "kind": "host", "created_at": 0, "written_by": "maubot 9.0.0",
            "schema_version": 99, "compat_version": 99, "config_digest": "", "instances": [], "files": []});
        let text = serde_json::to_vec(&manifest).unwrap();
        let mut builder = tar::Builder::new(std::fs::File::create(&newer).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o600);
        builder.append_data(&mut header, "manifest.json", text.as_slice()).unwrap();
        builder.finish().unwrap();
    }
    let output = env.output(&["restore", "--from", newer.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("written by maubot 9.0.0"), "{}", describe(&output));
    assert!(!env.state_dir().exists(), "nothing written");
    let output = env.output(&["restore", "--from", env.config_path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a maubot backup"), "{}", describe(&output));
    assert!(
        !env.state_dir().exists() && tree(env.dir.path()).iter().all(|p| !p.to_string_lossy().contains("restoring"))
    );

    // The archive restores into the new state directory (made empty beforehand, as systemd's
    // `StateDirectory=` does): same device, and it answers.
    std::fs::create_dir(env.state_dir()).unwrap();
    let output = env.output(&["restore", "--from", archive.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(std::fs::metadata(env.state_dir()).unwrap().permissions().mode() & 0o777, 0o700);
    let (restored_device, token) = session(&env.database_path(), "keeper");
    assert_eq!(restored_device, device, "the same device");
    let mut daemon = env.spawn_run();
    let ping = person.send_text(&room, "!ping after the restore").await;
    let pong = person.wait_for_reply(&ping, &bot, TIMEOUT).await;
    assert!(pong.encrypted, "answered in the encrypted room, encrypted");
    daemon.stop();
    assert_eq!(synapse.devices(&bot).await, vec![device.clone()], "no new device");
    for event in &sent {
        assert_eq!(person.replies_to(event, &bot).len(), 1, "nothing answered twice after the restore");
    }
    // The restored store still decrypts what was said before the backup.
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
    assert_eq!(body, "the secret sent before the backup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bot_moves_to_another_host_and_is_disabled_at_the_source() {
    let synapse = synapse();
    let mut source = BotEnv::with_ping_bots(synapse, &["stay", "mover"]).await;
    source.enable_api_login();
    source.write_config();
    source.setup();
    let mover = source.user_id("mover");
    let person = TestUser::new(synapse, "max-").await;
    let room = person.create_room(false, &[&mover]).await;
    let mut daemon = source.spawn_run();
    person.wait_for_join(&room, &mover).await;
    let (device, _) = session(&source.database_path(), "mover");

    let archive = source.dir.path().join("mover.tar");
    let output = source.output(&["backup", "--instance", "mover", "--to", archive.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("Bot `mover` is now disabled here"),
        "{}",
        describe(&output)
    );
    daemon.signal(libc::SIGHUP);
    let mut api = Api::new(&source);
    api.login().await;
    api.wait_state("mover", &["configured"], TIMEOUT).await;
    assert_eq!(api.instance("stay").await["state"], "running", "the other bot is untouched");
    daemon.stop();

    // The other host: its own bot, then the moved one (configured with the same user and password).
    let mut target = BotEnv::with_ping_bots(synapse, &["local"]).await;
    target.write_config();
    target.setup();
    let moved = source.instances.iter().find(|i| i.id == "mover").unwrap();
    target.instances.push(BotInstance {
        id: "mover".into(),
        localpart: moved.localpart.clone(),
        extra: moved.extra.clone(),
    });
    let password = std::fs::read_to_string(source.credentials_dir().join("mover-password")).unwrap();
    target.write_credential("mover-password", &password);
    target.write_config();
    let output = target.output(&["restore", "--instance", "mover", "--from", archive.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(session(&target.database_path(), "mover").0, device, "the same device on the new host");
    let output = target.output(&["restore", "--instance", "mover", "--from", archive.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("exists in"), "{}", describe(&output));
    let output = target.output(&["restore", "--instance", "nobody", "--from", archive.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("holds no bot `nobody` (it holds: mover)"),
        "{}",
        describe(&output)
    );

    let mut daemon = target.spawn_run();
    let ping = person.send_text(&room, "!ping on the new host").await;
    person.wait_for_reply(&ping, &mover, TIMEOUT).await;
    let local = target.user_id("local");
    let other_room = person.create_room(false, &[&local]).await;
    person.wait_for_join(&other_room, &local).await;
    let ping = person.send_text(&other_room, "!ping").await;
    person.wait_for_reply(&ping, &local, TIMEOUT).await;
    daemon.stop();
    assert_eq!(synapse.devices(&mover).await, vec![device], "still one device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_encrypted_to_an_age_recipient_restores_only_with_its_identity() {
    use age::secrecy::ExposeSecret;
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["sealed"]).await;
    env.write_config();
    env.setup();
    let bot = env.user_id("sealed");
    let (device, token) = session(&env.database_path(), "sealed");
    let identity = age::x25519::Identity::generate();
    let key_file = env.dir.path().join("backup-key.txt");
    std::fs::write(&key_file, format!("# maubot backups\n{}\n", identity.to_string().expose_secret())).unwrap();
    let archive = env.dir.path().join("sealed.tar.age");

    let output = env.output(&["backup", "--to", archive.to_str().unwrap(), "--encrypt-to", "age1nope"]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not an age X25519 recipient"), "{}", describe(&output));
    assert!(!archive.exists());
    let recipient = identity.to_public().to_string();
    let output = env.output(&["backup", "--to", archive.to_str().unwrap(), "--encrypt-to", &recipient]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("encrypted to 1 age recipient"), "{}", describe(&output));
    let bytes = std::fs::read(&archive).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1"));
    for clear in [token.as_bytes(), b"manifest.json".as_slice(), b"SQLite format 3".as_slice()] {
        assert!(!bytes.windows(clear.len()).any(|w| w == clear), "nothing readable in the archive");
    }

    std::fs::rename(env.state_dir(), env.dir.path().join("state-before")).unwrap();
    let output = env.output(&["restore", "--from", archive.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is encrypted with age"), "{}", describe(&output));
    let other_key = env.dir.path().join("other-key.txt");
    std::fs::write(&other_key, age::x25519::Identity::generate().to_string().expose_secret()).unwrap();
    let output =
        env.output(&["restore", "--from", archive.to_str().unwrap(), "--identity", other_key.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot be decrypted"), "{}", describe(&output));
    assert!(!env.state_dir().exists(), "nothing written");

    let output =
        env.output(&["restore", "--from", archive.to_str().unwrap(), "--identity", key_file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(session(&env.database_path(), "sealed").0, device, "the same device");
    let person = TestUser::new(synapse, "sia-").await;
    let room = person.create_room(true, &[&bot]).await;
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    let ping = person.send_text(&room, "!ping").await;
    assert!(person.wait_for_reply(&ping, &bot, TIMEOUT).await.encrypted);
    daemon.stop();
}

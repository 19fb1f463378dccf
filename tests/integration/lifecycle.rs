//! The lifecycle operators rely on, against a real Synapse: setup never strands a bot (each bot is its own unit
//! of work, resumed after a failure or an interruption), and a host runs the bots that are set up while it shows
//! the others, and takes in new ones by reloading.

use std::time::Duration;

use serde_json::Value;

use crate::harness::api::Api;
use crate::harness::bot::{BotEnv, BotInstance, describe};
use crate::harness::client::TestUser;
use crate::harness::daemon::NotifySocket;
use crate::harness::proxy::{Hold, Proxy};
use crate::harness::synapse::{SHARED_SECRET, synapse};
use crate::harness::unique;

const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every `!ping` in a new room with `bots` is answered by each of them.
async fn all_answer(person: &TestUser, bots: &[&str], encrypted: bool) {
    let room = person.create_room(encrypted, bots).await;
    for bot in bots {
        person.wait_for_join(&room, bot).await;
    }
    let ping = person.send_text(&room, "!ping").await;
    for bot in bots {
        let pong = person.wait_for_reply(&ping, bot, REPLY_TIMEOUT).await;
        assert!(pong.body.starts_with("pong"), "{}", pong.body);
        assert_eq!(pong.encrypted, encrypted);
    }
}

/// Waits until the proxy holds a request of `setup`'s; fails with setup's log if it ends first.
fn wait_until_held(proxy: &Proxy, setup: &mut crate::harness::daemon::Daemon, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.held() == 0 {
        if let Some(status) = setup.child.try_wait().unwrap() {
            panic!("setup ended ({status}) before {what}:\n{}", setup.log());
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}:\n{}", setup.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `user`'s device is cross-signed by its owner, as a person's client sees it.
async fn cross_signed(person: &TestUser, user: &str, device: &str) -> bool {
    let user = matrix_sdk::ruma::UserId::parse(user).unwrap();
    let _ = person.client.encryption().request_user_identity(&user).await;
    let device = person.client.encryption().get_device(&user, device.into()).await.unwrap();
    device.is_some_and(|d| d.is_cross_signed_by_owner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bot_keeps_the_finished_one_and_a_rerun_finishes_it() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["one", "two"]).await;
    let (one, two) = (env.user_id("one"), env.user_id("two"));
    let right = std::fs::read_to_string(env.credentials_dir().join("two-password")).unwrap();
    env.write_credential("two-password", "a-wrong-password\n");

    let failed = env.output(&["setup"]);
    assert_eq!(failed.status.code(), Some(78), "a wrong password is the config's to fix: {}", describe(&failed));
    assert!(stdout(&failed).contains("Recovery key for instance `one`"), "{}", describe(&failed));
    assert!(!stdout(&failed).contains("instance `two`"), "{}", describe(&failed));
    assert!(
        stderr(&failed).contains("`two`: login as") && stderr(&failed).contains("resumes"),
        "{}",
        describe(&failed)
    );
    let one_device = env.device_id("one");
    assert_eq!(synapse.devices(&one).await, vec![one_device.clone()]);
    let one_master = synapse.master_key(&one).await.expect("one is cross-signed");

    env.write_credential("two-password", &right);
    let rerun = env.output(&["setup"]);
    assert!(rerun.status.success(), "{}", describe(&rerun));
    let out = stdout(&rerun);
    assert!(out.contains("Setting up 1 bot: two (resuming"), "{out}");
    assert!(out.contains("Already set up, left alone: one."), "{out}");
    assert!(out.contains("Recovery key for instance `two`") && !out.contains("instance `one`"), "{out}");
    assert_eq!(env.device_id("one"), one_device, "the first bot keeps its device");
    assert_eq!(synapse.devices(&one).await, vec![one_device]);
    assert_eq!(synapse.master_key(&one).await, Some(one_master), "and its identity");
    assert_eq!(synapse.devices(&two).await, vec![env.device_id("two")], "one device for the second bot");

    let mut daemon = env.spawn_run();
    let person = TestUser::new(synapse, "uma-").await;
    all_answer(&person, &[&one, &two], true).await;
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_e2ee_bootstrap_resumes_with_the_same_identity() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let env = BotEnv::with_ping_bots_behind(synapse, &proxy, &["ping"]).await;
    let bot = env.user_id("ping");

    // The cross-signing keys are on the server and the key backup is being created: the moment that used to
    // strand a bot (its private keys thrown away, "already has a cross-signing identity" on every rerun).
    proxy.hold(Some(Hold { method: "POST", path: "/room_keys/version", forward: false }));
    let mut setup = env.spawn(&["setup"]);
    wait_until_held(&proxy, &mut setup, "setup to reach the key backup");
    let master = synapse.master_key(&bot).await.expect("the identity was uploaded before the interruption");
    setup.signal(libc::SIGINT);
    assert_eq!(setup.wait_exit(Duration::from_secs(30)).code(), Some(130), "{}", setup.log());
    assert!(setup.log().contains("interrupted") && setup.log().contains("again to resume"), "{}", setup.log());
    assert!(!setup.log().contains("Recovery key"), "{}", setup.log());

    proxy.hold(None);
    let rerun = env.output(&["setup"]);
    assert!(rerun.status.success(), "{}", describe(&rerun));
    assert!(stdout(&rerun).contains("(resuming: device"), "{}", stdout(&rerun));
    assert!(stdout(&rerun).contains("Recovery key for instance `ping`"), "{}", stdout(&rerun));
    assert_eq!(synapse.master_key(&bot).await, Some(master), "the same identity, not a new one");
    let device = env.device_id("ping");
    assert_eq!(synapse.devices(&bot).await, vec![device.clone()], "one device, the one setup made first");

    let mut daemon = env.spawn_run();
    let person = TestUser::new(synapse, "vera-").await;
    all_answer(&person, &[&bot], true).await;
    assert!(cross_signed(&person, &bot, &device).await, "the device is cross-signed");
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_bot_resumes_with_the_password_setup_generated() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let mut env = BotEnv::empty(synapse);
    env.homeserver_url = proxy.url.clone();
    env.write_credential("registration-secret", SHARED_SECRET);
    env.homeserver_extra.push("registration_shared_secret: {credential: registration-secret}".into());
    env.instances.push(BotInstance { id: "ping".into(), localpart: unique("genbot-"), extra: vec![] });
    env.write_config();
    let bot = env.user_id("ping");

    // Registered and logged in with a password nobody configured; interrupted before cross-signing, which
    // needs that password again.
    proxy.hold(Some(Hold { method: "POST", path: "/keys/device_signing/upload", forward: false }));
    let mut setup = env.spawn(&["setup"]);
    wait_until_held(&proxy, &mut setup, "setup to reach cross-signing");
    setup.signal(libc::SIGINT);
    assert_eq!(setup.wait_exit(Duration::from_secs(30)).code(), Some(130), "{}", setup.log());
    assert!(synapse.user_exists(&bot).await);

    proxy.hold(None);
    let rerun = env.output(&["setup"]);
    assert!(rerun.status.success(), "{}", describe(&rerun));
    assert!(synapse.master_key(&bot).await.is_some());
    assert_eq!(synapse.devices(&bot).await.len(), 1, "the login was repeated on the same device");

    // The generated password is kept with the bot's state: the account stays recoverable.
    let password: String = rusqlite::Connection::open(env.database_path())
        .unwrap()
        .query_row("SELECT generated_password FROM instances WHERE id = 'ping'", [], |r| r.get(0))
        .unwrap();
    let login = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/login", synapse.url))
        .json(&serde_json::json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": bot},
                                  "password": password, "device_id": env.device_id("ping")}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200, "the stored password logs in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_without_state_waits_while_the_others_run_and_joins_them_after_setup_and_reload() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["first"]).await;
    env.enable_api_login();
    env.setup();
    let first = env.user_id("first");
    let first_device = env.device_id("first");

    // A second bot is configured (as a `nixos-rebuild switch` would), but not set up.
    env.configure_ping_bot_not_set_up(synapse, "second").await;
    let second = env.user_id("second");

    let mut notify = NotifySocket::bind(env.dir.path());
    let socket = notify.path.clone();
    let mut daemon = env.spawn_run_with(|c| {
        c.env("NOTIFY_SOCKET", &socket);
    });
    let mut api = Api::new(&env);
    api.wait_up(&mut daemon).await;
    api.login().await;
    let ready = notify.wait_for(Duration::from_secs(60), |m| m.contains("READY=1")).expect("READY=1");
    assert!(ready.contains("1/1 bots syncing; not set up: second"), "{ready}");
    api.wait_state("first", &["running"], Duration::from_secs(30)).await;
    let waiting = api.wait_state("second", &["created"], Duration::from_secs(5)).await;
    assert!(
        waiting["last_error"].as_str().unwrap_or_default().contains("maubot setup --add-instance second"),
        "{waiting}"
    );
    let (_, health) = api.get("/api/v1/health").await;
    assert_eq!((health["status"].as_str(), &health["not_set_up"]), (Some("degraded"), &serde_json::json!(["second"])));
    assert!(
        daemon.log().contains("instance `second` is configured but not set up")
            && daemon.log().contains("`maubot setup --add-instance second`"),
        "{}",
        daemon.log()
    );

    // Neither enabling nor starting it through the API can make it run: 409 with the fix.
    for action in ["enable", "start", "restart"] {
        let (status, body) = api.post(&format!("/api/v1/instances/second/{action}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not_set_up")), "{action}: {body}");
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains("--add-instance second"), "{body}");
    }
    assert!(synapse.devices(&second).await.is_empty(), "a bot that is not set up never logs in");
    let person = TestUser::new(synapse, "wanda-").await;
    all_answer(&person, &[&first], false).await;

    // Setup adds exactly the missing bot and says so; the first one is not touched.
    let added = env.output(&["setup"]);
    assert!(added.status.success(), "{}", describe(&added));
    assert!(stdout(&added).contains("Setting up 1 bot: second (new)."), "{}", stdout(&added));
    assert!(stdout(&added).contains("Already set up, left alone: first."), "{}", stdout(&added));
    assert_eq!(env.device_id("first"), first_device);

    // SIGHUP: the new bot starts, the running one goes on (its session is not restored a second time).
    notify.received.clear();
    daemon.signal(libc::SIGHUP);
    notify
        .wait_for(Duration::from_secs(30), |m| m.starts_with("RELOADING=1") && m.contains("MONOTONIC_USEC="))
        .expect("RELOADING=1 with MONOTONIC_USEC");
    notify.wait_for(Duration::from_secs(30), |m| m.starts_with("READY=1")).expect("READY=1 after the reload");
    api.wait_state("second", &["running"], Duration::from_secs(60)).await;
    all_answer(&person, &[&first, &second], false).await;
    let restored_first = daemon.log().lines().filter(|l| l.contains("session restored") && l.contains("first")).count();
    assert_eq!(restored_first, 1, "the first bot kept running through the reload:\n{}", daemon.log());

    // Signals that used to kill the daemon are logged and ignored.
    daemon.signal(libc::SIGUSR1);
    daemon.wait_for_log("ignoring the signal", Duration::from_secs(10));
    assert_eq!(api.instance("first").await["state"], "running");
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_whose_store_does_not_match_fails_alone_and_for_good() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["good", "bad"]).await;
    env.enable_api_login();
    env.setup();
    let (good, bad) = (env.user_id("good"), env.user_id("bad"));
    let devices = synapse.devices(&bad).await;

    // bad's session says another device than its store holds (e.g. a database from another backup).
    let db = rusqlite::Connection::open(env.database_path()).unwrap();
    let real: String = db.query_row("SELECT device_id FROM instances WHERE id = 'bad'", [], |r| r.get(0)).unwrap();
    db.execute("UPDATE instances SET device_id = 'OTHERDEVICE' WHERE id = 'bad'", []).unwrap();
    drop(db);
    let (mut daemon, api) = Api::start_logged_in(&env).await;
    let failed = api.wait_state("bad", &["failed"], Duration::from_secs(30)).await;
    assert!(failed["last_error"].as_str().unwrap_or_default().contains("do not match"), "{failed}");
    let person = TestUser::new(synapse, "xena-").await;
    all_answer(&person, &[&good], false).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still: Value = api.instance("bad").await;
    assert_eq!((still["state"].as_str(), still["restarts"].as_u64()), (Some("failed"), Some(0)), "{still}");

    // A second host on the same state directory is refused, naming the first.
    let mut second = env.spawn_run();
    assert_eq!(second.wait_exit(Duration::from_secs(30)).code(), Some(78), "{}", second.log());
    let pid = daemon.pid();
    assert!(second.log().contains(&format!("in use by another maubot (pid {pid}: maubot run)")), "{}", second.log());
    assert_eq!(daemon.stop().code(), Some(0));

    // bad's E2EE store is gone: it fails without creating anything; good runs.
    let db = rusqlite::Connection::open(env.database_path()).unwrap();
    db.execute("UPDATE instances SET device_id = ?1 WHERE id = 'bad'", [&real]).unwrap();
    drop(db);
    let store = env.state_dir().join("instances/bad/store");
    let moved = env.dir.path().join("store-backup");
    std::fs::rename(&store, &moved).unwrap();
    std::fs::create_dir(&store).unwrap();
    let mut daemon = env.spawn_run();
    api.wait_up(&mut daemon).await;
    let failed = api.wait_state("bad", &["failed"], Duration::from_secs(30)).await;
    assert!(failed["last_error"].as_str().unwrap_or_default().contains("is missing"), "{failed}");
    assert_eq!(api.wait_state("good", &["running"], Duration::from_secs(30)).await["state"], "running");
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0, "nothing created in the store directory");
    assert_eq!(synapse.devices(&bad).await, devices, "no device created");
    assert_eq!(daemon.stop().code(), Some(0));

    // Restored: it runs again.
    std::fs::remove_dir(&store).unwrap();
    std::fs::rename(&moved, &store).unwrap();
    let mut daemon = env.spawn_run();
    api.wait_up(&mut daemon).await;
    api.wait_state("bad", &["running"], Duration::from_secs(60)).await;
    all_answer(&person, &[&good, &bad], false).await;
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_stops_removed_and_disabled_bots_and_restarts_only_changed_ones() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["keep", "change", "off", "gone"]).await;
    env.enable_api_login();
    env.setup();
    let (mut daemon, api) = Api::start_logged_in(&env).await;
    for id in ["keep", "change", "off", "gone"] {
        api.wait_state(id, &["running"], Duration::from_secs(60)).await;
    }
    let restored = |daemon: &crate::harness::daemon::Daemon, id: &str| {
        daemon
            .log()
            .lines()
            .filter(|l| l.contains("session restored") && l.contains(&format!("instance={id} ")))
            .count()
    };

    env.instances.retain(|i| i.id != "gone");
    env.instances.iter_mut().find(|i| i.id == "off").unwrap().extra.push("enabled: false".into());
    env.instances.iter_mut().find(|i| i.id == "change").unwrap().extra.push("max_command_age_secs: 301".into());
    env.write_config();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(30));
    api.wait_state("off", &["configured"], Duration::from_secs(30)).await;
    crate::harness::eventually(Duration::from_secs(30), "the removed bot to be gone", || async {
        (api.get("/api/v1/instances/gone").await.0 == 404).then_some(())
    })
    .await;
    api.wait_state("change", &["running"], Duration::from_secs(60)).await;
    crate::harness::eventually(Duration::from_secs(30), "the changed bot to restart", || async {
        (restored(&daemon, "change") == 2).then_some(())
    })
    .await;
    assert_eq!(restored(&daemon, "keep"), 1, "the unchanged bot was not restarted:\n{}", daemon.log());
    let reloaded = daemon.log().lines().find(|l| l.contains("configuration reloaded")).unwrap_or_default().to_owned();
    assert!(
        reloaded.contains(r#"stopped=["off"]"#)
            && reloaded.contains(r#"restarted=["change"]"#)
            && reloaded.contains(r#"removed=["gone"]"#),
        "{reloaded}"
    );
    let person = TestUser::new(synapse, "yves-").await;
    all_answer(&person, &[&env.user_id("keep"), &env.user_id("change")], false).await;

    // SIGUSR2 and SIGALRM are ignored as well.
    daemon.signal(libc::SIGUSR2);
    daemon.signal(libc::SIGALRM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.instance("keep").await["state"], "running");
    assert_eq!(daemon.stop().code(), Some(0));
}

/// systemd starts services with a soft limit of 1024 open files and a hard one of 524288; about 75 bots use the
/// 1024 up (each keeps its stores' SQLite files open), and SQLite then fails with "unable to open database file".
/// Three bots under a soft limit of 32 stand for that: the daemon raises its soft limit to the hard one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_that_need_more_open_files_than_the_inherited_soft_limit_all_answer() {
    let synapse = synapse();
    let ids = ["files-a", "files-b", "files-c"];
    let env = BotEnv::with_ping_bots(synapse, &ids).await;
    env.setup();
    let bots = ids.map(|id| env.user_id(id));
    let mut daemon = env.spawn_run_with(|c| {
        use std::os::unix::process::CommandExt;
        // SAFETY: getrlimit and setrlimit are async-signal-safe and change only the child.
        unsafe {
            c.pre_exec(|| {
                let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                limit.rlim_cur = 32;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let person = TestUser::new(synapse, "files-").await;
    all_answer(&person, &bots.iter().map(String::as_str).collect::<Vec<_>>(), false).await;
    assert!(!daemon.log().contains("unable to open database file"), "{}", daemon.log());
    assert_eq!(daemon.stop().code(), Some(0));
}

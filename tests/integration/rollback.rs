//! Rollbacks (`nixos-rebuild --rollback`) meet state a newer maubot wrote. Against a real Synapse: a host
//! database an older maubot left is migrated with a copy of it kept; a matrix-sdk store a newer matrix-sdk
//! migrated stops its bot alone (naming both versions) while the other bot answers; a host database too new to
//! read is refused with exit 78, naming the copy to restore.

use std::time::Duration;

use crate::harness::api::Api;
use crate::harness::bot::BotEnv;
use crate::harness::client::TestUser;
use crate::harness::synapse::synapse;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The copies of the host database taken before a migration.
fn host_copies(env: &BotEnv) -> Vec<String> {
    std::fs::read_dir(env.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("maubot.db.schema-") && name.ends_with(".bak"))
        .collect()
}

async fn answers(person: &TestUser, bot: &str) {
    let room = person.create_room(false, &[bot]).await;
    person.wait_for_join(&room, bot).await;
    let ping = person.send_text(&room, "!ping").await;
    person.wait_for_reply(&ping, bot, TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_from_another_version_is_migrated_with_a_copy_or_refused_naming_it() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["rolled", "steady"]).await;
    env.enable_api_login();
    env.setup();
    let (rolled, steady) = (env.user_id("rolled"), env.user_id("steady"));
    let person = TestUser::new(synapse, "ruth-").await;

    // The host database as a maubot with schema 3 left it: migrated on start, the schema-3 file kept beside it.
    let db = rusqlite::Connection::open(env.database_path()).unwrap();
    db.execute_batch(
        "DROP TABLE jobs; DROP TABLE jobs_done; UPDATE meta SET value = '3' WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(db);
    assert!(host_copies(&env).is_empty());
    let (mut daemon, api) = Api::start_logged_in(&env).await;
    answers(&person, &rolled).await;
    let copies = host_copies(&env);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].starts_with("maubot.db.schema-3."), "{copies:?}");
    assert!(daemon.log().contains(&copies[0]), "the copy is named in the log:\n{}", daemon.log());
    assert_eq!(daemon.stop().code(), Some(0));

    // rolled's crypto store as a newer matrix-sdk left it: that bot alone stays stopped.
    let crypto = env.state_dir().join("instances/rolled/store/matrix-sdk-crypto.sqlite3");
    rusqlite::Connection::open(&crypto)
        .unwrap()
        .execute("UPDATE kv SET value = X'63' WHERE key = 'version'", [])
        .unwrap();
    let mut daemon = env.spawn_run();
    api.wait_up(&mut daemon).await;
    let failed = api.wait_state("rolled", &["failed"], TIMEOUT).await;
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("version 99") && error.contains("newer matrix-sdk"), "{failed}");
    answers(&person, &steady).await;
    assert_eq!(api.instance("rolled").await["restarts"].as_u64(), Some(0), "not restarted in a loop");
    assert_eq!(daemon.stop().code(), Some(0));
    let version: Vec<u8> = rusqlite::Connection::open(&crypto)
        .unwrap()
        .query_row("SELECT value FROM kv WHERE key = 'version'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, vec![99], "the store was not touched");

    // A host database an incompatible newer maubot wrote: refused before anything runs, naming the copy.
    let db = rusqlite::Connection::open(env.database_path()).unwrap();
    db.execute("UPDATE meta SET value = '99' WHERE key IN ('schema_version', 'compat_version')", []).unwrap();
    drop(db);
    let output = env.output(&["run"]);
    assert_eq!(output.status.code(), Some(78), "{}", crate::harness::bot::describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("schema version 99") && stderr.contains(&copies[0]), "{stderr}");
}

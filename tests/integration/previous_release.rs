//! A rollback and a roll forward between this build and the previous release (built from a pinned commit by
//! `scripts/build-previous-release.sh`), taking turns on one state directory as `nixos-rebuild --rollback` makes
//! them do, against a real Synapse: the state this build set up and ran is run by the previous release, then by
//! this build again; the bot keeps its device, answers each time in its encrypted room, and answers nothing twice.

use std::path::Path;
use std::time::Duration;

use crate::harness::bot::{BotEnv, describe};
use crate::harness::client::TestUser;
use crate::harness::daemon::Daemon;
use crate::harness::previous::previous_release;
use crate::harness::stores::session;
use crate::harness::synapse::synapse;

const TIMEOUT: Duration = Duration::from_secs(90);

fn run_with(env: &BotEnv, binary: &Path, name: &str) -> Daemon {
    Daemon::spawn(env.command_of(binary, &["run"]), &env.dir.path().join(format!("run-{name}.log")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_runs_on_the_state_this_build_left_and_back() {
    let previous = previous_release();
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["turns"]).await;
    env.write_config();
    env.setup();
    let bot = env.user_id("turns");
    let (device, _) = session(&env.database_path(), "turns");
    let person = TestUser::new(synapse, "tara-").await;
    let room = person.create_room(true, &[&bot]).await;
    let current = Path::new(crate::harness::bot::BIN);

    let mut pings = Vec::new();
    for (turn, binary) in [("this build", current), ("the previous release", &previous), ("this build again", current)]
    {
        let mut daemon = run_with(&env, binary, &turn.replace(' ', "-"));
        person.wait_for_join(&room, &bot).await;
        let ping = person.send_text(&room, &format!("!ping from {turn}")).await;
        let pong = person.wait_for_reply(&ping, &bot, TIMEOUT).await;
        assert!(pong.encrypted, "{turn}: answered encrypted");
        assert_eq!(daemon.stop().code(), Some(0), "{turn}: {}", daemon.log());
        pings.push(ping);
    }
    let output = env.command_of(&previous, &["check-config"]).output().unwrap();
    assert!(output.status.success(), "the previous release reads this build's config: {}", describe(&output));
    assert_eq!(session(&env.database_path(), "turns").0, device, "the same device throughout");
    assert_eq!(synapse.devices(&bot).await, vec![device], "no other device made");
    for ping in &pings {
        assert_eq!(person.replies_to(ping, &bot).len(), 1, "each command answered once");
    }
}

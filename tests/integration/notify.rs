//! The systemd notification protocol, observed for real on a datagram socket.

use std::time::Duration;

use crate::harness::bot::BotEnv;
use crate::harness::daemon::NotifySocket;
use crate::harness::proxy::{Mode, Proxy};
use crate::harness::synapse::synapse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_watchdog_and_stopping() {
    let synapse = synapse();
    let env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.setup();
    let mut socket = NotifySocket::bind(env.dir.path());
    let path = socket.path.clone();
    let mut daemon = env.spawn_run_with(|c| {
        c.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "2000000");
    });

    let ready = socket
        .wait_for(Duration::from_secs(60), |m| m.contains("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}; log:\n{}", socket.received, daemon.log()));
    assert!(ready.contains("STATUS=healthy: 1/1 bots syncing"), "{ready}");
    let ready_index = socket.received.iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(
        socket.wait_for_after(ready_index + 1, Duration::from_secs(5), |m| m == "WATCHDOG=1").is_some(),
        "watchdog pings every WATCHDOG_USEC/2 after READY=1: {:?}",
        socket.received
    );

    daemon.signal(libc::SIGTERM);
    let stopping = socket.wait_for(Duration::from_secs(30), |m| m.contains("STOPPING=1"));
    assert!(stopping.is_some(), "no STOPPING=1: {:?}", socket.received);
    let stopping_index = socket.received.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    assert!(ready_index < stopping_index);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_homeserver_that_is_down_gives_degraded_ready_and_retries() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.setup();
    // The homeserver moves away after setup: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    env.homeserver_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    env.write_config();
    let yaml =
        std::fs::read_to_string(env.config_path()).unwrap().replace("ready_timeout_secs: 30", "ready_timeout_secs: 2");
    std::fs::write(env.config_path(), yaml).unwrap();

    let mut socket = NotifySocket::bind(env.dir.path());
    let path = socket.path.clone();
    let mut daemon = env.spawn_run_with(|c| {
        c.env("NOTIFY_SOCKET", &path);
    });
    let ready = socket
        .wait_for(Duration::from_secs(30), |m| m.contains("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", daemon.log()));
    assert!(ready.contains("0/1 bots syncing; ping "), "{ready}");
    assert!(!ready.contains("STATUS=healthy"), "{ready}");
    // Still running, still trying.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while daemon.log().matches("retrying").count() < 2 {
        assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon must keep retrying, not exit");
        assert!(std::time::Instant::now() < deadline, "no second retry within 30 s:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_before_ready_is_applied_and_the_start_ends_with_one_ready_once_the_bot_syncs() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let env = BotEnv::with_ping_bots_behind(synapse, &proxy, &["ping"]).await;
    env.setup();
    // The bot cannot sync yet: the host is still starting (no READY=1) when SIGHUP comes.
    proxy.set(Mode::BlockSync);
    let mut socket = NotifySocket::bind(env.dir.path());
    let path = socket.path.clone();
    let mut daemon = env.spawn_run_with(|c| {
        c.env("NOTIFY_SOCKET", &path);
    });
    daemon.wait_for_log("retrying", Duration::from_secs(30));
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(30));
    socket.collect_for(Duration::from_millis(500));
    assert!(
        !socket.received.iter().any(|m| m.contains("READY=1") || m.contains("RELOADING=1")),
        "a reload during the start neither ends it nor starts a reload systemd would wait on: {:?}",
        socket.received
    );

    proxy.set(Mode::Pass);
    let ready = socket
        .wait_for(Duration::from_secs(60), |m| m.contains("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}; log:\n{}", socket.received, daemon.log()));
    assert!(ready.contains("1/1 bots syncing"), "{ready}");
    assert_eq!(daemon.stop().code(), Some(0));
    socket.collect_for(Duration::from_millis(500));
    let readies = socket.received.iter().filter(|m| m.contains("READY=1")).count();
    assert_eq!(readies, 1, "{:?}", socket.received);
}

//! The `space` plugin against a real Synapse: the Space and its rooms bootstrapped as the config says (and a
//! second run sends nothing), and the user-lifecycle API over mutual TLS joining, promoting, demoting and
//! deactivating real users, with the calls that arrive before the rooms are ready kept across a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;
use serde_json::{Value, json};

use crate::harness::bot::{BotEnv, BotInstance};
use crate::harness::client::TestUser;
use crate::harness::pki::Pki;
use crate::harness::proxy::{Hold, Proxy};
use crate::harness::synapse::{SERVER_NAME, SHARED_SECRET, Synapse, free_port, register_with_secret, synapse};
use crate::harness::{eventually, unique};

const TIMEOUT: Duration = Duration::from_secs(90);
const BOOTSTRAPPED: &str = "the Space and its rooms are as the config says";
pub(crate) const CALLER: &str = "deploy-app";

/// A deployment with one `space` bot that setup registers as a server admin, and its TLS listener for the
/// lifecycle API (client certificates from `pki` required). Returns the listener's port.
pub(crate) fn space_env(
    synapse: &Synapse,
    homeserver_url: &str,
    pki: &Pki,
    deployment: &str,
    room_version: Option<&str>,
) -> (BotEnv, u16) {
    let mut env = BotEnv::empty(synapse);
    env.homeserver_url = homeserver_url.to_owned();
    env.write_credential("registration-secret", SHARED_SECRET);
    env.homeserver_extra.push("registration_shared_secret: {credential: registration-secret}".into());
    let (server_cert, server_key) = pki.issue("maubot", &["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let dir = env.dir.path().to_owned();
    std::fs::write(dir.join("server.pem"), server_cert).unwrap();
    std::fs::write(dir.join("ca.pem"), pki.ca.pem()).unwrap();
    env.write_credential("space-tls-key", &server_key);
    let port = free_port();
    env.instances.push(BotInstance {
        id: "space".into(),
        localpart: unique("spacebot-"),
        extra: vec![
            "server_admin: true".into(),
            "listeners:".into(),
            "  - address: 127.0.0.1".into(),
            format!("    port: {port}"),
            format!(
                "    tls: {{certificate: {}, private_key: {{credential: space-tls-key}}, client_ca: {}}}",
                dir.join("server.pem").display(),
                dir.join("ca.pem").display()
            ),
        ],
    });
    let mut config = vec![
        format!("deployment: {deployment}"),
        "space: {name: Test Space, topic: all of us}".into(),
        "rooms: {general: {name: General, topic: say hello}, admin: {name: Admins, kind: admin}}".into(),
        format!("callers: [{CALLER}]"),
        "homeserver_wait_seconds: 60".into(),
    ];
    if let Some(version) = room_version {
        config.push(format!("room_version: \"{version}\""));
    }
    env.plugins.insert("space".into(), ("space".into(), config));
    env.write_config();
    (env, port)
}

/// The rooms by key, found by their aliases.
async fn rooms(synapse: &Synapse, deployment: &str) -> BTreeMap<&'static str, String> {
    let mut rooms = BTreeMap::new();
    for key in ["space", "general", "admin"] {
        let alias = format!("#{deployment}-{key}:{SERVER_NAME}");
        rooms.insert(key, synapse.resolve_alias(&alias).await.unwrap_or_else(|| panic!("{alias} exists")));
    }
    rooms
}

/// `(type, state_key) -> event`, of the room's current state.
async fn state_of(synapse: &Synapse, room: &str) -> BTreeMap<(String, String), Value> {
    synapse
        .room_state(room)
        .await
        .into_iter()
        .map(|e| ((e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned()), e))
        .collect()
}

fn content<'a>(state: &'a BTreeMap<(String, String), Value>, event_type: &str, state_key: &str) -> &'a Value {
    &state.get(&(event_type.to_owned(), state_key.to_owned())).unwrap_or_else(|| panic!("{event_type} is set"))["content"]
}

async fn membership(synapse: &Synapse, room: &str, user: &str) -> Option<String> {
    let state = state_of(synapse, room).await;
    state
        .get(&("m.room.member".to_owned(), user.to_owned()))
        .map(|e| e["content"]["membership"].as_str().unwrap().to_owned())
}

async fn power(synapse: &Synapse, room: &str, user: &str) -> i64 {
    let state = state_of(synapse, room).await;
    content(&state, "m.room.power_levels", "")["users"][user].as_i64().unwrap_or(0)
}

/// Every state event's id, to see that a run changed nothing.
async fn event_ids(synapse: &Synapse, rooms: &BTreeMap<&'static str, String>) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for (key, room) in rooms {
        for ((event_type, state_key), event) in state_of(synapse, room).await {
            ids.insert(format!("{key} {event_type}/{state_key}"), event["event_id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

/// One call to the lifecycle API, as the deploy app makes it.
pub(crate) async fn call(client: &reqwest::Client, base: &str, event: &str, callsign: &str) -> (u16, Value) {
    let body = json!({"uuid": format!("uuid-{callsign}"), "callsign": callsign,
                      "x509cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"});
    let url = format!("{base}/api/v1/users/{event}");
    let request = if event == "updated" { client.put(url) } else { client.post(url) };
    answer(request.json(&body).send().await.unwrap()).await
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn localpart(user_id: &str) -> &str {
    user_id.trim_start_matches('@').split(':').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_space_is_bootstrapped_once_and_the_lifecycle_api_joins_promotes_demotes_and_revokes_over_mtls() {
    let synapse = synapse();
    let pki = Pki::new("deploy CA");
    let deployment = unique("t");
    let (env, port) = space_env(synapse, &synapse.url, &pki, &deployment, None);
    let bot = env.user_id("space");
    env.setup();
    let mut daemon = env.spawn_run();
    daemon.wait_for_log(BOOTSTRAPPED, TIMEOUT);
    assert!(daemon.log().contains("created=3 state_sent=0"), "{}", daemon.log());
    assert!(!daemon.log().contains("status=degraded"), "new rooms are no error: {}", daemon.log());

    // The Space and its rooms, exactly as declared (room version 12: the bot is the creator, not listed).
    let rooms = rooms(synapse, &deployment).await;
    let space = state_of(synapse, &rooms["space"]).await;
    assert_eq!(content(&space, "m.room.create", "")["type"], "m.space");
    assert_eq!(content(&space, "m.room.create", "")["room_version"], "12", "Synapse 1.163's default room version");
    assert_eq!(content(&space, "m.room.name", "")["name"], "Test Space");
    assert_eq!(content(&space, "m.room.topic", "")["topic"], "all of us");
    assert_eq!(content(&space, "m.room.join_rules", ""), &json!({"join_rule": "invite"}));
    for child in [&rooms["general"], &rooms["admin"]] {
        assert_eq!(content(&space, "m.space.child", child), &json!({"via": [SERVER_NAME]}));
    }
    let general = state_of(synapse, &rooms["general"]).await;
    assert_eq!(content(&general, "m.room.name", "")["name"], "General");
    assert_eq!(content(&general, "m.room.topic", "")["topic"], "say hello");
    assert_eq!(
        content(&general, "m.room.join_rules", ""),
        &json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": rooms["space"]}]})
    );
    assert_eq!(content(&general, "m.room.history_visibility", "")["history_visibility"], "joined");
    assert_eq!(content(&general, "m.room.encryption", "")["algorithm"], "m.megolm.v1.aes-sha2");
    assert_eq!(content(&general, "m.space.parent", &rooms["space"]), &json!({"via": [SERVER_NAME], "canonical": true}));
    assert!(content(&general, "m.room.power_levels", "")["users"].get(&bot).is_none(), "v12: creators are not listed");
    let admin = state_of(synapse, &rooms["admin"]).await;
    assert_eq!(content(&admin, "m.room.join_rules", ""), &json!({"join_rule": "invite"}));
    assert_eq!(daemon.stop().code(), Some(0));

    // A second run sends nothing; after a change made behind its back, a third sends that one event back.
    let before = event_ids(synapse, &rooms).await;
    let mut daemon = env.spawn_run();
    daemon.wait_for_log(BOOTSTRAPPED, TIMEOUT);
    assert!(daemon.log().contains("created=0 state_sent=0"), "{}", daemon.log());
    assert_eq!(event_ids(synapse, &rooms).await, before, "no state event was sent again");
    assert_eq!(daemon.stop().code(), Some(0));
    let topic_url = format!("{}/_matrix/client/v3/rooms/{}/state/m.room.topic/", synapse.url, rooms["general"]);
    let drifted = reqwest::Client::new()
        .put(topic_url)
        .bearer_auth(env.access_token("space"))
        .json(&json!({"topic": "changed by hand"}))
        .send()
        .await
        .unwrap();
    assert!(drifted.status().is_success());
    let mut daemon = env.spawn_run();
    daemon.wait_for_log(BOOTSTRAPPED, TIMEOUT);
    assert!(daemon.log().contains("created=0 state_sent=1"), "{}", daemon.log());
    let general = state_of(synapse, &rooms["general"]).await;
    assert_eq!(content(&general, "m.room.topic", "")["topic"], "say hello");
    let after = event_ids(synapse, &rooms).await;
    let changed: Vec<&String> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
    assert_eq!(changed, ["general m.room.topic/"], "only the topic was sent again");

    // Only the deploy app's certificate is let through.
    let base = format!("https://127.0.0.1:{port}");
    let deploy_app = pki.client(Some(&pki.issue(CALLER, &[], ExtendedKeyUsagePurpose::ClientAuth)));
    let mallory = pki.client(Some(&pki.issue("mallory", &[], ExtendedKeyUsagePurpose::ClientAuth)));
    let stranger_ca = Pki::new("another CA");
    let stranger = pki.client(Some(&stranger_ca.issue(CALLER, &[], ExtendedKeyUsagePurpose::ClientAuth)));
    let person = TestUser::new(synapse, "erin-").await;
    let erin = person.user_id();
    let callsign = localpart(&erin).to_uppercase();
    let (status, body) = call(&mallory, &base, "created", &callsign).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    assert!(call_fails(&stranger, &base).await, "a certificate from another CA is refused in the handshake");
    assert!(call_fails(&pki.client(None), &base).await, "no certificate is refused in the handshake");
    let (status, body) = answer(
        reqwest::Client::new()
            .post(format!("{}/_plugins/space/api/v1/users/created", env.api_url()))
            .json(&json!({"uuid": "u", "callsign": "erin"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("client_certificate_required")), "{body}");
    assert_eq!(membership(synapse, &rooms["space"], &erin).await, None, "refused calls changed nothing");
    let (status, body) = answer(
        deploy_app.post(format!("{base}/api/v1/users/created")).json(&json!({"uuid": "u"})).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("`callsign` is missing"), "{body}");

    let (status, body) = call(&deploy_app, &base, "revoked", localpart(&bot)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "never the bot itself: {body}");

    // created: joined to the Space and its public room (force-joined through Synapse's admin API); once.
    let (status, body) = call(&deploy_app, &base, "created", &callsign).await;
    assert_eq!(
        (status, body["status"].as_str(), body["user_id"].as_str()),
        (200, Some("done"), Some(erin.as_str())),
        "{body}"
    );
    assert_eq!(body["changed"], json!([rooms["space"], rooms["general"]]));
    assert_eq!(membership(synapse, &rooms["space"], &erin).await.as_deref(), Some("join"));
    assert_eq!(membership(synapse, &rooms["general"], &erin).await.as_deref(), Some("join"));
    assert_eq!(membership(synapse, &rooms["admin"], &erin).await, None);
    let (_, again) = call(&deploy_app, &base, "created", &callsign).await;
    assert_eq!((again["status"].as_str(), &again["changed"]), (Some("done"), &json!([])), "a repeat changes nothing");

    // The public room is restricted to the Space: a member joins it by itself, someone outside cannot.
    let general_id: &matrix_sdk::ruma::RoomId = rooms["general"].as_str().try_into().unwrap();
    let joined = eventually(TIMEOUT, "erin's client to see the room", || {
        let room = person.client.get_room(general_id).filter(|r| r.state() == matrix_sdk::RoomState::Joined);
        async move { room }
    })
    .await;
    joined.leave().await.unwrap();
    assert_eq!(membership(synapse, &rooms["general"], &erin).await.as_deref(), Some("leave"));
    person.client.join_room_by_id(general_id).await.expect("a Space member joins the restricted room");
    assert_eq!(membership(synapse, &rooms["general"], &erin).await.as_deref(), Some("join"));
    let outsider = TestUser::new(synapse, "frank-").await;
    assert!(outsider.client.join_room_by_id(general_id).await.is_err(), "a non-member of the Space cannot join");

    // promoted: power 100 in the Space and the public room, and into the admin room; demoted: back, and out.
    let (status, body) = call(&deploy_app, &base, "promoted", &callsign).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("done")), "{body}");
    for room in [&rooms["space"], &rooms["general"]] {
        assert_eq!(power(synapse, room, &erin).await, 100);
    }
    assert_eq!(membership(synapse, &rooms["admin"], &erin).await.as_deref(), Some("join"));
    let (status, body) = call(&deploy_app, &base, "demoted", &callsign).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("done")), "{body}");
    for room in [&rooms["space"], &rooms["general"]] {
        assert_eq!(power(synapse, room, &erin).await, 0);
    }
    assert_eq!(membership(synapse, &rooms["admin"], &erin).await.as_deref(), Some("leave"), "kicked");
    let (status, body) = call(&deploy_app, &base, "updated", &callsign).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ignored")), "{body}");

    // revoked: the account is deactivated, with erase.
    assert!(!synapse.deactivated(&erin).await);
    let (status, body) = call(&deploy_app, &base, "revoked", &callsign).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("done")), "{body}");
    assert!(body["note"].as_str().unwrap().contains("erased"), "{body}");
    assert!(synapse.deactivated(&erin).await);
    assert_eq!(daemon.stop().code(), Some(0));
    assert!(!daemon.log().contains("BEGIN PRIVATE KEY"));
}

/// Whether a call fails before any answer (the TLS handshake refused it).
async fn call_fails(client: &reqwest::Client, base: &str) -> bool {
    client.post(format!("{base}/api/v1/users/created")).json(&json!({})).send().await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_before_the_rooms_are_ready_are_kept_across_a_restart_and_the_last_per_user_wins() {
    let synapse = synapse();
    let proxy = Proxy::start(&synapse.url).await;
    let pki = Pki::new("deploy CA");
    let deployment = unique("t");
    let (env, port) = space_env(synapse, &proxy.url, &pki, &deployment, Some("11"));
    let bot = env.user_id("space");
    env.setup();

    // The bootstrap cannot create rooms (the homeserver never answers): calls are answered and kept.
    proxy.hold(Some(Hold { method: "POST", path: "/createRoom", forward: false }));
    let mut daemon = env.spawn_run();
    daemon.wait_for_log("serving the plugin's HTTP routes", TIMEOUT);
    eventually(TIMEOUT, "the bootstrap to wait on the homeserver", || {
        let held = proxy.held() > 0;
        async move { held.then_some(()) }
    })
    .await;
    let mut users = BTreeMap::new();
    for name in ["alice", "dave", "carol"] {
        let localpart = unique(&format!("{name}-"));
        register_with_secret(&synapse.url, &localpart, "person-password", false).await.unwrap();
        users.insert(name, format!("@{localpart}:{SERVER_NAME}"));
    }
    let base = format!("https://127.0.0.1:{port}");
    let deploy_app = pki.client(Some(&pki.issue(CALLER, &[], ExtendedKeyUsagePurpose::ClientAuth)));
    let calls = [
        ("alice", "created"),
        ("dave", "created"),
        ("carol", "created"),
        ("alice", "demoted"),
        ("dave", "promoted"),
        ("carol", "promoted"),
        ("alice", "promoted"),
        ("dave", "demoted"),
        ("carol", "revoked"),
    ];
    for (name, event) in calls {
        let (status, body) = call(&deploy_app, &base, event, localpart(&users[name])).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("deferred")), "{name} {event}: {body}");
    }
    assert_eq!(daemon.stop().code(), Some(0), "a bootstrap waiting on the homeserver does not hold up the stop");

    // The next run bootstraps, then carries out what was kept: per user, the last account and role call.
    proxy.hold(None);
    let mut daemon = env.spawn_run();
    daemon.wait_for_log(BOOTSTRAPPED, TIMEOUT);
    daemon.wait_for_log("carried out the lifecycle calls kept for later instance=space deferred=6", TIMEOUT);
    let rooms = rooms(synapse, &deployment).await;
    let general = state_of(synapse, &rooms["general"]).await;
    assert_eq!(content(&general, "m.room.create", "")["room_version"], "11");
    assert_eq!(power(synapse, &rooms["general"], &bot).await, 200, "below v12 the bot is listed above admins");

    let (alice, dave, carol) = (&users["alice"], &users["dave"], &users["carol"]);
    for room in [&rooms["space"], &rooms["general"]] {
        assert_eq!(membership(synapse, room, alice).await.as_deref(), Some("join"));
        assert_eq!(power(synapse, room, alice).await, 100, "alice: promoted came last");
        assert_eq!(membership(synapse, room, dave).await.as_deref(), Some("join"));
        assert_eq!(power(synapse, room, dave).await, 0, "dave: demoted came last");
        assert_ne!(membership(synapse, room, carol).await.as_deref(), Some("join"), "carol: revoked came last");
    }
    assert_eq!(membership(synapse, &rooms["admin"], alice).await.as_deref(), Some("join"));
    assert_eq!(membership(synapse, &rooms["admin"], dave).await, None, "dave's promotion was replaced, not done");
    assert_eq!(membership(synapse, &rooms["admin"], carol).await, None, "a revoked user's promotion is dropped");
    assert!(synapse.deactivated(carol).await);
    assert!(!synapse.deactivated(alice).await);

    // Ready now: calls are carried out at once.
    let (status, body) = call(&deploy_app, &base, "demoted", localpart(alice)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("done")), "{body}");
    assert_eq!(membership(synapse, &rooms["admin"], alice).await.as_deref(), Some("leave"));
    assert_eq!(daemon.stop().code(), Some(0));
}

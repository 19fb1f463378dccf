//! The `guard` plugin against a real Synapse: it invites the users its policy names and removes the ones it
//! says must go, and never goes against a person's or a human admin's choice (a user who left, declined the
//! invite or was kicked by a human is not invited again until an operator clears them); a dry run changes
//! nothing; membership changes, the policy file and a `space` instance's roster start passes of their own.

use std::time::Duration;

use matrix_sdk::RoomState;
use matrix_sdk::ruma::{OwnedRoomId, UserId};
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::{Value, json};

use crate::harness::api::Api;
use crate::harness::bot::{BotEnv, BotInstance};
use crate::harness::client::TestUser;
use crate::harness::daemon::Daemon;
use crate::harness::pki::Pki;
use crate::harness::synapse::{SERVER_NAME, Synapse, synapse};
use crate::harness::{eventually, unique};
use crate::space::{CALLER, call, space_env};

const TIMEOUT: Duration = Duration::from_secs(90);

/// The latest membership event of `user` in `room`: `(membership, sender)`.
async fn member(synapse: &Synapse, room: &str, user: &str) -> Option<(String, String)> {
    synapse.room_state(room).await.into_iter().find_map(|e| {
        (e["type"] == "m.room.member" && e["state_key"] == user).then(|| {
            (e["content"]["membership"].as_str().unwrap().to_owned(), e["sender"].as_str().unwrap().to_owned())
        })
    })
}

async fn membership(synapse: &Synapse, room: &str, user: &str) -> Option<String> {
    member(synapse, room, user).await.map(|(m, _)| m)
}

/// Waits until `user`'s membership in `room` is `expected`, sent by `sender`.
async fn wait_member(synapse: &Synapse, room: &str, user: &str, expected: &str, sender: &str) {
    eventually(TIMEOUT, &format!("{user} to be {expected} by {sender}"), || async move {
        (member(synapse, room, user).await == Some((expected.to_owned(), sender.to_owned()))).then_some(())
    })
    .await
}

/// An operator's call to the guard's routes, with the admin token (or without, when `api.token` is `None`).
async fn operator(api: &Api, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = api.http.request(method, format!("{}/_plugins/guard{path}", api.base));
    if let Some(token) = &api.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits for a report that `accept` takes (the last pass's, from the management API).
async fn wait_report(api: &Api, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
    let accept = &accept;
    eventually(TIMEOUT, what, || async move {
        let (status, report) = operator(api, reqwest::Method::GET, "/report", None).await;
        (status == 200 && accept(&report)).then_some(report)
    })
    .await
}

/// `(user, change)` of a room report's list.
fn steps(room: &Value, list: &str) -> Vec<(String, String)> {
    room[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["user_id"].as_str().unwrap().to_owned(), s["change"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

fn skipped_reason<'a>(room: &'a Value, user: &str) -> Option<&'a str> {
    room["skipped"].as_array().unwrap().iter().find(|s| s["user_id"] == user).map(|s| s["reason"].as_str().unwrap())
}

/// A person's client has the room as an invite (then they can decline it).
async fn invited_room(person: &TestUser, room: &OwnedRoomId) -> matrix_sdk::Room {
    eventually(TIMEOUT, "the invite to reach the person's client", || {
        let room = person.client.get_room(room).filter(|r| r.state() == RoomState::Invited);
        async move { room }
    })
    .await
}

/// The room's owner gives `user` power `level` (through the homeserver, whatever the owner's client synced).
async fn give_power(synapse: &Synapse, owner: &TestUser, room: &str, user: &str, level: i64) {
    let mut levels =
        synapse.room_state(room).await.into_iter().find(|e| e["type"] == "m.room.power_levels").unwrap()["content"]
            .clone();
    levels["users"][user] = level.into();
    let response = reqwest::Client::new()
        .put(format!("{}/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/", synapse.url))
        .bearer_auth(owner.client.access_token().unwrap())
        .json(&levels)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
}

fn start(env: &BotEnv) -> Daemon {
    let mut daemon = env.spawn_run();
    daemon.wait_for_log("serving the plugin's HTTP routes", TIMEOUT);
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_invites_and_removes_as_its_policy_says_and_never_against_a_persons_choice() {
    let synapse = synapse();
    let pki = Pki::new("deploy CA");
    let (mut env, space_port) = space_env(synapse, &synapse.url, &pki, &unique("g"), None);
    env.instances.push(BotInstance { id: "guard".into(), localpart: unique("guardbot-"), extra: vec![] });
    env.enable_api_login();
    let guard = env.user_id("guard");
    let setup = env.setup();
    assert!(setup.status.success(), "{}", crate::harness::bot::describe(&setup));

    // A room of a human admin, who invites the guard in and gives it the power to kick.
    let owner = TestUser::new(synapse, "owner-").await;
    let mut people = std::collections::BTreeMap::new();
    for name in ["alice", "bob", "carol", "dave", "erin", "frank", "henry", "ivan", "grace"] {
        people.insert(name, TestUser::new(synapse, &format!("{name}-")).await);
    }
    let id = |name: &str| people[name].user_id();
    let room =
        owner.create_room(false, &[&guard, &id("bob"), &id("carol"), &id("dave"), &id("erin"), &id("frank")]).await;
    let room_id = room.room_id().to_owned();
    let r = room_id.as_str();
    for name in ["bob", "carol", "dave", "erin", "frank"] {
        people[name].client.join_room_by_id(&room_id).await.unwrap();
    }
    give_power(synapse, &owner, r, &guard, 100).await;
    // bob leaves by himself; the owner kicks carol.
    people["bob"].client.get_room(&room_id).unwrap().leave().await.unwrap();
    room.kick_user(&UserId::parse(id("carol")).unwrap(), Some("not today")).await.unwrap();
    wait_member(synapse, r, &id("carol"), "leave", &owner.user_id()).await;

    let policy_file = env.dir.path().join("policy.json");
    std::fs::write(&policy_file, r#"{"rooms": {}}"#).unwrap();
    let config = |dry_run: bool| {
        vec![
            format!("dry_run: {dry_run}"),
            "interval_seconds: 3600".into(),
            format!("policy_file: {}", policy_file.display()),
            format!(
                "rooms: {{\"{r}\": {{users: [\"{}\", \"{}\", \"{}\"], spaces: [space], deny: [\"{}\", \"{}\"], allow: [\"{}\"]}}}}",
                id("alice"),
                id("bob"),
                id("carol"),
                id("dave"),
                id("henry"),
                id("erin")
            ),
        ]
    };
    env.allow_invites_from = vec![owner.user_id()];
    env.plugins.insert("guard".into(), ("guard".into(), config(true)));
    env.write_config();

    // Dry run: the plan is reported, nothing changes.
    let mut daemon = start(&env);
    let mut api = Api::new(&env);
    // The management API answers 503 until the guard's run has registered its routes (the log line `start`
    // waits for may be the space instance's listener); then the guard itself refuses a call without a token.
    let (status, body) = eventually(TIMEOUT, "the guard's routes to be reachable", || async {
        let (status, body) = operator(&api, reqwest::Method::GET, "/report", None).await;
        (status != 503).then_some((status, body))
    })
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("operator_only")), "no token: {body}");
    api.login().await;
    owner.wait_for_join(&room, &guard).await;
    // The bot's join (on the owner's invite) starts a pass of the room, if the one at start came too early.
    let first = wait_report(&api, "a dry run's report of the room", |r| r["rooms"][0]["error"].is_null()).await;
    let (status, _) = operator(&api, reqwest::Method::POST, "/reconcile", None).await;
    assert_eq!(status, 202);
    daemon.wait_for_log("trigger=operator", TIMEOUT);
    let report = wait_report(&api, "the operator's pass", |r| r["pass"].as_u64() > first["pass"].as_u64()).await;
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["rooms"][0]["planned"], first["rooms"][0]["planned"], "the same plan again");
    let planned = &report["rooms"][0];
    assert_eq!(
        steps(planned, "planned"),
        [(id("alice"), "invite".into()), (id("dave"), "remove".into())],
        "alice is missing, dave is denied; frank is not named, erin is allowed: {report}"
    );
    assert!(steps(planned, "done").is_empty());
    assert!(skipped_reason(planned, &id("bob")).unwrap().contains("their choice"), "{report}");
    assert!(skipped_reason(planned, &id("carol")).unwrap().contains(&format!("removed by {}", owner.user_id())));
    assert_eq!(report["requests"], 1, "one members call for the room, nothing per user: {report}");
    assert_eq!(membership(synapse, r, &id("alice")).await, None, "a dry run changes nothing");
    assert_eq!(membership(synapse, r, &id("dave")).await.as_deref(), Some("join"));
    assert!(daemon.log().contains("guard (dry run): would change"), "{}", daemon.log());
    assert_eq!(daemon.stop().code(), Some(0));

    // For real: alice invited, dave kicked; bob and carol left alone, frank and erin too.
    env.plugins.insert("guard".into(), ("guard".into(), config(false)));
    env.write_config();
    let mut daemon = start(&env);
    api.login().await;
    wait_member(synapse, r, &id("alice"), "invite", &guard).await;
    wait_member(synapse, r, &id("dave"), "leave", &guard).await;
    let done = [(id("alice"), "invite".to_owned()), (id("dave"), "remove".to_owned())];
    let report =
        wait_report(&api, "the report of the pass that did it", |r| steps(&r["rooms"][0], "done") == done).await;
    assert_eq!(report["requests"], 3, "the members call and one per change: {report}");
    assert_eq!(membership(synapse, r, &id("bob")).await.as_deref(), Some("leave"), "bob left: not invited again");
    assert_eq!(member(synapse, r, &id("carol")).await, Some(("leave".into(), owner.user_id())), "kicked by a human");
    assert_eq!(membership(synapse, r, &id("erin")).await.as_deref(), Some("join"));
    assert_eq!(membership(synapse, r, &id("frank")).await.as_deref(), Some("join"), "only named users are touched");

    // alice declines: that membership change starts a pass of the room, which respects it.
    invited_room(&people["alice"], &room_id).await.leave().await.unwrap();
    let report = wait_report(&api, "the pass after alice declined", |r| {
        r["trigger"] == "membership" && skipped_reason(&r["rooms"][0], &id("alice")).is_some()
    })
    .await;
    assert!(steps(&report["rooms"][0], "planned").is_empty(), "{report}");
    assert_eq!(member(synapse, r, &id("alice")).await, Some(("leave".into(), id("alice"))));

    // Someone the policy denies is invited by the owner: the guard withdraws the invite, on that event alone.
    room.invite_user_by_id(&UserId::parse(id("henry")).unwrap()).await.unwrap();
    wait_member(synapse, r, &id("henry"), "leave", &guard).await;

    // An operator clears bob: invited once more (and his next leave would be respected again).
    let clear = json!({"room": r, "user_id": id("bob")});
    let anonymous = Api { base: api.base.clone(), http: api.http.clone(), token: None };
    let (status, _) = operator(&anonymous, reqwest::Method::POST, "/clear", Some(clear.clone())).await;
    assert_eq!(status, 403, "clearing needs an admin token");
    let (status, body) =
        operator(&api, reqwest::Method::POST, "/clear", Some(json!({"room": "!nowhere:x", "user_id": id("bob")})))
            .await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_managed")), "{body}");
    let (status, body) = operator(&api, reqwest::Method::POST, "/clear", Some(clear)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("cleared")), "{body}");
    wait_member(synapse, r, &id("bob"), "invite", &guard).await;
    assert_eq!(membership(synapse, r, &id("alice")).await.as_deref(), Some("leave"), "only bob was cleared");

    // The policy file changes: ivan is invited without a restart.
    std::fs::write(&policy_file, format!(r#"{{"rooms": {{"{r}": {{"users": ["{}"]}}}}}}"#, id("ivan"))).unwrap();
    wait_member(synapse, r, &id("ivan"), "invite", &guard).await;
    let report = wait_report(&api, "the policy file's pass", |r| r["trigger"] == "policy_file").await;
    assert_eq!(steps(&report["rooms"][0], "done"), [(id("ivan"), "invite".into())]);

    // The space instance's roster: a user the deploy app created is invited by the guard.
    let deploy_app = pki.client(Some(&pki.issue(CALLER, &[], ExtendedKeyUsagePurpose::ClientAuth)));
    let grace = id("grace");
    let callsign = grace.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let (status, body) = call(&deploy_app, &format!("https://127.0.0.1:{space_port}"), "created", &callsign).await;
    assert_eq!(status, 200, "{body}");
    wait_member(synapse, r, &grace, "invite", &guard).await;
    let report = wait_report(&api, "the space roster's pass", |r| r["trigger"] == "space:space").await;
    assert!(
        report["rooms"][0]["done"][0]["reason"].as_str().unwrap().contains("a member of the space instance `space`")
    );

    // The policy file names the same room once more, by an alias: the room is reconciled once (by its first
    // entry), and the report says why the other is not used and how to mend it.
    let alias = format!("#{}:{SERVER_NAME}", unique("guarded-"));
    let alias_id = matrix_sdk::ruma::OwnedRoomAliasId::try_from(alias.as_str()).unwrap();
    owner.client.create_room_alias(&alias_id, &room_id).await.unwrap();
    std::fs::write(&policy_file, format!(r#"{{"rooms": {{"{alias}": {{"users": ["{}"]}}}}}}"#, id("frank"))).unwrap();
    let report = wait_report(&api, "the pass of the policy naming the room twice", |r| {
        r["trigger"] == "policy_file" && r["rooms"].as_array().is_some_and(|rooms| rooms.len() == 2)
    })
    .await;
    let twice = report["rooms"].as_array().unwrap().iter().find(|room| room["room"] == alias.as_str()).unwrap();
    let error = twice["error"].as_str().unwrap_or_default();
    assert!(error.contains("names this room twice") && error.contains("merge the two entries"), "{report}");
    assert!(twice["done"].as_array().unwrap().is_empty(), "{report}");
    let (status, body) =
        operator(&api, reqwest::Method::POST, "/clear", Some(json!({"room": alias, "user_id": id("bob")}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_managed")), "{body}");

    assert_eq!(daemon.stop().code(), Some(0));
    assert!(daemon.log().contains("guard pass finished instance=guard"), "{}", daemon.log());
}

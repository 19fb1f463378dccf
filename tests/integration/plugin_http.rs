//! Plugins that serve HTTP: routes under the management server and a listener of the bot's own with TLS and
//! client certificates, reached by a real HTTP client; work accepted over HTTP posted to a room once.

use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;

use crate::harness::bot::BotEnv;
use crate::harness::client::TestUser;
use crate::harness::eventually;
use crate::harness::pki::Pki;
use crate::harness::synapse::{free_port, synapse};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Says back what it was asked over HTTP; `/hook` accepts a job per delivery id (posted to the room when it
/// runs) and answers 202 once the host kept it.
const PROBE: &str = r#"#!/usr/bin/env python3
import json, sys
def say(m):
    print(json.dumps(m), flush=True)
hello = json.loads(sys.stdin.readline())
room = hello["config"]["room"]
say({"type": "ready", "http": True})
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "shutdown":
        break
    if m["type"] == "message":
        say({"type": "done", "to": m["id"]})
    elif m["type"] == "run_job":
        send = {"type": "send", "room_id": room, "body": "hook: " + m["payload"]["text"]}
        say({"type": "job_done", "key": m["key"], "actions": [send]})
    elif m["type"] == "http" and m["path"] == "/hook":
        delivery = json.loads(m["body"])
        say({"type": "job", "key": "hook " + delivery["id"], "payload": {"text": delivery["text"]}})
        say({"type": "http_response", "to": m["id"], "status": 202})
    elif m["type"] == "http":
        seen = {k: m.get(k) for k in ("method", "path", "query", "body", "client_common_name")}
        if m.get("operator") or any(name == "authorization" for name, _ in m["headers"]):
            seen["operator"] = m.get("operator")
            seen["authorization"] = [v for name, v in m["headers"] if name == "authorization"]
        say({"type": "http_response", "to": m["id"], "status": 200,
             "headers": {"content-type": "application/json"}, "body": json.dumps(seen)})
"#;

async fn status_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_routes_and_a_tls_listener_with_client_certificates_answer_and_accept_work_once() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["hooks"]).await;
    let bot = env.user_id("hooks");
    let person = TestUser::new(synapse, "hal-").await;
    let room = person.create_room(false, &[&bot]).await;

    let pki = Pki::new("maubot test CA");
    let (server_cert, server_key) =
        pki.issue("maubot", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = pki.issue("deploy-app", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger = Pki::new("another CA");
    let (stranger_cert, stranger_key) = stranger.issue("deploy-app", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let dir = env.dir.path().to_owned();
    std::fs::write(dir.join("server.pem"), &server_cert).unwrap();
    std::fs::write(dir.join("ca.pem"), pki.ca.pem()).unwrap();
    env.write_credential("hooks-tls-key", &server_key);
    let program = env.write_program("probe.py", PROBE);
    let port = free_port();
    env.use_exec(
        "hooks",
        &program,
        &[&format!("settings: {{room: \"{}\"}}", room.room_id()), "http_max_body_bytes: 1024"],
    );
    env.instances.iter_mut().find(|i| i.id == "hooks").unwrap().extra.extend([
        "listeners:".to_owned(),
        "  - address: 127.0.0.1".to_owned(),
        format!("    port: {port}"),
        format!(
            "    tls: {{certificate: {}, private_key: {{credential: hooks-tls-key}}, client_ca: {}}}",
            dir.join("server.pem").display(),
            dir.join("ca.pem").display()
        ),
    ]);
    let public_port = free_port();
    env.server_extra.push(format!("public_listener: {{address: 127.0.0.1, port: {public_port}}}"));
    env.enable_api_login();
    env.write_config();
    env.setup();
    let mut daemon = env.spawn_run();
    person.wait_for_join(&room, &bot).await;
    daemon.wait_for_log("serving the plugin's HTTP routes", TIMEOUT);

    // Under the management server, without any admin bearer: the plugin decides.
    let http = reqwest::Client::new();
    let api = env.api_url();
    let (status, seen) =
        status_of(http.post(format!("{api}/_plugins/hooks/echo?x=1")).body("hello").send().await.unwrap()).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(
        seen,
        serde_json::json!({"method": "POST", "path": "/echo", "query": "x=1", "body": "hello", "client_common_name": null})
    );
    // An admin's token makes the request the operator's, and is not passed on; any other bearer is the plugin's.
    let mut operator = crate::harness::api::Api::new(&env);
    operator.login().await;
    let token = operator.token.clone().unwrap();
    let (_, seen) =
        status_of(http.get(format!("{api}/_plugins/hooks/echo")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(
        (&seen["operator"], &seen["authorization"]),
        (&serde_json::json!("admin"), &serde_json::json!([])),
        "{seen}"
    );
    let (_, seen) =
        status_of(http.get(format!("{api}/_plugins/hooks/echo")).bearer_auth("not-an-admin").send().await.unwrap())
            .await;
    assert_eq!(
        (&seen["operator"], &seen["authorization"]),
        (&serde_json::Value::Null, &serde_json::json!(["Bearer not-an-admin"])),
        "{seen}"
    );
    // On the public listener an admin's token makes no operator (and is still not passed on); only plugins'
    // routes are served there.
    let public = format!("http://127.0.0.1:{public_port}");
    let (status, seen) =
        status_of(http.get(format!("{public}/_plugins/hooks/echo")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 200, "{seen}");
    assert!(seen.get("operator").is_none() && seen.get("authorization").is_none(), "no operator, no token: {seen}");
    let (status, _) =
        status_of(http.get(format!("{public}/api/v1/instances")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 404, "the management API is not on the public listener");
    let (status, _) =
        status_of(http.post(format!("{api}/_plugins/hooks/echo")).body(vec![b'x'; 2048]).send().await.unwrap()).await;
    assert_eq!(status, 413, "the plugin's own body limit (1024 bytes) holds");
    let (status, body) = status_of(http.get(format!("{api}/_plugins/nobody/echo")).send().await.unwrap()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));

    // Work accepted over HTTP (a webhook delivery) is posted once, however often it is delivered.
    for text in ["first", "first"] {
        let delivery = serde_json::json!({"id": "d1", "text": text}).to_string();
        let (status, _) =
            status_of(http.post(format!("{api}/_plugins/hooks/hook")).body(delivery).send().await.unwrap()).await;
        assert_eq!(status, 202);
    }
    let delivery = serde_json::json!({"id": "d2", "text": "second"}).to_string();
    http.post(format!("{api}/_plugins/hooks/hook")).body(delivery).send().await.unwrap();
    let posted = |text: &str| person.messages_from(&bot).iter().filter(|m| m.body == format!("hook: {text}")).count();
    eventually(TIMEOUT, "the second delivery posted", || {
        let done = posted("second") == 1;
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(posted("first"), 1, "a redelivery is not posted again");

    // The bot's own TLS listener: a client certificate from the configured CA is accepted and its name handed
    // to the plugin; one from another CA, or none, is refused in the handshake.
    let ca = reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap();
    let client = |identity: Option<(&str, &str)>| {
        let mut builder = reqwest::Client::builder().tls_certs_only([ca.clone()]);
        if let Some((cert, key)) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        builder.build().unwrap()
    };
    let url = format!("https://127.0.0.1:{port}/whoami");
    let (status, seen) = status_of(client(Some((&client_cert, &client_key))).get(&url).send().await.unwrap()).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["client_common_name"], "deploy-app");
    assert_eq!(seen["path"], "/whoami");
    let refused = client(Some((&stranger_cert, &stranger_key))).get(&url).send().await;
    assert!(refused.is_err(), "a certificate from another CA is refused: {refused:?}");
    assert!(client(None).get(&url).send().await.is_err(), "no certificate is refused");
    eventually(TIMEOUT, "the refusal logged", || {
        let logged = daemon.log().contains("refused a TLS connection to a plugin listener");
        async move { logged.then_some(()) }
    })
    .await;

    // An operator stops the bot: its routes answer 503 and its listener is closed, while the host runs on.
    let mut admin = crate::harness::api::Api::new(&env);
    admin.login().await;
    assert_eq!(admin.post("/api/v1/instances/hooks/stop").await.0, 200);
    admin.wait_state("hooks", &["stopped"], TIMEOUT).await;
    let (status, body) =
        status_of(http.post(format!("{api}/_plugins/hooks/echo")).body("x").send().await.unwrap()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("instance_not_serving")), "{body}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the stopped bot's listener is closed");
    assert_eq!(daemon.stop().code(), Some(0));
    assert!(!daemon.log().contains("BEGIN PRIVATE KEY"), "the key is not in the log");
}

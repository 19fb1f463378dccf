//! `maubot check-config` as an operator (or `nixos-rebuild`) runs it.

use crate::harness::bot::{BotEnv, describe};
use crate::harness::synapse::synapse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_the_merged_config_with_layers_and_no_secrets() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    let override_file = env.dir.path().join("override.json");
    std::fs::write(&override_file, r#"{"server": {"port": 30000}}"#).unwrap();
    env.env.insert("MAUBOT__HOST__SYNC_TIMEOUT_SECS".into(), "9".into());
    let output = env.output(&["--override", override_file.to_str().unwrap(), "check-config"]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&format!("port: 30000  # <- override file {}", override_file.display())), "{text}");
    assert!(text.contains("sync_timeout_secs: 9  # <- environment variable MAUBOT__HOST__SYNC_TIMEOUT_SECS"), "{text}");
    assert!(text.contains("hostname: 127.0.0.1  # <- built-in default"), "{text}");
    assert!(text.contains(&format!("# <- config file {}", env.config_path().display())), "{text}");
    assert!(text.contains("password: {credential: ping-password}"), "{text}");
    let password = std::fs::read_to_string(env.credentials_dir().join("ping-password")).unwrap();
    assert!(!text.contains(password.trim()));

    // Inline secrets are redacted too, with a warning on stderr.
    env.instances[0].extra = vec!["password: inline-secret-value".into()];
    env.write_config();
    let output = env.output(&["check-config"]);
    assert!(output.status.success(), "{}", describe(&output));
    let all = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!all.contains("inline-secret-value"), "{all}");
    assert!(all.contains("password: <redacted>"), "{all}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("warning: instances.ping.password"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_exits_78_and_names_the_key() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["ping"]).await;
    env.instances[0].extra.push("rate_limit: {max_requests_per_minute: 0}".into());
    env.write_config();
    let output = env.output(&["check-config"]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("instances.ping.rate_limit.max_requests_per_minute"), "{err}");
    assert!(output.stdout.is_empty(), "nothing printed as config when invalid");

    std::fs::remove_file(env.credentials_dir().join("ping-password")).unwrap();
    env.instances[0].extra.pop();
    env.write_config();
    let output = env.output(&["check-config"]);
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("LoadCredential=ping-password:"), "{}", describe(&output));

    let version = env.output(&["--version"]);
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("maubot "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_problems_name_the_key_and_the_tls_key_is_never_printed() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["a", "b"]).await;
    let api_port = env.api_port;
    env.instances[0].extra.extend([
        "listeners:".to_owned(),
        format!("  - {{port: {api_port}}}"),
        "  - {address: \"example.org\", port: 8443}".to_owned(),
        "  - {port: 8444, tls: {certificate: cert.pem, private_key: {credential: a-tls-key}}}".to_owned(),
    ]);
    let kept_b = env.instances[1].extra.len();
    env.instances[1].extra.extend(["listeners:".to_owned(), "  - {address: 0.0.0.0, port: 8444}".to_owned()]);
    env.write_credential("a-tls-key", "-----BEGIN PRIVATE KEY-----\nplanted-key-material\n-----END PRIVATE KEY-----\n");
    env.server_extra.extend([
        "public_listener: {address: 0.0.0.0, port: 8444, tls: {certificate: /etc/c.pem, private_key: {credential: a-tls-key}, client_ca: /etc/ca.pem}}".to_owned(),
        "trusted_proxies: [127.0.0.1, 10.0.0.0/8, proxy.example.org]".to_owned(),
    ]);
    env.write_config();
    let output = env.output(&["check-config"]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    let err = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "server.public_listener.tls.client_ca: the public listener serves every plugin and asks for no client certificates",
        "instances.a.listeners.2.port: port 8444 is also used by server.public_listener",
        "server.trusted_proxies.2: `proxy.example.org` is not an IP address or network",
        &format!("instances.a.listeners.0.port: port {api_port} is also used by the management server"),
        "instances.a.listeners.1.address: `example.org` is not an IP address",
        "instances.a.listeners.2.tls.certificate: `cert.pem` must be an absolute path",
        "instances.b.listeners.0.port: port 8444 is also used by server.public_listener",
    ] {
        assert!(err.contains(expected), "{expected:?} in:\n{err}");
    }

    // Valid listeners: printed with the key's source, never the key; plain HTTP beyond loopback is warned of.
    env.server_extra.clear();
    let kept = env.instances[0].extra.len() - 4;
    env.instances[0].extra.truncate(kept);
    env.instances[1].extra.truncate(kept_b);
    env.instances[1].extra.extend(["listeners:".to_owned(), "  - {address: 0.0.0.0, port: 8445}".to_owned()]);
    env.instances[0].extra.extend([
        "listeners:".to_owned(),
        "  - {port: 8444, tls: {certificate: /etc/cert.pem, private_key: {credential: a-tls-key}}}".to_owned(),
    ]);
    env.write_config();
    let output = env.output(&["check-config"]);
    assert!(output.status.success(), "{}", describe(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("a-tls-key") && !printed.contains("planted-key-material"), "{printed}");
    let warned = String::from_utf8_lossy(&output.stderr);
    assert!(
        warned.contains("instances.b.listeners.0.tls: the listener on 0.0.0.0 serves plain HTTP beyond this machine"),
        "{warned}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_bot_with_its_secret_written_into_the_config_is_refused() {
    let synapse = synapse();
    let mut env = BotEnv::with_ping_bots(synapse, &["gh"]).await;
    env.plugins.insert(
        "gh".into(),
        (
            "github".into(),
            vec![
                "secret: the-secret-itself".into(),
                "routes: [{repository: octo, room: \"#dev:example.org\", branches: [\"(\"]}]".into(),
            ],
        ),
    );
    env.write_config();
    let output = env.output(&["check-config"]);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    let err = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "instances.gh.config.secret: the webhook secret must come from a credential or a file",
        "instances.gh.config.routes.0.repository: `octo` should be `owner/name`",
        "instances.gh.config.routes.0.room: `#dev:example.org` is not a room id",
        "instances.gh.config.routes.0.branches.0: `(` is not a regular expression",
    ] {
        assert!(err.contains(expected), "{expected:?} in:\n{err}");
    }
}

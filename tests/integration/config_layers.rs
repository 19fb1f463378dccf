//! Config layering, credentials and validation, through the library's `load`.

use std::path::PathBuf;

use maubot::config::{ConfigError, Purpose, Sources, load};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("creds")).unwrap();
        Files { dir }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn credential(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join("creds").join(name), text).unwrap();
    }

    fn sources(&self, configs: &[&PathBuf], overrides: &[&PathBuf], env: &[(&str, &str)]) -> Sources {
        Sources {
            config_files: configs.iter().map(|p| p.to_path_buf()).collect(),
            override_files: overrides.iter().map(|p| p.to_path_buf()).collect(),
            state_directory: None,
            credentials_directory: Some(self.dir.path().join("creds")),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }
}

const BASE: &str = "
homeservers:
  local:
    url: http://127.0.0.1:8008
instances:
  ping:
    type: ping
    user: '@ping:example.org'
    password: {credential: ping-password}
";

fn problems(err: ConfigError) -> String {
    err.to_string()
}

#[test]
fn each_layer_overrides_the_one_before() {
    let files = Files::new();
    files.credential("ping-password", "pw-long-enough\n");
    let config = files.write("config.yaml", &format!("{BASE}server:\n  port: 1111\nlogging:\n  level: debug\n"));
    let override1 = files.write("override.json", r#"{"server": {"port": 2222}, "host": {"sync_timeout_secs": 7}}"#);
    let override2 = files.write("override2.yaml", "server:\n  port: 3333\n");

    // defaults only for what no layer sets
    let loaded = load(&files.sources(&[&config], &[], &[]), Purpose::Check).unwrap();
    assert_eq!(loaded.config.server.port, 1111, "config file beats the default 29316");
    assert_eq!(loaded.config.server.hostname, "127.0.0.1", "default kept");
    assert_eq!(loaded.config.logging.level, "debug");

    let loaded = load(&files.sources(&[&config], &[&override1], &[]), Purpose::Check).unwrap();
    assert_eq!(loaded.config.server.port, 2222, "override file beats config file");
    assert_eq!(loaded.config.host.sync_timeout_secs, 7);
    assert_eq!(loaded.config.logging.level, "debug", "keys an override does not set are kept");

    let loaded = load(&files.sources(&[&config], &[&override1, &override2], &[]), Purpose::Check).unwrap();
    assert_eq!(loaded.config.server.port, 3333, "later override file beats earlier one");

    let env = [("MAUBOT__SERVER__PORT", "4444"), ("MAUBOT__LOGGING__LEVEL", "warn")];
    let loaded = load(&files.sources(&[&config], &[&override1, &override2], &env), Purpose::Check).unwrap();
    assert_eq!(loaded.config.server.port, 4444, "environment beats override files");
    assert_eq!(loaded.config.logging.level, "warn");

    // credentials are the last word on secrets: the env can only point at another credential
    files.credential("other-password", "from-other\n");
    let env = [("MAUBOT__INSTANCES__PING__PASSWORD__CREDENTIAL", "other-password")];
    let loaded = load(&files.sources(&[&config], &[], &env), Purpose::Check).unwrap();
    assert_eq!(loaded.config.instances["ping"].password.as_ref().unwrap().expose(), "from-other");
}

#[test]
fn state_dir_follows_systemd_state_directory() {
    let files = Files::new();
    files.credential("ping-password", "pw-long-enough");
    let config = files.write("config.yaml", BASE);
    let mut sources = files.sources(&[&config], &[], &[]);
    assert_eq!(load(&sources, Purpose::Check).unwrap().config.state_dir, PathBuf::from("/var/lib/maubot"));
    sources.state_directory = Some("/var/lib/private/maubot:/var/lib/other".into());
    assert_eq!(load(&sources, Purpose::Check).unwrap().config.state_dir, PathBuf::from("/var/lib/private/maubot"));
    let explicit = files.write("explicit.yaml", "state_dir: /srv/bots\n");
    sources.config_files.push(explicit);
    assert_eq!(
        load(&sources, Purpose::Check).unwrap().config.state_dir,
        PathBuf::from("/srv/bots"),
        "config beats $STATE_DIRECTORY"
    );
}

#[test]
fn credentials_present_missing_empty_and_trailing_newline() {
    let files = Files::new();
    let config = files.write("config.yaml", BASE);

    let err = problems(load(&files.sources(&[&config], &[], &[]), Purpose::Check).err().unwrap());
    assert!(err.contains("instances.ping.password"), "{err}");
    assert!(err.contains("credential `ping-password` not found"), "{err}");
    assert!(err.contains("LoadCredential=ping-password:"), "{err}");
    assert!(err.contains("$CREDENTIALS_DIRECTORY"), "{err}");

    let mut no_dir = files.sources(&[&config], &[], &[]);
    no_dir.credentials_directory = None;
    let err = problems(load(&no_dir, Purpose::Check).err().unwrap());
    assert!(err.contains("$CREDENTIALS_DIRECTORY is not set"), "{err}");

    files.credential("ping-password", "");
    let err = problems(load(&files.sources(&[&config], &[], &[]), Purpose::Check).err().unwrap());
    assert!(err.contains("instances.ping.password") && err.contains("is empty"), "{err}");

    files.credential("ping-password", "hunter2-pw\n");
    let loaded = load(&files.sources(&[&config], &[], &[]), Purpose::Check).unwrap();
    assert_eq!(loaded.config.instances["ping"].password.as_ref().unwrap().expose(), "hunter2-pw");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn inline_secrets_work_with_a_warning_naming_the_key() {
    let files = Files::new();
    let config = files.write("config.yaml", &BASE.replace("{credential: ping-password}", "inline-password"));
    let loaded = load(&files.sources(&[&config], &[], &[]), Purpose::Check).unwrap();
    assert_eq!(loaded.config.instances["ping"].password.as_ref().unwrap().expose(), "inline-password");
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].key, "instances.ping.password");
    assert!(loaded.warnings[0].message.contains("credential"));
}

/// Each bad input and a fragment the message must contain.
#[test]
fn validation_messages_name_the_key_and_the_fix() {
    let files = Files::new();
    files.credential("ping-password", "pw-long-enough");
    files.credential("short-key", "too-short");
    files.credential("weak-hash", "$2b$10$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW");
    let cases: &[(&str, &[&str])] = &[
        ("instances:\n  ping:\n    user: 'ping:example.org'\n", &["instances.ping.user", "starts with `@`"]),
        (
            "instances:\n  Ping_1:\n    type: ping\n    user: '@p:example.org'\n    password: x\n",
            &["instances.Ping_1", "lower-case"],
        ),
        ("instances:\n  ping:\n    type: pong\n", &["instances.ping.type", "unknown plugin type `pong`", "ping"]),
        (
            "instances:\n  ping:\n    room_subscriptions: ['#room:example.org']\n",
            &["instances.ping.room_subscriptions.0", "alias"],
        ),
        (
            "instances:\n  ping:\n    rate_limit: {max_requests_per_minute: 61}\n",
            &["max_requests_per_minute", "between 1 and 60"],
        ),
        (
            "instances:\n  ping:\n    error_notification_level: LOUD\n",
            &["error_notification_level", "`LOUD`", "CRITICAL"],
        ),
        (
            "instances:\n  ping:\n    config: {allow_invites_from: [alice]}\n",
            &["instances.ping.config.allow_invites_from.0"],
        ),
        ("instances:\n  ping:\n    config: {comand: '!p'}\n", &["instances.ping.config", "unknown field `comand`"]),
        (
            "instances:\n  ping:\n    homeserver: elsewhere\n",
            &["instances.ping.homeserver", "no homeserver named `elsewhere`"],
        ),
        ("homeservers:\n  local:\n    url: ftp://127.0.0.1\n", &["homeservers.local.url", "http"]),
        ("homeservers:\n  local:\n    url: 'not a url'\n", &["homeservers.local.url", "not a URL"]),
        ("server:\n  prot: 1\n", &["server", "unknown key `prot`", "port"]),
        ("server:\n  port: 70000\n", &["server.port"]),
        ("server:\n  secret_key: {credential: short-key}\n", &["server.secret_key", "at least 32"]),
        ("admins:\n  alice: {credential: weak-hash}\n", &["admins.alice", "cost 10", ">= 12"]),
        ("admins:\n  alice: {credential: ping-password}\n", &["admins.alice", "not a bcrypt hash"]),
        ("logging:\n  level: 'maubot=loud'\n", &["logging.level"]),
        ("state_dir: relative/dir\n", &["state_dir", "absolute"]),
        ("database: ../outside.db\n", &["database", "inside state_dir"]),
        ("instances:\n  ping:\n    max_command_age_secs: 0\n", &["max_command_age_secs"]),
    ];
    for (yaml, expected) in cases {
        let base = files.write("base.yaml", BASE);
        let extra = files.write("extra.yaml", yaml);
        let err = match load(&files.sources(&[&base, &extra], &[], &[]), Purpose::Check) {
            Ok(_) => panic!("accepted invalid config:\n{yaml}"),
            Err(e) => problems(e),
        };
        for fragment in *expected {
            assert!(err.contains(fragment), "for\n{yaml}\nexpected {fragment:?} in:\n{err}");
        }
    }
}

#[test]
fn localhost_homeserver_urls_warn() {
    let files = Files::new();
    files.credential("ping-password", "pw-long-enough");
    let config = files.write("config.yaml", &BASE.replace("127.0.0.1", "localhost"));
    let loaded = load(&files.sources(&[&config], &[], &[]), Purpose::Check).unwrap();
    assert!(loaded.warnings.iter().any(|w| w.key == "homeservers.local.url" && w.message.contains("127.0.0.1")));
}

#[test]
fn a_missing_or_malformed_file_is_named() {
    let files = Files::new();
    let missing = files.dir.path().join("nope.yaml");
    let err = load(&files.sources(&[&missing], &[], &[]), Purpose::Check).err().unwrap().to_string();
    assert!(err.contains("nope.yaml"), "{err}");
    let bad = files.write("bad.yaml", "server: [unclosed\n");
    let err = load(&files.sources(&[&bad], &[], &[]), Purpose::Check).err().unwrap().to_string();
    assert!(err.contains("bad.yaml") && err.contains("line"), "{err}");
}

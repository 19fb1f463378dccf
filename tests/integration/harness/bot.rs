//! A bot deployment under test: a config file, a credentials directory (as systemd's LoadCredential= gives
//! it), a state directory, and the real `maubot` binary run against them.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::daemon::Daemon;
use super::synapse::{SERVER_NAME, Synapse};

pub const BIN: &str = env!("CARGO_BIN_EXE_maubot");

pub struct BotInstance {
    pub id: String,
    pub localpart: String,
    /// Extra YAML lines under `instances.<id>` (indented by the caller's absence: written as given).
    pub extra: Vec<String>,
}

pub struct BotEnv {
    pub dir: tempfile::TempDir,
    pub instances: Vec<BotInstance>,
    pub homeserver_url: String,
    /// YAML lines under `homeservers.local` besides `url`.
    pub homeserver_extra: Vec<String>,
    /// Extra top-level YAML.
    pub top_extra: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The ping bots' `allow_invites_from` globs.
    pub allow_invites_from: Vec<String>,
    /// The management API port (a free one, so that tests can run side by side).
    pub api_port: u16,
    /// YAML lines under `server:` besides `port`.
    pub server_extra: Vec<String>,
    /// YAML lines under `host:` besides the timeouts.
    pub host_extra: Vec<String>,
    /// More homeservers (name, url) besides `local`.
    pub extra_homeservers: Vec<(String, String)>,
    /// Instances of another plugin type than `ping`: id -> (type, YAML lines under `config:` besides
    /// `allow_invites_from`).
    pub plugins: BTreeMap<String, (String, Vec<String>)>,
}

/// The admin password `enable_api_login` configures.
pub const ADMIN_PASSWORD: &str = "admin-test-password";
/// The token signing key `enable_api_login` configures.
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef-test-signing-key";

impl BotEnv {
    /// An environment with one `ping` bot per id; bots log in with a password from a credential
    /// (`<id>-password`) after the harness registered them.
    pub async fn with_ping_bots(synapse: &Synapse, ids: &[&str]) -> BotEnv {
        let mut env = BotEnv::empty(synapse);
        for id in ids {
            let localpart = super::unique(&format!("{id}-"));
            let password = format!("pw-{localpart}-{}", rand::random::<u32>());
            super::synapse::register_with_secret(&synapse.url, &localpart, &password, false).await.unwrap();
            env.write_credential(&format!("{id}-password"), &format!("{password}\n"));
            env.instances.push(BotInstance {
                id: id.to_string(),
                localpart,
                extra: vec![format!("password: {{credential: {id}-password}}")],
            });
        }
        env.write_config();
        env
    }

    /// Configures one more ping bot `id` after setup (as a `nixos-rebuild switch` would): its user registered,
    /// its password a credential, but no state for it until setup runs again.
    pub async fn configure_ping_bot_not_set_up(&mut self, synapse: &Synapse, id: &str) {
        let other = BotEnv::with_ping_bots(synapse, &[id]).await;
        let name = format!("{id}-password");
        let password = std::fs::read_to_string(other.credentials_dir().join(&name)).unwrap();
        self.write_credential(&name, &password);
        self.instances.extend(other.instances);
        self.write_config();
    }

    /// As [`BotEnv::with_ping_bots`], the bots talking to the homeserver through `proxy`.
    pub async fn with_ping_bots_behind(synapse: &Synapse, proxy: &super::proxy::Proxy, ids: &[&str]) -> BotEnv {
        let mut env = BotEnv::with_ping_bots(synapse, ids).await;
        env.homeserver_url = proxy.url.clone();
        env.write_config();
        env
    }

    pub fn empty(synapse: &Synapse) -> BotEnv {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("credentials")).unwrap();
        BotEnv {
            dir,
            instances: Vec::new(),
            homeserver_url: synapse.url.clone(),
            homeserver_extra: Vec::new(),
            top_extra: Vec::new(),
            env: BTreeMap::new(),
            allow_invites_from: vec!["@*:maubot.test".into()],
            api_port: std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
            server_extra: Vec::new(),
            host_extra: Vec::new(),
            extra_homeservers: Vec::new(),
            plugins: BTreeMap::new(),
        }
    }

    /// Configures an admin `admin` (bcrypt, cost 12) and a token signing key, both as credentials.
    pub fn enable_api_login(&mut self) {
        let hash = bcrypt::hash(ADMIN_PASSWORD, 12).unwrap();
        self.write_credential("admin-admin", &format!("{hash}\n"));
        self.write_credential("secret-key", SECRET_KEY);
        self.server_extra.push("secret_key: {credential: secret-key}".into());
        self.top_extra.push("admins:\n  admin: {credential: admin-admin}".into());
        self.write_config();
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    pub fn credentials_dir(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn user_id(&self, id: &str) -> String {
        let instance = self.instances.iter().find(|i| i.id == id).expect("instance");
        format!("@{}:{SERVER_NAME}", instance.localpart)
    }

    pub fn write_credential(&self, name: &str, value: &str) {
        let path = self.credentials_dir().join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    }

    /// (Re)writes config.yaml from the fields.
    pub fn write_config(&self) {
        let mut yaml = format!("state_dir: {}\n", self.state_dir().display());
        yaml.push_str("logging:\n  level: \"info,maubot=debug\"\n");
        yaml.push_str("host:\n  ready_timeout_secs: 30\n  sync_timeout_secs: 5\n");
        for line in &self.host_extra {
            yaml.push_str(&format!("  {line}\n"));
        }
        yaml.push_str(&format!("server:\n  port: {}\n", self.api_port));
        for line in &self.server_extra {
            yaml.push_str(&format!("  {line}\n"));
        }
        yaml.push_str(&format!("homeservers:\n  local:\n    url: {}\n", self.homeserver_url));
        for line in &self.homeserver_extra {
            yaml.push_str(&format!("    {line}\n"));
        }
        for (name, url) in &self.extra_homeservers {
            yaml.push_str(&format!("  {name}:\n    url: {url}\n"));
        }
        for line in &self.top_extra {
            yaml.push_str(&format!("{line}\n"));
        }
        yaml.push_str("instances:\n");
        for instance in &self.instances {
            let (kind, config) = self.plugins.get(&instance.id).cloned().unwrap_or_else(|| ("ping".into(), vec![]));
            yaml.push_str(&format!(
                "  {}:\n    type: {kind}\n    user: \"@{}:{SERVER_NAME}\"\n",
                instance.id, instance.localpart
            ));
            yaml.push_str("    config:\n");
            // Types that create their rooms themselves (`space`) take no invites.
            if ["ping", "exec", "guard", "github", "media"].contains(&kind.as_str()) {
                let globs: Vec<String> = self.allow_invites_from.iter().map(|g| format!("\"{g}\"")).collect();
                yaml.push_str(&format!("      allow_invites_from: [{}]\n", globs.join(", ")));
            }
            for line in config {
                yaml.push_str(&format!("      {line}\n"));
            }
            for line in &instance.extra {
                yaml.push_str(&format!("    {line}\n"));
            }
        }
        std::fs::write(self.config_path(), yaml).unwrap();
    }

    /// Writes an executable program (a script with its `#!` line) into the test's directory; returns its path.
    pub fn write_program(&self, name: &str, source: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let program = self.dir.path().join(name);
        std::fs::write(&program, source).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        program
    }

    /// Makes instance `id` an `exec` bot running `program` (an executable path) with these `config` lines.
    pub fn use_exec(&mut self, id: &str, program: &Path, lines: &[&str]) {
        let mut config = vec![format!("command: {}", program.display())];
        config.extend(lines.iter().map(|l| l.to_string()));
        self.plugins.insert(id.to_owned(), ("exec".into(), config));
        self.write_config();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(Path::new(BIN), args)
    }

    /// As [`BotEnv::command`], with another `maubot` binary (e.g. the previous release).
    pub fn command_of(&self, binary: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CREDENTIALS_DIRECTORY", self.credentials_dir())
            .envs(&self.env)
            .stdin(Stdio::null());
        command
    }

    /// Runs a command to completion.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `maubot setup`, which must succeed.
    pub fn setup(&self) -> Output {
        let output = self.output(&["setup"]);
        assert!(output.status.success(), "setup failed: {}", describe(&output));
        output
    }

    /// Starts any mode in the background (e.g. a setup to interrupt).
    pub fn spawn(&self, args: &[&str]) -> Daemon {
        Daemon::spawn(self.command(args), &self.dir.path().join(format!("{}-{}.log", args[0], rand::random::<u32>())))
    }

    /// The device recorded for instance `id`.
    pub fn device_id(&self, id: &str) -> String {
        rusqlite::Connection::open(self.database_path())
            .unwrap()
            .query_row("SELECT device_id FROM instances WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    }

    /// Starts `maubot run` in the background.
    pub fn spawn_run(&self) -> Daemon {
        self.spawn_run_with(|_| {})
    }

    pub fn spawn_run_with(&self, adjust: impl FnOnce(&mut Command)) -> Daemon {
        let mut command = self.command(&["run"]);
        adjust(&mut command);
        Daemon::spawn(command, &self.dir.path().join(format!("run-{}.log", rand::random::<u32>())))
    }

    pub fn database_path(&self) -> PathBuf {
        self.state_dir().join("maubot.db")
    }

    /// The access token `setup` recorded for instance `id`.
    pub fn access_token(&self, id: &str) -> String {
        rusqlite::Connection::open(self.database_path())
            .unwrap()
            .query_row("SELECT access_token FROM instances WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    }

    /// Every file below the state dir with its size, to compare states.
    pub fn state_snapshot(&self) -> BTreeMap<PathBuf, u64> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    out.insert(entry.path(), 0);
                    walk(&entry.path(), out);
                } else {
                    out.insert(entry.path(), meta.len());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.state_dir(), &mut out);
        out
    }
}

pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

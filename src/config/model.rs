//! The configuration schema. Field names follow the maubot service data model (seed 002) where it fits.
//! Every struct denies unknown keys, so a typo is an error that names the key, not a silently ignored value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::secret::Secret;

/// The default management API port (the port maubot uses).
pub const DEFAULT_PORT: u16 = 29316;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where `setup` creates state and `run` expects it. Defaults to systemd's `$STATE_DIRECTORY`, else
    /// `/var/lib/maubot`.
    pub state_dir: PathBuf,
    /// The host's own SQLite database, relative to `state_dir` (it must live inside it).
    pub database: PathBuf,
    pub server: ServerConfig,
    /// Management API users: name -> bcrypt password hash (cost >= 12).
    #[serde(default)]
    pub admins: BTreeMap<String, Secret>,
    #[serde(default)]
    pub homeservers: BTreeMap<String, HomeserverConfig>,
    pub logging: LoggingConfig,
    pub host: HostConfig,
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceConfig>,
    /// ERROR and CRITICAL events sent to an admin room. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<NotificationsConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// The admin room (room ID); the sending bot must be joined to it (or invited by an allowed user).
    pub room: String,
    /// The instance whose bot sends the notifications.
    pub instance: String,
    /// Minimum severity sent to the room; lower levels go to the journal only. `ERROR` or `CRITICAL`.
    #[serde(default)]
    pub level: NotificationLevel,
    /// At most this many messages per minute; the rest are counted and summarized.
    #[serde(default = "default_notifications_per_minute")]
    pub max_per_minute: u32,
    /// The same event again within this window is counted, not sent again.
    #[serde(default = "default_dedupe_window_secs")]
    pub dedupe_window_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the management API. Loopback by default: reach it through an SSH tunnel.
    pub hostname: String,
    pub port: u16,
    /// Signs management API tokens; at least 32 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<Secret>,
    /// Lifetime of a management API token.
    #[serde(default = "default_token_ttl_secs")]
    pub token_ttl_secs: u64,
    /// Connections served at once; further ones are closed at once (and logged).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's headers; a kept-alive connection idle this long is closed.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// Time a whole request may take (the body included) before it is answered 408.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// A listener that serves plugins' routes only (`/_plugins/<id>/...`), on an address the world can reach
    /// (a webhook from GitHub), while the management API stays on loopback. No client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_listener: Option<ListenerConfig>,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` is believed for plugins' requests.
    /// Empty: the client's address is the socket's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}

impl ServerConfig {
    /// `trusted_proxies` as networks (a bare address is a network of one); entries that do not parse are left
    /// out (the config check refuses them).
    pub fn trusted_networks(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| {
                p.parse::<ipnet::IpNet>().ok().or_else(|| p.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HomeserverConfig {
    /// Client-server API base URL, e.g. `http://127.0.0.1:8008`.
    pub url: String,
    /// The server name in user IDs (`@bot:<server_name>`); checked against instance users when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Registration token for `m.login.registration_token` (conduwuit family, Synapse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_token: Option<Secret>,
    /// Synapse's `registration_shared_secret` for admin registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_shared_secret: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// A tracing filter: `info`, `debug`, `maubot=debug,matrix_sdk=warn`, ... `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `READY=1` is sent at the latest this long after start, even if some bot has not finished its first sync
    /// (the status line then says which are degraded).
    pub ready_timeout_secs: u64,
    /// Long-poll timeout of each `/sync`.
    pub sync_timeout_secs: u64,
    /// The health summary is degraded while an ERROR or CRITICAL event is younger than this.
    #[serde(default = "default_error_window_secs")]
    pub error_window_secs: u64,
    /// How operators run setup on this host, as messages name it (the NixOS module sets `maubot-setup`).
    #[serde(default = "default_setup_command")]
    pub setup_command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Plugin type, e.g. `ping`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The bot's Matrix user ID, `@local:server`.
    pub user: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Name of an entry in `homeservers`; may be left out when there is exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homeserver: Option<String>,
    /// Password for login (and for registration, when the homeserver has a registration secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// An existing access token to adopt instead of logging in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<Secret>,
    /// Display name of the bot's device; defaults to `maubot <id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// When not empty, the bot acts only in these rooms (room IDs `!x:server`).
    #[serde(default)]
    pub room_subscriptions: Vec<String>,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Commands older than this when the bot sees them (after downtime) are not answered.
    #[serde(default = "default_max_command_age_secs")]
    pub max_command_age_secs: u64,
    /// At most this many answered commands per sender per minute; more are not answered (off when absent).
    /// Stops one person from making the bot spam a room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_commands_per_sender_per_minute: Option<u32>,
    /// Minimum severity that is sent to the admin room.
    #[serde(default)]
    pub error_notification_level: NotificationLevel,
    /// `setup` registers the bot as a server admin (Synapse's shared-secret registration), which plugins that
    /// administer users need (`space`: force-join, deactivate). An account that exists already is not changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub server_admin: bool,
    /// Listeners of the instance's own for its plugin's HTTP routes (besides `/_plugins/<id>/` on the management
    /// server), started and stopped with the instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerConfig>,
    /// Plugin-specific settings, checked by the plugin type. A value `{ credential: NAME }` or `{ file: PATH }`
    /// anywhere in it is a secret: printed as written, read at start-up, and handed to the plugin as a string.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// The secrets `config` refers to, by JSON pointer into it (found by [`Config::find_plugin_secrets`]).
    #[serde(skip)]
    pub config_secrets: BTreeMap<String, Secret>,
    /// Why a plugin secret could not be read (`run` only): the bot fails with this, the others run.
    #[serde(skip)]
    pub unusable_secret: Option<String>,
}

impl InstanceConfig {
    /// `config` as the plugin gets it: every secret reference replaced by the secret's value.
    pub fn resolved_config(&self) -> serde_json::Value {
        let mut config = self.config.clone();
        for (pointer, secret) in &self.config_secrets {
            if let (Some(slot), Some(value)) = (config.pointer_mut(pointer), secret.value()) {
                *slot = serde_json::Value::String(value.to_owned());
            }
        }
        config
    }
}

/// Collects the secret references below `value` (at JSON pointer `pointer`).
fn collect_secret_references(value: &serde_json::Value, pointer: String, out: &mut BTreeMap<String, Secret>) {
    if let Some(secret) = Secret::from_reference(value) {
        out.insert(pointer, secret);
        return;
    }
    let escape = |key: &str| key.replace('~', "~0").replace('/', "~1");
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                collect_secret_references(child, format!("{pointer}/{}", escape(key)), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                collect_secret_references(child, format!("{pointer}/{index}"), out);
            }
        }
        _ => {}
    }
}

/// The instance whose plugin config holds the secret at `key` (`instances.<id>.config.…`).
pub fn instance_of_plugin_secret(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("instances.")?;
    let (id, rest) = rest.split_once('.')?;
    rest.starts_with("config.").then_some(id)
}

/// A JSON pointer as a dotted config key (`/settings/token` → `settings.token`).
fn pointer_to_key(pointer: &str) -> String {
    pointer
        .trim_start_matches('/')
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

/// A listener of an instance's own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// An IP address (`0.0.0.0` or `::` for every interface).
    #[serde(default = "default_listener_address")]
    pub address: String,
    pub port: u16,
    /// Plain HTTP when absent (behind a reverse proxy, on loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the server's certificate chain, its own certificate first.
    pub certificate: PathBuf,
    /// PEM: the certificate's private key (a secret: `{ credential: NAME }` or `{ file: PATH }`).
    pub private_key: Secret,
    /// PEM: the CA(s) client certificates must chain to. When set, every client must present one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

fn default_listener_address() -> String {
    "127.0.0.1".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// 1..=60.
    #[serde(default = "default_max_requests_per_minute")]
    pub max_requests_per_minute: u32,
    #[serde(default = "default_burst_size")]
    pub burst_size: u32,
    #[serde(default = "default_backoff_seconds")]
    pub backoff_seconds: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            max_requests_per_minute: default_max_requests_per_minute(),
            burst_size: default_burst_size(),
            backoff_seconds: default_backoff_seconds(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum NotificationLevel {
    Debug,
    Info,
    Warn,
    #[default]
    Error,
    Critical,
}

fn default_setup_command() -> String {
    "maubot setup".to_owned()
}

fn default_error_window_secs() -> u64 {
    300
}

fn default_max_connections() -> usize {
    64
}

fn default_header_timeout_secs() -> u64 {
    10
}

fn default_request_timeout_secs() -> u64 {
    30
}

fn default_token_ttl_secs() -> u64 {
    3600
}

fn default_notifications_per_minute() -> u32 {
    6
}

fn default_dedupe_window_secs() -> u64 {
    600
}

fn yes() -> bool {
    true
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

fn default_max_command_age_secs() -> u64 {
    300
}

fn default_max_requests_per_minute() -> u32 {
    10
}

fn default_burst_size() -> u32 {
    3
}

fn default_backoff_seconds() -> u64 {
    30
}

/// Secrets only `setup` uses (logging in, registering); a running host never reads them.
pub fn is_setup_only_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or_default();
    // `instances.<id>.password`, not a plugin's `instances.<id>.config.….password`, which the plugin needs to run.
    matches!(last, "password" | "access_token" | "registration_token" | "registration_shared_secret")
        && (key.starts_with("instances.") || key.starts_with("homeservers."))
        && key.split('.').count() == 3
}

impl InstanceConfig {
    /// The device display name used at login.
    pub fn device_name_or_default(&self, id: &str) -> String {
        self.device_name.clone().unwrap_or_else(|| format!("maubot {id}"))
    }
}

impl Config {
    /// The built-in defaults layer. `state_dir` follows systemd's `$STATE_DIRECTORY` (first entry) when given.
    pub fn defaults(state_directory: Option<&str>) -> serde_json::Value {
        let state_dir =
            state_directory.and_then(|dirs| dirs.split(':').find(|d| !d.is_empty())).unwrap_or("/var/lib/maubot");
        serde_json::json!({
            "state_dir": state_dir,
            "database": "maubot.db",
            "server": { "hostname": "127.0.0.1", "port": DEFAULT_PORT },
            "logging": { "level": "info" },
            "host": { "ready_timeout_secs": 20, "sync_timeout_secs": 30 },
        })
    }

    /// The database file's full path.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join(&self.database)
    }

    /// Every secret with its key path, for resolution.
    pub fn secrets_mut(&mut self) -> Vec<(String, &mut Secret)> {
        let mut out = Vec::new();
        if let Some(key) = self.server.secret_key.as_mut() {
            out.push(("server.secret_key".to_owned(), key));
        }
        for (name, hash) in &mut self.admins {
            out.push((format!("admins.{name}"), hash));
        }
        for (name, hs) in &mut self.homeservers {
            if let Some(s) = hs.registration_token.as_mut() {
                out.push((format!("homeservers.{name}.registration_token"), s));
            }
            if let Some(s) = hs.registration_shared_secret.as_mut() {
                out.push((format!("homeservers.{name}.registration_shared_secret"), s));
            }
        }
        if let Some(tls) = self.server.public_listener.as_mut().and_then(|l| l.tls.as_mut()) {
            out.push(("server.public_listener.tls.private_key".to_owned(), &mut tls.private_key));
        }
        for (id, instance) in &mut self.instances {
            if let Some(s) = instance.password.as_mut() {
                out.push((format!("instances.{id}.password"), s));
            }
            if let Some(s) = instance.access_token.as_mut() {
                out.push((format!("instances.{id}.access_token"), s));
            }
            for (index, listener) in instance.listeners.iter_mut().enumerate() {
                if let Some(tls) = listener.tls.as_mut() {
                    out.push((format!("instances.{id}.listeners.{index}.tls.private_key"), &mut tls.private_key));
                }
            }
            for (pointer, s) in &mut instance.config_secrets {
                out.push((format!("instances.{id}.config.{}", pointer_to_key(pointer)), s));
            }
        }
        out
    }

    /// Finds the secret references in every instance's plugin config (done once, after the layers merged).
    pub fn find_plugin_secrets(&mut self) {
        for instance in self.instances.values_mut() {
            let mut found = BTreeMap::new();
            collect_secret_references(&instance.config, String::new(), &mut found);
            instance.config_secrets = found;
        }
    }

    /// The homeserver an instance uses: its `homeserver`, or the only one configured.
    pub fn homeserver_of(&self, instance: &InstanceConfig) -> Option<(&str, &HomeserverConfig)> {
        match &instance.homeserver {
            Some(name) => self.homeservers.get_key_value(name).map(|(k, v)| (k.as_str(), v)),
            None if self.homeservers.len() == 1 => self.homeservers.iter().next().map(|(k, v)| (k.as_str(), v)),
            None => None,
        }
    }

    /// Every secret with its key path (copies).
    pub fn secrets(&self) -> Vec<(String, Secret)> {
        let mut clone = self.clone();
        clone.secrets_mut().into_iter().map(|(key, secret)| (key, secret.clone())).collect()
    }

    /// All secret values that were read, for scrubbing text that leaves the process (logs, notifications).
    pub fn secret_values(&self) -> Vec<String> {
        let mut clone = self.clone();
        clone.secrets_mut().into_iter().filter_map(|(_, s)| s.value().map(str::to_owned)).collect()
    }
}

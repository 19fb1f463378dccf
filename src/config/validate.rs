//! Semantic checks of a deserialized config. Every problem names the key path and says how to fix it.

use std::collections::BTreeMap;
use std::fmt;

use super::ids::{check_instance_id, check_room_id, check_server_name, check_user_id, server_name_of};
use super::model::{Config, InstanceConfig};
use crate::plugin;

/// One finding, tied to a config key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `instances.ping.user`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Errors make the config invalid; warnings are printed and the config is used.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Findings {
    fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem { key: key.into(), message: message.into() });
    }

    fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem { key: key.into(), message: message.into() });
    }
}

/// Minimum bcrypt cost for admin password hashes.
pub const MIN_BCRYPT_COST: u32 = 12;
/// Minimum length of `server.secret_key`.
pub const MIN_SECRET_KEY_BYTES: usize = 32;

/// Secrets shorter than this are refused: too short to be secret, and too short to scrub from logs reliably.
pub const MIN_SECRET_BYTES: usize = 8;
/// Highest bcrypt cost accepted: each login costs 2^cost rounds, and 15 already takes seconds on a small CPU.
pub const MAX_BCRYPT_COST: u32 = 14;

/// Checks everything that can be checked without network access. Secrets must be resolved.
pub fn validate(config: &Config) -> Findings {
    let mut findings = Findings::default();
    for (key, secret) in config.secrets() {
        if let Some(value) = secret.value()
            && value.len() < MIN_SECRET_BYTES
        {
            findings.error(
                key,
                format!(
                    "the secret from {} is {} bytes; secrets must be at least {MIN_SECRET_BYTES} bytes",
                    secret.origin(),
                    value.len()
                ),
            );
        }
    }
    check_paths(config, &mut findings);
    check_server(config, &mut findings);
    check_admins(config, &mut findings);
    check_homeservers(config, &mut findings);
    check_logging(config, &mut findings);
    check_host(config, &mut findings);
    check_notifications(config, &mut findings);
    check_listeners(config, &mut findings);
    let mut users: BTreeMap<&str, &str> = BTreeMap::new();
    for (id, instance) in &config.instances {
        check_instance(config, id, instance, &mut findings);
        if let Some(other) = users.insert(instance.user.as_str(), id.as_str()) {
            findings.error(
                format!("instances.{id}.user"),
                format!(
                    "`{}` is also the user of instance `{other}`; each bot instance needs its own Matrix user \
                     (one login, one device, one crypto store)",
                    instance.user
                ),
            );
        }
    }
    findings
}

fn check_paths(config: &Config, findings: &mut Findings) {
    if !config.state_dir.is_absolute() {
        findings.error(
            "state_dir",
            format!("`{}` is relative; give an absolute path such as /var/lib/maubot", config.state_dir.display()),
        );
    }
    if config.state_dir.parent().is_none() {
        findings.error(
            "state_dir",
            "`/` cannot hold the state: setup would claim the whole file system. Give the bots a directory of their \
             own, such as /var/lib/maubot",
        );
    }
    let db = &config.database;
    let escapes = db.components().any(|c| matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir));
    let names_a_file = matches!(db.components().next_back(), Some(std::path::Component::Normal(_)))
        && !db.as_os_str().to_string_lossy().ends_with('/');
    if !names_a_file || escapes || (db.is_absolute() && !db.starts_with(&config.state_dir)) {
        findings.error(
            "database",
            format!(
                "`{}` must be a file inside state_dir ({}), e.g. `maubot.db`: setup creates the database and the \
                 bot stores together so that they are backed up and restored together",
                db.display(),
                config.state_dir.display()
            ),
        );
    }
}

fn check_server(config: &Config, findings: &mut Findings) {
    let server = &config.server;
    if server.port == 0 {
        findings.error("server.port", "0 is not a usable port; the default is 29316");
    }
    match server.hostname.parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_loopback() => findings.warn(
            "server.hostname",
            format!(
                "the management API listens on {ip}, which is not loopback; keep it on 127.0.0.1 and reach it \
                 through an SSH tunnel"
            ),
        ),
        Ok(_) => {}
        Err(_) if server.hostname == "localhost" => {}
        Err(_) => findings
            .error("server.hostname", format!("`{}` is not an IP address; use 127.0.0.1 (or ::1)", server.hostname)),
    }
    if !(1..=4096).contains(&server.max_connections) {
        findings.error("server.max_connections", "must be between 1 and 4096; the default is 64");
    }
    if !(1..=300).contains(&server.header_timeout_secs) {
        findings.error("server.header_timeout_secs", "must be between 1 and 300 seconds; the default is 10");
    }
    if !(1..=600).contains(&server.request_timeout_secs) {
        findings.error("server.request_timeout_secs", "must be between 1 and 600 seconds; the default is 30");
    }
    for (index, proxy) in server.trusted_proxies.iter().enumerate() {
        if proxy.parse::<ipnet::IpNet>().is_err() && proxy.parse::<std::net::IpAddr>().is_err() {
            findings.error(
                format!("server.trusted_proxies.{index}"),
                format!("`{proxy}` is not an IP address or network, like 127.0.0.1 or 10.0.0.0/8"),
            );
        }
    }
    if !(60..=86400).contains(&server.token_ttl_secs) {
        findings.error("server.token_ttl_secs", "must be between 60 seconds and a day (86400)");
    }
    if let Some(key) = &server.secret_key
        && key.value().is_some_and(|k| {
            k.chars().filter(|c| !c.is_whitespace()).collect::<std::collections::HashSet<_>>().len() < 8
        })
        && key.expose().len() >= MIN_SECRET_KEY_BYTES
    {
        findings.error(
            "server.secret_key",
            format!(
                "the secret key from {} is not random: it has fewer than 8 different characters (whitespace aside); \
                 use e.g. `openssl rand -hex 32`",
                key.origin()
            ),
        );
    }
    if let Some(key) = &server.secret_key
        && key.expose().len() < MIN_SECRET_KEY_BYTES
    {
        findings.error(
            "server.secret_key",
            format!(
                "the secret key from {} is {} bytes; it must be at least {MIN_SECRET_KEY_BYTES} random bytes \
                 (e.g. `openssl rand -hex 32`)",
                key.origin(),
                key.expose().len()
            ),
        );
    }
}

fn check_admins(config: &Config, findings: &mut Findings) {
    for (name, hash) in &config.admins {
        let key = format!("admins.{name}");
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            findings.error(&key, "admin user names must be non-empty and without whitespace");
        }
        match bcrypt_cost(hash.expose()) {
            None => findings.error(
                &key,
                format!(
                    "the value from {} is not a bcrypt hash (`$2b$12$…`); create one with \
                     `htpasswd -nbBC 12 '' PASSWORD | cut -d: -f2` or `mkpasswd -m bcrypt -R 12`",
                    hash.origin()
                ),
            ),
            Some(cost) if cost > MAX_BCRYPT_COST => findings.error(
                &key,
                format!(
                    "the bcrypt hash from {} has cost {cost}; above {MAX_BCRYPT_COST} each login takes seconds of CPU \
                     (and a flood of them the whole machine). Re-hash with cost {MIN_BCRYPT_COST} to {MAX_BCRYPT_COST}",
                    hash.origin()
                ),
            ),
            Some(cost) if cost < MIN_BCRYPT_COST => findings.error(
                &key,
                format!(
                    "the bcrypt hash from {} has cost {cost}; re-hash with cost >= {MIN_BCRYPT_COST}",
                    hash.origin()
                ),
            ),
            Some(_) => {}
        }
    }
}

/// The cost of a bcrypt hash `$2a$NN$<53 chars>`, if it is one.
pub fn bcrypt_cost(hash: &str) -> Option<u32> {
    let rest = hash
        .strip_prefix("$2a$")
        .or_else(|| hash.strip_prefix("$2b$"))
        .or_else(|| hash.strip_prefix("$2y$"))
        .or_else(|| hash.strip_prefix("$2x$"))?;
    let (cost, digest) = rest.split_once('$')?;
    let valid_digest = digest.len() == 53 && digest.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '/');
    if cost.len() != 2 || !valid_digest {
        return None;
    }
    cost.parse().ok().filter(|c| (4..=31).contains(c))
}

fn check_homeservers(config: &Config, findings: &mut Findings) {
    for (name, hs) in &config.homeservers {
        let key = format!("homeservers.{name}");
        if name.is_empty() || name.chars().any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c))) {
            findings.error(&key, "homeserver names may use letters, digits and `._-`");
        }
        match url::Url::parse(&hs.url) {
            Err(e) => findings.error(
                format!("{key}.url"),
                format!("`{}` is not a URL ({e}); write it like http://127.0.0.1:8008", hs.url),
            ),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                findings.error(format!("{key}.url"), format!("`{}` must be http:// or https://", hs.url))
            }
            Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                findings.error(format!("{key}.url"), format!("`{}` has no host", hs.url))
            }
            Ok(url) => {
                if url.host_str() == Some("localhost") {
                    findings.warn(
                        format!("{key}.url"),
                        "`localhost` may resolve to ::1 while the homeserver listens on 127.0.0.1 only (conduwuit \
                         does); write the address, e.g. http://127.0.0.1:8008",
                    );
                }
                if !url.username().is_empty() || url.password().is_some() {
                    findings.error(format!("{key}.url"), "the URL must not contain credentials");
                }
            }
        }
        if let Some(server_name) = &hs.server_name
            && let Err(why) = check_server_name(server_name)
        {
            findings.error(format!("{key}.server_name"), why);
        }
    }
}

fn check_logging(config: &Config, findings: &mut Findings) {
    if let Err(why) = check_log_filter(&config.logging.level) {
        findings.error("logging.level", why);
        return;
    }
    if let Err(e) = config.logging.level.parse::<tracing_subscriber::filter::Targets>() {
        findings.error(
            "logging.level",
            format!(
                "`{}` is not a log filter ({e}); use e.g. `info`, `debug` or `maubot=debug,info`",
                config.logging.level
            ),
        );
    }
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A log filter of comma-separated directives, each a level (`info`) or `target=level`
/// (`maubot=debug`). A bare word that is not a level would silence everything else (`warning` is a target
/// name to the filter, not a level), so it is refused.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let shown = filter.escape_debug();
    if filter.chars().any(char::is_control) {
        return Err(format!("`{shown}` contains control characters; use e.g. `info` or `maubot=debug,info`"));
    }
    if filter.trim().is_empty() {
        return Err("is empty; use e.g. `info`".into());
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("`{directive}` has no target before `=`; write e.g. `maubot=debug`")),
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{level}` in `{shown}` is not a level; use one of {} (e.g. `warn`, not `warning`), or \
                 `target=level`",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

fn check_host(config: &Config, findings: &mut Findings) {
    if !(1..=600).contains(&config.host.ready_timeout_secs) {
        findings.error("host.ready_timeout_secs", "must be between 1 and 600 seconds");
    }
    if !(1..=86400).contains(&config.host.error_window_secs) {
        findings.error("host.error_window_secs", "must be between 1 second and a day; the default is 300 (5 minutes)");
    }
    if !(1..=300).contains(&config.host.sync_timeout_secs) {
        findings.error("host.sync_timeout_secs", "must be between 1 and 300 seconds");
    }
}

fn check_notifications(config: &Config, findings: &mut Findings) {
    let Some(notifications) = &config.notifications else { return };
    if let Err(why) = check_room_id(&notifications.room) {
        findings.error("notifications.room", format!("`{}` is not a room ID: {why}", notifications.room));
    }
    if !config.instances.contains_key(&notifications.instance) {
        findings.error(
            "notifications.instance",
            format!(
                "`{}` is not a configured instance; name the bot that sends notifications (one of: {})",
                notifications.instance,
                config.instances.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    if notifications.level < super::model::NotificationLevel::Error {
        findings.error(
            "notifications.level",
            "only ERROR and CRITICAL go to the admin room (lower levels stay in the journal); use ERROR or CRITICAL",
        );
    }
    if !(1..=60).contains(&notifications.max_per_minute) {
        findings.error("notifications.max_per_minute", "must be between 1 and 60");
    }
    if !(10..=86400).contains(&notifications.dedupe_window_secs) {
        findings.error("notifications.dedupe_window_secs", "must be between 10 seconds and a day (86400)");
    }
}

/// Every listener (the public one and the instances' own): a usable address and port, absolute PEM paths, and
/// no port used twice (by another listener or the management server) on overlapping addresses.
fn check_listeners(config: &Config, findings: &mut Findings) {
    let server_ip = config.server.hostname.parse::<std::net::IpAddr>().ok();
    let mut taken: Vec<(std::net::IpAddr, u16, String)> = Vec::new();
    if let Some(ip) = server_ip {
        taken.push((ip, config.server.port, "the management server (server.port)".to_owned()));
    }
    let overlap = |a: &std::net::IpAddr, b: &std::net::IpAddr| a == b || a.is_unspecified() || b.is_unspecified();
    let mut listeners: Vec<(String, &crate::config::model::ListenerConfig)> = Vec::new();
    if let Some(public) = &config.server.public_listener {
        listeners.push(("server.public_listener".to_owned(), public));
        if public.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()) {
            findings.error(
                "server.public_listener.tls.client_ca",
                "the public listener serves every plugin and asks for no client certificates; give the instance \
                 that needs them a listener of its own (`instances.<id>.listeners`)",
            );
        }
    }
    for (id, instance) in &config.instances {
        for (index, listener) in instance.listeners.iter().enumerate() {
            listeners.push((format!("instances.{id}.listeners.{index}"), listener));
        }
    }
    for (key, listener) in listeners {
        {
            if listener.port == 0 {
                findings.error(format!("{key}.port"), "0 is not a usable port");
            }
            let Ok(ip) = listener.address.parse::<std::net::IpAddr>() else {
                findings.error(
                    format!("{key}.address"),
                    format!(
                        "`{}` is not an IP address; use e.g. 0.0.0.0 (every interface) or 127.0.0.1",
                        listener.address
                    ),
                );
                continue;
            };
            if let Some((_, _, other)) = taken.iter().find(|(at, port, _)| *port == listener.port && overlap(at, &ip)) {
                findings.error(
                    format!("{key}.port"),
                    format!("port {} is also used by {other}; give each listener its own port", listener.port),
                );
            }
            taken.push((ip, listener.port, key.clone()));
            if let Some(tls) = &listener.tls {
                for (name, path) in [("certificate", Some(&tls.certificate)), ("client_ca", tls.client_ca.as_ref())] {
                    if let Some(path) = path.filter(|p| !p.is_absolute()) {
                        findings.error(
                            format!("{key}.tls.{name}"),
                            format!("`{}` must be an absolute path to a PEM file", path.display()),
                        );
                    }
                }
            } else if !ip.is_loopback() {
                findings.warn(
                    format!("{key}.tls"),
                    format!("the listener on {ip} serves plain HTTP beyond this machine; add `tls` or put a reverse proxy with TLS in front"),
                );
            }
        }
    }
}

fn check_instance(config: &Config, id: &str, instance: &InstanceConfig, findings: &mut Findings) {
    let key = format!("instances.{id}");
    if let Err(why) = check_instance_id(id) {
        findings.error(&key, format!("instance id `{id}` is not valid: {why}"));
    }
    if let Err(why) = check_user_id(&instance.user) {
        findings.error(format!("{key}.user"), format!("`{}` is not valid: {why}", instance.user));
    }
    match plugin::registry::lookup(&instance.kind) {
        None => findings.error(
            format!("{key}.type"),
            format!(
                "unknown plugin type `{}`; known types: {}",
                instance.kind,
                plugin::registry::known_types().join(", ")
            ),
        ),
        Some(kind) => {
            for problem in kind.check_config(&instance.config) {
                let path = if problem.key.is_empty() {
                    format!("{key}.config")
                } else {
                    format!("{key}.config.{}", problem.key)
                };
                findings.error(path, problem.message);
            }
        }
    }
    match config.homeserver_of(instance) {
        None => match &instance.homeserver {
            Some(name) => findings.error(
                format!("{key}.homeserver"),
                format!(
                    "no homeserver named `{name}`; define `homeservers.{name}.url` or use one of: {}",
                    config.homeservers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            None if config.homeservers.is_empty() => findings.error(
                format!("{key}.homeserver"),
                "no homeserver is configured; add `homeservers.<name>.url: http://127.0.0.1:8008`",
            ),
            None => findings
                .error(format!("{key}.homeserver"), "several homeservers are configured; name the one this bot uses"),
        },
        Some((name, hs)) => {
            if let Some(server_name) = &hs.server_name
                && check_user_id(&instance.user).is_ok()
                && server_name_of(&instance.user) != server_name
            {
                findings.error(
                    format!("{key}.user"),
                    format!("`{}` is not on homeserver `{name}`, whose server name is `{server_name}`", instance.user),
                );
            }
            let can_register = hs.registration_token.is_some() || hs.registration_shared_secret.is_some();
            if instance.password.is_some() && instance.access_token.is_some() {
                findings.error(
                    &key,
                    "both `password` and `access_token` are set; keep one (the password logs in a new device, the \
                     token adopts an existing one)",
                );
            } else if instance.password.is_none() && instance.access_token.is_none() && !can_register {
                findings.error(
                    &key,
                    format!(
                        "no way to log in: set `password` (e.g. `{{ credential: {id}-password }}`), `access_token`, \
                         or a registration secret on homeserver `{name}` (`registration_token` or \
                         `registration_shared_secret`) so that setup can register the bot"
                    ),
                );
            }
        }
    }
    for (i, room) in instance.room_subscriptions.iter().enumerate() {
        if let Err(why) = check_room_id(room) {
            findings.error(format!("{key}.room_subscriptions.{i}"), format!("`{room}` is not a room ID: {why}"));
        }
    }
    let rate = &instance.rate_limit;
    if !(1..=60).contains(&rate.max_requests_per_minute) {
        findings.error(
            format!("{key}.rate_limit.max_requests_per_minute"),
            format!("{} is out of range; it must be between 1 and 60", rate.max_requests_per_minute),
        );
    }
    if rate.burst_size == 0 {
        findings.error(format!("{key}.rate_limit.burst_size"), "must be at least 1");
    }
    if rate.backoff_seconds == 0 || rate.backoff_seconds > 3600 {
        findings.error(format!("{key}.rate_limit.backoff_seconds"), "must be between 1 and 3600 seconds");
    }
    if !(1..=7 * 86400).contains(&instance.max_command_age_secs) {
        findings.error(
            format!("{key}.max_command_age_secs"),
            "must be between 1 second and 7 days (604800); the default is 300 (5 minutes)",
        );
    }
    if let Some(device_name) = &instance.device_name
        && (device_name.is_empty() || device_name.len() > 100)
    {
        findings.error(format!("{key}.device_name"), "must be 1 to 100 characters");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_are_levels_or_target_levels() {
        assert!(check_log_filter("info").is_ok());
        assert!(check_log_filter("info,maubot=debug, matrix_sdk::http_client=off").is_ok());
        assert!(check_log_filter("WARN").is_ok());
        assert!(check_log_filter("warning").unwrap_err().contains("`warning`"));
        assert!(check_log_filter("verbose").is_err());
        assert!(check_log_filter("info\0").unwrap_err().contains("control"));
        assert!(check_log_filter("").is_err());
        assert!(check_log_filter("=debug").is_err());
        assert!(check_log_filter("maubot=loud").is_err());
    }

    #[test]
    fn bcrypt_costs() {
        let digest = "R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
        assert_eq!(bcrypt_cost(&format!("$2b$12${digest}")), Some(12));
        assert_eq!(bcrypt_cost(&format!("$2y$10${digest}")), Some(10));
        assert_eq!(bcrypt_cost("$2b$12$short"), None);
        assert_eq!(bcrypt_cost("plain-password"), None);
        assert_eq!(bcrypt_cost(&format!("$1$12${digest}")), None);
    }
}

//! One real Synapse per test process, installed by `scripts/install-synapse.sh` and started on a free loopback
//! port with a throwaway data directory. If it cannot be installed or started, tests fail loudly.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const SHARED_SECRET: &str = "test-shared-secret-for-registration";
pub const SERVER_NAME: &str = "maubot.test";

pub struct Synapse {
    pub url: String,
    pub admin_token: String,
}

static SYNAPSE: OnceLock<Synapse> = OnceLock::new();
static SYNAPSE_DEFAULT_LIMITS: OnceLock<Synapse> = OnceLock::new();

/// The shared homeserver (rate limits relaxed), started on first use.
pub fn synapse() -> &'static Synapse {
    keep(&SYNAPSE, false)
}

/// A second homeserver with Synapse's default rate limits, for the tests that show the bots live within them.
pub fn synapse_with_default_limits() -> &'static Synapse {
    keep(&SYNAPSE_DEFAULT_LIMITS, true)
}

fn keep(cell: &'static OnceLock<Synapse>, default_limits: bool) -> &'static Synapse {
    cell.get_or_init(|| {
        // Started from a thread that lives as long as the process: the homeserver gets SIGKILL (PDEATHSIG)
        // when the thread that spawned it ends, which is then only at process exit.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("synapse-keeper".into())
            .spawn(move || {
                let result = start(default_limits);
                tx.send(result).unwrap();
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        match rx.recv().unwrap() {
            Ok(synapse) => synapse,
            Err(e) => panic!("cannot start Synapse for the tests: {e}"),
        }
    })
}

const DATA_DIR_PREFIX: &str = "maubot-test-synapse-";

/// Data directories of earlier test processes that are gone (the homeserver died with them).
fn remove_stale_data_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(DATA_DIR_PREFIX) else { continue };
        let pid = pid.trim_end_matches("-default-limits");
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(default_limits: bool) -> Result<Synapse, String> {
    let install = Command::new("bash")
        .arg(repo_root().join("scripts/install-synapse.sh"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running install-synapse.sh: {e}"))?;
    if !install.status.success() {
        return Err(format!("install-synapse.sh failed ({})", install.status));
    }
    let venv = PathBuf::from(String::from_utf8_lossy(&install.stdout).trim());
    let python = venv.join("bin/python");
    remove_stale_data_dirs();
    let suffix = if default_limits { "-default-limits" } else { "" };
    let data_dir = std::env::temp_dir().join(format!("{DATA_DIR_PREFIX}{}{suffix}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let port = free_port();
    let status = Command::new(&python)
        .arg(repo_root().join("scripts/synapse-config.py"))
        .arg(&data_dir)
        .arg(port.to_string())
        .arg(SHARED_SECRET)
        .arg(SERVER_NAME)
        .args(default_limits.then_some("--default-rate-limits"))
        .status()
        .map_err(|e| format!("synapse-config.py: {e}"))?;
    if !status.success() {
        return Err(format!("synapse-config.py failed ({status})"));
    }
    let log = std::fs::File::create(data_dir.join("stdout.log")).map_err(|e| e.to_string())?;
    let mut command = Command::new(&python);
    command
        .args(["-m", "synapse.app.homeserver", "-c"])
        .arg(data_dir.join("homeserver.yaml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("starting Synapse: {e}"))?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("Synapse exited ({status}); see {}", data_dir.join("homeserver.log").display()));
            }
            if let Ok(r) = http.get(format!("{url}/health")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("Synapse did not answer /health within 90 s".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })?;
    let admin_token = runtime
        .block_on(register_with_secret(&url, "admin", "admin-password", true))
        .map_err(|e| format!("registering the admin user: {e}"))?;
    std::mem::forget(child);
    Ok(Synapse { url, admin_token })
}

/// Registers a user with Synapse's shared-secret admin API; returns its access token.
pub async fn register_with_secret(url: &str, localpart: &str, password: &str, admin: bool) -> Result<String, String> {
    let http = reqwest::Client::new();
    let endpoint = format!("{url}/_synapse/admin/v1/register");
    let nonce: Value =
        http.get(&endpoint).send().await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
    let nonce = nonce["nonce"].as_str().ok_or("no nonce")?.to_owned();
    let mac = maubot::matrix::register::shared_secret_mac(SHARED_SECRET, &nonce, localpart, password, admin);
    // Admins get a token for the harness; everyone else only an account (a device would be counted).
    let body = json!({"nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac,
                      "inhibit_login": !admin});
    let response: Value = http
        .post(&endpoint)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if response.get("user_id").is_none() {
        return Err(format!("registration failed: {response}"));
    }
    Ok(response["access_token"].as_str().unwrap_or_default().to_owned())
}

impl Synapse {
    fn admin(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.bearer_auth(&self.admin_token)
    }

    /// The devices a user has, by id, from the admin API.
    pub async fn devices(&self, user_id: &str) -> Vec<String> {
        let url = format!("{}/_synapse/admin/v2/users/{user_id}/devices", self.url);
        let response: Value = self.admin(reqwest::Client::new().get(url)).send().await.unwrap().json().await.unwrap();
        response["devices"]
            .as_array()
            .map(|d| d.iter().filter_map(|d| d["device_id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    /// Whether a user exists.
    pub async fn user_exists(&self, user_id: &str) -> bool {
        let url = format!("{}/_synapse/admin/v2/users/{user_id}", self.url);
        self.admin(reqwest::Client::new().get(url)).send().await.unwrap().status().is_success()
    }

    /// GETs `path` (relative to the homeserver URL) as the admin: the status and the JSON answer.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}/{path}", self.url);
        let response = self.admin(reqwest::Client::new().get(url)).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// The room an alias points to (`#local:server`), if any.
    pub async fn resolve_alias(&self, alias: &str) -> Option<String> {
        let encoded: String = url::form_urlencoded::byte_serialize(alias.as_bytes()).collect();
        let (status, body) = self.admin_get(&format!("_matrix/client/v3/directory/room/{encoded}")).await;
        (status == 200).then(|| body["room_id"].as_str().unwrap().to_owned())
    }

    /// A room's current state events (Synapse's admin API), each with its event id.
    pub async fn room_state(&self, room_id: &str) -> Vec<Value> {
        let (status, body) = self.admin_get(&format!("_synapse/admin/v1/rooms/{room_id}/state")).await;
        assert_eq!(status, 200, "room state of {room_id}: {body}");
        body["state"].as_array().cloned().unwrap_or_default()
    }

    /// Whether a user's account is deactivated.
    pub async fn deactivated(&self, user_id: &str) -> bool {
        let (status, body) = self.admin_get(&format!("_synapse/admin/v2/users/{user_id}")).await;
        assert_eq!(status, 200, "user {user_id}: {body}");
        body["deactivated"] == Value::Bool(true)
    }

    /// POSTs `body` to `path` (relative to the homeserver URL) as the admin; the JSON answer.
    async fn admin_post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/{path}", self.url);
        self.admin(reqwest::Client::new().post(url)).json(&body).send().await.unwrap().json().await.unwrap()
    }

    /// Exempts a user (a test person, never a bot) from the message rate limit.
    pub async fn exempt_from_rate_limits(&self, user_id: &str) {
        let url = format!("{}/_synapse/admin/v1/users/{user_id}/override_ratelimit", self.url);
        let response = self
            .admin(reqwest::Client::new().post(url))
            .json(&json!({"messages_per_second": 0, "burst_count": 0}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "override_ratelimit: {}", response.status());
    }

    /// The user's cross-signing master key as the homeserver has it (none without an identity).
    pub async fn master_key(&self, user_id: &str) -> Option<Value> {
        let response = self.admin_post("_matrix/client/v3/keys/query", json!({"device_keys": {user_id: []}})).await;
        response["master_keys"].get(user_id).map(|k| k["keys"].clone())
    }

    /// A new single-use registration token.
    pub async fn registration_token(&self) -> String {
        let response = self.admin_post("_synapse/admin/v1/registration_tokens/new", json!({"uses_allowed": 1})).await;
        response["token"].as_str().expect("token").to_owned()
    }
}

//! Careless and hostile configuration: files that try to exhaust memory or CPU, credentials that are not files,
//! duplicate keys, values that silently did the wrong thing. Each is refused quickly, within a small memory
//! budget, with an error that names the file, credential or key and the fix. Runs the real binary where time
//! and memory matter, the library's `load` elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use maubot::config::{Purpose, Sources, load};

use crate::harness::bot::BIN;

const BASE: &str = "homeservers:\n  local:\n    url: http://127.0.0.1:8008\ninstances:\n  ping:\n    type: ping\n    user: '@ping:example.org'\n    password: {credential: ping-password}\n";

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("creds")).unwrap();
        std::fs::write(dir.path().join("creds/ping-password"), "a-long-enough-password").unwrap();
        Dir { dir }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn creds(&self) -> PathBuf {
        self.dir.path().join("creds")
    }

    fn sources(&self, files: &[&Path], env: &[(&str, &str)]) -> Sources {
        Sources {
            config_files: files.iter().map(|p| p.to_path_buf()).collect(),
            override_files: Vec::new(),
            state_directory: None,
            credentials_directory: Some(self.creds()),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn error(&self, files: &[&Path], env: &[(&str, &str)]) -> String {
        match load(&self.sources(files, env), Purpose::Check) {
            Ok(_) => panic!("accepted: {files:?} {env:?}"),
            Err(e) => e.to_string(),
        }
    }
}

/// Runs `maubot check-config` on `config` with its data segment (heap and private memory) limited to
/// [`MEMORY_LIMIT`]: going past it makes allocations fail and the process die, which the exit code shows.
/// Returns the exit code, stderr and the wall time.
fn check_config(dir: &Dir, config: &Path) -> (Option<i32>, String, Duration) {
    use std::os::unix::process::CommandExt;
    let started = Instant::now();
    let mut command = Command::new(BIN);
    command.args(["--config"]).arg(config).arg("check-config").env_clear().env("CREDENTIALS_DIRECTORY", dir.creds());
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: MEMORY_LIMIT, rlim_max: MEMORY_LIMIT };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned(), started.elapsed())
}

/// The memory a config check may use.
const MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

#[test]
fn an_alias_bomb_is_refused_in_bounded_memory_and_time() {
    let dir = Dir::new();
    let plain = dir.file("plain.yaml", BASE);
    let (code, stderr, _) = check_config(&dir, &plain);
    assert_eq!(code, Some(0), "an ordinary config checks fine within the memory limit: {stderr}");
    // 190 KB: one 100 KB string, aliased 9,000 times (900 MB once expanded).
    let mut text = format!("{BASE}junk:\n  big: &big \"{}\"\n  copies:\n", "x".repeat(100_000));
    for _ in 0..9000 {
        text.push_str("    - *big\n");
    }
    let config = dir.file("bomb.yaml", &text);
    let (code, stderr, took) = check_config(&dir, &config);
    assert_eq!(code, Some(78), "within {MEMORY_LIMIT} bytes: {stderr}");
    assert!(stderr.contains("bomb.yaml") && stderr.contains("aliases count each time"), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn deep_nesting_is_refused_early() {
    let dir = Dir::new();
    let config = dir.file("deep.yaml", &format!("{BASE}junk: {}1{}\n", "[".repeat(100_000), "]".repeat(100_000)));
    let (code, stderr, took) = check_config(&dir, &config);
    assert_eq!(code, Some(78), "within {MEMORY_LIMIT} bytes: {stderr}");
    assert!(stderr.contains("deep.yaml") && stderr.contains("nested at most 64"), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn an_oversized_config_file_is_refused_by_size() {
    let dir = Dir::new();
    let config = dir.file("huge.yaml", &format!("{BASE}# {}\n", "x".repeat(2 * 1024 * 1024)));
    let (code, stderr, _) = check_config(&dir, &config);
    assert_eq!(code, Some(78), "within {MEMORY_LIMIT} bytes: {stderr}");
    assert!(stderr.contains("huge.yaml is larger than the limit of 1048576 bytes"), "{stderr}");
}

#[test]
fn credentials_must_be_regular_files_of_bounded_size() {
    let dir = Dir::new();
    let config = dir.file("config.yaml", BASE);
    let credential = dir.creds().join("ping-password");
    std::fs::remove_file(&credential).unwrap();

    std::os::unix::fs::symlink("/dev/zero", &credential).unwrap();
    let started = Instant::now();
    let err = dir.error(&[&config], &[]);
    assert!(err.contains("credential `ping-password`") && err.contains("a character device"), "{err}");
    std::fs::remove_file(&credential).unwrap();

    let c = std::ffi::CString::new(credential.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = dir.error(&[&config], &[]);
    assert!(err.contains("credential `ping-password`") && err.contains("a named pipe"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "a FIFO or /dev/zero must not hang the daemon");
    std::fs::remove_file(&credential).unwrap();

    std::fs::write(&credential, "x".repeat(100 * 1024)).unwrap();
    let err = dir.error(&[&config], &[]);
    assert!(err.contains("larger than the limit of 65536 bytes"), "{err}");
    std::fs::remove_file(&credential).unwrap();

    // A loop of symlinks is a loop, not "does not exist".
    let other = dir.creds().join("other");
    std::os::unix::fs::symlink(&other, &credential).unwrap();
    std::os::unix::fs::symlink(&credential, &other).unwrap();
    let err = dir.error(&[&config], &[]);
    assert!(err.contains("loop of symbolic links") && !err.contains("not found"), "{err}");
}

#[test]
fn duplicate_keys_are_an_error_naming_both_places() {
    let dir = Dir::new();
    let config = dir.file("dup.yaml", &format!("{BASE}server:\n  port: 1111\n  hostname: 127.0.0.1\n  port: 2222\n"));
    let err = dir.error(&[&config], &[]);
    assert!(err.contains("dup.yaml") && err.contains("the key `port` appears twice"), "{err}");
    assert!(err.contains("line 12") && err.contains("first on line 10"), "{err}");
}

#[test]
fn secrets_are_taken_verbatim_and_never_as_numbers() {
    let dir = Dir::new();
    let config = dir.file("config.yaml", BASE);
    let loaded = load(
        &dir.sources(
            &[&config],
            &[("MAUBOT__INSTANCES__PING__PASSWORD", "0071234567"), ("MAUBOT__SERVER__PORT", "4321")],
        ),
        Purpose::Check,
    )
    .unwrap();
    assert_eq!(loaded.config.instances["ping"].password.as_ref().unwrap().expose(), "0071234567");
    assert_eq!(loaded.config.server.port, 4321, "other values are still typed");

    // In YAML a number is not a secret: its zeros or exponent are lost already.
    let numeric = dir.file("numeric.yaml", &BASE.replace("{credential: ping-password}", "12345678901"));
    let err = dir.error(&[&numeric], &[]);
    assert!(err.contains("instances.ping.password") && err.contains("quote it"), "{err}");
    let zeros = dir.file("zeros.yaml", &BASE.replace("{credential: ping-password}", "0071234567"));
    let loaded = load(&dir.sources(&[&zeros], &[]), Purpose::Check).unwrap();
    assert_eq!(loaded.config.instances["ping"].password.as_ref().unwrap().expose(), "0071234567");
}

/// Values that used to be accepted and did something else than the operator meant.
#[test]
fn careless_values_are_refused_with_the_key_and_the_fix() {
    let dir = Dir::new();
    std::fs::write(dir.creds().join("spaces"), " ".repeat(40)).unwrap();
    std::fs::write(dir.creds().join("short"), "abc1234").unwrap();
    std::fs::write(dir.creds().join("costly"), "$2b$31$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW").unwrap();
    let long_user = format!("'@{}:example.org'", "a".repeat(250));
    let cases: Vec<(String, &[&str])> = vec![
        ("logging:\n  level: warning\n".into(), &["logging.level", "`warning`", "warn"]),
        ("logging:\n  level: verbose\n".into(), &["logging.level", "not a level"]),
        ("logging:\n  level: \"info\\0\"\n".into(), &["logging.level", "control characters"]),
        ("server:\n  secret_key: {credential: spaces}\n".into(), &["server.secret_key", "not random"]),
        (format!("instances:\n  ping:\n    user: {long_user}\n"), &["instances.ping.user", "255"]),
        ("database: '.'\n".into(), &["database", "must be a file inside state_dir"]),
        ("database: 'dir/'\n".into(), &["database"]),
        ("state_dir: /\n".into(), &["state_dir", "whole file system"]),
        (
            "homeservers:\n  local:\n    registration_token: {credential: short}\n".into(),
            &["registration_token", "at least 8 bytes"],
        ),
        ("admins:\n  alice: {credential: costly}\n".into(), &["admins.alice", "cost 31"]),
    ];
    for (yaml, expected) in &cases {
        let base = dir.file("base.yaml", BASE);
        let extra = dir.file("extra.yaml", yaml);
        let err = dir.error(&[&base, &extra], &[]);
        for fragment in *expected {
            assert!(err.contains(fragment), "for\n{yaml}\nexpected {fragment:?} in:\n{err}");
        }
    }
    let base = dir.file("base.yaml", BASE);
    let err = dir.error(&[&base], &[("MAUBOT__", "x")]);
    assert!(err.contains("environment variable MAUBOT__") && err.contains("non-empty parts"), "{err}");
    let err = dir.error(&[&base], &[("MAUBOT__SERVER____PORT", "1")]);
    assert!(err.contains("MAUBOT__SERVER____PORT"), "{err}");
}

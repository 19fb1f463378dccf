//! Running yt-dlp, ffprobe and ffmpeg: never through a shell (arguments are passed as they are), with a cleared
//! environment, in a directory of the job's own, files created private (umask 077), in a process group of their
//! own so that a timeout ends whatever they started too, and with what they print kept within a bound.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// What a program printed is kept up to this many bytes per stream (the end, where the errors are).
const KEPT_OUTPUT_BYTES: usize = 64 * 1024;
/// Environment variables passed through: the search path, and where TLS roots are on NixOS.
const PASSED_THROUGH: &[&str] = &["PATH", "LANG", "SSL_CERT_FILE", "NIX_SSL_CERT_FILE", "TZ"];

/// How a run ended.
#[derive(Debug)]
pub enum Ended {
    /// It exited: its code (`None` when a signal ended it), and the ends of its stdout and stderr.
    Exited { code: Option<i32>, stdout: String, stderr: String },
    /// It ran past the time allowed and was killed (with what it started).
    TimedOut,
    /// It could not be started (missing, not executable).
    NotStarted(std::io::Error),
}

/// The program `name` resolves to: an absolute path as it is, a bare name looked up in `PATH`.
pub fn resolve(name: &Path) -> Option<PathBuf> {
    if name.is_absolute() {
        return is_executable(name).then(|| name.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program` with `args` in `dir` (also its `HOME`) for at most `timeout`.
pub async fn run(program: &Path, args: &[&std::ffi::OsStr], dir: &Path, timeout: Duration) -> Ended {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(PASSED_THROUGH.iter().filter_map(|name| std::env::var_os(name).map(|v| (name, v))))
        .env("HOME", dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: umask, prctl, getrlimit and setrlimit are async-signal-safe and touch nothing but the child itself.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o077);
            // The soft limit on open files the daemon started with (it raised its own): yt-dlp and ffmpeg get
            // what they would get without it. Best effort.
            let _ = crate::open_files::restore_in_child();
            // A daemon killed with SIGKILL takes its fetch along (under systemd the unit's cgroup would too).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Ended::NotStarted(e),
    };
    let group = child.id().map(|id| id as i32);
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let reading = async {
        let (stdout, stderr) = tokio::join!(read_bounded(&mut out), read_bounded(&mut err));
        let status = child.wait().await;
        (status, stdout, stderr)
    };
    let ended = match tokio::time::timeout(timeout, reading).await {
        Ok((status, stdout, stderr)) => Ended::Exited { code: status.ok().and_then(|s| s.code()), stdout, stderr },
        Err(_) => Ended::TimedOut,
    };
    // Whatever it started goes with it, in every outcome (a finished yt-dlp leaves nothing; a killed one might).
    if let Some(group) = group {
        // SAFETY: a plain syscall on the process group this run created.
        unsafe {
            libc::killpg(group, libc::SIGKILL);
        }
    }
    ended
}

/// Reads a stream to its end, keeping its last [`KEPT_OUTPUT_BYTES`].
async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(stream: &mut R) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buffer[..n]);
                if kept.len() > 2 * KEPT_OUTPUT_BYTES {
                    kept.drain(..kept.len() - KEPT_OUTPUT_BYTES);
                }
            }
        }
    }
    if kept.len() > KEPT_OUTPUT_BYTES {
        kept.drain(..kept.len() - KEPT_OUTPUT_BYTES);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[tokio::test]
    async fn a_program_runs_without_a_shell_and_a_timeout_ends_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let sh = Path::new("/bin/sh");
        // Arguments are not interpreted: `$HOME` reaches echo as the text it is, after `--`.
        let ended = run(
            Path::new("/bin/echo"),
            &[OsStr::new("--"), OsStr::new("$HOME; rm -rf /")],
            dir.path(),
            Duration::from_secs(5),
        )
        .await;
        match ended {
            Ended::Exited { code: Some(0), stdout, .. } => assert_eq!(stdout, "-- $HOME; rm -rf /\n"),
            other => panic!("{other:?}"),
        }
        // Files are created private.
        let script = "echo x > made; sleep 30 & echo $! > child; wait";
        let started = std::time::Instant::now();
        let ended = run(sh, &[OsStr::new("-c"), OsStr::new(script)], dir.path(), Duration::from_millis(500)).await;
        assert!(matches!(ended, Ended::TimedOut), "{ended:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.path().join("made")).unwrap().permissions().mode() & 0o777, 0o600);
        let child: i32 = std::fs::read_to_string(dir.path().join("child")).unwrap().trim().parse().unwrap();
        // The background `sleep` was killed with the group (a zombie at most until its parent is reaped).
        let alive = || {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
                .unwrap_or(false)
        };
        for _ in 0..50 {
            if !alive() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(), "the program's child was killed with it");
        assert!(matches!(
            run(Path::new("/nonexistent/yt-dlp"), &[], dir.path(), Duration::from_secs(1)).await,
            Ended::NotStarted(_)
        ));
        assert!(resolve(Path::new("sh")).is_some());
        assert!(resolve(Path::new("/nonexistent/yt-dlp")).is_none());
    }
}

//! The limit on open files. Each bot keeps about a dozen files open: matrix-sdk's state and crypto stores, each
//! a writer and a reader SQLite connection with the database, its write-ahead log and its shared-memory index,
//! and its connections to the homeserver (the long poll, more while answers are in flight). systemd starts
//! services with a soft limit of 1024 open files (`LimitNOFILE=1024:524288`), which about 75 bots use up; SQLite
//! then fails with "unable to open database file". As systemd.exec(5) advises for programs that do not use
//! select(2) (tokio uses epoll), the soft limit is raised to the hard one at start, and put back for the programs
//! the daemon starts (`exec` bots, yt-dlp), which may use select(2).

use std::sync::atomic::{AtomicU64, Ordering};

/// Open files a bot may need: its stores' connections (12), its long poll, some answers in flight.
const PER_BOT: u64 = 16;
/// Open files the daemon needs besides its bots: its own database, the API's listener and connections, logs.
const BESIDES_BOTS: u64 = 64;

/// The soft limit the process started with, once raised (0: not raised).
static STARTED_WITH: AtomicU64 = AtomicU64::new(0);

fn get() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

fn set(limit: &libc::rlimit) -> std::io::Result<()> {
    // SAFETY: setrlimit reads only the struct it is given; it is async-signal-safe (used between fork and exec).
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one; returns the limit now in force.
pub fn raise() -> std::io::Result<u64> {
    let mut limit = get()?;
    if limit.rlim_cur < limit.rlim_max {
        let started_with = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        set(&limit)?;
        STARTED_WITH.store(started_with as u64, Ordering::Relaxed);
    }
    Ok(limit.rlim_cur as u64)
}

/// The limit on open files in force now.
pub fn current() -> std::io::Result<u64> {
    Ok(get()?.rlim_cur as u64)
}

/// About how many open files `bots` bots need; below this, some will fail to open their stores.
pub fn needed(bots: usize) -> u64 {
    BESIDES_BOTS + PER_BOT * bots as u64
}

/// For a child process, between fork and exec: puts back the soft limit the daemon started with. Only
/// async-signal-safe calls.
pub fn restore_in_child() -> std::io::Result<()> {
    let started_with = STARTED_WITH.load(Ordering::Relaxed);
    if started_with == 0 {
        return Ok(());
    }
    let mut limit = get()?;
    limit.rlim_cur = started_with as libc::rlim_t;
    set(&limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one_and_back_down_for_a_child() {
        let before = get().unwrap();
        let hard = before.rlim_max as u64;
        // Start from a soft limit below the hard one, as under systemd (only just below: other tests run in
        // this process meanwhile).
        let low = if before.rlim_cur < before.rlim_max { before.rlim_cur } else { before.rlim_max - 1 };
        set(&libc::rlimit { rlim_cur: low, rlim_max: before.rlim_max }).unwrap();
        assert_eq!(raise().unwrap(), hard);
        assert_eq!(current().unwrap(), hard);
        // What a child gets: run in a forked process, as `pre_exec` does.
        let output = {
            use std::os::unix::process::CommandExt;
            let mut command = std::process::Command::new("sh");
            command.args(["-c", "ulimit -Sn"]);
            // SAFETY: restore_in_child makes only async-signal-safe calls.
            unsafe { command.pre_exec(restore_in_child) };
            command.output().unwrap()
        };
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), low.to_string());
        set(&before).unwrap();
        assert!(needed(100) > 1024, "100 bots need more than systemd's default soft limit");
    }
}

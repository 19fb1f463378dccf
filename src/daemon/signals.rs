//! Signals for `run`: SIGTERM and SIGINT stop, SIGHUP reloads, SIGUSR1, SIGUSR2 and SIGALRM are logged and
//! otherwise ignored (by default each would end the process at once, without `STOPPING=1` or a log line).
//! SIGPIPE is ignored by the Rust runtime already.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Sets the signals the host handles to "ignore" until its handlers are installed, so that one arriving during
/// start-up does not kill the process. Call before any thread starts.
pub fn ignore_until_handled() {
    for signal in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGALRM] {
        // SAFETY: setting a signal's disposition to SIG_IGN before other threads exist.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
}

/// What a signal asks the host to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    Stop,
    Reload,
    Nothing(&'static str),
}

pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    user1: Signal,
    user2: Signal,
    alarm: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
            user2: signal(SignalKind::user_defined2())?,
            alarm: signal(SignalKind::alarm())?,
        })
    }

    /// The next signal, as what it asks for.
    pub async fn next(&mut self) -> Asked {
        tokio::select! {
            _ = self.terminate.recv() => Asked::Stop,
            _ = self.interrupt.recv() => Asked::Stop,
            _ = self.hangup.recv() => Asked::Reload,
            _ = self.user1.recv() => Asked::Nothing("SIGUSR1"),
            _ = self.user2.recv() => Asked::Nothing("SIGUSR2"),
            _ = self.alarm.recv() => Asked::Nothing("SIGALRM"),
        }
    }
}

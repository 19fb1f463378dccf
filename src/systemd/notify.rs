//! sd_notify(3) over the `$NOTIFY_SOCKET` datagram socket: `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`.
//! Every call is a no-op when the process is not started by systemd with `Type=notify`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honouring `$WATCHDOG_PID`).
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let address = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
                None => SocketAddr::from_pathname(&path),
            };
            match (UnixDatagram::unbound(), address) {
                (Ok(socket), Ok(address)) => Some((socket, address)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(socket = %path, error = %e, "NOTIFY_SOCKET is set but unusable; not notifying systemd");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.parse::<u32>().ok() == Some(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// A notifier that does nothing.
    pub fn disabled() -> Self {
        Notifier { target: None, watchdog: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the watchdog timeout, if systemd armed one.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.target
            && let Err(e) = socket.send_to_addr(message.as_bytes(), address)
        {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// The start of a reload; `ready` ends it. systemd wants the monotonic time with it (sd_notify(3)).
    pub fn reloading(&self, status: &str) {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes into the timespec it is given.
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
        }
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={}", one_line(status)));
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }
}

fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), SocketAddr::from_pathname(&path).unwrap())),
            watchdog: Some(Duration::from_secs(10)),
        };
        notifier.ready("1/1 bots syncing\nextra");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "READY=1\nSTATUS=1/1 bots syncing extra");
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn disabled_notifier_is_a_no_op() {
        let notifier = Notifier::disabled();
        notifier.ready("x");
        assert!(!notifier.is_enabled());
        assert_eq!(notifier.watchdog_interval(), None);
    }
}

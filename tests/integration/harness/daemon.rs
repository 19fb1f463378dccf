//! A `maubot run` process under test, with its log, and a real sd_notify socket to watch it.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub child: Child,
    pub log_path: PathBuf,
}

impl Daemon {
    pub fn spawn(mut command: Command, log_path: &Path) -> Daemon {
        let log = std::fs::File::create(log_path).unwrap();
        command.stdout(log.try_clone().unwrap()).stderr(log);
        let child = command.spawn().expect("spawning maubot run");
        Daemon { child, log_path: log_path.to_owned() }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("maubot did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    /// SIGKILL: a crash, nothing gets to clean up.
    pub fn crash(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("maubot exited ({status}) before logging {needle:?}; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("maubot did not log {needle:?} within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A datagram socket playing systemd's side of sd_notify.
pub struct NotifySocket {
    pub path: PathBuf,
    socket: UnixDatagram,
    pub received: Vec<String>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        NotifySocket { path, socket, received: Vec::new() }
    }

    /// Collects messages until one satisfies `done` or the timeout passes; returns that message.
    pub fn wait_for(&mut self, timeout: Duration, done: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_for_after(0, timeout, done)
    }

    /// Collects whatever messages come within `duration` (to check what was not sent).
    pub fn collect_for(&mut self, duration: Duration) {
        self.wait_for(duration, |_| false);
    }

    /// As [`NotifySocket::wait_for`], considering only messages after the first `skip` received.
    pub fn wait_for_after(&mut self, skip: usize, timeout: Duration, done: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        if let Some(found) = self.received.iter().skip(skip).find(|m| done(m)) {
            return Some(found.clone());
        }
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.received.push(message.clone());
                if done(&message) {
                    return Some(message);
                }
            }
        }
        None
    }
}

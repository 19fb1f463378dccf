//! The link to systemd: readiness and status notifications, the watchdog, and journald logging.

pub mod journald;
pub mod logging;
pub mod notify;

pub use notify::Notifier;

//! maubot: a NixOS-first host for Matrix bots.
//!
//! Data flows config (layers + credentials) → state (setup creates, run opens) → host (supervises instances) →
//! instance (one Matrix client + one plugin) → homeserver; systemd observes the host.

pub mod cli;
pub mod config;
pub mod host;
pub mod instance;
pub mod matrix;
pub mod plugin;
pub mod setup;
pub mod state;
pub mod systemd;

/// Exit code for configuration and state errors (sysexits' EX_CONFIG). The NixOS unit sets
/// `RestartPreventExitStatus=78` so that systemd does not restart-loop on them.
pub const EXIT_CONFIG: u8 = 78;

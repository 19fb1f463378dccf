//! maubot: a NixOS-first host for Matrix bots.
//!
//! Data flows config (layers + credentials) → state (setup creates, run opens) → host (supervises instances) →
//! instance (one Matrix client + one plugin) → homeserver; systemd observes the host.

pub mod alerts;
pub mod api;
pub mod cli;
pub mod config;
pub mod host;
pub mod instance;
pub mod matrix;
pub mod memory;
pub mod plugin;
pub mod setup;
pub mod state;
pub mod systemd;
pub mod telemetry;

/// Exit code for configuration and state errors (sysexits' EX_CONFIG). The NixOS unit sets
/// `RestartPreventExitStatus=78` so that systemd does not restart-loop on them.
pub const EXIT_CONFIG: u8 = 78;

/// Resolves once a stop signal (a `watch` flag) turns true, or its sender is gone.
pub async fn stopping(flag: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across an await of the caller.
    let _ = flag.wait_for(|stop| *stop).await;
}

/// An error and its causes, for people: "cannot create the client: builder error: no CA certificates found".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

//! Test harness: a real Synapse on a free loopback port, the real `maubot` binary, and real Matrix clients.

pub mod api;
pub mod bot;
pub mod client;
pub mod daemon;
pub mod media_server;
pub mod pki;
pub mod previous;
pub mod proxy;
pub mod stores;
pub mod synapse;

use std::time::Duration;

/// A random lower-case suffix so that tests sharing one homeserver never share users.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

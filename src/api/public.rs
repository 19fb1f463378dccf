//! The public listener (`server.public_listener`): plugins' routes only (`/_plugins/<instance>/...`, e.g. a
//! GitHub webhook), on an address the world can reach, while the management API stays on localhost. Plain
//! HTTP, or TLS with a certificate of its own. Same limits as the management server; no request on it is an
//! operator's.

use axum::Router;
use axum::routing::any;
use tokio::sync::watch;

use super::error::ApiError;
use super::limits::{self, Limits};
use super::{AppState, plugins, serve};
use crate::config::model::ListenerConfig;
use crate::instance::listeners::{Listener, ListenerError};

/// Why the public listener cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum PublicError {
    /// Its configuration (address, certificate, key): fixed in the config.
    #[error(transparent)]
    Config(#[from] ListenerError),
    #[error(
        "cannot listen on {address} for the public listener: {source}. Is another service using the port? \
         Change `server.public_listener.port`"
    )]
    Bind { address: String, source: std::io::Error },
}

/// The public listener's routes.
pub fn router(state: AppState, limits: Limits) -> Router {
    Router::new()
        .route("/_plugins/{id}", any(plugins::public_route))
        .route("/_plugins/{id}/{*rest}", any(plugins::public_route))
        .fallback(|| async { ApiError::not_found("only plugins' routes (/_plugins/<instance>/...) are served here") })
        .layer(axum::middleware::from_fn_with_state(limits, limits::enforce))
        .with_state(state)
}

/// A bound public listener, ready to serve.
pub struct Public {
    socket: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Public {
    /// Reads the TLS files and binds the address.
    pub async fn bind(config: &ListenerConfig) -> Result<Public, PublicError> {
        let listener = Listener::prepare(config, "server.public_listener")?;
        let socket = tokio::net::TcpListener::bind(listener.address)
            .await
            .map_err(|source| PublicError::Bind { address: listener.address.to_string(), source })?;
        Ok(Public { socket, tls: listener.tls.map(tokio_rustls::TlsAcceptor::from) })
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Serves plugins' routes until `stop` turns true.
    pub async fn serve(self, state: AppState, limits: Limits, stop: watch::Receiver<bool>) {
        serve::serve(self.socket, router(state, limits), limits, self.tls, "public listener", stop).await
    }
}

//! Serving the management API: a connection cap (more connections are closed at once and logged, at most once
//! a minute), hyper with a header read timeout that also ends idle kept-alive connections, hyper's own buffer
//! limit above the application's (so that the application answers oversized requests with JSON), each
//! request carrying the client's address (for the login throttle), and a graceful stop. The public listener
//! (`public.rs`) is served the same way, optionally over TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use super::limits::{Limits, MAX_HEADER_BYTES};

/// hyper's read buffer: well above the application's header limit, so that requests between the two limits
/// are answered by the application (as JSON) rather than by hyper.
const HYPER_BUFFER: usize = 8 * MAX_HEADER_BYTES;
/// hyper's header count limit, likewise above the application's.
const HYPER_MAX_HEADERS: usize = 10 * super::limits::MAX_HEADERS;
/// How often a full house is logged.
const CAP_LOG_EVERY: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    server: &'static str,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_cap_log: Option<Instant> = None;
    let mut refused_since_log = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = crate::stopping(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait a little instead of spinning.
                tracing::warn!(server, error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused_since_log += 1;
            if last_cap_log.is_none_or(|at| at.elapsed() >= CAP_LOG_EVERY) {
                tracing::warn!(
                    server,
                    max_connections = limits.max_connections,
                    refused = refused_since_log,
                    client = %peer,
                    "at the connection limit; closing new connections until some end \
                     (idle ones are closed after server.header_timeout_secs)"
                );
                last_cap_log = Some(Instant::now());
                refused_since_log = 0;
            }
            drop(stream);
            continue;
        };
        let app = app.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, peer, app, limits, stop).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, app, limits, stop).await,
                    Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "a TLS handshake failed"),
                    Err(_) => tracing::debug!(client = %peer, "a TLS handshake took too long"),
                },
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection until it ends or the server stops.
async fn serve_connection<S>(stream: S, peer: SocketAddr, app: Router, limits: Limits, mut stop: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(HYPER_BUFFER)
        .max_headers(HYPER_MAX_HEADERS);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => log_connection_end(peer, result),
        _ = crate::stopping(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
        }
    }
}

fn log_connection_end(peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        if e.is_timeout() {
            tracing::debug!(client = %peer, "closed a connection that sent no request in time");
        } else {
            tracing::debug!(client = %peer, error = %e, "a connection ended with an error");
        }
    }
}

//! An instance's own HTTP listeners (`instances.<id>.listeners`): plain or TLS (rustls), with client
//! certificates verified against a configured CA when `client_ca` is set, serving the plugin's routes at `/`.
//! Bound when the instance starts (a port that cannot be bound fails the run, naming it) and closed when it
//! stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};

use crate::config::model::ListenerConfig;
use crate::plugin::http::{Endpoint, read_request};

/// Connections one listener serves at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has for the TLS handshake and for each request's headers.
const HANDSHAKE_AND_HEADERS: Duration = Duration::from_secs(10);

/// A listener ready to bind: where, and the TLS configuration (its files already read and checked).
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether client certificates are required (and their subject names handed to the plugin).
    pub verifies_clients: bool,
}

/// A listener's configuration that cannot be used; `key` names it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ListenerError {
    pub key: String,
    pub message: String,
}

impl Listener {
    /// Reads and checks a listener's certificate, key and CA. `key` is its config key.
    pub fn prepare(config: &ListenerConfig, key: &str) -> Result<Listener, ListenerError> {
        let problem = |suffix: &str, message: String| ListenerError { key: format!("{key}{suffix}"), message };
        let ip: std::net::IpAddr =
            config.address.parse().map_err(|_| problem(".address", "not an IP address".to_owned()))?;
        let address = SocketAddr::new(ip, config.port);
        let Some(tls) = &config.tls else {
            return Ok(Listener { address, tls: None, verifies_clients: false });
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certificates = CertificateDer::pem_file_iter(&tls.certificate)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| problem(".tls.certificate", format!("cannot read {}: {e}", tls.certificate.display())))?;
        if certificates.is_empty() {
            return Err(problem(".tls.certificate", format!("{} holds no PEM certificate", tls.certificate.display())));
        }
        let private_key = PrivateKeyDer::from_pem_slice(tls.private_key.expose().as_bytes()).map_err(|e| {
            problem(
                ".tls.private_key",
                format!("the key from {} is not a PEM private key: {e}", tls.private_key.origin()),
            )
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| problem(".tls", e.to_string()))?;
        let builder = match &tls.client_ca {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let cas = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| problem(".tls.client_ca", format!("cannot read {}: {e}", path.display())))?;
                let (added, _) = roots.add_parsable_certificates(cas);
                if added == 0 {
                    return Err(problem(
                        ".tls.client_ca",
                        format!("{} holds no usable CA certificate", path.display()),
                    ));
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| problem(".tls.client_ca", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_single_cert(certificates, private_key).map_err(|e| {
            problem(".tls", format!("the certificate and the private key do not make a TLS identity: {e}"))
        })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Listener { address, tls: Some(Arc::new(server)), verifies_clients: tls.client_ca.is_some() })
    }
}

/// Binds every listener (all or none) and serves `endpoint` on them until `stop` turns true.
pub async fn start(
    instance: &str,
    listeners: &[Listener],
    endpoint: Arc<Endpoint>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut bound = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let socket = tokio::net::TcpListener::bind(listener.address)
            .await
            .map_err(|e| format!("cannot listen on {}: {e} (is another service using the port?)", listener.address))?;
        bound.push((socket, listener.tls.clone(), listener.verifies_clients));
    }
    for (socket, tls, verifies) in bound {
        let address = socket.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(instance = %instance, address = %address, tls = tls.is_some(), client_certificates = verifies, "serving the plugin's HTTP routes");
        tokio::spawn(accept(socket, tls, endpoint.clone(), stop.clone()));
    }
    Ok(())
}

async fn accept(
    socket: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    endpoint: Arc<Endpoint>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, peer) = tokio::select! {
            _ = crate::stopping(&mut stop) => return,
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let (endpoint, acceptor, stop) = (endpoint.clone(), acceptor.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => serve(stream, peer, None, endpoint, stop).await,
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(HANDSHAKE_AND_HEADERS, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::info!(client = %peer, error = %e, "refused a TLS connection to a plugin listener");
                            return;
                        }
                        Err(_) => return,
                    };
                    let name = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(common_name);
                    serve(stream, peer, name, endpoint, stop).await;
                }
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection.
async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    client_common_name: Option<String>,
    endpoint: Arc<Endpoint>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let (endpoint, name) = (endpoint.clone(), client_common_name.clone());
        async move {
            let path = request.uri().path().to_owned();
            let response = match read_request(request, path, endpoint.spec.max_body_bytes, peer, name).await {
                Ok(request) => endpoint.handle(request).await,
                Err(refused) => refused,
            };
            Ok::<_, std::convert::Infallible>(response.into_http())
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_AND_HEADERS);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = crate::stopping(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
        }
    }
}

/// The subject common name of a (verified) certificate.
fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    parsed.subject().iter_common_name().next()?.as_str().ok().map(str::to_owned)
}

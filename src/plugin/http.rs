//! HTTP for plugins: the request a plugin sees and the response it gives, and the registry of plugins that
//! serve HTTP while their instance runs.
//!
//! A plugin that serves HTTP (`Plugin::http` says so, with its own body limit) is reached two ways: under the
//! management server at `/_plugins/<instance>/...` (no admin bearer: the plugin decides who may call it, e.g.
//! with a webhook signature), and on listeners of the instance's own (`instances.<id>.listeners`: address,
//! port, TLS, client certificates verified against a CA), started and stopped with the instance. Either way the
//! plugin gets the same [`HttpRequest`], with the path below its mount point and, on a TLS listener that
//! verifies client certificates, the verified certificate's subject common name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use http_body_util::BodyExt;

use super::{Plugin, PluginContext, UnpromptedSink};

/// Largest body limit a plugin may ask for (GitHub's webhook payloads are capped at 25 MB).
pub const MAX_BODY_LIMIT: usize = 25 * 1024 * 1024;
/// Bodies of plugin requests being read at once, process-wide, in KiB: 64 connections each sending a 25 MB body
/// (before any signature can be checked) wait their turn instead of holding 1.6 GB.
const BODIES_IN_FLIGHT_KIB: usize = 64 * 1024;
static BODY_BUDGET: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BODIES_IN_FLIGHT_KIB);

/// What a plugin asks for when it serves HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSpec {
    /// Larger request bodies are answered 413 before the plugin sees them (at most [`MAX_BODY_LIMIT`]).
    pub max_body_bytes: usize,
}

/// One request, read whole.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// Below the mount point, starting with `/` (`/_plugins/<id>/webhook` and a listener's `/webhook` are both
    /// `/webhook`).
    pub path: String,
    pub query: Option<String>,
    /// Lower-case names; a header sent more than once appears more than once.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client's address as the socket sees it (a reverse proxy's, behind one).
    pub peer: SocketAddr,
    /// On a TLS listener with `client_ca`: the verified client certificate's subject common name.
    pub client_common_name: Option<String>,
    /// On the management server, for a request with a valid admin bearer token: the admin's name (the
    /// `authorization` header is then not passed on). Operator routes of a plugin check it.
    pub operator: Option<String>,
}

impl HttpRequest {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What the plugin answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        HttpResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: value.to_string().into_bytes(),
        }
    }

    /// A JSON error in the management API's shape: `{"error": {"code": CODE, "message": TEXT}}`.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(status, &serde_json::json!({"error": {"code": code, "message": message}}))
    }

    /// The response as hyper sends it (headers that are not valid HTTP are left out, and logged).
    pub fn into_http(self) -> axum::http::Response<axum::body::Body> {
        let mut response = axum::http::Response::new(axum::body::Body::from(self.body));
        *response.status_mut() =
            axum::http::StatusCode::from_u16(self.status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in self.headers {
            match (axum::http::HeaderName::try_from(name.as_str()), axum::http::HeaderValue::try_from(value.as_str())) {
                (Ok(name), Ok(value)) => {
                    response.headers_mut().append(name, value);
                }
                _ => {
                    tracing::warn!(header = %crate::telemetry::scrub::for_log(&name), "a plugin's response header is not valid HTTP; left out")
                }
            }
        }
        response
    }
}

/// Reads a request whole, within `limit` bytes of body; the error is the answer to give instead.
pub async fn read_request<B>(
    request: axum::http::Request<B>,
    path: String,
    limit: usize,
    peer: SocketAddr,
    client_common_name: Option<String>,
) -> Result<HttpRequest, HttpResponse>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let declared = parts.headers.get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || HttpResponse::error(413, "payload_too_large", &format!("the body is larger than {limit} bytes"));
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // A share of the process-wide budget, by what the body may be, held while it is read.
    let may_be = declared.unwrap_or(limit as u64).min(limit as u64);
    let kib = (may_be / 1024 + 1).min(BODIES_IN_FLIGHT_KIB as u64) as u32;
    let _reading = BODY_BUDGET
        .acquire_many(kib)
        .await
        .map_err(|_| HttpResponse::error(503, "shutting_down", "the host is shutting down"))?;
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        // Handed over without a copy.
        Ok(collected) => Vec::from(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => return Err(HttpResponse::error(400, "bad_request", &format!("cannot read the body: {e}"))),
    };
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    Ok(HttpRequest {
        method: parts.method.as_str().to_owned(),
        path,
        query: parts.uri.query().map(str::to_owned),
        headers,
        body,
        peer,
        client_common_name,
        operator: None,
    })
}

/// A running instance's HTTP side: its plugin, its context and where what it does on its own goes.
pub struct Endpoint {
    pub plugin: Arc<dyn Plugin>,
    pub context: Arc<PluginContext>,
    pub unprompted: UnpromptedSink,
    pub spec: HttpSpec,
}

impl Endpoint {
    pub async fn handle(&self, request: HttpRequest) -> HttpResponse {
        self.plugin.on_http(&self.context, request, &self.unprompted).await
    }
}

/// The instances that serve HTTP right now, by id (the management server's `/_plugins/<id>/` looks here).
#[derive(Clone, Default)]
pub struct Endpoints(Arc<RwLock<HashMap<String, Arc<Endpoint>>>>);

impl Endpoints {
    /// Makes `id` reachable until the returned guard is dropped (the instance's run ended).
    pub fn register(&self, id: &str, endpoint: Arc<Endpoint>) -> Registration {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), endpoint.clone());
        Registration { endpoints: self.clone(), id: id.to_owned(), endpoint }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Endpoint>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }
}

/// Keeps an instance reachable over HTTP; dropping it takes it away (unless a newer run registered since).
pub struct Registration {
    endpoints: Endpoints,
    id: String,
    endpoint: Arc<Endpoint>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.endpoints.0.write().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.id).is_some_and(|current| Arc::ptr_eq(current, &self.endpoint)) {
            map.remove(&self.id);
        }
    }
}

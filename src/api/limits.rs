//! What the management API allows a client, and the middleware that answers, as JSON, a request that is too
//! long in its URI or headers, or that takes too long. hyper's own limits are set above these (see `serve.rs`),
//! so that the application, not hyper, answers.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::config::model::ServerConfig;

/// Longest request URI (path and query), in bytes.
pub const MAX_URI_BYTES: usize = 2048;
/// Most bytes of request headers (names and values together).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most request headers.
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed at once (and logged).
    pub max_connections: usize,
    /// Time a client has to send a request's headers, also between requests on a kept-alive connection.
    pub header_timeout: Duration,
    /// Time for a whole request (reading the body included) before it is answered 408.
    pub request_timeout: Duration,
}

impl Limits {
    pub fn from_config(server: &ServerConfig) -> Self {
        Limits {
            max_connections: server.max_connections,
            header_timeout: Duration::from_secs(server.header_timeout_secs),
            request_timeout: Duration::from_secs(server.request_timeout_secs),
        }
    }
}

/// Refuses oversized URIs and headers, and ends requests that take longer than the limit.
pub async fn enforce(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let uri_bytes = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI is {uri_bytes} bytes; at most {MAX_URI_BYTES} are accepted"),
        )
        .into_response();
    }
    let header_bytes: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES || request.headers().len() > MAX_HEADERS {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} headers of {header_bytes} bytes; at most {MAX_HEADERS} headers and \
                 {MAX_HEADER_BYTES} bytes are accepted",
                request.headers().len()
            ),
        )
        .into_response();
    }
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request took longer than {} s", limits.request_timeout.as_secs()),
            )
            .into_response();
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            response
        }
    }
}

//! `/_plugins/<instance>/...`: the HTTP routes of running plugins, under the management server. No admin bearer
//! is asked for: the plugin decides who may call it (a webhook signature, say) and how large a body may be.
//! An instance that is not running answers 503; an unknown one, or one whose plugin serves no HTTP, 404.
//! A request with a valid admin bearer token reaches the plugin as the operator's (`HttpRequest::operator`),
//! without the token.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::bearer_token;
use super::error::ApiError;
use crate::plugin::http::{HttpResponse, read_request};

pub async fn route(State(state): State<AppState>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let rest = request.uri().path().strip_prefix("/_plugins/").unwrap_or_default();
    let (id, path) = match rest.split_once('/') {
        Some((id, path)) => (id.to_owned(), format!("/{path}")),
        None => (rest.to_owned(), "/".to_owned()),
    };
    let Some(endpoint) = state.endpoints.get(&id) else {
        let known = state.views.borrow().iter().any(|v| v.id == id);
        return if known {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "instance_not_serving",
                "the instance is not running, or its plugin serves no HTTP",
            )
            .into_response()
        } else {
            ApiError::not_found("no such instance").into_response()
        };
    };
    let answer = match read_request(request, path, endpoint.spec.max_body_bytes, peer, None).await {
        Ok(mut request) => {
            let admin =
                request.header("authorization").and_then(bearer_token).and_then(|t| state.auth().verify(t).ok());
            if admin.is_some() {
                // An admin's token is the operator's, never the plugin's (an `exec` program would see it).
                request.headers.retain(|(name, _)| name != "authorization");
            }
            request.operator = admin;
            endpoint.handle(request).await
        }
        Err(refused) => refused,
    };
    HttpResponse::into_http(answer).into_response()
}

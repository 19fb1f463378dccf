//! `/_plugins/<instance>/...`: the HTTP routes of running plugins, under the management server. No admin bearer
//! is asked for: the plugin decides who may call it (a webhook signature, say) and how large a body may be.
//! An instance that is not running answers 503; an unknown one, or one whose plugin serves no HTTP, 404.
//! A request with a valid admin bearer token reaches the plugin as the operator's (`HttpRequest::operator`),
//! without the token. The public listener (`public.rs`) serves the same routes, where no request is an
//! operator's (an admin token sent there is still taken out). Behind a reverse proxy named in
//! `server.trusted_proxies`, the client's address the plugin sees is taken from `X-Forwarded-For`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::bearer_token;
use super::error::ApiError;
use crate::plugin::http::{HttpResponse, read_request};

/// Where a plugin request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The localhost management server: an admin's token makes the request the operator's.
    Management,
    /// The public listener: never an operator's.
    Public,
}

pub async fn route(State(state): State<AppState>, request: Request) -> Response {
    serve(state, request, Reach::Management).await
}

pub async fn public_route(State(state): State<AppState>, request: Request) -> Response {
    serve(state, request, Reach::Public).await
}

async fn serve(state: AppState, request: Request, reach: Reach) -> Response {
    let socket = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let peer = client_address(socket, request.headers(), &state.trusted_proxies);
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
            request.operator = if reach == Reach::Management { admin } else { None };
            endpoint.handle(request).await
        }
        Err(refused) => refused,
    };
    HttpResponse::into_http(answer).into_response()
}

/// The client's address: the socket's peer, or, when that peer is a trusted proxy, the last address in
/// `X-Forwarded-For` that is not a trusted proxy (the one the nearest untrusted hop gave; what a client writes
/// there itself is never believed past it).
pub fn client_address(peer: SocketAddr, headers: &axum::http::HeaderMap, trusted: &[ipnet::IpNet]) -> SocketAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer.ip()) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return SocketAddr::new(ip, 0),
            // Garbage from here leftwards: the nearest address we can stand behind is the proxy itself.
            Err(_) => return peer,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> axum::http::HeaderMap {
        let mut map = axum::http::HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let client = |a: SocketAddr| a.ip().to_string();
        assert_eq!(client(client_address(stranger, &headers(&["198.51.100.1"]), &trusted)), "203.0.113.9");
        assert_eq!(client(client_address(proxy, &headers(&["198.51.100.1"]), &trusted)), "198.51.100.1");
        // A client that writes its own header is seen as the address the proxy appended after it.
        assert_eq!(
            client(client_address(proxy, &headers(&["1.2.3.4, 198.51.100.1, 10.1.2.3"]), &trusted)),
            "198.51.100.1"
        );
        assert_eq!(client(client_address(proxy, &headers(&["1.2.3.4", "198.51.100.1"]), &trusted)), "198.51.100.1");
        assert_eq!(client(client_address(proxy, &headers(&["bogus"]), &trusted)), "127.0.0.1");
        assert_eq!(client(client_address(proxy, &headers(&[]), &trusted)), "127.0.0.1");
        assert_eq!(client(client_address(proxy, &headers(&["198.51.100.1"]), &[])), "127.0.0.1", "nothing trusted");
    }
}

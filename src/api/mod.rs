//! The localhost management API (axum): version, liveness and health, instances (state, counters, logs) and
//! their start/stop/restart/enable/disable, Prometheus metrics. Described in docs/management-api.yaml.

pub mod auth;
pub mod error;
pub mod hashing;
pub mod limits;
pub mod metrics;
pub mod plugins;
pub mod public;
pub mod serve;
pub mod throttle;

use std::sync::Arc;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use self::auth::{Admin, Auth, Epoch, LoginGuards};
use self::error::{ApiError, JsonBody, PathParams, QueryParams};
use self::limits::Limits;
use crate::host::health::{self, Health};
use crate::host::supervisor::{Command, Control, ControlError, Request};
use crate::host::view::InstanceView;
use crate::telemetry::Telemetry;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The API description, served at /api/v1/openapi.yaml.
pub const OPENAPI: &str = include_str!("../../docs/management-api.yaml");

#[derive(Clone)]
pub struct AppState {
    pub views: watch::Receiver<Vec<InstanceView>>,
    pub control: mpsc::Sender<Command>,
    pub telemetry: Arc<Telemetry>,
    /// Replaced at a reload (admins and the signing key may change).
    pub auth: Arc<std::sync::RwLock<Arc<Auth>>>,
    /// The login throttle and the hashing thread (kept across reloads).
    pub guards: Arc<LoginGuards>,
    /// The token epoch, and where `logout-all` records a new one.
    pub epoch: Epoch,
    pub db: Arc<crate::state::Database>,
    pub schema_version: u32,
    /// How long an ERROR keeps the health summary degraded.
    pub error_window: std::time::Duration,
    /// The running instances whose plugins serve HTTP.
    pub endpoints: crate::plugin::http::Endpoints,
    /// Reverse proxies whose `X-Forwarded-For` is believed for plugins' requests (`server.trusted_proxies`).
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
}

impl AppState {
    fn views(&self) -> Vec<InstanceView> {
        self.views.borrow().clone()
    }

    pub fn auth(&self) -> Arc<Auth> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn health(&self, views: &[InstanceView]) -> Health {
        health::assess(views, self.telemetry.errors_within(self.error_window))
    }
}

pub fn router(state: AppState, limits: Limits) -> Router {
    Router::new()
        .route("/health", get(liveness))
        .route("/metrics", get(prometheus))
        .route("/api/v1/version", get(version))
        .route("/api/v1/health", get(health_summary))
        .route("/api/v1/openapi.yaml", get(openapi))
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout-all", post(logout_all))
        .route("/api/v1/instances", get(list_instances))
        .route("/api/v1/instances/{id}", get(instance))
        .route("/api/v1/instances/{id}/logs", get(logs))
        .route("/api/v1/instances/{id}/{action}", post(control))
        .route("/_plugins/{id}", any(plugins::route))
        .route("/_plugins/{id}/{*rest}", any(plugins::route))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(limits, limits::enforce))
        .with_state(state)
}

async fn liveness() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn version(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"name": "maubot", "version": env!("CARGO_PKG_VERSION"), "schema_version": state.schema_version}))
}

async fn health_summary(State(state): State<AppState>) -> Response {
    let views = state.views();
    let health = state.health(&views);
    let code =
        if health.status == health::HealthStatus::Failed { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(health)).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

async fn prometheus(State(state): State<AppState>) -> Response {
    let views = state.views();
    let health = state.health(&views);
    let body = metrics::render(&views, &health, &state.telemetry);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    let issued = state.auth().login(&state.guards, Some(client.ip()), &request.username, &request.password).await?;
    Ok(Json(issued).into_response())
}

/// Ends every token issued so far (also the caller's): a new token epoch, kept in the database.
async fn logout_all(Admin(admin): Admin, State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let epoch = auth::new_epoch();
    state
        .db
        .set_meta(auth::EPOCH_KEY, &epoch)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string()))?;
    *state.epoch.write().unwrap_or_else(|p| p.into_inner()) = epoch;
    tracing::warn!(admin = %admin, "every management API token was revoked (logout-all)");
    Ok(Json(json!({"revoked": true})))
}

async fn list_instances(_admin: Admin, State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"instances": state.views()}))
}

fn find(state: &AppState, id: &str) -> Result<InstanceView, ApiError> {
    state.views().into_iter().find(|v| v.id == id).ok_or_else(|| ApiError::not_found(format!("no instance `{id}`")))
}

async fn instance(
    _admin: Admin,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<InstanceView>, ApiError> {
    find(&state, &id).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    limit: Option<usize>,
}

async fn logs(
    _admin: Admin,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    QueryParams(query): QueryParams<LogQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    find(&state, &id)?;
    let limit = query.limit.unwrap_or(100).min(crate::telemetry::RING_LINES);
    Ok(Json(json!({"instance": id, "lines": state.telemetry.recent_lines(&id, limit)})))
}

async fn control(
    _admin: Admin,
    State(state): State<AppState>,
    PathParams((id, action)): PathParams<(String, String)>,
) -> Result<Json<InstanceView>, ApiError> {
    let control = Control::parse(&action).ok_or_else(|| {
        ApiError::not_found(format!("unknown action `{action}`; use start, stop, restart, enable or disable"))
    })?;
    let (reply, answer) = oneshot::channel();
    state
        .control
        .send(Command::Control(Request { id, control, reply }))
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the host is shutting down"))?;
    let result = answer
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the host is shutting down"))?;
    result.map(Json).map_err(|e| {
        let (status, code) = match &e {
            ControlError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ControlError::NotSetUp(_) => (StatusCode::CONFLICT, "not_set_up"),
            ControlError::Disabled(_) => (StatusCode::CONFLICT, "disabled"),
            ControlError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            ControlError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        ApiError::new(status, code, e.to_string())
    })
}

/// Binds the listener (a failure here is reported before READY) and serves until `stop` turns true.
pub async fn bind(hostname: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((hostname, port)).await
}

pub async fn serve(listener: tokio::net::TcpListener, state: AppState, limits: Limits, stop: watch::Receiver<bool>) {
    serve::serve(listener, router(state, limits), limits, None, "management API", stop).await
}

//! The guard's operator routes, under the management server (`/_plugins/<id>/...`, with an admin's bearer
//! token; the plugin refuses them elsewhere):
//!
//! - `GET /report`: the last pass's report (planned, done, failed, skipped with the reason, per room).
//! - `POST /reconcile`: a pass over every room now.
//! - `POST /clear` with `{"room": "<room id or the policy's name for it>", "user_id": "@user:server"}`: the user
//!   may be invited to the room once more, whatever kept them out (their own leave, a human's kick); the pass
//!   that follows does it.

use matrix_sdk::ruma::OwnedUserId;
use serde_json::json;

use super::{Guard, Trigger};
use crate::plugin::http::{HttpRequest, HttpResponse};

pub const MAX_BODY_BYTES: usize = 16 * 1024;

impl Guard {
    pub(super) async fn operator_call(&self, request: HttpRequest) -> HttpResponse {
        let Some(operator) = request.operator.clone() else {
            return HttpResponse::error(
                403,
                "operator_only",
                "the guard's routes are for operators: call them on the management API with an admin's bearer token",
            );
        };
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/report") => match &*self.last_report.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(report) => HttpResponse::json(200, &serde_json::to_value(report).unwrap_or_default()),
                None => HttpResponse::error(404, "no_pass_yet", "no pass has finished yet"),
            },
            ("POST", "/reconcile") => {
                let _ = self.triggers.send(Trigger::All("operator"));
                HttpResponse::json(202, &json!({"status": "queued"}))
            }
            ("POST", "/clear") => self.clear_call(&request.body, &operator).await,
            (_, "/report" | "/reconcile" | "/clear") => {
                HttpResponse::error(405, "method_not_allowed", "GET /report, POST /reconcile, POST /clear")
            }
            _ => HttpResponse::error(404, "not_found", "the guard serves /report, /reconcile and /clear"),
        }
    }

    async fn clear_call(&self, body: &[u8], operator: &str) -> HttpResponse {
        let bad = |message: &str| HttpResponse::error(400, "bad_request", message);
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return bad("the body must be JSON: {\"room\": \"!room:server\", \"user_id\": \"@user:server\"}");
        };
        let Some(user) = value["user_id"].as_str().and_then(|u| OwnedUserId::try_from(u).ok()) else {
            return bad("`user_id` must be a user id like `@alice:example.org`");
        };
        let Some(room) = value["room"].as_str() else {
            return bad("`room` must be a managed room's id or its name in the policy");
        };
        let room_id = {
            let managed = self.managed.read().unwrap_or_else(|p| p.into_inner());
            managed.iter().find(|(id, name)| id.as_str() == room || name.as_str() == room).map(|(id, _)| id.clone())
        };
        let Some(room_id) = room_id else {
            return HttpResponse::error(
                404,
                "not_managed",
                "no managed room has this id or name (rooms are known after the pass that reached them)",
            );
        };
        if let Err(e) = self.clear(&room_id, user.as_str(), operator).await {
            return HttpResponse::error(503, "unavailable", &e);
        }
        tracing::info!(room = %room_id, user = %user, by = %operator, "guard: cleared to be invited again");
        let _ = self.triggers.send(Trigger::Room(room_id.clone()));
        HttpResponse::json(200, &json!({"status": "cleared", "room_id": room_id, "user_id": user}))
    }
}

//! One webhook delivery as GitHub sends it: the signature checked over the raw body before anything else is
//! read, the headers that name it, and the payload (JSON, or the form encoding a hook can be set to).
//! Every refusal is the HTTP answer to give: 401 for a missing or wrong signature, 400 naming what is wrong.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::plugin::http::{HttpRequest, HttpResponse};

/// A delivery whose signature matched.
#[derive(Debug)]
pub struct Delivery {
    /// `X-GitHub-Event`.
    pub event: String,
    /// `X-GitHub-Delivery`: the same for a redelivery, and for every hook the event went to.
    pub id: String,
    /// `X-GitHub-Hook-ID` (empty when absent).
    pub hook_id: String,
    pub payload: Value,
}

/// Longest delivery id or hook id kept.
const MAX_ID_BYTES: usize = 100;

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`; compared in constant time.
pub fn signature_matches(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The signature a body gets (for tests and tools).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Reads a delivery: the signature first (nothing of an unsigned body is looked at), then the headers, then
/// the payload.
pub fn read(secret: &[u8], request: &HttpRequest) -> Result<Delivery, HttpResponse> {
    let signature = request.header("x-hub-signature-256").ok_or_else(|| {
        HttpResponse::error(
            401,
            "missing_signature",
            "no X-Hub-Signature-256 header: set the webhook's secret in GitHub to the one this bot has",
        )
    })?;
    if !signature_matches(secret, &request.body, signature) {
        return Err(HttpResponse::error(
            401,
            "bad_signature",
            "the X-Hub-Signature-256 does not match the body: the webhook's secret in GitHub differs from this bot's",
        ));
    }
    let header = |name: &str| -> Result<String, HttpResponse> {
        match request.header(name) {
            Some(value) if !value.is_empty() && value.len() <= MAX_ID_BYTES => Ok(value.to_owned()),
            Some(_) => Err(HttpResponse::error(400, "bad_header", &format!("the {name} header is empty or too long"))),
            None => {
                Err(HttpResponse::error(400, "missing_header", &format!("no {name} header: is this a GitHub webhook?")))
            }
        }
    };
    let event = header("x-github-event")?;
    let id = header("x-github-delivery")?;
    let hook_id = match request.header("x-github-hook-id") {
        Some(_) => header("x-github-hook-id")?,
        None => String::new(),
    };
    let payload = payload(request)?;
    if !payload.is_object() {
        return Err(HttpResponse::error(400, "bad_payload", "the payload is not a JSON object"));
    }
    Ok(Delivery { event, id, hook_id, payload })
}

/// The payload: the body as JSON, or the `payload` field of a form-encoded body.
fn payload(request: &HttpRequest) -> Result<Value, HttpResponse> {
    let form = request
        .header("content-type")
        .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    let parsed = if form {
        let Some((_, json)) = url::form_urlencoded::parse(&request.body).find(|(name, _)| name == "payload") else {
            return Err(HttpResponse::error(400, "bad_payload", "a form-encoded delivery without a `payload` field"));
        };
        serde_json::from_str(&json)
    } else {
        serde_json::from_slice(&request.body)
    };
    parsed.map_err(|e| {
        HttpResponse::error(
            400,
            "bad_payload",
            &format!("the payload is not valid JSON: {e} (set the webhook's content type to application/json)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], body: &[u8]) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            path: "/webhook".into(),
            query: None,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.to_vec(),
            peer: "127.0.0.1:1".parse().unwrap(),
            client_common_name: None,
            operator: None,
        }
    }

    fn status(result: Result<Delivery, HttpResponse>) -> (u16, String) {
        let response = result.unwrap_err();
        (response.status, String::from_utf8(response.body).unwrap())
    }

    #[test]
    fn the_signature_is_checked_before_anything_else() {
        let body = br#"{"zen": "Keep it logically awesome."}"#;
        let good = sign(b"s3cret", body);
        // GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!".
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert_eq!(status(read(b"s3cret", &request(&[], body))).0, 401);
        let wrong = sign(b"other", body);
        let (code, text) = status(read(b"s3cret", &request(&[("x-hub-signature-256", &wrong)], body)));
        assert_eq!(code, 401);
        assert!(text.contains("bad_signature"), "{text}");
        assert_eq!(status(read(b"s3cret", &request(&[("x-hub-signature-256", "sha256=zz")], body))).0, 401);
        assert_eq!(status(read(b"s3cret", &request(&[("x-hub-signature-256", &good[..20])], body))).0, 401);
        // Signed, but not naming the event: 400.
        let (code, text) = status(read(b"s3cret", &request(&[("x-hub-signature-256", &good)], body)));
        assert_eq!(code, 400);
        assert!(text.contains("x-github-event"), "{text}");
        let signed = [("x-hub-signature-256", good.as_str()), ("x-github-event", "ping"), ("x-github-delivery", "d1")];
        let delivery = read(b"s3cret", &request(&signed, body)).unwrap();
        assert_eq!((delivery.event.as_str(), delivery.id.as_str(), delivery.hook_id.as_str()), ("ping", "d1", ""));
    }

    #[test]
    fn malformed_payloads_are_a_400_naming_the_problem() {
        let body = b"{\"action\": ";
        let signature = sign(b"k", body);
        let headers =
            [("x-hub-signature-256", signature.as_str()), ("x-github-event", "push"), ("x-github-delivery", "d")];
        let (code, text) = status(read(b"k", &request(&headers, body)));
        assert_eq!(code, 400);
        assert!(text.contains("not valid JSON") && text.contains("line 1"), "{text}");
        let form = b"payload=%7B%22zen%22%3A%22x%22%7D";
        let signature = sign(b"k", form);
        let headers = [
            ("x-hub-signature-256", signature.as_str()),
            ("x-github-event", "ping"),
            ("x-github-delivery", "d"),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        assert_eq!(read(b"k", &request(&headers, form)).unwrap().payload["zen"], "x");
    }
}

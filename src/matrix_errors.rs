//! What a homeserver's error answer means for the caller: wait as long as it asked, give up, or try again.

use std::time::{Duration, SystemTime};

use matrix_sdk::ruma::api::error::ErrorKind;

/// How long the homeserver asked us to wait (`M_LIMIT_EXCEEDED`, `retry_after_ms` / `Retry-After`).
pub fn retry_after(error: &matrix_sdk::Error) -> Option<Duration> {
    match error.client_api_error_kind() {
        Some(ErrorKind::LimitExceeded(data)) => match data.retry_after.as_ref() {
            Some(matrix_sdk::ruma::api::error::RetryAfter::Delay(delay)) => Some(*delay),
            Some(matrix_sdk::ruma::api::error::RetryAfter::DateTime(at)) => {
                Some(at.duration_since(SystemTime::now()).unwrap_or_default())
            }
            // Rate limited without saying for how long: wait a little.
            None => Some(Duration::from_secs(1)),
        },
        _ => None,
    }
}

/// A 4xx other than rate limiting: the same request will fail again.
pub fn is_permanent(error: &matrix_sdk::Error) -> bool {
    error.as_client_api_error().is_some_and(|e| e.status_code.is_client_error() && e.status_code.as_u16() != 429)
}

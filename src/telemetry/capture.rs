//! A tracing layer feeding [`Telemetry`]: each event becomes a line in its instance's ring, ERROR events are
//! counted, and ERROR events from maubot itself become admin-room alerts.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

use super::fields::EventFields;
use super::{Alert, HOST, Severity, Telemetry};

pub struct CaptureLayer {
    telemetry: Arc<Telemetry>,
}

impl CaptureLayer {
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        CaptureLayer { telemetry }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for CaptureLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let fields = EventFields::of(event);
        let metadata = event.metadata();
        let instance = fields.fields.get("instance").cloned();
        let key = instance.as_deref().unwrap_or(HOST);

        let mut line = format!("{} {:>5} {}", timestamp(), metadata.level(), fields.message);
        for (name, value) in &fields.fields {
            if name != "instance" {
                let _ = write!(line, " {name}={value}");
            }
        }
        self.telemetry.push_line(key, crate::telemetry::scrub::for_log(&line));

        if *metadata.level() == Level::ERROR && !not_an_error(metadata.target(), &fields.message) {
            self.telemetry.record_error(instance.as_deref());
            if metadata.target().starts_with("maubot") {
                let severity = match fields.fields.get("severity").map(String::as_str) {
                    Some("CRITICAL") => Severity::Critical,
                    _ => Severity::Error,
                };
                let mut context = fields.fields.clone();
                context.remove("instance");
                context.remove("severity");
                self.telemetry.alert(Alert {
                    at: SystemTime::now(),
                    trace: self.telemetry.recent_lines(key, 10),
                    instance,
                    severity,
                    message: fields.message,
                    context,
                });
            }
        }
    }
}

/// RFC 3339 UTC with milliseconds, without a date-time dependency.
pub fn timestamp() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// ERROR events of matrix-sdk that say nothing is wrong with the bot: kept in the log, not counted (health,
/// metrics). matrix-sdk 0.18 cannot compute a brand-new room-version-12 room's power levels for its push rules
/// until the room's state is stored (a bot evaluates no push rules), and says so at ERROR for each such room.
const NOT_ERRORS: &[(&str, &str)] = &[("matrix_sdk::room", "Could not compute power levels for push conditions")];

fn not_an_error(target: &str, message: &str) -> bool {
    NOT_ERRORS.iter().any(|(t, m)| target == *t && message.starts_with(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_305_600)), "2026-11-22T00:00:00.000Z");
    }
}

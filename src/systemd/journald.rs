//! Log events to the journal over its native protocol (a datagram of `FIELD=value` lines to
//! `/run/systemd/journal/socket`), with maubot's fields (`INSTANCE=`, `ROOM_ID=`, `EVENT_ID=`...) as journal
//! fields.
//!
//! Written here rather than taken from `tracing-journald` because every value must pass through the scrubber
//! before it leaves the process, and that crate offers no hook between formatting and sending. Every value is
//! scrubbed of known secrets and token shapes, its control characters are escaped (so a value never spans lines)
//! and it is cut at 8 KiB, which also keeps each datagram far below the socket's limit.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

use crate::telemetry::fields::EventFields;
use crate::telemetry::scrub::for_log;

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

pub struct JournaldLayer {
    socket: UnixDatagram,
}

impl JournaldLayer {
    /// A layer sending to the journal, if its socket can be reached.
    pub fn connect() -> std::io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(Path::new(JOURNAL_SOCKET))?;
        Ok(JournaldLayer { socket })
    }
}

/// syslog priorities, as journald shows them.
fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

/// A field name as journald accepts it: upper case letters, digits and `_`, not starting with `_` or a digit.
fn field_name(name: &str) -> Option<String> {
    let upper: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    let upper = upper.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit()).to_owned();
    (!upper.is_empty() && upper.len() <= 64).then_some(upper)
}

/// The datagram for one event.
pub fn datagram(
    event_level: &Level,
    target: &str,
    file: Option<&str>,
    line: Option<u32>,
    fields: &EventFields,
) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    let mut push = |name: &str, value: &str| {
        out.push_str(name);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    };
    push("PRIORITY", priority(event_level));
    push("SYSLOG_IDENTIFIER", "maubot");
    push("TARGET", &for_log(target));
    if let Some(file) = file {
        push("CODE_FILE", &for_log(file));
    }
    if let Some(line) = line {
        push("CODE_LINE", &line.to_string());
    }
    push("MESSAGE", &for_log(&fields.message));
    for (name, value) in &fields.fields {
        if let Some(name) =
            field_name(name).filter(|n| !matches!(n.as_str(), "MESSAGE" | "PRIORITY" | "SYSLOG_IDENTIFIER"))
        {
            push(&name, &for_log(value));
        }
    }
    out.into_bytes()
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for JournaldLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        let fields = EventFields::of(event);
        let payload = datagram(metadata.level(), metadata.target(), metadata.file(), metadata.line(), &fields);
        if let Err(e) = self.socket.send(&payload) {
            // The journal is gone (or full): say so on stderr, which systemd also collects.
            eprintln!("maubot: cannot log to the journal ({e}): {}", for_log(&fields.message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_have_one_line_per_field_and_escaped_values() {
        let mut fields = EventFields { message: "login failed\nINFO forged".into(), ..Default::default() };
        fields.fields.insert("instance".into(), "ping".into());
        fields.fields.insert("user".into(), "mallory\u{1b}[31m".into());
        fields.fields.insert("_bad".into(), "x".into());
        let text = String::from_utf8(datagram(&Level::WARN, "maubot::api", Some("src/api/auth.rs"), Some(7), &fields))
            .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.contains(&"PRIORITY=4") && lines.contains(&"INSTANCE=ping") && lines.contains(&"BAD=x"),
            "{text}"
        );
        assert!(lines.contains(&"MESSAGE=login failed\\nINFO forged"), "{text}");
        assert!(lines.contains(&"USER=mallory\\x1b[31m"), "{text}");
        assert!(lines.iter().all(|l| l.contains('=')), "{text}");
        assert_eq!(field_name("room_id").as_deref(), Some("ROOM_ID"));
        assert_eq!(field_name("__"), None);
    }
}

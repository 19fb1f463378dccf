//! Logging with tracing: to journald (with structured fields such as `INSTANCE=`, `ROOM_ID=`, `EVENT_ID=`) when
//! stderr is connected to the journal, as text on stderr otherwise. The level comes from `RUST_LOG` when set,
//! else from `logging.level`. Filters are levels and `target=level` directives (`Targets`: no regular
//! expressions, span or field filters, which keeps their code out of the binary). Whatever the destination, every line is scrubbed of known secrets and token
//! shapes, and has its control characters escaped (`journald.rs`, [`StderrLines`]).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::journald::JournaldLayer;
use crate::telemetry::Telemetry;
use crate::telemetry::capture::CaptureLayer;
use crate::telemetry::scrub::{MAX_LOG_FIELD_BYTES, escape_controls, scrubbed};

/// Whether systemd connected our stderr to the journal (`$JOURNAL_STREAM` names stderr's device and inode).
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// matrix-sdk logs every failed HTTP request at ERROR, including the 404s it expects (absent account data, no
/// key backup yet). Real failures reach maubot's own logs through the errors they return, so its own request log
/// is off and the rest of it is kept to warnings, unless the configured filter says something about matrix_sdk.
const QUIET_SDK: &str = "matrix_sdk=warn,matrix_sdk_base=warn,matrix_sdk_crypto=warn,matrix_sdk::http_client=off";

/// The filter directives for `level` (the config's, or `RUST_LOG`'s).
pub fn directives(level: &str) -> String {
    if level.contains("matrix_sdk") { level.to_owned() } else { format!("{level},{QUIET_SDK}") }
}

/// Installs the global subscriber. `level` is the config's filter (already validated). Every event also feeds
/// `telemetry` (recent lines per instance, error counts, admin-room alerts).
pub fn init(level: &str, telemetry: Arc<Telemetry>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|env| crate::config::validate::check_log_filter(env).is_ok())
        .and_then(|env| directives(&env).parse::<Targets>().ok())
        .unwrap_or_else(|| {
            directives(level).parse::<Targets>().unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
        });
    if stderr_is_journal()
        && let Ok(journald) = JournaldLayer::connect()
    {
        let _ =
            tracing_subscriber::registry().with(filter).with(journald).with(CaptureLayer::new(telemetry)).try_init();
        return;
    }
    let text = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(StderrLines);
    let _ = tracing_subscriber::registry().with(filter).with(text).with(CaptureLayer::new(telemetry)).try_init();
}

/// Hands the text formatter a buffer per event; the finished line is scrubbed, escaped and cut before it is
/// written to stderr in one piece.
pub struct StderrLines;

pub struct Line(Vec<u8>);

impl<'a> MakeWriter<'a> for StderrLines {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let mut line = escape_controls(&scrubbed(text), 2 * MAX_LOG_FIELD_BYTES);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

//! Admin-room notifications: ERROR and CRITICAL events, sanitised, deduplicated and rate limited, sent to a
//! configured room by a configured bot. Lower levels stay in the journal.

pub mod backlog;
pub mod digest;
pub mod sender;

pub use digest::{Digest, Outgoing};

//! The host: the supervisor that keeps one task per configured bot (`supervisor.rs`, `slot.rs`), one run of an
//! instance from its store to its sync loop (`instance_task.rs`), and what observers see of it (`view.rs`,
//! `health.rs`). The management API and the systemd link observe it; `daemon` wires them together.

pub mod health;
pub mod instance_task;
pub mod slot;
pub mod supervisor;
pub mod view;

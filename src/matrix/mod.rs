//! Talking to the homeserver: clients and stores, registration, E2EE bootstrap.

pub mod client;
pub mod e2ee;
pub mod register;
pub mod store_versions;

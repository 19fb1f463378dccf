//! Integration tests: the real `maubot` binary against a real Synapse, real clients, real systemd protocol.
#![recursion_limit = "256"]
//! One test binary so that all tests share one homeserver.

mod harness;

mod backup;
mod catch_up;
mod check_config;
mod config_layers;
mod exec;
mod github;
mod guard;
mod host_api;
mod hostile_api;
mod hostile_config;
mod lifecycle;
mod link_order;
mod media;
mod notify;
mod plugin_events;
mod plugin_http;
mod previous_release;
mod recovery;
mod rollback;
mod room_actions;
mod sending;
mod setup_run;
mod space;

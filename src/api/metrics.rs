//! Prometheus text exposition of the host's numbers, per instance.

use std::fmt::Write as _;

use crate::host::health::{Health, HealthStatus};
use crate::host::view::{InstanceView, State};
use crate::telemetry::Telemetry;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Reads one counter of an instance.
type CounterOf = fn(&InstanceView) -> u64;

pub fn render(views: &[InstanceView], health: &Health, telemetry: &Telemetry) -> String {
    let mut out = String::new();
    family(&mut out, "maubot_up", "gauge", "1 while the host is running.");
    out.push_str("maubot_up 1\n");
    family(&mut out, "maubot_health", "gauge", "Host health: 1 for the current status.");
    for (status, name) in
        [(HealthStatus::Healthy, "healthy"), (HealthStatus::Degraded, "degraded"), (HealthStatus::Failed, "failed")]
    {
        let _ = writeln!(out, "maubot_health{{status=\"{name}\"}} {}", u8::from(health.status == status));
    }
    family(&mut out, "maubot_instance_state", "gauge", "Instance state machine: 1 for the current state.");
    for view in views {
        for state in State::ALL {
            let _ = writeln!(
                out,
                "maubot_instance_state{{instance=\"{}\",state=\"{}\"}} {}",
                view.id,
                state.as_str(),
                u8::from(view.state == state)
            );
        }
    }
    let counters: [(&str, &str, CounterOf); 5] = [
        ("maubot_events_handled_total", "Timeline events seen by the instance.", |v| v.counters.events_handled),
        ("maubot_commands_answered_total", "Commands the plugin answered.", |v| v.counters.commands_answered),
        ("maubot_decryption_failures_total", "Events the bot could not decrypt.", |v| v.counters.decryption_failures),
        ("maubot_syncs_total", "Completed syncs.", |v| v.counters.syncs),
        ("maubot_restarts_total", "Restarts after failures.", |v| v.restarts),
    ];
    for (name, help, value) in counters {
        family(&mut out, name, "counter", help);
        for view in views {
            let _ = writeln!(out, "{name}{{instance=\"{}\"}} {}", view.id, value(view));
        }
    }
    family(&mut out, "maubot_errors_total", "counter", "ERROR events logged for the instance.");
    for view in views {
        let _ = writeln!(out, "maubot_errors_total{{instance=\"{}\"}} {}", view.id, telemetry.error_count(&view.id));
    }
    family(&mut out, "maubot_sync_age_seconds", "gauge", "Seconds since the instance's last completed sync.");
    for view in views {
        if let Some(age) = view.last_sync_age_secs {
            let _ = writeln!(out, "maubot_sync_age_seconds{{instance=\"{}\"}} {age}", view.id);
        }
    }
    let memory = crate::memory::usage();
    for (name, help, value) in [
        ("maubot_resident_memory_bytes", "Resident set size of the process.", memory.resident_bytes),
        (
            "maubot_resident_anon_memory_bytes",
            "Anonymous part of the resident set (heap, stacks).",
            memory.resident_anon_bytes,
        ),
        ("maubot_heap_in_use_bytes", "Heap bytes in use (glibc malloc).", memory.heap_in_use_bytes),
        ("maubot_heap_free_bytes", "Heap bytes malloc holds free.", memory.heap_free_bytes),
        (
            "maubot_sqlite_memory_bytes",
            "Memory held by SQLite (all stores and the host database).",
            memory.sqlite_bytes,
        ),
    ] {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

//! maubot: a NixOS-first host for Matrix bots.
//!
//! Data flows config (layers + credentials) → state (setup creates, run opens) → host (supervises instances) →
//! instance (one Matrix client + one plugin) → homeserver; systemd observes the host.

pub mod alerts;
pub mod api;
pub mod backup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod durable;
pub mod host;
pub mod instance;
pub mod matrix;
pub mod matrix_errors;
pub mod memory;
pub mod migration_backup;
pub mod open_files;
pub mod plugin;
pub mod setup;
pub mod state;
pub mod systemd;
pub mod telemetry;

/// Exit code for configuration and state errors (sysexits' EX_CONFIG). The NixOS unit sets
/// `RestartPreventExitStatus=78` so that systemd does not restart-loop on them.
pub const EXIT_CONFIG: u8 = 78;

/// Resolves once a stop signal (a `watch` flag) turns true, or its sender is gone.
pub async fn stopping(flag: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across an await of the caller.
    let _ = flag.wait_for(|stop| *stop).await;
}

/// An error and its causes, for people: "cannot create the client: builder error: no CA certificates found".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Each top-level module (a "room": `config`, `state`, `host` ...) and the rooms its files name as
    /// `crate::<room>`.
    fn room_imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let is_room = |name: &str| src.join(name).is_dir() || src.join(format!("{name}.rs")).is_file();
        let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut files = vec![src.clone()];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let room = relative.iter().next().unwrap().to_str().unwrap().trim_end_matches(".rs").to_owned();
            if room == "lib" || room == "main" || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let used = imports.entry(room.clone()).or_default();
            for (at, _) in text.match_indices("crate::") {
                let name: String = text[at + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !name.is_empty() && name != room && is_room(&name) {
                    used.insert(name);
                }
            }
        }
        imports
    }

    /// The house rule: data flows one way (config → state → host → instance → plugin ...), so no room imports
    /// one that (through others) imports it.
    #[test]
    fn no_import_circles_between_rooms() {
        let imports = room_imports();
        assert!(imports.contains_key("plugin") && imports["config"].contains("plugin"), "{imports:?}");
        fn visit(
            room: &str,
            imports: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) {
            if let Some(at) = path.iter().position(|r| r == room) {
                panic!("import circle: {} → {room}", path[at..].join(" → "));
            }
            if done.contains(room) {
                return;
            }
            path.push(room.to_owned());
            for next in imports.get(room).into_iter().flatten() {
                visit(next, imports, path, done);
            }
            path.pop();
            done.insert(room.to_owned());
        }
        let mut done = BTreeSet::new();
        for room in imports.keys() {
            visit(room, &imports, &mut Vec::new(), &mut done);
        }
    }
}

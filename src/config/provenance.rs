//! Renders the merged config as YAML with, on every value, the layer it came from. Secrets appear as their
//! reference (`{credential: NAME}`), never as their value.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use serde_json::Value as Json;

use super::layers::{DEFAULTS_LAYER, ENV_LAYER};
use super::model::Config;

/// The YAML text `check-config` prints.
pub fn render(config: &Config, figment: &Figment) -> String {
    let json = serde_json::to_value(config).expect("config serializes");
    let merged = figment.data().ok().and_then(|mut data| data.remove(&figment::Profile::Default));
    let mut secret_paths = BTreeSet::new();
    for (key, _) in config.clone().secrets_mut() {
        secret_paths.insert(key);
    }
    let renderer = Renderer { figment, merged: merged.unwrap_or_default(), secret_paths };
    let mut out = String::new();
    out.push_str("# maubot configuration after merging all layers; `# <- …` says where each value came from.\n");
    out.push_str("# Secrets are shown as their source, never their value.\n");
    if let Json::Object(map) = &json {
        for (key, value) in map {
            renderer.entry(&mut out, 0, &[key.as_str()], value);
        }
    }
    out
}

struct Renderer<'a> {
    figment: &'a Figment,
    merged: Dict,
    secret_paths: BTreeSet<String>,
}

impl Renderer<'_> {
    fn entry(&self, out: &mut String, indent: usize, path: &[&str], value: &Json) {
        let key = yaml_key(path.last().expect("non-empty path"));
        let pad = "  ".repeat(indent);
        let dotted = path.join(".");
        if self.secret_paths.contains(&dotted) {
            let _ = writeln!(out, "{pad}{key}: {}  # <- {}; value redacted", flow(value), self.origin(path));
            return;
        }
        match value {
            Json::Object(map) if !map.is_empty() => {
                let _ = writeln!(out, "{pad}{key}:");
                for (k, v) in map {
                    let mut child = path.to_vec();
                    child.push(k);
                    self.entry(out, indent + 1, &child, v);
                }
            }
            Json::Array(items) if !items.is_empty() && items.iter().all(is_scalar) => {
                let _ = writeln!(out, "{pad}{key}:  # <- {}", self.origin(path));
                for item in items {
                    let _ = writeln!(out, "{pad}  - {}", flow(item));
                }
            }
            other => {
                let _ = writeln!(out, "{pad}{key}: {}  # <- {}", flow(other), self.origin(path));
            }
        }
    }

    /// The layer that set `path`, or the built-in default when no layer did.
    fn origin(&self, path: &[&str]) -> String {
        let mut current: Option<&Value> = None;
        let mut dict = Some(&self.merged);
        for segment in path {
            current = dict.and_then(|d| d.get(*segment));
            dict = current.and_then(Value::as_dict);
        }
        let Some(metadata) = current.and_then(|v| self.figment.get_metadata(v.tag())) else {
            return DEFAULTS_LAYER.to_owned();
        };
        match &metadata.source {
            Some(figment::Source::File(file)) => format!("{} {}", metadata.name, file.display()),
            _ if metadata.name == ENV_LAYER => {
                format!("{} {}", metadata.name, metadata.interpolate(&figment::Profile::Default, path))
            }
            _ => metadata.name.to_string(),
        }
    }
}

fn is_scalar(value: &Json) -> bool {
    !matches!(value, Json::Object(_) | Json::Array(_))
}

/// A value on one line: plain scalars where unambiguous, JSON (which is YAML flow style) otherwise.
fn flow(value: &Json) -> String {
    match value {
        Json::String(s) if plain_safe(s) => s.clone(),
        Json::Object(map) if map.is_empty() => "{}".to_owned(),
        Json::Array(items) if items.is_empty() => "[]".to_owned(),
        Json::Object(map) => {
            let parts: Vec<String> = map.iter().map(|(k, v)| format!("{}: {}", yaml_key(k), flow(v))).collect();
            format!("{{{}}}", parts.join(", "))
        }
        Json::Array(items) => format!("[{}]", items.iter().map(flow).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

fn yaml_key(key: &str) -> String {
    if plain_safe(key) { key.to_owned() } else { Json::String(key.to_owned()).to_string() }
}

/// Whether a string can be written without quotes and read back as the same string.
fn plain_safe(s: &str) -> bool {
    let reserved = ["true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"];
    !s.is_empty()
        && !reserved.contains(&s.to_ascii_lowercase().as_str())
        && s.parse::<f64>().is_err()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_./@:+-$!<>".contains(c))
        && !s.starts_with(['-', ':', '!', '@', '$'])
        && !s.ends_with(':')
        && !s.contains(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_only_when_unambiguous() {
        assert_eq!(flow(&Json::String("info".into())), "info");
        assert_eq!(flow(&Json::String("/var/lib/maubot".into())), "/var/lib/maubot");
        assert_eq!(flow(&Json::String("@bot:example.org".into())), "\"@bot:example.org\"");
        assert_eq!(flow(&Json::String("true".into())), "\"true\"");
        assert_eq!(flow(&Json::String("8008".into())), "\"8008\"");
        assert_eq!(flow(&Json::String("http://127.0.0.1:8008".into())), "http://127.0.0.1:8008");
        assert_eq!(flow(&serde_json::json!({"credential": "pw"})), "{credential: pw}");
    }
}

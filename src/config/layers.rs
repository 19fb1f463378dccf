//! The configuration layers, later wins: built-in defaults < config files (`--config`) < override files
//! (`--override`, what the NixOS module writes) < environment (`MAUBOT__SECTION__KEY`). Secrets are resolved from
//! `$CREDENTIALS_DIRECTORY` after the layers are merged (see `secret.rs`).

use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::ConfigError;
use super::model::Config;

/// Prefix of configuration environment variables; `__` separates key segments.
pub const ENV_PREFIX: &str = "MAUBOT__";

/// The names of the layers, as `check-config` prints them.
pub const DEFAULTS_LAYER: &str = "built-in default";
pub const CONFIG_FILE_LAYER: &str = "config file";
pub const OVERRIDE_FILE_LAYER: &str = "override file";
pub const ENV_LAYER: &str = "environment variable";

/// What `load` reads: file layers in order, and the process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_files: Vec<PathBuf>,
    pub override_files: Vec<PathBuf>,
    /// `$STATE_DIRECTORY`, which sets the default `state_dir`.
    pub state_directory: Option<String>,
    /// `$CREDENTIALS_DIRECTORY`.
    pub credentials_directory: Option<PathBuf>,
    /// Environment variables considered for the env layer (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
}

impl Sources {
    /// Sources from the process environment plus the given files.
    pub fn from_process(config_files: Vec<PathBuf>, override_files: Vec<PathBuf>) -> Self {
        Sources {
            config_files,
            override_files,
            state_directory: std::env::var("STATE_DIRECTORY").ok(),
            credentials_directory: std::env::var_os(super::secret::CREDENTIALS_DIRECTORY).map(PathBuf::from),
            env: std::env::vars().collect(),
        }
    }
}

/// Builds the merged figment (without extracting it).
pub fn figment(sources: &Sources) -> Result<Figment, ConfigError> {
    let defaults = Value::serialize(Config::defaults(sources.state_directory.as_deref()))
        .ok()
        .and_then(Value::into_dict)
        .expect("built-in defaults are a mapping");
    let mut figment = Figment::from(Named { name: DEFAULTS_LAYER, data: defaults });
    for path in &sources.config_files {
        figment = figment.merge(FileLayer::read(path, CONFIG_FILE_LAYER)?);
    }
    for path in &sources.override_files {
        figment = figment.merge(FileLayer::read(path, OVERRIDE_FILE_LAYER)?);
    }
    let env = EnvLayer::from_vars(&sources.env);
    Ok(figment.merge(env))
}

/// A provider with fixed data and a given name.
struct Named {
    name: &'static str,
    data: Dict,
}

impl Provider for Named {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// A YAML (or JSON, which is YAML) file read eagerly so that a missing or malformed file is reported by path.
struct FileLayer {
    kind: &'static str,
    path: PathBuf,
    data: Dict,
}

impl FileLayer {
    fn read(path: &Path, kind: &'static str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            kind,
            path: path.to_owned(),
            source,
        })?;
        let value: Value = if text.trim().is_empty() {
            Value::from(Dict::new())
        } else {
            serde_yaml::from_str(&text).map_err(|source| ConfigError::ParseFile {
                kind,
                path: path.to_owned(),
                message: source.to_string(),
            })?
        };
        let data = value.into_dict().ok_or_else(|| ConfigError::ParseFile {
            kind,
            path: path.to_owned(),
            message: "the top level must be a mapping of keys (e.g. `instances:`)".to_owned(),
        })?;
        Ok(FileLayer { kind, path: path.to_owned(), data })
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.kind).source(self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// `MAUBOT__SECTION__KEY=value` variables as a layer. Values are parsed like figment's `Env` does (`true`, `42`,
/// `[a, b]` become typed values); key segments are lower-cased.
struct EnvLayer {
    data: Dict,
}

impl EnvLayer {
    fn from_vars(vars: &[(String, String)]) -> Self {
        let mut data = Dict::new();
        for (name, raw) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if segments.iter().any(String::is_empty) {
                continue;
            }
            let value: Value = raw.parse().unwrap_or_else(|never: std::convert::Infallible| match never {});
            insert_nested(&mut data, &segments, value);
        }
        EnvLayer { data }
    }
}

fn insert_nested(dict: &mut Dict, segments: &[String], value: Value) {
    let (first, rest) = segments.split_first().expect("non-empty key");
    if rest.is_empty() {
        dict.insert(first.clone(), value);
        return;
    }
    let entry = dict.entry(first.clone()).or_insert_with(|| Value::from(Dict::new()));
    if entry.as_dict().is_none() {
        *entry = Value::from(Dict::new());
    }
    if let Value::Dict(_, inner) = entry {
        insert_nested(inner, rest, value);
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_LAYER)
            .interpolater(|_profile, keys: &[&str]| format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

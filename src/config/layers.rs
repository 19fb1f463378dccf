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
    let env = EnvLayer::from_vars(&sources.env)?;
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
        let bytes = super::files::read_bounded(path, super::files::MAX_CONFIG_BYTES)
            .map_err(|source| ConfigError::ReadFile { kind, source })?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::ParseFile {
            kind,
            path: path.to_owned(),
            message: "it is not UTF-8 text".to_owned(),
        })?;
        let value: Value = if text.trim().is_empty() {
            Value::from(Dict::new())
        } else {
            parse_yaml(&text).map_err(|message| ConfigError::ParseFile { kind, path: path.to_owned(), message })?
        };
        let data = value.into_dict().ok_or_else(|| ConfigError::ParseFile {
            kind,
            path: path.to_owned(),
            message: "the top level must be a mapping of keys (e.g. `instances:`)".to_owned(),
        })?;
        Ok(FileLayer { kind, path: path.to_owned(), data })
    }
}

/// Limits on what one config file may expand to: its nesting, and the bytes of all its scalars together
/// (aliases count each time they are used, so an alias bomb stops at the limit instead of exhausting memory).
pub const MAX_NESTING: usize = 64;
pub const MAX_SCALAR_BYTES: usize = 4 * 1024 * 1024;

/// YAML (JSON is YAML) into a figment value, with the limits above, duplicate keys refused, `0071234567` kept
/// as the string it is written as, and only `true`/`false` as booleans.
fn parse_yaml(text: &str) -> Result<Value, String> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_NESTING;
    budget.max_total_scalar_bytes = MAX_SCALAR_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::Error;
    options.leading_zero_numbers_as_strings = true;
    options.strict_booleans = true;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options::<Value>(text, options).map_err(|e| describe_yaml_error(text, &e))
}

fn describe_yaml_error(text: &str, error: &serde_saphyr::Error) -> String {
    let message = error.to_string();
    if let serde_saphyr::Error::DuplicateMappingKey { key: Some(key), location } = error
        && let Some(first) = first_occurrence(text, key, location.line(), location.column())
    {
        return format!(
            "line {}: the key `{key}` appears twice in the same mapping (first on line {first}); keep one",
            location.line()
        );
    }
    if message.contains("budget breached") {
        return format!(
            "{message}: the file expands to more than {MAX_SCALAR_BYTES} bytes of values (aliases count each time they are used)"
        );
    }
    if message.contains("recursion limit") {
        return format!("{message}: values may be nested at most {MAX_NESTING} levels deep");
    }
    message
}

/// The line (1-based) where `key` first appears at the same column as its duplicate on line `line`, within the
/// same block mapping.
fn first_occurrence(text: &str, key: &str, line: u64, column: u64) -> Option<u64> {
    let indent = column.saturating_sub(1) as usize;
    let lines: Vec<&str> = text.lines().collect();
    for number in (1..line as usize).rev() {
        let candidate = lines.get(number - 1)?;
        let leading = candidate.len() - candidate.trim_start().len();
        if candidate.trim().is_empty() || candidate.trim_start().starts_with('#') {
            continue;
        }
        if leading < indent {
            return None;
        }
        let rest = candidate.trim_start().trim_start_matches("- ");
        let unquoted = rest.trim_start_matches(['"', '\'']);
        if leading == indent
            && unquoted.starts_with(key)
            && unquoted[key.len()..].trim_start_matches(['"', '\'']).starts_with(':')
        {
            return Some(number as u64);
        }
    }
    None
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
/// `[a, b]` become typed values), except below secret keys, where the value is taken verbatim
/// (`MAUBOT__INSTANCES__BOT__PASSWORD=0071234567` stays `0071234567`); key segments are lower-cased.
struct EnvLayer {
    data: Dict,
}

/// Key segments below which environment values are secrets (or secret references) and stay strings.
const SECRET_SEGMENTS: &[&str] =
    &["password", "access_token", "registration_token", "registration_shared_secret", "secret_key", "admins"];

impl EnvLayer {
    fn from_vars(vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut data = Dict::new();
        for (name, raw) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let valid =
                |s: &String| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !segments.iter().all(valid) {
                return Err(ConfigError::Env {
                    name: name.clone(),
                    message: format!(
                        "the name must be {ENV_PREFIX}SECTION__KEY with non-empty parts of letters, digits, `_` and `-` (e.g. MAUBOT__LOGGING__LEVEL); unset it or fix its name"
                    ),
                });
            }
            let value: Value = if segments.iter().any(|s| SECRET_SEGMENTS.contains(&s.as_str())) {
                Value::from(raw.clone())
            } else {
                raw.parse().unwrap_or_else(|never: std::convert::Infallible| match never {})
            };
            insert_nested(&mut data, &segments, value);
        }
        Ok(EnvLayer { data })
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

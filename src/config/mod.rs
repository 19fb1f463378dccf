//! Configuration: layered with figment, secrets from systemd credentials, validated with messages that name the key.

pub mod files;
pub mod ids;
pub mod layers;
pub mod model;
pub mod provenance;
pub mod secret;
pub mod validate;

use std::fmt;
use std::path::PathBuf;

use figment::Figment;

pub use layers::Sources;
pub use model::{Config, HomeserverConfig, InstanceConfig, NotificationLevel};
pub use secret::{Secret, SecretSource};
pub use validate::Problem;

/// A loaded, resolved and validated config, with the merged layers kept for provenance.
pub struct Loaded {
    pub config: Config,
    pub figment: Figment,
    pub warnings: Vec<Problem>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the {kind}: {source}")]
    ReadFile { kind: &'static str, source: files::FileError },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("{kind} {path} is not valid YAML/JSON: {message}", path = .path.display())]
    ParseFile { kind: &'static str, path: PathBuf, message: String },
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "the configuration has {n} problem{}:", if n == 1 { "" } else { "s" })?;
        for problem in self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// Which mode the config is loaded for: it decides which secrets are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `run`: only the secrets a running host uses. Bot passwords, adopted access tokens and registration
    /// secrets are needed by `setup` alone, so the service never reads (or holds) them.
    Run,
    Setup,
    /// `check-config`: every secret, as setup would read them.
    Check,
    /// `backup` and `restore`: no secret is needed (the state holds what it holds); those at hand are read for
    /// scrubbing only.
    Maintenance,
}

impl Purpose {
    /// Whether a secret must be readable for this purpose.
    fn reads(self, key: &str) -> bool {
        match self {
            Purpose::Run => !model::is_setup_only_secret(key),
            Purpose::Setup | Purpose::Check => true,
            Purpose::Maintenance => false,
        }
    }
}

/// Merges the layers, resolves the secrets `purpose` needs, and validates.
pub fn load(sources: &Sources, purpose: Purpose) -> Result<Loaded, ConfigError> {
    let figment = layers::figment(sources)?;
    let mut config: Config = figment.extract().map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
    config.find_plugin_secrets();

    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for (key, secret) in config.secrets_mut() {
        if !purpose.reads(&key) {
            // Not needed to run; read only where it happens to be at hand, so that it is scrubbed from anything
            // the homeserver might echo. The NixOS service does not receive these credentials at all.
            let _ = secret.resolve(sources.credentials_directory.as_deref());
            continue;
        }
        if secret.is_inline() {
            warnings.push(Problem {
                key: key.clone(),
                message: "secret given inline; it ends up in config files (and, on NixOS, in the world-readable \
                          Nix store). Use `{ credential: NAME }` with systemd's LoadCredential=, or `{ file: PATH }`"
                    .into(),
            });
        }
        if let Err(e) = secret.resolve(sources.credentials_directory.as_deref()) {
            problems.push(Problem { key, message: e.to_string() });
        }
    }
    if purpose == Purpose::Run {
        // A plugin secret that cannot be read stops its own bot (which shows the problem), not the host.
        problems.retain(|problem| match model::instance_of_plugin_secret(&problem.key) {
            Some(id) => {
                if let Some(instance) = config.instances.get_mut(id) {
                    instance.unusable_secret.get_or_insert_with(|| format!("{}: {}", problem.key, problem.message));
                }
                false
            }
            None => true,
        });
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    let findings = validate::validate(&config);
    if !findings.errors.is_empty() {
        return Err(ConfigError::Invalid(findings.errors));
    }
    warnings.extend(findings.warnings);
    Ok(Loaded { config, figment, warnings })
}

/// Turns figment's deserialization errors into problems that name the key, the layer that set it and the fix.
fn describe_figment_error(error: figment::Error) -> Vec<Problem> {
    use figment::error::Kind;
    error
        .into_iter()
        .map(|e| {
            let mut key = e.path.join(".");
            let origin = e.metadata.as_ref().map(|m| {
                let source = match &m.source {
                    Some(figment::Source::File(path)) => format!(" {}", path.display()),
                    Some(figment::Source::Custom(s)) => format!(" {s}"),
                    _ if m.name == layers::ENV_LAYER => {
                        let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
                        format!(" {}", m.interpolate(&figment::Profile::Default, &path))
                    }
                    _ => String::new(),
                };
                format!(" (set by {}{source})", m.name)
            });
            let origin = origin.unwrap_or_default();
            let message = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    let expected = if expected.is_empty() {
                        "no keys are allowed here".to_owned()
                    } else {
                        format!("allowed keys here: {}", expected.join(", "))
                    };
                    format!("unknown key `{field}`{origin}; remove it or fix its spelling ({expected})")
                }
                Kind::MissingField(field) => {
                    key = if key.is_empty() { field.to_string() } else { format!("{key}.{field}") };
                    format!("required key `{field}` is missing; add it")
                }
                Kind::InvalidType(actual, expected) => {
                    format!("found {actual}{origin}, but expected {expected}")
                }
                Kind::InvalidValue(actual, expected) => {
                    format!("invalid value {actual}{origin}, expected {expected}")
                }
                Kind::UnknownVariant(found, expected) => {
                    format!("`{found}`{origin} is not one of: {}", expected.join(", "))
                }
                other => format!("{other}{origin}"),
            };
            Problem { key: if key.is_empty() { "(top level)".into() } else { key }, message }
        })
        .collect()
}

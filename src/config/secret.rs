//! Secret values in the configuration.
//!
//! A secret is written as `{ credential: NAME }` (read from `$CREDENTIALS_DIRECTORY/NAME`, the way systemd's
//! `LoadCredential=` delivers it), `{ file: PATH }`, or inline as a plain string (accepted with a warning, since an
//! inline secret ends up in config files and, on NixOS, in the world-readable Nix store).
//!
//! `Secret`'s `Debug`, `Display` and `Serialize` never show the value: `Serialize` writes the reference
//! (`{credential: NAME}`), so `check-config` prints where a secret comes from, never what it is.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The text shown wherever a secret value would otherwise appear.
pub const REDACTED: &str = "<redacted>";

/// The environment variable systemd sets to the directory holding a unit's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `{ credential: NAME }`: the file `NAME` in `$CREDENTIALS_DIRECTORY`.
    Credential(String),
    /// `{ file: PATH }`: a file read at start-up.
    File(PathBuf),
    /// A plain string in a config layer.
    Inline,
}

/// A secret configuration value. Create with `Deserialize`; read with [`Secret::expose`] once resolved.
#[derive(Clone)]
pub struct Secret {
    source: SecretSource,
    value: Option<Arc<str>>,
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "credential `{name}` is needed but ${CREDENTIALS_DIRECTORY} is not set. Under systemd add \
         `LoadCredential={name}:/path/to/secret` to the unit (the NixOS module does this for its `*File` options); \
         outside systemd set {CREDENTIALS_DIRECTORY} to a directory holding a file named `{name}`"
    )]
    NoCredentialsDirectory { name: String },
    #[error(
        "credential `{name}` not found: {path} does not exist. Add `LoadCredential={name}:/path/to/secret` to the \
         unit, or put a file named `{name}` into ${CREDENTIALS_DIRECTORY} ({dir})",
        path = .path.display(), dir = .dir.display()
    )]
    MissingCredential { name: String, path: PathBuf, dir: PathBuf },
    #[error("credential name `{name}` is invalid: it must be a plain file name (no `/`, not `.` or `..`)")]
    InvalidCredentialName { name: String },
    #[error("credential `{name}`: {source}")]
    UnreadableCredential { name: String, source: super::files::FileError },
    #[error("secret file: {0}")]
    Unreadable(super::files::FileError),
    #[error("secret file {path} is not UTF-8 text", path = .path.display())]
    NotUtf8 { path: PathBuf },
    #[error("secret from {origin} is empty: write the secret into it (one trailing newline is ignored)")]
    Empty { origin: String },
}

impl Secret {
    /// An inline secret (tests and programmatic use).
    pub fn inline(value: impl Into<Arc<str>>) -> Self {
        Secret { source: SecretSource::Inline, value: Some(value.into()) }
    }

    /// A reference to a systemd credential, not yet read.
    pub fn credential(name: impl Into<String>) -> Self {
        Secret { source: SecretSource::Credential(name.into()), value: None }
    }

    /// The secret a plugin config value refers to: an object with exactly one key, `credential` or `file`,
    /// whose value is a string. Anything else is plain data.
    pub fn from_reference(value: &serde_json::Value) -> Option<Self> {
        // The syntax of every secret key (the deserializer below); a plain string is data here, not a secret.
        value.as_object().filter(|m| m.len() == 1)?;
        serde_json::from_value(value.clone()).ok()
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// Whether the value was written inline in a config layer.
    pub fn is_inline(&self) -> bool {
        self.source == SecretSource::Inline
    }

    /// The secret value. Only meaningful after [`Secret::resolve`]; configs handed out by
    /// [`crate::config::load`] are always resolved.
    pub fn expose(&self) -> &str {
        debug_assert!(self.value.is_some(), "secret used before it was resolved");
        self.value.as_deref().unwrap_or_default()
    }

    /// The value, once resolved.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// A short description of where the value comes from, safe to print.
    pub fn origin(&self) -> String {
        match &self.source {
            SecretSource::Credential(name) => format!("credential `{name}`"),
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Inline => "an inline value".to_owned(),
        }
    }

    /// Reads the value from its source. `credentials_dir` is `$CREDENTIALS_DIRECTORY`, if set.
    pub fn resolve(&mut self, credentials_dir: Option<&Path>) -> Result<(), SecretError> {
        let value = match &self.source {
            SecretSource::Inline => self.value.clone().unwrap_or_else(|| Arc::from("")),
            SecretSource::Credential(name) => {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(SecretError::InvalidCredentialName { name: name.clone() });
                }
                let Some(dir) = credentials_dir else {
                    return Err(SecretError::NoCredentialsDirectory { name: name.clone() });
                };
                let path = dir.join(name);
                match read_secret_file(&path) {
                    Ok(text) => Arc::from(text),
                    Err(SecretError::Unreadable(e)) if e.is_missing() => {
                        return Err(SecretError::MissingCredential { name: name.clone(), path, dir: dir.to_owned() });
                    }
                    Err(SecretError::Unreadable(source)) => {
                        return Err(SecretError::UnreadableCredential { name: name.clone(), source });
                    }
                    Err(e) => return Err(e),
                }
            }
            SecretSource::File(path) => Arc::from(read_secret_file(path)?),
        };
        if value.is_empty() {
            return Err(SecretError::Empty { origin: self.origin() });
        }
        self.value = Some(value);
        Ok(())
    }
}

/// Reads a secret file (a regular file of at most 64 KiB), trimming exactly one trailing newline (`\n` or
/// `\r\n`).
fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let bytes = super::files::read_bounded(path, super::files::MAX_SECRET_BYTES).map_err(SecretError::Unreadable)?;
    let mut text = String::from_utf8(bytes).map_err(|_| SecretError::NotUtf8 { path: path.to_owned() })?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    Ok(text)
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.value == other.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED} from {})", self.origin())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.source {
            SecretSource::Credential(name) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("credential", name)?;
                map.end()
            }
            SecretSource::File(path) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("file", path)?;
                map.end()
            }
            SecretSource::Inline => serializer.serialize_str(REDACTED),
        }
    }
}

const EXPECTED: &str = "a secret: `{ credential: NAME }`, `{ file: PATH }`, or an inline string";
const NOT_TEXT: &str = "a secret must be text, but this is a number or boolean: quote it, or better use \
                        `{ credential: NAME }`";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::inline(v))
    }

    // A number or boolean is not taken as a secret: its written form (leading zeros, `1e3`) is already lost.
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(de::Error::custom(NOT_TEXT))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(de::Error::custom(NOT_TEXT))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(de::Error::custom(NOT_TEXT))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(de::Error::custom(NOT_TEXT))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
        let mut found: Option<Secret> = None;
        while let Some(key) = map.next_key::<String>()? {
            if found.is_some() {
                return Err(de::Error::custom(format!(
                    "a secret takes exactly one of `credential` or `file`, found another key `{key}`"
                )));
            }
            found = Some(match key.as_str() {
                "credential" => Secret::credential(map.next_value::<String>()?),
                "file" => Secret { source: SecretSource::File(map.next_value()?), value: None },
                other => return Err(de::Error::unknown_field(other, &["credential", "file"])),
            });
        }
        found.ok_or_else(|| de::Error::custom(format!("empty map where {EXPECTED} was expected")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_in_plugin_config_is_a_one_key_credential_or_file_object() {
        use serde_json::json;
        let source = |v: serde_json::Value| Secret::from_reference(&v).map(|s| s.source().clone());
        assert_eq!(source(json!({"credential": "bot-token"})), Some(SecretSource::Credential("bot-token".into())));
        assert_eq!(source(json!({"file": "/run/t"})), Some(SecretSource::File("/run/t".into())));
        assert_eq!(source(json!("bot-token")), None);
        assert_eq!(source(json!({"credential": 1})), None);
        assert_eq!(source(json!({"credential": "a", "file": "/b"})), None);
        assert_eq!(source(json!({"token": "a"})), None);
    }

    fn credentials(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    #[test]
    fn credential_is_read_and_one_trailing_newline_trimmed() {
        let dir = credentials(&[("pw", "hunter2\n\n")]);
        let mut secret = Secret::credential("pw");
        secret.resolve(Some(dir.path())).unwrap();
        assert_eq!(secret.expose(), "hunter2\n");
    }

    #[test]
    fn crlf_is_trimmed_once() {
        let dir = credentials(&[("pw", "abc\r\n")]);
        let mut secret = Secret::credential("pw");
        secret.resolve(Some(dir.path())).unwrap();
        assert_eq!(secret.expose(), "abc");
    }

    #[test]
    fn missing_credential_names_it_the_variable_and_the_directive() {
        let dir = credentials(&[]);
        let err = Secret::credential("bot-pw").resolve(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("`bot-pw`"), "{err}");
        assert!(err.contains("CREDENTIALS_DIRECTORY"), "{err}");
        assert!(err.contains("LoadCredential=bot-pw:"), "{err}");
    }

    #[test]
    fn no_credentials_directory_is_explained() {
        let err = Secret::credential("bot-pw").resolve(None).unwrap_err().to_string();
        assert!(err.contains("$CREDENTIALS_DIRECTORY is not set"), "{err}");
        assert!(err.contains("LoadCredential=bot-pw:"), "{err}");
    }

    #[test]
    fn empty_credential_is_an_error() {
        let dir = credentials(&[("pw", "\n")]);
        let err = Secret::credential("pw").resolve(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn path_traversal_in_credential_names_is_rejected() {
        let dir = credentials(&[]);
        let err = Secret::credential("../etc/shadow").resolve(Some(dir.path())).unwrap_err();
        assert!(matches!(err, SecretError::InvalidCredentialName { .. }));
    }

    #[test]
    fn debug_display_and_serialize_never_show_the_value() {
        let secret = Secret::inline("s3cr3t-value");
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        assert!(!format!("{secret}").contains("s3cr3t"));
        assert!(!serde_json::to_string(&secret).unwrap().contains("s3cr3t"));
        let dir = credentials(&[("tok", "s3cr3t-value")]);
        let mut from_credential = Secret::credential("tok");
        from_credential.resolve(Some(dir.path())).unwrap();
        assert_eq!(serde_json::to_string(&from_credential).unwrap(), r#"{"credential":"tok"}"#);
        assert!(!format!("{from_credential:?}").contains("s3cr3t"));
    }

    #[test]
    fn deserializes_all_three_forms_and_rejects_others() {
        let s: Secret = serde_json::from_str(r#"{"credential":"a"}"#).unwrap();
        assert_eq!(s.source(), &SecretSource::Credential("a".into()));
        let s: Secret = serde_json::from_str(r#"{"file":"/x"}"#).unwrap();
        assert_eq!(s.source(), &SecretSource::File("/x".into()));
        let s: Secret = serde_json::from_str(r#""inline""#).unwrap();
        assert!(s.is_inline());
        let err = serde_json::from_str::<Secret>(r#"{"credential":"a","file":"/x"}"#).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        let err = serde_json::from_str::<Secret>(r#"{"env":"X"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `env`"), "{err}");
    }
}

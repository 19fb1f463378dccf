//! Removes secrets from text that leaves the process: every known secret value, and anything shaped like an
//! access token (`syt_…`, `Bearer …`, `access_token=…`, long opaque strings). Matrix IDs (`!room`, `$event`,
//! `@user`) are kept: they are what an admin needs to find the problem.

use std::sync::RwLock;

pub const REDACTED: &str = "[redacted]";

/// The scrubber `run` installs once it knows every secret (config secrets and access tokens), and replaces at a
/// reload.
static PROCESS: RwLock<Option<Scrubber>> = RwLock::new(None);

/// Makes `scrubbed` know the process's secrets (replacing what it knew).
pub fn install(scrubber: Scrubber) {
    *PROCESS.write().unwrap_or_else(|p| p.into_inner()) = Some(scrubber);
}

/// `text` without secrets: the installed scrubber's known values, and token shapes in any case. Used for text
/// that comes from outside (homeserver error bodies) before it reaches logs, status lines or the API.
pub fn scrubbed(text: &str) -> String {
    match PROCESS.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(scrubber) => scrubber.scrub(text),
        None => scrub_shapes(text),
    }
}

/// Longest text one log field (or one log line on stderr) may carry; the rest is cut.
pub const MAX_LOG_FIELD_BYTES: usize = 8 * 1024;

/// `text` made safe for a log: secrets scrubbed, control characters (newlines, ANSI escapes, NUL) written as
/// escapes so that no one can forge a log line or colour a terminal, and cut at [`MAX_LOG_FIELD_BYTES`].
pub fn for_log(text: &str) -> String {
    escape_controls(&scrubbed(text), MAX_LOG_FIELD_BYTES)
}

/// Control characters as `\n`, `\r`, `\t`, `\x1b`...; then cut at `limit` bytes (at a character boundary).
pub fn escape_controls(text: &str, limit: usize) -> String {
    let mut out = String::with_capacity(text.len().min(limit) + 16);
    for c in text.chars() {
        if out.len() >= limit {
            out.push_str(&format!("… [cut at {limit} bytes]"));
            return out;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone, Default)]
pub struct Scrubber {
    /// Known secret values, longest first (so that a secret containing another is replaced whole).
    known: Vec<String>,
}

/// Shorter secret values are not replaced by value (too many false positives); they are rare and still caught
/// by shape when token-like.
const MIN_KNOWN_LEN: usize = 6;
/// Opaque runs at least this long are treated as tokens.
const OPAQUE_LEN: usize = 32;

impl Scrubber {
    pub fn new(known: impl IntoIterator<Item = String>) -> Self {
        let mut known: Vec<String> = known.into_iter().filter(|s| s.len() >= MIN_KNOWN_LEN).collect();
        known.sort_by_key(|s| std::cmp::Reverse(s.len()));
        known.dedup();
        Scrubber { known }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.known {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        scrub_shapes(&out)
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '=' | '.' | '~')
}

/// Replaces token-shaped words: known token prefixes, values after `Bearer`/`token=`/`password=`, and long
/// opaque runs that are not Matrix identifiers.
fn scrub_shapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut previous_word = String::new();
    while i < chars.len() {
        if !is_token_char(chars[i]) {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_token_char(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let sigil = start.checked_sub(1).map(|p| chars[p]);
        let is_matrix_id = matches!(sigil, Some('!' | '$' | '@' | '#' | ':'));
        let redact = word.starts_with("syt_")
            || word.starts_with("syr_")
            || word.starts_with("mat_")
            || word.starts_with("mct_")
            || previous_word.eq_ignore_ascii_case("bearer")
            || secret_assignment(&word)
            || (!is_matrix_id && word.len() >= OPAQUE_LEN && looks_opaque(&word));
        if redact {
            match word.split_once('=') {
                Some((key, _)) if secret_assignment(&word) => {
                    out.push_str(key);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(REDACTED),
            }
        } else {
            out.push_str(&word);
        }
        previous_word = word;
    }
    out
}

fn secret_assignment(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    ["access_token=", "token=", "password=", "secret=", "key="]
        .iter()
        .any(|k| lower.starts_with(k) && lower.len() > k.len())
}

/// Mixed letters and digits without the shape of words, paths or URLs.
fn looks_opaque(word: &str) -> bool {
    let digits = word.chars().filter(char::is_ascii_digit).count();
    let letters = word.chars().filter(char::is_ascii_alphabetic).count();
    !word.contains('/') && !word.contains('.') && digits >= 4 && letters >= 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_and_token_shapes_are_removed_ids_are_kept() {
        let scrubber = Scrubber::new(["hunter2-password".to_owned(), "abc".to_owned()]);
        let text = "login with hunter2-password failed; token syt_Ym90_abcdefghij_0xyz; Authorization: Bearer \
                    s3cr3tT0k3nValue; url ?access_token=MDAxM2xvY2F0aW9u&x=1; room !abc123:example.org event \
                    $Kk2p0Tq4n7sXbqfYJcW4K0kQm2s4Bq8zYp1u9Vx3Qw0 user @bot:example.org; blob \
                    dGhpcyBpcyBhIHNlY3JldCBrZXkgd2l0aCA0MiBjaGFycw==";
        let clean = scrubber.scrub(text);
        for leaked in ["hunter2-password", "syt_Ym90", "s3cr3tT0k3nValue", "MDAxM2xvY2F0aW9u", "dGhpcyBpcyBhIHNlY3JldC"]
        {
            assert!(!clean.contains(leaked), "{leaked} leaked: {clean}");
        }
        for kept in ["!abc123:example.org", "$Kk2p0Tq4n7sXbqfYJcW4K0kQm2s4Bq8zYp1u9Vx3Qw0", "@bot:example.org", "abc"] {
            assert!(clean.contains(kept), "{kept} was removed: {clean}");
        }
        assert!(clean.contains("access_token=[redacted]") || clean.contains("[redacted]"), "{clean}");
    }

    #[test]
    fn log_text_cannot_forge_lines_or_colour_the_terminal() {
        let hostile = "alice\n2026-12-01T00:00:00Z  INFO forged line\x1b[31mred\0end";
        let clean = escape_controls(hostile, 1000);
        assert!(!clean.contains('\n') && !clean.contains('\x1b') && !clean.contains('\0'), "{clean}");
        assert!(clean.contains("alice\\n2026") && clean.contains("\\x1b[31m") && clean.contains("\\x00end"), "{clean}");
        let long = escape_controls(&"é".repeat(10_000), 100);
        assert!(long.len() < 140 && long.ends_with("[cut at 100 bytes]"), "{long}");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let text = "sync failed: error sending request for url (http://127.0.0.1:8008/_matrix/client/v3/sync)";
        assert_eq!(Scrubber::default().scrub(text), text);
    }
}

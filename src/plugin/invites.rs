//! Which invites a bot accepts: `allow_invites_from`, a list of user ID globs (`*`, `?`), shared by the plugin
//! types that join rooms on invite.

use super::ConfigProblem;
use crate::config::ids::user_glob_matches;

/// Problems with an `allow_invites_from` list (keys relative to the plugin config).
pub fn check_globs(globs: &[String]) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    for (i, glob) in globs.iter().enumerate() {
        if !(glob.starts_with('@') || glob.starts_with('*')) || !glob.contains(':') && glob != "*" {
            problems.push(ConfigProblem {
                key: format!("allow_invites_from.{i}"),
                message: format!("`{glob}` should match user IDs, like `@*:example.org` or `@alice:example.org`"),
            });
        }
    }
    problems
}

/// Whether `inviter` matches one of `globs`.
pub fn allowed(globs: &[String], inviter: &str) -> bool {
    globs.iter().any(|glob| user_glob_matches(glob, inviter))
}

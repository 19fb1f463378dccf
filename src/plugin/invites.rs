//! Which invites a bot accepts: `allow_invites_from`, a list of user ID globs (`*`, `?`), shared by the plugin
//! types that join rooms on invite.

use super::ConfigProblem;

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

/// Whether `user` (`@local:server`) matches a user-ID glob. The localpart and the server name are matched
/// separately, so a `*` never crosses the `:`: `@alice*` matches no user (it names no server), and
/// `@alice*:example.org` does not match `@alice:evil.org`. A lone `*` matches everyone.
pub fn user_glob_matches(pattern: &str, user: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (Some((pattern_local, pattern_server)), Some((local, server))) =
        (pattern.split_once(':'), user.split_once(':'))
    else {
        return false;
    };
    glob_matches(pattern_local, local) && glob_matches(pattern_server, server)
}

/// Glob matching with `*` (any run) and `?` (one character).
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("@*:example.org", "@alice:example.org"));
        assert!(!glob_matches("@*:example.org", "@alice:evil.org"));
        assert!(glob_matches("@admin?:x", "@admin1:x"));
        assert!(!glob_matches("@admin?:x", "@admin:x"));
        assert!(glob_matches("*", "@anyone:anywhere"));
        assert!(glob_matches("@a*b*c:x", "@aXXbYYc:x"));
        assert!(!glob_matches("@a*b*c:x", "@aXXbYY:x"));
    }

    #[test]
    fn user_globs_never_cross_the_colon() {
        assert!(user_glob_matches("@*:example.org", "@alice:example.org"));
        assert!(!user_glob_matches("@*:example.org", "@alice:evil.org"));
        assert!(!user_glob_matches("@alice*", "@alice:evil.org"), "no server named: matches nobody");
        assert!(!user_glob_matches("@alice*:example.org", "@alice:example.org.evil.org"));
        assert!(!user_glob_matches("@*", "@mallory:evil.org"));
        assert!(user_glob_matches("@alice*:example.org", "@alice2:example.org"));
        assert!(user_glob_matches("@bot:example.org:8448", "@bot:example.org:8448"));
        assert!(user_glob_matches("@*:*.example.org", "@x:matrix.example.org"));
        assert!(user_glob_matches("*", "@anyone:anywhere"));
        assert!(!user_glob_matches("*:evil.org", "@a:example.org"));
    }
}

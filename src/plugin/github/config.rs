//! The `github` plugin's config: the webhook secret, the routes from repositories to rooms, and the filters each
//! route applies, with quiet defaults (seed 003: "The bot is super verbose and posts all comments on all
//! issues").

use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use serde::Deserialize;

use crate::plugin::{ConfigProblem, invites};

/// Longest digest window.
pub const MAX_DIGEST_SECS: u64 = 3600;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// The webhook's secret: `{ credential: NAME }` or `{ file: PATH }` in the config, its text once built.
    pub secret: crate::plugin::SecretValue,
    /// Where each repository's events go, and which of them.
    pub routes: Vec<Route>,
    /// Events about the same thing (a pull request, an issue, pushes to one branch) in a room within this many
    /// seconds of the first are posted as one message. 0 posts each at once.
    #[serde(default = "default_digest_secs")]
    pub digest_secs: u64,
    /// User ID globs whose invites the bot accepts.
    #[serde(default)]
    pub allow_invites_from: Vec<String>,
}

fn default_digest_secs() -> u64 {
    10
}

/// One repository (or a glob of them) to one room, with its filters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `owner/name`, or a glob (`owner/*`, `*/*`); matched without regard to case.
    pub repository: String,
    /// The room's id (`!id:server`); the bot must be in it.
    pub room: String,
    /// Event names (`push`) or event and action (`pull_request.opened`; `pull_request.merged` is a closed pull
    /// request that was merged).
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// Regular expressions a branch name must match as a whole, for pushes and workflow runs. Absent: the
    /// repository's default branch only.
    #[serde(default)]
    pub branches: Option<Vec<String>>,
    /// Path globs (`docs/**`, `**/*.md`; `*` stays within a directory): a push is posted only when it changes a
    /// file one of them matches.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Path globs of files that do not count: a push that changes only such files is not posted.
    #[serde(default)]
    pub paths_ignore: Vec<String>,
    /// Issues and pull requests must carry one of these labels (empty: no such condition).
    #[serde(default)]
    pub include_labels: Vec<String>,
    /// Issues and pull requests carrying one of these labels are not posted (wins over `include_labels`).
    #[serde(default)]
    pub exclude_labels: Vec<String>,
    /// Leave out what bots do: a sender of type `Bot`, a login ending in `[bot]`, and the dependency bots that
    /// run as plain accounts (logins starting with `dependabot` or `renovate`).
    #[serde(default = "yes")]
    pub ignore_bots: bool,
    /// More logins (globs, `*` and `?`) whose events are left out.
    #[serde(default)]
    pub ignore_senders: Vec<String>,
    /// Workflow runs are posted when they end with one of these conclusions.
    #[serde(default = "default_conclusions")]
    pub workflow_conclusions: Vec<String>,
}

fn yes() -> bool {
    true
}

/// The quiet default: pushes (to the default branch), published releases, pull requests opened, closed or
/// merged, issues opened or closed, and failed workflow runs. No comments, reviews or labels.
pub fn default_events() -> Vec<String> {
    ["push", "release.published", "pull_request.opened", "pull_request.closed", "issues.opened", "issues.closed"]
        .into_iter()
        .chain(["workflow_run.completed"])
        .map(str::to_owned)
        .collect()
}

fn default_conclusions() -> Vec<String> {
    vec!["failure".into(), "timed_out".into(), "startup_failure".into()]
}

/// The conclusions GitHub gives a workflow run.
const CONCLUSIONS: &[&str] = &[
    "success",
    "failure",
    "neutral",
    "cancelled",
    "skipped",
    "timed_out",
    "action_required",
    "stale",
    "startup_failure",
];

impl GithubConfig {
    /// What is wrong with the config, keys relative to it. `secret` must be a reference here (the config as
    /// written): a secret written into the config would end up in the Nix store.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(ConfigProblem { key, message });
        if !self.secret.is_reference() {
            problem(
                "secret".into(),
                "the webhook secret must come from a credential or a file, like `secret: { credential: github-webhook }` \
                 (NixOS: `secretFiles`), never written into the config"
                    .into(),
            );
        }
        if self.routes.is_empty() {
            problem(
                "routes".into(),
                "name at least one route: `[{ repository: owner/name, room: \"!id:server\" }]`".into(),
            );
        }
        if self.digest_secs > MAX_DIGEST_SECS {
            problem("digest_secs".into(), format!("{} is over {MAX_DIGEST_SECS} seconds", self.digest_secs));
        }
        for (i, route) in self.routes.iter().enumerate() {
            for (key, message) in route.problems() {
                problem(format!("routes.{i}.{key}"), message);
            }
        }
        for p in invites::check_globs(&self.allow_invites_from) {
            problem(p.key, p.message);
        }
        problems
    }
}

impl Route {
    /// Problems as (key below the route, message).
    fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let repository = &self.repository;
        if repository.split('/').count() != 2 || repository.split('/').any(str::is_empty) {
            problems
                .push(("repository".into(), format!("`{repository}` should be `owner/name` or a glob like `owner/*`")));
        }
        if room_id(&self.room).is_none() {
            problems.push(("room".into(), format!("`{}` is not a room id like `!abc:example.org`", self.room)));
        }
        if self.events.is_empty() {
            problems
                .push(("events".into(), "an empty list posts nothing; leave the key out for the quiet default".into()));
        }
        for (i, event) in self.events.iter().enumerate() {
            let valid = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            let ok = match event.split_once('.') {
                Some((name, action)) => valid(name) && valid(action),
                None => valid(event),
            };
            if !ok {
                problems.push((
                    format!("events.{i}"),
                    format!("`{event}` should be an event name (`push`) or an event and action (`issues.opened`)"),
                ));
            }
        }
        for (i, branch) in self.branches.iter().flatten().enumerate() {
            if let Err(e) = super::filter::branch_regex(branch) {
                problems.push((format!("branches.{i}"), format!("`{branch}` is not a regular expression: {e}")));
            }
        }
        for (key, globs) in [("paths", &self.paths), ("paths_ignore", &self.paths_ignore)] {
            for (i, glob) in globs.iter().enumerate() {
                if let Err(e) = super::filter::path_glob(glob) {
                    problems.push((format!("{key}.{i}"), format!("`{glob}` is not a path glob: {e}")));
                }
            }
        }
        for (i, conclusion) in self.workflow_conclusions.iter().enumerate() {
            if !CONCLUSIONS.contains(&conclusion.as_str()) {
                problems.push((
                    format!("workflow_conclusions.{i}"),
                    format!("`{conclusion}` is not a conclusion GitHub gives; known: {}", CONCLUSIONS.join(", ")),
                ));
            }
        }
        problems
    }
}

/// The room id a route names, if it is one.
pub fn room_id(text: &str) -> Option<OwnedRoomId> {
    text.starts_with('!').then(|| RoomId::parse(text).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugin::parse_config;

    fn problems(config: serde_json::Value) -> Vec<(String, String)> {
        let parsed: GithubConfig = parse_config(&config).unwrap();
        parsed.problems().into_iter().map(|p| (p.key, p.message)).collect()
    }

    #[test]
    fn a_route_with_the_defaults_is_quiet_and_valid() {
        let config = json!({"secret": {"credential": "gh"}, "routes": [{"repository": "o/r", "room": "!a:x"}]});
        assert_eq!(problems(config.clone()), vec![]);
        let parsed: GithubConfig = parse_config(&config).unwrap();
        let route = &parsed.routes[0];
        assert!(route.ignore_bots);
        assert!(route.branches.is_none());
        assert!(!route.events.iter().any(|e| e.contains("comment") || e.contains("review") || e.contains("label")));
        assert_eq!(parsed.digest_secs, 10);
    }

    #[test]
    fn each_problem_names_its_key() {
        let found = problems(json!({
            "secret": "inline",
            "routes": [{"repository": "justname", "room": "#alias:x", "events": ["Push"], "branches": ["("],
                        "paths": ["a/{b"], "workflow_conclusions": ["failed"]}],
            "digest_secs": 7200
        }));
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "secret",
                "digest_secs",
                "routes.0.repository",
                "routes.0.room",
                "routes.0.events.0",
                "routes.0.branches.0",
                "routes.0.paths.0",
                "routes.0.workflow_conclusions.0"
            ]
        );
        assert!(found[0].1.contains("credential"), "{}", found[0].1);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let config = json!({"secret": {"credential": "gh"}, "routes": [{"repository": "o/r", "room": "!a:x", "branch": "main"}]});
        let problem = parse_config::<GithubConfig>(&config).unwrap_err();
        assert_eq!(problem.key, "routes[0].branch");
    }
}

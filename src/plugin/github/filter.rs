//! From a delivery to the notices it makes: the routes whose repository glob matches, each route's filters
//! (events and actions, branches, paths, labels, bot senders, workflow conclusions), and one notice per room.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use matrix_sdk::ruma::OwnedRoomId;
use regex::Regex;
use serde_json::Value;

use super::config::{Route, room_id};
use super::render::{self, Item};
use crate::plugin::invites::glob_matches;

/// Dependency bots that may run as plain accounts (self-hosted Renovate), left out with the bots.
const KNOWN_BOTS: &[&str] = &["dependabot*", "renovate*"];

/// A branch regex, matched against the whole branch name.
pub fn branch_regex(text: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{text})$"))
}

/// A path glob as GitHub Actions' `paths` filters read them: `*` stays within a directory, `**` does not.
pub fn path_glob(text: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(text).literal_separator(true).build()
}

fn glob_set(globs: &[String]) -> Option<GlobSet> {
    if globs.is_empty() {
        return None;
    }
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        builder.add(path_glob(glob).ok()?);
    }
    builder.build().ok()
}

/// A route ready to match (its config checked).
pub struct CompiledRoute {
    repository: String,
    room: OwnedRoomId,
    events: Vec<(String, Option<String>)>,
    branches: Option<Vec<Regex>>,
    paths: Option<GlobSet>,
    paths_ignore: Option<GlobSet>,
    include_labels: Vec<String>,
    exclude_labels: Vec<String>,
    ignore_bots: bool,
    ignore_senders: Vec<String>,
    workflow_conclusions: Vec<String>,
}

impl CompiledRoute {
    /// Compiles a route whose config passed its checks (`None` if it did not).
    pub fn new(route: &Route) -> Option<CompiledRoute> {
        let lower = |list: &[String]| list.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>();
        Some(CompiledRoute {
            repository: route.repository.to_lowercase(),
            room: room_id(&route.room)?,
            events: route
                .events
                .iter()
                .map(|e| match e.split_once('.') {
                    Some((name, action)) => (name.to_owned(), Some(action.to_owned())),
                    None => (e.clone(), None),
                })
                .collect(),
            branches: match &route.branches {
                Some(list) => Some(list.iter().map(|b| branch_regex(b).ok()).collect::<Option<Vec<_>>>()?),
                None => None,
            },
            paths: glob_set(&route.paths),
            paths_ignore: glob_set(&route.paths_ignore),
            include_labels: lower(&route.include_labels),
            exclude_labels: lower(&route.exclude_labels),
            ignore_bots: route.ignore_bots,
            ignore_senders: lower(&route.ignore_senders),
            workflow_conclusions: route.workflow_conclusions.clone(),
        })
    }
}

/// One message's worth of news for one room; notices of a room with the same `group` within the digest window
/// are posted together.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub room: OwnedRoomId,
    pub group: String,
    pub item: Item,
}

/// What a delivery makes: notices, or why there are none.
#[derive(Debug, PartialEq)]
pub enum Routed {
    Notices(Vec<Notice>),
    Ignored(String),
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// Routes one delivery (`event`: the `X-GitHub-Event` header) through the routes, in their order; a room gets
/// one notice at most, from the first of its routes that lets the delivery through.
pub fn route(routes: &[CompiledRoute], event: &str, payload: &Value) -> Routed {
    let repository = text(payload, "/repository/full_name");
    if repository.is_empty() {
        return Routed::Ignored(format!("a `{event}` event names no repository"));
    }
    let lower = repository.to_lowercase();
    let matching: Vec<&CompiledRoute> = routes.iter().filter(|r| glob_matches(&r.repository, &lower)).collect();
    if matching.is_empty() {
        return Routed::Ignored(format!("no route for the repository {repository}"));
    }
    let mut notices: Vec<Notice> = Vec::new();
    let mut first_reason = None;
    for route in matching {
        if notices.iter().any(|n| n.room == route.room) {
            continue;
        }
        match admit(route, event, payload).and_then(|()| {
            render::describe(event, payload).ok_or_else(|| format!("nothing to say about this `{event}` event"))
        }) {
            Ok((subject, item)) => {
                notices.push(Notice { room: route.room.clone(), group: format!("{lower} {subject}"), item })
            }
            Err(reason) => {
                first_reason.get_or_insert(reason);
            }
        }
    }
    if notices.is_empty() { Routed::Ignored(first_reason.unwrap_or_default()) } else { Routed::Notices(notices) }
}

/// Whether `route` posts this event; the reason when it does not.
fn admit(route: &CompiledRoute, event: &str, payload: &Value) -> Result<(), String> {
    let action = text(payload, "/action");
    if !selects(&route.events, event, action, payload) {
        let what = if action.is_empty() { format!("`{event}`") } else { format!("`{event}.{action}`") };
        return Err(format!("{what} is not among the route's events"));
    }
    let login = text(payload, "/sender/login");
    let lower_login = login.to_lowercase();
    let known_bot = KNOWN_BOTS.iter().any(|glob| glob_matches(glob, &lower_login));
    if route.ignore_bots && (text(payload, "/sender/type") == "Bot" || login.ends_with("[bot]") || known_bot) {
        return Err(format!("the sender {login} is a bot"));
    }
    if route.ignore_senders.iter().any(|glob| glob_matches(glob, &lower_login)) {
        return Err(format!("the sender {login} is ignored"));
    }
    let default_branch = text(payload, "/repository/default_branch");
    match event {
        "push" => {
            let reference = text(payload, "/ref");
            let Some(branch) = reference.strip_prefix("refs/heads/") else {
                return Err("a tag push (releases are posted as `release` events)".into());
            };
            if payload["deleted"].as_bool() == Some(true) {
                return Err(format!("the branch {branch} was deleted"));
            }
            branch_admitted(route, branch, default_branch)?;
            paths_admitted(route, payload)
        }
        "workflow_run" => {
            branch_admitted(route, text(payload, "/workflow_run/head_branch"), default_branch)?;
            let conclusion = text(payload, "/workflow_run/conclusion");
            if action == "completed" && !route.workflow_conclusions.iter().any(|c| c == conclusion) {
                return Err(format!("the run's conclusion {conclusion} is not among the route's workflow_conclusions"));
            }
            Ok(())
        }
        _ => labels_admitted(route, payload),
    }
}

/// Whether the selectors (`event` or `event.action`) name this event.
fn selects(selectors: &[(String, Option<String>)], event: &str, action: &str, payload: &Value) -> bool {
    selectors.iter().any(|(name, wanted)| {
        name == event
            && match wanted.as_deref() {
                None => true,
                Some("merged") if event == "pull_request" => {
                    action == "closed" && payload.pointer("/pull_request/merged") == Some(&Value::Bool(true))
                }
                Some(wanted) => wanted == action,
            }
    })
}

fn branch_admitted(route: &CompiledRoute, branch: &str, default_branch: &str) -> Result<(), String> {
    let admitted = match &route.branches {
        Some(regexes) => regexes.iter().any(|r| r.is_match(branch)),
        None => branch == default_branch,
    };
    if admitted {
        Ok(())
    } else if route.branches.is_some() {
        Err(format!("the branch {branch} matches none of the route's branches"))
    } else {
        Err(format!("the branch {branch} is not the default branch ({default_branch})"))
    }
}

/// The files a push changed, as its commits list them.
fn changed_files(payload: &Value) -> Vec<&str> {
    let mut files = Vec::new();
    for commit in payload["commits"].as_array().into_iter().flatten() {
        for list in ["added", "modified", "removed"] {
            files.extend(commit[list].as_array().into_iter().flatten().filter_map(Value::as_str));
        }
    }
    files
}

fn paths_admitted(route: &CompiledRoute, payload: &Value) -> Result<(), String> {
    if route.paths.is_none() && route.paths_ignore.is_none() {
        return Ok(());
    }
    let counts = |file: &&str| {
        route.paths.as_ref().is_none_or(|set| set.is_match(file))
            && !route.paths_ignore.as_ref().is_some_and(|set| set.is_match(file))
    };
    if changed_files(payload).iter().any(counts) {
        Ok(())
    } else {
        Err("the push changes no file the route's paths select".into())
    }
}

/// The labels of the issue or pull request an event is about (lower case); `None` when it is about neither.
fn labels(payload: &Value) -> Option<Vec<String>> {
    let subject = payload.get("pull_request").or_else(|| payload.get("issue"))?;
    Some(
        subject["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["name"].as_str())
            .map(str::to_lowercase)
            .collect(),
    )
}

fn labels_admitted(route: &CompiledRoute, payload: &Value) -> Result<(), String> {
    if route.include_labels.is_empty() && route.exclude_labels.is_empty() {
        return Ok(());
    }
    let Some(labels) = labels(payload) else {
        return Ok(());
    };
    if let Some(label) = labels.iter().find(|l| route.exclude_labels.contains(l)) {
        return Err(format!("it carries the excluded label {label}"));
    }
    if !route.include_labels.is_empty() && !labels.iter().any(|l| route.include_labels.contains(l)) {
        return Err("it carries none of the route's include_labels".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugin::github::config::GithubConfig;
    use crate::plugin::parse_config;

    fn routes(routes: Value) -> Vec<CompiledRoute> {
        let config: GithubConfig = parse_config(&json!({"secret": {"credential": "s"}, "routes": routes})).unwrap();
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        config.routes.iter().map(|r| CompiledRoute::new(r).unwrap()).collect()
    }

    fn push(branch: &str, files: &[&str], sender: Value) -> Value {
        json!({
            "ref": format!("refs/heads/{branch}"), "before": "a".repeat(40), "after": "b".repeat(40),
            "compare": "https://github.com/o/r/compare/a...b", "created": false, "deleted": false, "forced": false,
            "repository": {"full_name": "O/R", "html_url": "https://github.com/O/R", "default_branch": "main"},
            "sender": sender, "pusher": {"name": "alice"},
            "commits": [{"id": "c".repeat(40), "message": "Change things\n\nat length", "url": "https://github.com/o/r/commit/c",
                         "author": {"name": "Alice"}, "added": files, "modified": [], "removed": []}]
        })
    }

    fn alice() -> Value {
        json!({"login": "alice", "type": "User"})
    }

    fn reason(routed: Routed) -> String {
        match routed {
            Routed::Ignored(reason) => reason,
            Routed::Notices(n) => panic!("posted: {n:?}"),
        }
    }

    #[test]
    fn pushes_go_to_the_default_branch_only_unless_branches_say_otherwise() {
        let quiet = routes(json!([{"repository": "o/r", "room": "!a:x"}]));
        assert!(matches!(route(&quiet, "push", &push("main", &["x"], alice())), Routed::Notices(n) if n.len() == 1));
        assert!(reason(route(&quiet, "push", &push("feature", &["x"], alice()))).contains("not the default branch"));
        let release = routes(json!([{"repository": "o/r", "room": "!a:x", "branches": ["release/.*"]}]));
        assert!(matches!(route(&release, "push", &push("release/1.0", &["x"], alice())), Routed::Notices(_)));
        assert!(
            reason(route(&release, "push", &push("main", &["x"], alice()))).contains("none of the route's branches")
        );
        assert!(reason(route(&release, "push", &push("xrelease/1", &["x"], alice()))).contains("none"), "anchored");
        let mut tag = push("main", &["x"], alice());
        tag["ref"] = json!("refs/tags/v1");
        assert!(reason(route(&quiet, "push", &tag)).contains("tag push"));
    }

    #[test]
    fn path_globs_select_pushes_by_the_files_they_change() {
        let docs = routes(
            json!([{"repository": "o/*", "room": "!a:x", "paths": ["docs/**"], "paths_ignore": ["docs/drafts/**"]}]),
        );
        assert!(matches!(route(&docs, "push", &push("main", &["docs/a/b.md"], alice())), Routed::Notices(_)));
        assert!(reason(route(&docs, "push", &push("main", &["src/main.rs"], alice()))).contains("paths"));
        assert!(reason(route(&docs, "push", &push("main", &["docs/drafts/x.md"], alice()))).contains("paths"));
        let md = routes(json!([{"repository": "o/r", "room": "!a:x", "paths": ["*.md"]}]));
        assert!(matches!(route(&md, "push", &push("main", &["README.md"], alice())), Routed::Notices(_)));
        assert!(
            matches!(route(&md, "push", &push("main", &["docs/x.md"], alice())), Routed::Ignored(_)),
            "* stays in a directory"
        );
    }

    #[test]
    fn bots_are_left_out_by_default() {
        let quiet = routes(json!([{"repository": "o/r", "room": "!a:x"}]));
        let bot = json!({"login": "dependabot[bot]", "type": "Bot"});
        assert!(reason(route(&quiet, "push", &push("main", &["x"], bot.clone()))).contains("is a bot"));
        let renovate = json!({"login": "Renovate-Runner", "type": "User"});
        assert!(reason(route(&quiet, "push", &push("main", &["x"], renovate.clone()))).contains("is a bot"));
        let all =
            routes(json!([{"repository": "o/r", "room": "!a:x", "ignore_bots": false, "ignore_senders": ["ci-*"]}]));
        assert!(matches!(route(&all, "push", &push("main", &["x"], bot)), Routed::Notices(_)));
        assert!(matches!(route(&all, "push", &push("main", &["x"], renovate)), Routed::Notices(_)));
        let ci = json!({"login": "CI-deployer", "type": "User"});
        assert!(reason(route(&all, "push", &push("main", &["x"], ci))).contains("is ignored"));
    }

    fn issue(action: &str, labels: &[&str]) -> Value {
        let labels: Vec<Value> = labels.iter().map(|l| json!({"name": l})).collect();
        json!({"action": action, "sender": {"login": "bob", "type": "User"},
               "repository": {"full_name": "o/r", "html_url": "https://github.com/o/r", "default_branch": "main"},
               "issue": {"number": 7, "title": "It breaks", "html_url": "https://github.com/o/r/issues/7", "labels": labels, "body": "details"}})
    }

    #[test]
    fn comments_and_labels_are_quiet_and_excluded_labels_win() {
        let quiet = routes(json!([{"repository": "o/r", "room": "!a:x"}]));
        assert!(matches!(route(&quiet, "issues", &issue("opened", &[])), Routed::Notices(_)));
        assert!(reason(route(&quiet, "issues", &issue("labeled", &["bug"]))).contains("`issues.labeled` is not among"));
        let mut comment = issue("created", &[]);
        comment["comment"] = json!({"body": "me too", "html_url": "https://github.com/o/r/issues/7#c"});
        assert!(reason(route(&quiet, "issue_comment", &comment)).contains("not among"));
        let labelled = routes(
            json!([{"repository": "o/r", "room": "!a:x", "include_labels": ["Bug", "ui"], "exclude_labels": ["wontfix"]}]),
        );
        assert!(matches!(route(&labelled, "issues", &issue("opened", &["bug"])), Routed::Notices(_)));
        assert!(
            reason(route(&labelled, "issues", &issue("opened", &["docs"])))
                .contains("none of the route's include_labels")
        );
        assert!(reason(route(&labelled, "issues", &issue("opened", &["bug", "WONTFIX"]))).contains("excluded label"));
    }

    #[test]
    fn merged_selects_closed_pull_requests_that_were_merged() {
        let merged = routes(json!([{"repository": "o/r", "room": "!a:x", "events": ["pull_request.merged"]}]));
        let pr = |merged: bool| {
            json!({"action": "closed", "number": 3, "sender": alice(),
                   "repository": {"full_name": "o/r", "html_url": "https://github.com/o/r", "default_branch": "main"},
                   "pull_request": {"number": 3, "title": "T", "html_url": "https://github.com/o/r/pull/3", "merged": merged, "labels": []}})
        };
        assert!(matches!(route(&merged, "pull_request", &pr(true)), Routed::Notices(_)));
        assert!(matches!(route(&merged, "pull_request", &pr(false)), Routed::Ignored(_)));
    }

    #[test]
    fn workflow_runs_are_posted_when_they_fail_on_the_default_branch() {
        let quiet = routes(json!([{"repository": "o/r", "room": "!a:x"}]));
        let run = |conclusion: &str, branch: &str| {
            json!({"action": "completed", "sender": alice(),
                   "repository": {"full_name": "o/r", "html_url": "https://github.com/o/r", "default_branch": "main"},
                   "workflow_run": {"id": 9, "name": "CI", "conclusion": conclusion, "head_branch": branch,
                                    "head_sha": "d".repeat(40), "html_url": "https://github.com/o/r/actions/runs/9", "run_number": 4}})
        };
        assert!(matches!(route(&quiet, "workflow_run", &run("failure", "main")), Routed::Notices(_)));
        assert!(reason(route(&quiet, "workflow_run", &run("success", "main"))).contains("conclusion success"));
        assert!(reason(route(&quiet, "workflow_run", &run("failure", "pr-branch"))).contains("default branch"));
    }

    #[test]
    fn a_room_named_by_two_routes_gets_one_notice_and_each_room_its_own() {
        let two = routes(json!([
            {"repository": "o/r", "room": "!a:x"},
            {"repository": "o/*", "room": "!a:x"},
            {"repository": "*/*", "room": "!b:x"}
        ]));
        let Routed::Notices(notices) = route(&two, "push", &push("main", &["x"], alice())) else { panic!() };
        let rooms: Vec<&str> = notices.iter().map(|n| n.room.as_str()).collect();
        assert_eq!(rooms, ["!a:x", "!b:x"]);
        assert!(reason(route(&two, "push", &json!({"ref": "refs/heads/main"}))).contains("names no repository"));
        let other = routes(json!([{"repository": "o/r", "room": "!a:x"}]));
        let mut elsewhere = push("main", &["x"], alice());
        elsewhere["repository"]["full_name"] = json!("o/other");
        assert!(reason(route(&other, "push", &elsewhere)).contains("no route for the repository o/other"));
    }
}

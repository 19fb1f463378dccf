//! What a GitHub event says, as the notice a room gets: one line with the repository, who did what and a link,
//! details below it (the commits of a push, the start of a description), in plain text and in HTML. Everything
//! taken from the payload is cut to a length and escaped; only http(s) links are made.
//!
//! Several items about the same thing (labels put on one issue in a row, pushes to one branch) are posted as
//! one message within the digest window: the thing's title, then a line per item.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest title, name or first line of a commit message taken from a payload, in characters.
const TITLE_CHARS: usize = 160;
/// Longest excerpt of a description, comment or release note.
const EXCERPT_CHARS: usize = 300;
/// Commits listed for one push.
const COMMITS_LISTED: usize = 5;
/// Lines in one message (details included); the rest is counted.
const MESSAGE_LINES: usize = 15;
/// Bytes of one message's HTML and plain text, at most: lines beyond them are counted instead.
const MESSAGE_HTML_BYTES: usize = 24 * 1024;
const MESSAGE_TEXT_BYTES: usize = 12 * 1024;
/// Longer URLs are not linked.
const MAX_URL_BYTES: usize = 1024;

/// One line, as text and as HTML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub text: String,
    pub html: String,
}

/// What one event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// `owner/name` and its page.
    pub repo: String,
    pub repo_url: String,
    /// The thing the event is about, when several events can be about it (`issue #7: Title`): a digest's heading.
    pub title: Option<Line>,
    /// The event on its own: `alice opened issue #7: Title`.
    pub summary: Line,
    /// The event under its thing's heading: `alice opened it`.
    pub short: Line,
    /// Lines below it (commits, an excerpt).
    pub details: Vec<Line>,
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// At most `max` characters of `text` on one line (control characters and line breaks become spaces), with an
/// ellipsis where it was cut.
pub fn cut(text: &str, max: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut out: String = flat.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// A link, when `url` is an http(s) URL; the text alone otherwise.
fn link(url: &str, text: &str) -> String {
    if linkable(url) { format!("<a href=\"{}\">{}</a>", escape(url), escape(text)) } else { escape(text) }
}

/// ` <url>` for the plain text, when there is a URL.
fn plain_url(url: &str) -> String {
    if linkable(url) { format!(" <{url}>") } else { String::new() }
}

fn linkable(url: &str) -> bool {
    (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= MAX_URL_BYTES
        && !url.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The first paragraph of a text, cut: what a message shows of a description, comment or release note.
fn excerpt(body: &str) -> Option<Line> {
    let first = body.split("\n\n").map(str::trim).find(|p| !p.is_empty())?;
    let cut = cut(first, EXCERPT_CHARS);
    Some(Line { html: format!("<i>{}</i>", escape(&cut)), text: format!("> {cut}") })
}

/// Builds the items of one payload.
struct Builder<'a> {
    payload: &'a Value,
}

/// `did` with the thing in the place of `{}` (after it when there is no `{}`).
fn around(did: &str, thing_text: &str, thing_html: &str) -> (String, String) {
    let (before, after) = did.split_once("{}").unwrap_or((did, ""));
    let join = |thing: &str, before: &str, after: &str| {
        format!("{before}{}{thing}{after}", if before.is_empty() || before.ends_with(' ') { "" } else { " " })
    };
    (join(thing_text, before, after), join(thing_html, &escape(before), &escape(after)))
}

impl Builder<'_> {
    fn sender(&self) -> String {
        cut(text(self.payload, "/sender/login"), 64)
    }

    fn repo(&self) -> (String, String) {
        (text(self.payload, "/repository/full_name").to_owned(), text(self.payload, "/repository/html_url").to_owned())
    }

    /// An item about a numbered thing (`issue #7`) with its title, grouped by the thing. `did` places the thing
    /// where it says `{}`: `labeled {} with bug` is `bob labeled issue #7 with bug: Title`, and under the
    /// thing's heading `bob labeled it with bug`.
    fn about(&self, did: &str, noun: &str, number: u64, title: &str, url: &str, details: Vec<Line>) -> Item {
        let thing = format!("{noun} #{number}");
        let title = cut(title, TITLE_CHARS);
        let sender = self.sender();
        let (did_text, did_html) = around(did, &thing, &link(url, &thing));
        let (short_text, short_html) = around(did, "it", "it");
        let (repo, repo_url) = self.repo();
        Item {
            repo,
            repo_url,
            title: Some(Line {
                text: format!("{thing}: {title}{}", plain_url(url)),
                html: format!("{}: {}", link(url, &thing), escape(&title)),
            }),
            summary: Line {
                text: format!("{sender} {did_text}: {title}{}", plain_url(url)),
                html: format!("{} {did_html}: {}", escape(&sender), escape(&title)),
            },
            short: Line { text: format!("{sender} {short_text}"), html: format!("{} {short_html}", escape(&sender)) },
            details,
        }
    }

    /// An item that stands alone: `text` (already cut), with the part `linked` made a link to `url`.
    fn alone(&self, before: &str, linked: &str, after: &str, url: &str, details: Vec<Line>) -> Item {
        let line = Line {
            text: format!("{before}{linked}{after}{}", plain_url(url)),
            html: format!("{}{}{}", escape(before), link(url, linked), escape(after)),
        };
        let (repo, repo_url) = self.repo();
        Item { repo, repo_url, title: None, summary: line.clone(), short: line, details }
    }
}

/// What an event says, and the subject it groups under (`#7`, `push refs/heads/main`); `None` when there is
/// nothing worth a message (a push with no commits that created nothing).
pub fn describe(event: &str, payload: &Value) -> Option<(String, Item)> {
    let b = Builder { payload };
    let action = text(payload, "/action");
    let did = action.replace('_', " ");
    let number = |pointer: &str| payload.pointer(pointer).and_then(Value::as_u64).unwrap_or_default();
    match event {
        "push" => push(&b, payload),
        "pull_request" => {
            let pr = &payload["pull_request"];
            let n = number("/pull_request/number");
            let did = match action {
                "closed" if pr["merged"].as_bool() == Some(true) => "merged".to_owned(),
                "closed" => "closed {} without merging".to_owned(),
                "opened" if pr["draft"].as_bool() == Some(true) => "opened {} as a draft".to_owned(),
                "ready_for_review" => "marked {} ready for review".to_owned(),
                _ => labelled(&did, payload),
            };
            let details = if action == "opened" { excerpt(text(pr, "/body")).into_iter().collect() } else { vec![] };
            let item = b.about(&did, "pull request", n, text(pr, "/title"), text(pr, "/html_url"), details);
            Some((format!("#{n}"), item))
        }
        "issues" => {
            let issue = &payload["issue"];
            let n = number("/issue/number");
            let did = match action {
                "closed" if text(issue, "/state_reason") == "not_planned" => "closed {} as not planned".to_owned(),
                _ => labelled(&did, payload),
            };
            let details = if action == "opened" { excerpt(text(issue, "/body")).into_iter().collect() } else { vec![] };
            let item = b.about(&did, "issue", n, text(issue, "/title"), text(issue, "/html_url"), details);
            Some((format!("#{n}"), item))
        }
        "issue_comment" | "pull_request_review_comment" | "pull_request_review" => {
            let (thing, noun) = match payload.get("issue") {
                Some(issue) if issue.get("pull_request").is_none() => (issue, "issue"),
                Some(issue) => (issue, "pull request"),
                None => (&payload["pull_request"], "pull request"),
            };
            let n = thing["number"].as_u64().unwrap_or_default();
            let (did, body, url) = match event {
                "pull_request_review" => {
                    let review = &payload["review"];
                    let did = match text(review, "/state") {
                        "approved" => "approved",
                        "changes_requested" => "requested changes on",
                        _ => "reviewed",
                    };
                    (did.to_owned(), text(review, "/body"), text(review, "/html_url"))
                }
                _ => {
                    let comment = &payload["comment"];
                    let did =
                        if action == "created" { "commented on".to_owned() } else { format!("{did} a comment on") };
                    (did, text(comment, "/body"), text(comment, "/html_url"))
                }
            };
            let url = if url.is_empty() { text(thing, "/html_url") } else { url };
            let item = b.about(&did, noun, n, text(thing, "/title"), url, excerpt(body).into_iter().collect());
            Some((format!("#{n}"), item))
        }
        "release" => {
            let release = &payload["release"];
            let tag = text(release, "/tag_name");
            let name = match text(release, "/name") {
                "" => cut(tag, TITLE_CHARS),
                name if name == tag => cut(name, TITLE_CHARS),
                name => format!("{} ({})", cut(name, TITLE_CHARS), cut(tag, 64)),
            };
            let details = excerpt(text(release, "/body")).into_iter().collect();
            let item =
                b.alone(&format!("{} {did} release ", b.sender()), &name, "", text(release, "/html_url"), details);
            Some((format!("release {tag}"), item))
        }
        "workflow_run" => {
            let run = &payload["workflow_run"];
            let conclusion = match text(run, "/conclusion") {
                "" => text(run, "/status").replace('_', " "),
                "failure" => "failed".to_owned(),
                "success" => "succeeded".to_owned(),
                other => other.replace('_', " "),
            };
            let sha: String = text(run, "/head_sha").chars().take(7).collect();
            let what = format!(
                "{} #{} {conclusion}",
                cut(text(run, "/name"), TITLE_CHARS),
                run["run_number"].as_u64().unwrap_or_default()
            );
            let on = format!(" on {} ({sha}), started by {}", cut(text(run, "/head_branch"), 64), b.sender());
            let item = b.alone("workflow ", &what, &on, text(run, "/html_url"), vec![]);
            Some((format!("run {}", run["id"].as_u64().unwrap_or_default()), item))
        }
        _ => {
            // Any other event a route names: who did it, what and where, linked to the repository.
            let what = if action.is_empty() {
                event.replace('_', " ")
            } else {
                format!("{} ({did})", event.replace('_', " "))
            };
            let by = format!(" by {}", b.sender());
            let item = b.alone("", &cut(&what, TITLE_CHARS), &by, text(payload, "/repository/html_url"), vec![]);
            Some((format!("{event} {}", rand::random::<u64>()), item))
        }
    }
}

/// `labeled {} with NAME` and `removed the label NAME from {}` for label changes; `did` for the rest.
fn labelled(did: &str, payload: &Value) -> String {
    let label = cut(text(payload, "/label/name"), 64);
    match did {
        "labeled" => format!("labeled {{}} with {label}"),
        "unlabeled" => format!("removed the label {label} from {{}}"),
        _ => did.to_owned(),
    }
}

fn push(b: &Builder<'_>, payload: &Value) -> Option<(String, Item)> {
    let reference = text(payload, "/ref");
    let branch = cut(reference.strip_prefix("refs/heads/").unwrap_or(reference), 128);
    let commits = payload["commits"].as_array().cloned().unwrap_or_default();
    let compare = text(payload, "/compare");
    let repo_url = text(payload, "/repository/html_url");
    let branch_url = format!("{repo_url}/tree/{branch}");
    let sender = b.sender();
    let (did, url) = if commits.is_empty() {
        if payload["created"].as_bool() != Some(true) {
            return None;
        }
        ("created".to_owned(), branch_url.as_str())
    } else {
        let forced = if payload["forced"].as_bool() == Some(true) { "force-pushed" } else { "pushed" };
        (format!("{forced} {}", plural(commits.len(), "commit", "commits")), compare)
    };
    let mut details: Vec<Line> = commits
        .iter()
        .take(COMMITS_LISTED)
        .map(|commit| {
            let sha: String = text(commit, "/id").chars().take(7).collect();
            let message = cut(text(commit, "/message").lines().next().unwrap_or_default(), TITLE_CHARS);
            let author = cut(text(commit, "/author/name"), 64);
            Line {
                text: format!("{sha} {message} ({author})"),
                html: format!("{} {} ({})", link(text(commit, "/url"), &sha), escape(&message), escape(&author)),
            }
        })
        .collect();
    if commits.len() > COMMITS_LISTED {
        let more = format!("… and {} more", commits.len() - COMMITS_LISTED);
        details.push(Line { html: escape(&more), text: more });
    }
    let title = Line {
        text: format!("pushes to {branch}{}", plain_url(&branch_url)),
        html: format!("pushes to {}", link(&branch_url, &branch)),
    };
    let summary = Line {
        text: format!("{sender} {did} to {branch}{}", plain_url(url)),
        html: format!("{} {} to {}", escape(&sender), link(url, &did), link(&branch_url, &branch)),
    };
    let short = Line {
        text: format!("{sender} {did}{}", plain_url(url)),
        html: format!("{} {}", escape(&sender), link(url, &did)),
    };
    let item = Item {
        repo: text(payload, "/repository/full_name").to_owned(),
        repo_url: repo_url.to_owned(),
        title: Some(title),
        summary,
        short,
        details,
    };
    Some((format!("push {reference}"), item))
}

#[cfg(test)]
impl Item {
    /// An item of repository o/r whose every line is `text` (for tests of what carries items).
    pub fn sample(text: &str) -> Item {
        let line = Line { text: text.into(), html: text.into() };
        Item {
            repo: "o/r".into(),
            repo_url: "https://github.com/o/r".into(),
            title: None,
            summary: line.clone(),
            short: line,
            details: vec![],
        }
    }
}

/// The message for the items of one group, oldest first: `(plain text, HTML)`.
pub fn message(items: &[Item]) -> (String, String) {
    let Some(last) = items.last() else {
        return (String::new(), String::new());
    };
    let prefix_text = format!("[{}] ", last.repo);
    let prefix_html = format!("<b>[{}]</b> ", link(&last.repo_url, &last.repo));
    let mut lines: Vec<(Line, bool)> = Vec::new();
    let heading = match (items, &last.title) {
        ([only], _) => only.summary.clone(),
        (_, Some(title)) => title.clone(),
        (_, None) => Line { text: format!("{} updates", items.len()), html: format!("{} updates", items.len()) },
    };
    if items.len() == 1 {
        lines.extend(last.details.iter().map(|d| (d.clone(), true)));
    } else {
        for item in items {
            lines.push((if last.title.is_some() { item.short.clone() } else { item.summary.clone() }, false));
            lines.extend(item.details.iter().map(|d| (d.clone(), true)));
        }
    }
    let mut text = format!("{prefix_text}{}", heading.text);
    let mut html = format!("{prefix_html}{}", heading.html);
    if !lines.is_empty() {
        html.push_str("<ul>");
    }
    let mut shown = 0;
    for (line, detail) in lines.iter().take(MESSAGE_LINES) {
        let indent = if *detail && items.len() > 1 { "    " } else { "" };
        let line_text = format!("\n{indent}• {}", line.text);
        let line_html = format!("<li>{}</li>", line.html);
        if text.len() + line_text.len() > MESSAGE_TEXT_BYTES || html.len() + line_html.len() > MESSAGE_HTML_BYTES {
            break;
        }
        text.push_str(&line_text);
        html.push_str(&line_html);
        shown += 1;
    }
    if lines.len() > shown {
        let hidden = lines.len() - shown;
        let more = format!("… and {hidden} more {}", if hidden == 1 { "line" } else { "lines" });
        text.push_str(&format!("\n{more}"));
        html.push_str(&format!("<li>{}</li>", escape(&more)));
    }
    if !lines.is_empty() {
        html.push_str("</ul>");
    }
    (text, html)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn repo() -> Value {
        json!({"full_name": "octo/app", "html_url": "https://github.com/octo/app", "default_branch": "main"})
    }

    #[test]
    fn a_push_lists_its_first_commits_with_links() {
        let commits: Vec<Value> = (0..7)
            .map(|i| {
                json!({"id": format!("{i}{}", "a".repeat(39)), "message": format!("Commit {i}\n\nbody"),
                            "url": format!("https://github.com/octo/app/commit/{i}"), "author": {"name": "Alice"}})
            })
            .collect();
        let payload = json!({"ref": "refs/heads/main", "compare": "https://github.com/octo/app/compare/x...y",
                             "forced": false, "created": false, "commits": commits, "repository": repo(),
                             "sender": {"login": "alice"}});
        let (subject, item) = describe("push", &payload).unwrap();
        assert_eq!(subject, "push refs/heads/main");
        let (text, html) = message(&[item]);
        assert_eq!(
            text,
            "[octo/app] alice pushed 7 commits to main <https://github.com/octo/app/compare/x...y>\n\
             • 0aaaaaa Commit 0 (Alice)\n• 1aaaaaa Commit 1 (Alice)\n• 2aaaaaa Commit 2 (Alice)\n\
             • 3aaaaaa Commit 3 (Alice)\n• 4aaaaaa Commit 4 (Alice)\n• … and 2 more"
        );
        assert!(html.starts_with("<b>[<a href=\"https://github.com/octo/app\">octo/app</a>]</b> alice <a href=\"https://github.com/octo/app/compare/x...y\">pushed 7 commits</a> to <a href=\"https://github.com/octo/app/tree/main\">main</a><ul><li>"), "{html}");
    }

    #[test]
    fn what_comes_from_the_payload_is_escaped_cut_and_linked_only_over_http() {
        let payload = json!({"action": "opened", "repository": repo(), "sender": {"login": "<script>"},
                             "issue": {"number": 7, "title": format!("<b>bold</b> {}", "x".repeat(300)),
                                       "html_url": "javascript:alert(1)", "body": "First\nparagraph.\n\nSecond."}});
        let (subject, item) = describe("issues", &payload).unwrap();
        assert_eq!(subject, "#7");
        let (text, html) = message(&[item]);
        assert!(!html.contains("<script>") && !html.contains("<b>bold") && !html.contains("javascript:"), "{html}");
        assert!(html.contains("&lt;script&gt; opened issue #7: &lt;b&gt;bold&lt;/b&gt;"), "{html}");
        assert!(text.contains("…\n• > First paragraph."), "{text}");
        assert!(text.lines().next().unwrap().chars().count() < 220, "{text}");
    }

    #[test]
    fn items_about_one_thing_are_one_message_under_its_title() {
        let labeled = |label: &str| {
            json!({"action": "labeled", "label": {"name": label}, "repository": repo(), "sender": {"login": "bob"},
                   "issue": {"number": 7, "title": "It breaks", "html_url": "https://github.com/octo/app/issues/7"}})
        };
        let items: Vec<Item> = ["bug", "ui", "p1"].iter().map(|l| describe("issues", &labeled(l)).unwrap().1).collect();
        let (text, html) = message(&items);
        assert_eq!(
            text,
            "[octo/app] issue #7: It breaks <https://github.com/octo/app/issues/7>\n\
             • bob labeled it with bug\n• bob labeled it with ui\n• bob labeled it with p1"
        );
        assert!(html.contains("<a href=\"https://github.com/octo/app/issues/7\">issue #7</a>: It breaks<ul><li>bob labeled it with bug</li>"), "{html}");
    }

    #[test]
    fn a_merged_pull_request_and_a_failed_run_read_as_such() {
        let pr = json!({"action": "closed", "repository": repo(), "sender": {"login": "carol"},
                        "pull_request": {"number": 12, "title": "Faster", "merged": true, "html_url": "https://github.com/octo/app/pull/12"}});
        let (_, item) = describe("pull_request", &pr).unwrap();
        assert_eq!(
            message(&[item]).0,
            "[octo/app] carol merged pull request #12: Faster <https://github.com/octo/app/pull/12>"
        );
        let run = json!({"action": "completed", "repository": repo(), "sender": {"login": "carol"},
                         "workflow_run": {"id": 5, "name": "CI", "run_number": 31, "conclusion": "failure", "head_branch": "main",
                                          "head_sha": "0123456789", "html_url": "https://github.com/octo/app/actions/runs/5"}});
        let (subject, item) = describe("workflow_run", &run).unwrap();
        assert_eq!(subject, "run 5");
        assert_eq!(
            message(&[item]).0,
            "[octo/app] workflow CI #31 failed on main (0123456), started by carol <https://github.com/octo/app/actions/runs/5>"
        );
    }

    #[test]
    fn long_digests_are_cut_to_a_number_of_lines() {
        let payload = |i: u32| {
            json!({"action": "labeled", "label": {"name": format!("l{i}")}, "repository": repo(), "sender": {"login": "bob"},
                   "issue": {"number": 7, "title": "T", "html_url": "https://github.com/octo/app/issues/7"}})
        };
        let items: Vec<Item> = (0..40).map(|i| describe("issues", &payload(i)).unwrap().1).collect();
        let (text, _) = message(&items);
        assert_eq!(text.lines().count(), 1 + MESSAGE_LINES + 1);
        assert!(text.ends_with("… and 25 more lines"), "{text}");
    }
}

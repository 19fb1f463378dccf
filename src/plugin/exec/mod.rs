//! `exec`: a bot written in any language, run as a separate program that speaks the line protocol of
//! `protocol.rs` over its stdin and stdout (docs/exec.md). The host keeps doing Matrix, E2EE, exactly-once
//! sending, restarts and secrets; the program only decides.
//!
//! Events go to the program one at a time; what it answers (up to its `done`) is carried out like any plugin's
//! actions, so a message whose answers were not recorded before a crash (of the host or of the program) is
//! delivered again, and the repeated answers carry the same transaction ids: the room sees each once. A program
//! that exits, writes something that is not protocol, or misses a deadline ends the instance's run; the
//! supervisor restarts it with its backoff.

mod calls;
mod program;
pub mod protocol;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use tokio::sync::{Mutex, watch};

use self::program::{Input, JobAnswer, JobWaiters, Launch, Line, Program};
use self::protocol::Common;
use self::protocol::{FromProgram, MemberLine, ToProgram};
use super::{
    Action, ConfigProblem, Event, EventKind, EventType, Job, MemberChange, Plugin, PluginContext, PluginError,
    PluginType, Relation, StateSpec, Subscriptions, Unprompted, UnpromptedSink, http, invites, job, parse_config,
};

/// Longest `event_timeout_secs`: below the supervisor's hang detection (a sync's long poll plus 90 s).
pub const MAX_EVENT_TIMEOUT_SECS: u64 = 60;
/// Longest `ready_timeout_secs`.
pub const MAX_READY_TIMEOUT_SECS: u64 = 300;
/// Longest `tick_secs` a program may ask for: a day.
pub const MAX_TICK_SECS: u64 = 86_400;
/// Longest `job_timeout_secs`: a day.
pub const MAX_JOB_TIMEOUT_SECS: u64 = 86_400;
/// Most actions a program may take for one event.
pub const MAX_ACTIONS_PER_EVENT: usize = 20;

pub struct ExecType;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The program: an absolute path to an executable.
    pub command: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    /// Handed to the program in `hello` (secret references resolved).
    #[serde(default = "empty_object")]
    pub settings: serde_json::Value,
    /// User ID globs (`*`, `?`) whose invites the bot accepts.
    #[serde(default)]
    pub allow_invites_from: Vec<String>,
    /// Time the program has to answer `hello` with `ready`.
    #[serde(default = "default_ready_timeout_secs")]
    pub ready_timeout_secs: u64,
    /// Time the program has to finish one event (`done`).
    #[serde(default = "default_event_timeout_secs")]
    pub event_timeout_secs: u64,
    /// Largest HTTP request body handed to the program (when it serves HTTP); larger ones are answered 413.
    #[serde(default = "default_http_max_body_bytes")]
    pub http_max_body_bytes: usize,
    /// Time the program has to finish one job (`job_done`); past it, the attempt failed.
    #[serde(default = "default_job_timeout_secs")]
    pub job_timeout_secs: u64,
}

fn default_http_max_body_bytes() -> usize {
    1024 * 1024
}

fn default_job_timeout_secs() -> u64 {
    3600
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

fn default_ready_timeout_secs() -> u64 {
    10
}

fn default_event_timeout_secs() -> u64 {
    30
}

impl PluginType for ExecType {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn description(&self) -> &'static str {
        "runs a bot written in any language as a separate program, one JSON object per line (docs/exec.md)"
    }

    fn check_config(&self, config: &serde_json::Value) -> Vec<ConfigProblem> {
        let parsed: ExecConfig = match parse_config(config) {
            Ok(parsed) => parsed,
            Err(problem) => return vec![problem],
        };
        let mut problems = invites::check_globs(&parsed.allow_invites_from);
        if !parsed.command.is_absolute() {
            problems.push(ConfigProblem {
                key: "command".into(),
                message: format!(
                    "`{}` must be an absolute path to the program (on NixOS: set instances.<id>.exec.package)",
                    parsed.command.display()
                ),
            });
        }
        for (key, value, max) in [
            ("ready_timeout_secs", parsed.ready_timeout_secs, MAX_READY_TIMEOUT_SECS),
            ("event_timeout_secs", parsed.event_timeout_secs, MAX_EVENT_TIMEOUT_SECS),
            ("job_timeout_secs", parsed.job_timeout_secs, MAX_JOB_TIMEOUT_SECS),
        ] {
            if value == 0 || value > max {
                problems
                    .push(ConfigProblem { key: key.into(), message: format!("{value} must be between 1 and {max}") });
            }
        }
        if parsed.http_max_body_bytes == 0 || parsed.http_max_body_bytes > http::MAX_BODY_LIMIT {
            problems.push(ConfigProblem {
                key: "http_max_body_bytes".into(),
                message: format!("{} must be between 1 and {}", parsed.http_max_body_bytes, http::MAX_BODY_LIMIT),
            });
        }
        if !parsed.settings.is_object() {
            problems.push(ConfigProblem { key: "settings".into(), message: "must be a mapping".into() });
        }
        problems
    }

    fn build(&self, config: &serde_json::Value) -> Result<Box<dyn Plugin>, ConfigProblem> {
        Ok(Box::new(Exec {
            config: parse_config(config)?,
            program: Mutex::new(None),
            subscriptions: std::sync::RwLock::new(Subscriptions::messages()),
            fault: Arc::new(watch::Sender::new(None)),
            jobs: std::sync::Mutex::new(None),
            serves_http: Default::default(),
            tick_secs: Default::default(),
            changes_rooms: std::sync::atomic::AtomicBool::new(true),
            requests: Default::default(),
        }))
    }
}

pub struct Exec {
    config: ExecConfig,
    program: Mutex<Option<Program>>,
    /// What the running program asked for in `ready` (always including `message`).
    subscriptions: std::sync::RwLock<Subscriptions>,
    /// Set by the program's reader when it fails outside an event.
    fault: Arc<watch::Sender<Option<String>>>,
    /// The running program's input and its jobs in flight: jobs are written to it beside event handling.
    jobs: std::sync::Mutex<Option<(Input, JobWaiters)>>,
    /// Whether the program said in `ready` that it answers HTTP requests.
    serves_http: std::sync::atomic::AtomicBool,
    /// How often the program asked to be ticked (`ready`'s `tick_secs`; 0: never).
    tick_secs: std::sync::atomic::AtomicU64,
    /// Whether the running program may change rooms (`ready`'s `changes_rooms`; default yes).
    changes_rooms: std::sync::atomic::AtomicBool,
    /// Numbers the HTTP requests handed to the program (`http-<n>`).
    requests: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Plugin for Exec {
    fn accepts_invite_from(&self, inviter: &str) -> bool {
        invites::allowed(&self.config.allow_invites_from, inviter)
    }

    async fn start(&self, context: &PluginContext, unprompted: UnpromptedSink) -> Result<(), PluginError> {
        self.fault.send_replace(None);
        let launch = Launch {
            instance: &context.instance,
            command: &self.config.command,
            args: &self.config.args,
            data_dir: &context.data_dir,
            view: &context.matrix,
        };
        let mut program = Program::start(&launch, unprompted, self.fault.clone())?;
        program
            .write(&ToProgram::Hello {
                protocol: protocol::VERSION,
                instance: &context.instance,
                user_id: &context.user_id,
                config: &self.config.settings,
            })
            .await?;
        let deadline = Duration::from_secs(self.config.ready_timeout_secs);
        let subscribe = match tokio::time::timeout(deadline, program.lines.recv()).await {
            Ok(Some(Line::Message(FromProgram::Ready { subscribe, http, tick_secs, changes_rooms }))) => {
                self.serves_http.store(http, std::sync::atomic::Ordering::Relaxed);
                self.changes_rooms.store(changes_rooms.unwrap_or(true), std::sync::atomic::Ordering::Relaxed);
                if tick_secs.is_some_and(|t| t == 0 || t > MAX_TICK_SECS) {
                    return Err(PluginError::transient(format!(
                        "the program asked for `tick_secs` {} in `ready`; it must be between 1 and {MAX_TICK_SECS}",
                        tick_secs.unwrap_or_default()
                    )));
                }
                self.tick_secs.store(tick_secs.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
                subscribe
            }
            Ok(Some(Line::Message(other))) => {
                return Err(PluginError::transient(format!("the program answered hello with {other:?}, not `ready`")));
            }
            Ok(Some(Line::Fault(why))) => return Err(PluginError::transient(why)),
            Ok(None) => return Err(PluginError::transient("the program ended before it was ready")),
            Err(_) => {
                let status = program.exit_status().map(|s| format!(" ({s})")).unwrap_or_default();
                return Err(PluginError::transient(format!(
                    "the program did not answer hello with `ready` within {} s (ready_timeout_secs){status}",
                    deadline.as_secs()
                )));
            }
        };
        let (subscriptions, unknown) = subscriptions_of(&subscribe);
        if !unknown.is_empty() {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
            tracing::warn!(instance = %context.instance, unsupported = ?unknown, ?known, "the program subscribed to event types this host does not deliver");
        }
        *self.subscriptions.write().unwrap_or_else(|p| p.into_inner()) = subscriptions;
        tracing::info!(instance = %context.instance, command = %self.config.command.display(), "the program is ready");
        *self.jobs.lock().unwrap_or_else(|p| p.into_inner()) = Some((program.input.clone(), program.jobs.clone()));
        *self.program.lock().await = Some(program);
        Ok(())
    }

    fn changes_rooms(&self) -> bool {
        self.changes_rooms.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn subscriptions(&self) -> Subscriptions {
        *self.subscriptions.read().unwrap_or_else(|p| p.into_inner())
    }

    async fn on_event(&self, context: &PluginContext, event: &Event) -> Result<Vec<Action>, PluginError> {
        let mut guard = self.program.lock().await;
        let program = guard.as_mut().ok_or_else(|| PluginError::transient("the program is not running"))?;
        let id = event.event_id.as_str();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.config.event_timeout_secs);
        let missed = || {
            PluginError::transient(format!(
                "the program did not finish event {id} within {} s (event_timeout_secs)",
                self.config.event_timeout_secs
            ))
        };
        program.begin(id);
        let line = to_program(event);
        tokio::time::timeout_at(deadline, program.write(&line)).await.map_err(|_| missed())??;
        let mut actions = Vec::new();
        loop {
            let next = tokio::time::timeout_at(deadline, program.lines.recv()).await.map_err(|_| missed())?;
            let answer = match next {
                Some(Line::Message(answer)) => answer,
                Some(Line::Fault(why)) => return Err(PluginError::transient(why)),
                None => return Err(PluginError::transient("the program's output ended")),
            };
            if let FromProgram::Done { to } = &answer {
                if to != id {
                    return Err(PluginError::transient(format!(
                        "the program said `done` for {to} while handling {id}"
                    )));
                }
                program.end();
                return Ok(actions);
            }
            actions.push(to_action(answer, id, &context.data_dir).map_err(PluginError::transient)?);
            if actions.len() > MAX_ACTIONS_PER_EVENT {
                return Err(PluginError::transient(format!(
                    "the program took more than {MAX_ACTIONS_PER_EVENT} actions for one event"
                )));
            }
        }
    }

    async fn failed(&self) -> PluginError {
        let mut fault = self.fault.subscribe();
        let fault = fault.wait_for(Option::is_some).await.map(|why| why.clone().unwrap_or_default());
        match fault {
            Ok(why) => PluginError::transient(why),
            // The sender lives as long as the plugin: never.
            Err(_) => std::future::pending().await,
        }
    }

    /// Ticks the program every `tick_secs` it asked for (none without), between events.
    async fn run(
        &self,
        _context: &PluginContext,
        unprompted: UnpromptedSink,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), PluginError> {
        let every = self.tick_secs.load(std::sync::atomic::Ordering::Relaxed);
        if every == 0 {
            return Ok(());
        }
        let period = Duration::from_secs(every);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 1u64.. {
            tokio::select! {
                _ = crate::stopping(&mut shutdown) => return Ok(()),
                _ = ticks.tick() => {}
            }
            self.answer_tick(n, &unprompted).await.map_err(PluginError::transient)?;
        }
        Ok(())
    }

    fn http(&self) -> Option<http::HttpSpec> {
        self.serves_http
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(http::HttpSpec { max_body_bytes: self.config.http_max_body_bytes })
    }

    async fn on_http(
        &self,
        _context: &PluginContext,
        request: http::HttpRequest,
        unprompted: &UnpromptedSink,
    ) -> http::HttpResponse {
        match self.answer_http(request, unprompted).await {
            Ok(response) => response,
            Err(why) => {
                tracing::warn!(error = %why, "the program failed an HTTP request; restarting it");
                self.fault.send_replace(Some(why));
                http::HttpResponse::error(502, "bot_failed", "the bot's program failed to answer; it is restarted")
            }
        }
    }

    async fn run_job(&self, context: &PluginContext, job: &Job) -> Result<Vec<Action>, PluginError> {
        let link = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (input, waiters) = link.ok_or_else(|| PluginError::transient("the program is not running"))?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(job.key.clone(), answer);
        let origin = job.origin.as_ref();
        let line = ToProgram::RunJob {
            key: &job.key,
            payload: &job.payload,
            attempt: job.attempt,
            room_id: origin.map(|o| o.room_id.as_str()),
            event_id: origin.map(|o| o.event_id.as_str()),
            sender: origin.map(|o| o.sender.as_str()),
        };
        let deadline = Duration::from_secs(self.config.job_timeout_secs);
        let result = async {
            program::write_line(&input, &line)
                .await
                .map_err(|e| PluginError::transient(format!("cannot hand the job to the program: {e}")))?;
            match tokio::time::timeout(deadline, answered).await {
                Ok(Ok(JobAnswer::Done(actions))) => {
                    let handling = origin.map(|o| o.event_id.as_str()).unwrap_or_default();
                    actions
                        .into_iter()
                        .map(|a| job_action(a, handling, &context.data_dir))
                        .collect::<Result<Vec<_>, _>>()
                }
                Ok(Ok(JobAnswer::Failed { error, permanent })) => {
                    let message = format!("the program says: {}", crate::telemetry::scrub::for_log(&error));
                    Err(if permanent { PluginError::permanent(message) } else { PluginError::transient(message) })
                }
                Ok(Err(_)) => Err(PluginError::transient("the program ended before it finished the job")),
                Err(_) => Err(PluginError::transient(format!(
                    "the program did not finish the job within {} s (job_timeout_secs)",
                    deadline.as_secs()
                ))),
            }
        }
        .await;
        waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&job.key);
        result
    }

    async fn stop(&self) {
        *self.jobs.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(program) = self.program.lock().await.take() {
            let ended = program.stop().await;
            tracing::info!(ended = %ended, "the program stopped");
        }
    }
}

impl Exec {
    /// Hands an HTTP request to the program (between events, like one) and collects its answer: jobs it
    /// accepts on the way are on disk before the answer goes out, sends are queued. An error is a fault of the
    /// program.
    async fn answer_http(
        &self,
        request: http::HttpRequest,
        unprompted: &UnpromptedSink,
    ) -> Result<http::HttpResponse, String> {
        let mut guard = self.program.lock().await;
        let Some(program) = guard.as_mut() else {
            return Ok(http::HttpResponse::error(503, "bot_not_running", "the bot's program is not running"));
        };
        let n = self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let id = format!("http-{n}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.config.event_timeout_secs);
        let text = std::str::from_utf8(&request.body).ok();
        let line = ToProgram::Http {
            id: &id,
            method: &request.method,
            path: &request.path,
            query: request.query.as_deref(),
            headers: &request.headers,
            body: text,
            body_base64: match text {
                Some(_) => None,
                None => Some(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &request.body)),
            },
            peer: request.peer.to_string(),
            client_common_name: request.client_common_name.as_deref(),
            operator: request.operator.as_deref(),
        };
        let what = format!("HTTP request {id}");
        let end = |m: &FromProgram| matches!(m, FromProgram::HttpResponse { to, .. } if *to == id);
        match answer_outside_event(program, &line, &id, &what, deadline, unprompted, &end).await? {
            FromProgram::HttpResponse { status, headers, body, .. } => {
                if !(100..=599).contains(&status) {
                    return Err(format!("the program answered HTTP request {id} with status {status}"));
                }
                let headers = headers.into_iter().collect();
                Ok(http::HttpResponse { status, headers, body: body.into_bytes() })
            }
            _ => unreachable!("the end line is an http_response"),
        }
    }

    /// Hands the program a timer tick (between events, like one); its sends and jobs go to the host's queue
    /// until its `done`.
    async fn answer_tick(&self, n: u64, unprompted: &UnpromptedSink) -> Result<(), String> {
        let mut guard = self.program.lock().await;
        let Some(program) = guard.as_mut() else {
            return Ok(());
        };
        let id = format!("tick-{n}");
        let ts =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.config.event_timeout_secs);
        let end = |m: &FromProgram| matches!(m, FromProgram::Done { to } if *to == id);
        let what = format!("tick {id} (event_timeout_secs: {} s)", self.config.event_timeout_secs);
        answer_outside_event(program, &ToProgram::Tick { id: &id, ts }, &id, &what, deadline, unprompted, &end).await?;
        Ok(())
    }
}

/// Writes `line` (an HTTP request or a tick, `id`) and collects what the program answers up to the line `end`
/// picks, which it returns: sends (with their key) and jobs go to the host's queue, each job on disk before the
/// next line is read. Anything else, or no end before `deadline`, is a fault of the program.
async fn answer_outside_event(
    program: &mut Program,
    line: &ToProgram<'_>,
    id: &str,
    what: &str,
    deadline: tokio::time::Instant,
    unprompted: &UnpromptedSink,
    end: &(dyn Fn(&FromProgram) -> bool + Sync),
) -> Result<FromProgram, String> {
    let missed = || format!("the program did not finish {what} in time");
    program.begin(id);
    tokio::time::timeout_at(deadline, program.write(line)).await.map_err(|_| missed())?.map_err(|e| e.message)?;
    loop {
        let next = tokio::time::timeout_at(deadline, program.lines.recv()).await.map_err(|_| missed())?;
        let message = match next {
            Some(Line::Message(message)) => message,
            Some(Line::Fault(why)) => return Err(why),
            None => return Err("the program's output ended".into()),
        };
        if end(&message) {
            program.end();
            return Ok(message);
        }
        match message {
            FromProgram::Job { key, payload } => {
                job::check(&key, &payload).map_err(|e| e.to_string())?;
                let (accepted, kept) = tokio::sync::oneshot::channel();
                let _ = unprompted.send(Unprompted::Job { key, payload, accepted: Some(accepted) });
                // On disk before the program's answer goes out (a 202 is a promise).
                if !matches!(tokio::time::timeout_at(deadline, kept).await, Ok(Ok(_))) {
                    return Err(format!("a job accepted in {what} could not be kept"));
                }
            }
            send @ FromProgram::Send { .. } => {
                let _ = unprompted.send(self::unprompted(send)?);
            }
            other => return Err(format!("the program wrote {other:?} while answering {what}")),
        }
    }
}

/// The subscriptions a program's `ready` names (`message` always among them), and the names this host does
/// not know.
fn subscriptions_of(names: &[String]) -> (Subscriptions, Vec<String>) {
    let unknown = names.iter().filter(|n| EventType::from_name(n).is_none()).cloned().collect();
    let known = names.iter().filter_map(|n| EventType::from_name(n));
    (Subscriptions::of(known.chain([EventType::Message])), unknown)
}

/// The line that hands `event` to the program.
fn to_program(event: &Event) -> ToProgram<'_> {
    let common = Common {
        id: event.event_id.as_str(),
        room_id: event.room_id.as_str(),
        sender: event.sender.as_str(),
        ts: event.timestamp_ms,
        age_ms: event.age.as_millis() as u64,
        encrypted: event.encrypted,
    };
    match &event.kind {
        EventKind::Message(message) => {
            let (mut reply_to, mut thread, mut replaces) = (None, None, None);
            match &message.relation {
                Some(Relation::Reply { to }) => reply_to = Some(to.as_str()),
                Some(Relation::Thread { root, reply_to: to }) => {
                    thread = Some(root.as_str());
                    reply_to = to.as_ref().map(|t| t.as_str());
                }
                Some(Relation::Edit { of }) => replaces = Some(of.as_str()),
                None => {}
            }
            ToProgram::Message {
                common,
                body: &message.body,
                formatted_body: message.formatted_body.as_deref(),
                msgtype: message.kind.msgtype(),
                reply_to,
                thread,
                replaces,
            }
        }
        EventKind::Reaction { to, key } => ToProgram::Reaction { common, to: to.as_str(), reaction: key },
        EventKind::Membership(m) => ToProgram::Membership {
            common,
            user_id: m.user.as_str(),
            membership: &m.membership,
            previous: m.previous.as_deref(),
            by: m.by.name(),
            reason: m.reason.as_deref(),
        },
        EventKind::State { event_type, state_key, content } => {
            ToProgram::State { common, event_type, state_key, content }
        }
        EventKind::Invite { joined } => ToProgram::Invite { common, joined: *joined },
    }
}

/// The content of a message a program asks for.
fn content(body: String, html: Option<String>, notice: bool) -> RoomMessageEventContent {
    match (html, notice) {
        (Some(html), true) => RoomMessageEventContent::notice_html(body, html),
        (Some(html), false) => RoomMessageEventContent::text_html(body, html),
        (None, true) => RoomMessageEventContent::notice_plain(body),
        (None, false) => RoomMessageEventContent::text_plain(body),
    }
}

fn room_id(text: &str) -> Result<OwnedRoomId, String> {
    OwnedRoomId::try_from(text).map_err(|_| format!("`{}` is not a room ID", crate::telemetry::scrub::for_log(text)))
}

fn event_id(text: &str) -> Result<OwnedEventId, String> {
    OwnedEventId::try_from(text).map_err(|_| format!("`{}` is not an event ID", crate::telemetry::scrub::for_log(text)))
}

fn user_id(text: &str) -> Result<OwnedUserId, String> {
    OwnedUserId::try_from(text).map_err(|_| format!("`{}` is not a user ID", crate::telemetry::scrub::for_log(text)))
}

/// A membership change the program asked for.
fn member(line: MemberLine, change: MemberChange) -> Result<Action, String> {
    Ok(Action::Member {
        room_id: room_id(&line.room_id)?,
        user_id: user_id(&line.user_id)?,
        change,
        reason: line.reason,
    })
}

/// An action the program took for event `handling`; `data_dir` is where relative file paths point.
fn to_action(answer: FromProgram, handling: &str, data_dir: &std::path::Path) -> Result<Action, String> {
    match answer {
        FromProgram::Reply { to, body, html, notice } => {
            if to != handling {
                return Err(format!(
                    "the program replied to {to} while handling {handling}; reply to the event being handled"
                ));
            }
            Ok(Action::Reply(content(body, html, notice)))
        }
        FromProgram::Send { room_id: room, body, key, html, notice } => Ok(Action::Send {
            room_id: room_id(&room)?,
            content: content(body, html, notice),
            key,
            link_previews: true,
        }),
        FromProgram::React { to, reaction } => Ok(Action::React { to: event_id(&to)?, reaction }),
        FromProgram::Edit { to, body, html, notice } => {
            Ok(Action::Edit { to: event_id(&to)?, content: content(body, html, notice) })
        }
        FromProgram::Redact { to, reason } => Ok(Action::Redact { event: event_id(&to)?, reason }),
        FromProgram::Job { key, payload } => {
            job::check(&key, &payload).map_err(|e| e.to_string())?;
            Ok(Action::Job { key, payload })
        }
        FromProgram::Invite(line) => member(line, MemberChange::Invite),
        FromProgram::Kick(line) => member(line, MemberChange::Kick),
        FromProgram::Ban(line) => member(line, MemberChange::Ban),
        FromProgram::Unban(line) => member(line, MemberChange::Unban),
        FromProgram::SetState { room_id: room, event_type, state_key, content } => {
            if !content.is_object() {
                return Err(format!("the content of `set_state` {event_type} must be an object"));
            }
            Ok(Action::SetState { room_id: room_id(&room)?, state: StateSpec { event_type, state_key, content } })
        }
        FromProgram::SetPowerLevel { room_id: room, user_id: user, level } => {
            Ok(Action::SetPowerLevel { room_id: room_id(&room)?, user_id: user_id(&user)?, level })
        }
        FromProgram::CreateRoom { room } => {
            room.check()?;
            Ok(Action::CreateRoom(Box::new(room)))
        }
        FromProgram::SendFile { room_id: room, mut file, key } => {
            file.path = data_dir.join(&file.path);
            file.check()?;
            Ok(Action::SendFile { room_id: room_id(&room)?, file: Box::new(file), key })
        }
        FromProgram::Call { .. } => unreachable!("answered by the reader"),
        FromProgram::Ready { .. } => Err("the program said `ready` again".into()),
        FromProgram::JobDone { .. } | FromProgram::JobFailed { .. } => {
            Err("a job's `job_done` or `job_failed` cannot be an action".into())
        }
        FromProgram::HttpResponse { .. } => Err("an `http_response` answers an HTTP request, not an event".into()),
        FromProgram::Log { .. } | FromProgram::Done { .. } => unreachable!("handled by the reader and the caller"),
    }
}

/// An action in a program's `job_done` (replies go to the event the job was accepted for, `handling`).
fn job_action(answer: FromProgram, handling: &str, data_dir: &std::path::Path) -> Result<Action, PluginError> {
    let answer = match answer {
        FromProgram::Log { .. } | FromProgram::Done { .. } | FromProgram::Call { .. } => {
            return Err(PluginError::permanent("a `job_done` may hold only actions (reply, send, ..., send_file)"));
        }
        FromProgram::Reply { .. } if handling.is_empty() => {
            return Err(PluginError::permanent(
                "the job was accepted outside an event and has nothing to reply to: use `send` with a room",
            ));
        }
        answer => answer,
    };
    to_action(answer, handling, data_dir).map_err(PluginError::permanent)
}

/// A `send` or `job` the program wrote outside an event: it must name its key (it makes it idempotent).
fn unprompted(message: FromProgram) -> Result<Unprompted, String> {
    match message {
        FromProgram::Send { room_id: room, body, key, html, notice } => {
            let key = key.filter(|k| !k.is_empty()).ok_or_else(|| {
                "the program wrote a `send` outside an event without a `key` (it makes the send idempotent)".to_owned()
            })?;
            if key.len() > 128 {
                return Err("a send's `key` is longer than 128 bytes".into());
            }
            Ok(Unprompted::Send { room_id: room_id(&room)?, content: Box::new(content(body, html, notice)), key })
        }
        FromProgram::Job { key, payload } => {
            job::check(&key, &payload).map_err(|e| e.to_string())?;
            Ok(Unprompted::Job { key, payload, accepted: None })
        }
        _ => unreachable!("only sends and jobs are unprompted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_problems_name_the_key() {
        let problems = ExecType.check_config(&json!({"command": "bot.py"}));
        assert_eq!(problems[0].key, "command");
        let problems = ExecType.check_config(&json!({"command": "/bin/bot", "event_timeout_secs": 600}));
        assert_eq!(problems[0].key, "event_timeout_secs");
        assert!(problems[0].message.contains("between 1 and 60"));
        let problems = ExecType.check_config(&json!({"command": "/bin/bot", "settings": [1]}));
        assert_eq!(problems[0].key, "settings");
        assert!(ExecType.check_config(&json!({"args": []}))[0].message.contains("missing field `command`"));
        assert!(ExecType.check_config(&json!({"command": "/bin/bot", "settings": {"a": 1}})).is_empty());
    }

    #[test]
    fn unprompted_sends_need_a_key_and_a_room_id() {
        let send = |key: Option<&str>, room: &str| FromProgram::Send {
            room_id: room.into(),
            body: "hi".into(),
            key: key.map(str::to_owned),
            html: None,
            notice: false,
        };
        assert!(unprompted(send(None, "!r:x")).unwrap_err().contains("without a `key`"));
        assert!(unprompted(send(Some("k"), "r")).unwrap_err().contains("not a room ID"));
        assert!(
            matches!(unprompted(send(Some("daily-1"), "!r:x")), Ok(Unprompted::Send { key, .. }) if key == "daily-1")
        );
        let job = |key: &str| FromProgram::Job { key: key.into(), payload: serde_json::json!({}) };
        assert!(unprompted(job("")).unwrap_err().contains("non-empty `key`"));
        assert!(matches!(unprompted(job("fetch-1")), Ok(Unprompted::Job { key, .. }) if key == "fetch-1"));
    }

    #[test]
    fn message_is_always_subscribed_and_unknown_names_are_reported() {
        let (subscriptions, unknown) = subscriptions_of(&["reaction".into(), "typing".into()]);
        assert_eq!(subscriptions, Subscriptions::of([EventType::Message, EventType::Reaction]));
        assert_eq!(unknown, vec!["typing".to_owned()]);
        assert_eq!(subscriptions_of(&[]).0, Subscriptions::messages());
    }

    #[test]
    fn edits_and_redactions_name_an_event() {
        let edit = FromProgram::Edit { to: "$m:x".into(), body: "new".into(), html: None, notice: true };
        assert!(
            matches!(to_action(edit, "$a", std::path::Path::new("/d")), Ok(Action::Edit { to, .. }) if to == "$m:x")
        );
        let redact = FromProgram::Redact { to: "nope".into(), reason: None };
        assert!(to_action(redact, "$a", std::path::Path::new("/d")).unwrap_err().contains("not an event ID"));
    }

    #[test]
    fn a_reply_answers_the_event_being_handled() {
        let reply = |to: &str| FromProgram::Reply { to: to.into(), body: "b".into(), html: None, notice: false };
        assert!(matches!(to_action(reply("$a"), "$a", std::path::Path::new("/d")), Ok(Action::Reply(_))));
        assert!(to_action(reply("$b"), "$a", std::path::Path::new("/d")).unwrap_err().contains("while handling $a"));
    }
}

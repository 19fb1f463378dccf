//! One run of an `exec` program: started with a cleared environment in a process group of its own, fed one
//! line per message on stdin, its stdout read as protocol lines (`reader`), its stderr logged line by line.
//! Dropping a `Program` kills its whole process group.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch};

use super::protocol::{self, FromProgram, LogLevel, MAX_LINE_BYTES};
use crate::plugin::{PluginError, UnpromptedSink};
use crate::telemetry::scrub::{escape_controls, for_log, scrubbed};

/// How long a program has to exit after `shutdown` (and its stdin closed) before it is killed.
const GRACE: Duration = Duration::from_secs(5);
/// Longest stderr line logged; the rest of it is dropped.
const MAX_STDERR_LINE: usize = 8 * 1024;
/// Environment variables passed through from the host; everything else is cleared.
const PASSED_THROUGH: &[&str] = &["PATH", "HOME", "LANG"];

/// What the stdout reader hands on: protocol messages that belong to the event being handled (or to start-up),
/// or the reason the program cannot go on.
#[derive(Debug)]
pub enum Line {
    Message(FromProgram),
    Fault(String),
}

/// How a program answered a `run_job`.
#[derive(Debug)]
pub enum JobAnswer {
    Done(Vec<FromProgram>),
    Failed { error: String, permanent: bool },
}

/// The program's input, shared by event handling and jobs (each writes whole lines).
pub type Input = Arc<tokio::sync::Mutex<Option<ChildStdin>>>;
/// The jobs the program is running, by key: its `job_done` or `job_failed` goes to the waiter.
pub type JobWaiters = Arc<Mutex<HashMap<String, oneshot::Sender<JobAnswer>>>>;

pub struct Program {
    child: Child,
    pub input: Input,
    pub lines: mpsc::UnboundedReceiver<Line>,
    /// The event being handled, shared with the reader (which clears it when it reads the event's `done`).
    current: Arc<Mutex<Option<String>>>,
    pub jobs: JobWaiters,
}

/// How the program is started.
pub struct Launch<'a> {
    pub instance: &'a str,
    pub command: &'a Path,
    pub args: &'a [String],
    pub data_dir: &'a Path,
    /// What the program's `call`s use.
    pub view: &'a crate::plugin::MatrixView,
}

impl Program {
    /// Starts the program and its readers. `fault` is set when the program fails outside an event;
    /// `unprompted` receives the sends it makes on its own.
    pub fn start(
        launch: &Launch<'_>,
        unprompted: UnpromptedSink,
        fault: Arc<watch::Sender<Option<String>>>,
    ) -> Result<Program, PluginError> {
        let mut command = Command::new(launch.command);
        command
            .args(launch.args)
            .env_clear()
            .envs(PASSED_THROUGH.iter().filter_map(|name| std::env::var_os(name).map(|v| (name, v))))
            .env("MAUBOT_PROTOCOL", protocol::VERSION.to_string())
            .env("MAUBOT_INSTANCE", launch.instance)
            .env("MAUBOT_DATA_DIR", launch.data_dir)
            .current_dir(launch.data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: restore_in_child makes only async-signal-safe calls (getrlimit, setrlimit).
        unsafe {
            // The soft limit on open files the daemon started with (it raised its own, see open_files): a
            // program that uses select(2) gets what it would get without the daemon.
            command.pre_exec(crate::open_files::restore_in_child);
        }
        let mut child = command.spawn().map_err(|e| {
            let message = format!(
                "cannot start the program {}: {e}. Set instances.{}.config.command to an executable file",
                launch.command.display(),
                launch.instance
            );
            match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => PluginError::permanent(message),
                _ => PluginError::transient(message),
            }
        })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::unbounded_channel();
        let current = Arc::new(Mutex::new(None));
        let jobs = JobWaiters::default();
        tokio::spawn(log_stderr(launch.instance.to_owned(), stderr));
        let input = Arc::new(tokio::sync::Mutex::new(child.stdin.take()));
        let reader = Reader {
            instance: launch.instance.to_owned(),
            lines: tx,
            current: current.clone(),
            jobs: jobs.clone(),
            unprompted,
            fault,
            input: input.clone(),
            view: launch.view.clone(),
            calls: Arc::new(tokio::sync::Semaphore::new(super::calls::MAX_CALLS_IN_FLIGHT)),
        };
        tokio::spawn(reader.run(stdout));
        Ok(Program { input, child, lines, current, jobs })
    }

    /// Writes one protocol line to the program.
    pub async fn write(&mut self, message: &protocol::ToProgram<'_>) -> Result<(), PluginError> {
        match write_line(&self.input, message).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.gone(e)),
        }
    }

    fn gone(&mut self, error: std::io::Error) -> PluginError {
        if error.kind() == std::io::ErrorKind::NotConnected {
            return PluginError::transient("the program's input is closed");
        }
        let status = self.child.try_wait().ok().flatten().map(|s| format!(" ({s})")).unwrap_or_default();
        PluginError::transient(format!("the program stopped reading its input{status}: {error}"))
    }

    /// Marks `event_id` as the event being handled: lines from now on belong to it until its `done`.
    pub fn begin(&self, event_id: &str) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(event_id.to_owned());
    }

    pub fn end(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// How the program ended, if it did.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the program to stop (`shutdown`, then its input closed), waits [`GRACE`], then kills its process
    /// group. Returns how it ended.
    pub async fn stop(mut self) -> String {
        if self.exit_status().is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.write(&protocol::ToProgram::Shutdown)).await;
        }
        *self.input.lock().await = None;
        match tokio::time::timeout(GRACE, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.kill_group();
                status.to_string()
            }
            _ => {
                self.kill_group();
                let _ = self.child.wait().await;
                format!("killed after not stopping within {} s", GRACE.as_secs())
            }
        }
    }

    fn kill_group(&self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on the program's own process group (it was started as its leader).
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

/// Writes one protocol line to the program's input (a whole line at a time: writers never interleave).
pub async fn write_line(input: &Input, message: &protocol::ToProgram<'_>) -> std::io::Result<()> {
    let mut input = input.lock().await;
    let stdin = input.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
    stdin.write_all(&protocol::line(message)).await?;
    stdin.flush().await
}

impl Drop for Program {
    fn drop(&mut self) {
        // Whatever the program started goes with it (kill_on_drop reaches the program alone).
        self.kill_group();
    }
}

/// Reads the program's stdout: log lines are logged, sends and jobs outside an event go to the host's queue, a
/// job's end to the job's waiter, the rest to the event being handled. The first line that is not protocol ends
/// the program (and every job it was running).
struct Reader {
    instance: String,
    lines: mpsc::UnboundedSender<Line>,
    current: Arc<Mutex<Option<String>>>,
    jobs: JobWaiters,
    unprompted: UnpromptedSink,
    fault: Arc<watch::Sender<Option<String>>>,
    /// Where the answers to calls are written.
    input: Input,
    view: crate::plugin::MatrixView,
    /// Calls waiting for their answer, at most [`super::calls::MAX_CALLS_IN_FLIGHT`].
    calls: Arc<tokio::sync::Semaphore>,
}

impl Reader {
    async fn run(self, stdout: impl AsyncRead + Unpin) {
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        let why = loop {
            line.clear();
            match (&mut stdout).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line).await {
                Ok(0) => break "the program closed its output (it exited or crashed)".to_owned(),
                Ok(_) if line.len() > MAX_LINE_BYTES => {
                    break format!("the program wrote a line longer than {MAX_LINE_BYTES} bytes");
                }
                Ok(_) => {}
                Err(e) => break format!("cannot read the program's output: {e}"),
            }
            let message = match protocol::parse(&line) {
                Ok(message) => message,
                Err(problem) => {
                    let copy = String::from_utf8_lossy(&line);
                    // Scrubbed before it is cut, so that no part of a secret survives at the cut.
                    let copy = escape_controls(&scrubbed(copy.trim_end_matches(['\n', '\r'])), 200);
                    break format!("the program wrote a line that is not protocol ({problem}): {copy}");
                }
            };
            if let Err(why) = self.route(message) {
                break why;
            }
        };
        let _ = self.lines.send(Line::Fault(why.clone()));
        // The jobs it was running hear that it ended (their waiters are dropped).
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.fault.send_replace(Some(why));
    }

    fn route(&self, message: FromProgram) -> Result<(), String> {
        if let FromProgram::Log { level, message } = &message {
            let text = for_log(message);
            match level {
                LogLevel::Debug => tracing::debug!(instance = %self.instance, "program: {text}"),
                LogLevel::Info => tracing::info!(instance = %self.instance, "program: {text}"),
                LogLevel::Warn => tracing::warn!(instance = %self.instance, "program: {text}"),
                LogLevel::Error => tracing::error!(instance = %self.instance, "program: {text}"),
            }
            return Ok(());
        }
        if let FromProgram::Call { id, method, params } = message {
            self.call(id, method, params);
            return Ok(());
        }
        if let FromProgram::JobDone { key, .. } | FromProgram::JobFailed { key, .. } = &message {
            let waiter = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
            let Some(waiter) = waiter else {
                // Given up by the host already (its deadline passed): the answer comes too late.
                tracing::warn!(instance = %self.instance, job = %for_log(key), "the program finished a job the host is not waiting for; ignored");
                return Ok(());
            };
            let answer = match message {
                FromProgram::JobDone { actions, .. } => JobAnswer::Done(actions),
                FromProgram::JobFailed { error, permanent, .. } => JobAnswer::Failed { error, permanent },
                _ => unreachable!(),
            };
            let _ = waiter.send(answer);
            return Ok(());
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match (&message, current.as_deref()) {
            (FromProgram::Ready { .. }, _) | (_, Some(_)) => {
                if matches!(&message, FromProgram::Done { to } | FromProgram::HttpResponse { to, .. } if current.as_deref() == Some(to.as_str()))
                {
                    *current = None;
                }
                let _ = self.lines.send(Line::Message(message));
                Ok(())
            }
            (FromProgram::Send { .. } | FromProgram::Job { .. }, None) => {
                let unprompted = super::unprompted(message)?;
                let _ = self.unprompted.send(unprompted);
                Ok(())
            }
            (other, None) => Err(format!("the program wrote `{}` while no event was being handled", kind(other))),
        }
    }
}

impl Reader {
    /// Answers a call beside everything else (its `result` is written whenever it is ready).
    fn call(&self, id: String, method: String, params: serde_json::Value) {
        let (input, view) = (self.input.clone(), self.view.clone());
        let permit = self.calls.clone().try_acquire_owned();
        tokio::spawn(async move {
            let answer = match permit {
                Ok(_permit) => super::calls::answer(&view, &method, params).await,
                Err(_) => Err(protocol::CallError {
                    code: "too_many_calls".into(),
                    message: format!(
                        "at most {} calls may wait for their result at once",
                        super::calls::MAX_CALLS_IN_FLIGHT
                    ),
                }),
            };
            let (value, error) = match answer {
                Ok(value) => (Some(value), None),
                Err(error) => (None, Some(error)),
            };
            // A program that is gone hears nothing: its reader reports the end.
            let _ = write_line(&input, &protocol::ToProgram::Result { to: &id, value, error }).await;
        });
    }
}

fn kind(message: &FromProgram) -> &'static str {
    match message {
        FromProgram::Ready { .. } => "ready",
        FromProgram::Reply { .. } => "reply",
        FromProgram::Send { .. } => "send",
        FromProgram::React { .. } => "react",
        FromProgram::Edit { .. } => "edit",
        FromProgram::Redact { .. } => "redact",
        FromProgram::Job { .. } => "job",
        FromProgram::HttpResponse { .. } => "http_response",
        FromProgram::JobDone { .. } => "job_done",
        FromProgram::JobFailed { .. } => "job_failed",
        FromProgram::Invite(_) => "invite",
        FromProgram::Kick(_) => "kick",
        FromProgram::Ban(_) => "ban",
        FromProgram::Unban(_) => "unban",
        FromProgram::SetState { .. } => "set_state",
        FromProgram::SetPowerLevel { .. } => "set_power_level",
        FromProgram::CreateRoom { .. } => "create_room",
        FromProgram::SendFile { .. } => "send_file",
        FromProgram::Call { .. } => "call",
        FromProgram::Log { .. } => "log",
        FromProgram::Done { .. } => "done",
    }
}

/// Logs the program's stderr line by line (scrubbed, escaped, cut).
async fn log_stderr(instance: String, stderr: impl AsyncRead + Unpin) {
    let mut stderr = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut stderr).take(MAX_STDERR_LINE as u64).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let long = !line.ends_with(b"\n") && line.len() >= MAX_STDERR_LINE;
        let text = String::from_utf8_lossy(&line);
        tracing::info!(instance = %instance, "program stderr: {}", for_log(text.trim_end_matches(['\n', '\r'])));
        if long {
            // Drop the rest of an overlong line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut stderr).take(64 * 1024).read_until(b'\n', &mut rest).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if rest.ends_with(b"\n") => break,
                    Ok(_) => {}
                }
            }
        }
    }
}

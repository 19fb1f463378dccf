//! `maubot setup`: creates the state `run` needs. First the host state (the state directory and its database),
//! then one unit of work per bot that has no state yet: a login, one device and one store per bot, and the E2EE
//! recovery key the operator keeps.
//!
//! Each bot is set up on its own (`instance.rs`) and can be resumed: what it did is recorded before every step
//! that creates something on the homeserver, so a failed or interrupted setup never strands an account, and a
//! rerun does only what is left. A bot that finished is kept (its key shown or written) even when another one
//! fails. Bots that are set up already are never touched.

mod instance;
pub mod keys;
pub mod recover;

use std::path::PathBuf;

use crate::config::Config;
use crate::state::{self, Database, Layout, StateError, StateLock};

pub use self::instance::InstanceSetupError;
pub use self::keys::{KeyFile, RecoveryKey};
pub use self::recover::{Repair, RepairError, Repaired};

/// What to set up.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// Set up only these configured instances (default: every configured instance that has no state yet).
    pub add_instances: Vec<String>,
    /// Write the recovery keys to this new file (mode 0400) instead of printing them.
    pub recovery_key_file: Option<PathBuf>,
}

/// What setup is about to do, shown to the operator before it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Instances to set up, each with what an earlier attempt already did (`None`: a new one).
    pub add: Vec<(String, Option<String>)>,
    /// Instances set up already: left alone.
    pub existing: Vec<String>,
    /// Unfinished setups of instances that are no longer configured: left alone.
    pub orphaned: Vec<String>,
    /// Whether the host state (state directory and database) is being created now.
    pub new_state: bool,
}

/// Where setup reports to: the plan first, then each bot's recovery key as soon as that bot is done.
pub trait Report {
    fn plan(&mut self, plan: &Plan);
    /// Must keep the key where the operator finds it (print it, or write it to a file) before returning `Ok`:
    /// the instance is committed only afterwards.
    fn recovery_key(&mut self, key: &RecoveryKey) -> Result<(), SetupError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path} already exists; setup will not overwrite a recovery key file. Choose another path", path = .path.display())]
    RecoveryKeyFileExists { path: PathBuf },
    #[error(
        "{path} would be written inside this systemd unit's private /tmp, which is deleted when setup ends. On NixOS \
         use `maubot-setup --recovery-key-file PATH` (it writes the file outside the sandbox), or choose a path \
         under the state directory",
        path = .path.display()
    )]
    RecoveryKeyFileInSandbox { path: PathBuf },
    #[error("cannot write the recovery key file {path}: {source}", path = .path.display())]
    RecoveryKeyFile { path: PathBuf, source: std::io::Error },
    #[error("`{id}` is already set up; nothing changed. Bots that are set up are never touched by setup")]
    InstanceAlreadySetUp { id: String },
    #[error("`{id}`: {error}")]
    Repair { id: String, error: Box<RepairError> },
    #[error("{}", describe_failures(.failed, *.done))]
    Instances { failed: Vec<(String, InstanceSetupError)>, done: usize },
}

fn describe_failures(failed: &[(String, InstanceSetupError)], done: usize) -> String {
    let mut text = format!("{} of {} bots could not be set up", failed.len(), failed.len() + done);
    for (id, error) in failed {
        // One line each, whatever the homeserver's error text holds.
        text.push_str(&format!("\n  - `{id}`: {}", crate::telemetry::scrub::for_log(&crate::error_chain(error))));
    }
    text.push_str(&format!(
        "\nWhat was done is kept{}. Fix the cause and run `{}` again: it resumes where each bot stopped.",
        if done > 0 { " (the bots that finished are set up)" } else { "" },
        state::setup_command()
    ));
    text
}

impl SetupError {
    /// Whether the fix is in the config or the state (exit code 78) rather than elsewhere.
    pub fn is_config_or_state(&self) -> bool {
        match self {
            SetupError::State(_)
            | SetupError::RecoveryKeyFileExists { .. }
            | SetupError::RecoveryKeyFileInSandbox { .. }
            | SetupError::InstanceAlreadySetUp { .. } => true,
            SetupError::Instances { failed, .. } => failed.iter().all(|(_, e)| e.is_config_or_state()),
            SetupError::Repair { error, .. } => error.is_config_or_state(),
            SetupError::RecoveryKeyFile { .. } => false,
        }
    }
}

/// Runs setup. Reports the plan, then each finished bot's recovery key, to `report`.
pub async fn setup(config: &Config, options: &SetupOptions, report: &mut dyn Report) -> Result<(), SetupError> {
    if let Some(path) = &options.recovery_key_file {
        keys::check_key_file_path(path)?;
    }
    let layout = Layout::new(config);
    let has_database = state::prepare_for_setup(&layout)?;
    let db = if has_database { Database::open(&layout.database())? } else { Database::create(&layout.database())? };
    let recorded: Vec<String> = db.instances().await?.into_iter().map(|r| r.id).collect();
    let unfinished = db.unfinished_setups().await?;
    let wanted: Vec<String> = if options.add_instances.is_empty() {
        config.instances.keys().filter(|id| !recorded.contains(id)).cloned().collect()
    } else {
        for id in &options.add_instances {
            if !config.instances.contains_key(id) {
                return Err(StateError::InstanceNotConfigured { id: id.clone() }.into());
            }
            if recorded.contains(id) {
                return Err(SetupError::InstanceAlreadySetUp { id: id.clone() });
            }
        }
        options.add_instances.clone()
    };
    let plan = Plan {
        add: wanted
            .iter()
            .map(|id| (id.clone(), unfinished.iter().find(|p| &p.id == id).map(instance::describe_progress)))
            .collect(),
        existing: recorded.iter().filter(|id| config.instances.contains_key(*id)).cloned().collect(),
        orphaned: unfinished.iter().filter(|p| !config.instances.contains_key(&p.id)).map(|p| p.id.clone()).collect(),
        new_state: !has_database,
    };
    report.plan(&plan);

    let mut failed = Vec::new();
    let mut done = 0;
    for id in &wanted {
        match set_up_one(config, &layout, &db, id, report).await {
            Ok(()) => done += 1,
            Err(Failure::Report(e)) => return Err(e),
            Err(Failure::Instance(e)) => {
                tracing::error!(instance = %id, error = %crate::error_chain(&e), "setting up the bot failed");
                failed.push((id.clone(), e));
            }
        }
    }
    if failed.is_empty() {
        tracing::info!(added = done, state_dir = %layout.root().display(), "setup complete");
        Ok(())
    } else {
        Err(SetupError::Instances { failed, done })
    }
}

enum Failure {
    Instance(InstanceSetupError),
    Report(SetupError),
}

async fn set_up_one(
    config: &Config,
    layout: &Layout,
    db: &Database,
    id: &str,
    report: &mut dyn Report,
) -> Result<(), Failure> {
    let fail = |e: StateError| Failure::Instance(InstanceSetupError::State(e));
    state::create_private_dir(&layout.instance_dir(id)).map_err(fail)?;
    let _lock = StateLock::acquire(&layout.instance_lock(id), &format!("setup of instance {id}")).map_err(fail)?;
    let finished = instance::set_up(config, layout, db, id).await.map_err(Failure::Instance)?;
    report.recovery_key(&finished.key).map_err(Failure::Report)?;
    db.commit_setup(&finished.record, finished.sync_token.as_deref()).await.map_err(fail)?;
    tracing::info!(instance = %id, user = %finished.record.user_id, device = %finished.record.device_id, "bot set up");
    Ok(())
}

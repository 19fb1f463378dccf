use std::process::ExitCode;

use clap::Parser;
use maubot::cli::{Cli, Command};
use maubot::config::{self, Sources, provenance};
use maubot::setup::{KeyFile, Plan, RecoveryKey, Report, SetupError, SetupOptions};
use maubot::systemd::{Notifier, logging};
use maubot::telemetry::Telemetry;
use maubot::{EXIT_CONFIG, backup, daemon, error_chain, setup, state};

fn main() -> ExitCode {
    // State files hold access tokens and E2EE keys: nothing this process creates is for other users.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run) {
        // Until the host installs its handlers, signals that would end the process by default do nothing.
        daemon::signals::ignore_until_handled();
    }
    maubot::memory::limit_malloc_arenas();
    maubot::memory::tune_sqlite();
    // If this fails, `run` warns when the limit in force is too low for its bots.
    let _ = maubot::open_files::raise();
    let sources = Sources::from_process(cli.config, cli.overrides);
    let purpose = match cli.command {
        Command::Run => config::Purpose::Run,
        Command::Setup(_) => config::Purpose::Setup,
        Command::CheckConfig => config::Purpose::Check,
        Command::Backup(_) | Command::Restore(_) => config::Purpose::Maintenance,
    };
    let loaded = match config::load(&sources, purpose) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("maubot: {e}");
            if matches!(cli.command, Command::Run) {
                Notifier::from_env().status(&format!("configuration error: {e}"));
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    state::set_setup_command(&loaded.config.host.setup_command);

    if let Command::CheckConfig = cli.command {
        for warning in &loaded.warnings {
            eprintln!("maubot: warning: {warning}");
        }
        print!("{}", provenance::render(&loaded.config, &loaded.figment));
        return ExitCode::SUCCESS;
    }

    match &cli.command {
        Command::Backup(args) => return backup_mode(&loaded.config, args),
        Command::Restore(args) => return restore_mode(&loaded.config, args),
        _ => {}
    }

    // Secrets known from the config are scrubbed from whatever is printed from here on (run adds the bots'
    // access tokens when it has read them).
    maubot::telemetry::scrub::install(maubot::telemetry::scrub::Scrubber::new(loaded.config.secret_values()));
    let telemetry = std::sync::Arc::new(Telemetry::default());
    logging::init(&loaded.config.logging.level, telemetry.clone());
    for warning in &loaded.warnings {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
    // Bots mostly wait on the network: two workers serve many of them. matrix-sdk's SQLite work runs on blocking
    // threads; a small cap keeps their number (and their stacks and malloc arenas) bounded with many bots. The
    // host database has a thread of its own, and password hashing a pool of its own (src/api/auth.rs).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_keep_alive(std::time::Duration::from_secs(5))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("maubot: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    match cli.command {
        Command::CheckConfig | Command::Backup(_) | Command::Restore(_) => unreachable!("handled above"),
        Command::Setup(args) if args.recover.is_some() || args.reset_identity.is_some() => {
            repair_mode(&runtime, &loaded.config, &args)
        }
        Command::Setup(args) => {
            let mut terminal = Terminal::for_setup(&args);
            let options =
                SetupOptions { add_instances: args.add_instance, recovery_key_file: args.recovery_key_file.clone() };
            let result = runtime.block_on(async {
                tokio::select! {
                    result = setup::setup(&loaded.config, &options, &mut terminal) => Some(result),
                    _ = tokio::signal::ctrl_c() => None,
                }
            });
            terminal.finish();
            match result {
                None => {
                    eprintln!(
                        "maubot setup: interrupted. What was done is kept; run `{}` again to resume.",
                        state::setup_command()
                    );
                    ExitCode::from(130)
                }
                Some(Ok(())) => ExitCode::SUCCESS,
                Some(Err(e)) => {
                    eprintln!("maubot setup: {}", for_terminal(&error_chain(&e)));
                    if e.is_config_or_state() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
                }
            }
        }
        Command::Run => {
            let notifier = Notifier::from_env();
            match runtime.block_on(daemon::run(loaded, sources, purpose, &notifier, telemetry)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("maubot run: {}", for_terminal(&error_chain(&e)));
                    notifier.status(&format!("failed: {e}"));
                    if e.is_config_or_state() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
                }
            }
        }
    }
}

/// `maubot backup`: the archive, and what it means for a bot moved away.
fn backup_mode(config: &config::Config, args: &maubot::cli::BackupArgs) -> ExitCode {
    match backup::backup(config, &args.to, args.instance.as_deref(), &args.encrypt_to) {
        Ok(written) => {
            let ids: Vec<&str> = written.manifest.instances.iter().map(|i| i.id.as_str()).collect();
            println!(
                "Backup written to {} ({} bytes, mode 0600): {} bot{} ({}), database schema {}.",
                written.path.display(),
                written.bytes,
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                ids.join(", "),
                written.manifest.schema_version
            );
            if args.encrypt_to.is_empty() {
                println!("It holds the bots' access tokens and E2EE keys: keep it as safe as the state directory.");
            } else {
                println!(
                    "It is encrypted to {} age recipient{}: restore it with `--identity FILE` (a matching identity).",
                    args.encrypt_to.len(),
                    if args.encrypt_to.len() == 1 { "" } else { "s" }
                );
            }
            for path in &written.skipped {
                println!("Left out (not a regular file): {}", path.display());
            }
            if let Some(id) = &written.disabled_here {
                println!(
                    "Bot `{id}` is now disabled here: one device must not run on two hosts. Reload maubot \
                     (`systemctl reload maubot`, or SIGHUP) so that it stops here, remove it from this host's config, \
                     then on the other host: `maubot restore --instance {id} --from {}`.",
                    written.path.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("maubot backup: {}", for_terminal(&error_chain(&e)));
            if e.is_operator_error() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
        }
    }
}

/// `maubot restore`: the state back, and what to do next.
fn restore_mode(config: &config::Config, args: &maubot::cli::RestoreArgs) -> ExitCode {
    match backup::restore(config, &args.from, args.instance.as_deref(), args.identity.as_deref()) {
        Ok(restored) => {
            let bots: Vec<String> = restored
                .instances
                .iter()
                .map(|i| format!("{} ({}, device {})", i.id, i.user_id, i.device_id))
                .collect();
            println!(
                "Restored {} into {} from {} (written by {}, database schema {}).",
                bots.join(", "),
                config.state_dir.display(),
                args.from.display(),
                restored.manifest.written_by,
                restored.manifest.schema_version
            );
            let unconfigured: Vec<&str> = restored
                .instances
                .iter()
                .map(|i| i.id.as_str())
                .filter(|id| !config.instances.contains_key(*id))
                .collect();
            if !unconfigured.is_empty() {
                println!("Not in this config yet (add them to run them): {}.", unconfigured.join(", "));
            }
            if args.instance.is_some() {
                println!("Reload maubot (`systemctl reload maubot`, or SIGHUP) to start it.");
            } else {
                println!("Start maubot (`maubot run`).");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("maubot restore: {}", for_terminal(&error_chain(&e)));
            if e.is_operator_error() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
        }
    }
}

/// `maubot setup --recover ID` / `--reset-identity ID`.
fn repair_mode(runtime: &tokio::runtime::Runtime, config: &config::Config, args: &maubot::cli::SetupArgs) -> ExitCode {
    let (id, repair) = match (&args.recover, &args.reset_identity) {
        (Some(id), _) => match read_recovery_key(id, args.recovery_key_credential.as_deref()) {
            Ok(key) => (id.clone(), setup::Repair::Recover { key }),
            Err(message) => {
                eprintln!("maubot setup: {message}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, Some(id)) => {
            eprintln!(
                "maubot setup: resetting the E2EE identity of `{id}`. Room members will see that the bot's identity \
                 changed (people who verified it must verify it again), and message keys that only the old key \
                 backup held are gone for good. Use this only when the recovery key is lost too."
            );
            (id.clone(), setup::Repair::ResetIdentity)
        }
        (None, None) => unreachable!("checked by the caller"),
    };
    if let Some(path) = &args.recovery_key_file
        && let Err(e) = setup::keys::check_key_file_path(path)
    {
        eprintln!("maubot setup: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut terminal = Terminal::for_setup(args);
    let result = runtime.block_on(async {
        tokio::select! {
            result = setup::recover::repair(config, &id, repair, &mut terminal) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    terminal.finish();
    match result {
        None => {
            eprintln!("maubot setup: interrupted. Run the same command again: it resumes with the same new device.");
            ExitCode::from(130)
        }
        Some(Ok(done)) => {
            println!("`{}` ({}) now uses device {}.", done.id, done.user_id, done.device_id);
            if args.recover.is_some() {
                println!(
                    "Its cross-signing identity was recovered and the device is signed by it; the keys of {} room{} \
                     were restored from the key backup.",
                    done.rooms_restored,
                    if done.rooms_restored == 1 { "" } else { "s" }
                );
            }
            if let Some(old) = &done.old_device {
                if done.old_device_logout_failed {
                    println!("The old device {old} could not be logged out: delete it from another client.");
                } else {
                    println!("The old device {old} was logged out.");
                }
            }
            if let Some(kept) = &done.store_kept_at {
                println!("The store that was in the way is kept at {}.", kept.display());
            }
            println!("Start or reload the service: the bot answers again.");
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("maubot setup: {}", for_terminal(&error_chain(&e)));
            if e.is_config_or_state() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
        }
    }
}

/// The recovery key for `--recover ID`: from a credential, a prompt (no echo), or standard input. Never an
/// argument (the process list and shell history would show it).
fn read_recovery_key(id: &str, credential: Option<&str>) -> Result<String, String> {
    use std::io::{IsTerminal as _, Read as _};
    let (text, from) = if let Some(name) = credential {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .ok_or_else(|| format!("--recovery-key-credential {name}: $CREDENTIALS_DIRECTORY is not set"))?;
        let path = std::path::Path::new(&dir).join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        (text, path.display().to_string())
    } else if std::io::stdin().is_terminal() {
        let text = rpassword::prompt_password(format!("Recovery key for `{id}` (not shown): "))
            .map_err(|e| format!("cannot read the recovery key: {e}"))?;
        (text, "the prompt".to_owned())
    } else {
        let mut text = String::new();
        std::io::stdin().take(1 << 20).read_to_string(&mut text).map_err(|e| format!("standard input: {e}"))?;
        (text, "standard input".to_owned())
    };
    setup::recover::key_from_input(id, &text).ok_or_else(|| {
        format!(
            "no recovery key for `{id}` in {from}: give the key setup printed (one line), or the key file setup wrote \
             (its line for `{id}` is used), e.g. `maubot setup --recover {id} < recovery-keys.txt`"
        )
    })
}

/// The operator's terminal: the plan, then each recovery key once (stdout, never the log), or the key file.
struct Terminal {
    key_file: Option<KeyFile>,
    key_file_shown_as: Option<std::path::PathBuf>,
    shown: usize,
}

impl Report for Terminal {
    fn plan(&mut self, plan: &Plan) {
        if plan.new_state {
            println!("Creating the host state (state directory and database).");
        }
        if plan.add.is_empty() {
            println!("Nothing to set up: every configured bot is set up ({}).", list(&plan.existing));
        } else {
            let adding: Vec<String> = plan
                .add
                .iter()
                .map(|(id, resume)| match resume {
                    Some(resume) => format!("{id} ({resume})"),
                    None => format!("{id} (new)"),
                })
                .collect();
            println!(
                "Setting up {} bot{}: {}.",
                adding.len(),
                if adding.len() == 1 { "" } else { "s" },
                adding.join(", ")
            );
            if !plan.existing.is_empty() {
                println!("Already set up, left alone: {}.", plan.existing.join(", "));
            }
        }
        for id in &plan.orphaned {
            println!("An unfinished setup of `{id}` is no longer configured; left alone.");
        }
    }

    fn recovery_key(&mut self, key: &RecoveryKey) -> Result<(), SetupError> {
        if let Some(file) = self.key_file.as_mut() {
            return file.write(key);
        }
        println!(
            "Recovery key for instance `{}` ({}, device {}):\n\n    {}\n",
            key.instance, key.user_id, key.device_id, key.key
        );
        self.shown += 1;
        Ok(())
    }
}

impl Terminal {
    /// Where `setup`'s recovery keys go: the key file of `--recovery-key-file`, or stdout.
    fn for_setup(args: &maubot::cli::SetupArgs) -> Self {
        Terminal {
            key_file: args.recovery_key_file.as_deref().map(KeyFile::new),
            key_file_shown_as: args.recovery_key_file_shown_as.clone(),
            shown: 0,
        }
    }

    fn finish(&self) {
        if let Some(file) = self.key_file.as_ref().filter(|f| f.written()) {
            let path = self.key_file_shown_as.as_deref().unwrap_or(file.path());
            println!("Recovery keys written to {} (mode 0400).", path.display());
        }
        if self.shown > 0 {
            println!(
                "These keys are shown only this once and are not logged. Store them somewhere safe (a password \
                 manager): with a key, the bot's encryption identity and message keys can be recovered if the state \
                 directory is lost."
            );
        }
    }
}

/// An error for the terminal: scrubbed, control characters escaped, line by line (only maubot's own line
/// breaks remain).
fn for_terminal(text: &str) -> String {
    text.split('\n').map(maubot::telemetry::scrub::for_log).collect::<Vec<_>>().join("\n")
}

fn list(ids: &[String]) -> String {
    if ids.is_empty() { "no bots are configured".to_owned() } else { ids.join(", ") }
}

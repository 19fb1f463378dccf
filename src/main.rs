use std::process::ExitCode;

use clap::Parser;
use maubot::cli::{Cli, Command};
use maubot::config::{self, Sources, provenance};
use maubot::setup::{RecoveryKey, SetupOptions};
use maubot::systemd::{Notifier, logging};
use maubot::telemetry::Telemetry;
use maubot::{EXIT_CONFIG, host, setup};

fn main() -> ExitCode {
    // State files hold access tokens and E2EE keys: nothing this process creates is for other users.
    unsafe {
        libc::umask(0o077);
    }
    maubot::memory::limit_malloc_arenas();
    maubot::memory::tune_sqlite();
    let cli = Cli::parse();
    let sources = Sources::from_process(cli.config, cli.overrides);
    let loaded = match config::load(&sources) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("maubot: {e}");
            if matches!(cli.command, Command::Run) {
                Notifier::from_env().status(&format!("configuration error: {e}"));
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    if let Command::CheckConfig = cli.command {
        for warning in &loaded.warnings {
            eprintln!("maubot: warning: {warning}");
        }
        print!("{}", provenance::render(&loaded.config, &loaded.figment));
        return ExitCode::SUCCESS;
    }

    let telemetry = std::sync::Arc::new(Telemetry::default());
    logging::init(&loaded.config.logging.level, telemetry.clone());
    for warning in &loaded.warnings {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
    // Bots mostly wait on the network: two workers serve many of them. SQLite work runs on blocking threads;
    // a small cap keeps their number (and their stacks and malloc arenas) bounded with many bots.
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
        Command::CheckConfig => unreachable!("handled above"),
        Command::Setup(args) => {
            let options =
                SetupOptions { add_instances: args.add_instance, recovery_key_file: args.recovery_key_file.clone() };
            match runtime.block_on(setup::setup(&loaded.config, &options)) {
                Ok(keys) => {
                    match &args.recovery_key_file {
                        Some(path) => {
                            println!("Recovery keys written to {} (mode 0400).", path.display())
                        }
                        None => print_recovery_keys(&keys),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("maubot setup: {}", with_causes(&e));
                    if e.is_config_or_state() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
                }
            }
        }
        Command::Run => {
            let notifier = Notifier::from_env();
            match runtime.block_on(host::run(&loaded.config, &notifier, telemetry)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("maubot run: {}", with_causes(&e));
                    notifier.status(&format!("failed: {e}"));
                    if e.is_config_or_state() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
                }
            }
        }
    }
}

/// The one place recovery keys are shown: stdout, never the log.
fn print_recovery_keys(keys: &[RecoveryKey]) {
    if keys.is_empty() {
        println!("Setup complete (no bot instances configured).");
        return;
    }
    for key in keys {
        println!(
            "Recovery key for instance `{}` ({}, device {}):\n\n    {}\n",
            key.instance, key.user_id, key.device_id, key.key
        );
    }
    println!(
        "These keys are shown only this once and are not logged. Store them somewhere safe (a password manager):\n\
         with a key, the bot's encryption identity and message keys can be recovered if the state directory is lost."
    );
}

/// An error and its causes, for people: "cannot create the client: builder error: no CA certificates found".
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

//! Command-line interface: one binary, its modes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "maubot", version, about = "Hosts Matrix bot instances: `setup` creates state, `run` expects it")]
pub struct Cli {
    /// YAML config file; repeat to layer several (later wins).
    #[arg(long = "config", short = 'c', value_name = "FILE", global = true, env = "MAUBOT_CONFIG")]
    pub config: Vec<PathBuf>,
    /// Override file (YAML or JSON) merged over the config files, e.g. the settings the NixOS module renders.
    #[arg(long = "override", value_name = "FILE", global = true)]
    pub overrides: Vec<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the state `run` needs: bot logins, one E2EE store per bot, and recovery keys (shown once).
    Setup(SetupArgs),
    /// Run the bots. Never creates state: without it, exits 78 and says how to create or restore it.
    Run,
    /// Validate the merged config and print it (secrets redacted) with the layer each value came from.
    CheckConfig,
    /// Write a consistent backup of the state (or of one bot) to a new archive file; the bots keep running.
    Backup(BackupArgs),
    /// Restore a backup: the whole host into an empty state directory, or one bot into existing state.
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The archive to write (a new file; mode 0600). It holds access tokens and E2EE keys.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Only this bot, to move it to another host: it is disabled here once the archive is written.
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Encrypt the archive to this age recipient (an `age1…` public key from age-keygen; repeatable). Restore
    /// then needs --identity with one of the matching identity files.
    #[arg(long = "encrypt-to", value_name = "RECIPIENT")]
    pub encrypt_to: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The archive to restore.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// Only this bot, into the existing state of this host, where it must not exist yet.
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// The age identity file (age-keygen's output) that decrypts an archive written with --encrypt-to.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Set up this newly configured instance in existing state (repeatable). Nothing else is changed.
    #[arg(long = "add-instance", value_name = "ID")]
    pub add_instance: Vec<String>,
    /// Write the recovery keys to this new file (mode 0400) instead of printing them.
    #[arg(long, value_name = "PATH")]
    pub recovery_key_file: Option<PathBuf>,
    /// Recover a set-up bot whose E2EE store is lost, with its recovery key (read from a prompt, from standard
    /// input, or from --recovery-key-credential; never an argument): a new device that gets the bot's identity
    /// and message keys back. Needs the bot's password. Nothing else is changed.
    #[arg(long, value_name = "ID", conflicts_with_all = ["add_instance", "reset_identity"])]
    pub recover: Option<String>,
    /// Read the recovery key for --recover from this systemd credential (a file in $CREDENTIALS_DIRECTORY).
    #[arg(long, value_name = "NAME", requires = "recover")]
    pub recovery_key_credential: Option<String>,
    /// Give a bot a new cross-signing identity, secret storage and key backup, with a new recovery key. Room
    /// members see that the bot's identity changed; keys only the old backup held are lost. Only when the
    /// recovery key is lost too.
    #[arg(long, value_name = "ID", conflicts_with = "add_instance")]
    pub reset_identity: Option<String>,
    /// Where the recovery key file ends up, for the message (the NixOS wrapper moves the file there).
    #[arg(long, value_name = "PATH", hide = true, requires = "recovery_key_file")]
    pub recovery_key_file_shown_as: Option<PathBuf>,
}

//! The `posta` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use posta::config::Config;
use posta::hooks::PluginRegistry;

#[derive(Parser)]
#[command(
    name = "posta",
    version,
    about = "A mail transfer agent that speaks Haraka's config, hooks and queue format"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run {
        /// Config directory (Haraka layout).
        #[arg(short, long, default_value = "config")]
        config: PathBuf,
    },
    /// Validate a config directory; exits non-zero on errors.
    CheckConfig {
        #[arg(short, long, default_value = "config")]
        config: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,posta=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let registry = PluginRegistry::builtin();
    match cli.command {
        Cmd::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(&format!("config error: {e}")),
            };
            match posta::server::run(&cfg, &registry) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("cannot start: {e}")),
            }
        }
        Cmd::CheckConfig { config } => match Config::load(&config).and_then(|c| registry.build(&c).map(|_| c)) {
            Ok(c) => {
                println!(
                    "config {} OK: {} plugin(s), listen {:?}",
                    config.display(),
                    c.plugins.len(),
                    c.smtp.listen
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("config error: {e}")),
        },
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("posta: {msg}");
    ExitCode::FAILURE
}

//! `neurodiff`: audit what fine-tuning changed in a language model.
mod commands;
mod staging;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "neurodiff",
    version,
    about = "Model diffing: audit what fine-tuning changed, where, and how it changes behaviour"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Audit what fine-tuning changed: BASE vs FT, or BASE plus a LoRA adapter. No servers.
    Audit(commands::audit::Args),
    /// Write model organisms: pairs with planted changes of known place and rank, with ground truth.
    Organisms(commands::organisms::Args),
    /// Task vectors: extract tau = FT - BASE, apply scaled sums of them to a base.
    #[command(subcommand)]
    TaskVector(commands::task_vector::Command),
    /// Serve the HTTP API (DATABASE_URL, REDIS_URL).
    Api(commands::serve::Args),
    /// Apply the database migrations (DATABASE_URL).
    Migrate(commands::admin::DbArgs),
    /// API tokens: `token create --team NAME`.
    #[command(subcommand)]
    Token(commands::admin::TokenCommand),
    /// Run one prompt through a model: top next-token predictions, or logits and hidden states to a file.
    Inspect(commands::inspect::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Audit(args) => commands::audit::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Migrate(args) => commands::admin::migrate(args),
        Command::Api(args) => commands::serve::run(args),
        Command::Token(command) => commands::admin::token(command),
        Command::Organisms(args) => commands::organisms::run(args),
        Command::TaskVector(command) => commands::task_vector::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

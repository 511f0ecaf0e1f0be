//! `neurodiff-server`: the API and the scheduler without libtorch, for their own images. The
//! `neurodiff` binary offers the same subcommands beside the worker and the embedded audit.
use clap::{Parser, Subcommand};
use neurodiff_server::{admin, api, services};

#[derive(Debug, Parser)]
#[command(
    name = "neurodiff-server",
    version,
    about = "NeuroDiff's API and scheduler (no libtorch)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Api(api::Args),
    /// Run the scheduler.
    Scheduler(services::SchedulerArgs),
    /// Apply the database migrations.
    Migrate(admin::DbArgs),
    /// API tokens: `token create --team NAME`.
    #[command(subcommand)]
    Token(admin::TokenCommand),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Api(args) => api::run(args),
        Command::Scheduler(args) => services::scheduler(args),
        Command::Migrate(args) => admin::migrate(args),
        Command::Token(command) => admin::token(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

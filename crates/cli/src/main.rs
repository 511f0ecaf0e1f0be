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
    /// Grade an audit's report against an organism's ground truth (writes grades.json).
    Grade(commands::grade::Args),
    /// Write model organisms: pairs with planted changes of known place and rank, with ground truth.
    Organisms(commands::organisms::Args),
    /// Task vectors: extract tau = FT - BASE, apply scaled sums of them to a base.
    #[command(subcommand)]
    TaskVector(commands::task_vector::Command),
    /// Serve the HTTP API (DATABASE_URL, REDIS_URL).
    Api(neurodiff_server::api::Args),
    /// Run the scheduler: plans, enqueues, reclaims, retries and fans in audits.
    Scheduler(neurodiff_server::services::SchedulerArgs),
    /// Run a worker: pulls layer shards from Redis and runs the analyses.
    Worker(commands::worker::WorkerArgs),
    /// Submit an audit to a NeuroDiff server; prints its id.
    Submit(commands::client::SubmitArgs),
    /// Show an audit's status and progress.
    Status(commands::client::IdArgs),
    /// Print an audit's results.json, or download all its artifacts with --out DIR.
    Results(commands::client::ResultsArgs),
    /// Wait for an audit to finish, with a progress bar; fails if the audit fails.
    Wait(commands::client::WaitArgs),
    /// Scheduled scans and their alerts on a NeuroDiff server: create, list, show, pause, delete.
    #[command(subcommand)]
    Scan(commands::scan::Command),
    /// Apply the database migrations (DATABASE_URL).
    Migrate(neurodiff_server::admin::DbArgs),
    /// API tokens: `token create --team NAME`.
    #[command(subcommand)]
    Token(neurodiff_server::admin::TokenCommand),
    /// Benchmark crosscoder training on activations in a file (tokens/s and peak memory, JSON).
    BenchDictionary(commands::bench_dictionary::Args),
    /// Print the service's OpenAPI document (what `GET /openapi.json` serves), for generating
    /// clients.
    Openapi,
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
        Command::Grade(args) => commands::grade::run(args),
        Command::Openapi => commands::openapi(),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::BenchDictionary(args) => commands::bench_dictionary::run(args),
        Command::Migrate(args) => neurodiff_server::admin::migrate(args),
        Command::Api(args) => neurodiff_server::api::run(args),
        Command::Token(command) => neurodiff_server::admin::token(command),
        Command::Scheduler(args) => neurodiff_server::services::scheduler(args),
        Command::Worker(args) => commands::worker::worker(args),
        Command::Submit(args) => commands::client::submit(args),
        Command::Status(args) => commands::client::status(args),
        Command::Results(args) => commands::client::results(args),
        Command::Wait(args) => commands::client::wait(args),
        Command::Scan(command) => commands::scan::run(command),
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

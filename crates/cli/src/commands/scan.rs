//! `neurodiff scan create|list|show|pause|resume|trigger|delete|alerts|ack`: scheduled scans and
//! their alerts on a running API (the token from --token or NEURODIFF_TOKEN, never printed).
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use comfy_table::Table;
use neurodiff_protocol::scan::{BaseMode, Rule, ScanRequest};
use neurodiff_protocol::views::{AlertList, ScanList, ScanView};

use crate::commands::client::{absolute_if_local, print_json, Client, IdArgs, Server};
use crate::commands::scope::ScopeArgs;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Watch a directory (or s3:// prefix) whose new sub-directories are checkpoints; audit each
    /// once and raise the alerts its rules predict. Prints the scan and, once, its webhook secret.
    Create(Box<CreateArgs>),
    /// The team's scans.
    List(ServerArgs),
    /// One scan with its runs and the values its rules observed.
    Show(IdArgs),
    Pause(IdArgs),
    Resume(IdArgs),
    /// Poll the scan's source now.
    Trigger(IdArgs),
    /// Delete the scan with its runs and alerts (its audits stay).
    Delete(IdArgs),
    /// The team's alerts (open ones unless --state says otherwise).
    Alerts(AlertArgs),
    /// Acknowledge an alert.
    Ack(IdArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub server: Server,
}

#[derive(Debug, clap::Args)]
pub struct AlertArgs {
    #[command(flatten)]
    pub server: Server,
    #[arg(long)]
    pub scan: Option<String>,
    /// open, acknowledged or all.
    #[arg(long, default_value = "open", value_parser = |s: &str| s.parse::<neurodiff_protocol::scan::AlertFilter>())]
    pub state: neurodiff_protocol::scan::AlertFilter,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub server: Server,
    /// The scan's name (unique in the team).
    pub name: String,
    /// The watched directory or s3://bucket/prefix.
    pub source: String,
    /// The base each checkpoint is compared with (with --base-mode previous: the first one's).
    #[arg(long)]
    pub base: Option<String>,
    /// `fixed` (always --base) or `previous` (the previous checkpoint of the source).
    #[arg(long, default_value = "fixed")]
    pub base_mode: BaseMode,
    /// The checkpoints are LoRA adapters of --base.
    #[arg(long)]
    pub adapters: bool,
    /// Poll every this many seconds (or give --cron).
    #[arg(long, conflicts_with = "cron")]
    pub every_s: Option<u64>,
    /// A cron expression (`*/10 * * * *`), in UTC.
    #[arg(long)]
    pub cron: Option<String>,
    /// Rules as a JSON file: a list of rules (docs/scans.md).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// One rule as JSON; repeatable.
    #[arg(long = "rule")]
    pub rule: Vec<String>,
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Signs the webhook bodies (default: a new random secret, printed once).
    #[arg(long, env = "NEURODIFF_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
}

fn request(args: &CreateArgs) -> anyhow::Result<ScanRequest> {
    let mut rules: Vec<Rule> = match &args.rules {
        Some(path) => serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("--rules {}", path.display()))?,
        )
        .with_context(|| format!("--rules {}: a JSON list of rules", path.display()))?,
        None => Vec::new(),
    };
    for r in &args.rule {
        rules.push(serde_json::from_str(r).with_context(|| format!("--rule `{r}`"))?);
    }
    // The audit template is what `submit` would send, without the models.
    let audit = neurodiff_protocol::AuditRequest {
        base: String::new(),
        finetuned: None,
        adapter: None,
        ..args
            .scope
            .request("-", Some("-"), None, absolute_if_local)?
    };
    let request = ScanRequest {
        name: args.name.clone(),
        source: absolute_if_local(&args.source),
        base: args.base.as_deref().map(absolute_if_local),
        base_mode: Some(args.base_mode),
        target: Some(if args.adapters {
            neurodiff_protocol::scan::TargetKind::Adapter
        } else {
            neurodiff_protocol::scan::TargetKind::Checkpoint
        }),
        audit: Some(audit),
        every_s: args.every_s.or(if args.cron.is_none() {
            Some(3600)
        } else {
            None
        }),
        cron: args.cron.clone(),
        rules,
        webhook_url: args.webhook_url.clone(),
        webhook_secret: args.webhook_secret.clone(),
    };
    // Checked here as the API will check it, so a bad flag fails before the network.
    request.validate()?;
    Ok(request)
}

fn scan_table(scans: &[ScanView]) -> Table {
    let mut t = Table::new();
    t.set_header([
        "id",
        "name",
        "source",
        "schedule",
        "paused",
        "runs",
        "open alerts",
        "last error",
    ]);
    for s in scans {
        let schedule = match (s.every_s, &s.cron) {
            (Some(e), _) => format!("every {e} s"),
            (None, Some(c)) => format!("cron {c}"),
            (None, None) => String::new(),
        };
        t.add_row([
            s.id.to_string(),
            s.name.clone(),
            s.source.clone(),
            schedule,
            s.paused.to_string(),
            s.runs_total.to_string(),
            s.alerts_open.to_string(),
            s.last_error.clone().unwrap_or_default(),
        ]);
    }
    t
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    match command {
        Command::Create(args) => {
            let body = serde_json::to_value(request(&args)?)?;
            let scan = Client::new(&args.server).json("POST", "/v1/scans", Some(&body), None)?;
            if args.webhook_url.is_some() && args.webhook_secret.is_none() {
                eprintln!(
                    "the webhook secret is shown once: keep `webhook_secret` to verify signatures"
                );
            }
            print_json(&scan)
        }
        Command::List(a) => {
            let page: ScanList = Client::new(&a.server).typed("GET", "/v1/scans", None, None)?;
            writeln!(out, "{}", scan_table(&page.scans))?;
            Ok(())
        }
        Command::Show(a) => print_json(&Client::new(&a.server).json(
            "GET",
            &format!("/v1/scans/{}", a.id),
            None,
            None,
        )?),
        Command::Pause(a) => action(&a, "pause"),
        Command::Resume(a) => action(&a, "resume"),
        Command::Trigger(a) => action(&a, "trigger"),
        Command::Delete(a) => {
            Client::new(&a.server).json("DELETE", &format!("/v1/scans/{}", a.id), None, None)?;
            writeln!(out, "deleted {}", a.id)?;
            Ok(())
        }
        Command::Alerts(a) => {
            let mut path = format!("/v1/alerts?state={}", a.state);
            if let Some(s) = &a.scan {
                path.push_str(&format!("&scan={s}"));
            }
            let page: AlertList = Client::new(&a.server).typed("GET", &path, None, None)?;
            let mut t = Table::new();
            t.set_header([
                "id",
                "severity",
                "scan",
                "rule",
                "observed",
                "message",
                "acknowledged",
            ]);
            for x in &page.alerts {
                t.add_row([
                    x.id.to_string(),
                    x.severity.to_string(),
                    x.scan_name.clone(),
                    x.rule.clone(),
                    x.observed.map_or("null".to_string(), |v| v.to_string()),
                    x.message.clone(),
                    x.acknowledged_at
                        .map_or("no".to_string(), |t| t.to_rfc3339()),
                ]);
            }
            writeln!(out, "{t}")?;
            Ok(())
        }
        Command::Ack(a) => print_json(&Client::new(&a.server).json(
            "POST",
            &format!("/v1/alerts/{}/ack", a.id),
            None,
            None,
        )?),
    }
}

fn action(a: &IdArgs, verb: &str) -> anyhow::Result<()> {
    if a.id.contains('/') {
        bail!("`{}` is not a scan id", a.id);
    }
    print_json(&Client::new(&a.server).json(
        "POST",
        &format!("/v1/scans/{}/{verb}", a.id),
        None,
        None,
    )?)
}

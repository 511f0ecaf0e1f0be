//! Client commands against a running API: `submit`, `status`, `results`, `wait`. The token comes
//! from --token or NEURODIFF_TOKEN and is never printed.
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use neurodiff_protocol::views::ArtifactList;
use neurodiff_protocol::{AuditStatus, AuditView};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::commands::scope::ScopeArgs;

#[derive(Debug, clap::Args)]
pub struct Server {
    /// The API's base URL.
    #[arg(
        long,
        env = "NEURODIFF_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// A bearer token from `neurodiff token create`.
    #[arg(long, env = "NEURODIFF_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub server: Server,
    /// The base model (as the workers see it: a path, a hub id or s3://bucket/prefix).
    pub base: String,
    /// The fine-tuned checkpoint (or give --adapter).
    pub finetuned: Option<String>,
    #[arg(long, conflicts_with = "finetuned")]
    pub adapter: Option<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Submitting again with the same key returns the same audit.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait for the audit to finish (as `neurodiff wait`).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, clap::Args)]
pub struct IdArgs {
    #[command(flatten)]
    pub server: Server,
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub server: Server,
    pub id: String,
    /// Download every artifact (results.json, report.html, plots) into this directory instead
    /// of printing results.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub server: Server,
    pub id: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_s: u64,
    #[arg(long)]
    pub quiet: bool,
}

pub(crate) struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Client {
    pub(crate) fn new(s: &Server) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Client {
            agent,
            base: s.server.trim_end_matches('/').to_string(),
            auth: format!("Bearer {}", s.token),
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", &self.auth)
            .header("content-type", "application/json");
        let request = match key {
            Some(k) => request.header("idempotency-key", k),
            None => request,
        };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut response = self
            .agent
            .run(request.body(body)?)
            .with_context(|| format!("{method} {url}"))?;
        let mut bytes = Vec::new();
        response
            .body_mut()
            .as_reader()
            .read_to_end(&mut bytes)
            .with_context(|| format!("{method} {url}: reading the response"))?;
        Ok((response.status().as_u16(), bytes))
    }

    /// A JSON response; non-2xx answers become errors carrying the server's message.
    pub(crate) fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let (status, bytes) = self.send(method, path, body, key)?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let message = value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{method} {path}: HTTP {status}: {message}");
        }
        Ok(value)
    }

    /// A documented response, read into its type (`protocol::views`, `protocol::wire`).
    pub(crate) fn typed<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<T> {
        let value = self.json(method, path, body, key)?;
        serde_json::from_value(value)
            .with_context(|| format!("{method} {path}: not the answer this client knows"))
    }
}

pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
    writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

/// A relative path to a directory or file that exists here is sent absolute (the service refuses
/// relative paths: what they name depends on the process); anything else is sent as given.
pub(crate) fn absolute_if_local(reference: &str) -> String {
    let path = std::path::Path::new(reference);
    if path.is_relative() && path.exists() {
        if let Ok(abs) = std::path::absolute(path) {
            return abs.display().to_string();
        }
    }
    reference.to_string()
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server);
    if args.finetuned.is_none() && args.adapter.is_none() {
        bail!("give a fine-tuned checkpoint (FT) or an adapter (--adapter PATH)");
    }
    let request = args.scope.request(
        &args.base,
        args.finetuned.as_deref(),
        args.adapter.as_deref(),
        absolute_if_local,
    )?;
    // Checked here as the API will check it, so a bad flag fails before the network.
    request.clone().into_spec()?;
    let body = serde_json::to_value(&request)?;
    let audit: AuditView = client.typed(
        "POST",
        "/v1/audits",
        Some(&body),
        args.idempotency_key.as_deref(),
    )?;
    let id = audit.id.to_string();
    if args.wait {
        eprintln!("submitted {id}");
        return wait_for(&client, &id, 3600, false);
    }
    writeln!(std::io::stdout(), "{id}")?;
    Ok(())
}

pub fn status(args: IdArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server);
    print_json(&client.json("GET", &format!("/v1/audits/{}", args.id), None, None)?)
}

pub fn results(args: ResultsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server);
    let Some(out) = args.out else {
        return print_json(&client.json(
            "GET",
            &format!("/v1/audits/{}/results", args.id),
            None,
            None,
        )?);
    };
    let listing: ArtifactList = client.typed(
        "GET",
        &format!("/v1/audits/{}/artifacts", args.id),
        None,
        None,
    )?;
    std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
    for a in &listing.artifacts {
        let name = a.name.as_str();
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("the server listed an artifact with an unsafe name `{name}`");
        }
        let (status, bytes) = client.send(
            "GET",
            &format!("/v1/audits/{}/artifacts/{name}", args.id),
            None,
            None,
        )?;
        if status != 200 {
            bail!("artifact {name}: HTTP {status}");
        }
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| path.display().to_string())?;
        writeln!(std::io::stdout(), "{}", path.display())?;
    }
    Ok(())
}

pub fn wait(args: WaitArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server);
    wait_for(&client, &args.id, args.timeout_s, args.quiet)
}

fn wait_for(client: &Client, id: &str, timeout_s: u64, quiet: bool) -> anyhow::Result<()> {
    let bar = super::progress_bar(
        quiet,
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} shards  {msg}",
    );
    let started = Instant::now();
    loop {
        let audit: AuditView = client.typed("GET", &format!("/v1/audits/{id}"), None, None)?;
        let status = audit.status;
        bar.set_length(audit.progress.shards_total.max(0) as u64);
        bar.set_position(audit.progress.shards_done.max(0) as u64);
        bar.set_message(status.as_str());
        match status {
            AuditStatus::Succeeded => {
                super::finish(&bar);
                print_json(&serde_json::to_value(&audit)?)?;
                return Ok(());
            }
            AuditStatus::Failed | AuditStatus::Cancelled => {
                super::finish(&bar);
                print_json(&serde_json::to_value(&audit)?)?;
                bail!(
                    "audit {id} {status}: {}",
                    audit.error.as_deref().unwrap_or("no reason given")
                );
            }
            AuditStatus::Queued | AuditStatus::Running => {}
        }
        if started.elapsed() > Duration::from_secs(timeout_s) {
            bail!("audit {id} still {status} after {timeout_s}s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

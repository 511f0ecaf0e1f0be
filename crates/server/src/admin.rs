//! Service administration: `neurodiff migrate` and `neurodiff token create|list|revoke`.
use std::io::Write;

use neurodiff_store::Db;

use crate::services::runtime;

/// Where the record of truth lives. The URL may hold a password: it is never printed or logged.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a team (the team is created if new). Printed once; only its hash is stored.
    Create {
        #[arg(long)]
        team: String,
        /// A note on what the token is for.
        #[arg(long, default_value = "")]
        label: String,
        /// The token stops working this many days after creation (default: never).
        #[arg(long)]
        ttl_days: Option<u32>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List tokens (ids, labels, use, expiry, revocation; never the secrets).
    List {
        #[arg(long)]
        team: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token by its id (from `token list` or `token create`); it stops working at once.
    Revoke {
        id: uuid::Uuid,
        #[command(flatten)]
        db: DbArgs,
    },
}

async fn connect(db: &DbArgs) -> anyhow::Result<Db> {
    // sqlx's error names the host, not the password.
    Db::connect(&db.database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the database (DATABASE_URL): {e}"))
}

pub fn migrate(db: DbArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        connect(&db).await?.migrate().await?;
        eprintln!("database schema is up to date");
        Ok(())
    })
}

pub fn token(command: TokenCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match command {
            TokenCommand::Create {
                team,
                label,
                ttl_days,
                db,
            } => {
                let db = connect(&db).await?;
                db.migrate().await?;
                let team = db.ensure_team(&team).await?;
                let expires =
                    ttl_days.map(|d| chrono::Utc::now() + chrono::Duration::days(i64::from(d)));
                let (id, token) = db.create_token_expiring(&team, &label, expires).await?;
                writeln!(std::io::stdout(), "{token}")?;
                eprintln!(
                    "token {id} for team `{}` (shown once; keep it secret){}",
                    team.name,
                    expires.map_or(String::new(), |t| format!("; expires {}", t.to_rfc3339()))
                );
            }
            TokenCommand::List { team, db } => {
                let db = connect(&db).await?;
                let mut out = std::io::stdout();
                writeln!(out, "id\tteam\tlabel\tcreated\tlast_used\texpires\trevoked")?;
                let show = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map_or("-".to_string(), |t| t.to_rfc3339())
                };
                for t in db.list_tokens(team.as_deref()).await? {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        t.id,
                        t.team,
                        t.label,
                        t.created_at.to_rfc3339(),
                        show(t.last_used_at),
                        show(t.expires_at),
                        show(t.revoked_at)
                    )?;
                }
            }
            TokenCommand::Revoke { id, db } => {
                let db = connect(&db).await?;
                let t = db.revoke_token(id).await?;
                eprintln!("token {id} of team `{}` revoked", t.team);
            }
        }
        Ok(())
    })
}

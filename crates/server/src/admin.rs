//! Service administration: `neurodiff migrate` and `neurodiff token create --team NAME`.
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
    let TokenCommand::Create { team, label, db } = command;
    runtime()?.block_on(async {
        let db = connect(&db).await?;
        db.migrate().await?;
        let team = db.ensure_team(&team).await?;
        let token = db.create_token(&team, &label).await?;
        writeln!(std::io::stdout(), "{token}")?;
        eprintln!(
            "token for team `{}` (shown once; keep it secret)",
            team.name
        );
        Ok(())
    })
}

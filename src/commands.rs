//! The subcommands of the `audit-service` binary.

use std::io::Write;
use std::process::ExitCode;

use migration::{Migrator, MigratorTrait};
use sea_orm::DatabaseConnection;
use secrecy::ExposeSecret;

use crate::config::{
    CheckpointKeyCommand, Command, DatabaseConfig, ExportFormat, KeysCommand, Parsed,
    PrivacyKeyCommand, RetentionConfig,
};
use crate::credentials::Principal;
use crate::graphql::types::AuditLogFilter;
use crate::progress::Progress;
use crate::service::capacity::memory::Memory;
use crate::service::ingest::{Erasure, Ingestor};
use crate::service::keys;
use crate::service::live::feed::Feed;
use crate::service::privacy::{self, keyring, keyring::Keyring};
use crate::service::query::export;
use crate::service::query::filter::Filter;
use crate::service::retention::maintenance;
use crate::service::tlog::chain;
use crate::service::tlog::checkpoint::Signer;
use crate::startup::Application;
use crate::{graphql, telemetry};

/// Runs what the command line asks for.
pub async fn run(parsed: Parsed) -> anyhow::Result<ExitCode> {
    if let Some(effective) = parsed.effective {
        print!("{effective}");
        return Ok(ExitCode::SUCCESS);
    }
    let cli = parsed.cli;
    let command = cli.command.unwrap_or(Command::Serve(Box::new(cli.serve)));
    let quiet = matches!(
        command,
        Command::Schema { .. } | Command::Export { .. } | Command::Config(_)
    );
    let telemetry = (!quiet).then(telemetry::init);
    let result = run_command(command).await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    result
}

async fn run_command(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Schema { subgraph: false } => print!("{}", graphql::sdl()),
        Command::Schema { subgraph: true } => print!("{}", graphql::subgraph_sdl()),
        Command::Serve(config) => {
            Application::build(&config)
                .await?
                .run_until_stopped()
                .await?
        }
        // Printed by `run`, from what the parser saw.
        Command::Config(_) => {}
        Command::Migrate(database) => migrate(&database).await?,
        Command::Verify {
            database,
            tenant,
            json,
        } => {
            return verify(&connect(&database).await?, tenant, json).await;
        }
        Command::Export {
            database,
            tenant,
            format,
            filter,
        } => export(&database, &tenant, format, filter).await?,
        Command::Keys { database, action } => keys(&connect(&database).await?, action).await?,
        Command::CheckpointKey {
            action: CheckpointKeyCommand::Create { name, out },
        } => {
            let signer = Signer::generate(&name)?;
            write_new_secret(&out, &signer.private_key())?;
            println!("{}", signer.verifier_key());
        }
        Command::Purge {
            database,
            retention,
            tenant,
            before,
        } => purge(&database, &retention, tenant.zip(before)).await?,
        Command::PrivacyKey { action } => privacy_key(action).await?,
        Command::Erase {
            database,
            tenant,
            subject,
            reason,
        } => {
            let db = connect(&database).await?;
            let ingestor = Ingestor::start(db.clone(), Feed::new(1), Default::default(), None);
            let erasure = Erasure {
                subject_id: subject,
                reason,
                requested_by: "command line".to_owned(),
            };
            let event = ingestor.erase(&tenant, erasure).await?;
            println!("{}", *event.metadata);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes, rotates or applies a privacy key file.
async fn privacy_key(action: PrivacyKeyCommand) -> anyhow::Result<()> {
    match action {
        PrivacyKeyCommand::Create { out } => {
            write_new_secret(&out, &Keyring::new_file(None)?)?;
            println!("wrote a privacy key file to {}", out.display());
        }
        PrivacyKeyCommand::Rotate { file } => {
            Keyring::load(&file)?;
            let rotated = Keyring::new_file(Some(&std::fs::read_to_string(&file)?))?;
            let next = file.with_extension("rotating");
            let _ = std::fs::remove_file(&next);
            write_new_secret(&next, &rotated)?;
            std::fs::rename(&next, &file)?;
            println!(
                "added a new first key to {}; run `privacy-key rewrap` on every server's                  database, then the older keys may be removed",
                file.display()
            );
        }
        PrivacyKeyCommand::Rewrap { database, privacy } => {
            let keyring = keyring::open(
                privacy.privacy_key_file.as_deref(),
                database.url.expose_secret(),
            )?;
            let db = connect(&database).await?;
            let rewrapped = privacy::store::rewrap(&db, &keyring).await?;
            let resealed = crate::service::streams::store::reseal(&db, &keyring).await?;
            println!(
                "rewrapped {rewrapped} data key(s) and {resealed} stream secret(s) with `{}`",
                keyring.current()
            );
        }
    }
    Ok(())
}

/// Applies pending migrations one at a time, showing progress.
async fn migrate(database: &DatabaseConfig) -> anyhow::Result<()> {
    let db = migration::connect(database.url.expose_secret(), 2).await?;
    let pending = Migrator::get_pending_migrations(&db).await?.len();
    let mut progress = Progress::new("migrate", pending as u64, "migrations");
    for _ in 0..pending {
        Migrator::up(&db, Some(1)).await?;
        progress.advance(1);
    }
    progress.finish();
    Ok(())
}

/// Writes a tenant's events (those `filter` matches) to standard output.
async fn export(
    database: &DatabaseConfig,
    tenant: &str,
    format: ExportFormat,
    filter: Option<String>,
) -> anyhow::Result<()> {
    let filter = filter
        .map(|text| export_filter(tenant, &text))
        .transpose()?;
    let db = connect(database).await?;
    let head = chain::head(&db, tenant).await?.map_or(0, |h| h.seq);
    let mut progress = Progress::new("export", head.max(0) as u64, "events");
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let reached = |seq: i64| progress.set(seq.max(0) as u64);
    let memory = Memory::default();
    export::tenant(&db, &memory, tenant, filter, format, &mut out, reached).await?;
    out.flush()?;
    progress.finish();
    Ok(())
}

/// Purges one tenant before a time, or every tenant by the retention rules.
async fn purge(
    database: &DatabaseConfig,
    retention: &RetentionConfig,
    one: Option<(String, chrono::DateTime<chrono::Utc>)>,
) -> anyhow::Result<()> {
    let db = connect(database).await?;
    let ingestor = Ingestor::start(db.clone(), Feed::new(1), Default::default(), None);
    let events = match one {
        Some((tenant, before)) => ingestor.purge(&tenant, before).await?.into_iter().collect(),
        None => {
            let tenants = chain::tenants(&db).await?;
            let mut progress = Progress::new("purge", tenants.len() as u64, "tenants");
            let now = chrono::Utc::now();
            let mut purged =
                maintenance::apply_retention(&ingestor, retention, now, tenants, || {
                    progress.advance(1)
                })
                .await?;
            progress.finish();
            purged.extend(maintenance::expire_personal(&db, &ingestor, now).await?);
            purged
        }
    };
    for event in &events {
        println!("{}: {}", event.tenant_id, *event.metadata);
    }
    println!("{} tenant(s) purged", events.len());
    Ok(())
}

/// The filter of `export --filter`, for the one tenant exported.
fn export_filter(tenant: &str, text: &str) -> anyhow::Result<Filter> {
    let json =
        serde_json::from_str(text).map_err(|err| anyhow::anyhow!("--filter is not JSON: {err}"))?;
    let mut filter = AuditLogFilter::from_json(json)?;
    anyhow::ensure!(
        filter.tenant_ids.is_none(),
        "--tenant names the tenant, not --filter"
    );
    filter.tenant_ids = Some(vec![tenant.to_owned()]);
    let owner = Principal {
        tenant_id: tenant.to_owned(),
        ..Principal::open()
    };
    Ok(filter.into_filter(&owner)?)
}

async fn connect(database: &DatabaseConfig) -> anyhow::Result<DatabaseConnection> {
    let db = migration::connect(database.url.expose_secret(), 2).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}

async fn keys(db: &DatabaseConnection, action: KeysCommand) -> anyhow::Result<()> {
    match action {
        KeysCommand::Create {
            tenant,
            scopes,
            name,
        } => {
            let (record, key) = keys::create(db, &tenant, &scopes, &name).await?;
            eprintln!(
                "created key {} for tenant {tenant}; store it now, it is not shown again:",
                record.id
            );
            println!("{key}");
        }
        KeysCommand::List => {
            for k in keys::list(db).await? {
                let state = k
                    .revoked_at
                    .map_or("active".to_owned(), |at| format!("revoked {at}"));
                println!(
                    "{}  {}…  tenant={}  name={}  scopes={}  {state}",
                    k.id, k.prefix, k.tenant_id, k.name, k.scopes
                );
            }
        }
        KeysCommand::Revoke { id } => {
            anyhow::ensure!(keys::revoke(db, id).await?, "no active key {id}");
            println!("revoked {id}");
        }
    }
    Ok(())
}

async fn verify(
    db: &DatabaseConnection,
    tenant: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let sizes = crate::service::tlog::tree::sizes(db).await?;
    let tenants: Vec<(String, u64)> = match tenant {
        Some(tenant) => {
            let size = sizes
                .into_iter()
                .find(|(t, _)| *t == tenant)
                .map_or(0, |(_, n)| n);
            vec![(tenant, size)]
        }
        None => sizes,
    };
    let mut progress = Progress::new("verify", tenants.iter().map(|(_, n)| n).sum(), "events");
    let mut results = Vec::new();
    let memory = Memory::default();
    for (tenant, _) in tenants {
        let advance = |n| progress.advance(n);
        let result = chain::verify_with_progress(db, &memory, &tenant, None, None, advance).await?;
        results.push((tenant, result));
    }
    progress.finish();
    let valid = results.iter().all(|(_, result)| result.valid);
    if json {
        let tenants: Vec<_> = results
            .iter()
            .map(|(tenant, r)| {
                serde_json::json!({
                    "tenant": tenant,
                    "valid": r.valid,
                    "checkedCount": r.checked_count,
                    "firstInvalidSequence": r.first_invalid_sequence.map(|s| s.to_string()),
                    "reason": r.reason,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "valid": valid, "tenants": tenants })
        );
    } else {
        for (tenant, result) in &results {
            match (result.first_invalid_sequence, &result.reason) {
                (Some(seq), Some(reason)) => println!(
                    "{tenant}: INVALID at sequence {seq}: {reason} ({} events checked)",
                    result.checked_count
                ),
                _ => println!("{tenant}: valid ({} events checked)", result.checked_count),
            }
        }
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes `secret` to a new file that only its owner may read; an existing file is an error,
/// so that a key is never overwritten by mistake.
pub(crate) fn write_new_secret(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    writeln!(file, "{secret}")?;
    Ok(())
}

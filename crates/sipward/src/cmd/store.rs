//! `sipward store copy`: a SQLite data dir's database into PostgreSQL, for moving one
//! node onto the database several nodes share.

use std::process::ExitCode;
use std::time::Instant;

use crate::cli::StoreCommand;
use crate::error::OperatorError;

pub async fn run(database: Option<&str>, command: StoreCommand) -> anyhow::Result<ExitCode> {
    match command {
        StoreCommand::Copy { from, to, out } => {
            let to = to.as_deref().or(database).ok_or_else(|| {
                OperatorError("give the target with --to URL (or --database)".into())
            })?;
            let url = store::PgUrl::parse(to).map_err(|e| OperatorError(format!("--to: {e}")))?;
            let data = store::DataDir::new(&from);
            let db = data.db_path();
            if !db.is_file() {
                return Err(OperatorError(format!(
                    "{} holds no sipward database ({} does not exist)",
                    from.display(),
                    db.display()
                ))
                .into());
            }
            let started = Instant::now();
            let source = store::Store::open_sqlite(&db).await?;
            let target = store::Store::open_postgres(&url).await?;
            let copied = store::copy::copy_all(&source, &target, &mut |table, rows| {
                eprintln!("copied {table}: {rows} rows");
            })
            .await;
            source.close().await;
            target.close().await;
            let copied = copied?;
            let secs = started.elapsed().as_secs_f64();
            if out.json {
                let tables: serde_json::Map<String, serde_json::Value> = copied
                    .tables
                    .iter()
                    .map(|(t, n)| (t.clone(), serde_json::json!(n)))
                    .collect();
                crate::output::json(&serde_json::json!({
                    "from": from,
                    "to": url.redacted(),
                    "rows": copied.rows(),
                    "tables": tables,
                    "seconds": secs,
                }))?;
            } else {
                println!(
                    "copied {} rows in {} tables from {} to {} in {secs:.1} s",
                    copied.rows(),
                    copied.tables.len(),
                    db.display(),
                    url
                );
                println!(
                    "every node needs this data dir's secrets key: copy {} (mode 0600) into each node's data dir",
                    data.key_path().display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

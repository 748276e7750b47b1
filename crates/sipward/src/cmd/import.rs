//! `sipward import FILE`

use std::process::ExitCode;

use accounts::Registry;

use crate::cli::ImportArgs;
use crate::error::OperatorError;
use crate::output;

pub async fn run(reg: &Registry, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(&args.file)
        .map_err(|e| OperatorError(format!("cannot read {}: {e}", args.file.display())))?;
    let is_csv = args
        .file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if !is_csv {
        return Err(OperatorError(format!(
            "{} is not a .csv file; only CSV import is supported so far",
            args.file.display()
        ))
        .into());
    }
    eprintln!("importing {} ...", args.file.display());
    let report = reg
        .import_extensions_csv(std::io::BufReader::new(file), &super::audit_log::actor())
        .await?;
    if args.out.json {
        output::json(&report)?;
    } else {
        println!(
            "imported {} extensions ({} with generated credentials: read one with `sipward ext show NUMBER --reveal`)",
            report.imported, report.with_generated_credentials
        );
    }
    Ok(ExitCode::SUCCESS)
}

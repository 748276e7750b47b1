//! `sipward tls reload | show`: the SIP TLS certificate.

use std::process::ExitCode;

use accounts::Registry;

use crate::cli::TlsCommand;
use crate::config::Config;
use crate::output;
use crate::tls::Source;

pub async fn run(reg: &Registry, c: TlsCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let data = reg.data_dir().root().to_owned();
    let source = Source::of(&config.tls, &data);
    let now = crate::clock::clock().now();
    match c {
        TlsCommand::Reload { out } => {
            // Whether a server holds this data dir (its lock), to wait for its answer.
            let lock = super::backup::serve_lock_path(&data);
            let serving = super::backup::DirLock::take(&lock, String::new).is_err();
            let answer = crate::tls::request_reload(reg, &source, now, serving).await?;
            let ok = answer["ok"].as_bool() == Some(true);
            if out.json {
                output::json(&answer)?;
            } else if ok {
                println!(
                    "certificate in force: serial {}, expires at {} (Unix time){}",
                    answer["serial"].as_str().unwrap_or_default(),
                    answer["not_after"],
                    answer["server"]
                        .as_str()
                        .map(|s| format!("; server {s}"))
                        .unwrap_or_default()
                );
            } else {
                eprintln!(
                    "error: {}; the certificate in force (serial {}) is kept",
                    answer["error"].as_str().unwrap_or("refused"),
                    answer["kept_serial"].as_str().unwrap_or_default()
                );
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        TlsCommand::Show { out } => {
            let shown = crate::tls::show(&source)?;
            if out.json {
                output::json(&shown)?;
            } else {
                let c = &shown["certificate"];
                println!("certificate  {}", source.cert.display());
                println!("subject      {}", c["subject"].as_str().unwrap_or_default());
                println!("names        {}", c["names"]);
                println!("serial       {}", c["serial"].as_str().unwrap_or_default());
                println!("not after    {} (Unix time)", c["not_after"]);
                println!("sha256       {}", c["sha256"].as_str().unwrap_or_default());
                if let Some(ca) = shown["ca"].as_object() {
                    println!(
                        "CA sha256    {}",
                        ca.get("sha256")
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

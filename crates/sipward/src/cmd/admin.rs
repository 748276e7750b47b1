//! `sipward admin passwd|token`: console administrators and API tokens.

use std::process::ExitCode;

use accounts::Registry;
use accounts::audit_log::LogEntry;
use console::admin;
use policy::generate;

use crate::cli::{AdminCommand, TokenCommand};
use crate::error::OperatorError;

const MIN_LEN: usize = 12;

/// Hashes `password` and stores it for administrator `name` (sessions end).
pub async fn set_password(reg: &Registry, name: &str, password: &str) -> anyhow::Result<()> {
    let mut rng = rand_core::UnwrapErr(rand::rngs::SysRng);
    let hash = admin::hash_password(password, &mut rng)
        .ok_or_else(|| OperatorError("the password cannot be hashed".into()))?;
    admin::store_password(reg, name, &hash, crate::clock::clock().now()).await?;
    Ok(())
}

pub async fn run(reg: &Registry, command: AdminCommand) -> anyhow::Result<ExitCode> {
    match command {
        AdminCommand::Passwd { name, mut password } => {
            if !admin::name_ok(&name) {
                return Err(OperatorError(
                    "an administrator name is 1 to 64 letters, digits or . _ - @".into(),
                )
                .into());
            }
            crate::cli::secrets_from_stdin([&mut password])?;
            let (password, shown) = match password {
                Some(p) => {
                    if p.chars().count() < MIN_LEN {
                        return Err(OperatorError(format!(
                            "a console password must be at least {MIN_LEN} characters"
                        ))
                        .into());
                    }
                    (p, false)
                }
                None => {
                    let mut rng = rand_core::UnwrapErr(rand::rngs::SysRng);
                    (
                        generate::password(&mut rng, admin::GENERATED_PASSWORD_LEN, &[])
                            .expose()
                            .to_owned(),
                        true,
                    )
                }
            };
            set_password(reg, &name, &password).await?;
            if shown {
                println!("console login: {name} / {password}  (shown once)");
            } else {
                println!("console password of {name} set");
            }
        }
        AdminCommand::Totp { name, off } => {
            let mut conn = reg.store().conn().await?;
            let (sealed, shown) = if off {
                (None, None)
            } else {
                let mut secret = [0u8; 20];
                let mut rng = rand_core::UnwrapErr(rand::rngs::SysRng);
                rand_core::Rng::fill_bytes(&mut rng, &mut secret);
                let sealed = reg.seal_admin_totp(&name, &hex::encode(secret));
                (Some(sealed), Some(admin::base32(&secret)))
            };
            if !store::console::set_admin_totp(&mut conn, &name, sealed.as_deref()).await? {
                return Err(OperatorError(format!("there is no administrator {name:?}")).into());
            }
            let subject = format!("admin:{name}");
            let entry = LogEntry {
                actor: "sipward admin totp",
                action: if off {
                    "admin.totp_off"
                } else {
                    "admin.totp_on"
                },
                subject: &subject,
                detail: "",
            };
            reg.log_in(&mut conn, crate::clock::clock().now(), entry)
                .await?;
            match shown {
                Some(b32) => {
                    println!(
                        "otpauth://totp/sipward:{name}?secret={b32}&issuer=sipward&digits=6&period=30"
                    );
                    eprintln!(
                        "TOTP turned on for {name}: add the URI (or the secret {b32}) to an authenticator app; shown once"
                    );
                }
                None => println!("TOTP turned off for {name}"),
            }
        }
        AdminCommand::Token(TokenCommand::Create { name }) => {
            if !admin::name_ok(&name) {
                return Err(OperatorError(
                    "a token name is 1 to 64 letters, digits or . _ - @".into(),
                )
                .into());
            }
            let mut rng = rand_core::UnwrapErr(rand::rngs::SysRng);
            let token = admin::token(&mut rng);
            let mut conn = reg.store().conn().await?;
            let now = crate::clock::clock().now();
            store::console::insert_token(&mut conn, &name, &admin::token_digest(&token), now)
                .await?;
            let subject = format!("token:{name}");
            let entry = LogEntry {
                actor: "sipward admin token",
                action: "api_token.created",
                subject: &subject,
                detail: "",
            };
            reg.log_in(&mut conn, now, entry).await?;
            println!("{token}");
            eprintln!(
                "API token {name} created (shown once; send it as `Authorization: Bearer TOKEN`)"
            );
        }
        AdminCommand::Unlock { name, source } => {
            let source = match source.as_deref().map(str::trim) {
                Some(s) => Some(s.parse::<std::net::IpAddr>().map_err(|_| {
                    OperatorError(format!(
                        "--source {:?} is not an IP address",
                        s.chars().take(50).collect::<String>()
                    ))
                })?),
                None => None,
            };
            let name = name.as_deref().map(str::trim);
            if name.is_none() && source.is_none() {
                return Err(OperatorError(
                    "name the administrator to unlock, or give --source IP".into(),
                )
                .into());
            }
            if let Some(n) = name
                && !admin::name_ok(n)
            {
                return Err(OperatorError(
                    "an administrator name is 1 to 64 letters, digits or . _ - @".into(),
                )
                .into());
            }
            admin::request_unlock(reg, name, source, crate::clock::clock().now()).await?;
            let what = match (name, source) {
                (Some(n), Some(ip)) => format!("administrator {n} and source {ip}"),
                (Some(n), None) => format!("administrator {n}"),
                (None, Some(ip)) => format!("source {ip}"),
                (None, None) => String::new(),
            };
            println!(
                "console lockout of {what} lifted (the running server applies it at its next login attempt)"
            );
        }
        AdminCommand::Token(TokenCommand::Remove { name }) => {
            let mut conn = reg.store().conn().await?;
            if !store::console::delete_token(&mut conn, &name).await? {
                return Err(OperatorError(format!("there is no API token {name:?}")).into());
            }
            let subject = format!("token:{name}");
            let entry = LogEntry {
                actor: "sipward admin token",
                action: "api_token.removed",
                subject: &subject,
                detail: "",
            };
            reg.log_in(&mut conn, crate::clock::clock().now(), entry)
                .await?;
            println!("API token {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `sipward ext ...`

use std::collections::HashMap;
use std::process::ExitCode;

use accounts::Registry;
use accounts::audit_log::{Change, Setting};
use accounts::extension::{ExtensionChange, ExtensionKind, ExtensionView, NewExtension};
use accounts::findings::WEAK_AT;
use policy::Finding;
use serde::Serialize;

use crate::cli::secrets_from_stdin;
use crate::cli::{ExtCommand, ExtFields};
use crate::config::Config;
use crate::output::{self, Table};
use accounts::regenerate::Selection;

#[derive(Serialize)]
struct GeneratedJson<'a> {
    auth_id: Option<&'a str>,
    password: Option<&'a str>,
    pin: Option<&'a str>,
}

#[derive(Serialize)]
struct WithFindings<'a, T: Serialize> {
    #[serde(flatten)]
    item: &'a T,
    weak: bool,
    findings: Vec<&'a Finding>,
}

/// Says where a changed password and phone login still work, so the operator knows
/// what the change left open (Re-Generate prints the same in its table).
fn print_grace(grace: &accounts::extension::GraceWindow) {
    let Some(until) = grace.until else { return };
    let left = until.saturating_sub(crate::clock::clock().now()).max(0);
    let window = format!("for {} h {} min", left / 3600, left % 3600 / 60);
    let list = |a: &[std::net::IpAddr]| {
        a.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !grace.sources.is_empty() {
        println!(
            "  old password still works {window}, from {} only",
            list(&grace.sources)
        );
    }
    if !grace.provisioning_sources.is_empty() {
        println!(
            "  old phone login still works {window}, from {} only",
            list(&grace.provisioning_sources)
        );
    }
}

fn is_weak(findings: &[&Finding]) -> bool {
    findings.iter().any(|f| f.severity >= WEAK_AT)
}

fn subject(number: &str) -> String {
    format!("ext:{number}")
}

pub async fn run(reg: &Registry, cmd: ExtCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        ExtCommand::Regenerate {
            numbers,
            weak,
            all,
            no_email,
            no_grace,
            out,
        } => {
            let selection = if all {
                Selection::All
            } else if weak {
                Selection::Weak
            } else {
                Selection::Numbers(numbers)
            };
            super::regenerate::run(reg, selection, !no_email, !no_grace, out.json, config).await
        }
        ExtCommand::Resume { number } => {
            if reg.resume(&number).await? {
                println!("outbound calling of extension {} resumed", number.trim());
            } else {
                println!("extension {} was not suspended", number.trim());
            }
            Ok(ExitCode::SUCCESS)
        }
        ExtCommand::Add {
            number,
            mut fields,
            out,
        } => {
            secrets_from_stdin([&mut fields.password, &mut fields.pin])?;
            let new = NewExtension {
                kind: if fields.fax {
                    ExtensionKind::Fax
                } else {
                    ExtensionKind::User
                },
                name: fields.name,
                email: fields.email,
                password: fields.password,
                pin: fields.pin,
                sip_id: fields.sip_id,
                auth_id: fields.auth_id,
                mac: fields.mac,
                model: fields.model,
                class_of_service: fields.class_of_service,
                transport: fields.transport,
                voicemail_after_secs: fields.voicemail_after_secs,
                voicemail_mail: fields.voicemail_mail,
            };
            let added = reg.add_extension(&number, new).await?;
            let e = &added.extension;
            super::audit_log::logged(reg, Setting::Extension, Change::Added, &e.number, "").await?;
            output::warn_findings(&format!("extension {}", e.number), &added.findings);
            let g = &added.generated;
            if out.json {
                #[derive(Serialize)]
                struct Out<'a> {
                    extension: &'a ExtensionView,
                    generated: GeneratedJson<'a>,
                    findings: &'a [Finding],
                }
                output::json(&Out {
                    extension: e,
                    generated: GeneratedJson {
                        auth_id: g.auth_id.as_deref(),
                        password: g.password.as_ref().map(|s| s.expose()),
                        pin: g.pin.as_ref().map(|s| s.expose()),
                    },
                    findings: &added.findings,
                })?;
            } else {
                println!(
                    "added {} extension {} (auth ID {})",
                    e.kind.as_str(),
                    e.number,
                    e.auth_id
                );
                if let Some(p) = &g.password {
                    println!("  SIP password:  {}", p.expose());
                }
                if let Some(p) = &g.pin {
                    println!("  voicemail PIN: {}", p.expose());
                }
                if g.password.is_some() || g.pin.is_some() {
                    println!("  (generated secrets are shown only now)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ExtCommand::Update {
            number,
            mut fields,
            user,
            no_grace,
            out,
        } => {
            secrets_from_stdin([&mut fields.password, &mut fields.pin])?;
            let kind = if fields.fax {
                Some(ExtensionKind::Fax)
            } else if user {
                Some(ExtensionKind::User)
            } else {
                None
            };
            let change = ExtensionChange {
                no_grace,
                ..change_from(fields, kind)
            };
            let detail = change.given_fields();
            let up = reg.update_extension(&number, change).await?;
            let view = &up.extension;
            super::audit_log::logged(
                reg,
                Setting::Extension,
                Change::Updated,
                &view.number,
                &detail,
            )
            .await?;
            output::warn_findings(&format!("extension {}", view.number), &up.findings);
            if out.json {
                #[derive(Serialize)]
                struct Changed<'a> {
                    #[serde(flatten)]
                    with: WithFindings<'a, ExtensionView>,
                    grace: &'a accounts::extension::GraceWindow,
                }
                let refs: Vec<&Finding> = up.findings.iter().collect();
                output::json(&Changed {
                    with: WithFindings {
                        item: view,
                        weak: is_weak(&refs),
                        findings: refs,
                    },
                    grace: &up.grace,
                })?;
            } else {
                println!("updated extension {}", view.number);
                print_grace(&up.grace);
            }
            Ok(ExitCode::SUCCESS)
        }
        ExtCommand::Remove { number } => {
            reg.remove_extension(&number).await?;
            super::audit_log::logged(reg, Setting::Extension, Change::Removed, number.trim(), "")
                .await?;
            println!("removed extension {}", number.trim());
            Ok(ExitCode::SUCCESS)
        }
        ExtCommand::List { weak, out } => {
            let exts = reg.list_extensions().await?;
            let findings = reg.audit().await?;
            let mut by_subject: HashMap<&str, Vec<&Finding>> = HashMap::new();
            for f in &findings {
                by_subject.entry(f.subject.as_str()).or_default().push(f);
            }
            let rows: Vec<(&ExtensionView, Vec<&Finding>)> = exts
                .iter()
                .map(|e| {
                    (
                        e,
                        by_subject
                            .remove(subject(&e.number).as_str())
                            .unwrap_or_default(),
                    )
                })
                .filter(|(_, f)| !weak || is_weak(f))
                .collect();
            if out.json {
                let items: Vec<WithFindings<'_, ExtensionView>> = rows
                    .into_iter()
                    .map(|(e, f)| WithFindings {
                        item: e,
                        weak: is_weak(&f),
                        findings: f,
                    })
                    .collect();
                output::json(&items)?;
            } else {
                let mut t = Table::new(&["NUMBER", "KIND", "NAME", "AUTH ID", "EMAIL", "WEAK"]);
                for (e, f) in rows {
                    let weak_rules: Vec<String> = f
                        .iter()
                        .filter(|x| x.severity >= WEAK_AT)
                        .map(|x| x.rule.check.as_str().to_owned())
                        .collect();
                    let alert = !weak_rules.is_empty();
                    t.row(
                        vec![
                            e.number.clone(),
                            e.kind.as_str().into(),
                            e.name.clone(),
                            e.auth_id.clone(),
                            e.email.clone().unwrap_or_default(),
                            if alert {
                                weak_rules.join(", ")
                            } else {
                                "-".into()
                            },
                        ],
                        alert,
                    );
                }
                t.print()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ExtCommand::Show {
            number,
            reveal,
            out,
        } => {
            let view = reg.get_extension(&number).await?;
            let all = reg.audit().await?;
            let subj = subject(&view.number);
            let findings: Vec<&Finding> = all.iter().filter(|f| f.subject == subj).collect();
            let secrets = if reveal {
                Some(reg.reveal_extension(&view.number).await?)
            } else {
                None
            };
            let registrations = reg.registrations(&view.number).await?;
            let outbound = reg.outbound_of(&view.number).await?;
            let phone = if reveal {
                reg.phone_login(&view.number).await?
            } else {
                None
            };
            let prov_path = reg.provisioning_path().await?;
            let phone_url = match (&phone, &config.settings.provisioning.base_url) {
                (Some(_), Some(base)) => Some(format!("{base}/prov/{prov_path}/")),
                _ => None,
            };
            if out.json {
                #[derive(Serialize)]
                struct Out<'a> {
                    #[serde(flatten)]
                    inner: WithFindings<'a, ExtensionView>,
                    registrations: &'a [accounts::extension::RegistrationView],
                    outbound: &'a accounts::class_of_service::OutboundView,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    password: Option<&'a str>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    pin: Option<&'a str>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    provisioning: Option<PhoneLogin<'a>>,
                }
                #[derive(Serialize)]
                struct PhoneLogin<'a> {
                    user: &'a str,
                    password: &'a str,
                    path: &'a str,
                    url: Option<&'a str>,
                }
                output::json(&Out {
                    registrations: &registrations,
                    outbound: &outbound,
                    inner: WithFindings {
                        item: &view,
                        weak: is_weak(&findings),
                        findings: findings.clone(),
                    },
                    password: secrets.as_ref().map(|s| s.password.expose()),
                    pin: secrets.as_ref().map(|s| s.pin.expose()),
                    provisioning: phone.as_ref().map(|(user, pw)| PhoneLogin {
                        user,
                        password: pw.expose(),
                        path: &prov_path,
                        url: phone_url.as_deref(),
                    }),
                })?;
            } else {
                println!("extension  {}", view.number);
                println!("kind       {}", view.kind.as_str());
                println!("name       {}", view.name);
                println!("email      {}", view.email.as_deref().unwrap_or("-"));
                println!("auth ID    {}", view.auth_id);
                println!("SIP ID     {}", view.sip_id.as_deref().unwrap_or("(blank)"));
                println!("MAC        {}", view.mac.as_deref().unwrap_or("-"));
                println!("model      {}", view.model.as_deref().unwrap_or("-"));
                let (transport, port) = reg
                    .settings()
                    .provisioning
                    .for_phone(view.transport.as_deref());
                println!(
                    "phones use {} port {port}{}",
                    transport.as_str().to_ascii_uppercase(),
                    if view.transport.is_some() {
                        ""
                    } else {
                        " (the installation's setting)"
                    }
                );
                println!(
                    "voicemail  {}",
                    if view.voicemail_after_secs == 0 {
                        "none".to_owned()
                    } else {
                        format!(
                            "after {} s ringing; messages {}",
                            view.voicemail_after_secs,
                            match (view.voicemail_mail, view.email.is_some()) {
                                (true, true) => "mailed",
                                (true, false) => "not mailed (no address)",
                                (false, _) => "not mailed",
                            }
                        )
                    }
                );
                println!(
                    "calling    {}{}",
                    outbound.class_of_service.as_str(),
                    match &outbound.suspend_reason {
                        Some(r) =>
                            format!(", SUSPENDED ({r}): `sipward ext resume {}`", view.number),
                        None => String::new(),
                    }
                );
                if let Some(s) = &secrets {
                    println!("password   {}", s.password.expose());
                    println!("PIN        {}", s.pin.expose());
                }
                if let Some((user, pw)) = &phone {
                    println!(
                        "phone login {user} / {} under {}",
                        pw.expose(),
                        phone_url
                            .as_deref()
                            .unwrap_or(&format!("/prov/{prov_path}/"))
                    );
                }
                if registrations.is_empty() {
                    println!("registered no");
                }
                for r in &registrations {
                    println!(
                        "registered {} from {} over {} (expires in {} s)",
                        r.contact, r.source, r.transport, r.expires_in
                    );
                }
                if findings.is_empty() {
                    println!("findings   none");
                } else {
                    println!("findings");
                    for f in &findings {
                        println!("  {} {}: {}", f.severity.as_str(), f.rule, f.message);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn change_from(f: ExtFields, kind: Option<ExtensionKind>) -> ExtensionChange {
    ExtensionChange {
        kind,
        name: f.name,
        email: f.email,
        password: f.password,
        pin: f.pin,
        sip_id: f.sip_id,
        auth_id: f.auth_id,
        mac: f.mac,
        model: f.model,
        class_of_service: f.class_of_service,
        transport: f.transport,
        voicemail_after_secs: f.voicemail_after_secs,
        voicemail_mail: f.voicemail_mail,
        no_grace: false,
    }
}

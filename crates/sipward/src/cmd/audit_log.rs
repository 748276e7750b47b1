//! The audit-log entries the CLI writes for the changes it makes: who made them (the
//! CLI and the login that ran it) and what changed (field names, never values).

/// Who the audit log says made a change from the command line: the CLI and the login
/// that ran it (`SUDO_USER` first, so `sudo sipward ...` is logged as the person). The
/// login is what the environment says: it attributes, it does not authenticate.
pub(super) fn actor() -> String {
    let login = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    match login {
        Some(l) => format!("sipward CLI ({})", l.chars().take(64).collect::<String>()),
        None => "sipward CLI".into(),
    }
}

/// Writes the audit-log entry for a change the CLI made, with the action id and subject
/// the console writes for the same change.
pub(super) async fn logged(
    reg: &accounts::registry::Registry,
    setting: accounts::audit_log::Setting,
    change: accounts::audit_log::Change,
    id: &str,
    detail: &str,
) -> anyhow::Result<()> {
    reg.log_setting(&actor(), setting, change, id, detail)
        .await?;
    Ok(())
}

/// The names of the fields a change gave (never their values: one may be a password).
pub(super) fn given(fields: &[(&str, bool)]) -> String {
    fields
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

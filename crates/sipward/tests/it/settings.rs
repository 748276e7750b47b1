//! Settings that weaken a defence are findings everywhere an operator looks (`audit`,
//! `advise`, `serve`'s log, the console's dashboard); values out of their sane range
//! and secrets in files others may read are refused at load.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::console::{ADMIN_PASSWORD, login};
use crate::harness::{Env, rules_of};
use crate::regenerate::curl;

/// Every defence turned down as far as the ranges allow, and mail in clear to another
/// host: the config of issue 15, with "off" where it used to say 0.
const WEAKENED: &str = "[guard]\nflood_requests = \"off\"\nban_scanners = false\ndecoys = []\n\
    auth_failures = 100\nauth_window_secs = 1\nextension_failures = \"off\"\n\
    weak_credentials = \"allow\"\n\
    [policy]\nmin_strength_score = \"off\"\n\
    [dialplan.limits]\nconcurrent_external = 1000\nattempts_per_minute = 10000\n\
    international_per_day = 100000\n\
    [mail]\nsmtp_host = \"mail.example.com\"\nsecurity = \"none\"\nfrom = \"pbx@example.com\"\n";

fn config_findings(audit: &Value) -> Vec<(String, String)> {
    audit["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["subject"] == "config")
        .map(|f| {
            (
                f["rule"].as_str().expect("rule").to_owned(),
                f["severity"].as_str().expect("severity").to_owned(),
            )
        })
        .collect()
}

#[test]
fn weakened_settings_are_findings_in_audit_advise_serve_and_the_dashboard() {
    let env = Env::with_config("");
    // Control: the defaults raise no setting finding.
    let clean = env.json(&["audit", "--json"]);
    assert!(config_findings(&clean).is_empty(), "{clean}");
    assert_eq!(env.run(&["audit", "--fail-on", "warning"]).code, 0);

    std::fs::write(env.data.join("sipward.toml"), WEAKENED).expect("config");
    let audit = env.json(&["audit", "--json"]);
    let found = config_findings(&audit);
    for (rule, severity) in [
        ("config.flood_limits_off", "warning"),
        ("config.scanner_bans_off", "warning"),
        ("config.no_decoys", "info"),
        ("config.auth_failures_lenient", "critical"),
        ("config.extension_lockout_off", "critical"),
        ("config.weak_credentials_allowed", "critical"),
        ("config.min_strength_low", "critical"),
        ("config.fraud_limit_high", "critical"),
        ("config.mail_unencrypted", "critical"),
    ] {
        assert!(
            found.contains(&(rule.to_owned(), severity.to_owned())),
            "{rule} ({severity}) missing: {found:?}"
        );
    }
    assert_eq!(
        found
            .iter()
            .filter(|(r, _)| r == "config.fraud_limit_high")
            .count(),
        3,
        "one per limit"
    );
    assert!(audit["summary"]["critical"].as_u64() >= Some(6));
    let r = env.run(&["audit", "--fail-on", "critical"]);
    assert_eq!(r.code, 1, "critical findings fail the audit: {}", r.stdout);
    assert!(r.stdout.contains("config.weak_credentials_allowed"));

    let advise = env.json(&["advise", "--json", "--sip", "0.0.0.0:5060"]);
    assert!(
        rules_of(&advise["findings"])
            .iter()
            .any(|r| r == "config.extension_lockout_off"),
        "{advise}"
    );
    assert!(
        env.ok(&["advise"])
            .contains("critical config.mail_unencrypted")
    );

    let r = env.run_with_stdin(
        &["admin", "passwd", "--password", "-"],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let server = env.serve();
    let log = server.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"event\":\"config_weakened\""))
        .collect();
    assert_eq!(
        said.len(),
        found.len(),
        "one line per finding at start:\n{log}"
    );
    assert!(said.iter().any(|l| l.contains("guard.weak_credentials")));
    let base = format!("http://{}", server.http);
    let (_, cookie) = login(&base, "127.0.0.1", ADMIN_PASSWORD);
    let cookie = format!("Cookie: sipward_session={}", cookie.expect("session"));
    let (code, page) = curl(&["-H", &cookie], &format!("{base}/"));
    assert_eq!(code, 200);
    assert!(page.contains("Settings that weaken a defence"), "{page}");
    assert!(page.contains("guard.extension_failures") && page.contains("mail.security"));
    server.stop();
}

#[test]
fn out_of_range_values_are_refused_at_load_with_the_range() {
    let env = Env::with_config("");
    for (config, says) in [
        (
            "[guard]\nflood_window_secs = 9223372036854775807\n",
            "guard.flood_window_secs must be between 1 and 86400 seconds (a day)",
        ),
        ("[guard]\nflood_requests = 0\n", "write \"off\""),
        ("[guard]\nextension_failures = 0\n", "write \"off\""),
        (
            "[guard]\nauth_failures = 10000\nauth_window_secs = 1\n",
            "guard.auth_failures must be between 1 and 100",
        ),
        (
            "[guard]\nauth_window_secs = 604800\n",
            "guard.auth_window_secs must be between 1 and 86400",
        ),
        ("[policy]\nmin_strength_score = 0\n", "write \"off\""),
        (
            "[dialplan.limits]\nconcurrent_external = 100000\n",
            "dialplan.limits.concurrent_external must be between 1 and 1000",
        ),
        (
            "[mail]\nsmtp_host = \"mail.example.com\"\nsecurity = \"none\"\nfrom = \"pbx@example.com\"\nusername = \"pbx\"\npassword_env = \"HOME\"\n",
            "in clear",
        ),
    ] {
        std::fs::write(env.data.join("sipward.toml"), config).expect("config");
        let err = env.fails(&["ext", "list"], 2);
        assert!(err.contains(says), "{config}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    }
}

#[test]
fn a_config_file_holding_a_secret_must_be_private() {
    let env = Env::with_config("");
    let config = env.data.join("sipward.toml");
    let mail =
        "[mail]\nsmtp_host = \"127.0.0.1\"\nfrom = \"pbx@example.com\"\nusername = \"pbx\"\n";
    std::fs::write(&config, format!("{mail}password = \"Smtp-Secret-9\"\n")).expect("config");
    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chmod(&config, 0o644);
    let err = env.fails(&["ext", "list"], 2);
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains("Smtp-Secret-9"), "the secret is never quoted");
    chmod(&config, 0o600);
    env.ok(&["ext", "list"]);
    // Or the password lives in a private file of its own, and the config may be read.
    let secret = env.path("smtp.secret");
    std::fs::write(&secret, "Smtp-Secret-9\n").expect("secret");
    chmod(&secret, 0o600);
    std::fs::write(
        &config,
        format!("{mail}password_file = \"{}\"\n", secret.display()),
    )
    .expect("config");
    chmod(&config, 0o644);
    env.ok(&["ext", "list"]);
}

//! Attacks on the settings side of issue 15: values at the edges of their ranges, and
//! settings that weaken a defence without `sipward audit` saying so. The operator (or
//! whoever can write the config) is the party here; the harm is a door opened quietly.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::harness::Env;

fn config_rules(audit: &Value) -> Vec<(String, String)> {
    audit["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["subject"] == "config")
        .map(|f| {
            (
                f["rule"].as_str().unwrap_or("").to_owned(),
                f["field"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn off_spelled_any_other_way_is_refused() {
    let env = Env::with_config("");
    for (field, value) in [
        ("[guard]\nflood_requests", "\"OFF\""),
        ("[guard]\nflood_requests", "\"Off\""),
        ("[guard]\nflood_requests", "\" off\""),
        ("[guard]\nflood_requests", "\"false\""),
        ("[guard]\nflood_requests", "false"),
        ("[guard]\nflood_requests", "\"0\""),
        ("[guard]\nflood_requests", "-1"),
        ("[guard]\nflood_requests", "0.5"),
        ("[guard]\nextension_failures", "\"disabled\""),
        ("[guard]\nextension_failures", "\"none\""),
        ("[guard]\nextension_failures", "-9223372036854775808"),
        ("[policy]\nmin_strength_score", "\"OFF\""),
        ("[policy]\nmin_strength_score", "-1"),
        ("[provisioning]\ngrace_secs", "\"off\""),
        ("[provisioning]\ngrace_secs", "-1"),
        ("[provisioning]\ngrace_secs", "9223372036854775807"),
        ("[guard]\nprovisioning_probes", "0"),
        ("[guard]\nprovisioning_probes", "\"off\""),
        ("[guard]\ntrusted_factor", "0"),
        ("[guard]\nban_secs", "-1"),
        ("[guard]\nban_secs", "0"),
    ] {
        let config = format!("{field} = {value}\n");
        std::fs::write(env.data.join("sipward.toml"), &config).expect("config");
        let err = env.fails(&["ext", "list"], 2);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{config}: one sentence: {err}"
        );
    }
    // Control: the one spelling is taken (and is a finding).
    std::fs::write(
        env.data.join("sipward.toml"),
        "[guard]\nflood_requests = \"off\"\n",
    )
    .expect("config");
    env.ok(&["ext", "list"]);
    let audit = env.json(&["audit", "--json"]);
    assert!(
        config_rules(&audit)
            .iter()
            .any(|(r, _)| r == "config.flood_limits_off")
    );
}

#[test]
fn every_ban_shortened_to_a_minute_is_a_finding() {
    // `ban_secs` below ten minutes is reported; the other bans may each be cut from a
    // day or a week to a minute (their range allows 60 s) and the audit says nothing:
    // a provisioning prober (ten guesses, then a day's ban by default) is back every
    // minute, a decoy or scanner hit costs a minute instead of a week, and repeat
    // offenders are never held longer.
    let env = Env::with_config("[guard]\nban_secs = 60\n");
    let control = config_rules(&env.json(&["audit", "--json"]));
    assert!(
        control.iter().any(|(_, f)| f == "guard.ban_secs"),
        "control: a short ban_secs is reported: {control:?}"
    );
    std::fs::write(
        env.data.join("sipward.toml"),
        "[guard]\nprovisioning_ban_secs = 60\ndecoy_ban_secs = 60\nscanner_ban_secs = 60\n\
         flood_ban_secs = 60\nrepeat_ban_secs = 60\n",
    )
    .expect("config");
    let found = config_rules(&env.json(&["audit", "--json"]));
    let missing: Vec<&str> = [
        "guard.provisioning_ban_secs",
        "guard.decoy_ban_secs",
        "guard.scanner_ban_secs",
        "guard.flood_ban_secs",
        "guard.repeat_ban_secs",
    ]
    .into_iter()
    .filter(|field| !found.iter().any(|(_, f)| f == field))
    .collect();
    assert!(
        missing.is_empty(),
        "bans cut to a minute that audit does not report: {missing:?} (found {found:?})"
    );
}

#[test]
fn a_registration_interval_has_a_ceiling() {
    // Out-of-range values are refused at load. `registrar.max_expires` has none: a
    // binding may be granted for 136 years, and a binding lives in the running
    // registrar until its own expiry once no reload drops it.
    let env = Env::with_config("[registrar]\nmax_expires = 86400\n");
    env.ok(&["ext", "list"]);
    std::fs::write(
        env.data.join("sipward.toml"),
        "[registrar]\nmin_expires = 60\nmax_expires = 4294967295\ndefault_expires = 4294967295\n",
    )
    .expect("config");
    let r = env.run(&["ext", "list"]);
    assert_eq!(
        r.code, 2,
        "registrar.max_expires = 4294967295 (136 years) was taken: {}{}",
        r.stdout, r.stderr
    );
}

#[test]
fn a_backup_passphrase_file_others_may_read_is_refused() {
    // The SMTP password's file must be 0600; the backup passphrase (which opens every
    // backup, and with it every sealed SIP password) is read from a file of any mode.
    let env = Env::with_config("");
    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    let secret = env.path("open.secret");
    std::fs::write(&secret, "Backup-Passphrase-Open-To-All-42\n").expect("secret");
    chmod(&secret, 0o644);
    // Control: the same file as the SMTP password's is refused.
    std::fs::write(
        env.data.join("sipward.toml"),
        format!(
            "[mail]\nsmtp_host = \"127.0.0.1\"\nfrom = \"pbx@example.com\"\nusername = \"pbx\"\npassword_file = \"{}\"\n",
            secret.display()
        ),
    )
    .expect("config");
    let err = env.fails(&["ext", "list"], 2);
    assert!(err.contains("0644"), "{err}");
    std::fs::write(
        env.data.join("sipward.toml"),
        format!(
            "[backup]\ninterval_secs = 86400\npassphrase_file = \"{}\"\n",
            secret.display()
        ),
    )
    .expect("config");
    let r = env.run(&["ext", "list"]);
    assert_eq!(
        r.code, 2,
        "a world-readable backup passphrase file was taken: {}{}",
        r.stdout, r.stderr
    );
}

#[test]
fn wider_trust_for_logged_in_sources_is_a_finding() {
    // A source where any account once logged in gets `trusted_factor` times the flood
    // limits, and its failures for that account stop counting, for `trusted_secs`.
    // Raising either (up to 1000× and 30 days) widens the door for whoever holds one
    // account, and the audit says nothing.
    let env = Env::with_config("[guard]\nflood_requests = 5000\nflood_window_secs = 10\n");
    let control = config_rules(&env.json(&["audit", "--json"]));
    assert!(
        control.iter().any(|(_, f)| f == "guard.flood_requests"),
        "control: a flood limit raised 100× is reported: {control:?}"
    );
    std::fs::write(
        env.data.join("sipward.toml"),
        "[guard]\ntrusted_factor = 1000\ntrusted_secs = 2592000\n",
    )
    .expect("config");
    let found = config_rules(&env.json(&["audit", "--json"]));
    let missing: Vec<&str> = ["guard.trusted_factor", "guard.trusted_secs"]
        .into_iter()
        .filter(|field| !found.iter().any(|(_, f)| f == field))
        .collect();
    assert!(
        missing.is_empty(),
        "trust widened without a finding: {missing:?} (found {found:?})"
    );
}

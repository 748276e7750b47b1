//! Extensions and the audit through the CLI.

use serde_json::Value;

use crate::harness::{Env, mode_of, rules_of};

#[test]
fn a_new_data_dir_has_a_private_key_and_a_strong_fax_888() {
    let env = Env::new();
    let r = env.run(&["ext", "list", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("created data dir"), "{}", r.stderr);
    assert_eq!(mode_of(&env.data.join("secrets.key")), 0o600);
    assert_eq!(mode_of(&env.data), 0o700);
    assert_eq!(mode_of(&env.data.join("sipward.db")), 0o600);

    let list: Value = serde_json::from_str(&r.stdout).expect("json");
    let fax = &list[0];
    assert_eq!(fax["number"], "888");
    assert_eq!(fax["kind"], "fax");
    assert_eq!(fax["weak"], false, "{fax}");
    assert_eq!(fax["sip_id"], Value::Null);

    let shown = env.json(&["ext", "show", "888", "--reveal", "--json"]);
    let pw = shown["password"].as_str().expect("password");
    assert!(
        pw.len() >= 16 && pw.chars().all(|c| c.is_ascii_alphanumeric()),
        "{pw}"
    );
    assert!(pw.chars().any(|c| c.is_ascii_digit()) && pw.chars().any(|c| c.is_ascii_lowercase()));
    let pin = shown["pin"].as_str().expect("pin");
    assert!(
        pin.len() == 6 && pin.bytes().all(|b| b.is_ascii_digit()),
        "{pin}"
    );
    assert_ne!(shown["auth_id"], "888");

    // A second command does not create anything again.
    let again = env.run(&["ext", "list"]);
    assert!(!again.stderr.contains("created"), "{}", again.stderr);
}

#[test]
fn add_generates_strong_credentials_shown_once() {
    let env = Env::new();
    let added = env.json(&[
        "ext",
        "add",
        "1001",
        "--name",
        "Ann Smith",
        "--email",
        "ann@example.com",
        "--json",
    ]);
    let g = &added["generated"];
    let pw = g["password"].as_str().expect("generated password");
    let pin = g["pin"].as_str().expect("generated pin");
    let auth = g["auth_id"].as_str().expect("generated auth id");
    assert!(pw.len() >= 16);
    assert_ne!(auth, "1001");
    assert_eq!(
        added["extension"]["sip_id"],
        Value::Null,
        "SIP ID is blank by default"
    );
    assert!(rules_of(&added["findings"]).is_empty(), "{added}");

    // Shown once: `show` and `list` never print secrets unless asked.
    let shown = env.ok(&["ext", "show", "1001", "--json"]);
    let listed = env.ok(&["ext", "list", "--json"]);
    let audited = env.ok(&["audit", "--json"]);
    for text in [&shown, &listed, &audited] {
        assert!(
            !text.contains(pw) && !text.contains(&format!("\"{pin}\"")),
            "secret leaked:\n{text}"
        );
    }
    let revealed = env.json(&["ext", "show", "1001", "--reveal", "--json"]);
    assert_eq!(revealed["password"], pw);
    assert_eq!(revealed["pin"], pin);

    // Human output prints them too, once.
    let human = env.ok(&["ext", "add", "1002"]);
    assert!(
        human.contains("SIP password:") && human.contains("voicemail PIN:"),
        "{human}"
    );
}

#[test]
fn weak_credentials_are_stored_with_a_warning_and_listed_as_weak() {
    let env = Env::new();
    env.ok(&["ext", "add", "1001", "--email", "a@example.com"]);
    let r = env.run(&[
        "ext",
        "add",
        "1002",
        "--password",
        "1002",
        "--pin",
        "1002",
        "--sip-id",
        "1002",
        "--auth-id",
        "1002",
    ]);
    assert_eq!(r.code, 0, "weak but stored: {}", r.stderr);
    for rule in [
        "ext.password_equals_number",
        "ext.pin_equals_number",
        "ext.sip_id_equals_number",
        "ext.auth_id_equals_number",
    ] {
        assert!(
            r.stderr.contains(rule),
            "warning names {rule}:\n{}",
            r.stderr
        );
    }
    assert!(
        !r.stdout.contains("SIP password:"),
        "given secrets are not echoed"
    );

    let weak = env.json(&["ext", "list", "--weak", "--json"]);
    let numbers: Vec<&str> = weak
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["number"].as_str().expect("n"))
        .collect();
    assert_eq!(numbers, vec!["1002"]);
    let human = env.ok(&["ext", "list", "--weak"]);
    assert!(
        human.contains("password_equals_number") && !human.contains("\x1b["),
        "no colour when not a terminal:\n{human}"
    );
}

#[test]
fn audit_reports_stable_fields_and_fails_on_a_level() {
    let env = Env::new();
    // A fresh data dir has only 888 (no email: an info finding).
    let fresh = env.json(&["audit", "--json"]);
    assert_eq!(rules_of(&fresh["findings"]), vec!["ext.no_email"]);
    assert_eq!(env.run(&["audit", "--fail-on", "warning"]).code, 0);
    assert_eq!(env.run(&["audit", "--fail-on", "info"]).code, 1);

    env.ok(&["ext", "add", "1001", "--password", "1001", "--pin", "0000"]);
    let report = env.json(&["audit", "--json"]);
    let f = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["rule"] == "ext.password_equals_number")
        .expect("finding");
    assert_eq!(f["severity"], "critical");
    assert_eq!(f["subject"], "ext:1001");
    assert_eq!(f["field"], "password");
    assert!(f["message"].as_str().expect("message").len() > 20);
    assert!(rules_of(&report["findings"]).contains(&"ext.pin_trivial".to_string()));
    assert!(report["summary"]["critical"].as_u64().expect("n") >= 2);
    assert_eq!(env.run(&["audit", "--fail-on", "critical"]).code, 1);
    let human = env.run(&["audit"]);
    assert!(
        human.stdout.contains("ext.password_equals_number") && human.stdout.contains("critical,"),
        "{}",
        human.stdout
    );
    assert_eq!(
        human.code, 0,
        "without --fail-on findings are reported, not failed"
    );
}

#[test]
fn reuse_across_extensions_is_found() {
    let env = Env::new();
    for n in ["1001", "1002"] {
        env.ok(&[
            "ext",
            "add",
            n,
            "--password",
            "Tq4Lm9Wz2Rp8Xc7Vb",
            "--email",
            "a@example.com",
        ]);
    }
    let report = env.json(&["audit", "--json"]);
    let reused: Vec<&str> = report["findings"]
        .as_array()
        .expect("a")
        .iter()
        .filter(|f| f["rule"] == "ext.password_reused")
        .map(|f| f["subject"].as_str().expect("s"))
        .collect();
    assert_eq!(reused, vec!["ext:1001", "ext:1002"]);
}

#[test]
fn update_changes_only_the_given_fields() {
    let env = Env::new();
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--name",
        "Ann",
        "--email",
        "ann@example.com",
        "--mac",
        "00:15:65:aa:bb:cc",
    ]);
    let before = env.json(&["ext", "show", "1001", "--reveal", "--json"]);
    let r = env.run(&["ext", "update", "1001", "--password", "1001"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("ext.password_equals_number"),
        "{}",
        r.stderr
    );
    let after = env.json(&["ext", "show", "1001", "--reveal", "--json"]);
    assert_eq!(after["password"], "1001");
    for same in ["pin", "name", "email", "auth_id", "mac"] {
        assert_eq!(after[same], before[same], "{same} unchanged");
    }
    assert_eq!(after["mac"], "001565aabbcc", "MAC normalised");
    env.ok(&[
        "ext",
        "update",
        "1001",
        "--email",
        "",
        "--name",
        "Ann Smith",
        "--fax",
    ]);
    let cleared = env.json(&["ext", "show", "1001", "--json"]);
    assert_eq!(cleared["email"], Value::Null);
    assert_eq!(cleared["name"], "Ann Smith");
    assert_eq!(cleared["kind"], "fax");
    env.ok(&["ext", "update", "1001", "--user"]);
    assert_eq!(env.json(&["ext", "show", "1001", "--json"])["kind"], "user");
}

#[test]
fn secrets_can_come_from_standard_input() {
    let env = Env::new();
    let r = env.run_with_stdin(
        &["ext", "add", "1001", "--password", "-", "--pin", "-"],
        "Zq8xLmTr4wPyK7vB2\n739164\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let shown = env.json(&["ext", "show", "1001", "--reveal", "--json"]);
    assert_eq!(shown["password"], "Zq8xLmTr4wPyK7vB2");
    assert_eq!(shown["pin"], "739164");
    let r = env.run_with_stdin(&["ext", "add", "1002", "--password", "-"], "");
    assert_eq!(r.code, 2, "empty stdin is an input error: {}", r.stderr);
}

#[test]
fn remove_deletes_and_a_second_remove_is_an_input_error() {
    let env = Env::new();
    env.ok(&["ext", "add", "1001"]);
    env.ok(&["ext", "remove", "1001"]);
    let err = env.fails(&["ext", "remove", "1001"], 2);
    assert!(err.contains("extension 1001 does not exist"), "{err}");
    env.fails(&["ext", "show", "1001"], 2);
    env.fails(&["ext", "update", "1001", "--name", "x"], 2);
}

#[test]
fn a_realm_change_recomputes_the_digests() {
    let env = Env::new();
    env.ok(&["ext", "add", "1001"]);
    let cfg = env.path("sipward.toml");
    std::fs::write(&cfg, "[sip]\ndomain = \"pbx.example.com\"\n").expect("config");
    let r = env.run(&["--config", cfg.to_str().expect("utf8"), "ext", "list"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("re-computed the digests of 2 accounts"),
        "{}",
        r.stderr
    );
    let again = env.run(&["--config", cfg.to_str().expect("utf8"), "ext", "list"]);
    assert!(
        !again.stderr.contains("re-computed"),
        "only once: {}",
        again.stderr
    );
}

#[test]
fn the_domain_from_the_config_file_feeds_the_rules() {
    let env = Env::new();
    env.ok(&["ext", "list"]);
    std::fs::write(
        env.data.join("sipward.toml"),
        "[sip]\ndomain = \"pbx.example.com\"\n",
    )
    .expect("config");
    env.ok(&["ext", "add", "1001", "--password", "pbx.example.com1001"]);
    let rules = rules_of(&env.json(&["audit", "--json"])["findings"]);
    assert!(
        rules.contains(&"ext.password_contains_domain".to_string()),
        "{rules:?}"
    );
}

//! Gateways and providers through the CLI.

use crate::harness::{Env, rules_of};

#[test]
fn gateways_are_audited_like_extensions() {
    let env = Env::new();
    let added = env.json(&[
        "gateway",
        "add",
        "gw1",
        "--vendor",
        "grandstream",
        "--ext",
        "4001",
        "--auth-id",
        "admin",
        "--password",
        "admin",
        "--host",
        "192.0.2.10",
        "--json",
    ]);
    let rules = rules_of(&added["findings"]);
    for r in [
        "gateway.factory_default_login",
        "gateway.password_equals_auth_id",
        "gateway.password_common",
    ] {
        assert!(rules.contains(&r.to_string()), "{r}: {rules:?}");
    }
    env.ok(&[
        "gateway",
        "add",
        "gw2",
        "--vendor",
        "patton",
        "--ext",
        "4002",
        "--auth-id",
        "gw2in",
        "--password",
        "4002",
        "--host",
        "gw2.example.com:5060",
    ]);
    let report = env.json(&["audit", "--json"]);
    let all = rules_of(&report["findings"]);
    assert!(
        all.contains(&"gateway.password_equals_number".to_string()),
        "{all:?}"
    );

    // A strong gateway has no findings.
    env.ok(&[
        "gateway",
        "update",
        "gw1",
        "--password",
        "Rk8wQz3mTn6vLp2Xs",
        "--auth-id",
        "gw1in",
    ]);
    let shown = env.json(&["gateway", "show", "gw1", "--json"]);
    assert!(rules_of(&shown["findings"]).is_empty(), "{shown}");
    assert_eq!(shown["auth_id"], "gw1in");

    let listed = env.json(&["gateway", "list", "--json"]);
    assert_eq!(listed.as_array().expect("a").len(), 2);
    env.ok(&["gateway", "remove", "gw2"]);
    env.fails(&["gateway", "remove", "gw2"], 2);
    assert!(!env.ok(&["gateway", "list"]).contains("gw2"));
}

#[test]
fn numbers_and_auth_ids_are_unique_across_extensions_and_gateways() {
    let env = Env::new();
    env.ok(&["ext", "add", "1001", "--auth-id", "ann1001x"]);
    let before = env.snapshot();
    let err = env.fails(
        &[
            "gateway",
            "add",
            "gw1",
            "--vendor",
            "generic",
            "--ext",
            "1001",
            "--auth-id",
            "gwx",
            "--password",
            "Rk8wQz3mTn6vLp2Xs",
            "--host",
            "gw.example.com",
        ],
        2,
    );
    assert!(
        err.contains("number 1001 is already used by ext:1001"),
        "{err}"
    );
    let err = env.fails(
        &[
            "gateway",
            "add",
            "gw1",
            "--vendor",
            "generic",
            "--ext",
            "4001",
            "--auth-id",
            "ann1001x",
            "--password",
            "Rk8wQz3mTn6vLp2Xs",
            "--host",
            "gw.example.com",
        ],
        2,
    );
    assert!(
        err.contains("auth ID ann1001x is already used by ext:1001"),
        "{err}"
    );
    env.ok(&[
        "gateway",
        "add",
        "gw1",
        "--vendor",
        "generic",
        "--ext",
        "4001",
        "--auth-id",
        "gwx",
        "--password",
        "Rk8wQz3mTn6vLp2Xs",
        "--host",
        "gw.example.com",
    ]);
    let err = env.fails(&["ext", "add", "4001"], 2);
    assert!(err.contains("already used by gateway:gw1"), "{err}");
    let err = env.fails(&["ext", "update", "1001", "--auth-id", "gwx"], 2);
    assert!(err.contains("already used by gateway:gw1"), "{err}");
    let err = env.fails(
        &[
            "gateway",
            "add",
            "gw1",
            "--vendor",
            "generic",
            "--ext",
            "4002",
            "--auth-id",
            "gwy",
            "--password",
            "Rk8wQz3mTn6vLp2Xs",
            "--host",
            "gw.example.com",
        ],
        2,
    );
    assert!(err.contains("gateway name gw1"), "{err}");
    assert_eq!(before["ext"], env.snapshot()["ext"]);
}

#[test]
fn providers_are_audited() {
    let env = Env::new();
    let added = env.json(&[
        "provider",
        "add",
        "itsp",
        "--registrar",
        "sip.carrier.net",
        "--auth-id",
        "55512345",
        "--password",
        "55512345",
        "--json",
    ]);
    assert!(
        rules_of(&added["findings"]).contains(&"provider.password_equals_auth_id".to_string()),
        "{added}"
    );
    env.ok(&[
        "provider",
        "update",
        "itsp",
        "--password",
        "Wm3kR8zQ2vLt9Pn5",
    ]);
    let shown = env.json(&["provider", "show", "itsp", "--json"]);
    assert!(rules_of(&shown["findings"]).is_empty(), "{shown}");
    let err = env.fails(
        &[
            "provider",
            "add",
            "itsp",
            "--registrar",
            "x.example.com",
            "--auth-id",
            "a",
            "--password",
            "Wm3kR8zQ2vLt9Pn5",
        ],
        2,
    );
    assert!(err.contains("provider name itsp"), "{err}");
    let err = env.fails(
        &["provider", "add", "p2", "--registrar", "x.example.com"],
        2,
    );
    assert!(err.contains("--auth-id"), "{err}");
    env.ok(&["provider", "remove", "itsp"]);
    assert_eq!(
        env.json(&["provider", "list", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn the_audit_reports_a_route_whose_rewrite_raises_the_class() {
    let env = Env::new();
    env.ok(&[
        "gateway",
        "add",
        "pstn",
        "--vendor",
        "generic",
        "--ext",
        "4801",
        "--auth-id",
        "gw-pstn-48",
        "--password",
        "Rk8wQz3mTn6vLp2Xs",
        "--host",
        "192.0.2.10",
    ]);
    // A route that matches national numbers and sends them as they are: no finding.
    env.ok(&[
        "route",
        "add",
        "us",
        "--pattern",
        "1NXXNXXXXXX",
        "--trunk",
        "pstn",
    ]);
    let clean = env.json(&["audit", "--json"]);
    assert!(
        !rules_of(&clean["findings"]).contains(&"route.rewrite_raises_class".to_string()),
        "{clean}"
    );
    // The README's `00.` route under the default (NANP) plan: `00...` is no number
    // abroad as dialled, but leaves as `+...`, a call abroad.
    env.ok(&[
        "route",
        "add",
        "world",
        "--pattern",
        "00.",
        "--trunk",
        "pstn",
        "--strip",
        "2",
        "--prepend",
        "+",
    ]);
    let report = env.json(&["audit", "--json"]);
    let finding = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["rule"] == "route.rewrite_raises_class")
        .unwrap_or_else(|| panic!("no route finding: {report}"));
    assert_eq!(finding["subject"], "route:world");
    assert_eq!(finding["severity"], "critical");
    assert_eq!(env.run(&["audit", "--fail-on", "critical"]).code, 1);
}

/// Every setting the CLI changes lands in the audit log with the action id and subject
/// the console writes for the same change (`accounts::audit_log::Setting`), field names
/// but never a value that may be a secret; a refused change logs nothing.
#[test]
fn cli_changes_are_audit_logged_like_the_consoles() {
    let env = Env::new();
    let secret = "Gw7-pQ2v-Xk9m-Lr4t";
    let gateway = |verb: &str, extra: &[&str]| {
        let mut args = vec!["gateway", verb, "gw1"];
        args.extend_from_slice(extra);
        env.ok(&args);
    };
    gateway(
        "add",
        &[
            "--vendor",
            "patton",
            "--ext",
            "4001",
            "--auth-id",
            "gw1",
            "--password",
            secret,
            "--host",
            "192.0.2.10",
        ],
    );
    gateway("update", &["--password", "Zz8-fresh-Qq7-Pp1x"]);
    env.ok(&[
        "route",
        "add",
        "world",
        "--pattern",
        "011.",
        "--trunk",
        "gw1",
    ]);
    env.ok(&["ext", "add", "2001"]);
    env.ok(&["did", "add", "+4930555123", "--ext", "2001"]);
    env.ok(&["did", "remove", "+4930555123"]);
    env.ok(&["route", "remove", "world"]);
    gateway("remove", &[]);
    env.ok(&["ban", "add", "192.0.2.66", "--reason", "seen guessing"]);
    env.ok(&["ban", "remove", "192.0.2.66"]);
    env.ok(&["allow", "add", "198.51.100.0/24", "--note", "office"]);
    // Control: a change the workflow refuses writes no entry.
    env.fails(&["gateway", "remove", "no-such-gateway"], 2);

    let log = env.json(&["log", "--json"]);
    let entries: Vec<(String, String, String)> = log
        .as_array()
        .expect("log")
        .iter()
        .filter(|e| e["action"] != "admin.password_set") // the harness's set-up
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            assert!(s("actor").starts_with("sipward CLI"), "{e}");
            (s("action"), s("subject"), s("detail"))
        })
        .collect();
    let want = [
        ("gateway.added", "gateway:gw1", ""),
        ("gateway.updated", "gateway:gw1", "password"),
        ("route.added", "route:world", ""),
        ("ext.added", "ext:2001", ""),
        ("did.added", "did:4930555123", ""),
        ("did.removed", "did:4930555123", ""),
        ("route.removed", "route:world", ""),
        ("gateway.removed", "gateway:gw1", ""),
        ("ban.added", "192.0.2.66", "seen guessing"),
        ("ban.lifted", "192.0.2.66", ""),
        ("allow.added", "198.51.100.0/24", "office"),
    ];
    let got: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|(a, s, d)| (a.as_str(), s.as_str(), d.as_str()))
        .collect();
    assert_eq!(got, want);
    assert!(
        !log.to_string().contains(secret),
        "a password reached the log"
    );
}

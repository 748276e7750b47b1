//! Bad input and a broken environment: one clear sentence, exit code 2, nothing changed.

use std::os::unix::fs::PermissionsExt;

use crate::harness::Env;

#[test]
fn bad_extension_input_changes_nothing() {
    let env = Env::new();
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--mac",
        "00:15:65:aa:bb:cc",
        "--sip-id",
        "ann",
    ]);
    let before = env.snapshot();
    let cases: &[(&[&str], &str)] = &[
        (&["ext", "add", "12a4"], "digits only"),
        (&["ext", "add", "123456789012"], "2 to 10 digits"),
        (&["ext", "add", "1001"], "already used by ext:1001"),
        (&["ext", "add", "1002", "--email", "bob@"], "invalid email"),
        (
            &[
                "ext",
                "add",
                "1002",
                "--email",
                "bob@example.com\nBcc: x@example.com",
            ],
            "invalid email",
        ),
        (
            &["ext", "add", "1002", "--mac", "00:15:65:aa:bb"],
            "MAC address",
        ),
        (
            &["ext", "add", "1002", "--mac", "001565AABBCC"],
            "MAC address 001565aabbcc is already used by ext:1001",
        ),
        (
            &["ext", "add", "1002", "--sip-id", "ann"],
            "SIP ID ann is already used by ext:1001",
        ),
        (
            &["ext", "add", "1002", "--name", "Evil\r\nInjected: 1"],
            "control characters",
        ),
        (&["ext", "add", "1002", "--pin", "12ab"], "voicemail PIN"),
        (
            &["ext", "add", "1002", "--password", "with\u{7}bell"],
            "printable ASCII",
        ),
        (&["ext", "add", "1002", "--auth-id", "a b"], "auth ID"),
        (&["ext", "update", "1001", "--email", "x"], "invalid email"),
        (
            &[
                "gateway",
                "add",
                "gw1",
                "--vendor",
                "acme",
                "--ext",
                "4001",
                "--auth-id",
                "g",
                "--password",
                "Rk8wQz3mTn6vLp2Xs",
                "--host",
                "h.example.com",
            ],
            "not a known vendor",
        ),
        (
            &[
                "gateway",
                "add",
                "gw1",
                "--vendor",
                "generic",
                "--ext",
                "4001",
                "--auth-id",
                "g",
                "--password",
                "Rk8wQz3mTn6vLp2Xs",
                "--host",
                "bad host",
            ],
            "host",
        ),
        (
            &[
                "gateway",
                "add",
                "gw 1",
                "--vendor",
                "generic",
                "--ext",
                "4001",
                "--auth-id",
                "g",
                "--password",
                "Rk8wQz3mTn6vLp2Xs",
                "--host",
                "h.example.com",
            ],
            "gateway name",
        ),
        (&["audit", "--fail-on", "fatal"], "invalid value"),
    ];
    for (args, expect) in cases {
        let err = env.fails(args, 2);
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in:\n{err}"
        );
        assert!(
            !err.contains("bell") && !err.contains("Rk8wQz3m"),
            "never echo a secret: {err}"
        );
    }
    assert_eq!(before, env.snapshot());
}

#[test]
fn a_key_readable_by_others_is_refused() {
    let env = Env::new();
    env.ok(&["ext", "add", "1001"]);
    let key = env.data.join("secrets.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = env.fails(&["ext", "list"], 2);
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(
        env.ok(&["ext", "list"]).contains("1001"),
        "works again once fixed"
    );
}

#[test]
fn a_missing_or_wrong_key_is_refused_not_replaced() {
    let env = Env::new();
    env.ok(&["ext", "add", "1001"]);
    let key = env.data.join("secrets.key");
    let original = std::fs::read(&key).expect("key");
    std::fs::remove_file(&key).expect("rm");
    let err = env.fails(&["ext", "list"], 2);
    assert!(
        err.contains("secrets key") && err.contains("missing"),
        "{err}"
    );
    assert!(!key.exists(), "no new key was made over existing secrets");

    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).expect("other key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = env.fails(&["ext", "list"], 2);
    assert!(err.contains("does not match this database"), "{err}");

    std::fs::write(&key, "garbage").expect("garbage key");
    let err = env.fails(&["ext", "list"], 2);
    assert!(err.contains("not a sipward key"), "{err}");

    std::fs::write(&key, original).expect("restore");
    assert!(env.ok(&["ext", "list"]).contains("1001"));
}

#[test]
fn a_corrupt_database_is_refused() {
    let env = Env::new();
    env.ok(&["ext", "add", "1001"]);
    let db = env.data.join("sipward.db");
    let mut bytes = std::fs::read(&db).expect("db");
    // Overwrite the SQLite header: the file is no longer a database.
    bytes[..16].copy_from_slice(b"not a database!!");
    std::fs::write(&db, &bytes).expect("corrupt");
    let err = env.fails(&["ext", "list"], 2);
    assert!(err.contains("is not a valid sipward database"), "{err}");
}

#[test]
fn a_bad_config_file_is_refused() {
    let env = Env::new();
    let cfg = env.path("c.toml");
    for (content, expect) in [
        ("[sip]\nrelam = \"x\"\n", "unknown field"),
        ("[policy]\nmin_password_length = 3\n", "min_password_length"),
        ("not toml at all [", "config file"),
    ] {
        std::fs::write(&cfg, content).expect("cfg");
        let err = env.fails(&["--config", cfg.to_str().expect("utf8"), "ext", "list"], 2);
        assert!(err.contains(expect), "{content:?}: {err}");
    }
    let err = env.fails(
        &[
            "--config",
            env.path("none.toml").to_str().expect("utf8"),
            "ext",
            "list",
        ],
        2,
    );
    assert!(err.contains("cannot read the config file"), "{err}");
}

#[test]
fn a_data_path_that_is_a_file_is_refused() {
    let env = Env::new();
    std::fs::write(&env.data, "x").expect("file");
    let err = env.fails(&["ext", "list"], 2);
    assert!(err.contains("not a directory"), "{err}");
}

//! Backups, restores, security epochs and the exposure advisor, with the real age, zstd,
//! tar and sqlite3 tools: they open sipward's backups by hand, and they make the
//! "older" and "newer" backups an earlier or later sipward would have written.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::Env;
use crate::peers::{eventually_or, require, sipp_from};

const CONFIG: &str = "[sip]\ndomain = \"pbx.example.com\"\ndigest_algorithms = [\"MD5\"]\n\
                      [provisioning]\nbase_url = \"http://pbx.example.com:8080\"\n";

/// An age identity made by `age-keygen`: (identity file, recipient).
pub(crate) fn keygen(env: &Env, name: &str) -> (PathBuf, String) {
    let path = env.path(name);
    let out = Command::new(require("age-keygen", "age"))
        .arg("-o")
        .arg(&path)
        .output()
        .expect("age-keygen");
    assert!(out.status.success());
    let text = std::fs::read_to_string(&path).expect("key");
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_owned();
    (path, public)
}

fn sh(script: &str) -> String {
    for tool in [
        ("age", "age"),
        ("zstd", "zstd"),
        ("tar", "tar"),
        ("sqlite3", "sqlite3"),
    ] {
        require(tool.0, tool.1);
    }
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// How [`repack`] signs the archive it writes.
#[derive(Clone, Copy)]
pub(crate) enum Sign<'a> {
    /// With the signing key of this data dir: what that install would have written.
    As(&'a Env),
    /// Keep the original `manifest.sig`: a forger without the key.
    KeepOld,
    /// No signature, as format 1 (before backups were signed).
    Unsigned,
}

/// Opens `src` with the age CLI, lets `edit` change the files and the manifest, and
/// packs it again (checksums recomputed, signed as `sign` says) for `public`: what
/// another sipward version, or a forger, would have written.
pub(crate) fn repack(
    src: &Path,
    key: &Path,
    public: &str,
    dest: &Path,
    sign: Sign<'_>,
    edit: impl FnOnce(&Path, &mut Value),
) {
    let dir = dest.with_extension("d");
    std::fs::create_dir_all(&dir).expect("dir");
    sh(&format!(
        "age -d -i {} {} | zstd -dc | tar -xf - -C {}",
        q(key),
        q(src),
        q(&dir)
    ));
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    edit(&dir, &mut manifest);
    let mut names = vec!["manifest.json".to_owned()];
    for f in manifest["files"].as_array_mut().expect("files") {
        let path = f["path"].as_str().expect("path").to_owned();
        let bytes = std::fs::read(dir.join(&path)).expect("file");
        f["size"] = bytes.len().into();
        f["sha256"] = hex::encode(Sha256::digest(&bytes)).into();
        names.push(format!("'{path}'"));
    }
    if let Sign::Unsigned = sign {
        manifest["format"] = 1.into();
    }
    let text = manifest.to_string();
    std::fs::write(dir.join("manifest.json"), &text).expect("manifest");
    match sign {
        Sign::As(env) => {
            let signing = store::signing::SigningKey::load(&env.data.join("backup-signing.key"))
                .expect("load")
                .expect("the install has a signing key");
            let sig = serde_json::json!({
                "algorithm": "ed25519",
                "public_key": hex::encode(signing.signer().to_bytes()),
                "signature": hex::encode(signing.sign(text.as_bytes())),
            });
            std::fs::write(dir.join("manifest.sig"), sig.to_string()).expect("sig");
            names.insert(1, "manifest.sig".into());
        }
        Sign::KeepOld => names.insert(1, "manifest.sig".into()),
        Sign::Unsigned => {}
    }
    sh(&format!(
        "tar -cf - -C {} {} | zstd -q -c | age -r {public} -o {}",
        q(&dir),
        names.join(" "),
        q(dest)
    ));
}

/// The fingerprint of the key `env`'s backups are signed with.
pub(crate) fn signer_of(env: &Env) -> String {
    store::signing::SigningKey::load(&env.data.join("backup-signing.key"))
        .expect("load")
        .expect("the install has a signing key")
        .signer()
        .fingerprint()
}

/// Every file under `dir`: relative path to SHA-256.
fn files_under(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("rel").display().to_string();
                out.insert(
                    rel,
                    hex::encode(Sha256::digest(std::fs::read(&p).expect("read"))),
                );
            }
        }
    }
    out
}

/// A data dir with a bit of everything: phones with files, a gateway, a provider, a
/// ban and an allow-list entry.
fn populated() -> Env {
    let env = Env::with_config(CONFIG);
    // An operator's own welcome mail.
    let builtin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../accounts/templates/welcome.txt"
    );
    let text = std::fs::read_to_string(builtin).expect("template") + "\nThe IT desk: 555-0100\n";
    std::fs::create_dir_all(env.data.join("templates")).expect("templates");
    std::fs::write(env.data.join("templates/welcome.txt"), text).expect("template");
    for (n, mac) in [("2001", "001565aa0001"), ("2002", "001565aa0002")] {
        env.ok(&[
            "ext",
            "add",
            n,
            "--mac",
            mac,
            "--model",
            "Yealink T46U",
            "--email",
            "a@example.com",
        ]);
    }
    env.ok(&[
        "gateway",
        "add",
        "gw1",
        "--vendor",
        "generic",
        "--ext",
        "2900",
        "--auth-id",
        "gw-1-k8",
        "--password",
        "Zq8xLmTr4wPyK7vB2y",
        "--host",
        "127.0.0.7",
    ]);
    env.ok(&[
        "provider",
        "add",
        "carrier",
        "--registrar",
        "127.0.0.8:5060",
        "--auth-id",
        "acct-1",
        "--password",
        "Zq8xLmTr4wPyK7vB2x",
    ]);
    env.ok(&["ban", "add", "203.0.113.7", "--for", "7d"]);
    env.ok(&["allow", "add", "192.0.2.0/24"]);
    env
}

fn state(env: &Env) -> Value {
    let mut s = env.snapshot();
    s["ban"] = env.json(&["ban", "list", "--json"]);
    s["allow"] = env.json(&["allow", "list", "--json"]);
    s
}

#[test]
fn a_backup_restores_everything_and_phones_register_with_the_same_credentials() {
    let env = populated();
    let (key, public) = keygen(&env, "key.txt");
    let file = env.path("b.swbak");
    let f = file.to_str().expect("utf8");
    let made = env.json(&[
        "backup",
        "create",
        "--recipient",
        &public,
        "--out",
        f,
        "--json",
    ]);
    assert_eq!(made["security_epoch"], 1);
    assert!(made["bytes"].as_u64().expect("bytes") > 0);
    assert_eq!(crate::harness::mode_of(&file) & 0o777, 0o600);
    // Signed with the install's own key, kept in the data dir (0600) and in no backup.
    let signer = made["signer"].as_str().expect("signer").to_owned();
    assert_eq!(signer, signer_of(&env));
    assert_eq!(
        crate::harness::mode_of(&env.data.join("backup-signing.key")) & 0o777,
        0o600
    );

    // The age, zstd and tar tools open it by hand, manifest first.
    let listing = sh(&format!(
        "age -d -i {} {} | zstd -dc | tar -tf -",
        q(&key),
        q(&file)
    ));
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(names[0], "manifest.json", "{listing}");
    assert_eq!(names[1], "manifest.sig", "{listing}");
    assert!(!names.contains(&"backup-signing.key"), "{listing}");
    for want in [
        "sipward.db",
        "secrets.key",
        "sipward.toml",
        "provisioning/001565aa0001.cfg",
    ] {
        assert!(names.contains(&want), "{want} missing:\n{listing}");
    }
    let verified = env.json(&[
        "backup",
        "verify",
        f,
        "--identity",
        key.to_str().expect("utf8"),
        "--json",
    ]);
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["signer"], signer.as_str());
    assert_eq!(verified["own_key"], true);

    // Another install does not know the key: it shows the fingerprint and refuses
    // until the operator vouches for it.
    let copy = Env::new();
    let id = key.to_str().expect("utf8");
    let err = copy.fails(&["backup", "restore", f, "--identity", id], 2);
    assert!(
        err.contains(&format!(
            "signed by key {signer}, which is not this install's"
        )) && err.contains(&format!("--trust-signer {signer}")),
        "{err}"
    );
    assert!(!copy.data.exists(), "a refused restore creates nothing");
    let err = copy.fails(
        &[
            "backup",
            "restore",
            f,
            "--identity",
            id,
            "--trust-signer",
            "beef",
        ],
        2,
    );
    assert!(err.contains("not a key fingerprint"), "{err}");
    let restored = copy.json(&[
        "backup",
        "restore",
        f,
        "--identity",
        id,
        "--trust-signer",
        &signer.replace(':', "").to_uppercase(),
        "--json",
    ]);
    assert_eq!(restored["replaced_kept_at"], Value::Null);
    assert_eq!(restored["signer"], signer.as_str());
    assert_eq!(state(&copy), state(&env));
    let templates = |e: &Env| files_under(&e.data.join("templates"));
    assert_eq!(templates(&copy), templates(&env), "operator templates");
    assert_eq!(templates(&env).len(), 1);
    let prov = |e: &Env| files_under(&e.data.join("provisioning"));
    assert!(!prov(&env).is_empty());
    assert_eq!(prov(&copy), prov(&env), "provisioning files byte for byte");
    assert_eq!(
        crate::harness::mode_of(&copy.data.join("secrets.key")) & 0o777,
        0o600
    );
    let reveal = |e: &Env| e.json(&["ext", "show", "2001", "--reveal", "--json"]);
    assert_eq!(reveal(&copy)["password"], reveal(&env)["password"]);
    let log = copy.json(&["log", "--json"]);
    assert!(
        log.as_array()
            .expect("log")
            .iter()
            .any(|e| e["action"] == "backup.restored")
    );

    // The phone registers with the restored server using its old credentials.
    let server = copy.serve();
    let login = reveal(&env);
    let users = format!(
        "SEQUENTIAL\n2001;{}\n",
        crate::peers::sipp_auth(
            login["auth_id"].as_str().expect("auth"),
            login["password"].as_str().expect("pw")
        )
    );
    let run = sipp_from(
        "127.0.0.2",
        &copy,
        "register_auth.xml",
        &users,
        server.sip,
        "u1",
        1,
        1,
    );
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "{}\n{}",
        run.errors,
        server.log()
    );

    // Not into the data dir of a running server.
    let err = copy.fails(
        &[
            "backup",
            "restore",
            f,
            "--identity",
            key.to_str().expect("utf8"),
        ],
        2,
    );
    assert!(err.contains("serve is running"), "{err}");
    server.stop();
}

#[test]
fn forged_unsigned_and_oversized_archives_are_refused_and_an_install_trusts_its_own() {
    let env = populated();
    let (key, public) = keygen(&env, "key.txt");
    let id = key.to_str().expect("utf8").to_owned();
    // The recipient is in the config, where a forger may read it.
    std::fs::write(
        env.data.join("sipward.toml"),
        format!("{CONFIG}[backup]\nrecipient = \"{public}\"\n"),
    )
    .expect("config");
    let own = env.path("own.swbak");
    let own_s = own.to_str().expect("utf8").to_owned();
    env.ok(&["backup", "create", "--out", &own_s]);
    let fp = signer_of(&env);
    let before = (state(&env), files_under(&env.data.join("provisioning")));
    let restore = |file: &Path, extra: &[&str]| {
        let mut args = vec![
            "backup",
            "restore",
            file.to_str().expect("utf8"),
            "--identity",
            &id,
        ];
        args.extend_from_slice(extra);
        env.run(&args)
    };

    // Another install, encrypting to the configured recipient: a sound archive, but not
    // signed by this install's key.
    let evil = Env::with_config(CONFIG);
    evil.ok(&["ext", "add", "6666", "--password", "Forged-Pass-6666-Zq8x"]);
    let forged = env.path("forged.swbak");
    evil.ok(&[
        "backup",
        "create",
        "--recipient",
        &public,
        "--out",
        forged.to_str().expect("utf8"),
    ]);
    let r = restore(&forged, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let evil_fp = signer_of(&evil);
    assert_ne!(evil_fp, fp);
    assert!(
        r.stderr.contains(&format!(
            "signed by key {evil_fp}, which is not this install's"
        )),
        "{}",
        r.stderr
    );
    // This install's backup with its database swapped, keeping the old signature.
    let altered = env.path("altered.swbak");
    repack(&own, &key, &public, &altered, Sign::KeepOld, |dir, _| {
        sh(&format!(
            "sqlite3 {} \"UPDATE extensions SET name = 'mallory' WHERE number = '2001'\"",
            q(&dir.join("sipward.db"))
        ));
    });
    let r = restore(&altered, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("bad signature") && r.stderr.contains("altered or forged"),
        "{}",
        r.stderr
    );
    // Unsigned, as a sipward before signing would have made it.
    let unsigned = env.path("unsigned.swbak");
    repack(&own, &key, &public, &unsigned, Sign::Unsigned, |_, _| {});
    let r = restore(&unsigned, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("is not signed") && r.stderr.contains("--allow-unsigned"),
        "{}",
        r.stderr
    );
    let verified = env.json(&["backup", "verify", &own_s, "--identity", &id, "--json"]);
    assert_eq!(
        (verified["signer"].as_str(), verified["own_key"].as_bool()),
        (Some(fp.as_str()), Some(true))
    );
    let verified = env.json(&[
        "backup",
        "verify",
        forged.to_str().expect("utf8"),
        "--identity",
        &id,
        "--json",
    ]);
    assert_eq!(
        (verified["signer"].as_str(), verified["own_key"].as_bool()),
        (Some(evil_fp.as_str()), Some(false))
    );

    // Files adding up to more than the restore limit: refused before anything is written.
    let big = env.path("big.swbak");
    repack(&own, &key, &public, &big, Sign::As(&env), |dir, m| {
        std::fs::write(dir.join("provisioning/huge.cfg"), vec![b'x'; 2 << 20]).expect("big");
        m["files"]
            .as_array_mut()
            .expect("files")
            .push(serde_json::json!({"path": "provisioning/huge.cfg", "size": 0, "sha256": ""}));
    });
    std::fs::write(
        env.data.join("sipward.toml"),
        format!("{CONFIG}[backup]\nrecipient = \"{public}\"\nrestore_max_bytes = 1048576\n"),
    )
    .expect("config");
    let r = restore(&big, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("refused before anything is written")
            && r.stderr.contains("more than 1048576 bytes"),
        "{}",
        r.stderr
    );
    assert_eq!(
        (state(&env), files_under(&env.data.join("provisioning"))),
        before
    );
    let leftovers: Vec<_> = std::fs::read_dir(env.data.parent().expect("parent"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring") || n.contains("pre-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Its own backup restores into the same install without being told, and the install
    // keeps its key; an unsigned one with --allow-unsigned.
    std::fs::write(
        env.data.join("sipward.toml"),
        format!("{CONFIG}[backup]\nrecipient = \"{public}\"\n"),
    )
    .expect("config");
    let r = restore(&own, &["--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(out["signer"], fp.as_str());
    assert_eq!(signer_of(&env), fp, "the install keeps its signing key");
    assert_eq!(state(&env), before.0);
    let r = restore(&unsigned, &["--allow-unsigned", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(out["signer"], Value::Null);
    let again = env.json(&[
        "backup",
        "create",
        "--out",
        env.path("again.swbak").to_str().expect("utf8"),
        "--json",
    ]);
    assert_eq!(again["signer"], fp.as_str());
}

#[test]
fn damaged_wrong_key_and_newer_backups_are_refused_and_change_nothing() {
    let env = populated();
    let pass = env.path("pass.txt");
    std::fs::write(&pass, "a long and right passphrase\n").expect("pass");
    let wrong = env.path("wrong.txt");
    std::fs::write(&wrong, "a long but wrong passphrase\n").expect("pass");
    let short = env.path("short.txt");
    std::fs::write(&short, "short\n").expect("pass");
    let p = |p: &PathBuf| p.to_str().expect("utf8").to_owned();
    let file = env.path("b.swbak");
    let err = env.fails(
        &[
            "backup",
            "create",
            "--passphrase-file",
            &p(&short),
            "--out",
            &p(&file),
        ],
        2,
    );
    assert!(err.contains("at least 12 characters"), "{err}");
    env.ok(&[
        "backup",
        "create",
        "--passphrase-file",
        &p(&pass),
        "--out",
        &p(&file),
    ]);

    // An existing data dir to restore over: it must stay exactly as it is.
    let target = Env::with_config(CONFIG);
    target.ok(&["ext", "add", "3001"]);
    let before = (state(&target), files_under(&target.data));
    let restore = |file: &PathBuf, key: &[&str]| {
        let mut args = vec!["backup", "restore", file.to_str().expect("utf8")];
        args.extend_from_slice(key);
        target.fails(&args, 2)
    };
    let wrong_key = ["--passphrase-file", wrong.to_str().expect("utf8")];
    let right_key = ["--passphrase-file", pass.to_str().expect("utf8")];
    assert!(restore(&file, &wrong_key).contains("wrong passphrase or key"));

    let bytes = std::fs::read(&file).expect("read");
    let flipped = env.path("flipped.swbak");
    let mut b = bytes.clone();
    let at = b.len() / 2;
    b[at] ^= 0x20;
    std::fs::write(&flipped, b).expect("write");
    let err = restore(&flipped, &right_key);
    assert!(err.contains("damaged"), "{err}");
    let cut = env.path("cut.swbak");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let err = restore(&cut, &right_key);
    assert!(err.contains("damaged"), "{err}");
    let err = env.fails(
        &["backup", "verify", &p(&cut), "--passphrase-file", &p(&pass)],
        2,
    );
    assert!(err.contains("damaged"), "{err}");

    // A backup from a newer sipward (schema 99).
    let (key, public) = keygen(&env, "key.txt");
    let keyed = env.path("keyed.swbak");
    env.ok(&[
        "backup",
        "create",
        "--recipient",
        &public,
        "--out",
        &p(&keyed),
    ]);
    let newer = env.path("newer.swbak");
    repack(&keyed, &key, &public, &newer, Sign::As(&env), |_, m| {
        m["schema_version"] = 99.into();
        m["version"] = "9.0.0".into();
    });
    let trusted = signer_of(&env);
    let err = restore(
        &newer,
        &[
            "--identity",
            key.to_str().expect("utf8"),
            "--trust-signer",
            &trusted,
        ],
    );
    assert!(
        err.contains("newer sipward") && err.contains("schema 99"),
        "{err}"
    );
    // The right key for the wrong kind of backup.
    let err = restore(&keyed, &right_key);
    assert!(err.contains("give its identity file"), "{err}");

    assert_eq!((state(&target), files_under(&target.data)), before);
    let leftovers: Vec<_> = std::fs::read_dir(target.data.parent().expect("parent"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring") || n.contains("pre-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A data dir holding what security epoch 1 fixes: `weak` extensions whose password,
/// PIN and SIP ID equal their number, a fax extension with a weak password, and a
/// gateway whose password is its auth ID.
fn weak_env(weak: usize) -> Env {
    let env = Env::with_config(CONFIG);
    let mut csv = String::from("number,auth_id,password,pin,sip_id,email\n");
    for i in 0..weak {
        let n = 4000 + i;
        csv.push_str(&format!("{n},w{n}x,{n},{n},{n},u{n}@example.com\n"));
    }
    std::fs::write(env.path("weak.csv"), csv).expect("csv");
    env.ok(&["import", env.path("weak.csv").to_str().expect("utf8")]);
    env.ok(&["ext", "update", "888", "--password", "888888"]);
    env.ok(&[
        "gateway",
        "add",
        "gw1",
        "--vendor",
        "generic",
        "--ext",
        "2900",
        "--auth-id",
        "gwadmin7",
        "--password",
        "gwadmin7",
        "--host",
        "127.0.0.7",
    ]);
    env
}

/// A backup of `env` as sipward before security epoch 1 would have made it.
fn old_epoch_backup(env: &Env) -> (PathBuf, PathBuf) {
    let (key, public) = keygen(env, "key.txt");
    let now = env.path("now.swbak");
    env.ok(&[
        "backup",
        "create",
        "--recipient",
        &public,
        "--out",
        now.to_str().expect("utf8"),
    ]);
    let old = env.path("old.swbak");
    repack(&now, &key, &public, &old, Sign::As(env), |dir, m| {
        sh(&format!(
            "sqlite3 {} \"UPDATE meta SET value = '0' WHERE key = 'security_epoch'\"",
            q(&dir.join("sipward.db"))
        ));
        m["security_epoch"] = 0.into();
    });
    (old, key)
}

fn weak_rules(env: &Env) -> Vec<String> {
    let findings = env.run(&["audit", "--json"]);
    let v: Value = serde_json::from_str(&findings.stdout).expect("audit json");
    crate::harness::rules_of(&v["findings"])
        .into_iter()
        .filter(|r| {
            [
                "ext.password_equals_number",
                "ext.pin_equals_number",
                "ext.sip_id_equals_number",
            ]
            .contains(&r.as_str())
        })
        .collect()
}

#[test]
fn an_old_epoch_backup_is_refused_and_reharden_fixes_every_weak_credential() {
    let env = weak_env(3);
    let (old, key) = old_epoch_backup(&env);
    let old_s = old.to_str().expect("utf8");
    let id = key.to_str().expect("utf8");
    let verified = env.ok(&["backup", "verify", old_s, "--identity", id]);
    assert!(verified.contains("restore needs --reharden"), "{verified}");

    let copy = Env::new();
    let signer = signer_of(&env);
    let trust = ["--trust-signer", signer.as_str()];
    let err = copy.fails(
        &[&["backup", "restore", old_s, "--identity", id][..], &trust].concat(),
        2,
    );
    assert!(
        err.contains("before security epoch 1") && err.contains("--reharden"),
        "{err}"
    );
    assert!(!copy.data.exists(), "a refused restore creates nothing");

    let out = copy.json(
        &[
            &[
                "backup",
                "restore",
                old_s,
                "--identity",
                id,
                "--reharden",
                "--json",
            ][..],
            &trust,
        ]
        .concat(),
    );
    let changes = out["hardening"].as_array().expect("changes");
    let subjects = |action: &str| -> Vec<String> {
        let mut v: Vec<String> = changes
            .iter()
            .filter(|c| c["action"] == action)
            .map(|c| c["subject"].as_str().expect("s").to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        subjects("regenerated"),
        ["ext:4000", "ext:4001", "ext:4002", "ext:888"]
    );
    assert_eq!(
        subjects("sip_id_blanked"),
        ["ext:4000", "ext:4001", "ext:4002"]
    );
    assert_eq!(subjects("reported"), ["gateway:gw1"], "{out}");
    assert!(weak_rules(&env).len() >= 9, "the original is still weak");
    assert_eq!(weak_rules(&copy), Vec::<String>::new());
    let fax = |e: &Env| e.json(&["ext", "show", "888", "--reveal", "--json"])["password"].clone();
    assert_ne!(fax(&copy), fax(&env));
    // Every change is in the audit log; the welcome mails wait in the outbox.
    let log = copy.json(&["log", "--json"]);
    let actions: Vec<&str> = log
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "epoch1.regenerated")
            .count(),
        4
    );
    assert!(actions.contains(&"epoch.applied") && actions.contains(&"backup.restored"));
    let mails = copy.json(&["mail", "list", "--json"]);
    assert_eq!(
        mails.as_array().expect("mails").len(),
        3,
        "the three with an address"
    );
    // Hardened: a second restore of a fresh backup from it needs no --reharden.
    let again = copy.path("again.swbak");
    let (_, public) = keygen(&copy, "key2.txt");
    let made = copy.json(&[
        "backup",
        "create",
        "--recipient",
        &public,
        "--out",
        again.to_str().expect("utf8"),
        "--json",
    ]);
    assert_eq!(made["security_epoch"], 1);
}

#[test]
fn an_interrupted_restore_leaves_the_data_dir_untouched() {
    let env = weak_env(120);
    let (old, key) = old_epoch_backup(&env);
    let target = Env::with_config(CONFIG);
    target.ok(&["ext", "add", "3001"]);
    let before = (state(&target), files_under(&target.data));

    // Killed while it re-hardens (after the first batch of Re-Generates).
    let signer = signer_of(&env);
    let args = [
        "backup",
        "restore",
        old.to_str().expect("utf8"),
        "--identity",
        key.to_str().expect("utf8"),
        "--reharden",
        "--trust-signer",
        &signer,
    ];
    let mut child = target.spawn(&args);
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("read") > 0,
            "no progress before it ended"
        );
        if line.starts_with("regenerated 50/") {
            break;
        }
    }
    child.kill().expect("kill -9");
    assert!(!child.wait().expect("wait").success());
    assert_eq!((state(&target), files_under(&target.data)), before);

    // The next restore clears what the killed one left and completes.
    let out = target.json(&[&args[..], &["--json"]].concat());
    let kept = PathBuf::from(out["replaced_kept_at"].as_str().expect("kept"));
    assert_eq!(
        files_under(&kept),
        before.1,
        "the replaced data dir is kept as it was"
    );
    assert_eq!(weak_rules(&target), Vec::<String>::new());
    assert_eq!(
        target
            .json(&["ext", "list", "--json"])
            .as_array()
            .expect("list")
            .len(),
        121
    );
}

#[test]
fn an_upgraded_data_dir_is_backed_up_then_hardened_once() {
    let env = weak_env(2);
    // What a data dir from before security epochs looks like.
    sh(&format!(
        "sqlite3 {} \"UPDATE meta SET value = '0' WHERE key = 'security_epoch'\"",
        q(&env.data.join("sipward.db"))
    ));
    let r = env.run(&["ext", "list", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("upgrading the data dir from security epoch 0 to 1"),
        "{}",
        r.stderr
    );
    assert_eq!(weak_rules(&env), Vec::<String>::new());
    let backups = env.data.join("backups");
    let names: Vec<String> = std::fs::read_dir(&backups)
        .expect("backups")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let bak = names
        .iter()
        .find(|n| n.ends_with(".swbak"))
        .expect("backup");
    let key = names.iter().find(|n| n.ends_with(".key")).expect("its key");
    assert_eq!(crate::harness::mode_of(&backups.join(key)) & 0o777, 0o600);
    let verified = env.json(&[
        "backup",
        "verify",
        backups.join(bak).to_str().expect("utf8"),
        "--identity",
        backups.join(key).to_str().expect("utf8"),
        "--json",
    ]);
    assert_eq!(
        verified["manifest"]["security_epoch"], 0,
        "the state before hardening"
    );
    // Once: the next command changes nothing.
    let r = env.run(&["ext", "list"]);
    assert!(!r.stderr.contains("upgrading"), "{}", r.stderr);
}

#[test]
fn serve_makes_scheduled_backups_and_keeps_the_newest() {
    let env = Env::new();
    let (key, public) = keygen(&env, "key.txt");
    env.ok(&["ext", "list"]);
    std::fs::write(
        env.data.join("sipward.toml"),
        format!("[backup]\ninterval_secs = 1\nkeep = 2\nrecipient = \"{public}\"\n"),
    )
    .expect("config");
    let server = env.serve();
    eventually_or(
        "three scheduled backups",
        Duration::from_secs(60),
        || server.log().matches("\"event\":\"backup_created\"").count() >= 3,
        || server.log(),
    );
    // One server per data dir.
    let err = env.fails(
        &["serve", "--sip", "127.0.0.1:0", "--http", "127.0.0.1:0"],
        2,
    );
    assert!(err.contains("another sipward serve is running"), "{err}");
    server.stop();
    let dir = env.data.join("backups");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".swbak"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    let newest = dir.join(names.last().expect("newest"));
    env.ok(&[
        "backup",
        "verify",
        newest.to_str().expect("utf8"),
        "--identity",
        key.to_str().expect("utf8"),
    ]);
}

#[test]
fn backup_settings_and_keys_are_checked() {
    let env = Env::new();
    env.ok(&["ext", "list"]);
    std::fs::write(
        env.data.join("sipward.toml"),
        "[backup]\ninterval_secs = 60\n",
    )
    .expect("config");
    let err = env.fails(&["ext", "list"], 2);
    assert!(
        err.contains("scheduled backups are always encrypted"),
        "{err}"
    );
    std::fs::write(
        env.data.join("sipward.toml"),
        "[backup]\nrecipient = \"age1nope\"\n",
    )
    .expect("config");
    let err = env.fails(&["ext", "list"], 2);
    assert!(err.contains("not an age recipient"), "{err}");
    std::fs::write(
        env.data.join("sipward.toml"),
        "[backup]\nrestore_max_bytes = 1000\n",
    )
    .expect("config");
    let err = env.fails(&["ext", "list"], 2);
    assert!(err.contains("restore_max_bytes must be at least"), "{err}");
    std::fs::remove_file(env.data.join("sipward.toml")).expect("rm");
    let err = env.fails(
        &[
            "backup",
            "verify",
            env.path("nothing.swbak").to_str().expect("utf8"),
            "--passphrase-file",
            "/dev/null",
        ],
        2,
    );
    assert!(err.contains("passphrase file /dev/null is empty"), "{err}");
    std::fs::write(env.path("junk.swbak"), "not age").expect("junk");
    std::fs::write(env.path("p.txt"), "a long enough passphrase").expect("p");
    // A backup that is not there, and one that cannot be written: one sentence each,
    // and no half-written file left behind.
    let p = |n: &str| env.path(n).to_str().expect("utf8").to_owned();
    let err = env.fails(
        &[
            "backup",
            "verify",
            &p("nothing.swbak"),
            "--passphrase-file",
            &p("p.txt"),
        ],
        2,
    );
    assert!(
        err.contains("cannot use") && err.contains("nothing.swbak"),
        "{err}"
    );
    let nowhere = env.path("no-such-dir").join("b.swbak");
    let err = env.fails(
        &[
            "backup",
            "create",
            "--out",
            nowhere.to_str().expect("utf8"),
            "--passphrase-file",
            &p("p.txt"),
        ],
        2,
    );
    assert!(
        err.contains("cannot use") && err.contains("no-such-dir"),
        "{err}"
    );
    assert!(!env.path("no-such-dir").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&env.data)
        .expect("data")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".backup-"))
        .collect();
    assert!(leftovers.is_empty(), "staging dirs left: {leftovers:?}");
    let err = env.fails(
        &[
            "backup",
            "verify",
            env.path("junk.swbak").to_str().expect("utf8"),
            "--passphrase-file",
            env.path("p.txt").to_str().expect("utf8"),
        ],
        2,
    );
    assert!(err.contains("not a sipward backup"), "{err}");
    // No key and no terminal: one sentence, not a hang.
    let err = env.fails(&["backup", "create"], 2);
    assert!(err.contains("no backup passphrase"), "{err}");

    // A flag beats the config; without one, the config's key is used.
    let (key, public) = keygen(&env, "key.txt");
    std::fs::write(
        env.data.join("sipward.toml"),
        format!("[backup]\nrecipient = \"{public}\"\n"),
    )
    .expect("config");
    let pass = env.path("p.txt");
    let (by_flag, by_config) = (env.path("flag.swbak"), env.path("config.swbak"));
    let s = |p: &PathBuf| p.to_str().expect("utf8").to_owned();
    env.ok(&[
        "backup",
        "create",
        "--passphrase-file",
        &s(&pass),
        "--out",
        &s(&by_flag),
    ]);
    env.ok(&["backup", "create", "--out", &s(&by_config)]);
    env.ok(&[
        "backup",
        "verify",
        &s(&by_flag),
        "--passphrase-file",
        &s(&pass),
    ]);
    env.ok(&["backup", "verify", &s(&by_config), "--identity", &s(&key)]);
}

fn advice(env: &Env, extra: &[&str]) -> Vec<(String, bool, usize)> {
    let mut args = vec!["advise", "--json", "--sip", "0.0.0.0:5060"];
    args.extend_from_slice(extra);
    let v = env.json(&args);
    v["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter(|p| p["open"] == true)
        .map(|p| {
            (
                format!("{}/{}", p["port"], p["protocol"].as_str().expect("proto")),
                p["service"] == "sip",
                p["from"].as_array().expect("from").len(),
            )
        })
        .collect()
}

#[test]
fn the_advisor_answers_for_four_configurations() {
    // LAN only: nothing open, and the rule set opens no port.
    let env = Env::new();
    assert_eq!(advice(&env, &[]), vec![]);
    let text = env.ok(&["advise"]);
    assert!(
        text.contains("policy drop") && !text.contains("dport 5060"),
        "{text}"
    );
    // A provider: SIP from its registrar's address only.
    env.ok(&[
        "provider",
        "add",
        "carrier",
        "--registrar",
        "192.0.2.10:5060",
        "--auth-id",
        "acct-1",
        "--password",
        "Zq8xLmTr4wPyK7vB2x",
    ]);
    assert_eq!(advice(&env, &[]), vec![("5060/udp".to_owned(), true, 1)]);
    let text = env.ok(&["advise"]);
    assert!(
        text.contains("ip saddr { 192.0.2.10 } udp dport 5060 accept"),
        "{text}"
    );
    assert!(text.contains("sip.default_port"), "{text}");
    // Both, with SIP over TLS (served by default): the TLS port from anywhere (phones
    // move), clear-text SIP still from the provider only.
    let both = advice(&env, &["--remote-phones"]);
    assert_eq!(
        both,
        vec![
            ("5061/tcp".to_owned(), false, 0),
            ("5060/udp".to_owned(), true, 1)
        ]
    );
    let text = env.ok(&["advise", "--remote-phones"]);
    assert!(text.contains("tcp dport 5061 accept  # sips"), "{text}");
    assert!(!text.contains("sip.udp_for_remote_phones"), "{text}");
    // Without TLS: SIP from anywhere, UDP and TCP, and the clear-text warning.
    std::fs::write(env.data.join("sipward.toml"), "[tls]\nenabled = false\n").expect("config");
    let both = advice(&env, &["--remote-phones"]);
    assert_eq!(
        both,
        vec![
            ("5060/udp".to_owned(), true, 0),
            ("5060/tcp".to_owned(), true, 0)
        ]
    );
    // Remote phones only, no TLS: the same ports, the UDP warning, never the console.
    let remote = Env::with_config("[tls]\nenabled = false\n");
    let v = remote.json(&[
        "advise",
        "--json",
        "--remote-phones",
        "--sip",
        "0.0.0.0:5062",
        "--http",
        "127.0.0.1:8443",
    ]);
    let ids: Vec<&str> = v["warnings"]
        .as_array()
        .expect("w")
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert!(ids.contains(&"sip.udp_for_remote_phones"), "{ids:?}");
    assert!(!ids.contains(&"sip.default_port"), "{ids:?}");
    let nft = v["nftables"].as_str().expect("nft");
    assert!(
        nft.contains("udp dport 5062 accept") && !nft.contains("8443"),
        "{nft}"
    );
    assert!(
        v["ports"]
            .as_array()
            .expect("p")
            .iter()
            .all(|p| p["service"] != "console" || p["open"] == false)
    );
}

#[test]
fn a_scheduled_backup_that_fails_is_reported_and_the_next_one_succeeds() {
    let env = Env::new();
    env.ok(&["ext", "list"]);
    let pass = env.path("later.pass");
    std::fs::write(
        env.data.join("sipward.toml"),
        format!(
            "[backup]\ninterval_secs = 1\nkeep = 3\npassphrase_file = \"{}\"\n",
            pass.display()
        ),
    )
    .expect("config");
    // The passphrase file does not exist yet: each attempt fails, the server keeps going.
    let server = env.serve();
    eventually_or(
        "a failed backup reported",
        Duration::from_secs(30),
        || server.log().contains("\"event\":\"backup_failed\""),
        || server.log(),
    );
    assert!(
        server.log().contains("cannot read the passphrase file"),
        "{}",
        server.log()
    );
    assert!(!server.log().contains("backup_created"));
    // Once it is there, the next one is made (and it opens with that passphrase).
    std::fs::write(&pass, "a long and right passphrase\n").expect("pass");
    // Private, as a file holding a secret must be (one others may read is refused).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    eventually_or(
        "a backup after the failures",
        Duration::from_secs(30),
        || server.log().contains("\"event\":\"backup_created\""),
        || server.log(),
    );
    server.stop();
    let made: Vec<_> = std::fs::read_dir(env.data.join("backups"))
        .expect("backups")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "swbak"))
        .collect();
    assert!(!made.is_empty());
    env.ok(&[
        "backup",
        "verify",
        made[0].to_str().expect("utf8"),
        "--passphrase-file",
        pass.to_str().expect("utf8"),
    ]);
}

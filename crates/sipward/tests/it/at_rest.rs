//! What a stolen data dir or backup gives away: no HA1 digest in the clear, in the
//! database files or in a backup (found by searching the bytes for every account's
//! HA1s, with a control that finds them in a data dir from before they were sealed);
//! such a data dir is sealed at its next open and keeps working. A sealed HA1 that does
//! not open (altered, or copied from another row) never logs in and is reported.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sip::digest::{Algorithm, ha1};

use crate::backup::keygen;
use crate::harness::Env;
use crate::peers::{UdpClient, eventually, require, sipp_from};
use crate::registrar::{ALICE, Login, PASSWORD, register, status};

/// Every HA1 (MD5 and SHA-256, lower and upper case hex) of the data dir's accounts:
/// `(table, key column, key, auth ID, password)`.
fn needles(accounts: &[(&str, &str, String, String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (_, _, _, auth_id, password) in accounts {
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let h = ha1(alg, auth_id, "sipward", password);
            out.push(h.to_uppercase());
            out.push(h);
        }
    }
    out
}

/// The needles found in the files directly under `dir` (database, WAL, shared memory).
fn found_in(dir: &Path, needles: &[String]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read");
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                hits.push(format!("{}: {n}", path.display()));
            }
        }
    }
    hits
}

fn sqlite(db: &Path, sql: &str) {
    let out = Command::new(require("sqlite3", "sqlite3"))
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(
        out.status.success(),
        "{sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unpacks a backup with the age, zstd and tar tools into a new directory.
fn unpack(backup: &Path, key: &Path, into: &Path) {
    for (tool, package) in [("age", "age"), ("zstd", "zstd"), ("tar", "tar")] {
        require(tool, package);
    }
    std::fs::create_dir_all(into).expect("dir");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i '{}' '{}' | zstd -dc | tar -xf - -C '{}'",
            key.display(),
            backup.display(),
            into.display()
        ))
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_ha1_is_in_the_clear_in_the_database_or_a_backup_and_an_old_data_dir_is_sealed() {
    let env = Env::new();
    let mut accounts = Vec::new();
    for (n, auth, pw) in [
        ("2001", "desk2001x", "Zq8xLmTr4wPyK7vB2a"),
        ("2002", "desk2002x", "Zq8xLmTr4wPyK7vB2b"),
    ] {
        env.ok(&["ext", "add", n, "--auth-id", auth, "--password", pw]);
        accounts.push((
            "extensions",
            "number",
            n.to_owned(),
            auth.to_owned(),
            pw.to_owned(),
        ));
    }
    let fax = env.json(&["ext", "show", "888", "--reveal", "--json"]);
    accounts.push((
        "extensions",
        "number",
        "888".into(),
        fax["auth_id"].as_str().expect("auth").into(),
        fax["password"].as_str().expect("pw").into(),
    ));
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
    accounts.push((
        "gateways",
        "name",
        "gw1".into(),
        "gw-1-k8".into(),
        "Zq8xLmTr4wPyK7vB2y".into(),
    ));
    let needles = needles(&accounts);
    assert_eq!(needles.len(), 16);
    assert_eq!(found_in(&env.data, &needles), Vec::<String>::new());

    // Nor in a backup (the database snapshot inside it).
    let (key, public) = keygen(&env, "key.txt");
    let backup = env.path("b.swbak");
    env.ok(&[
        "backup",
        "create",
        "--recipient",
        &public,
        "--out",
        backup.to_str().expect("utf8"),
    ]);
    let unpacked = env.path("unpacked");
    unpack(&backup, &key, &unpacked);
    assert!(unpacked.join("sipward.db").is_file());
    assert_eq!(found_in(&unpacked, &needles), Vec::<String>::new());

    // Control: the same data dir as sipward before migration 12 stored it, HA1s in the
    // clear. The search finds every one of them there.
    // With them, a grace window of 2002 (an old SIP password, and the old provisioning
    // login of its phone, which logs in just the same) as revocation wrote it then.
    let db = env.data.join("sipward.db");
    let mut sql = String::from("BEGIN;");
    for (table, key_col, key, auth, pw) in &accounts {
        let md5 = ha1(Algorithm::Md5, auth, "sipward", pw);
        let sha = ha1(Algorithm::Sha256, auth, "sipward", pw);
        sql.push_str(&format!(
            "UPDATE {table} SET ha1_md5_enc = '{md5}', ha1_sha256_enc = '{sha}' WHERE {key_col} = '{key}';"
        ));
    }
    let (old_pw, mac, old_login) = ("Old-Zq8xLmTr4wPyK7", "001565aabbcc", "Old-Login-Nq4Zt8Lm");
    let grace_ha1s = [
        (Algorithm::Md5, "desk2002x", "sipward", old_pw),
        (Algorithm::Sha256, "desk2002x", "sipward", old_pw),
        (
            Algorithm::Md5,
            mac,
            accounts::provisioning::REALM,
            old_login,
        ),
        (
            Algorithm::Sha256,
            mac,
            accounts::provisioning::REALM,
            old_login,
        ),
    ]
    .map(|(alg, user, realm, pw)| ha1(alg, user, realm, pw));
    sql.push_str(&format!(
        "INSERT INTO credential_grace (number, auth_id, ha1_md5_enc, ha1_sha256_enc, sources, \
         expires_at, generation, prov_user, prov_ha1_md5_enc, prov_ha1_sha256_enc) VALUES \
         ('2002', 'desk2002x', '{}', '{}', '127.0.0.9', 4102444800, 1, '{mac}', '{}', '{}');",
        grace_ha1s[0], grace_ha1s[1], grace_ha1s[2], grace_ha1s[3]
    ));
    for table in ["extensions", "gateways", "credential_grace"] {
        for alg in ["md5", "sha256"] {
            sql.push_str(&format!(
                "ALTER TABLE {table} RENAME COLUMN ha1_{alg}_enc TO ha1_{alg};"
            ));
        }
    }
    for alg in ["md5", "sha256"] {
        sql.push_str(&format!(
            "ALTER TABLE credential_grace RENAME COLUMN prov_ha1_{alg}_enc TO prov_ha1_{alg};"
        ));
    }
    sql.push_str(
        "DELETE FROM meta WHERE key = 'ha1_sealed'; DELETE FROM _sqlx_migrations WHERE version = 12; COMMIT;",
    );
    sqlite(&db, &sql);
    let mut needles = needles;
    for h in &grace_ha1s {
        needles.push(h.to_uppercase());
        needles.push(h.clone());
    }
    let lower: Vec<String> = needles
        .iter()
        .filter(|n| n.chars().all(|c| !c.is_ascii_uppercase()))
        .cloned()
        .collect();
    let hits = found_in(&env.data, &lower);
    assert_eq!(
        hits.len(),
        12,
        "the control finds every plain HA1: {hits:?}"
    );

    // That data dir opens: the HA1s are sealed once (the grace window's provisioning
    // login with them), and gone from the files.
    let r = env.run(&["ext", "list"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("sealed the stored digests (HA1s) of 5 accounts and grace windows"),
        "{}",
        r.stderr
    );
    assert_eq!(found_in(&env.data, &needles), Vec::<String>::new());
    let sealed = Command::new(require("sqlite3", "sqlite3"))
        .arg(&db)
        .arg("SELECT prov_ha1_md5_enc || ' ' || prov_ha1_sha256_enc FROM credential_grace")
        .output()
        .expect("sqlite3");
    let sealed = String::from_utf8_lossy(&sealed.stdout);
    assert!(
        sealed.trim().split(' ').all(|v| v.starts_with("v1:")),
        "the old provisioning login is sealed: {sealed}"
    );
    let again = env.run(&["ext", "list"]);
    assert!(!again.stderr.contains("sealed"), "once: {}", again.stderr);

    // And works: a phone registers with its password.
    let server = env.serve();
    let run = sipp_from(
        "127.0.0.2",
        &env,
        "register_auth.xml",
        "SEQUENTIAL\n2001;[authentication username=desk2001x password=Zq8xLmTr4wPyK7vB2a]\n",
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
    server.stop();
}

#[test]
fn a_sealed_hash_copied_into_another_row_is_reported_after_ready_and_never_logs_in() {
    let env = Env::new();
    for (n, auth) in [("1001", "alice1001"), ("1002", "bob1002")] {
        env.ok(&["ext", "add", n, "--auth-id", auth, "--password", PASSWORD]);
    }
    // Alice's sealed MD5 HA1 in bob's row: bound to `ext/1001/ha1_md5`, it does not
    // open as `ext/1002/ha1_md5`.
    sqlite(
        &env.data.join("sipward.db"),
        "UPDATE extensions SET ha1_md5_enc = \
         (SELECT ha1_md5_enc FROM extensions WHERE number = '1001') WHERE number = '1002';",
    );
    let server = env.serve();
    // The HA1s open after the ready line; the one that does not is named to the
    // operator, as a start reported it before opening moved after ready.
    eventually(
        "the unreadable field reported",
        Duration::from_secs(20),
        || {
            server.log().lines().any(|l| {
                l.contains("\"credentials_unreadable\"") && l.contains("\"ext/1002/ha1_md5\"")
            })
        },
    );
    assert!(!server.log().contains("ext/1001/"), "{}", server.log());
    let c = UdpClient::new(server.sip);
    let bob = Login {
        number: "1002",
        auth_id: "bob1002",
        realm: "sipward",
        password: PASSWORD,
    };
    let contact = |n: &str| format!("<sip:{n}@127.0.0.1:5999>");
    let refused = register(&c, &bob, "bob", 1, Some(&contact("1002")), Some(120));
    assert_eq!(status(&refused), 401, "{refused}");
    let ok = register(&c, &ALICE, "alice", 1, Some(&contact("1001")), Some(120));
    assert_eq!(status(&ok), 200, "{ok}");
}

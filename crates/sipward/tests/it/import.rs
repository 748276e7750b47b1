//! CSV import: all or nothing, every bad row reported by line.

use crate::harness::{Env, rules_of};

#[test]
fn a_good_file_imports_every_row() {
    let env = Env::new();
    let csv = env.path("staff.csv");
    std::fs::write(
        &csv,
        "number,name,email,kind,password,pin,sip_id,auth_id,mac,model\n\
         1001,Ann Smith,ann@example.com,user,,,,,00:15:65:00:00:01,yealink-t46u\n\
         1002,\"Smith, Bob\",bob@example.com,,1002,1002,1002,,,\n\
         1900,Fax room,,fax,,,,,,\n",
    )
    .expect("csv");
    let r = env.json(&["import", csv.to_str().expect("utf8"), "--json"]);
    assert_eq!(r["imported"], 3);
    assert_eq!(r["with_generated_credentials"], 2);
    let bob = env.json(&["ext", "show", "1002", "--json"]);
    assert_eq!(bob["name"], "Smith, Bob");
    let rules = rules_of(&bob["findings"]);
    assert!(
        rules.contains(&"ext.password_equals_number".to_string()),
        "{rules:?}"
    );
    assert_eq!(env.json(&["ext", "show", "1900", "--json"])["kind"], "fax");
    assert_eq!(
        env.json(&["ext", "show", "1001", "--json"])["mac"],
        "001565000001"
    );
}

#[test]
fn a_file_with_bad_rows_imports_nothing_and_names_every_line() {
    let env = Env::new();
    env.ok(&["ext", "add", "2000"]);
    let before = env.snapshot();
    let csv = env.path("bad.csv");
    std::fs::write(
        &csv,
        "number,name,email,mac\n\
         1001,Ann,ann@example.com,\n\
         1002,Bob,bob@@example.com,\n\
         1001,Ann again,,\n\
         2000,Clash,,\n\
         12x4,Bad number,,\n\
         1005,Bad mac,,00:11\n\
         1006,Too,many,fields,here\n\
         1007,Dup mac,,00:15:65:00:00:07\n\
         1008,Dup mac,,001565000007\n",
    )
    .expect("csv");
    let err = env.fails(&["import", csv.to_str().expect("utf8")], 2);
    assert!(err.contains("nothing was imported"), "{err}");
    for (line, what) in [
        (3, "email"),
        (4, "also on line 2"),
        (5, "already used by ext:2000"),
        (6, "extension number"),
        (7, "MAC"),
        (8, "fields"),
        (10, "also on line 9"),
    ] {
        let hit = err
            .lines()
            .any(|l| l.contains(&format!("line {line}:")) && l.contains(what));
        assert!(hit, "line {line} should report {what:?}:\n{err}");
    }
    assert!(
        !err.contains("line 2:"),
        "the good row is not an error:\n{err}"
    );
    assert_eq!(before, env.snapshot(), "all or nothing");
}

#[test]
fn header_problems_are_reported() {
    let env = Env::new();
    for (content, expect) in [
        ("", "empty"),
        ("name,email\nAnn,a@example.com\n", "no \"number\" column"),
        ("number,colour\n1001,red\n", "unknown column \"colour\""),
        ("number,number\n1001,1002\n", "appears twice"),
    ] {
        let csv = env.path("h.csv");
        std::fs::write(&csv, content).expect("csv");
        let err = env.fails(&["import", csv.to_str().expect("utf8")], 2);
        assert!(err.contains(expect), "{content:?} -> {err}");
    }
    let err = env.fails(
        &["import", env.path("missing.csv").to_str().expect("utf8")],
        2,
    );
    assert!(err.contains("cannot read"), "{err}");
    let other = env.path("pjsip.conf");
    std::fs::write(&other, "[1001]\n").expect("conf");
    let err = env.fails(&["import", other.to_str().expect("utf8")], 2);
    assert!(err.contains("only CSV"), "{err}");
}

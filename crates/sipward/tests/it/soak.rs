//! The soak and crash suite's short form (issue 18): `bench/soak.py` runs the binary
//! under test for a warm-up and one minute of mixed load, all at once (SIPp
//! registrations of 4,500 extensions and 500 tracked phones that move, calls between
//! extensions and out through a SIPp gateway, svwar and svcrack, a flood from sixteen
//! loopback addresses, CLI changes, scheduled backups, console page loads), then kills
//! it with SIGKILL mid-load and starts it again. Every check the script makes must pass:
//! RSS, fds, every table and the write-behind backlog flat; no failed registration,
//! call, CLI change or page; nothing durable lost by the kill, refreshes only from the
//! last second. The tolerances and why are in `checks()` of bench/soak.py; the full
//! 30-minute form is `bench/soak.sh` (figures in bench/README.md).

use std::path::Path;
use std::process::Command;

use crate::peers::require;

#[test]
fn a_minute_of_mixed_load_then_kill_9_loses_nothing_promised() {
    let python = require("python3", "python3");
    require("sipp", "sip-tester");
    require("svwar", "sipvicious");
    require("svcrack", "sipvicious");
    require("age-keygen", "age");
    let out = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/soak.py");
    // Rates for a debug build sharing two cores with the rest of the suite: a third of
    // the full run's SIP load, the same kinds of work.
    let run = Command::new(python)
        .arg(&script)
        .env("SIPWARD", env!("CARGO_BIN_EXE_sipward"))
        .env("SOAK_OUT", out.path())
        .env("SOAK_SECONDS", "60")
        .env("REG_RATE", "100")
        .env("TRACKED_OPS", "20")
        .env("CALL_RATE", "4")
        .env("TRUNK_RATE", "0.5")
        .env("FLOOD_PPS", "1000")
        .output()
        .expect("run bench/soak.py");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let report = std::fs::read_to_string(out.path().join("report.json")).unwrap_or_else(|_| {
        panic!(
            "bench/soak.py wrote no report (exit {:?}):\n{stdout}\n{stderr}",
            run.status
        )
    });
    let report: serde_json::Value = serde_json::from_str(&report).expect("report.json");
    let checks = report["checks"].as_array().expect("checks");
    assert!(checks.len() > 20, "{report:#}");
    let failed: Vec<&serde_json::Value> = checks.iter().filter(|c| c["ok"] != true).collect();
    let log = std::fs::read_to_string(out.path().join("server.log")).unwrap_or_default();
    let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
    assert!(
        failed.is_empty() && run.status.success(),
        "soak checks failed: {failed:#?}\n{stdout}\n{stderr}\nserver log (last lines, newest first):\n{tail}"
    );
}

//! SIGHUP: the config file is read again; what can change live is in force at once, and
//! a file that does not load changes nothing.

use std::time::Duration;

use crate::harness::Env;
use crate::peers::{UdpClient, eventually};
use crate::registrar::{ALICE, Login, PASSWORD, register, register_text, status};

const LENIENT: &str = "[guard]\nauth_failures = 50\nflood_requests = \"off\"\n";

/// Sends SIGHUP and waits for the server's line about it (`mark`), after `before` lines
/// of that kind were already in the log.
fn hangup(server: &crate::peers::Server, mark: &str) {
    let before = server.log().matches(mark).count();
    server.signal("HUP");
    eventually(mark, Duration::from_secs(10), || {
        server.log().matches(mark).count() > before
    });
}

#[test]
fn sighup_puts_a_new_guard_threshold_in_force_and_a_bad_file_keeps_the_old_one() {
    let env = Env::with_config(LENIENT);
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "alice1001",
        "--password",
        PASSWORD,
    ]);
    let server = env.serve();
    let guesser = UdpClient::from_address("127.0.0.2", server.sip, Duration::from_millis(500));
    let wrong = Login {
        password: "guess",
        ..ALICE
    };
    let mut guesses = 0;
    let mut guess = |n: u32| {
        for _ in 0..n {
            guesses += 1;
            let answer = register(&guesser, &wrong, &format!("g{guesses}"), 1, None, None);
            assert_eq!(status(&answer), 401, "guess {guesses}");
        }
    };
    guess(3);

    // A file that does not load: one line says why, and the old threshold holds.
    let config = env.data.join("sipward.toml");
    std::fs::write(&config, "[guard]\nauth_failures = \"many\"\n").expect("config");
    hangup(&server, "config not reloaded");
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("config not reloaded"))
        .expect("the refusal");
    assert!(
        line.contains("auth_failures"),
        "names what is wrong: {line}"
    );
    guess(3);

    // A lower threshold: the next failure bans the guesser.
    std::fs::write(
        &config,
        "[guard]\nauth_failures = 3\nflood_requests = \"off\"\n",
    )
    .expect("config");
    hangup(&server, "config reloaded");
    guess(1);
    let after = guesser.request(&register_text(&guesser, "1001", 1, "after", None, None, ""));
    assert_eq!(after, None, "banned under the reloaded threshold");
    let log = server.log();
    assert!(
        log.lines().any(|l| l.starts_with('{')
            && l.contains(r#""event":"ban""#)
            && l.contains("127.0.0.2")),
        "{log}"
    );
    // The office still registers: the reload changed rules, not state.
    let office = UdpClient::new(server.sip);
    let ok = register(
        &office,
        &ALICE,
        "office",
        1,
        Some("<sip:1001@127.0.0.1:5999>"),
        Some(120),
    );
    assert_eq!(status(&ok), 200);
    server.stop();
}

#[test]
fn json_logs_leave_security_events_as_they_are_and_a_bad_filter_is_refused() {
    let env = Env::with_config(LENIENT);
    let server = env.serve_with(&["--log-format", "json", "--log", "info"]);
    let log_path = env.path("serve.log");
    server.stop();
    let log = std::fs::read_to_string(log_path).expect("log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    // A security event: exactly its fields, no log envelope around it.
    let weakened = lines
        .iter()
        .find(|l| l["event"] == "config_weakened" && l["field"] == "guard.flood_requests")
        .expect("the config_weakened event");
    let mut keys: Vec<&str> = weakened
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["detail", "event", "field", "rule", "severity"]);
    // An ordinary record: the JSON log's envelope.
    let stopped = lines
        .iter()
        .find(|l| l["message"] == "stopped")
        .expect("the stopped record");
    assert_eq!(stopped["level"], "INFO");
    assert!(stopped["timestamp"].is_string(), "{stopped}");

    let err = env.fails(&["--log", "pbx=loud", "ext", "list"], 2);
    assert!(err.contains("log filter"), "{err}");
}

/// A reloaded `[dialplan]` is in force for the console's audit too, not only for calls:
/// the route finding that depends on the plan follows it without a restart.
#[test]
fn sighup_puts_a_new_dial_plan_in_force_for_the_console_s_audit() {
    use crate::console::{ADMIN_PASSWORD, curl, login};
    let env = Env::with_config("");
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
    // `00.` sent as `+...`: under the default (NANP) plan a call abroad made from a
    // number that is none as dialled, so the audit flags it.
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
    let r = env.run_with_stdin(
        &["admin", "passwd", "--password", "-"],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let (_, cookie) = login(&base, "127.0.0.1", ADMIN_PASSWORD);
    let cookie = format!("Cookie: sipward_session={}", cookie.expect("session"));
    let flagged = || {
        let (code, page) = curl(&["-H", &cookie, &format!("{base}/trunks")]);
        assert_eq!(code, 200, "{page}");
        assert!(
            page.contains(r#"id="route-world""#),
            "the route is listed: {page}"
        );
        page.contains(r#"id="route-world" class="weak""#)
    };
    assert!(
        flagged(),
        "the control: flagged under the plan the server started with"
    );

    // Under a plan where `00` is the international prefix, `00...` is a call abroad
    // as dialled: the rewrite raises nothing.
    std::fs::write(
        env.data.join("sipward.toml"),
        "[dialplan]\ncountry_code = \"49\"\ninternational_prefix = \"00\"\nnational_prefix = \"0\"\n",
    )
    .expect("config");
    hangup(&server, "config reloaded");
    assert!(
        !flagged(),
        "the audit still uses the plan from before the reload"
    );
    server.stop();
}

//! Voicemail retrieval with real peers: SIPp dials `*97` and types its PIN digit by
//! digit with Debian's `dtmf_2833_*.pcap` files (RFC 4733), hears the message count
//! (the server logs what it played), deletes the message and baresip's `mwi` module sees
//! the light go off; wrong PINs over several calls from two addresses lock the box, the
//! right PIN is then refused, and a refusal takes as long whether the box is locked or
//! not (measured); no digit typed in the menus reaches a fake trunk.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::baresip::Baresip;
use crate::harness::Env;
use crate::peers::{Server, eventually, eventually_or, free_port, sipp_auth, sipp_from};

/// 1002's PIN: six different digits, none of them `1` or `7` (the menu's listen and
/// delete keys): a pcap's event has one fixed RTP timestamp, and a digit repeated within
/// a few events is taken for a repeat of the same event.
const PIN: &str = "482936";

/// An extension with known credentials and PIN.
fn add(env: &Env, number: &str, pin: &str) -> (String, String) {
    let auth = format!("desk{number}");
    let pw = format!("Zq8xLmTr4wPy{number}Kb");
    env.ok(&[
        "ext",
        "add",
        number,
        "--auth-id",
        &auth,
        "--password",
        &pw,
        "--pin",
        pin,
    ]);
    (auth, pw)
}

/// MD5 only (SIPp's), and RTP ports of this run's own.
fn config() -> String {
    let base = (free_port() & !1).min(65_000);
    format!(
        "[sip]\ndigest_algorithms = [\"MD5\"]\n[media]\nrtp_ports = \"{base}-{}\"\n",
        base + 39
    )
}

/// SIPp steps that play `keys` (`0`-`9`, `star`, `pound`, space separated) as RFC 4733
/// digits, 300 ms apart, after `wait_ms`.
fn keys(wait_ms: u32, keys: &str) -> String {
    let mut s = format!("  <pause milliseconds=\"{wait_ms}\"/>\n");
    for k in keys.split_whitespace() {
        s.push_str(&format!(
            "  <nop>\n    <action>\n      <exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_{k}.pcap\"/>\n    </action>\n  </nop>\n  <pause milliseconds=\"300\"/>\n"
        ));
    }
    s
}

/// The menu call's scenario: the deposit's INVITE/407/INVITE/200/ACK (to `[field2]`),
/// then `play`, then our BYE, or, with `their_bye`, sipward's BYE answered.
fn scenario(env: &Env, play: &str, their_bye: bool) -> String {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sipp/vm_deposit_uac.xml"),
    )
    .expect("scenario");
    let start = base
        .find("  <pause milliseconds=\"3200\"/>")
        .expect("the audio part");
    let bye = base
        .find("  <send retrans=\"500\">\n    <![CDATA[\n      BYE")
        .expect("BYE");
    let end = if their_bye {
        "  <recv request=\"BYE\" timeout=\"30000\"/>\n  <send>\n    <![CDATA[\n      SIP/2.0 200 OK\n      [last_Via:]\n      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]\n      Content-Length: 0\n\n    ]]>\n  </send>\n</scenario>\n".to_owned()
    } else {
        base[bye..].to_owned()
    };
    let text = format!("{}{play}{end}", &base[..start]);
    let path = env.path(&format!("vm-menu-{}.xml", free_port()));
    std::fs::write(&path, text).expect("write scenario");
    path.to_string_lossy().into_owned()
}

/// One menu call by SIPp from `ip` as `who` dialling `dialled`; how long it took.
fn menu_call(
    env: &Env,
    server: &Server,
    ip: &str,
    who: &(String, String, &str),
    dialled: &str,
    scenario: &str,
) -> Duration {
    let csv = format!(
        "SEQUENTIAL\n{};{};{dialled}\n",
        who.2,
        sipp_auth(&who.0, &who.1)
    );
    let t = Instant::now();
    let run = sipp_from(ip, env, scenario, &csv, server.sip, "u1", 1, 1);
    let took = t.elapsed();
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "{run:?}\n{}",
        server.log()
    );
    took
}

/// SIPp as 1001 leaves a message in 1002's box.
fn leave_message(env: &Env, server: &Server, caller: &(String, String)) {
    let csv = format!(
        "SEQUENTIAL\n1001;{};1002\n",
        sipp_auth(&caller.0, &caller.1)
    );
    let run = sipp_from(
        "127.0.0.1",
        env,
        "vm_deposit_uac.xml",
        &csv,
        server.sip,
        "u1",
        1,
        1,
    );
    assert_eq!((run.successful, run.failed), (1, 0), "{run:?}");
    eventually("the message is filed", Duration::from_secs(5), || {
        server.metric("sipward_voicemail_messages_total") == 1
    });
}

#[test]
fn sipp_logs_in_with_its_pin_hears_the_count_and_a_delete_turns_baresips_light_off() {
    let env = Env::with_config(&config());
    let caller = add(&env, "1001", "590364");
    let (auth, pass) = add(&env, "1002", PIN);
    let server = env.serve();
    leave_message(&env, &server, &caller);
    let phone = Baresip::start_with(
        &env,
        &format!(
            "<sip:1002@{};transport=udp>;auth_user={auth};auth_pass={pass};regint=60\n",
            server.sip
        ),
        "module_app menu.so\nmodule_app mwi.so\n",
    );
    eventually_or(
        "baresip shows the light on",
        Duration::from_secs(15),
        || phone.log().contains("Messages-Waiting: yes"),
        || format!("{}\n---- server\n{}", phone.log(), server.log()),
    );
    // SIPp is 1002 too, but not on the flow 1002 registered on (baresip's): the PIN is
    // asked. PIN and `#`, then `1` (listen) and `7` (delete).
    let pin: Vec<String> = PIN.chars().map(String::from).collect();
    let play = format!(
        "{}{}{}",
        keys(2500, &format!("{} pound", pin.join(" "))),
        keys(4000, "1"),
        keys(5000, "7"),
    ) + "  <pause milliseconds=\"1500\"/>\n";
    let me = (auth.clone(), pass.clone(), "1002");
    menu_call(
        &env,
        &server,
        "127.0.0.1",
        &me,
        "*97",
        &scenario(&env, &play, false),
    );
    let log = server.log();
    assert!(
        log.contains("voicemail login: message count played") && log.contains("new=1"),
        "the count was played after the login:\n{log}"
    );
    assert_eq!(server.metric("sipward_voicemail_retrievals_total"), 1);
    assert_eq!(server.metric("sipward_voicemail_logins_refused_total"), 0);
    eventually_or(
        "baresip shows the light off after the delete",
        Duration::from_secs(10),
        || phone.log().contains("Messages-Waiting: no"),
        || format!("{}\n---- server\n{}", phone.log(), server.log()),
    );
    let listed = env.json(&["vm", "list", "--json"]);
    let b = listed
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["number"] == "1002")
        .expect("1002")
        .clone();
    assert_eq!(b["new"].as_u64(), Some(0), "{b}");
    server.stop();
}

#[test]
fn wrong_pins_from_two_addresses_lock_the_box_and_a_locked_refusal_takes_as_long() {
    // A trunk routed for every outside number, a bare socket recording what it gets.
    let env = Env::with_config(&format!(
        "{}[dialplan]\ncountry_code = \"49\"\ninternational_prefix = \"00\"\nnational_prefix = \"0\"\n",
        config()
    ));
    let trunk = std::net::UdpSocket::bind("127.0.0.7:0").expect("bind the fake trunk");
    trunk
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let at = trunk.local_addr().expect("addr");
    env.ok(&[
        "gateway",
        "add",
        "pstn",
        "--vendor",
        "generic",
        "--ext",
        "800",
        "--auth-id",
        "gw-pstn-8",
        "--password",
        "Gw8-pQ2v-Xk9m-Lr4t",
        "--host",
        &at.to_string(),
    ]);
    env.ok(&["route", "add", "any", "--pattern", "0.", "--trunk", "pstn"]);
    let caller = add(&env, "1001", "590364");
    let (auth, pass) = add(&env, "1002", PIN);
    let server = env.serve();
    let guesser = (caller.0.clone(), caller.1.clone(), "1001");
    // Three wrong PINs of five digits each (no digit within four events of its last
    // use): the menu's third refusal says goodbye and hangs up.
    let wrong = "5 6 9 0 3 pound 8 4 2 5 6 pound 9 0 3 8 4 pound";
    let three_wrong = scenario(&env, &keys(2500, wrong), true);
    // 1002's own credentials from SIPp (not its registered flow: none is registered):
    // the PIN is asked for its own box.
    let owner = (auth.clone(), pass.clone(), "1002");
    let first = menu_call(&env, &server, "127.0.0.1", &owner, "*97", &three_wrong);
    assert_eq!(server.metric("sipward_voicemail_logins_refused_total"), 3);
    // From a second address: the fourth and fifth lock the box, the sixth is refused
    // locked, and takes as long.
    let second = menu_call(&env, &server, "127.0.0.2", &owner, "*97", &three_wrong);
    assert_eq!(server.metric("sipward_voicemail_logins_refused_total"), 6);
    let shown = env.json(&["vm", "show", "1002", "--json"]);
    assert!(
        shown["box"]["locked_until"].as_i64().is_some(),
        "the box is locked: {shown}"
    );
    // The right PIN three times while locked: refused each time, the same call length.
    let pin: Vec<String> = PIN.chars().map(String::from).collect();
    let right = format!("{} pound", pin.join(" "));
    let right_thrice = scenario(&env, &keys(2500, &format!("{right} {right} {right}")), true);
    let locked = menu_call(&env, &server, "127.0.0.1", &owner, "*97", &right_thrice);
    assert_eq!(server.metric("sipward_voicemail_logins_refused_total"), 9);
    assert!(
        !server
            .log()
            .contains("voicemail login: message count played"),
        "the locked box never opened"
    );
    // The same three wrong PINs on a box locked all along take as long as on the open
    // box (the first call): the caller cannot tell a lock from a wrong PIN.
    let all_locked = menu_call(&env, &server, "127.0.0.2", &owner, "*97", &three_wrong);
    assert_eq!(server.metric("sipward_voicemail_logins_refused_total"), 12);
    for (what, took) in [("locking", second), ("locked", all_locked)] {
        assert!(
            first.abs_diff(took) < Duration::from_millis(400),
            "three refusals: open box {first:?}, {what} {took:?}"
        );
    }
    eprintln!(
        "menu call with three refusals: open box {first:?}, locking {second:?}, locked {all_locked:?}; right PIN x3 while locked {locked:?}"
    );
    // `*98` from the guessing extension, then digits that are numbers at home and abroad
    // in the mailbox and PIN entries: nothing reaches the trunk.
    let digits = "0 0 4 4 2 star 0 9 pound 5 6 3 8 pound 0 4 2 pound";
    menu_call(
        &env,
        &server,
        "127.0.0.1",
        &guesser,
        "*98",
        &scenario(&env, &keys(2500, digits), false),
    );
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while let Ok(n) = trunk.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got, Vec::<String>::new(), "nothing reached the trunk");
    assert_eq!(server.metric("sipward_calls_trunk_total"), 0);
    assert!(server.metric("sipward_voicemail_digits_total") >= 30);
    server.stop();
}

//! The voicemail's zero-out with real peers: SIPp, an internal extension leaving a
//! message, presses `0` (Debian's `dtmf_2833_0.pcap`, RFC 4733) during the greeting and
//! gets a REFER whose Refer-To is exactly the configured operator, then sipward's BYE;
//! the same from the retrieval menu after the PIN. The control presses `0` with no
//! operator configured and gets no REFER, and a PSTN caller coming in through a DID
//! gets none either (with the rule mutated to offer it, that test fails on the REFER).
//! A fake trunk routed for every outside number hears nothing either way. A `[voicemail] operator` that is not an internal extension
//! (a PSTN number, a pattern, a gateway's virtual extension, the fax) stops `serve` at
//! start and is refused at SIGHUP, the error naming the key.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::harness::Env;
use crate::peers::{Server, eventually_or, free_port, sipp_auth, sipp_from};

/// 1002's PIN (no `0`: the digit under test; no digit twice, see voicemail_retrieval).
const PIN: &str = "482936";

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

/// MD5 only (SIPp's), a domain, RTP ports of this run's own, outside numbers through a
/// trunk, and `voicemail` as the `[voicemail]` section's body.
fn config(voicemail: &str) -> String {
    let base = (free_port() & !1).min(65_000);
    format!(
        "[sip]\ndigest_algorithms = [\"MD5\"]\ndomain = \"pbx.example.com\"\n\
         [media]\nrtp_ports = \"{base}-{}\"\n\
         [dialplan]\ncountry_code = \"49\"\ninternational_prefix = \"00\"\nnational_prefix = \"0\"\n\
         [voicemail]\n{voicemail}",
        base + 39
    )
}

/// A gateway `pstn` (virtual extension 800) at a bare socket, routed for every number
/// starting with 0: what reaches it is read back by [`heard`].
fn fake_trunk(env: &Env) -> std::net::UdpSocket {
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
    trunk
}

fn heard(trunk: &std::net::UdpSocket) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while let Ok(n) = trunk.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

/// `keys`, with no pause after the last digit: the REFER may come at once, and SIPp
/// takes a message that arrives during a pause for an unexpected one.
fn keys_then_refer(wait_ms: u32, digits: &str) -> String {
    let all = keys(wait_ms, digits);
    all.strip_suffix("  <pause milliseconds=\"300\"/>\n")
        .unwrap_or(&all)
        .to_owned()
}

/// SIPp steps that play `keys` as RFC 4733 digits, 300 ms apart, after `wait_ms`.
fn keys(wait_ms: u32, keys: &str) -> String {
    let mut s = format!("  <pause milliseconds=\"{wait_ms}\"/>\n");
    for k in keys.split_whitespace() {
        s.push_str(&format!(
            "  <nop>\n    <action>\n      <exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_{k}.pcap\"/>\n    </action>\n  </nop>\n  <pause milliseconds=\"300\"/>\n"
        ));
    }
    s
}

/// After `play`: a REFER whose one Refer-To must be exactly `<refer_to>` (SIPp fails the
/// call otherwise), answered 202, then sipward's BYE, answered 200.
fn refer_expected(refer_to: &str) -> String {
    // The angle brackets as XML entities: the regexp is an attribute's value.
    let regexp = format!(
        "^[[:space:]]*&lt;{}&gt;[[:space:]]*$",
        refer_to.replace('.', "\\.")
    );
    format!(
        r#"  <recv request="REFER" timeout="15000">
    <action>
      <ereg regexp="{regexp}" search_in="hdr" header="Refer-To:" check_it="true" assign_to="refer_to"/>
    </action>
  </recv>
  <Reference variables="refer_to"/>
  <send>
    <![CDATA[
      SIP/2.0 202 Accepted
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
  <recv request="BYE" timeout="15000"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"#
    )
}

/// The deposit scenario's INVITE/407/INVITE/200/ACK to `[field2]`, then `play`, then
/// `end` (None: the deposit's own BYE from SIPp; any REFER before it fails the call).
fn scenario(env: &Env, play: &str, end: Option<String>) -> String {
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
    let end = end.unwrap_or_else(|| base[bye..].to_owned());
    let text = format!("{}{play}{end}", &base[..start]);
    let path = env.path(&format!("vm-operator-{}.xml", free_port()));
    std::fs::write(&path, text).expect("write scenario");
    path.to_string_lossy().into_owned()
}

/// One SIPp call as `who` (auth ID, password, number) dialling `dialled`; it must succeed.
fn call(env: &Env, server: &Server, who: (&str, &str, &str), dialled: &str, scenario: &str) {
    let csv = format!(
        "SEQUENTIAL\n{};{};{dialled}\n",
        who.2,
        sipp_auth(who.0, who.1)
    );
    let run = sipp_from("127.0.0.1", env, scenario, &csv, server.sip, "u1", 1, 1);
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "{run:?}\n{}",
        server.log()
    );
}

#[test]
fn zero_refers_an_internal_caller_to_the_configured_operator_and_nowhere_else() {
    let env = Env::with_config(&config("operator = \"100\"\n"));
    let trunk = fake_trunk(&env);
    add(&env, "100", "705318");
    let caller = add(&env, "1001", "590364");
    let owner = add(&env, "1002", PIN);
    let server = env.serve();

    // The greeting of 1002's box (no phone registered: the box answers), `0` at once.
    let deposit = scenario(
        &env,
        &keys_then_refer(500, "0"),
        Some(refer_expected("sip:100@pbx.example.com")),
    );
    call(
        &env,
        &server,
        (&caller.0, &caller.1, "1001"),
        "1002",
        &deposit,
    );
    assert_eq!(server.metric("sipward_voicemail_operator_refers_total"), 1);
    assert_eq!(
        server.metric("sipward_voicemail_messages_total"),
        0,
        "leaving for the operator leaves no message"
    );

    // The menu: 1002's own box by PIN (SIPp is not on a registered flow), then `0`.
    let pin: Vec<String> = PIN.chars().map(String::from).collect();
    let play = format!(
        "{}{}",
        keys(2500, &format!("{} pound", pin.join(" "))),
        keys_then_refer(3000, "0")
    );
    let menu = scenario(&env, &play, Some(refer_expected("sip:100@pbx.example.com")));
    call(&env, &server, (&owner.0, &owner.1, "1002"), "*97", &menu);
    assert_eq!(server.metric("sipward_voicemail_operator_refers_total"), 2);
    assert_eq!(server.metric("sipward_voicemail_logins_refused_total"), 0);

    // SIPp does not follow the REFER: whatever the digits, nothing was sent to the trunk.
    assert_eq!(
        heard(&trunk),
        Vec::<String>::new(),
        "nothing reached the trunk"
    );
    assert_eq!(server.metric("sipward_calls_trunk_total"), 0);
    server.stop();
}

#[test]
fn without_an_operator_zero_in_the_greeting_sends_no_refer() {
    let env = Env::with_config(&config(""));
    let trunk = fake_trunk(&env);
    add(&env, "100", "705318");
    let caller = add(&env, "1001", "590364");
    add(&env, "1002", PIN);
    let server = env.serve();
    // `0` during the greeting, then SIPp's own BYE after the greeting: a REFER in
    // between would be an unexpected message and fail the call.
    let deposit = scenario(
        &env,
        &(keys(500, "0") + "  <pause milliseconds=\"3000\"/>\n"),
        None,
    );
    call(
        &env,
        &server,
        (&caller.0, &caller.1, "1001"),
        "1002",
        &deposit,
    );
    assert_eq!(server.metric("sipward_voicemail_operator_refers_total"), 0);
    assert!(
        server.metric("sipward_voicemail_digits_total") >= 1,
        "the 0 arrived (else this control proves nothing)"
    );
    assert_eq!(
        heard(&trunk),
        Vec::<String>::new(),
        "nothing reached the trunk"
    );
    server.stop();
}

/// `serve` with the current config must stop by itself with exit 2 within a deadline;
/// its stderr.
fn refused_at_start(env: &Env) -> String {
    let mut child: Child = env.spawn(&["serve", "--sip", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started with an operator that is no internal extension");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn an_operator_that_is_no_internal_extension_is_refused_at_start_and_at_reload() {
    let env = Env::with_config(&config(""));
    fake_trunk(&env);
    add(&env, "100", "705318");
    for (operator, why) in [
        ("0044207946", "is no extension"),
        ("004420794612", "must name an internal extension"),
        ("9XX", "must name an internal extension"),
        ("800", "is no extension"),
        ("888", "is a fax extension"),
    ] {
        std::fs::write(
            env.data.join("sipward.toml"),
            config(&format!("operator = \"{operator}\"\n")),
        )
        .expect("config");
        let stderr = refused_at_start(&env);
        assert!(
            stderr.contains("voicemail.operator") && stderr.contains(why),
            "{operator}: {stderr}"
        );
    }
    // The control: an extension starts; then a reload naming the gateway is refused and
    // the running settings stay.
    std::fs::write(
        env.data.join("sipward.toml"),
        config("operator = \"100\"\n"),
    )
    .expect("config");
    let server = env.serve();
    std::fs::write(
        env.data.join("sipward.toml"),
        config("operator = \"800\"\n"),
    )
    .expect("config");
    server.signal("HUP");
    eventually_or(
        "the reload is refused",
        Duration::from_secs(10),
        || {
            let log = server.log();
            log.contains("config not reloaded") && log.contains("voicemail.operator")
        },
        || server.log(),
    );
    server.stop();
}

/// The trunk's call into a DID whose box answers: the trunk scenario with RFC 4733
/// offered, `0` during the greeting, then its own BYE after the greeting (a REFER in
/// between would be an unexpected message and fail the call).
fn trunk_scenario(env: &Env) -> String {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sipp/trunk_uac.xml"),
    )
    .expect("scenario");
    let text = base
        .replace(
            "      m=audio [media_port] RTP/AVP 0\n      a=rtpmap:0 PCMU/8000\n",
            "      m=audio [media_port] RTP/AVP 0 101\n      a=rtpmap:0 PCMU/8000\n      a=rtpmap:101 telephone-event/8000\n      a=fmtp:101 0-15\n",
        )
        .replace(
            "  <pause milliseconds=\"200\"/>\n",
            &(keys(500, "0") + "  <pause milliseconds=\"3000\"/>\n"),
        );
    assert!(text.contains("telephone-event") && text.contains("dtmf_2833_0"));
    let path = env.path(&format!("vm-trunk-{}.xml", free_port()));
    std::fs::write(&path, text).expect("write scenario");
    path.to_string_lossy().into_owned()
}

#[test]
fn a_caller_from_a_trunk_is_not_offered_the_operator() {
    // The same operator as in the REFER test above (its positive control): an internal
    // caller's `0` gets the REFER; the PSTN caller's `0` through a DID gets nothing.
    let env = Env::with_config(&config("operator = \"100\"\n"));
    let trunk = fake_trunk(&env);
    add(&env, "100", "705318");
    add(&env, "1002", PIN);
    env.ok(&["did", "add", "+4930555123", "--ext", "1002"]);
    let server = env.serve();
    let run = sipp_from(
        "127.0.0.7",
        &env,
        &trunk_scenario(&env),
        "SEQUENTIAL\n4930555123;\n",
        server.sip,
        "u1",
        1,
        1,
    );
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "{run:?}\n{}",
        server.log()
    );
    assert_eq!(
        server.metric("sipward_voicemail_calls_total"),
        1,
        "the box answered"
    );
    assert!(
        server.metric("sipward_voicemail_digits_total") >= 1,
        "the 0 arrived (else this proves nothing)"
    );
    assert_eq!(server.metric("sipward_voicemail_operator_refers_total"), 0);
    assert_eq!(
        heard(&trunk),
        Vec::<String>::new(),
        "nothing went to the trunk"
    );
    server.stop();
}

//! Voicemail on the wire with real peers: SIPp leaves a message (Debian's `g711a.pcap`
//! played as RTP after the greeting); the WAV in the data dir is private and holds the
//! audio that was sent, sample for sample; `sox` reads it as 8 kHz 16-bit mono.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::baresip::Baresip;
use crate::harness::{Env, mode_of};
use crate::peers::{eventually, eventually_or, free_port, require, sipp_auth, sipp_from};

/// An extension with known credentials.
fn add(env: &Env, number: &str) -> (String, String) {
    let auth = format!("desk{number}");
    let pw = format!("Zq8xLmTr4wPy{number}Kb");
    env.ok(&["ext", "add", number, "--auth-id", &auth, "--password", &pw]);
    (auth, pw)
}

/// A config with MD5 only (SIPp's) and a range of RTP ports of this run's own.
fn config() -> String {
    let base = (free_port() & !1).min(65_000);
    format!(
        "[sip]\ndigest_algorithms = [\"MD5\"]\n[media]\nrtp_ports = \"{base}-{}\"\n",
        base + 39
    )
}

/// The A-law payloads of the RTP packets in a pcap file (Ethernet, IPv4, UDP), decoded.
fn pcap_audio(path: &Path) -> Vec<i16> {
    let b = std::fs::read(path).expect("pcap");
    assert_eq!(&b[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian pcap");
    let mut at = 24;
    let mut out = Vec::new();
    while at + 16 <= b.len() {
        let len = u32::from_le_bytes([b[at + 8], b[at + 9], b[at + 10], b[at + 11]]) as usize;
        let frame = &b[at + 16..at + 16 + len];
        at += 16 + len;
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let rtp = media::rtp::RtpPacket::parse(&ip[ihl + 8..]).expect("RTP");
        assert_eq!(rtp.payload_type, 8, "A-law");
        media::g711::Law::ALaw.decode_into(rtp.payload, &mut out);
    }
    out
}

fn messages(env: &Env, number: &str) -> Vec<PathBuf> {
    std::fs::read_dir(env.data.join("voicemail").join(number))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("msg-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn soxi(flag: &str, path: &Path) -> String {
    let out = Command::new(require("soxi", "sox"))
        .arg(flag)
        .arg(path)
        .output()
        .expect("soxi");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// SIPp, as extension 1001, leaves a message in 1002's box.
fn leave_message(env: &Env, server: &crate::peers::Server, caller: &(String, String)) {
    let csv = format!(
        "SEQUENTIAL\n1001;{};1002\n",
        sipp_auth(&caller.0, &caller.1)
    );
    let before = server.metric("sipward_voicemail_messages_total");
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
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "{run:?}\n{}",
        server.log()
    );
    eventually("the message is filed", Duration::from_secs(5), || {
        server.metric("sipward_voicemail_messages_total") == before + 1
    });
}

#[test]
fn baresip_sees_the_message_waiting_light_go_on() {
    let env = Env::with_config(&config());
    let caller = add(&env, "1001");
    let (auth, pass) = add(&env, "1002");
    let server = env.serve();
    // No phone of 1002 is registered: the box takes the call.
    leave_message(&env, &server, &caller);
    // 1002's phone starts, registers, subscribes to message-summary (401, then with
    // credentials) and is told a message waits.
    let phone = Baresip::start_with(
        &env,
        &format!(
            "<sip:1002@{};transport=udp>;auth_user={auth};auth_pass={pass};regint=60\n",
            server.sip
        ),
        "module_app menu.so\nmodule_app mwi.so\n",
    );
    eventually_or(
        "baresip shows the message-waiting light on",
        Duration::from_secs(15),
        || {
            let l = phone.log();
            l.contains("MWI for")
                && l.contains("Messages-Waiting: yes")
                && l.contains("Voice-Message: 1/0")
        },
        || format!("{}\n---- server\n{}", phone.log(), server.log()),
    );
    assert!(server.metric("sipward_notify_sent_total") >= 1);
    server.stop();
}

#[test]
fn sipp_leaves_a_message_that_holds_the_audio_it_sent() {
    let env = Env::with_config(&config());
    let caller = add(&env, "1001");
    add(&env, "1002");
    let server = env.serve();
    leave_message(&env, &server, &caller);
    let files = messages(&env, "1002");
    assert_eq!(files.len(), 1, "{files:?}");
    let wav = &files[0];
    assert_eq!(mode_of(wav), 0o600);
    assert_eq!(soxi("-r", wav), "8000");
    assert_eq!(soxi("-c", wav), "1");
    assert_eq!(soxi("-b", wav), "16");

    let sent = pcap_audio(Path::new("/usr/share/sip-tester/g711a.pcap"));
    let recorded =
        media::wav::decode(&std::fs::read(wav).expect("wav"), 8000 * 600).expect("8 kHz mono PCM");
    // SIPp starts the pcap after the tone: the message is the pcap's audio, in order.
    let slack = sent.len() / 20;
    assert!(
        recorded.len() + slack >= sent.len() && recorded.len() <= sent.len() + slack,
        "recorded {} samples, sent {}",
        recorded.len(),
        sent.len()
    );
    let same = recorded.iter().zip(&sent).filter(|(a, b)| a == b).count();
    assert!(
        same * 100 >= sent.len() * 95,
        "{same} of {} samples as sent",
        sent.len()
    );
    assert_eq!(
        server.metric("sipward_rtp_ports_in_use"),
        0,
        "port given back"
    );
    // The box files it as new, with the recorded length (7.08 s of pcap).
    let listed = env.json(&["vm", "list", "--json"]);
    let b = listed
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["number"] == "1002")
        .expect("1002")
        .clone();
    assert_eq!(b["new"].as_u64(), Some(1), "{b}");
    let ms = b["total_ms"].as_u64().expect("total_ms");
    assert!((6500..=7500).contains(&ms), "{ms} ms");
    server.stop();
}

/// The deposit scenario with `play` (the audio part) replaced.
fn deposit_scenario(env: &Env, play: &str) -> String {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sipp/vm_deposit_uac.xml"),
    )
    .expect("scenario");
    let start = base.find("  <nop>").expect("the audio part");
    let end = base
        .find("  <send retrans=\"500\">\n    <![CDATA[\n      BYE")
        .expect("BYE");
    let text = format!("{}{play}{}", &base[..start], &base[end..]);
    let path = env.path(&format!("vm-digits-{}.xml", free_port()));
    std::fs::write(&path, text).expect("write scenario");
    path.to_string_lossy().into_owned()
}

#[test]
fn no_digits_in_a_deposit_reach_a_trunk() {
    // Germany's plan: "0..." is a national number, "00..." international; both are
    // routed to a gateway that is a bare UDP socket here, recording what it gets.
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
        "gw-pstn-7",
        "--password",
        "Gw7-pQ2v-Xk9m-Lr4t",
        "--host",
        &at.to_string(),
    ]);
    env.ok(&[
        "route",
        "add",
        "national",
        "--pattern",
        "0ZX.",
        "--trunk",
        "pstn",
    ]);
    env.ok(&[
        "route",
        "add",
        "world",
        "--pattern",
        "00.",
        "--trunk",
        "pstn",
    ]);
    let caller = add(&env, "1001");
    add(&env, "1002");
    let server = env.serve();
    let received = |trunk: &std::net::UdpSocket| {
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while let Ok(n) = trunk.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got
    };

    // Every digit, and sequences that are numbers abroad and at home, typed during the
    // greeting and the message.
    let mut play = String::new();
    let sequences = [
        "0 1 2 3 4 5 6 7 8 9 star",
        "0 0 4 4 2 0 7 9 4 6 0 0 0 0",
        "star 0 star 5 0 3 0 1 2 3 4 5 6 7",
        "9 0 0 star star 0",
    ];
    for seq in sequences {
        for d in seq.split(' ') {
            play.push_str(&format!(
                "  <nop>\n    <action>\n      <exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_{d}.pcap\"/>\n    </action>\n  </nop>\n  <pause milliseconds=\"250\"/>\n"
            ));
        }
    }
    let scenario = deposit_scenario(&env, &play);
    let csv = format!(
        "SEQUENTIAL\n1001;{};1002\n",
        sipp_auth(&caller.0, &caller.1)
    );
    let run = sipp_from("127.0.0.1", &env, &scenario, &csv, server.sip, "u1", 1, 1);
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "{run:?}\n{}",
        server.log()
    );
    // Each digit's pcap carries one fixed RTP timestamp, so a digit repeated within a
    // few events is one event to the receiver; the first run of eleven different
    // digits all count.
    eventually_or(
        "the digits reached the voicemail",
        Duration::from_secs(5),
        || server.metric("sipward_voicemail_digits_total") >= 11,
        || format!("{} digits", server.metric("sipward_voicemail_digits_total")),
    );
    assert_eq!(
        received(&trunk),
        Vec::<String>::new(),
        "nothing reached the trunk"
    );
    assert_eq!(server.metric("sipward_calls_trunk_total"), 0);

    // Positive control: the same caller dialling the same number does reach the trunk.
    let csv = format!(
        "SEQUENTIAL\n1001;{};04420794600\n",
        sipp_auth(&caller.0, &caller.1)
    );
    let _ = sipp_from(
        "127.0.0.1",
        &env,
        "invite_auth.xml",
        &csv,
        server.sip,
        "u1",
        1,
        1,
    );
    let got = received(&trunk);
    assert!(
        got.iter().any(|m| m.starts_with("INVITE ")),
        "the control call reaches the fake trunk: {got:?}"
    );
    server.stop();
}

//! REFER targets in odd spellings, against the class check of issue #14: a low-class
//! extension must not get a higher-class phone to call abroad by writing the number in a
//! form the check reads one way and the phone another (percent-escapes, visual
//! separators, upper-case schemes, `sips:`, `tel:` with a phone context, feature codes,
//! `00` and `+` variants). Every such REFER must stop at sipward; the control, a REFER to
//! another extension, reaches the phone.

use std::time::Duration;

use crate::harness::Env;
use crate::user_agent::{Dialog, Ua, ext, header};

/// Targets abroad (London, from the NANP default plan), one per line.
#[rustfmt::skip]
const ODD_TARGETS: &[&str] = &[
    "<sip:%30%31%31442079460000@{pbx}>",
    "<sip:011%34%342079460000@{pbx}>",
    "<sip:011-44-20-7946-0000@{pbx}>",
    "<sip:011.44.20.7946.0000@{pbx}>",
    "<sip:(011)442079460000@{pbx}>",
    "<SIP:011442079460000@{pbx}>",
    "<sips:011442079460000@{pbx}>",
    "<sip:+442079460000@{pbx};user=phone>",
    "<sip:%2B442079460000@{pbx};user=phone>",
    "<sip:00442079460000@{pbx}>",
    "<sip:1011442079460000@{pbx}>",
    "<sip:*72011442079460000@{pbx}>",
    "<sip:011442079460000%23@{pbx}>",
    "<sip:011442079460000#@{pbx}>",
    "<tel:+44-20-7946-0000>",
    "<tel:011442079460000;phone-context=+1>",
    "<TEL:+442079460000>",
    "<tel:+18765550123>",
    "<sip:18765550123@{pbx}>",
    "<sip:19005550123@{pbx}>",
    "\"2513\" <sip:011442079460000@{pbx}>",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refer_targets_in_odd_spellings_stop_at_sipward() {
    let env = Env::with_config("[sip]\ndigest_algorithms = [\"MD5\"]\n");
    // A route for everything abroad and for `+`, so that a target would be routable.
    let gw = Ua::bind("127.0.0.90", "127.0.0.1:9".parse().expect("addr")).await;
    env.ok(&[
        "gateway",
        "add",
        "pstn",
        "--vendor",
        "generic",
        "--ext",
        "800",
        "--auth-id",
        "gw-tr-7",
        "--password",
        "Gw7-pQ2v-Xk9m-Lr4t",
        "--host",
        &gw.addr.to_string(),
    ]);
    for (name, pattern) in [("world", "011."), ("plus", "+."), ("nanp", "1NXXNXXXXXX")] {
        env.ok(&[
            "route",
            "add",
            name,
            "--pattern",
            pattern,
            "--trunk",
            "pstn",
        ]);
    }
    let attacker_acc = ext(&env, "2911", "internal");
    let victim_acc = ext(&env, "2912", "international");
    let colleague_acc = ext(&env, "2513", "national");
    let server = env.serve();
    let attacker = Ua::phone("127.0.0.91", server.sip, &attacker_acc).await;
    let victim = Ua::phone("127.0.0.92", server.sip, &victim_acc).await;
    let colleague = Ua::phone("127.0.0.93", server.sip, &colleague_acc).await;
    for p in [&attacker, &victim, &colleague] {
        p.register().await;
    }
    // A call from the attacker that the victim answers.
    let out = attacker.invite(victim.number(), "").await;
    let invite = victim.wait_request("INVITE", &out.call_id).await;
    victim.answer(&invite).await;
    let ok = attacker.wait_answer(&out, |c| c == 200).await;
    let mut view = Dialog::uac(&out, &ok);
    attacker.ack_2xx(&view, out.cseq).await;
    victim.wait_request("ACK", &out.call_id).await;

    for (n, template) in ODD_TARGETS.iter().enumerate() {
        let target = template.replace("{pbx}", &server.sip.to_string());
        attacker
            .send_in_dialog(
                &mut view,
                "REFER",
                &format!("Refer-To: {target}\r\nX-Case: {n}\r\n"),
                "",
            )
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Control: a REFER to another extension reaches the victim.
    attacker
        .send_in_dialog(
            &mut view,
            "REFER",
            &format!("Refer-To: <sip:2513@{}>\r\nX-Case: control\r\n", server.sip),
            "",
        )
        .await;
    victim
        .wait("control: a REFER to an extension reaches the phone", |m| {
            m.starts_with("REFER ") && header(m, "X-Case") == Some("control")
        })
        .await;
    // The control came after every case: any case let through has arrived by now.
    let leaked: Vec<String> = victim
        .received()
        .iter()
        .filter(|r| r.text.starts_with("REFER "))
        .filter_map(|r| header(&r.text, "X-Case"))
        .filter(|c| *c != "control")
        .filter_map(|c| c.parse::<usize>().ok())
        .map(|n| ODD_TARGETS[n].to_owned())
        .collect();
    let to_gateway = gw
        .received()
        .iter()
        .map(|r| r.text.lines().next().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    server.stop();
    assert!(
        leaked.is_empty() && to_gateway.is_empty(),
        "REFERs from an internal-class extension reached the international phone: \
         {leaked:#?}\nthe gateway got: {to_gateway:#?}"
    );
}

//! A credential change revokes everything the old credentials reached (issue 15), end to
//! end with real peers: SIPp registers as the phone and as the attacker, curl fetches
//! provisioning files as both, aiosmtpd receives the mails.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Env;
use crate::peers::{SMTP_PASSWORD, Server, Smtp, eventually, eventually_or};
use crate::regenerate::{MAC, base_config, curl, file_password, mail_field, register};

const PHONE: &str = "127.0.0.2";
const ATTACKER: &str = "127.0.0.66";

/// The provisioning login's password in a Yealink file.
fn file_login(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("static.auto_provision.server.password = "))
        .map(str::to_owned)
}

/// The SIP password in a Yealink file.
fn file_sip_password(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("account.1.password = "))
        .map(str::to_owned)
}

fn registrations(env: &Env, number: &str) -> Vec<Value> {
    env.json(&["ext", "show", number, "--json"])["registrations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Fetches the phone's file with `login` from `from`: the status and the body.
fn fetch(server: &Server, path: &str, from: &str, login: &str) -> (u16, String) {
    let url = format!("http://{}/prov/{path}/{MAC}.cfg", server.http);
    let user = format!("{MAC}:{login}");
    curl(&["--interface", from, "--digest", "-u", &user], &url)
}

#[test]
fn after_regenerate_the_old_mail_opens_nothing_and_the_phone_carries_on() {
    let env = Env::new();
    let smtp = Smtp::start(&env);
    env.ok(&["ext", "list"]);
    // Mail is down for now: what Re-Generate queues waits in the outbox.
    std::fs::write(env.data.join("sipward.toml"), base_config()).expect("config");
    env.ok(&[
        "ext",
        "add",
        "3701",
        "--auth-id",
        "desk3701",
        "--email",
        "alice@example.com",
        "--mac",
        MAC,
        "--model",
        "Yealink T46U",
    ]);
    // A first Re-Generate: its mail (P1, and, as mails did before, the provisioning
    // login) is what the attacker gets hold of.
    let first = env.json(&["ext", "regenerate", "3701", "--json"]);
    let p1 = first["regenerated"][0]["password"]
        .as_str()
        .expect("p1")
        .to_owned();
    let shown = env.json(&["ext", "show", "3701", "--reveal", "--json"]);
    let l1 = shown["provisioning"]["password"]
        .as_str()
        .expect("login")
        .to_owned();
    let path = shown["provisioning"]["path"]
        .as_str()
        .expect("path")
        .to_owned();
    let server = env.serve();

    // 1. The phone is provisioned and registered: it fetches its file with its login,
    // from its address, and registers with what the file says.
    let (code, file) = fetch(&server, &path, PHONE, &l1);
    assert_eq!(code, 200, "{file}");
    assert_eq!(file_sip_password(&file).as_deref(), Some(p1.as_str()));
    assert_eq!(
        file_login(&file).as_deref(),
        Some(l1.as_str()),
        "the file carries the login"
    );
    assert!(register(&env, PHONE, &server, "3701", "desk3701", &p1));
    assert_eq!(
        registrations(&env, "3701").len(),
        1,
        "durable before its 200"
    );

    // 2. The attacker holds the old mail. 3. Re-Generate.
    let second = env.json(&["ext", "regenerate", "3701", "--json"]);
    let item = &second["regenerated"][0];
    let p2 = item["password"].as_str().expect("p2").to_owned();
    assert_eq!(item["resync"], true, "the phone is told to re-fetch");
    assert_eq!(item["grace"]["sources"], serde_json::json!([PHONE]));
    let mails = env.json(&["mail", "list", "--json"]);
    let states: Vec<(&str, &str)> = mails
        .as_array()
        .expect("list")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or(""),
                m["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        states.iter().filter(|(_, s)| *s == "queued").count(),
        1,
        "only the new mail waits: {states:?}"
    );

    // Nothing the attacker holds works: the file...
    assert_eq!(
        fetch(&server, &path, ATTACKER, &l1).0,
        401,
        "the old provisioning login from elsewhere"
    );
    // ...SIP (once the server has reloaded, within a poll)...
    eventually(
        "the old SIP password is refused to the attacker",
        Duration::from_secs(20),
        || !register(&env, ATTACKER, &server, "3701", "desk3701", &p1),
    );
    // ...and the mails: the one with the old credentials is never delivered; the
    // new one goes to the extension's address.
    std::fs::write(
        env.data.join("sipward.toml"),
        base_config() + &smtp.config(SMTP_PASSWORD),
    )
    .expect("config");
    let sent = env.json(&["mail", "send", "--json"]);
    assert_eq!(sent.as_array().map(Vec::len), Some(1), "{sent}");
    let delivered = smtp.messages();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].starts_with("X-Test-Envelope-To: alice@example.com"));
    assert_eq!(
        mail_field(&delivered[0], "SIP password:").as_deref(),
        Some(p2.as_str())
    );
    assert!(!delivered[0].contains(&p1) && !delivered[0].contains(&l1));

    // 4. The phone re-provisions with the login it has (from where it is registered:
    // the grace window) and registers with the new password.
    let (code, file) = fetch(&server, &path, PHONE, &l1);
    assert_eq!(code, 200, "the phone fetches its new file: {file}");
    assert_eq!(file_sip_password(&file).as_deref(), Some(p2.as_str()));
    let l2 = file_login(&file).expect("the new login");
    assert_ne!(l2, l1, "rotated");
    assert_eq!(file_password(&env, MAC), p2);
    assert!(register(&env, PHONE, &server, "3701", "desk3701", &p2));
    // Its new login ends the window: the old credentials are dead even there.
    eventually_or(
        "the window ends",
        Duration::from_secs(20),
        || fetch(&server, &path, PHONE, &l1).0 == 401,
        || server.log(),
    );
    assert!(!register(&env, PHONE, &server, "3701", "desk3701", &p1));
    assert_eq!(
        fetch(&server, &path, PHONE, &l2).0,
        200,
        "the new login works"
    );
    let regs = registrations(&env, "3701");
    assert_eq!(regs.len(), 1, "{regs:?}");
    assert!(
        regs[0]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with(PHONE)),
        "{regs:?}"
    );
    server.stop();
}

#[test]
fn a_removed_number_added_again_never_shows_or_keeps_the_old_phone() {
    let env = Env::with_config(&base_config());
    env.ok(&[
        "ext",
        "add",
        "6001",
        "--auth-id",
        "old6001",
        "--password",
        "Vq3Lx9TzKp2Wm7Rb",
    ]);
    let server = env.serve();
    assert!(register(
        &env,
        PHONE,
        &server,
        "6001",
        "old6001",
        "Vq3Lx9TzKp2Wm7Rb"
    ));
    eventually("registered", Duration::from_secs(10), || {
        registrations(&env, "6001").len() == 1 && server.metric("sipward_bindings") == 1
    });

    env.ok(&["ext", "remove", "6001"]);
    env.ok(&[
        "ext",
        "add",
        "6001",
        "--auth-id",
        "new6001",
        "--password",
        "Nq4Zt8LmXw2Kp7Rb",
    ]);
    // The store forgot the previous owner's phone with the extension...
    assert!(registrations(&env, "6001").is_empty(), "ext show");
    // ...and the running server lets go of it at its next reload (calls to 6001 can
    // no longer ring it), and says so.
    eventually_or(
        "the server drops the removed extension's binding",
        Duration::from_secs(20),
        || server.metric("sipward_bindings") == 0,
        || server.log(),
    );
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("\"event\":\"credentials_revoked\"")
                && l.contains("\"number\":\"6001\"")),
        "{log}"
    );
    server.stop();
    // Nor does it come back after a restart.
    let server = env.serve();
    assert_eq!(server.metric("sipward_bindings"), 0);
    assert!(registrations(&env, "6001").is_empty());
    // The new owner registers as usual.
    assert!(register(
        &env,
        PHONE,
        &server,
        "6001",
        "new6001",
        "Nq4Zt8LmXw2Kp7Rb"
    ));
    assert_eq!(registrations(&env, "6001").len(), 1);
    server.stop();
}

#[test]
fn a_new_password_lets_go_of_the_registrations_made_with_the_old_one() {
    // Without a grace window: at once.
    let env = Env::with_config(&(base_config() + "grace_secs = 0\n"));
    env.ok(&[
        "ext",
        "add",
        "6101",
        "--auth-id",
        "desk6101",
        "--password",
        "Vq3Lx9TzKp2Wm7Rb",
    ]);
    let server = env.serve();
    assert!(register(
        &env,
        PHONE,
        &server,
        "6101",
        "desk6101",
        "Vq3Lx9TzKp2Wm7Rb"
    ));
    eventually("registered", Duration::from_secs(10), || {
        registrations(&env, "6101").len() == 1 && server.metric("sipward_bindings") == 1
    });
    let said = env.ok(&["ext", "update", "6101", "--password", "Nq4Zt8LmXw2Kp7Rb"]);
    assert!(
        !said.contains("still works"),
        "no window, nothing said open:\n{said}"
    );
    assert!(registrations(&env, "6101").is_empty());
    eventually_or(
        "the old registration goes",
        Duration::from_secs(20),
        || server.metric("sipward_bindings") == 0,
        || server.log(),
    );
    server.stop();

    // With the default window: the phone keeps its registration until it logs in with
    // the new password, which replaces it.
    let env = Env::with_config(&base_config());
    env.ok(&[
        "ext",
        "add",
        "6102",
        "--auth-id",
        "desk6102",
        "--password",
        "Vq3Lx9TzKp2Wm7Rb",
    ]);
    let server = env.serve();
    assert!(register(
        &env,
        PHONE,
        &server,
        "6102",
        "desk6102",
        "Vq3Lx9TzKp2Wm7Rb"
    ));
    let said = env.ok(&["ext", "update", "6102", "--password", "Nq4Zt8LmXw2Kp7Rb"]);
    assert!(
        said.contains(&format!(
            "old password still works for 23 h 59 min, from {PHONE} only"
        )) || said.contains(&format!(
            "old password still works for 24 h 0 min, from {PHONE} only"
        )),
        "the operator is told where the old password still works:\n{said}"
    );
    assert_eq!(registrations(&env, "6102").len(), 1, "kept for the phone");
    eventually(
        "the old password is refused elsewhere",
        Duration::from_secs(20),
        || {
            !register(
                &env,
                ATTACKER,
                &server,
                "6102",
                "desk6102",
                "Vq3Lx9TzKp2Wm7Rb",
            )
        },
    );
    assert!(register(
        &env,
        PHONE,
        &server,
        "6102",
        "desk6102",
        "Nq4Zt8LmXw2Kp7Rb"
    ));
    assert_eq!(registrations(&env, "6102").len(), 1, "the new login's");
    assert!(
        !register(&env, PHONE, &server, "6102", "desk6102", "Vq3Lx9TzKp2Wm7Rb"),
        "the window ended with the new login"
    );
    server.stop();
}

#[test]
fn a_waiting_mail_follows_the_address_and_the_password() {
    let env = Env::new();
    let smtp = Smtp::start(&env);
    env.ok(&["ext", "list"]);
    // SMTP is down (nothing listens there): mails wait, deferred.
    let port = crate::peers::free_port();
    std::fs::write(
        env.data.join("sipward.toml"),
        format!(
            "{}[mail]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nfrom = \"pbx@example.com\"\ntimeout_secs = 2\n",
            base_config()
        ),
    )
    .expect("config");
    env.ok(&["ext", "add", "3801", "--email", "alcie@example.com"]);
    let out = env.json(&["ext", "regenerate", "3801", "--json"]);
    assert_eq!(out["regenerated"][0]["mail"]["status"], "deferred");
    // The address is fixed, then the password changed.
    env.ok(&["ext", "update", "3801", "--email", "alice@example.com"]);
    env.ok(&["ext", "update", "3801", "--password", "Nq4Zt8LmXw2Kp7Rb"]);
    let list = env.json(&["mail", "list", "--json"]);
    let waiting: Vec<&Value> = list
        .as_array()
        .expect("list")
        .iter()
        .filter(|m| m["state"] == "queued")
        .collect();
    assert_eq!(waiting.len(), 1, "{list}");
    assert_eq!(waiting[0]["recipient"], "alice@example.com");

    // SMTP is back: one mail, to the fixed address, with the password that works.
    std::fs::write(
        env.data.join("sipward.toml"),
        base_config() + &smtp.config(SMTP_PASSWORD),
    )
    .expect("config");
    env.ok(&["mail", "send"]);
    let delivered = smtp.messages();
    assert_eq!(delivered.len(), 1, "the mistyped one is never sent");
    assert!(delivered[0].starts_with("X-Test-Envelope-To: alice@example.com"));
    assert_eq!(
        mail_field(&delivered[0], "SIP password:").as_deref(),
        Some("Nq4Zt8LmXw2Kp7Rb")
    );
    assert_eq!(env.json(&["mail", "send", "--json"]), serde_json::json!([]));
}

/// The callers of the calls `sipward calls --json` lists.
fn listed_callers(env: &Env) -> Vec<String> {
    env.json(&["calls", "--json"])["calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .filter_map(|c| c["caller"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An answered call from extension 3801 (a phone at 127.0.0.21) to the US through the
/// gateway `pstn` (a user agent at 127.0.0.7), listed by `sipward calls`.
struct TrunkCall {
    server: Server,
    gw: crate::user_agent::Ua,
    phone: crate::user_agent::Ua,
    out: crate::user_agent::Outgoing,
    gw_call: String,
}

async fn answered_trunk_call(env: &Env) -> TrunkCall {
    use crate::user_agent::{Account, Dialog, Ua, header, request_method};
    // The gateway's socket exists before the server, so that the CLI can name it.
    let mut gw = Ua::bind("127.0.0.7", "127.0.0.1:9".parse().expect("addr")).await;
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
        &gw.addr.to_string(),
    ]);
    env.ok(&[
        "route",
        "add",
        "us",
        "--pattern",
        "1NXXNXXXXXX",
        "--trunk",
        "pstn",
    ]);
    let account = Account {
        number: "3801".into(),
        auth_id: "rv3801desk".into(),
        password: "Vb7-qLx9-3801-Tz4Wm".into(),
    };
    env.ok(&[
        "ext",
        "add",
        &account.number,
        "--auth-id",
        &account.auth_id,
        "--password",
        &account.password,
        "--class",
        "national",
    ]);
    let server = env.serve();
    gw.pbx = server.sip;
    let phone = Ua::phone("127.0.0.21", server.sip, &account).await;

    let out = phone.invite("12125550123", "").await;
    let invite = gw
        .wait("the trunk leg's INVITE", |m| {
            request_method(m) == Some("INVITE") && m.contains("2125550123")
        })
        .await;
    let gw_call = header(&invite, "Call-ID").expect("Call-ID").to_owned();
    let sdp = gw.sdp("sendrecv");
    gw.reply(
        &invite,
        200,
        "OK",
        "gw1",
        &format!(
            "Contact: <sip:{}>\r\nContent-Type: application/sdp\r\n",
            gw.addr
        ),
        &sdp,
    )
    .await;
    let ok = phone.wait_answer(&out, |c| c == 200).await;
    phone.ack_2xx(&Dialog::uac(&out, &ok), out.cseq).await;
    gw.wait_request("ACK", &gw_call).await;
    eventually_or(
        "the answered call listed by `sipward calls`",
        Duration::from_secs(10),
        || listed_callers(env) == ["3801"],
        || server.log(),
    );
    TrunkCall {
        server,
        gw,
        phone,
        out,
        gw_call,
    }
}

/// A removed extension's answered trunk call: sipward hangs up both legs (the phone's
/// and the gateway's), and the call leaves `sipward calls`. Removing a hijacked
/// extension stops the toll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_extension_ends_its_trunk_call_with_bye_on_both_legs() {
    let env = Env::with_config("[sip]\ndigest_algorithms = [\"MD5\"]\n");
    let call = answered_trunk_call(&env).await;

    env.ok(&["ext", "remove", "3801"]);
    let log = hung_up_on_both_legs(&env, &call).await;
    assert!(
        log.lines().any(|l| l.contains("\"event\":\"calls_ended\"")
            && l.contains("\"number\":\"3801\"")
            && l.contains("\"calls\":1")),
        "a calls_ended event: {log}"
    );
    call.server.stop();
}

/// Both legs of `call` get a BYE, which they answer, and the call leaves `sipward
/// calls`; the server's log then.
async fn hung_up_on_both_legs(env: &Env, call: &TrunkCall) -> String {
    let bye_gw = call.gw.wait_request("BYE", &call.gw_call).await;
    let bye_phone = call.phone.wait_request("BYE", &call.out.call_id).await;
    call.gw.reply(&bye_gw, 200, "OK", "", "", "").await;
    call.phone.reply(&bye_phone, 200, "OK", "", "", "").await;
    eventually_or(
        "the call gone from `sipward calls`",
        Duration::from_secs(10),
        || listed_callers(env).is_empty(),
        || call.server.log(),
    );
    call.server.log()
}

/// A removed gateway's answered call: both legs get a BYE (the call has lost its way:
/// in-dialog requests no longer pass the egress rule), and the call leaves
/// `sipward calls`. Control: a change that keeps the gateway where it was (a new
/// password) ends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_gateway_ends_the_calls_through_it() {
    let env = Env::with_config("[sip]\ndigest_algorithms = [\"MD5\"]\n");
    let call = answered_trunk_call(&env).await;

    // Control: the gateway stays where it was; a later reload (a new extension) shows
    // the server has taken the change in, and the call is still up.
    let accounts = call.server.metric("sipward_directory_accounts");
    env.ok(&[
        "gateway",
        "update",
        "pstn",
        "--password",
        "Gw8-rT3w-Yl0n-Ms5u",
    ]);
    env.ok(&["ext", "add", "3802"]);
    eventually_or(
        "both changes loaded",
        Duration::from_secs(10),
        || call.server.metric("sipward_directory_accounts") > accounts,
        || call.server.log(),
    );
    assert_eq!(listed_callers(&env), ["3801"], "{}", call.server.log());
    assert!(
        !call
            .gw
            .received()
            .iter()
            .any(|r| r.text.starts_with("BYE ")),
        "no BYE for a gateway that stayed"
    );

    // A gateway in use by a route cannot go; the route goes first (an answered call
    // does not depend on it).
    env.ok(&["route", "remove", "us"]);
    env.ok(&["gateway", "remove", "pstn"]);
    let log = hung_up_on_both_legs(&env, &call).await;
    assert!(
        log.lines().any(|l| l.contains("\"event\":\"calls_ended\"")
            && l.contains("\"trunk\":\"gateway:pstn\"")
            && l.contains("\"reason\":\"trunk_withdrawn\"")),
        "a calls_ended event for the trunk: {log}"
    );
    call.server.stop();
}

//! Attacks on issue 15's promise, from outside: a party holding an extension's old
//! credentials (registered when they changed, or not) tries to keep what they reached.
//! Raw UDP clients on loopback addresses are the attacker, the phone and the caller: the
//! attacker's socket is the contact it binds, so a call that rings it arrives there.

use std::cell::Cell;
use std::time::{Duration, Instant};

use sip::digest::{Algorithm, ResponseInput, expected_response, ha1};

use crate::harness::Env;
use crate::peers::{Server, UdpClient};
use crate::registrar::{Login, header, nonce_of, register, status};

const ATTACKER: &str = "127.0.0.66";
const PHONE: &str = "127.0.0.2";
const CALLER: &str = "127.0.0.5";
const OLD: &str = "Vq3Lx9TzKp2Wm7Rb";
const NEW: &str = "Nq4Zt8LmXw2Kp7Rb";
const CALLER_PW: &str = "Hx7Lq2Vb9TzKp4Wm";

/// MD5 only (the raw clients compute it), and a grace window of `grace` seconds.
fn config(grace: i64) -> String {
    format!("[sip]\ndigest_algorithms = [\"MD5\"]\n[provisioning]\ngrace_secs = {grace}\n")
}

fn login<'a>(number: &'a str, auth_id: &'a str, password: &'a str) -> Login<'a> {
    Login {
        number,
        auth_id,
        realm: "sipward",
        password,
    }
}

/// Adds `number` with a known auth ID and password.
fn add(env: &Env, number: &str, auth_id: &str, password: &str) {
    env.ok(&[
        "ext",
        "add",
        number,
        "--auth-id",
        auth_id,
        "--password",
        password,
    ]);
}

/// Calls `f` every `every` until it holds or `deadline` passes; whether it held.
/// (Waits at a pace the guard's flood limit does not mind.)
fn poll(deadline: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// A call to `callee` from a fresh client at [`CALLER`] (INVITE, 407, ACK, INVITE with
/// credentials): the first answer to the authenticated INVITE (100 when the call was
/// forked to a contact, 480 when there is none).
fn call(server: &Server, who: &Login<'_>, callee: &str, call_id: &str) -> String {
    let c = UdpClient::from_address(CALLER, server.sip, Duration::from_secs(3));
    let invite = |cseq: u32, auth: &str| {
        format!(
            "INVITE sip:{callee}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}x{cseq};rport\r\n\
             From: <sip:{n}@127.0.0.1>;tag=c{call_id}\r\nTo: <sip:{callee}@127.0.0.1>\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} INVITE\r\nContact: <sip:{n}@{local}>\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n",
            local = c.local,
            n = who.number,
        )
    };
    let challenge = c.request(&invite(1, "")).expect("407");
    assert_eq!(status(&challenge), 407, "{challenge}");
    let to = header(&challenge, "To")[0].to_owned();
    c.send(&format!(
        "ACK sip:{callee}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}x1;rport\r\n\
         From: <sip:{n}@127.0.0.1>;tag=c{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        local = c.local,
        n = who.number,
    ));
    let nonce = nonce_of(header(&challenge, "Proxy-Authenticate")[0]);
    let uri = format!("sip:{callee}@127.0.0.1");
    let h = ha1(Algorithm::Md5, who.auth_id, who.realm, who.password);
    let response = expected_response(
        Algorithm::Md5,
        &h,
        &ResponseInput {
            method: "INVITE",
            uri: &uri,
            nonce: &nonce,
            qop_auth: Some(("00000001", "c0ffee")),
        },
    );
    let auth = format!(
        "Proxy-Authorization: Digest username=\"{}\", realm=\"{}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\n",
        who.auth_id, who.realm
    );
    c.request(&invite(2, &auth)).expect("answer")
}

/// Whether an INVITE of the call `call_id` reaches `phone` within its read timeout
/// (other datagrams, such as retransmissions of earlier calls, are skipped).
fn rang(phone: &UdpClient, call_id: &str) -> bool {
    while let Some(m) = phone.receive() {
        if m.starts_with("INVITE ") && header(&m, "Call-ID").contains(&call_id) {
            return true;
        }
    }
    false
}

/// Stored registrations of `number` (what `ext show` lists).
fn stored(env: &Env, number: &str) -> usize {
    env.json(&["ext", "show", number, "--json"])["registrations"]
        .as_array()
        .map_or(0, Vec::len)
}

/// A REGISTER query (no Contact: it binds nothing) from `c` with `who`'s credentials:
/// whether they were accepted.
fn accepted(c: &UdpClient, who: &Login<'_>, n: &Cell<u32>) -> bool {
    n.set(n.get() + 1);
    status(&register(c, who, &format!("q{}", n.get()), 1, None, None)) == 200
}

#[test]
fn a_binding_from_a_grace_source_does_not_outlive_the_grace_window() {
    // The attacker registered with the stolen password before the operator changed it:
    // its address becomes a grace source (it cannot be told from the phone). Once the
    // window is over, its binding must go with it, as it goes from the store.
    let env = Env::with_config(&config(3));
    add(&env, "6201", "desk6201", OLD);
    add(&env, "6202", "desk6202", CALLER_PW);
    let server = env.serve();
    let attacker = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    let stolen = login("6201", "desk6201", OLD);
    let contact = format!("<sip:6201@{}>", attacker.local);
    let reg = register(&attacker, &stolen, "atk", 1, Some(&contact), Some(3600));
    assert_eq!(status(&reg), 200, "{reg}");
    let caller = login("6202", "desk6202", CALLER_PW);

    // Control: while the stolen password is the extension's, a call rings the attacker
    // (so the check below can see a ring).
    let a = call(&server, &caller, "6201", "before");
    assert_eq!(status(&a), 100, "{a}");
    assert!(
        rang(&attacker, "before"),
        "control: the attacker's phone rings"
    );

    env.ok(&["ext", "update", "6201", "--password", NEW]);
    // The window ends: the old password is refused even from the grace source, and the
    // store forgets the binding it kept.
    let probe = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    let n = Cell::new(0);
    assert!(
        poll(Duration::from_secs(30), Duration::from_millis(500), || {
            !accepted(&probe, &stolen, &n)
        }),
        "the old password is refused once the window is over\n{}",
        server.log()
    );
    assert!(
        poll(Duration::from_secs(10), Duration::from_millis(200), || {
            stored(&env, "6201") == 0
        }),
        "the store let go of the window's binding"
    );

    // The hole: the running registrar still holds the binding (until its own expiry,
    // up to registrar.max_expires later), so calls to 6201 still ring the attacker.
    let dropped = poll(Duration::from_secs(10), Duration::from_millis(200), || {
        server.metric("sipward_bindings") == 0
    });
    let a = call(&server, &caller, "6201", "after");
    let rings = rang(&attacker, "after");
    assert!(
        dropped && !rings && status(&a) == 480,
        "after the grace window ended, the binding it kept still lives in the registrar \
         (bindings dropped: {dropped}; the attacker's phone rang: {rings}; answer: {a})"
    );
    server.stop();
}

#[test]
fn a_phone_that_logs_in_with_the_new_password_ends_the_attackers_grace_binding() {
    // The attacker and the phone were both registered with the old password when it
    // changed: both addresses are grace sources. The phone's first login with the new
    // password must end the window for the attacker too: no more rings, no old password.
    let env = Env::with_config(&config(86_400));
    add(&env, "6211", "desk6211", OLD);
    add(&env, "6212", "desk6212", CALLER_PW);
    let server = env.serve();
    let stolen = login("6211", "desk6211", OLD);
    let attacker = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    let contact = format!("<sip:6211@{}>", attacker.local);
    let reg = register(&attacker, &stolen, "atk", 1, Some(&contact), Some(3600));
    assert_eq!(status(&reg), 200, "{reg}");
    let phone = UdpClient::from_address(PHONE, server.sip, Duration::from_secs(2));
    let phone_contact = format!("<sip:6211@{}>", phone.local);
    let reg = register(&phone, &stolen, "ph", 1, Some(&phone_contact), Some(3600));
    assert_eq!(status(&reg), 200, "{reg}");
    let caller = login("6212", "desk6212", CALLER_PW);

    env.ok(&["ext", "update", "6211", "--password", NEW]);
    // Control: inside the window, from its source, the old binding still rings (the
    // promise keeps it for the phone, and the attacker cannot be told from it).
    let a = call(&server, &caller, "6211", "inside");
    assert_eq!(status(&a), 100, "{a}");
    assert!(rang(&attacker, "inside"), "control: kept inside the window");

    // The phone logs in with the new password (a new binding: durable before its 200),
    // from a new socket (its old one is being rung).
    let phone = UdpClient::from_address(PHONE, server.sip, Duration::from_secs(2));
    let phone_contact = format!("<sip:6211@{}>", phone.local);
    let fresh = login("6211", "desk6211", NEW);
    let cseq = Cell::new(0);
    assert!(
        poll(Duration::from_secs(10), Duration::from_millis(300), || {
            cseq.set(cseq.get() + 2);
            let reg = register(
                &phone,
                &fresh,
                "ph2",
                cseq.get(),
                Some(&phone_contact),
                Some(3600),
            );
            status(&reg) == 200
        }),
        "the new password registers once the server has reloaded"
    );
    assert!(
        poll(Duration::from_secs(10), Duration::from_millis(200), || {
            server.metric("sipward_bindings") == 1
        }),
        "only the phone's new binding is left\n{}",
        server.log()
    );
    let a = call(&server, &caller, "6211", "ended");
    assert_eq!(status(&a), 100, "the phone's binding rings: {a}");
    assert!(!rang(&attacker, "ended"), "the attacker's binding went");
    let probe = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    assert!(
        !accepted(&probe, &stolen, &Cell::new(0)),
        "the old password is dead at the grace source too"
    );
    assert_eq!(stored(&env, "6211"), 1);
    server.stop();
}

#[test]
fn a_new_auth_id_kills_the_old_login_even_at_the_grace_source() {
    // The old SIP login (old auth ID + old password) from where it was registered: the
    // window keeps the provisioning login only, never the old auth ID.
    let env = Env::with_config(&config(86_400));
    add(&env, "6221", "desk6221", OLD);
    add(&env, "6222", "desk6222", CALLER_PW);
    let server = env.serve();
    let stolen = login("6221", "desk6221", OLD);
    let attacker = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    let contact = format!("<sip:6221@{}>", attacker.local);
    let reg = register(&attacker, &stolen, "atk", 1, Some(&contact), Some(3600));
    assert_eq!(status(&reg), 200, "{reg}");
    let probe = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    let n = Cell::new(0);
    assert!(
        accepted(&probe, &stolen, &n),
        "control: the old login works"
    );

    env.ok(&["ext", "update", "6221", "--auth-id", "moved6221"]);
    assert!(
        poll(Duration::from_secs(10), Duration::from_millis(300), || {
            !accepted(&probe, &stolen, &n)
        }),
        "the old auth ID is refused at the grace source"
    );
    assert!(
        poll(Duration::from_secs(10), Duration::from_millis(200), || {
            server.metric("sipward_bindings") == 0 && stored(&env, "6221") == 0
        }),
        "the old login's binding goes from memory and from the store\n{}",
        server.log()
    );
    let caller = login("6222", "desk6222", CALLER_PW);
    let a = call(&server, &caller, "6221", "moved");
    assert_eq!(status(&a), 480, "{a}");
    assert!(!rang(&attacker, "moved"));
    server.stop();
    // Nor does it come back after a restart.
    let server = env.serve();
    assert_eq!(server.metric("sipward_bindings"), 0);
    let a = call(&server, &caller, "6221", "restarted");
    assert_eq!(status(&a), 480, "{a}");
    drop(server);
}

#[test]
fn a_number_removed_and_added_again_with_the_same_login_never_rings_the_old_phone() {
    // Same number, same auth ID, same password, within one reload: only the credential
    // generation tells the old binding from a new one.
    let env = Env::with_config(&config(86_400));
    add(&env, "6231", "desk6231", OLD);
    add(&env, "6232", "desk6232", CALLER_PW);
    let server = env.serve();
    let stolen = login("6231", "desk6231", OLD);
    let old_phone = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    let contact = format!("<sip:6231@{}>", old_phone.local);
    let reg = register(&old_phone, &stolen, "old", 1, Some(&contact), Some(3600));
    assert_eq!(status(&reg), 200, "{reg}");
    let caller = login("6232", "desk6232", CALLER_PW);
    let a = call(&server, &caller, "6231", "first");
    assert_eq!(status(&a), 100, "{a}");
    assert!(rang(&old_phone, "first"), "control: the old phone rings");

    let accounts = server.metric("sipward_directory_accounts");
    env.ok(&["ext", "remove", "6231"]);
    add(&env, "6231", "desk6231", OLD);
    assert_eq!(stored(&env, "6231"), 0, "ext show");
    // Once the server has the number again (the removal and the addition may land in
    // one reload or in two), the old phone's binding is gone.
    assert!(
        poll(Duration::from_secs(10), Duration::from_millis(200), || {
            server.metric("sipward_directory_accounts") == accounts
                && server.metric("sipward_bindings") == 0
        }),
        "the old phone's binding goes\n{}",
        server.log()
    );
    let a = call(&server, &caller, "6231", "again");
    assert_eq!(status(&a), 480, "{a}");
    assert!(!rang(&old_phone, "again"));
    server.stop();
    let server = env.serve();
    assert_eq!(server.metric("sipward_bindings"), 0, "not after a restart");
    // Killed, not stopped: a SIGTERM right after the ready line (before serve installs
    // its handler) ends the process by the signal's default action.
    drop(server);
}

#[test]
fn a_second_change_inside_the_window_does_not_extend_the_oldest_password() {
    // The attacker registered with the first stolen password; the operator changes it,
    // and changes it again a little later (say, seeing the attacker still listed). The
    // window of the first change must not be stretched by the second: the oldest
    // password dies when its own window ends.
    let env = Env::with_config(&config(4));
    add(&env, "6241", "desk6241", OLD);
    let server = env.serve();
    let stolen = login("6241", "desk6241", OLD);
    let attacker = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    let contact = format!("<sip:6241@{}>", attacker.local);
    let reg = register(&attacker, &stolen, "atk", 1, Some(&contact), Some(3600));
    assert_eq!(status(&reg), 200, "{reg}");

    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    };
    let first = env.json(&["ext", "regenerate", "6241", "--json"]);
    let first_until = first["regenerated"][0]["grace"]["until"]
        .as_i64()
        .unwrap_or_else(|| panic!("a window: {first}"));
    // Halfway through the first window (by the wall clock, the server's), the second.
    assert!(poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || { epoch() >= first_until - 2 }
    ));
    let second = env.json(&["ext", "regenerate", "6241", "--json"]);
    let second_until = second["regenerated"][0]["grace"]["until"]
        .as_i64()
        .unwrap_or(0);
    // Wait until the first window is over by the wall clock.
    assert!(poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || { epoch() > first_until }
    ));
    let probe = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    let alive = accepted(&probe, &stolen, &Cell::new(0));
    // Control: the window is gone in the end (so the check above can fail).
    assert!(poll(
        Duration::from_secs(20),
        Duration::from_millis(500),
        || {
            epoch() > second_until.max(first_until) && !accepted(&probe, &stolen, &Cell::new(100))
        }
    ));
    assert!(
        !alive,
        "the first stolen password still worked after its window (ended {first_until}) \
         because the second change moved it to {second_until}"
    );
    server.stop();
}

/// Whether `ip` is in the stored ban list.
fn banned(env: &Env, ip: &str) -> bool {
    env.json(&["ban", "list", "--json"])
        .as_array()
        .expect("bans")
        .iter()
        .any(|b| b["source"] == ip)
}

#[test]
fn an_address_only_named_in_a_contact_is_not_exempt_from_the_provisioning_ban() {
    // Probes from where a phone is registered never ban SIP. The registrar's "known
    // hosts" also count every Contact host, which the registering party chooses: an
    // attacker with any account names its prober's address in a Contact, and that
    // address (which never registered nor logged in) probes provisioning logins
    // without ever being banned.
    let env = Env::with_config(
        "[sip]\ndigest_algorithms = [\"MD5\"]\n[provisioning]\nbase_url = \"http://pbx.example.com:8080\"\n",
    );
    env.ok(&[
        "ext",
        "add",
        "6301",
        "--auth-id",
        "desk6301",
        "--password",
        OLD,
        "--mac",
        "001565aabb31",
        "--model",
        "Yealink T46U",
    ]);
    add(&env, "6302", "desk6302", CALLER_PW);
    let shown = env.json(&["ext", "show", "6301", "--reveal", "--json"]);
    let user = shown["provisioning"]["user"]
        .as_str()
        .expect("user")
        .to_owned();
    let path = shown["provisioning"]["path"]
        .as_str()
        .expect("path")
        .to_owned();
    let server = env.serve();
    let (account, prober, stranger) = ("127.0.0.7", "127.0.0.88", "127.0.0.89");
    let c = UdpClient::from_address(account, server.sip, Duration::from_secs(2));
    let own = login("6302", "desk6302", CALLER_PW);
    let named = format!("<sip:6302@{prober}:5060>");
    let reg = register(&c, &own, "named", 1, Some(&named), Some(3600));
    assert_eq!(status(&reg), 200, "{reg}");

    let url = format!("http://{}/prov/{path}/{user}.cfg", server.http);
    let wrong = |from: &str, i: usize| {
        let guess = format!("{user}:wrong-{i}");
        crate::regenerate::curl(&["--interface", from, "--digest", "-u", &guess], &url).0
    };
    // Control: a stranger's ten wrong logins ban it.
    let codes: Vec<u16> = (0..10).map(|i| wrong(stranger, i)).collect();
    assert_eq!(codes[9], 403, "{codes:?}");
    assert!(
        poll(Duration::from_secs(10), Duration::from_millis(200), || {
            banned(&env, stranger)
        }),
        "control: a stranger is banned"
    );
    // The prober, named only in another party's Contact, the same.
    let codes: Vec<u16> = (0..10).map(|i| wrong(prober, i)).collect();
    assert_eq!(codes[9], 403, "{codes:?}");
    assert!(
        poll(Duration::from_secs(10), Duration::from_millis(200), || {
            banned(&env, prober)
        }),
        "an address that only appears as a Contact host escaped the provisioning ban\n{}",
        server.log()
    );
    server.stop();
}

#[test]
fn a_gateways_registration_is_durable_like_an_extensions() {
    // A new binding is in the store before its 200, so a restart keeps it. The bindings
    // table now belongs to extensions only: the row of a gateway's registration is
    // refused by the store, yet the gateway got its 200.
    let env = Env::with_config(&config(86_400));
    add(&env, "6401", "desk6401", OLD);
    env.ok(&[
        "gateway",
        "add",
        "gw64",
        "--vendor",
        "patton",
        "--ext",
        "6490",
        "--auth-id",
        "gw64in",
        "--password",
        CALLER_PW,
        "--host",
        "127.0.0.64",
    ]);
    let server = env.serve();
    let phone = UdpClient::from_address(PHONE, server.sip, Duration::from_secs(2));
    let contact = format!("<sip:6401@{}>", phone.local);
    let reg = register(
        &phone,
        &login("6401", "desk6401", OLD),
        "ph",
        1,
        Some(&contact),
        Some(3600),
    );
    assert_eq!(status(&reg), 200, "{reg}");
    let gw = UdpClient::from_address("127.0.0.64", server.sip, Duration::from_secs(2));
    let contact = format!("<sip:6490@{}>", gw.local);
    let reg = register(
        &gw,
        &login("6490", "gw64in", CALLER_PW),
        "gw",
        1,
        Some(&contact),
        Some(3600),
    );
    assert_eq!(status(&reg), 200, "{reg}");
    assert_eq!(server.metric("sipward_bindings"), 2);
    server.stop();
    let server = env.serve();
    // Control: the extension's binding came back.
    assert_eq!(
        stored(&env, "6401"),
        1,
        "control: the extension's binding is stored"
    );
    assert_eq!(
        server.metric("sipward_bindings"),
        2,
        "the gateway's registration, answered 200, did not survive a restart"
    );
    drop(server);
}

/// Fetches the phone's Yealink file `mac`.cfg with the provisioning `password` from
/// `from`: the status and the body.
fn fetch(server: &Server, path: &str, mac: &str, from: &str, password: &str) -> (u16, String) {
    let url = format!("http://{}/prov/{path}/{mac}.cfg", server.http);
    let user = format!("{mac}:{password}");
    crate::regenerate::curl(&["--interface", from, "--digest", "-u", &user], &url)
}

#[test]
fn an_attacker_registered_at_regenerate_cannot_fetch_the_new_file_with_the_old_login() {
    // The attacker holds an old welcome mail (SIP password and, as mails used to, the
    // provisioning login) and is registered with it when the operator presses
    // Re-Generate: its address becomes a grace source. The grace window exists so that
    // the phone can fetch its new file with the login it has; it must not hand the new
    // password to an address that never fetched the phone's file.
    let env = Env::with_config(
        "[sip]\ndigest_algorithms = [\"MD5\"]\n[provisioning]\nserver = \"pbx.example.com\"\n\
         base_url = \"http://pbx.example.com:8080\"\n",
    );
    let mac = "001565aabb51";
    env.ok(&[
        "ext",
        "add",
        "6501",
        "--auth-id",
        "desk6501",
        "--password",
        OLD,
        "--mac",
        mac,
        "--model",
        "Yealink T46U",
    ]);
    let shown = env.json(&["ext", "show", "6501", "--reveal", "--json"]);
    let l1 = shown["provisioning"]["password"]
        .as_str()
        .expect("login")
        .to_owned();
    let path = shown["provisioning"]["path"]
        .as_str()
        .expect("path")
        .to_owned();
    let server = env.serve();
    // The phone fetches its file and registers from its address.
    assert_eq!(fetch(&server, &path, mac, PHONE, &l1).0, 200);
    let phone = UdpClient::from_address(PHONE, server.sip, Duration::from_secs(2));
    let contact = format!("<sip:6501@{}>", phone.local);
    let old = login("6501", "desk6501", OLD);
    assert_eq!(
        status(&register(&phone, &old, "ph", 1, Some(&contact), Some(3600))),
        200
    );
    // The attacker registers with the mail's password from its own address.
    let attacker = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    let contact = format!("<sip:6501@{}>", attacker.local);
    assert_eq!(
        status(&register(
            &attacker,
            &old,
            "atk",
            1,
            Some(&contact),
            Some(3600)
        )),
        200
    );

    let regenerated = env.json(&["ext", "regenerate", "6501", "--json"]);
    let p2 = regenerated["regenerated"][0]["password"]
        .as_str()
        .expect("p2")
        .to_owned();
    // Control: the phone re-provisions with its login from where it fetched before.
    let (code, body) = fetch(&server, &path, mac, PHONE, &l1);
    assert_eq!(code, 200, "control: the phone gets its new file: {body}");
    assert!(body.contains(&p2));
    // The attacker, from its grace address, with the mail's login.
    let (code, body) = fetch(&server, &path, mac, ATTACKER, &l1);
    assert!(
        code != 200 && !body.contains(&p2),
        "the old provisioning login handed the new SIP password ({code}) to an address that \
         only registered with the stolen password and never fetched the phone's file"
    );
    server.stop();
}

#[test]
fn a_new_auth_id_made_while_the_server_is_down_lists_no_old_registration() {
    // The old auth ID is dead at once, even at the grace source (the window keeps only
    // the provisioning login). Made while the server is stopped, the change leaves the
    // old login's binding in the store as "current": the grace row's generation backs
    // it whatever its auth ID, so `ext show` lists the attacker as the extension's
    // registration (and, by the code, the next start's guard trusts its address for
    // the new auth ID before the reconcile drops the binding; not shown here).
    let env = Env::with_config(&config(86_400));
    add(&env, "6601", "desk6601", OLD);
    let server = env.serve();
    let attacker = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(2));
    let contact = format!("<sip:6601@{}>", attacker.local);
    let stolen = login("6601", "desk6601", OLD);
    let reg = register(&attacker, &stolen, "atk", 1, Some(&contact), Some(3600));
    assert_eq!(status(&reg), 200, "{reg}");
    server.stop();
    assert_eq!(stored(&env, "6601"), 1, "control: stored and listed");

    env.ok(&["ext", "update", "6601", "--auth-id", "moved6601"]);
    let listed = stored(&env, "6601");
    let server = env.serve();
    assert_eq!(server.metric("sipward_bindings"), 0, "not loaded as live");
    drop(server);
    assert_eq!(
        listed, 0,
        "ext show lists the old auth ID's registration after the auth ID changed"
    );
}

#[test]
fn the_old_provisioning_login_dies_with_the_window_even_from_its_source() {
    // The window's clock alone (no new login from the phone) must end the old
    // provisioning login at the grace source, as it ends the old SIP password.
    let env = Env::with_config(
        "[sip]\ndigest_algorithms = [\"MD5\"]\n[provisioning]\nserver = \"pbx.example.com\"\n\
         base_url = \"http://pbx.example.com:8080\"\ngrace_secs = 3\n",
    );
    let mac = "001565aabb71";
    env.ok(&[
        "ext",
        "add",
        "6701",
        "--auth-id",
        "desk6701",
        "--password",
        OLD,
        "--mac",
        mac,
        "--model",
        "Yealink T46U",
    ]);
    let shown = env.json(&["ext", "show", "6701", "--reveal", "--json"]);
    let l1 = shown["provisioning"]["password"]
        .as_str()
        .expect("login")
        .to_owned();
    let path = shown["provisioning"]["path"]
        .as_str()
        .expect("path")
        .to_owned();
    let server = env.serve();
    let phone = UdpClient::from_address(PHONE, server.sip, Duration::from_secs(2));
    let contact = format!("<sip:6701@{}>", phone.local);
    let old = login("6701", "desk6701", OLD);
    assert_eq!(
        status(&register(&phone, &old, "ph", 1, Some(&contact), Some(3600))),
        200
    );
    // The phone fetched its file with its login before (the window keeps the login only
    // for the addresses where it did).
    assert_eq!(fetch(&server, &path, mac, PHONE, &l1).0, 200);
    env.ok(&["ext", "regenerate", "6701"]);
    // Control: inside the window, from the phone's address, the old login works.
    assert_eq!(fetch(&server, &path, mac, PHONE, &l1).0, 200);
    let probe = UdpClient::from_address(PHONE, server.sip, Duration::from_secs(2));
    let n = Cell::new(0);
    assert!(
        poll(Duration::from_secs(30), Duration::from_millis(500), || {
            !accepted(&probe, &old, &n)
        }),
        "the SIP window ends"
    );
    let (code, body) = fetch(&server, &path, mac, PHONE, &l1);
    assert_eq!(code, 401, "the old login after its window: {body}");
    server.stop();
}

#[test]
fn a_mail_whose_sender_died_mid_send_is_never_sent_after_the_password_changed() {
    use crate::peers::{SMTP_PASSWORD, Smtp, free_port, require};
    use crate::regenerate::mail_field;
    let env = Env::new();
    let smtp = Smtp::start(&env);
    env.ok(&["ext", "list"]);
    // SMTP down: the Re-Generate mails wait.
    std::fs::write(
        env.data.join("sipward.toml"),
        format!(
            "[mail]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nfrom = \"pbx@example.com\"\ntimeout_secs = 2\n",
            free_port()
        ),
    )
    .expect("config");
    env.ok(&["ext", "add", "6801", "--email", "victim@example.com"]);
    env.ok(&["ext", "add", "6802", "--email", "other@example.com"]);
    let first = env.json(&["ext", "regenerate", "6801", "--json"]);
    let p1 = first["regenerated"][0]["password"]
        .as_str()
        .expect("p1")
        .to_owned();
    env.ok(&["ext", "regenerate", "6802"]);
    // Both mails were claimed by senders that died mid-send: `sending`, lease run out.
    let sqlite3 = require("sqlite3", "sqlite3");
    let db = env.data.join("sipward.db");
    let done = std::process::Command::new(sqlite3)
        .arg(&db)
        .arg(
            "UPDATE outbox SET state = 'sending', lease_until = 1, next_attempt_at = 0 \
             WHERE state = 'queued' AND number IN ('6801', '6802')",
        )
        .status()
        .expect("sqlite3");
    assert!(done.success());
    // The password changes while 6801's mail is in that state.
    env.ok(&["ext", "update", "6801", "--password", NEW]);

    std::fs::write(env.data.join("sipward.toml"), smtp.config(SMTP_PASSWORD)).expect("config");
    env.ok(&["mail", "send"]);
    let delivered = smtp.messages();
    // Control: the other dead sender's mail is picked up again and delivered.
    assert!(
        delivered
            .iter()
            .any(|m| m.starts_with("X-Test-Envelope-To: other@example.com")),
        "control: a lapsed claim is sent: {delivered:?}"
    );
    let to_victim: Vec<&String> = delivered
        .iter()
        .filter(|m| m.starts_with("X-Test-Envelope-To: victim@example.com"))
        .collect();
    assert!(
        to_victim.iter().all(|m| !m.contains(&p1)),
        "the mail with the replaced password was sent"
    );
    assert_eq!(to_victim.len(), 1, "one mail, with what holds now");
    assert_eq!(
        mail_field(to_victim[0], "SIP password:").as_deref(),
        Some(NEW)
    );
}

/// A REGISTER query with `password` for `who`: the final status, or None when the
/// server does not answer (a banned source).
fn try_login(c: &UdpClient, who: &Login<'_>, password: &str, call_id: &str) -> Option<u16> {
    use crate::registrar::{authorization, register_text};
    let challenge = c.request(&register_text(c, who.number, 1, call_id, None, None, ""))?;
    if status(&challenge) != 401 {
        return Some(status(&challenge));
    }
    let nonce = nonce_of(header(&challenge, "WWW-Authenticate")[0]);
    let auth = authorization(who.auth_id, who.realm, password, &nonce);
    c.request(&register_text(c, who.number, 2, call_id, None, None, &auth))
        .map(|a| status(&a))
}

#[test]
fn trust_earned_with_the_old_password_does_not_outlive_it() {
    // A source where an auth ID logged in is trusted for it (a week): its failures for
    // that auth ID are not counted, and the per-account lockout does not apply there.
    // The attacker once logged in with the stolen password (a query: no binding, so no
    // grace window); after the change, that trust lets it guess the new password
    // without ever being banned.
    let env = Env::with_config(&config(86_400));
    add(&env, "6901", "desk6901", OLD);
    let server = env.serve();
    let who = login("6901", "desk6901", OLD);
    let attacker = UdpClient::from_address(ATTACKER, server.sip, Duration::from_secs(1));
    assert_eq!(try_login(&attacker, &who, OLD, "a0"), Some(200));

    env.ok(&["ext", "update", "6901", "--password", NEW]);
    let n = Cell::new(0);
    assert!(
        poll(Duration::from_secs(10), Duration::from_millis(300), || {
            n.set(n.get() + 1);
            try_login(&attacker, &who, OLD, &format!("r{}", n.get())) != Some(200)
        }),
        "the old password is refused"
    );

    // Control: a source that never logged in is banned after ten wrong guesses.
    let stranger = "127.0.0.67";
    let other = UdpClient::from_address(stranger, server.sip, Duration::from_secs(1));
    for i in 0..10 {
        let _ = try_login(&other, &who, &format!("Guess-{i}-x9Kq"), &format!("s{i}"));
    }
    assert_eq!(
        try_login(&other, &who, NEW, "s-right"),
        None,
        "control: the stranger is banned, even with the right password"
    );

    // The attacker guesses thirty times, then sends the right password.
    for i in 0..30 {
        let _ = try_login(
            &attacker,
            &who,
            &format!("Guess-{i}-x9Kq"),
            &format!("g{i}"),
        );
    }
    let last = try_login(&attacker, &who, NEW, "g-right");
    assert_ne!(
        last,
        Some(200),
        "thirty wrong guesses after the change, then the new password answered 200: the \
         trust the stolen password earned outlived it"
    );
    server.stop();
}

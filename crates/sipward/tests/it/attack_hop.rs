//! Attacks on the internal hop between nodes (issue 21; crates/pbx/src/hop.rs, the
//! internal socket in crates/pbx/src/transport.rs, `Endpoint::take_hop` and
//! `Endpoint::proxy_to`), on one PostgreSQL database in the test run's cluster.
//!
//! The promise under attack: a hop is not a relay. What arrives on a node's internal
//! socket, or what a node sends over it, never makes any node send a call to a trunk or
//! a gateway, never rings a phone for a caller who could not call it directly, and
//! responses and in-dialog requests over the hop stay bound to their dialog's parties.

use std::net::SocketAddr;
use std::time::Duration;

use crate::install::{
    CONFIG, NATIONAL, hop_invite, hop_key_of, hop_proof, node_with_internal, pstn_account,
    pstn_gateway, publish_node, two_hop_nodes, unix_now,
};
use crate::pg;
use crate::user_agent::{Ua, header, request_method, status};

/// A hop for a gateway's virtual number (finding). A gateway registers with its
/// credentials like a phone, under its virtual number (here 800), so it has a binding
/// on the node it registered on. `Endpoint::take_hop` looks the hop's extension up
/// with `Directory::by_number`, which holds gateways' virtual numbers as well as
/// extensions, and forks the hop to that number's bindings here: a hop for 800 sends
/// the INVITE to the gateway through the proxy, with no route, no class of service,
/// no fraud count and no lease (the gateway then dials out on its line). Every other
/// path refuses a gateway's number as a callee (`Directory::extension_for_user`), and
/// the receiving node is the one that promises "never to a trunk, a gateway".
///
/// The hop is stamped with the install's key: it stands for a node whose key leaked
/// or that has a bug in what it hops (the sending nodes only hop for extensions today,
/// `store::bindings::all_hops` reads extensions' bindings only), so this is defence in
/// depth, but the receiving node's own check is the one the promise rests on, and it
/// let a gateway through until `take_hop` took only an extension's number (404 for a
/// gateway's, as for any number that is not an extension). The control: the same proven hop
/// for a phone's extension rings the phone, and a hop for a routed number is refused
/// 404 (the receiving node does check the number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proven_hop_for_a_gateways_virtual_number_never_reaches_the_gateway() {
    let Some(cluster) = pg::cluster() else {
        return;
    };
    let (a, internal, db) = node_with_internal(cluster, CONFIG);
    // The node's address is not known yet: nothing is sent before it is pointed there.
    let mut gateway = pstn_gateway(&a, "127.0.0.7").await;
    let account = crate::user_agent::ext(&a, "5501", "national");
    let node_a = a.serve_with(&["--node-name", "a"]);
    let phone = Ua::phone("127.0.0.2", node_a.sip, &account).await;
    phone.register().await;
    // The gateway registers on its virtual number, as gateways do.
    gateway.pbx = node_a.sip;
    gateway.account = Some(pstn_account());
    gateway.register().await;
    let forger = Ua::bind("127.0.0.40", internal).await;
    publish_node(cluster, &db, "b", forger.addr);
    crate::peers::eventually("A reads node b's row", Duration::from_secs(10), || {
        node_a.metric("sipward_table_entries{table=\"hop_nodes\"}") == 1
    });
    let key = hop_key_of(&a);
    let now = unix_now();
    let answered = |code: u16, call_id: &'static str| {
        move |m: &str| status(m) == code && header(m, "Call-ID") == Some(call_id)
    };

    // Controls: a proven hop for a routed number is refused; one for the phone rings it.
    let proof = hop_proof(&key, "b", NATIONAL, "c1", now);
    forger
        .send(&hop_invite(forger.addr, internal, NATIONAL, "c1", &proof))
        .await;
    forger
        .wait("404 to a routed number", answered(404, "c1"))
        .await;
    let proof = hop_proof(&key, "b", "5501", "c2", now);
    forger
        .send(&hop_invite(forger.addr, internal, "5501", "c2", &proof))
        .await;
    let rung = phone.wait_request("INVITE", "c2").await;
    phone.reply(&rung, 486, "Busy Here", "busy", "", "").await;
    forger.wait("the phone's 486", answered(486, "c2")).await;

    // The attack: a proven hop for the gateway's virtual number.
    let proof = hop_proof(&key, "b", "800", "g1", now);
    forger
        .send(&hop_invite(forger.addr, internal, "800", "g1", &proof))
        .await;
    let reached = gateway
        .try_wait(Duration::from_secs(2), |m| {
            request_method(m) == Some("INVITE") && header(m, "Call-ID") == Some("g1")
        })
        .await;
    assert!(
        reached.is_none(),
        "a hop for the gateway's virtual number 800 was sent to the gateway:\n{}",
        reached.unwrap_or_default()
    );
    forger
        .wait("a refusal of the hop for 800", |m| {
            header(m, "Call-ID") == Some("g1") && status(m) >= 400
        })
        .await;
    node_a.stop();
}

/// A BYE in the dialog a hop from node "b" made, sent from `from`.
fn bye_in(
    from: SocketAddr,
    to: SocketAddr,
    call_id: &str,
    to_header: &str,
    branch: &str,
) -> String {
    format!(
        "BYE sip:5501@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 69\r\nFrom: <sip:5502@{from}>;tag=f{call_id}\r\nTo: {to_header}\r\n\
         Call-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Requests over the hop stay bound to their dialog's parties, and only a live node is
/// heard (withstood). Node A takes a proven hop from node "b" (a row naming a test
/// socket) and the phone answers it. Then, knowing the dialog's Call-ID and tags:
/// - another live node "c" sends the BYE on A's internal socket: not from the party,
///   the phone gets nothing;
/// - node b's own socket sends it to A's public SIP socket (a datagram from the node's
///   address, but not over the hop): the phone gets nothing;
/// - node "c", once its row is stale (its heartbeat older than the liveness window:
///   a node that died, or whose process still sends after its row lapsed), sends a
///   proven hop: no answer at all, nothing rings.
///
/// The controls: while c is live, its proven hop rings the phone; b's BYE over the hop
/// ends the call at the phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_dialogs_stay_bound_to_their_node_and_a_stale_node_is_not_heard() {
    let Some(cluster) = pg::cluster() else {
        return;
    };
    let (a, internal, db) = node_with_internal(cluster, CONFIG);
    let account = crate::user_agent::ext(&a, "5501", "national");
    let node_a = a.serve_with(&["--node-name", "a"]);
    let phone = Ua::phone("127.0.0.2", node_a.sip, &account).await;
    phone.register().await;
    let b = Ua::bind("127.0.0.40", internal).await;
    let c = Ua::bind("127.0.0.42", internal).await;
    publish_node(cluster, &db, "b", b.addr);
    publish_node(cluster, &db, "c", c.addr);
    crate::peers::eventually("A reads nodes b and c", Duration::from_secs(10), || {
        node_a.metric("sipward_table_entries{table=\"hop_nodes\"}") == 2
    });
    let key = hop_key_of(&a);
    let now = unix_now();
    let invites = |call_id: &'static str| {
        move |m: &str| request_method(m) == Some("INVITE") && header(m, "Call-ID") == Some(call_id)
    };
    let byes = |m: &str| request_method(m) == Some("BYE");

    // Control: c, while live, is heard.
    let proof = hop_proof(&key, "c", "5501", "c1", now);
    c.send(&hop_invite(c.addr, internal, "5501", "c1", &proof))
        .await;
    let rung = phone.wait_request("INVITE", "c1").await;
    phone.reply(&rung, 486, "Busy Here", "busyc", "", "").await;
    c.wait("the phone's 486 to c", |m| {
        status(m) == 486 && header(m, "Call-ID") == Some("c1")
    })
    .await;

    // b's hop, answered.
    let proof = hop_proof(&key, "b", "5501", "d1", now);
    b.send(&hop_invite(b.addr, internal, "5501", "d1", &proof))
        .await;
    let rung = phone.wait_request("INVITE", "d1").await;
    phone.answer(&rung).await;
    let ok = b
        .wait("the 200 over the hop", |m| {
            status(m) == 200 && header(m, "Call-ID") == Some("d1")
        })
        .await;
    let to = header(&ok, "To").expect("To").to_owned();
    assert!(to.contains("tag="), "{ok}");

    // Another live node's BYE in b's dialog, over the hop.
    c.send(&bye_in(c.addr, internal, "d1", &to, "byec")).await;
    // Node b's socket, but to the public port.
    b.send_to(&bye_in(b.addr, node_a.sip, "d1", &to, "byepub"), node_a.sip)
        .await;
    let wrong = phone.try_wait(Duration::from_secs(2), byes).await;
    assert!(
        wrong.is_none(),
        "a BYE not from the hop's node reached the phone:\n{}",
        wrong.unwrap_or_default()
    );

    // c's row lapses: it is not heard, even with a proof.
    cluster.psql(
        &db,
        &format!(
            "UPDATE nodes SET heartbeat_at = {} WHERE name = 'c'",
            unix_now() - 3600
        ),
    );
    crate::peers::eventually("A drops node c", Duration::from_secs(10), || {
        node_a.metric("sipward_table_entries{table=\"hop_nodes\"}") == 1
    });
    let proof = hop_proof(&key, "c", "5501", "c2", unix_now());
    c.send(&hop_invite(c.addr, internal, "5501", "c2", &proof))
        .await;
    assert!(
        phone
            .try_wait(Duration::from_secs(2), invites("c2"))
            .await
            .is_none(),
        "a stale node's hop rang the phone"
    );
    assert!(
        c.try_wait(Duration::from_millis(300), |m| header(m, "Call-ID")
            == Some("c2"))
            .await
            .is_none(),
        "a stale node was answered"
    );

    // A scanner's packet forged from node b's IP (another port) on the public socket
    // bans that IP: the public side then drops it, but the hop from b is still taken
    // (a forger cannot cut two nodes apart through the guard).
    let scanner = Ua::bind("127.0.0.40", node_a.sip).await;
    scanner
        .send(&format!(
            "OPTIONS sip:a@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKscan1;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:x@{me}>;tag=s1\r\nTo: <sip:a@{sip}>\r\n\
             Call-ID: scan1\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\n\
             Content-Length: 0\r\n\r\n",
            sip = node_a.sip,
            me = scanner.addr
        ))
        .await;
    crate::peers::eventually("A bans node b's IP", Duration::from_secs(5), || {
        a.ok(&["ban", "list"]).contains("127.0.0.40")
    });
    let proof = hop_proof(&key, "b", "5501", "d2", unix_now());
    b.send(&hop_invite(b.addr, internal, "5501", "d2", &proof))
        .await;
    let rung = phone.wait_request("INVITE", "d2").await;
    phone.reply(&rung, 486, "Busy Here", "busyd2", "", "").await;
    b.wait("the phone's 486 to b after the ban", |m| {
        status(m) == 486 && header(m, "Call-ID") == Some("d2")
    })
    .await;

    // Control: b's own BYE over the hop ends the call at the phone.
    b.send(&bye_in(b.addr, internal, "d1", &to, "byeb")).await;
    phone.wait("b's BYE at the phone", byes).await;
    node_a.stop();
}

/// A phone on the other node that "forwards" its calls by redirecting them (withstood).
/// A caller of class internal on node A calls 5501 (class national), whose phone is
/// registered on node B only: the call hops to B, and the phone answers `302` to a
/// national number the gateway's route serves. Were the 302 carried back over the hop,
/// the caller would be handed a number its class may not call, granted as the
/// callee's call by a node (B) whose grant A never sees. The caller gets a failure that
/// is not a redirect, and the gateway gets nothing. The control: the same phone
/// registered on A (no hop) redirects the same caller with its 302, which 5501's class
/// allows: a redirect does go upstream where no hop is involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_a_phone_on_the_other_node_never_reaches_the_caller_or_a_trunk() {
    use crate::user_agent::ext;
    let Some(cluster) = pg::cluster() else {
        return;
    };
    let (a, b, _) = two_hop_nodes(cluster, CONFIG);
    let gateway = pstn_gateway(&a, "127.0.0.7").await;
    let caller = ext(&a, "5502", "internal");
    let callee = ext(&a, "5501", "national");
    let node_a = a.serve_with(&["--node-name", "a"]);
    let node_b = b.serve_with(&["--node-name", "b"]);
    let mut phone = Ua::phone("127.0.0.3", node_b.sip, &callee).await;
    phone.register().await;
    crate::peers::eventually("A knows that B holds 5501", Duration::from_secs(10), || {
        node_a.metric("sipward_table_entries{table=\"hop_targets\"}") == 1
    });
    let caller_ua = Ua::phone("127.0.0.2", node_a.sip, &caller).await;
    let moved = format!("Contact: <sip:{NATIONAL}@127.0.0.1>\r\n");

    let out = caller_ua.invite("5501", "").await;
    let rung = phone.wait_request("INVITE", &out.call_id).await;
    phone
        .reply(&rung, 302, "Moved Temporarily", "mv1", &moved, "")
        .await;
    let answer = caller_ua.wait_answer(&out, |c| c >= 200).await;
    assert!(
        !(300..400).contains(&status(&answer)),
        "a redirect crossed the hop back to the caller:\n{answer}"
    );
    if status(&answer) >= 300 {
        caller_ua.ack_failure(&out, &answer).await;
    }
    assert!(
        gateway
            .try_wait(Duration::from_secs(1), |_| true)
            .await
            .is_none(),
        "the gateway was reached"
    );

    // Control: the phone on A, no hop: its 302 reaches the caller.
    phone.pbx = node_a.sip;
    phone.register().await;
    let out = caller_ua.invite("5501", "").await;
    let rung = phone
        .wait("the INVITE from A", |m| {
            request_method(m) == Some("INVITE")
                && header(m, "Call-ID") == Some(out.call_id.as_str())
        })
        .await;
    assert!(
        !rung.to_ascii_lowercase().contains("x-sipward-hop"),
        "control: rung by A itself\n{rung}"
    );
    phone
        .reply(&rung, 302, "Moved Temporarily", "mv2", &moved, "")
        .await;
    let answer = caller_ua.wait_answer(&out, |c| c >= 200).await;
    assert_eq!(status(&answer), 302, "control: {answer}");
    caller_ua.ack_failure(&out, &answer).await;
    node_b.stop();
    node_a.stop();
}

/// A flood on the internal socket (withstood). Forged from node b's published address
/// (a spoofed UDP source), 3,000 hops with a MAC under another key, each with a new
/// branch and Call-ID, and 3,000 from a stranger's address. Each forged one costs a
/// 403 (to the node's address) or nothing at all; none takes a place a real call needs:
/// right after, node b's genuine hop rings the phone, and a caller on the public
/// socket still reaches it. The counts show the flood was read and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_flood_on_the_internal_socket_leaves_real_hops_and_calls_standing() {
    let Some(cluster) = pg::cluster() else {
        return;
    };
    let (a, internal, db) = node_with_internal(cluster, CONFIG);
    let account = crate::user_agent::ext(&a, "5501", "national");
    let caller = crate::user_agent::ext(&a, "5502", "national");
    let node_a = a.serve_with(&["--node-name", "a"]);
    let phone = Ua::phone("127.0.0.2", node_a.sip, &account).await;
    phone.register().await;
    let b = Ua::bind("127.0.0.40", internal).await;
    let stranger = Ua::bind("127.0.0.41", internal).await;
    publish_node(cluster, &db, "b", b.addr);
    crate::peers::eventually("A reads node b's row", Duration::from_secs(10), || {
        node_a.metric("sipward_table_entries{table=\"hop_nodes\"}") == 1
    });
    let key = hop_key_of(&a);
    let other = pbx::hop::HopKey::new([7; 32]);
    const FLOOD: u64 = 3_000;
    for i in 0..FLOOD {
        let call_id = format!("flood{i}");
        let proof = hop_proof(&other, "b", "5501", &call_id, unix_now());
        b.send(&hop_invite(b.addr, internal, "5501", &call_id, &proof))
            .await;
        stranger
            .send(&hop_invite(
                stranger.addr,
                internal,
                "5501",
                &call_id,
                &proof,
            ))
            .await;
    }
    // Loopback drops much of a burst this fast at the socket buffer (the node reads
    // what it can; a datagram flood is not something a node can refuse to receive).
    // Wait until the node has read what reached it: the counts stop moving.
    let refused = |reason: &str| {
        node_a.metric(&format!(
            "sipward_hops_refused_total{{reason=\"{reason}\"}}"
        ))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut last = (u64::MAX, u64::MAX);
    loop {
        let now = (refused("bad_mac"), refused("not_a_node"));
        if now == last && now.0 > 0 && now.1 > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the flood was not read within 15 s: bad_mac {} not_a_node {}",
            now.0,
            now.1
        );
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "flood read: {} of {FLOOD} forged from b refused bad_mac, {} of {FLOOD} from a stranger not_a_node",
        last.0, last.1
    );

    // b's genuine hop is taken.
    let proof = hop_proof(&key, "b", "5501", "real1", unix_now());
    b.send(&hop_invite(b.addr, internal, "5501", "real1", &proof))
        .await;
    let rung = phone.wait_request("INVITE", "real1").await;
    phone.reply(&rung, 486, "Busy Here", "busy1", "", "").await;
    b.wait("the phone's 486 to b", |m| {
        status(m) == 486 && header(m, "Call-ID") == Some("real1")
    })
    .await;
    // A caller on the public socket reaches the phone.
    let caller_ua = Ua::phone("127.0.0.3", node_a.sip, &caller).await;
    let out = caller_ua.invite("5501", "").await;
    let rung = phone.wait_request("INVITE", &out.call_id).await;
    phone.reply(&rung, 486, "Busy Here", "busy2", "", "").await;
    let answer = caller_ua.wait_answer(&out, |c| c >= 200).await;
    assert_eq!(status(&answer), 486, "{answer}");
    caller_ua.ack_failure(&out, &answer).await;
    assert!(
        phone
            .received()
            .iter()
            .all(|r| !r.text.contains("Call-ID: flood")),
        "a forged hop rang the phone"
    );
    assert!(
        stranger
            .try_wait(Duration::from_millis(200), |_| true)
            .await
            .is_none(),
        "a stranger was answered"
    );
    node_a.stop();
}

/// A caller of a low class, or one whose outbound calling is suspended, calling a phone
/// registered only on the other node (withstood). The class rules (`ClassOfService::
/// allows`: every class may call an extension) and the suspension (README: a broken
/// fraud limit suspends the extension's *outbound* calling; `Admission::decide` holds
/// only external classes to it) both allow a call to an extension, so the hop carries
/// these calls like any other: node A's callers of class `internal` (5502) and
/// suspended (5503, suspended here by breaking the attempts limit) ring 5501's phone
/// on node B. What the hop must not do is take them further: each of them dialling the
/// national number is refused 403 on A, and the phone on B redirecting their call to
/// that number (302) hands them no redirect; the gateway gets nothing from either.
///
/// The controls: a national caller (5504) on A reaches the gateway with the same
/// number (so the 403s are the class and the suspension, not a broken route), and
/// 5503 was refused its outside calls before it was suspended only by its class, then
/// by the suspension itself (`ext show` says SUSPENDED). The 302's control, the same
/// redirect with the phone on A reaching the caller, is in
/// [`a_redirect_from_a_phone_on_the_other_node_never_reaches_the_caller_or_a_trunk`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_or_suspended_caller_reaches_an_extension_on_the_other_node_and_nothing_more() {
    use crate::user_agent::{answers, ext};
    let Some(cluster) = pg::cluster() else {
        return;
    };
    // Two outside attempts a minute: the third suspends.
    let config = CONFIG.replace("attempts_per_minute = 100", "attempts_per_minute = 2");
    let (a, b, _) = two_hop_nodes(cluster, &config);
    let gateway = pstn_gateway(&a, "127.0.0.7").await;
    let callee = ext(&a, "5501", "national");
    // No voicemail: the caller gets the phone's own answers.
    a.ok(&["ext", "update", "5501", "--voicemail-after", "0"]);
    let low = ext(&a, "5502", "internal");
    let caught = ext(&a, "5503", "national");
    let national = ext(&a, "5504", "national");
    let node_a = a.serve_with(&["--node-name", "a"]);
    let node_b = b.serve_with(&["--node-name", "b"]);
    let phone = Ua::phone("127.0.0.3", node_b.sip, &callee).await;
    phone.register().await;
    crate::peers::eventually("A knows that B holds 5501", Duration::from_secs(10), || {
        node_a.metric("sipward_table_entries{table=\"hop_targets\"}") == 1
    });
    let low_ua = Ua::phone("127.0.0.2", node_a.sip, &low).await;
    let caught_ua = Ua::phone("127.0.0.4", node_a.sip, &caught).await;
    let national_ua = Ua::phone("127.0.0.5", node_a.sip, &national).await;
    let to_gateway = |m: &str| request_method(m) == Some("INVITE");

    // Control: the route works for a class that allows the number.
    let out = national_ua.invite(NATIONAL, "").await;
    let reached = gateway
        .wait("control: the national caller's INVITE", to_gateway)
        .await;
    gateway
        .reply(&reached, 486, "Busy Here", "gw1", "", "")
        .await;
    let answer = national_ua.wait_answer(&out, |c| c >= 300).await;
    national_ua.ack_failure(&out, &answer).await;

    // 5503 dials abroad (its class forbids it: 403, yet counted) until the attempts
    // limit suspends it; the calendar minute may turn between two attempts.
    let mut suspended = false;
    for _ in 0..6 {
        let out = caught_ua.invite("00442071234567", "").await;
        let answer = caught_ua.wait_answer(&out, |c| c >= 300).await;
        assert_eq!(status(&answer), 403, "{answer}");
        caught_ua.ack_failure(&out, &answer).await;
        if a.ok(&["ext", "show", "5503"]).contains("SUSPENDED") {
            suspended = true;
            break;
        }
    }
    assert!(suspended, "5503 was suspended\n{}", node_a.log());

    for (who, ua) in [("internal 5502", &low_ua), ("suspended 5503", &caught_ua)] {
        // An extension on the other node: allowed, over the hop.
        let out = ua.invite("5501", "").await;
        let rung = phone.wait_request("INVITE", &out.call_id).await;
        assert!(
            !rung.to_ascii_lowercase().contains("x-sipward-hop"),
            "{rung}"
        );
        phone.reply(&rung, 486, "Busy Here", "busy", "", "").await;
        let answer = ua.wait_answer(&out, |c| c >= 200).await;
        assert_eq!(status(&answer), 486, "{who}: the phone's answer\n{answer}");
        ua.ack_failure(&out, &answer).await;

        // The national number: refused on A.
        let out = ua.invite(NATIONAL, "").await;
        let answer = ua.wait_answer(&out, |c| c >= 200).await;
        assert_eq!(status(&answer), 403, "{who} dialled {NATIONAL}\n{answer}");
        ua.ack_failure(&out, &answer).await;

        // The phone on B redirects the call there: no redirect reaches the caller.
        let out = ua.invite("5501", "").await;
        let rung = phone.wait_request("INVITE", &out.call_id).await;
        let moved = format!("Contact: <sip:{NATIONAL}@127.0.0.1>\r\n");
        phone
            .reply(&rung, 302, "Moved Temporarily", "mv", &moved, "")
            .await;
        let answer = ua
            .wait(&format!("{who}: a final answer"), |m| {
                answers(m, &out) && status(m) >= 200
            })
            .await;
        assert!(
            !(300..400).contains(&status(&answer)),
            "{who}: a redirect crossed the hop back\n{answer}"
        );
        ua.ack_failure(&out, &answer).await;
    }
    let more = gateway.try_wait(Duration::from_secs(1), to_gateway).await;
    assert!(
        more.is_none(),
        "a low or suspended caller reached the gateway:\n{}",
        more.unwrap_or_default()
    );
    assert_eq!(
        node_a.metric("sipward_calls_trunk_total") + node_b.metric("sipward_calls_trunk_total"),
        1,
        "the control's call alone went to a trunk"
    );
    assert_eq!(
        node_b.metric("sipward_calls_proxied_total"),
        4,
        "B took the four hops"
    );
    node_b.stop();
    node_a.stop();
}

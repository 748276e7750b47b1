//! The relay attack matrix of issue #14, played on the wire against the real binary.
//!
//! sipward's first promise is that nobody can use it to reach an address of their
//! choosing. Each test below takes one of the eight relay paths of #14 as an attacker
//! would, with raw SIP over UDP and TCP from distinct loopback addresses (each stands
//! for a host), and a listener standing for the gateway or the target. The listener
//! must receive **nothing**: it records every datagram and every TCP byte, and silence
//! is observed (1.5 s without a packet after the last one sent), never assumed. Each
//! attack test carries its positive control in the same test: the same listener does
//! see traffic when the path is legitimate (a call from an allowed class through the
//! same route, an in-dialog BYE from the right party).
//!
//! These tests see sipward only through its stable interfaces: the CLI to set up
//! extensions, gateways, routes and classes, and SIP on sockets. They are the acceptance
//! test of the call-path rewrite #14 asks for; on the code before it, many must fail.
//!
//! Cases are tables, one line each; a failure names every case that leaked.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::Env;
use crate::peers::{Server, Smtp, eventually_or};
use crate::user_agent::{
    Account, Dialog, Outgoing, Received, Ua, answers, body, cseq, ext, first_line, header, headers,
    request_method, request_uri, response, split_commas, status, top_branch, uri_in,
};

/// London, dialled from the NANP (the default dial plan: country code 1, `011` abroad).
const ABROAD: &str = "011442079460000";
/// New York: a national call under a plan whose country code is 1.
const US_NATIONAL: &str = "12125550123";
const GW_PASSWORD: &str = "Gw7-pQ2v-Xk9m-Lr4t";
/// How long a listener must stay silent after the last packet of an attack.
const SILENCE: Duration = Duration::from_millis(1500);
/// How long an attack's echoes may keep a listener busy before we stop waiting.
const QUIET_DEADLINE: Duration = Duration::from_secs(30);

/// MD5 digests (the user agents here compute MD5), and a guard that bans nobody for
/// the traffic these tests make: flood limits off and failure thresholds out of reach,
/// so that no refusal here is really a ban in disguise. `extra` adds tables.
fn config(extra: &str) -> String {
    format!(
        "[sip]\ndigest_algorithms = [\"MD5\"]\n\
         [guard]\nflood_requests = \"off\"\nauth_failures = 100\nextension_failures = \"off\"\n{extra}"
    )
}

/// Limits high enough that the tests which place many calls are never suspended.
const HIGH_LIMITS: &str = "[dialplan.limits]\nattempts_per_minute = 1000\n\
    international_per_day = 1000\nconcurrent_external = 100\n";

/// The PSTN gateway `pstn` (virtual extension 800) at `host`.
fn gateway(env: &Env, host: SocketAddr) -> Account {
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
        GW_PASSWORD,
        "--host",
        &host.to_string(),
    ]);
    Account {
        number: "800".into(),
        auth_id: "gw-pstn-7".into(),
        password: GW_PASSWORD.into(),
    }
}

/// A route to the gateway (`extra`: `--strip`, `--prepend`, `--priority`).
fn route(env: &Env, name: &str, pattern: &str, extra: &[&str]) {
    let mut args = vec![
        "route",
        "add",
        name,
        "--pattern",
        pattern,
        "--trunk",
        "pstn",
    ];
    args.extend_from_slice(extra);
    env.ok(&args);
}

/// A listener on `ip` (UDP and TCP, one free port) made before the server, so that the
/// CLI can name its address as a gateway's host. [`towards`] points it at the server.
async fn listener(ip: &str) -> Ua {
    // The server's address is not known yet; nothing is sent before `towards`.
    Ua::bind(ip, "127.0.0.1:9".parse().expect("addr")).await
}

/// Points a user agent made before the server at it.
fn towards(mut ua: Ua, server: &Server) -> Ua {
    ua.pbx = server.sip;
    ua
}

/// Suspends `phone`'s outbound calling the way the README documents: more than five
/// external attempts in a minute (here: calls abroad its class forbids, on a number a
/// route does match, so that they are attempts whatever is checked first; none is
/// routed). Waits until the CLI shows the suspension.
async fn suspend(env: &Env, server: &Server, phone: &Ua) {
    for _ in 0..6 {
        let out = phone.invite(ABROAD, "").await;
        let answer = phone.wait_answer(&out, |c| c >= 200).await;
        phone.ack_failure(&out, &answer).await;
    }
    let number = phone.number().to_owned();
    eventually_or(
        &format!("extension {number} suspended"),
        Duration::from_secs(20),
        || env.json(&["ext", "show", &number, "--json"])["outbound"]["suspended"] == true,
        || server.log(),
    );
}

/// How a call between extensions ends up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Answered, and still up.
    Live,
    /// Answered, then hung up with BYE.
    Ended,
    /// Rung (180 with a tag and the Record-Route), then refused with 486.
    Refused,
}

/// One call from `caller` to `callee` through sipward; the dialog as each side sees it.
async fn establish(caller: &Ua, callee: &Ua, ending: Ending, extra: &str) -> (Dialog, Dialog) {
    let out = caller.invite(callee.number(), extra).await;
    let invite = callee.wait_request("INVITE", &out.call_id).await;
    let tag = callee.next("callee");
    let contact = format!("Contact: {}\r\n", callee.contact());
    callee
        .reply(&invite, 180, "Ringing", &tag, &contact, "")
        .await;
    let ringing = caller.wait_answer(&out, |c| c == 180).await;
    let callee_view = Dialog::uas(&invite, &tag);
    if ending == Ending::Refused {
        callee.reply(&invite, 486, "Busy Here", &tag, "", "").await;
        let busy = caller.wait_answer(&out, |c| c == 486).await;
        caller.ack_failure(&out, &busy).await;
        return (Dialog::uac(&out, &ringing), callee_view);
    }
    let sdp = callee.sdp("sendrecv");
    callee
        .reply(
            &invite,
            200,
            "OK",
            &tag,
            &format!("{contact}Content-Type: application/sdp\r\n"),
            &sdp,
        )
        .await;
    let ok = caller.wait_answer(&out, |c| c == 200).await;
    let mut caller_view = Dialog::uac(&out, &ok);
    caller.ack_2xx(&caller_view, out.cseq).await;
    callee.wait_request("ACK", &out.call_id).await;
    if ending == Ending::Ended {
        hang_up(caller, &mut caller_view, callee).await;
    }
    (caller_view, callee_view)
}

/// `from` hangs up its dialog `d` with `to`: the BYE must reach `to`, and its 200 come
/// back. (The positive control of every in-dialog attack.)
async fn hang_up(from: &Ua, d: &mut Dialog, to: &Ua) {
    let bye = from.send_in_dialog(d, "BYE", "", "").await;
    let got = to.wait_request("BYE", &d.call_id).await;
    to.reply(&got, 200, "OK", "", "", "").await;
    from.wait("the 200 to our BYE", |m| {
        status(m) == 200 && cseq(m) == cseq(&bye) && header(m, "Call-ID") == header(&bye, "Call-ID")
    })
    .await;
}

/// The attacks of one test, in the order they were made: each case's name and when
/// it started. A case's number (its index) marks its packets as `relay-case-N`.
#[derive(Debug, Default)]
struct Cases {
    list: Vec<(String, Instant)>,
}

impl Cases {
    /// Starts the case `name`; returns its number.
    fn start(&mut self, name: String) -> usize {
        self.list.push((name, Instant::now()));
        self.list.len() - 1
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    fn name(&self, n: usize) -> Option<&str> {
        self.list.get(n).map(|(name, _)| name.as_str())
    }

    /// The case running when `at` came: the last one started before it.
    fn at(&self, at: Instant) -> Option<&str> {
        self.list
            .iter()
            .rev()
            .find(|(_, started)| *started <= at)
            .map(|(name, _)| name.as_str())
    }
}

/// Lets what one case made sipward send arrive before the next case starts, so that a
/// packet sipward wrote itself (no case mark) is put down to the right case. Only the
/// failure message's naming depends on it, never a verdict.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The case number an attack marked its packet with (`relay-case-N`).
fn case_of(text: &str) -> Option<usize> {
    let at = text.find("relay-case-")? + "relay-case-".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Panics naming every case whose packet reached `listener` when anything arrived at
/// all. A packet sipward wrote itself (a B2BUA leg) carries no mark: the first packet
/// of each Call-ID is put down to the case running when it came.
fn assert_nothing_reached(listener: &str, arrived: &[Received], cases: &Cases) {
    if arrived.is_empty() {
        return;
    }
    let mut leaked: Vec<String> = Vec::new();
    let mut seen_calls: Vec<&str> = Vec::new();
    for r in arrived {
        if let Some(name) = case_of(&r.text).and_then(|n| cases.name(n)) {
            leaked.push(name.to_owned());
            continue;
        }
        let call = header(&r.text, "Call-ID").unwrap_or("");
        if seen_calls.contains(&call) {
            continue; // a retransmission, or the same call's next request
        }
        seen_calls.push(call);
        if let Some(name) = cases.at(r.at) {
            leaked.push(format!("{name} (by time: {})", first_line(&r.text)));
        }
    }
    leaked.sort_unstable();
    leaked.dedup();
    let mut msg = format!(
        "{} packets reached {listener}, which must receive nothing; {} of {} cases leaked.\n",
        arrived.len(),
        leaked.len(),
        cases.len()
    );
    // Which parts of the case names the leaks share (`udp: 1080 of 1440`, ...).
    let parts = |name: &str| -> Vec<String> {
        name.split(" (by time")
            .next()
            .unwrap_or(name)
            .split('/')
            .map(str::to_owned)
            .collect()
    };
    let hits: std::collections::HashSet<String> =
        leaked.iter().map(|l| parts(l).join("/")).collect();
    let width = cases
        .list
        .iter()
        .map(|(n, _)| parts(n).len())
        .max()
        .unwrap_or(0);
    for i in 0..width {
        let mut counts: Vec<(String, usize, usize)> = Vec::new();
        for (name, _) in &cases.list {
            if let Some(part) = parts(name).get(i) {
                let hit = hits.contains(name);
                match counts.iter_mut().find(|(p, _, _)| p == part) {
                    Some(c) => {
                        c.1 += usize::from(hit);
                        c.2 += 1;
                    }
                    None => counts.push((part.clone(), usize::from(hit), 1)),
                }
            }
        }
        if counts.len() > 1 {
            let line: Vec<String> = counts
                .iter()
                .map(|(p, hit, all)| format!("{p}: {hit} of {all}"))
                .collect();
            msg.push_str(&format!("  by part {}: {}\n", i + 1, line.join(", ")));
        }
    }
    msg.push_str("the cases:\n");
    for n in leaked.iter().take(60) {
        msg.push_str(&format!("  {n}\n"));
    }
    if leaked.len() > 60 {
        msg.push_str(&format!("  ... and {} more\n", leaked.len() - 60));
    }
    if let Some(first) = arrived.first() {
        msg.push_str(&format!(
            "the first packet ({}, from {}):\n{}\n",
            if first.tcp { "TCP" } else { "UDP" },
            first.from,
            first.text
        ));
    }
    panic!("{msg}");
}

/// Sends `text` from `ua` and lets sipward keep up (a burst that overflowed a socket
/// buffer would hide a leak).
async fn paced(ua: &Ua, tcp: bool, text: &str, n: usize) {
    ua.send_over(tcp, text).await;
    if n % 8 == 7 {
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

// ---------------------------------------------------------------------------------
// Path 1: in-dialog relay.

/// Where the Request-URI of an in-dialog attack points.
#[derive(Clone, Copy, Debug)]
enum Aim {
    /// `sip:ABROAD@TARGET`.
    Target,
    /// `sip:ABROAD@TARGET;transport=tcp`.
    TargetTcp,
    /// The other party's Contact, as a real in-dialog request has it (the target is
    /// then named by a Route entry after ours).
    Peer,
}

/// Every form our Route can take in an attacker's hands, one per line: name, the Route
/// header line(s), and where the Request-URI points. `{ours}` is the URI sipward's
/// Record-Route carried, verbatim (its dialog token included); `{ours-no-lr}` the same
/// without `lr`; `{ours-upper-values}` / `{ours-upper-names}` with its parameters'
/// values / names in upper case; `{target}` the listener.
#[rustfmt::skip]
const ROUTE_FORMS: &[(&str, &str, Aim)] = &[
    ("copied",                    "Route: <{ours}>",                                     Aim::Target),
    ("no-angle-brackets",         "Route: {ours}",                                       Aim::Target),
    ("no-lr",                     "Route: <{ours-no-lr}>",                               Aim::Target),
    ("transport-tcp",             "Route: <{ours};transport=tcp>",                       Aim::Target),
    ("token-upper-case",          "Route: <{ours-upper-values}>",                        Aim::Target),
    ("param-names-upper-case",    "Route: <{ours-upper-names}>",                         Aim::Target),
    ("ruri-transport-tcp",        "Route: <{ours}>",                                     Aim::TargetTcp),
    ("extra-route-same-header",   "Route: <{ours}>, <sip:{target};lr>",                  Aim::Peer),
    ("extra-route-second-header", "Route: <{ours}>\r\nRoute: <sip:{target};lr>",         Aim::Peer),
    ("extra-route-tcp",           "Route: <{ours}>, <sip:{target};lr;transport=tcp>",    Aim::Peer),
    ("extra-route-no-lr",         "Route: <{ours}>, <sip:{target}>",                     Aim::Peer),
    ("ours-second",               "Route: <sip:{target};lr>, <{ours}>",                  Aim::Target),
];

/// `uri` with each parameter (after the host) changed by `f(name, value)`.
fn map_params(uri: &str, f: impl Fn(&str, Option<&str>) -> Option<String>) -> String {
    let mut parts = uri.split(';');
    let mut out = parts.next().unwrap_or(uri).to_owned();
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        };
        if let Some(p) = f(name, value) {
            out.push(';');
            out.push_str(&p);
        }
    }
    out
}

/// The Route line(s) of `form` for a dialog whose first route (sipward's) is `ours`.
fn route_lines(form: &str, ours: &str, target: SocketAddr) -> String {
    let join = |n: &str, v: Option<&str>| v.map_or(n.to_owned(), |v| format!("{n}={v}"));
    form.replace(
        "{ours-no-lr}",
        &map_params(ours, |n, v| {
            (!n.eq_ignore_ascii_case("lr")).then(|| join(n, v))
        }),
    )
    .replace(
        "{ours-upper-values}",
        &map_params(ours, |n, v| {
            Some(join(n, v.map(str::to_ascii_uppercase).as_deref()))
        }),
    )
    .replace(
        "{ours-upper-names}",
        &map_params(ours, |n, v| Some(join(&n.to_ascii_uppercase(), v))),
    )
    .replace("{ours}", ours)
    .replace("{target}", &target.to_string())
}

/// The methods every attack is tried with.
const METHODS: &[&str] = &["INVITE", "MESSAGE", "OPTIONS", "NOTIFY", "REFER"];

/// Headers and body each method carries in an attack (`{target}` filled in).
fn method_parts(method: &str, n: usize, sender: &Ua, target: SocketAddr) -> (String, String) {
    match method {
        "INVITE" => (
            "Content-Type: application/sdp\r\n".into(),
            sender.sdp("sendrecv"),
        ),
        "MESSAGE" => (
            "Content-Type: text/plain\r\n".into(),
            format!("relay-case-{n}"),
        ),
        "NOTIFY" => (
            "Event: refer\r\nSubscription-State: active;expires=60\r\n\
             Content-Type: message/sipfrag\r\n"
                .into(),
            "SIP/2.0 200 OK\r\n".into(),
        ),
        "REFER" => (
            format!(
                "Refer-To: <sip:{ABROAD}@{target}>\r\nReferred-By: <sip:attacker@127.0.0.1>\r\n"
            ),
            String::new(),
        ),
        _ => (String::new(), String::new()),
    }
}

/// One in-dialog attack, case `n`: `method` in the dialog `view` (our From and tags, the
/// peer's Contact), our Route written as `form`, sent from `sender`.
fn attack_text(
    n: usize,
    method: &str,
    form: (&str, &str, Aim),
    view: &Dialog,
    sender: &Ua,
    tcp: bool,
    target: SocketAddr,
) -> String {
    let route = route_lines(form.1, &view.ours(), target);
    let ruri = match form.2 {
        Aim::Target => format!("sip:{ABROAD}@{target}"),
        Aim::TargetTcp => format!("sip:{ABROAD}@{target};transport=tcp"),
        Aim::Peer => view.target.clone(),
    };
    let (extra, body) = method_parts(method, n, sender, target);
    let transport = if tcp { "TCP" } else { "UDP" };
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/{transport} {};branch=z9hG4bK-relay-case-{n};rport\r\n\
         Max-Forwards: 70\r\n{route}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n\
         Contact: {}\r\nSubject: relay-case-{n}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        sender.addr,
        view.local,
        view.remote,
        view.call_id,
        5000 + n,
        sender.contact(),
        body.len()
    )
}

/// A dialog the attacks use: its two parties and their views of it.
struct Scenario<'a> {
    name: String,
    caller: &'a Ua,
    callee: &'a Ua,
    caller_view: Dialog,
    callee_view: Dialog,
}

/// Sends every in-dialog attack of the matrix towards `target`: for each dialog, from
/// each party, from a registered phone that is no party, and from a stranger; over UDP
/// and TCP; with every method and every Route form. Returns the cases' names (index =
/// case number) and when the last packet left.
async fn in_dialog_attacks(
    scenarios: &[Scenario<'_>],
    third: &Ua,
    stranger: &Ua,
    target: SocketAddr,
) -> (Cases, Instant) {
    let mut cases = Cases::default();
    for s in scenarios {
        let sources: [(&str, &Ua, &Dialog); 4] = [
            ("the-caller", s.caller, &s.caller_view),
            ("the-callee", s.callee, &s.callee_view),
            ("a-registered-third-phone", third, &s.caller_view),
            ("a-stranger", stranger, &s.caller_view),
        ];
        for (source, ua, view) in sources {
            for tcp in [false, true] {
                for method in METHODS {
                    for form in ROUTE_FORMS {
                        let n = cases.start(format!(
                            "{}/from-{source}/{}/{method}/{}",
                            s.name,
                            if tcp { "tcp" } else { "udp" },
                            form.0
                        ));
                        let text = attack_text(n, method, *form, view, ua, tcp, target);
                        paced(ua, tcp, &text, n).await;
                    }
                }
            }
        }
    }
    (cases, Instant::now())
}

/// The dialogs path 1 abuses: one live, one ended, one refused, each placed by an
/// extension of class `internal` and by a suspended one (both may call extensions).
async fn path1_dialogs<'a>(
    internal: &'a Ua,
    suspended: &'a Ua,
    callee: &'a Ua,
) -> Vec<Scenario<'a>> {
    let mut out = Vec::new();
    for (who, caller) in [
        ("internal-class-caller", internal),
        ("suspended-caller", suspended),
    ] {
        for ending in [Ending::Live, Ending::Ended, Ending::Refused] {
            let (caller_view, callee_view) = establish(caller, callee, ending, "").await;
            out.push(Scenario {
                name: format!("{who}/{ending:?}-call").to_lowercase(),
                caller,
                callee,
                caller_view,
                callee_view,
            });
        }
    }
    out
}

/// The parties of path 1: a callee, a caller of class `internal`, a suspended caller,
/// a registered phone that is no party, and a stranger. All but the stranger register.
struct Path1 {
    internal: Ua,
    suspended: Ua,
    callee: Ua,
    third: Ua,
    stranger: Ua,
}

/// The extensions of path 1, made before the server starts (so it knows them at once).
fn path1_accounts(env: &Env) -> [Account; 4] {
    [
        ext(env, "2101", "internal"),
        ext(env, "2102", "national"),
        ext(env, "2103", "international"),
        ext(env, "2104", "national"),
    ]
}

async fn path1_parties(
    env: &Env,
    server: &Server,
    accounts: &[Account; 4],
    third_contact: Option<SocketAddr>,
) -> Path1 {
    let internal = Ua::phone("127.0.0.21", server.sip, &accounts[0]).await;
    let suspended = Ua::phone("127.0.0.22", server.sip, &accounts[1]).await;
    let callee = Ua::phone("127.0.0.23", server.sip, &accounts[2]).await;
    let third = Ua::phone("127.0.0.24", server.sip, &accounts[3]).await;
    let stranger = Ua::bind("127.0.0.25", server.sip).await;
    for p in [&internal, &suspended, &callee] {
        p.register().await;
    }
    // A phone chooses its Contact's host and port: this one names the target.
    let contact = third_contact.map_or_else(
        || third.contact(),
        |a| format!("<sip:{}@{a}>", third.number()),
    );
    let answer = third.register_as(&contact).await;
    assert_eq!(status(&answer), 200, "the third phone registers: {answer}");
    suspend(env, server, &suspended).await;
    Path1 {
        internal,
        suspended,
        callee,
        third,
        stranger,
    }
}

/// Both live dialogs still carry a BYE from the right party to the other party.
async fn live_dialogs_still_work(scenarios: &mut [Scenario<'_>]) {
    for s in scenarios
        .iter_mut()
        .filter(|s| s.name.ends_with("live-call"))
    {
        // Above every CSeq the attacks used in the caller's name (RFC 3261 §12.2.2: a
        // dialog may refuse a lower one).
        s.caller_view.cseq = 1_000_000;
        hang_up(s.caller, &mut s.caller_view, s.callee).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path1_in_dialog_requests_never_reach_a_trunk_host() {
    let env = Env::with_config(&config(""));
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "world", "011.", &[]);
    let allowed = ext(&env, "2199", "international");
    let accounts = path1_accounts(&env);
    let server = env.serve();
    let gw = towards(gw, &server);
    let p = path1_parties(&env, &server, &accounts, None).await;
    let mut scenarios = path1_dialogs(&p.internal, &p.suspended, &p.callee).await;

    let (cases, last) = in_dialog_attacks(&scenarios, &p.third, &p.stranger, gw.addr).await;
    let arrived = gw.quiet_after(0, last, SILENCE, QUIET_DEADLINE).await;

    // Positive controls: the live dialogs still work, and a call from a class that may
    // call abroad reaches the very same listener through the route.
    live_dialogs_still_work(&mut scenarios).await;
    let caller = Ua::phone("127.0.0.26", server.sip, &allowed).await;
    caller.invite(ABROAD, "").await;
    gw.wait("control: an international call reaches the gateway", |m| {
        request_method(m) == Some("INVITE") && m.contains("442079460000")
    })
    .await;

    assert_nothing_reached("the gateway (a trunk host)", &arrived, &cases);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path1_in_dialog_requests_never_reach_an_address_a_contact_names() {
    let env = Env::with_config(&config(""));
    // A route abroad, so that the suspension's attempts are calls abroad (see `suspend`).
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "world", "011.", &[]);
    let allowed = ext(&env, "2199", "international");
    let target_acc = ext(&env, "2198", "national");
    let accounts = path1_accounts(&env);
    let server = env.serve();
    let target = Ua::bind("127.0.0.66", server.sip).await;
    let p = path1_parties(&env, &server, &accounts, Some(target.addr)).await;
    let mut scenarios = path1_dialogs(&p.internal, &p.suspended, &p.callee).await;

    let (cases, last) = in_dialog_attacks(&scenarios, &p.third, &p.stranger, target.addr).await;
    let arrived = target.quiet_after(0, last, SILENCE, QUIET_DEADLINE).await;

    // Positive controls: the live dialogs still work, and the target does receive a
    // call once it is a phone registered from its own address.
    live_dialogs_still_work(&mut scenarios).await;
    let mut target = target;
    target.account = Some(target_acc);
    target.register().await;
    let caller = Ua::phone("127.0.0.26", server.sip, &allowed).await;
    let out = caller.invite("2198", "").await;
    target.wait_request("INVITE", &out.call_id).await;

    assert_nothing_reached("an address named in a phone's Contact", &arrived, &cases);
    server.stop();
}

// ---------------------------------------------------------------------------------
// Path 2: response relay.

/// Second Via entries naming the target, one per line (`{tip}`/`{tport}`: its address).
#[rustfmt::skip]
const SECOND_VIAS: &[(&str, &str)] = &[
    ("host-port",      "Via: SIP/2.0/UDP {target};branch=z9hG4bKvictim{n}"),
    ("received-rport", "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKvictim{n};received={tip};rport={tport}"),
    ("tcp",            "Via: SIP/2.0/TCP {target};branch=z9hG4bKvictim{n}"),
    ("same-header",    ", SIP/2.0/UDP {target};branch=z9hG4bKvictim{n};rport"),
];

/// The responses tried: status, reason, CSeq method.
const RESPONSES: &[(u16, &str, &str)] = &[
    (180, "Ringing", "INVITE"),
    (200, "OK", "INVITE"),
    (486, "Busy Here", "INVITE"),
    (200, "OK", "MESSAGE"),
    (200, "OK", "BYE"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path2_responses_are_not_relayed_by_their_via() {
    let env = Env::with_config(&config(""));
    let caller_acc = ext(&env, "2201", "national");
    let callee_acc = ext(&env, "2202", "national");
    let target_acc = ext(&env, "2203", "national");
    let server = env.serve();
    let caller = Ua::phone("127.0.0.21", server.sip, &caller_acc).await;
    let callee = Ua::phone("127.0.0.23", server.sip, &callee_acc).await;
    let stranger = Ua::bind("127.0.0.25", server.sip).await;
    let target = Ua::bind("127.0.0.66", server.sip).await;
    caller.register().await;
    callee.register().await;

    // Real branches of the proxy, as the callee sees them: an answered call's INVITE,
    // an INFO and a BYE relayed in it, and a call still ringing.
    let out = caller.invite(callee.number(), "").await;
    let invite = callee.wait_request("INVITE", &out.call_id).await;
    callee.answer(&invite).await;
    let ok = caller.wait_answer(&out, |c| c == 200).await;
    let mut caller_view = Dialog::uac(&out, &ok);
    caller.ack_2xx(&caller_view, out.cseq).await;
    callee.wait_request("ACK", &out.call_id).await;
    caller
        .send_in_dialog(&mut caller_view, "INFO", "", "")
        .await;
    let info_in = callee.wait_request("INFO", &out.call_id).await;
    callee.reply(&info_in, 200, "OK", "", "", "").await;
    // Positive control: a legitimate answer travels back by its Via.
    caller
        .wait(
            "control: the callee's 200 to INFO reaches the caller",
            |m| status(m) == 200 && cseq(m).is_some_and(|(_, meth)| meth == "INFO"),
        )
        .await;
    let bye = caller.send_in_dialog(&mut caller_view, "BYE", "", "").await;
    let bye_in = callee.wait_request("BYE", &out.call_id).await;
    callee.reply(&bye_in, 200, "OK", "", "", "").await;
    caller
        .wait("the 200 to BYE", |m| {
            status(m) == 200 && header(m, "Call-ID") == header(&bye, "Call-ID")
        })
        .await;
    let ringing_out = caller.invite(callee.number(), "").await;
    let ringing_invite = callee.wait_request("INVITE", &ringing_out.call_id).await;
    callee
        .reply(&ringing_invite, 180, "Ringing", "ring1", "", "")
        .await;

    let branch = |m: &str| top_branch(m).expect("a branch").to_owned();
    let invite_branch = branch(&invite);
    let forged = format!(
        "{}{}",
        &invite_branch[..invite_branch.len().saturating_sub(8)],
        "deadbeef"
    );
    let top_host = headers(&invite, "Via")[0]
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    let branches: [(&str, String, &str); 5] = [
        (
            "answered-call-invite-branch",
            invite_branch.clone(),
            out.call_id.as_str(),
        ),
        (
            "relayed-info-branch",
            branch(&info_in),
            out.call_id.as_str(),
        ),
        ("relayed-bye-branch", branch(&bye_in), out.call_id.as_str()),
        (
            "ringing-call-invite-branch",
            branch(&ringing_invite),
            ringing_out.call_id.as_str(),
        ),
        (
            "forged-branch-with-our-prefix",
            forged,
            out.call_id.as_str(),
        ),
    ];

    let mut cases = Cases::default();
    let sources: [(&str, &Ua); 2] = [("the-callee", &callee), ("a-stranger", &stranger)];
    for (source, ua) in sources {
        for tcp in [false, true] {
            for (bname, b, call_id) in &branches {
                for (vname, second) in SECOND_VIAS {
                    for (code, reason, method) in RESPONSES {
                        let n = cases.start(format!(
                            "from-{source}/{}/{bname}/second-via-{vname}/{code}-{method}",
                            if tcp { "tcp" } else { "udp" }
                        ));
                        let second = second
                            .replace("{target}", &target.addr.to_string())
                            .replace("{tip}", &target.addr.ip().to_string())
                            .replace("{tport}", &target.addr.port().to_string())
                            .replace("{n}", &n.to_string());
                        let top = format!("Via: {top_host};branch={b};rport");
                        let vias = if second.starts_with(',') {
                            format!("{top}{second}\r\n")
                        } else {
                            format!("{top}\r\n{second}\r\n")
                        };
                        let text = format!(
                            "SIP/2.0 {code} {reason}\r\n{vias}From: <sip:2201@127.0.0.1>;tag=f{n}\r\n\
                             To: <sip:2202@127.0.0.1>;tag=t{n}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
                             Contact: <sip:{ABROAD}@{}>\r\nSubject: relay-case-{n}\r\nContent-Length: 0\r\n\r\n",
                            target.addr
                        );
                        paced(ua, tcp, &text, n).await;
                    }
                }
            }
        }
    }
    let arrived = target
        .quiet_after(0, Instant::now(), SILENCE, QUIET_DEADLINE)
        .await;

    // Positive control: the target does get an answer by its Via when it is the one
    // that asked (registered as an extension, it calls the callee, who rings).
    let mut target = target;
    target.account = Some(target_acc);
    target.register().await;
    let control = target.invite(callee.number(), "").await;
    let control_invite = callee.wait_request("INVITE", &control.call_id).await;
    callee
        .reply(&control_invite, 180, "Ringing", "ring2", "", "")
        .await;
    target.wait_answer(&control, |c| c == 180).await;

    assert_nothing_reached("the target named by a second Via", &arrived, &cases);
    server.stop();
}

// ---------------------------------------------------------------------------------
// Paths 3 and 4: what an extension dials, against what leaves.

/// Sends `dialled` with every method over UDP and TCP from each caller (answering
/// challenges with its own credentials): the cases' names and when the last one left.
async fn dial_everything(callers: &[(&str, &Ua)], dialled: &[&str]) -> (Cases, Instant) {
    let mut cases = Cases::default();
    for (who, ua) in callers {
        for number in dialled {
            for tcp in [false, true] {
                for method in METHODS {
                    let n = cases.start(format!(
                        "{who}/dials-{number}/{}/{method}",
                        if tcp { "tcp" } else { "udp" }
                    ));
                    // `800;user=phone`: URI parameters go after the host.
                    let ruri = match number.split_once(';') {
                        Some((user, params)) => format!("sip:{user}@{};{params}", ua.pbx),
                        None => format!("sip:{number}@{}", ua.pbx),
                    };
                    let (extra, body) = method_parts(method, n, ua, ua.pbx);
                    let extra = format!("Subject: relay-case-{n}\r\n{extra}");
                    ua.request_authenticated(method, &ruri, &ruri, &extra, &body, tcp)
                        .await;
                    settle().await;
                }
            }
        }
    }
    (cases, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path3_a_gateway_virtual_number_cannot_be_dialled() {
    let env = Env::with_config(&config(""));
    let gw = listener("127.0.0.7").await;
    let gw_acc = gateway(&env, gw.addr);
    route(&env, "us", "1NXXNXXXXXX", &[]);
    route(&env, "world", "011.", &[]);
    let classes = ["internal", "local", "national", "international"];
    let accounts: Vec<Account> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| ext(&env, &format!("230{i}"), c))
        .collect();
    let suspended_acc = ext(&env, "2309", "national");
    let control_acc = ext(&env, "2399", "national");
    let server = env.serve();
    let mut gw = towards(gw, &server);
    gw.account = Some(gw_acc);
    // The gateway registers on its virtual number, as gateways do.
    gw.register().await;
    let mark = gw.mark();

    let mut callers = Vec::new();
    for (i, a) in accounts.iter().enumerate() {
        callers.push((
            format!("class-{}", classes[i]),
            Ua::phone(&format!("127.0.0.{}", 21 + i), server.sip, a).await,
        ));
    }
    let suspended = Ua::phone("127.0.0.29", server.sip, &suspended_acc).await;
    suspend(&env, &server, &suspended).await;
    callers.push(("suspended".into(), suspended));
    let refs: Vec<(&str, &Ua)> = callers.iter().map(|(n, u)| (n.as_str(), u)).collect();
    let (cases, last) = dial_everything(&refs, &["800", "800;user=phone"]).await;
    let arrived = gw.quiet_after(mark, last, SILENCE, QUIET_DEADLINE).await;

    // Positive control: a national call through the route reaches the same gateway.
    let control = Ua::phone("127.0.0.30", server.sip, &control_acc).await;
    control.invite(US_NATIONAL, "").await;
    gw.wait("control: a national call reaches the gateway", |m| {
        request_method(m) == Some("INVITE") && m.contains("2125550123")
    })
    .await;

    assert_nothing_reached(
        "the gateway (dialled by its virtual number)",
        &arrived,
        &cases,
    );
    server.stop();
}

/// Extensions of `classes` dial each of `dialled` (every method, UDP and TCP) under
/// `plan`; the gateway must receive nothing. Then `control_class` dialling `control`
/// through the same routes reaches it.
async fn number_that_leaves(
    plan: &str,
    routes: &[(&str, &str, &[&str])],
    classes: &[&str],
    dialled: &[&str],
    control_class: &str,
    controls: &[(&str, &str)],
) {
    let env = Env::with_config(&config(plan));
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    for (name, pattern, extra) in routes {
        route(&env, name, pattern, extra);
    }
    let accounts: Vec<Account> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| ext(&env, &format!("240{i}"), c))
        .collect();
    let control_acc = ext(&env, "2499", control_class);
    let server = env.serve();
    let gw = towards(gw, &server);
    let mut callers = Vec::new();
    for (i, a) in accounts.iter().enumerate() {
        callers.push((
            format!("class-{}", classes[i]),
            Ua::phone(&format!("127.0.0.{}", 21 + i), server.sip, a).await,
        ));
    }
    let refs: Vec<(&str, &Ua)> = callers.iter().map(|(n, u)| (n.as_str(), u)).collect();
    let (cases, last) = dial_everything(&refs, dialled).await;
    let arrived = gw.quiet_after(0, last, SILENCE, QUIET_DEADLINE).await;

    let control = Ua::phone("127.0.0.30", server.sip, &control_acc).await;
    for (dial, leaves) in controls {
        control.invite(dial, "").await;
        gw.wait(
            &format!("control: class {control_class} dialling {dial} reaches the gateway"),
            |m| request_method(m) == Some("INVITE") && m.contains(leaves),
        )
        .await;
    }
    assert_nothing_reached("the gateway", &arrived, &cases);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path4_the_readme_00_route_classifies_the_number_that_leaves() {
    // Under the default plan `00442079460000` is not an international prefix, but the
    // README's route makes it +442079460000: a call abroad.
    number_that_leaves(
        "",
        &[("world", "00.", &["--strip", "2", "--prepend", "+"])],
        &["internal", "local", "national"],
        &["00442079460000"],
        "international",
        &[("00442079460000", "+442079460000")],
    )
    .await;
}

/// Routes for NANP numbers dialled with and without `+`.
const NANP_ROUTES: &[(&str, &str, &[&str])] =
    &[("plus", "+1NXXNXXXXXX", &[]), ("one", "1NXXNXXXXXX", &[])];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path4_caribbean_and_premium_numbers_are_not_national_under_country_code_1() {
    number_that_leaves(
        "[dialplan]\ncountry_code = \"1\"\ninternational_prefix = \"011\"\nnational_prefix = \"1\"\n",
        NANP_ROUTES,
        &["national"],
        &["+18765550123", "19005550123"],
        "national",
        &[(US_NATIONAL, "2125550123"), ("+12125550123", "2125550123")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path4_caribbean_and_premium_numbers_are_not_national_under_the_default_plan() {
    number_that_leaves(
        "",
        NANP_ROUTES,
        &["national"],
        &["+18765550123", "19005550123"],
        "national",
        &[(US_NATIONAL, "2125550123"), ("+12125550123", "2125550123")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path4_premium_rate_is_a_class_above_international() {
    // No extension has the high-cost class by default: not even an international one
    // reaches a premium-rate number. Toronto, abroad under the US plan, it does reach.
    // (Not Jamaica: `+1 876` is on the FTC's one-ring list, so it is high-cost too.)
    number_that_leaves(
        "",
        NANP_ROUTES,
        &["international"],
        &["19005550123", "+19005550123"],
        "international",
        &[("+14165550123", "4165550123")],
    )
    .await;
}

// ---------------------------------------------------------------------------------
// Path 5: transfers, redirects and auto-answer.

/// Auto-answer hints phones honour, one per line: name, header line.
#[rustfmt::skip]
const AUTO_ANSWER: &[(&str, &str)] = &[
    ("call-info-answer-after",            "Call-Info: <sip:127.0.0.1>;answer-after=0"),
    ("call-info-answer-after-mixed-case", "Call-Info: <sip:127.0.0.1>;Answer-After=0"),
    ("call-info-bare-answer-after",       "Call-Info: ;answer-after=0"),
    ("call-info-second-entry",            "Call-Info: <http://127.0.0.1/photo.jpg>;purpose=icon, <sip:127.0.0.1>;answer-after=0"),
    ("call-info-second-header",           "Call-Info: <http://127.0.0.1/photo.jpg>;purpose=icon\r\nCall-Info: <sip:127.0.0.1>;answer-after=0"),
    ("alert-info-autoanswer-delay",       "Alert-Info: <http://www.notused.com>;info=alert-autoanswer;delay=0"),
    ("alert-info-bare-autoanswer",        "Alert-Info: info=alert-autoanswer"),
    ("alert-info-polycom-auto-answer",    "Alert-Info: Auto Answer"),
    ("alert-info-polycom-ring-answer",    "Alert-Info: Ring Answer"),
    ("alert-info-intercom",               "Alert-Info: <http://127.0.0.1>;info=intercom"),
    ("alert-info-second-entry",           "Alert-Info: <http://127.0.0.1/ring.wav>, <http://www.notused.com>;info=alert-autoanswer"),
    ("answer-mode-auto-rfc5373",          "Answer-Mode: Auto"),
    ("priv-answer-mode-auto-rfc5373",     "Priv-Answer-Mode: Auto"),
];

/// Whether a forwarded INVITE still carries any auto-answer hint.
fn has_auto_answer_hint(invite: &str) -> bool {
    let head = invite
        .split("\r\n\r\n")
        .next()
        .unwrap_or(invite)
        .to_ascii_lowercase();
    head.lines().any(|l| {
        l.starts_with("call-info") && l.contains("answer-after")
            || l.starts_with("alert-info")
                && ["autoanswer", "auto answer", "ring answer", "intercom"]
                    .iter()
                    .any(|h| l.contains(h))
            || l.starts_with("answer-mode")
            || l.starts_with("priv-answer-mode")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path5_auto_answer_hints_never_reach_the_callee() {
    let env = Env::with_config(&config(""));
    let caller_acc = ext(&env, "2501", "internal");
    let callee_acc = ext(&env, "2502", "international");
    let server = env.serve();
    let caller = Ua::phone("127.0.0.21", server.sip, &caller_acc).await;
    let callee = Ua::phone("127.0.0.23", server.sip, &callee_acc).await;
    caller.register().await;
    callee.register().await;
    let mut leaked = Vec::new();
    for (name, hint) in AUTO_ANSWER {
        let out = caller.invite(callee.number(), &format!("{hint}\r\n")).await;
        // The call itself goes through (its positive control): the callee rings.
        let invite = callee.wait_request("INVITE", &out.call_id).await;
        if has_auto_answer_hint(&invite) {
            leaked.push(*name);
        }
        callee
            .reply(&invite, 486, "Busy Here", "busy", "", "")
            .await;
        let busy = caller.wait_answer(&out, |c| c >= 300).await;
        caller.ack_failure(&out, &busy).await;
    }
    // Control: the check above does see a hint where there is one.
    assert!(has_auto_answer_hint(&format!(
        "INVITE sip:x SIP/2.0\r\n{}\r\n\r\n",
        AUTO_ANSWER[0].1
    )));
    assert!(
        leaked.is_empty(),
        "auto-answer hints reached the callee of a call between extensions (intercom is \
         off by default): {leaked:?}"
    );
    server.stop();
}

/// Refer-To values pointing outside, one per line (`{pbx}`, `{gw}` filled in).
const OUTSIDE_TARGETS: &[(&str, &str)] = &[
    ("sip-via-pbx", "<sip:{abroad}@{pbx}>"),
    ("sip-via-pbx-user-phone", "<sip:{abroad}@{pbx};user=phone>"),
    ("sip-no-angle-brackets", "sip:{abroad}@{pbx}"),
    ("sip-at-the-gateway", "<sip:{abroad}@{gw}>"),
    ("tel-uri", "<tel:+442079460000>"),
];

fn outside(template: &str, pbx: SocketAddr, gw: SocketAddr) -> String {
    template
        .replace("{abroad}", ABROAD)
        .replace("{pbx}", &pbx.to_string())
        .replace("{gw}", &gw.to_string())
}

/// The user part (or telephone number) a transfer or redirect target names.
fn dialled_in(target: &str) -> String {
    let uri = uri_in(target);
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("tel:"))
        .unwrap_or(uri);
    rest.split(['@', ';', '?'])
        .next()
        .unwrap_or(rest)
        .to_owned()
}

/// A phone that does what a REFER asks (RFC 3515): 202, then a call to the Refer-To
/// target, placed through sipward under its own account. Handles every REFER that
/// reached it until none has come for `wait`; returns how many it followed.
async fn follow_refers(victim: &Ua, wait: Duration) -> usize {
    let mut followed = 0;
    while let Some(refer) = victim
        .try_wait(wait, |m| request_method(m) == Some("REFER"))
        .await
    {
        victim.reply(&refer, 202, "Accepted", "", "", "").await;
        let Some(to) = header(&refer, "Refer-To") else {
            continue;
        };
        let by = header(&refer, "From").unwrap_or_default().to_owned();
        victim
            .invite(&dialled_in(to), &format!("Referred-By: {by}\r\n"))
            .await;
        followed += 1;
    }
    followed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path5_a_low_class_extension_cannot_transfer_a_phone_abroad() {
    let env = Env::with_config(&config(HIGH_LIMITS));
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "world", "011.", &[]);
    route(&env, "plus", "+.", &[]);
    let attacker_acc = ext(&env, "2511", "internal");
    let victim_acc = ext(&env, "2512", "international");
    let colleague_acc = ext(&env, "2513", "national");
    let allowed_acc = ext(&env, "2519", "international");
    let server = env.serve();
    let gw = towards(gw, &server);
    let attacker = Ua::phone("127.0.0.21", server.sip, &attacker_acc).await;
    let victim = Ua::phone("127.0.0.23", server.sip, &victim_acc).await;
    let colleague = Ua::phone("127.0.0.24", server.sip, &colleague_acc).await;
    for p in [&attacker, &victim, &colleague] {
        p.register().await;
    }
    // The attacker makes the victim's phone answer by itself, then transfers it abroad.
    let (mut attacker_view, _) = establish(
        &attacker,
        &victim,
        Ending::Live,
        "Call-Info: <sip:127.0.0.1>;answer-after=0\r\n",
    )
    .await;
    let mut cases = Cases::default();
    for tcp in [false, true] {
        for (name, template) in OUTSIDE_TARGETS {
            let n = cases.start(format!("refer-{}/{name}", if tcp { "tcp" } else { "udp" }));
            let refer_to = outside(template, server.sip, gw.addr);
            let (text, _) = attacker.in_dialog_text(
                &mut attacker_view,
                "REFER",
                &format!("Refer-To: {refer_to}\r\nSubject: relay-case-{n}\r\n"),
                "",
            );
            let text = if tcp {
                text.replacen("SIP/2.0/UDP", "SIP/2.0/TCP", 1)
            } else {
                text
            };
            attacker.send_over(tcp, &text).await;
            // The victim's phone does what each REFER that reaches it asks.
            follow_refers(&victim, Duration::from_millis(500)).await;
            settle().await;
        }
    }
    let arrived = gw
        .quiet_after(0, Instant::now(), SILENCE, QUIET_DEADLINE)
        .await;

    // Positive controls: a transfer to an extension does happen (the victim's phone
    // follows it and the colleague rings), and a class that may call abroad reaches
    // the gateway through the same route.
    attacker
        .send_in_dialog(
            &mut attacker_view,
            "REFER",
            &format!("Refer-To: <sip:2513@{}>\r\n", server.sip),
            "",
        )
        .await;
    // The transferred phone follows it, or sipward carries it out: the colleague rings.
    follow_refers(&victim, SILENCE).await;
    colleague
        .wait("control: the colleague rings after the transfer", |m| {
            request_method(m) == Some("INVITE")
        })
        .await;
    let allowed = Ua::phone("127.0.0.26", server.sip, &allowed_acc).await;
    allowed.invite(ABROAD, "").await;
    gw.wait("control: an international call reaches the gateway", |m| {
        request_method(m) == Some("INVITE") && m.contains("442079460000")
    })
    .await;

    assert_nothing_reached("the gateway (a transfer target abroad)", &arrived, &cases);
    server.stop();
}

/// Redirects to outside, one per line: name, status, reason, Contact template.
#[rustfmt::skip]
const REDIRECTS: &[(&str, u16, &str, &str)] = &[
    ("302-sip-via-pbx",         302, "Moved Temporarily",   "<sip:{abroad}@{pbx}>"),
    ("301-sip-via-pbx",         301, "Moved Permanently",   "<sip:{abroad}@{pbx}>"),
    ("302-tel-uri",             302, "Moved Temporarily",   "<tel:+442079460000>"),
    ("302-sip-at-the-gateway",  302, "Moved Temporarily",   "<sip:{abroad}@{gw}>"),
    ("380-alternative-service", 380, "Alternative Service", "<sip:{abroad}@{pbx}>"),
];

/// The caller's phone follows a redirect (RFC 3261 §8.1.3.4): ACK, then a new call to
/// the first Contact through sipward.
async fn call_and_follow(caller: &Ua, callee: &Ua, redirect: (u16, &str, &str), n: usize) {
    let out = caller.invite(callee.number(), "").await;
    let invite = callee.wait_request("INVITE", &out.call_id).await;
    let (code, reason, contact) = redirect;
    callee
        .reply(
            &invite,
            code,
            reason,
            "moved",
            &format!("Contact: {contact}\r\nSubject: relay-case-{n}\r\n"),
            "",
        )
        .await;
    let answer = caller.wait_answer(&out, |c| c >= 200).await;
    caller.ack_failure(&out, &answer).await;
    if (300..400).contains(&status(&answer))
        && let Some(to) = header(&answer, "Contact")
    {
        let to = split_commas(to).into_iter().next().unwrap_or_default();
        caller
            .invite(&dialled_in(&to), &format!("Subject: relay-case-{n}\r\n"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path5_a_low_class_callee_cannot_redirect_a_caller_abroad() {
    let env = Env::with_config(&config(HIGH_LIMITS));
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "world", "011.", &[]);
    route(&env, "plus", "+.", &[]);
    let victim_acc = ext(&env, "2521", "international");
    let attacker_acc = ext(&env, "2522", "internal");
    let colleague_acc = ext(&env, "2523", "national");
    let server = env.serve();
    let gw = towards(gw, &server);
    let victim = Ua::phone("127.0.0.21", server.sip, &victim_acc).await;
    let attacker = Ua::phone("127.0.0.23", server.sip, &attacker_acc).await;
    let colleague = Ua::phone("127.0.0.24", server.sip, &colleague_acc).await;
    for p in [&victim, &attacker, &colleague] {
        p.register().await;
    }
    let mut cases = Cases::default();
    for (name, code, reason, template) in REDIRECTS {
        let n = cases.start((*name).to_owned());
        let contact = outside(template, server.sip, gw.addr);
        call_and_follow(&victim, &attacker, (*code, reason, &contact), n).await;
        settle().await;
    }
    let arrived = gw
        .quiet_after(0, Instant::now(), SILENCE, QUIET_DEADLINE)
        .await;

    // Positive controls: a redirect to an extension is followed (the colleague rings),
    // and the victim's own call abroad reaches the gateway through the same route.
    call_and_follow(
        &victim,
        &attacker,
        (
            302,
            "Moved Temporarily",
            &format!("<sip:2523@{}>", server.sip),
        ),
        cases.len(),
    )
    .await;
    colleague
        .wait("control: the colleague rings after the redirect", |m| {
            request_method(m) == Some("INVITE")
        })
        .await;
    victim.invite(ABROAD, "").await;
    gw.wait("control: an international call reaches the gateway", |m| {
        request_method(m) == Some("INVITE") && m.contains("442079460000")
    })
    .await;

    assert_nothing_reached("the gateway (a redirect target abroad)", &arrived, &cases);
    server.stop();
}

// ---------------------------------------------------------------------------------
// Path 6: the digest's uri= against the Request-URI.

/// `uri=` values that differ from the Request-URI, one per line.
const OTHER_URIS: &[(&str, &str)] = &[
    ("another-host", "sip:elsewhere.example"),
    ("another-loopback", "sip:127.0.0.2"),
    ("a-parameter-more", "{ruri};transport=tcp"),
    ("a-user-added", "sip:2601@127.0.0.1"),
];

/// What of an answer must not tell a mismatched `uri=` from a wrong password: the
/// status line and every header but those naming this transaction, with the
/// challenge's nonce and opaque masked.
fn shape(answer: &str) -> Vec<String> {
    let mask = |line: &str| {
        let mut out = String::new();
        let mut rest = line;
        while let Some(i) = rest.find('"') {
            let (head, tail) = rest.split_at(i);
            out.push_str(head);
            let Some(end) = tail[1..].find('"') else {
                break;
            };
            let value = &tail[1..1 + end];
            let masked = head.ends_with("nonce=") || head.ends_with("opaque=");
            out.push('"');
            out.push_str(if masked { "*" } else { value });
            out.push('"');
            rest = &tail[end + 2..];
        }
        out.push_str(rest);
        out
    };
    answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or(answer)
        .lines()
        .filter(|l| {
            !["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(mask)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path6_a_digest_for_another_uri_is_refused_like_a_wrong_password() {
    let env = Env::with_config(&config(HIGH_LIMITS));
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "world", "011.", &[]);
    let acc = ext(&env, "2601", "international");
    let server = env.serve();
    let gw = towards(gw, &server);
    let phone = Ua::phone("127.0.0.21", server.sip, &acc).await;
    let mut wrong = acc.clone();
    wrong.password = "Not-the-Password-91".into();
    let liar = Ua::phone("127.0.0.22", server.sip, &wrong).await;

    let mut mismatched = Vec::new();
    let mut cases = Cases::default();
    for tcp in [false, true] {
        let tp = if tcp { "tcp" } else { "udp" };
        // REGISTER: the wrong password's answer is the reference.
        let reg_uri = "sip:127.0.0.1";
        let reference = liar
            .request_authenticated("REGISTER", reg_uri, reg_uri, "Expires: 3600\r\n", "", tcp)
            .await;
        let reference = final_after_auth(&liar, &reference.0).await;
        assert_eq!(status(&reference), 401, "wrong password, {tp}: {reference}");
        for (name, uri) in OTHER_URIS {
            let uri = uri.replace("{ruri}", reg_uri);
            let (out, _) = phone
                .request_authenticated("REGISTER", reg_uri, &uri, "Expires: 3600\r\n", "", tcp)
                .await;
            let answer = final_after_auth(&phone, &out).await;
            if shape(&answer) != shape(&reference) {
                mismatched.push(format!(
                    "REGISTER/{tp}/{name}: {}\n  wrong password: {}",
                    first_line(&answer),
                    first_line(&reference)
                ));
            }
        }
        // INVITE abroad, with a digest computed for a call to an extension.
        let ruri = format!("sip:{ABROAD}@{}", server.sip);
        let sdp = liar.sdp("sendrecv");
        let ct = "Content-Type: application/sdp\r\n";
        let (out, _) = liar
            .request_authenticated("INVITE", &ruri, &ruri, ct, &sdp, tcp)
            .await;
        let reference = final_after_auth(&liar, &out).await;
        liar.ack_failure(&out, &reference).await;
        for (name, uri) in [
            ("an-extension", format!("sip:2601@{}", server.sip)),
            (
                "another-number",
                format!("sip:{US_NATIONAL}@{}", server.sip),
            ),
        ] {
            let n = cases.start(format!("INVITE/{tp}/digest-for-{name}"));
            let (out, _) = phone
                .request_authenticated(
                    "INVITE",
                    &ruri,
                    &uri,
                    &format!("Subject: relay-case-{n}\r\n{ct}"),
                    &sdp,
                    tcp,
                )
                .await;
            if let Some(answer) = phone
                .try_wait(Duration::from_secs(2), |m| {
                    answers(m, &out) && status(m) >= 200
                })
                .await
            {
                phone.ack_failure(&out, &answer).await;
                if shape(&answer) != shape(&reference) {
                    mismatched.push(format!(
                        "INVITE/{tp}/{name}: {}\n  wrong password: {}",
                        first_line(&answer),
                        first_line(&reference)
                    ));
                }
            } else {
                // A wrong password is answered; silence is not the same answer.
                mismatched.push(format!("INVITE/{tp}/{name}: no final answer"));
            }
        }
    }
    let arrived = gw
        .quiet_after(0, Instant::now(), SILENCE, QUIET_DEADLINE)
        .await;

    // Positive controls: the right uri= registers, and calls abroad.
    let ok = phone.register_as(&phone.contact()).await;
    assert_eq!(
        status(&ok),
        200,
        "control: the right digest registers: {ok}"
    );
    phone.invite(ABROAD, "").await;
    gw.wait("control: the right digest calls abroad", |m| {
        request_method(m) == Some("INVITE") && m.contains("442079460000")
    })
    .await;

    assert!(
        mismatched.is_empty(),
        "a digest whose uri= is not the Request-URI was not answered like a wrong password:\n{}",
        mismatched.join("\n")
    );
    assert_nothing_reached("the gateway (digest for another uri)", &arrived, &cases);
    server.stop();
}

/// The final answer to the authenticated request `out` (CSeq 2).
async fn final_after_auth(ua: &Ua, out: &Outgoing) -> String {
    ua.wait_answer(out, |c| c >= 200).await
}

// ---------------------------------------------------------------------------------
// Path 7: trunk legs live by the transaction rules (what the wire shows without
// moving a clock).

/// A trunk call the gateway rings (180 with a tag) and never answers finally.
struct Ringing {
    /// The phone's INVITE.
    out: Outgoing,
    /// The gateway's INVITE.
    invite: String,
    /// The 180 as the phone got it.
    ringing: String,
    /// The gateway's To tag.
    tag: String,
}

/// A trunk call from `phone` to `dialled`, rung by the gateway; the phone has seen
/// the 180.
async fn ringing_trunk_call(phone: &Ua, gw: &Ua, dialled: &str) -> Ringing {
    let out = phone.invite(dialled, "").await;
    let digits = dialled.trim_start_matches('+');
    let invite = gw
        .wait(&format!("the gateway's INVITE for {dialled}"), |m| {
            request_method(m) == Some("INVITE")
                && request_uri(m).is_some_and(|u| u.contains(digits))
        })
        .await;
    let tag = gw.next("gw");
    gw.reply(
        &invite,
        180,
        "Ringing",
        &tag,
        &format!("Contact: {}\r\n", gw.contact()),
        "",
    )
    .await;
    let ringing = phone.wait_answer(&out, |c| c == 180).await;
    Ringing {
        out,
        invite,
        ringing,
        tag,
    }
}

/// The phone's CANCEL of its INVITE `out` (RFC 3261 §9.1).
fn cancel_text(out: &Outgoing, ua: &Ua) -> String {
    format!(
        "CANCEL {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\n\
         From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
        out.ruri, ua.addr, out.branch, out.from, out.to, out.call_id, out.cseq
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path7_a_caller_hanging_up_early_cancels_the_trunk_leg() {
    let env = Env::with_config(&config(HIGH_LIMITS));
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "us", "1NXXNXXXXXX", &[]);
    let acc = ext(&env, "2701", "national");
    let server = env.serve();
    let gw = towards(gw, &server);
    let phone = Ua::phone("127.0.0.21", server.sip, &acc).await;

    // Control: a CANCEL from the phone cancels the ringing trunk leg.
    let call = ringing_trunk_call(&phone, &gw, "12125550101").await;
    phone.send(&cancel_text(&call.out, &phone)).await;
    gw.wait("control: the CANCEL reaches the gateway", |m| {
        request_method(m) == Some("CANCEL")
            && header(m, "Call-ID") == header(&call.invite, "Call-ID")
    })
    .await;

    // A BYE in the early dialog (after the 180) must end the trunk leg too.
    let call = ringing_trunk_call(&phone, &gw, "12125550102").await;
    let mut early = Dialog::uac(&call.out, &call.ringing);
    early.cseq = call.out.cseq;
    phone.send_in_dialog(&mut early, "BYE", "", "").await;
    let ended = gw
        .try_wait(Duration::from_secs(5), |m| {
            matches!(request_method(m), Some("CANCEL" | "BYE"))
                && header(m, "Call-ID") == header(&call.invite, "Call-ID")
        })
        .await;
    assert!(
        ended.is_some(),
        "the phone hung up in the early dialog (BYE after 180), but the gateway's INVITE \
         was neither CANCELled nor ended: its call goes on unseen"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path7_a_trunk_leg_counts_against_the_limit_until_its_final_answer() {
    // Two external calls at once; the gateway (the attacker's far end) rings and never
    // answers the CANCEL or the INVITE finally.
    let env = Env::with_config(&config(
        "[dialplan.limits]\nconcurrent_external = 2\nattempts_per_minute = 100\n",
    ));
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "us", "1NXXNXXXXXX", &[]);
    let by_cancel = ext(&env, "2711", "national");
    let by_bye = ext(&env, "2712", "national");
    let server = env.serve();
    let gw = towards(gw, &server);
    let mut leaked = Vec::new();
    for (name, acc, ip) in [
        ("cancel", &by_cancel, "127.0.0.21"),
        ("bye", &by_bye, "127.0.0.22"),
    ] {
        let phone = Ua::phone(ip, server.sip, acc).await;
        let mut trunk_calls = Vec::new();
        // Positive control: the first two calls do reach the gateway.
        for i in 0..2 {
            let dialled = format!("121255501{}{i}", &acc.number[3..]);
            let call = ringing_trunk_call(&phone, &gw, &dialled).await;
            trunk_calls.push(
                header(&call.invite, "Call-ID")
                    .unwrap_or_default()
                    .to_owned(),
            );
            if name == "cancel" {
                phone.send(&cancel_text(&call.out, &phone)).await;
                // A back-to-back agent answers 487 at once; a proxy would wait for the
                // far end's. Either is fine here: ACK it if it comes.
                if let Some(terminated) = phone
                    .try_wait(Duration::from_secs(2), |m| {
                        answers(m, &call.out) && status(m) >= 300
                    })
                    .await
                {
                    phone.ack_failure(&call.out, &terminated).await;
                }
            } else {
                let mut early = Dialog::uac(&call.out, &call.ringing);
                early.cseq = call.out.cseq;
                phone.send_in_dialog(&mut early, "BYE", "", "").await;
            }
        }
        let mark = gw.mark();
        let dialled = format!("121255501{}9", &acc.number[3..]);
        phone.invite(&dialled, "").await;
        let arrived = gw
            .quiet_after(mark, Instant::now(), SILENCE, QUIET_DEADLINE)
            .await;
        let third: Vec<&Received> = arrived
            .iter()
            .filter(|r| {
                request_method(&r.text) == Some("INVITE")
                    && !trunk_calls
                        .iter()
                        .any(|c| header(&r.text, "Call-ID") == Some(c))
            })
            .collect();
        if !third.is_empty() {
            leaked.push(format!(
                "after two calls ended by {name} whose trunk legs still ring: {}",
                first_line(&third[0].text)
            ));
        }
    }
    assert!(
        leaked.is_empty(),
        "a third call reached the gateway while two trunk legs were unfinished (limit 2):\n{}",
        leaked.join("\n")
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path7_a_late_answer_after_cancel_is_acked_and_hung_up() {
    let env = Env::with_config(&config(HIGH_LIMITS));
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "us", "1NXXNXXXXXX", &[]);
    let acc = ext(&env, "2721", "national");
    let server = env.serve();
    let gw = towards(gw, &server);
    let phone = Ua::phone("127.0.0.21", server.sip, &acc).await;
    let call = ringing_trunk_call(&phone, &gw, US_NATIONAL).await;
    phone.send(&cancel_text(&call.out, &phone)).await;
    let cancel = gw
        .wait("the CANCEL", |m| request_method(m) == Some("CANCEL"))
        .await;
    // The far end's 200 crosses the CANCEL.
    gw.reply(&cancel, 200, "OK", "", "", "").await;
    let sdp = gw.sdp("sendrecv");
    gw.reply(
        &call.invite,
        200,
        "OK",
        &call.tag,
        &format!(
            "Contact: {}\r\nContent-Type: application/sdp\r\n",
            gw.contact()
        ),
        &sdp,
    )
    .await;
    let invite = call.invite;
    let call_id = header(&invite, "Call-ID").unwrap_or_default().to_owned();
    gw.wait("the late 200 is ACKed", |m| {
        request_method(m) == Some("ACK") && header(m, "Call-ID") == Some(call_id.as_str())
    })
    .await;
    gw.wait("the late call is hung up", |m| {
        request_method(m) == Some("BYE") && header(m, "Call-ID") == Some(call_id.as_str())
    })
    .await;
    server.stop();
}

// ---------------------------------------------------------------------------------
// Path 8: emergency calls.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path8_a_suspended_extension_holds_one_emergency_call_at_a_time() {
    let env = Env::with_config(&config(""));
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "emergency", "911", &["--priority", "1"]);
    route(&env, "world", "011.", &[]);
    let acc = ext(&env, "2801", "internal");
    let server = env.serve();
    let gw = towards(gw, &server);
    let phone = Ua::phone("127.0.0.21", server.sip, &acc).await;
    suspend(&env, &server, &phone).await;

    // Positive control: the emergency call goes out, suspended or not.
    let first = ringing_trunk_call(&phone, &gw, "911").await;
    let first_id = header(&first.invite, "Call-ID")
        .unwrap_or_default()
        .to_owned();
    let mark = gw.mark();
    let mut cases = Cases::default();
    for n in 0..3 {
        cases.start(format!("emergency-call-{} while one is up", n + 2));
        phone
            .invite("911", &format!("Subject: relay-case-{n}\r\n"))
            .await;
        settle().await;
    }
    let arrived: Vec<Received> = gw
        .quiet_after(mark, Instant::now(), SILENCE, QUIET_DEADLINE)
        .await
        .into_iter()
        .filter(|r| header(&r.text, "Call-ID") != Some(first_id.as_str()))
        .collect();
    assert_nothing_reached(
        "the gateway (a second emergency call at once)",
        &arrived,
        &cases,
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path8_emergency_alert_mails_are_merged() {
    let env = Env::new();
    let smtp = Smtp::start(&env);
    env.ok(&["ext", "list"]);
    std::fs::write(
        env.data.join("sipward.toml"),
        config(&format!(
            "{}admin = \"admin@example.com\"\n",
            smtp.config(crate::peers::SMTP_PASSWORD)
        )),
    )
    .expect("config");
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "emergency", "911", &["--priority", "1"]);
    let acc = ext(&env, "2811", "national");
    let server = env.serve();
    let gw = towards(gw, &server);
    let phone = Ua::phone("127.0.0.21", server.sip, &acc).await;
    // Three emergency calls one after the other, each refused by the far end.
    for _ in 0..3 {
        let out = phone.invite("911", "").await;
        let invite = gw
            .wait("the emergency call", |m| {
                request_method(m) == Some("INVITE")
            })
            .await;
        gw.reply(&invite, 486, "Busy Here", "busy", "", "").await;
        let answer = phone.wait_answer(&out, |c| c >= 300).await;
        phone.ack_failure(&out, &answer).await;
    }
    let alerts = || {
        smtp.messages()
            .iter()
            .filter(|m| m.contains("Emergency call from extension 2811"))
            .count()
    };
    eventually_or(
        "an emergency alert is mailed",
        Duration::from_secs(30),
        || alerts() >= 1,
        || server.log(),
    );
    // Then no more for a while (the sender runs every 2 s): observed, not assumed.
    let mut last = (alerts(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(200));
        let now = alerts();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    assert_eq!(
        last.0, 1,
        "three emergency calls from one extension within minutes: alert mails are merged \
         (one per extension and reason per hour)"
    );
    server.stop();
}

// ---------------------------------------------------------------------------------
// Must keep working.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_keeps_a_call_with_hold_bye_from_either_side_and_cancel() {
    let env = Env::with_config(&config(""));
    let a_acc = ext(&env, "2901", "internal");
    let b_acc = ext(&env, "2902", "internal");
    let server = env.serve();
    let a = Ua::phone("127.0.0.21", server.sip, &a_acc).await;
    let b = Ua::phone("127.0.0.23", server.sip, &b_acc).await;
    a.register().await;
    b.register().await;

    // Hold with a re-INVITE, then the callee hangs up.
    let (mut a_view, mut b_view) = establish(&a, &b, Ending::Live, "").await;
    let hold = a
        .send_in_dialog(
            &mut a_view,
            "INVITE",
            "Content-Type: application/sdp\r\n",
            &a.sdp("sendonly"),
        )
        .await;
    let reinvite = b.wait_request("INVITE", &a_view.call_id).await;
    assert!(body(&reinvite).contains("a=sendonly"), "{reinvite}");
    b.reply(
        &reinvite,
        200,
        "OK",
        "",
        &format!(
            "Contact: {}\r\nContent-Type: application/sdp\r\n",
            b.contact()
        ),
        &b.sdp("recvonly"),
    )
    .await;
    let held = a
        .wait("the 200 to the re-INVITE", |m| {
            status(m) == 200 && cseq(m) == cseq(&hold)
        })
        .await;
    assert!(body(&held).contains("a=recvonly"), "{held}");
    a.ack_2xx(&a_view, a_view.cseq).await;
    b.wait("the ACK of the re-INVITE", |m| {
        request_method(m) == Some("ACK") && cseq(m).is_some_and(|(n, _)| n == a_view.cseq)
    })
    .await;
    hang_up(&b, &mut b_view, &a).await;

    // The caller hangs up.
    let (mut a_view, _) = establish(&a, &b, Ending::Live, "").await;
    hang_up(&a, &mut a_view, &b).await;

    // CANCEL while it rings.
    let out = a.invite(b.number(), "").await;
    let invite = b.wait_request("INVITE", &out.call_id).await;
    b.reply(&invite, 180, "Ringing", "r1", "", "").await;
    a.wait_answer(&out, |c| c == 180).await;
    a.send(&cancel_text(&out, &a)).await;
    a.wait("the 200 to CANCEL", |m| {
        status(m) == 200 && cseq(m).is_some_and(|(_, meth)| meth == "CANCEL")
    })
    .await;
    let cancel = b.wait_request("CANCEL", &out.call_id).await;
    b.reply(&cancel, 200, "OK", "r1", "", "").await;
    b.reply(&invite, 487, "Request Terminated", "r1", "", "")
        .await;
    let terminated = a.wait_answer(&out, |c| c == 487).await;
    a.ack_failure(&out, &terminated).await;
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_keeps_a_trunk_call_with_a_reinvite_from_the_gateway() {
    let env = Env::with_config(&config(""));
    let gw = listener("127.0.0.7").await;
    gateway(&env, gw.addr);
    route(&env, "us", "1NXXNXXXXXX", &[]);
    let acc = ext(&env, "2911", "national");
    let server = env.serve();
    let gw = towards(gw, &server);
    let phone = Ua::phone("127.0.0.21", server.sip, &acc).await;
    let out = phone.invite(US_NATIONAL, "").await;
    let invite = gw
        .wait("the gateway's INVITE", |m| {
            request_method(m) == Some("INVITE")
        })
        .await;
    let mut gw_view = gw.answer(&invite).await;
    let ok = phone.wait_answer(&out, |c| c == 200).await;
    let mut phone_view = Dialog::uac(&out, &ok);
    phone.ack_2xx(&phone_view, out.cseq).await;
    let gw_call = header(&invite, "Call-ID").unwrap_or_default().to_owned();
    gw.wait_request("ACK", &gw_call).await;

    // The gateway puts the call on hold.
    let reinvite = gw
        .send_in_dialog(
            &mut gw_view,
            "INVITE",
            "Content-Type: application/sdp\r\n",
            &gw.sdp("sendonly"),
        )
        .await;
    let got = phone.wait_request("INVITE", &out.call_id).await;
    assert!(body(&got).contains("a=sendonly"), "{got}");
    phone
        .reply(
            &got,
            200,
            "OK",
            "",
            &format!(
                "Contact: {}\r\nContent-Type: application/sdp\r\n",
                phone.contact()
            ),
            &phone.sdp("recvonly"),
        )
        .await;
    let answered = gw
        .wait("the phone's 200 to the gateway's re-INVITE", |m| {
            status(m) == 200 && cseq(m) == cseq(&reinvite)
        })
        .await;
    assert!(body(&answered).contains("a=recvonly"), "{answered}");
    gw.ack_2xx(&gw_view, gw_view.cseq).await;
    phone
        .wait("the ACK of the gateway's re-INVITE", |m| {
            request_method(m) == Some("ACK") && header(m, "Call-ID") == Some(out.call_id.as_str())
        })
        .await;
    // The phone hangs up; the gateway hears it.
    phone.send_in_dialog(&mut phone_view, "BYE", "", "").await;
    let bye = gw.wait_request("BYE", &gw_call).await;
    gw.reply(&bye, 200, "OK", "", "", "").await;
    phone
        .wait("the 200 to BYE", |m| {
            status(m) == 200 && cseq(m).is_some_and(|(_, meth)| meth == "BYE")
        })
        .await;
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_keeps_a_transfer_to_another_extension() {
    let env = Env::with_config(&config(""));
    let a_acc = ext(&env, "2921", "internal");
    let b_acc = ext(&env, "2922", "internal");
    let c_acc = ext(&env, "2923", "internal");
    let server = env.serve();
    let a = Ua::phone("127.0.0.21", server.sip, &a_acc).await;
    let b = Ua::phone("127.0.0.23", server.sip, &b_acc).await;
    let c = Ua::phone("127.0.0.24", server.sip, &c_acc).await;
    for p in [&a, &b, &c] {
        p.register().await;
    }
    let (mut a_view, _) = establish(&a, &b, Ending::Live, "").await;
    a.send_in_dialog(
        &mut a_view,
        "REFER",
        &format!("Refer-To: <sip:2923@{}>\r\n", server.sip),
        "",
    )
    .await;
    // The transfer happens either way: the transferee's phone follows the REFER, or
    // sipward carries it out itself. Either way the third extension rings.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rang = loop {
        follow_refers(&b, Duration::from_millis(100)).await;
        if let Some(invite) = c
            .try_wait(Duration::from_millis(200), |m| {
                request_method(m) == Some("INVITE")
            })
            .await
        {
            break Some(invite);
        }
        if Instant::now() > deadline {
            break None;
        }
    };
    assert!(
        rang.is_some(),
        "a REFER from one extension to another did not make the third extension ring"
    );
    server.stop();
}

#[test]
fn the_helpers_find_what_they_look_for() {
    // The leak attribution and the hint detector, against known text.
    assert_eq!(case_of("Subject: relay-case-42\r\n"), Some(42));
    assert_eq!(case_of("nothing"), None);
    let ours = "sip:127.0.0.1:5060;lr;sw=ab12";
    let target: SocketAddr = "127.0.0.66:7000".parse().expect("addr");
    for (form, expected) in [
        (
            "Route: <{ours-no-lr}>",
            "Route: <sip:127.0.0.1:5060;sw=ab12>",
        ),
        (
            "Route: <{ours-upper-values}>",
            "Route: <sip:127.0.0.1:5060;lr;sw=AB12>",
        ),
        (
            "Route: <{ours-upper-names}>",
            "Route: <sip:127.0.0.1:5060;LR;SW=ab12>",
        ),
        (
            "Route: <{ours}>, <sip:{target};lr>",
            "Route: <sip:127.0.0.1:5060;lr;sw=ab12>, <sip:127.0.0.66:7000;lr>",
        ),
    ] {
        assert_eq!(route_lines(form, ours, target), expected);
    }
    assert!(!has_auto_answer_hint(
        "INVITE sip:x SIP/2.0\r\nCall-Info: <http://x>;purpose=icon\r\n\r\n"
    ));
    assert_eq!(
        dialled_in("<sip:011442079460000@127.0.0.1:5060;user=phone>"),
        ABROAD
    );
    assert_eq!(dialled_in("<tel:+442079460000>"), "+442079460000");
    let r = response(
        "INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
         To: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nRecord-Route: <sip:p;lr>\r\n\r\n",
        180,
        "Ringing",
        "t",
        "",
        "",
    );
    assert!(r.contains("To: <sip:x@y>;tag=t\r\n") && r.contains("Record-Route: <sip:p;lr>"));
}

//! The door under attacks that forged sources and one credential make possible (issue
//! #17), run through the real endpoint (parser, guard, authenticator, registrar) in
//! process, with the clock moved by the test instead of waited for.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accounts::credentials::Credential;
use pbx::admission::Outbound;
use pbx::authenticator::{AuthConfig, Authenticator};
use pbx::directory::{Directory, DirectoryCache};
use pbx::egress::{Cleared, Undeliverable, Wire};
use pbx::endpoint::{Endpoint, Parts};
use pbx::flow::Flow;
use pbx::guard::{Admission, Event, Guard};
use pbx::metrics::Metrics;
use pbx::registrar::{Registrar, RegistrarConfig};
use pbx::trunk::Trunks;
use policy::ban::BanPolicy;
use policy::clock::{Clock, ManualClock};
use policy::dialplan::DialPlan;
use sip::digest::{Algorithm, ResponseInput, expected_response, ha1};
use tokio::sync::mpsc;

const REALM: &str = "sipward";
const STRONG: &str = "Zq8xLmTr4wPyK7vB2";

struct Door {
    endpoint: Endpoint,
    clock: Arc<ManualClock>,
    events: mpsc::Receiver<Event>,
    wire: Arc<Capture>,
    /// Runs the task that sends a new binding's 200 once its write is committed.
    rt: tokio::runtime::Runtime,
    /// Whether the stand-in for the server's writer commits what the registrar hands
    /// it (false: a store that is stuck).
    writer: std::cell::Cell<bool>,
}

/// Stands for the sockets: keeps what the egress rule lets out.
#[derive(Debug, Default)]
struct Capture(Mutex<Vec<(Flow, Vec<u8>)>>);

impl Wire for Capture {
    fn send(&self, m: Cleared) -> Result<(), Undeliverable> {
        self.0
            .lock()
            .expect("lock")
            .push((*m.flow(), m.bytes().to_vec()));
        Ok(())
    }
}

impl Capture {
    /// The last message sent to `to` since the last call (all others are dropped).
    fn take_to(&self, to: SocketAddr) -> Option<Vec<u8>> {
        let mut sent = self.0.lock().expect("lock");
        let last = sent
            .iter()
            .rev()
            .find(|(f, _)| f.remote == to)
            .map(|(_, b)| b.clone());
        sent.clear();
        last
    }
}

fn row(number: &str, auth_id: &str, password: &str, score: u8) -> Credential {
    Credential {
        kind: "ext",
        number: number.into(),
        auth_id: auth_id.into(),
        sip_id: None,
        ha1s: accounts::credentials::Ha1s::opened(
            policy::Secret::new(ha1(Algorithm::Md5, auth_id, REALM, password)),
            policy::Secret::new(ha1(Algorithm::Sha256, auth_id, REALM, password)),
        ),
        password_score: score,
        credential_generation: 1,
    }
}

/// Extension 1001 with a weak password (its number), 2000 with a strong one.
fn door() -> Door {
    let clock = Arc::new(ManualClock::new(1_800_000_000, Instant::now()));
    let metrics = Arc::new(Metrics::default());
    let directory = Arc::new(DirectoryCache::default());
    directory.replace(Directory::from_rows(
        vec![
            row("1001", "1001", "1001", 0),
            row("2000", "x2000", STRONG, 4),
        ],
        REALM,
        3,
    ));
    let registrar = Arc::new(Registrar::new(RegistrarConfig::default()));
    let guard = Arc::new(Guard::new(BanPolicy::default(), metrics.clone()));
    guard.set_registrations(registrar.clone());
    let (tx, events) = mpsc::channel(1_000_000);
    guard.set_events(tx);
    guard.tick(clock.now());
    let auth = Authenticator::new(
        AuthConfig {
            realm: REALM.into(),
            nonce_max_age_secs: 300,
            nc_capacity: 65_536,
            algorithms: vec![Algorithm::Md5],
        },
        [1; 32],
        [2; 32],
        metrics.clone(),
    );
    let endpoint = Endpoint::new(Parts {
        directory,
        guard,
        auth,
        registrar,
        metrics,
        clock: clock.clone(),
        outbound: Arc::new(Outbound::new(DialPlan::default())),
        trunks: Arc::new(Trunks::default()),
        bound: "127.0.0.1:5060".parse().expect("addr"),
        tls_bound: None,
        internal: None,
        key: [3; 32],
        messages: pbx::transport::MessageLimits::default(),
    });
    let wire = Arc::new(Capture::default());
    endpoint.egress.connect(wire.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    Door {
        endpoint,
        clock,
        events,
        wire,
        rt,
        writer: std::cell::Cell::new(true),
    }
}

struct Login<'a> {
    number: &'a str,
    auth_id: &'a str,
    password: &'a str,
}

const PHONE: Login<'static> = Login {
    number: "1001",
    auth_id: "1001",
    password: "1001",
};
const ATTACKER: Login<'static> = Login {
    number: "2000",
    auth_id: "x2000",
    password: STRONG,
};

fn register_text(
    from: SocketAddr,
    l: &Login<'_>,
    call: &str,
    cseq: u32,
    contact: bool,
    auth: &str,
) -> String {
    let host = match from.ip() {
        IpAddr::V4(_) => from.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]:{}", from.port()),
    };
    let contact = if contact {
        format!("Contact: <sip:{}@{host}>\r\nExpires: 600\r\n", l.number)
    } else {
        String::new()
    };
    format!(
        "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP {host};branch=z9hG4bK{call}{cseq}\r\n\
         From: <sip:{n}@pbx>;tag={call}\r\nTo: <sip:{n}@pbx>\r\nCall-ID: {call}\r\nCSeq: {cseq} REGISTER\r\n\
         {contact}{auth}Content-Length: 0\r\n\r\n",
        n = l.number
    )
}

fn status(reply: &[u8]) -> u16 {
    std::str::from_utf8(reply)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

impl Door {
    fn send(&self, text: &str, from: SocketAddr) -> Option<Vec<u8>> {
        if self.endpoint.guard.admit(from.ip()) != Admission::Admit {
            return None;
        }
        self.rt.block_on(async {
            self.endpoint.handle(text.as_bytes(), Flow::udp(from));
            // The server's writer: a new binding's 200 waits for this commit.
            let registrar = &self.endpoint.registrar;
            if self.writer.get() {
                registrar.committed(registrar.take_dirty().id);
            } else {
                // A stuck store: the answer comes when the hold gives up (4 s).
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while tokio::time::Instant::now() < deadline {
                    if let Some(a) = self.wire.take_to(from) {
                        return Some(a);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                return None;
            }
            // The task holding the 200 runs at the next yields; nothing else is waited
            // for (no timer is involved), so a few yields are enough for it to be sent.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            self.wire.take_to(from)
        })
    }

    /// REGISTER, 401, REGISTER with digest: the final answer's status and the request
    /// that carried the credentials (what an eavesdropper captures).
    fn register(
        &self,
        from: SocketAddr,
        l: &Login<'_>,
        call: &str,
        contact: bool,
    ) -> (u16, String) {
        let Some(challenge) = self.send(&register_text(from, l, call, 1, contact, ""), from) else {
            return (0, String::new());
        };
        let challenge = String::from_utf8_lossy(&challenge).into_owned();
        assert_eq!(status(challenge.as_bytes()), 401, "{challenge}");
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("nonce")
            .to_owned();
        let uri = "sip:pbx";
        let h = ha1(Algorithm::Md5, l.auth_id, REALM, l.password);
        let input = ResponseInput {
            method: "REGISTER",
            uri,
            nonce: &nonce,
            qop_auth: Some(("00000001", "0a4f113b")),
        };
        let response = expected_response(Algorithm::Md5, &h, &input);
        let auth = format!(
            "Authorization: Digest username=\"{}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\n",
            l.auth_id
        );
        let text = register_text(from, l, call, 2, contact, &auth);
        let answer = self.send(&text, from).map_or(0, |r| status(&r));
        (answer, text)
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
        self.endpoint.guard.tick(self.clock.now());
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }
}

fn bans(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Ban { row, .. } => Some(row.source.clone()),
            _ => None,
        })
        .collect()
}

/// The attack of issue #17: one strong credential logs in (REGISTER without Contact)
/// from 65,600 addresses within seconds, from `attacker(i)`. Returns how many logins
/// succeeded (the others were dropped by the flood limits).
fn flush_with_one_credential(d: &Door, attacker: impl Fn(u32) -> SocketAddr) -> u32 {
    let mut ok = 0;
    for i in 0..65_600u32 {
        if i % 20_000 == 19_999 {
            d.advance(1);
        }
        match d
            .register(attacker(i), &ATTACKER, &format!("a{i}"), false)
            .0
        {
            200 => ok += 1,
            0 => {}
            other => panic!("login {i}: {other}"),
        }
    }
    ok
}

#[test]
fn one_credential_from_65600_addresses_flushes_nothing_an_office_needs() {
    let mut d = door();
    let office: SocketAddr = "198.51.100.20:5060".parse().expect("addr");
    // The weak phone is trusted where it was registered (as the server seeds it at
    // start from the persisted bindings); it registers, and its refresh works.
    d.endpoint
        .guard
        .auth_success(office.ip(), "1001", d.clock.now());
    assert_eq!(d.register(office, &PHONE, "phone", true).0, 200);
    // An eavesdropper captures one of the attacker's own logins (a REGISTER without
    // Contact), to replay it byte for byte later from the same address.
    let spot: SocketAddr = "10.9.9.9:5060".parse().expect("addr");
    let (code, captured) = d.register(spot, &ATTACKER, "captured", false);
    assert_eq!(code, 200);

    let ok = flush_with_one_credential(&d, |i| {
        SocketAddr::new(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()), 5060)
    });
    assert_eq!(ok, 65_600, "every login of the attack went through");

    assert_eq!(
        d.register(office, &PHONE, "phone-refresh", true).0,
        200,
        "the weak phone's next refresh (it got 401 on main)"
    );
    let replay = d.send(&captured, spot).map(|r| status(&r));
    assert_eq!(
        replay,
        Some(401),
        "the captured REGISTER replayed: a new challenge (it was accepted on main)"
    );
    // The office keeps its flood allowance: 4,000 datagrams in its name within the
    // window are held to its limit, never banned.
    let verdicts: Vec<Admission> = (0..4000)
        .map(|_| d.endpoint.guard.admit(office.ip()))
        .collect();
    assert!(!verdicts.contains(&Admission::Banned));
    assert!(d.endpoint.guard.admits(office.ip()));
    d.advance(20);
    assert_eq!(
        d.register(office, &PHONE, "phone-after", true).0,
        200,
        "once the forged rate is gone, the office is answered in full"
    );
    let events = d.events();
    assert!(
        bans(&events).is_empty(),
        "nobody banned: {:?}",
        bans(&events)
    );
}

#[test]
fn the_same_attack_from_one_ipv6_64_flushes_nothing_either() {
    let mut d = door();
    let office: SocketAddr = "[2001:db8:aaaa:1::20]:5060".parse().expect("addr");
    d.endpoint
        .guard
        .auth_success(office.ip(), "1001", d.clock.now());
    assert_eq!(d.register(office, &PHONE, "phone", true).0, 200);
    let ok = flush_with_one_credential(&d, |i| {
        let ip = IpAddr::from([0x2001, 0xdb8, 0xbad, 1, 0, 0, (i >> 16) as u16, i as u16]);
        SocketAddr::new(ip, 5060)
    });
    // The /64 is one source for the flood limits: its rate is held to the limit of a
    // source with standing (it authenticated), 100 × 4 × 30 requests in 10 s.
    assert!(
        ok < 10_000,
        "{ok} logins of 65,600 got through the /64's limit"
    );
    assert_eq!(d.register(office, &PHONE, "phone-refresh", true).0, 200);
    let events = d.events();
    assert!(bans(&events).is_empty(), "{:?}", bans(&events));
    assert!(events.iter().any(|e| matches!(e, Event::Withheld { source, .. } if source.to_string() == "2001:db8:bad:1::/64")));
}

#[test]
fn a_binding_the_store_does_not_take_is_answered_500_never_200() {
    let d = door();
    let desk: SocketAddr = "198.51.100.30:5060".parse().expect("addr");
    assert_eq!(
        d.register(desk, &ATTACKER, "held", true).0,
        200,
        "control: with a writer the binding is answered 200"
    );
    // The store takes nothing now: the moved binding's answer waits for a write that
    // never comes, then tells the phone to try again (500 with Retry-After); it never
    // claims a binding the store does not hold.
    d.writer.set(false);
    let moved: SocketAddr = "198.51.100.31:5060".parse().expect("addr");
    assert_eq!(d.register(moved, &ATTACKER, "stuck", true).0, 500);
}

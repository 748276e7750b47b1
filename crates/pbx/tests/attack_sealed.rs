//! Attacks on the HA1s kept sealed and opened on first use (issue #16), against the
//! directory and the real endpoint in process: the window between ready and the end of
//! the pass after it is tens of milliseconds on the wire, too short to aim at from a
//! socket, so these tests hold it open.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use accounts::Registry;
use accounts::credentials::GraceCredential;
use accounts::extension::ExtensionChange;
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

mod sealed;
use sealed::*;

async fn row(reg: &Registry, number: &str) -> store::account::ExtensionRow {
    let mut conn = reg.store().conn().await.expect("conn");
    store::account::get_extension(&mut conn, number)
        .await
        .expect("read")
        .expect("row")
}

async fn write(reg: &Registry, r: &store::account::ExtensionRow) {
    let mut conn = reg.store().conn().await.expect("conn");
    assert!(
        store::account::update_extension(&mut conn, r)
            .await
            .expect("write")
    );
}

/// Every change of identity around an unchanged sealed text (auth IDs swapped between
/// rows, a row given another's sealed pair, a number deleted and re-added, an auth ID
/// renamed) after the previous snapshot opened everything: the reload must not hand
/// the opened pair of one identity to another, nor keep an old password alive.
#[tokio::test]
async fn a_reused_cell_never_serves_another_identity_or_an_old_password() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = registry(dir.path()).await;
    add(&reg, "1001", "alice1001", OLD).await;
    add(&reg, "1002", "bob1002", NEW).await;
    let a = authenticator();
    let opening = opening(&reg);
    let d1 = load(&reg, &opening, None).await;
    assert!(d1.open_all().is_empty());
    assert!(logs_in(&a, &d1, "alice1001", OLD), "control: alice");
    assert!(logs_in(&a, &d1, "bob1002", NEW), "control: bob");

    // Auth IDs swapped between the two rows, sealed texts left where they were.
    let (alice, bob) = (row(&reg, "1001").await, row(&reg, "1002").await);
    let mut r = alice.clone();
    r.auth_id = "swap-tmp".into();
    write(&reg, &r).await;
    let mut b = bob.clone();
    b.auth_id = "alice1001".into();
    write(&reg, &b).await;
    r.auth_id = "bob1002".into();
    write(&reg, &r).await;
    let d2 = load(&reg, &opening, Some(&d1)).await;
    d2.open_all();
    for (user, pw) in [
        ("alice1001", OLD),
        ("alice1001", NEW),
        ("bob1002", OLD),
        ("bob1002", NEW),
    ] {
        assert!(!logs_in(&a, &d2, user, pw), "swapped auth IDs: {user}/{pw}");
    }
    assert!(
        logs_in(&a, &d1, "alice1001", OLD),
        "the snapshot before keeps its own"
    );

    // Back as they were, then bob's row given alice's sealed pair.
    let mut r = alice.clone();
    r.auth_id = "swap-tmp".into();
    write(&reg, &r).await;
    write(&reg, &bob).await;
    write(&reg, &alice).await;
    let d3 = load(&reg, &opening, Some(&d2)).await;
    d3.open_all();
    assert!(logs_in(&a, &d3, "alice1001", OLD), "control: restored");
    let mut b = bob.clone();
    b.ha1_md5_enc = alice.ha1_md5_enc.clone();
    b.ha1_sha256_enc = alice.ha1_sha256_enc.clone();
    write(&reg, &b).await;
    let d4 = load(&reg, &opening, Some(&d3)).await;
    for (user, pw) in [("bob1002", OLD), ("bob1002", NEW)] {
        assert!(!logs_in(&a, &d4, user, pw), "copied pair: {user}/{pw}");
    }
    assert!(logs_in(&a, &d4, "alice1001", OLD), "alice unaffected");
    write(&reg, &bob).await;

    // Alice deleted and re-added under the same number and auth ID, a new password.
    reg.remove_extension("1001").await.expect("remove");
    add(&reg, "1001", "alice1001", NEW).await;
    let d5 = load(&reg, &opening, Some(&d4)).await;
    assert!(
        !logs_in(&a, &d5, "alice1001", OLD),
        "re-added: old password"
    );
    assert!(logs_in(&a, &d5, "alice1001", NEW), "re-added: new password");

    // Her auth ID renamed: the old one is nobody, the new one logs in.
    let change = ExtensionChange {
        auth_id: Some("alice-renamed".into()),
        ..ExtensionChange::default()
    };
    reg.update_extension("1001", change).await.expect("rename");
    let d6 = load(&reg, &opening, Some(&d5)).await;
    assert!(!logs_in(&a, &d6, "alice1001", NEW), "renamed: old auth ID");
    assert!(
        logs_in(&a, &d6, "alice-renamed", NEW),
        "renamed: new auth ID"
    );
}

/// A reload (a password change) built and opened while the pass over the previous
/// snapshot runs on another thread, again and again: the new snapshot never takes back
/// the old password's opened pair, and never loses the new one.
#[tokio::test]
async fn a_reload_racing_the_pass_never_puts_back_an_old_pair() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = registry(dir.path()).await;
    for i in 0..40 {
        add(&reg, &format!("20{i:02}"), &format!("u20{i:02}"), OLD).await;
    }
    add(&reg, "1001", "alice1001", OLD).await;
    let a = authenticator();
    let opening = opening(&reg);
    let mut current = OLD;
    let mut previous = load(&reg, &opening, None).await;
    for round in 0..10 {
        let next = if current == OLD { NEW } else { OLD };
        let change = ExtensionChange {
            password: Some(next.into()),
            ..ExtensionChange::default()
        };
        reg.update_extension("1001", change).await.expect("update");
        let mut conn = reg.store().conn().await.expect("conn");
        let c = reg
            .credentials(&mut conn, i64::try_from(NOW).expect("fits"))
            .await
            .expect("credentials");
        drop(conn);
        let reloaded = std::thread::scope(|s| {
            let pass = s.spawn(|| previous.open_all());
            // The previous snapshot's first use of alice, as a request in flight would.
            let user = s.spawn(|| logs_in(&a, &previous, "alice1001", current));
            let (d, _) = Directory::load(c.accounts, c.graces, opening.clone(), 3, Some(&previous));
            d.open_all();
            assert!(pass.join().expect("pass").is_empty());
            assert!(
                user.join().expect("user"),
                "round {round}: the old snapshot"
            );
            d
        });
        let d = reloaded.without_unopened().unwrap_or(reloaded);
        assert!(logs_in(&a, &d, "alice1001", next), "round {round}: new");
        assert!(!logs_in(&a, &d, "alice1001", current), "round {round}: old");
        current = next;
        previous = d;
    }
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

struct Door {
    endpoint: Endpoint,
    events: mpsc::Receiver<Event>,
    wire: Arc<Capture>,
}

fn door(d: Directory) -> Door {
    let clock = Arc::new(ManualClock::new(
        i64::try_from(NOW).expect("fits"),
        Instant::now(),
    ));
    let metrics = Arc::new(Metrics::default());
    let directory = Arc::new(DirectoryCache::default());
    directory.replace(d);
    let registrar = Arc::new(Registrar::new(RegistrarConfig::default()));
    let guard = Arc::new(Guard::new(BanPolicy::default(), metrics.clone()));
    guard.set_registrations(registrar.clone());
    let (tx, events) = mpsc::channel(100_000);
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
        clock,
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
    Door {
        endpoint,
        events,
        wire,
    }
}

impl Door {
    fn send(&self, text: &str, from: SocketAddr) -> Option<String> {
        if self.endpoint.guard.admit(from.ip()) != Admission::Admit {
            return None;
        }
        self.endpoint.handle(text.as_bytes(), Flow::udp(from));
        let mut sent = self.wire.0.lock().expect("lock");
        let last = sent
            .iter()
            .rev()
            .find(|(f, _)| f.remote == from)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned());
        sent.clear();
        last
    }

    /// REGISTER (no Contact), 401, REGISTER with digest for `user`/`password`: the
    /// final answer's status line and header names (what the outsider sees).
    fn try_login(&self, from: SocketAddr, user: &str, password: &str, call: &str) -> String {
        let text = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{call}{cseq}\r\n\
                 From: <sip:{user}@pbx>;tag={call}\r\nTo: <sip:{user}@pbx>\r\nCall-ID: {call}\r\n\
                 CSeq: {cseq} REGISTER\r\n{auth}Content-Length: 0\r\n\r\n"
            )
        };
        let Some(challenge) = self.send(&text(1, ""), from) else {
            return "silence".into();
        };
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_owned();
        let uri = "sip:pbx";
        let input = ResponseInput {
            method: "REGISTER",
            uri,
            nonce: &nonce,
            qop_auth: Some(("00000001", "0a4f113b")),
        };
        let response = expected_response(
            Algorithm::Md5,
            &ha1(Algorithm::Md5, user, REALM, password),
            &input,
        );
        let auth = format!(
            "Authorization: Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\n"
        );
        match self.send(&text(2, &auth), from) {
            None => "silence".into(),
            Some(a) => {
                let status = a.lines().next().unwrap_or("").to_owned();
                let names: Vec<&str> = a
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split(':').next())
                    .filter(|n| !n.is_empty())
                    .collect();
                format!("{status} {names:?}")
            }
        }
    }

    /// Event kinds seen since the last call, names taken out.
    fn event_kinds(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.events.try_recv().ok())
            .map(|e| match e {
                Event::AccountProtected { .. } => "account_protected".to_owned(),
                Event::Ban { row, .. } => format!("ban:{}", row.reason),
                other => format!("{other:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            })
            .collect()
    }
}

/// What an outsider learns about `user` from 25 wrong guesses spread over 25
/// addresses (distributed guessing) and one more from a 26th: the answers and the
/// guard's reaction (an account under guessing refuses untrusted sources).
fn guesses(d: &mut Door, net: u8, user: &str) -> (Vec<String>, Vec<String>) {
    let mut answers = Vec::new();
    for i in 0..26u8 {
        let from = SocketAddr::from(([10, net, 0, i + 1], 5060));
        answers.push(d.try_login(from, user, "wrong-guess-1", &format!("g{net}x{i}")));
    }
    answers.dedup();
    (answers, d.event_kinds())
}

/// A row whose sealed HA1 does not open (copied from another row) is an unknown user to
/// the authenticator from the start. Before the pass after ready leaves it out, the
/// endpoint must treat it so too: its failures must not count as an account's (account
/// protection), nor skip the decoy check, or guessing tells it apart from a name that
/// is nobody's. After the pass it is left out, and the two are alike (control).
#[tokio::test]
async fn a_row_that_does_not_open_is_an_unknown_user_to_the_guard_before_the_pass() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = registry(dir.path()).await;
    add(&reg, "1001", "alice1001", OLD).await;
    add(&reg, "1002", "bob1002", OLD).await;
    let alice = row(&reg, "1001").await;
    let mut bob = row(&reg, "1002").await;
    bob.ha1_md5_enc = alice.ha1_md5_enc.clone();
    write(&reg, &bob).await;
    let opening = opening(&reg);

    // Before the pass.
    let mut d = door(load(&reg, &opening, None).await);
    let nobody = guesses(&mut d, 1, "nobody1003");
    let known = guesses(&mut d, 2, "alice1001");
    assert_ne!(
        known, nobody,
        "control: an account under guessing shows through, as it should"
    );
    let corrupt = guesses(&mut d, 3, "bob1002");

    // After the pass: the snapshot the server puts in force.
    let loaded = load(&reg, &opening, None).await;
    assert_eq!(loaded.open_all(), ["ext/1002/ha1_md5"]);
    let mut after = door(loaded.without_unopened().expect("bob left out"));
    let nobody_after = guesses(&mut after, 1, "nobody1003");
    let corrupt_after = guesses(&mut after, 3, "bob1002");
    assert_eq!(corrupt_after, nobody_after, "after the pass");
    assert_eq!(nobody_after, nobody, "the same door before and after");
    assert_eq!(
        corrupt, nobody,
        "before the pass, a row that does not open shows through as an account"
    );
}

/// The time of one verification (a REGISTER's digest check) for `user`.
fn timed(a: &Authenticator, d: &Directory, user: &str) -> std::time::Duration {
    let t = Instant::now();
    std::hint::black_box(logs_in(a, d, user, "wrong-guess-1"));
    t.elapsed()
}

fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}

/// The window between ready and the end of the pass: a flood of REGISTERs with
/// Authorization for many different users forces every first-use opening onto the SIP
/// threads. Each must cost about what an unknown user costs then (no account shows
/// through by time), and the door must not stall (bounded per request, against the
/// control of the same requests once everything is open).
#[tokio::test]
async fn a_first_use_flood_costs_what_unknown_users_cost_and_does_not_stall() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = registry(dir.path()).await;
    const N: usize = 300;
    for i in 0..N {
        add(&reg, &format!("3{i:03}"), &format!("u3{i:03}"), OLD).await;
    }
    let a = authenticator();
    let opening = opening(&reg);
    let d = load(&reg, &opening, None).await;
    assert_eq!(d.opened_count(), 0);
    // Interleaved, so that drift of the machine falls on both alike.
    let (mut first, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..N {
        first.push(timed(&a, &d, &format!("u3{i:03}")));
        unknown.push(timed(&a, &d, &format!("x3{i:03}")));
    }
    assert_eq!(d.opened_count(), N, "every account opened by its first use");
    assert!(d.open_all().is_empty());
    let (mut again, mut unknown_after) = (Vec::new(), Vec::new());
    for i in 0..N {
        again.push(timed(&a, &d, &format!("u3{i:03}")));
        unknown_after.push(timed(&a, &d, &format!("x3{i:03}")));
    }
    let (first, unknown, again, unknown_after) = (
        median(first),
        median(unknown),
        median(again),
        median(unknown_after),
    );
    println!(
        "median per verification: first use {first:?}, unknown before the pass {unknown:?}, \
         known after {again:?}, unknown after {unknown_after:?}"
    );
    let ratio = |x: std::time::Duration, y: std::time::Duration| {
        x.as_secs_f64() / y.as_secs_f64().max(1e-9)
    };
    assert!(
        (0.5..2.0).contains(&ratio(first, unknown)),
        "a first use and an unknown user differ by time before the pass: {first:?} vs {unknown:?}"
    );
    assert!(
        (0.5..2.0).contains(&ratio(again, unknown_after)),
        "a known and an unknown user differ by time after the pass: {again:?} vs {unknown_after:?}"
    );
    assert!(
        first < std::time::Duration::from_millis(2),
        "a first use stalls the door: {first:?} (control after the pass: {again:?})"
    );
}

/// During the window before the pass is over, an outsider asks twice for each name: an
/// account's second request no longer opens anything, while an unknown user's still
/// opens the dummy pair. The second answers must take the same time for both, or the
/// window tells which names are accounts.
#[tokio::test]
async fn a_second_request_before_the_pass_does_not_tell_accounts_from_nobody() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = registry(dir.path()).await;
    const N: usize = 200;
    for i in 0..N {
        add(&reg, &format!("4{i:03}"), &format!("u4{i:03}"), OLD).await;
    }
    let a = authenticator();
    let opening = opening(&reg);
    let d = load(&reg, &opening, None).await;
    let (mut known, mut nobody) = (Vec::new(), Vec::new());
    for i in 0..N {
        let (user, other) = (format!("u4{i:03}"), format!("x4{i:03}"));
        let _first = (timed(&a, &d, &user), timed(&a, &d, &other));
        known.push(timed(&a, &d, &user));
        nobody.push(timed(&a, &d, &other));
    }
    assert!(!d.opened_all(), "still inside the window");
    let (known, nobody) = (median(known), median(nobody));
    println!("second request before the pass: account {known:?}, nobody {nobody:?}");
    let ratio = known.as_secs_f64() / nobody.as_secs_f64().max(1e-9);
    assert!(
        (0.6..1.65).contains(&ratio),
        "an account's second request is told apart by time before the pass: {known:?} vs nobody {nobody:?}"
    );
}

/// A request the guard refuses before authentication (a scanner's User-Agent, a banned
/// source) opens no account's HA1s, though it carries an Authorization for an account
/// not opened yet. Control: the same request from a clean source opens that account.
#[tokio::test]
async fn a_request_the_guard_refused_opens_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = registry(dir.path()).await;
    for i in 0..3 {
        add(&reg, &format!("500{i}"), &format!("u500{i}"), OLD).await;
    }
    let opening = opening(&reg);
    let d = door(load(&reg, &opening, None).await);
    let opened = || d.endpoint.directory.get().opened_count();
    let with_auth = |user: &str, ua: &str, from: SocketAddr| {
        let nonce = d.endpoint.auth.challenges(from.ip(), NOW, false)[0]
            .split("nonce=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("nonce")
            .to_owned();
        format!(
            "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKs{user}\r\n\
             From: <sip:{user}@pbx>;tag=s\r\nTo: <sip:{user}@pbx>\r\nCall-ID: s{user}{from}\r\n\
             CSeq: 2 REGISTER\r\n{ua}Authorization: Digest username=\"{user}\", realm=\"{REALM}\", \
             nonce=\"{nonce}\", uri=\"sip:pbx\", response=\"00000000000000000000000000000000\", \
             algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let scanner: SocketAddr = "10.9.0.1:5060".parse().expect("addr");
    let ua = "User-Agent: friendly-scanner\r\n";
    assert!(d.send(&with_auth("u5000", ua, scanner), scanner).is_none());
    assert_eq!(opened(), 0, "a scanner's request opened an account");
    // Banned now: its next request, a phone's User-Agent, never reaches the door.
    assert!(d.send(&with_auth("u5001", "", scanner), scanner).is_none());
    assert_eq!(opened(), 0, "a banned source's request opened an account");
    // Control: the same from a clean source opens the account it names.
    let clean: SocketAddr = "10.9.0.2:5060".parse().expect("addr");
    let answer = d
        .send(&with_auth("u5001", "", clean), clean)
        .expect("answer");
    assert!(answer.starts_with("SIP/2.0 401"), "{answer}");
    assert_eq!(opened(), 1, "control");
}

/// A grace window ended by the new password's first login stays ended across a reload
/// that lands before its store row is deleted: the reload must not hand the old
/// password back to whoever still holds it at the phones' addresses.
#[tokio::test]
async fn a_grace_window_ended_by_the_new_login_stays_ended_across_a_reload() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = registry(dir.path()).await;
    add(&reg, "1001", "alice1001", OLD).await;
    let now = i64::try_from(NOW).expect("fits");
    let old = credentials(&reg).await.accounts.remove(0);
    let change = ExtensionChange {
        password: Some(NEW.into()),
        ..ExtensionChange::default()
    };
    reg.update_extension("1001", change).await.expect("update");
    // The window as the store would hand it over until its row is deleted.
    let window = vec![GraceCredential {
        number: "1001".into(),
        auth_id: "alice1001".into(),
        ha1s: old.ha1s,
        sources: SRC.to_string(),
        expires_at: now + 3600,
        generation: old.credential_generation,
    }];
    let a = authenticator();
    let opening = opening(&reg);
    let c = credentials(&reg).await;
    let (d1, _) = Directory::load(c.accounts, window.clone(), opening.clone(), 3, None);
    assert!(
        logs_in(&a, &d1, "alice1001", OLD),
        "control: the window is open"
    );
    assert!(logs_in(&a, &d1, "alice1001", NEW));
    let g = d1
        .account("alice1001")
        .and_then(|x| x.grace.clone())
        .expect("window");
    assert!(g.end(), "the new password's first login ends the window");
    assert!(!logs_in(&a, &d1, "alice1001", OLD), "ended");
    // A reload before the row is gone: the same window read again.
    let c = credentials(&reg).await;
    let (d2, _) = Directory::load(c.accounts, window.clone(), opening.clone(), 3, Some(&d1));
    assert!(
        !logs_in(&a, &d2, "alice1001", OLD),
        "a reload reopened the ended window"
    );
    assert!(logs_in(&a, &d2, "alice1001", NEW));
    // Control: a load that never saw the window end (a fresh start) opens it as stored.
    let c = credentials(&reg).await;
    let (d3, _) = Directory::load(c.accounts, window, opening, 3, None);
    assert!(logs_in(&a, &d3, "alice1001", OLD), "control: a fresh load");
}

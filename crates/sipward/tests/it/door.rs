//! Issue #17 end to end: forged datagrams in a live office's name (its phones are real
//! SIPp clients), and IPv6: a flood from `::1`, a flood spread over one /64, and one
//! credential used from 65,600 addresses of a /64, in network namespaces the tests
//! create (root, as in CI; removed afterwards).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::Env;
use crate::peers::{Server, UdpClient, eventually, eventually_or, sipp_from};
use crate::registrar::{
    Login, PASSWORD, authorization, header, import_users, nonce_of, register, register_text, status,
};

/// An OPTIONS as SIPVicious' svmap sends it (its User-Agent names the tool).
fn scanner_options(c: &UdpClient, n: u32) -> String {
    format!(
        "OPTIONS sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKsv{n};rport\r\n\
         From: \"sipvicious\"<sip:100@1.1.1.1>;tag={n}\r\nTo: \"sipvicious\"<sip:100@1.1.1.1>\r\n\
         Call-ID: sv{n}\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n",
        c.local
    )
}

fn plain_options(local: SocketAddr, n: u32) -> String {
    format!(
        "OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKo{n};rport\r\nFrom: <sip:a@x>;tag={n}\r\n\
         To: <sip:b@x>\r\nCall-ID: o{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

fn bans(env: &Env) -> Vec<(String, String)> {
    env.json(&["ban", "list", "--json"])
        .as_array()
        .expect("array")
        .iter()
        .map(|b| {
            (
                b["source"].as_str().expect("source").to_owned(),
                b["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect()
}

/// The office's 20 phones (extensions 2000-2019) as SIPp registers them.
fn phones(users: &[(String, String)]) -> String {
    std::iter::once("SEQUENTIAL\n".to_string())
        .chain(users.iter().enumerate().map(|(i, (n, a))| {
            format!("{n};[authentication username={a} password={PASSWORD}{i}]\n")
        }))
        .collect()
}

#[test]
fn forged_datagrams_in_a_live_offices_name_never_ban_it() {
    let env = Env::new();
    let users = import_users(&env, 20);
    let csv = phones(&users);
    let server = env.serve();
    // The office at 127.0.0.3 registers its phones: it has standing (authenticated,
    // registrations live).
    let run = sipp_from(
        "127.0.0.3",
        &env,
        "register_auth.xml",
        &csv,
        server.sip,
        "u1",
        20,
        20,
    );
    assert_eq!((run.successful, run.failed), (20, 0), "{run:?}");

    // One forged svmap OPTIONS with the office's address as its source.
    let forger = UdpClient::from_address("127.0.0.3", server.sip, Duration::from_millis(300));
    assert_eq!(
        forger.request(&scanner_options(&forger, 1)),
        None,
        "not answered"
    );
    eventually_or(
        "the withheld ban is a security event",
        Duration::from_secs(10),
        || {
            let log = server.log();
            log.contains(r#""event":"ban_withheld""#) && log.contains("scanner.user_agent")
        },
        || server.log(),
    );
    assert_eq!(
        bans(&env),
        vec![],
        "one forged datagram banned the office on main"
    );
    let run = sipp_from(
        "127.0.0.3",
        &env,
        "register_auth.xml",
        &csv,
        server.sip,
        "u1",
        20,
        20,
    );
    assert_eq!((run.successful, run.failed), (20, 0), "{run:?}");

    // About 5,000 forged datagrams in 10 s while the phones keep registering.
    let flood_sent = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            let start = Instant::now();
            let mut sent = 0u32;
            for tick in 0..100u32 {
                for _ in 0..50 {
                    forger.send(&plain_options(forger.local, sent));
                    sent += 1;
                }
                let next = Duration::from_millis(100 * u64::from(tick + 1));
                if let Some(wait) = next.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            sent
        });
        let run = sipp_from(
            "127.0.0.3",
            &env,
            "register_auth.xml",
            &csv,
            server.sip,
            "u1",
            20,
            2,
        );
        assert_eq!(
            (run.successful, run.failed),
            (20, 0),
            "the office keeps registering during the flood: {run:?}"
        );
        flood.join().expect("flood")
    });
    assert_eq!(flood_sent, 5000);
    assert_eq!(
        bans(&env),
        vec![],
        "5,000 forged datagrams banned the office for a day on main"
    );
    assert!(server.metric("sipward_bans_withheld_total") >= 2);
    let log = server.log();
    assert!(
        log.contains("flood.requests") && log.contains("does not prove the source address"),
        "{log}"
    );
    let run = sipp_from(
        "127.0.0.3",
        &env,
        "register_auth.xml",
        &csv,
        server.sip,
        "u1",
        20,
        20,
    );
    assert_eq!((run.successful, run.failed), (20, 0), "{run:?}");

    // Control: the same packets from addresses with no history ban them, as before.
    let fresh = UdpClient::from_address("127.0.0.30", server.sip, Duration::from_millis(300));
    assert_eq!(fresh.request(&scanner_options(&fresh, 2)), None);
    let flooder = UdpClient::from_address("127.0.0.31", server.sip, Duration::from_millis(300));
    for n in 0..200 {
        flooder.send(&plain_options(flooder.local, n));
    }
    eventually("the controls are banned", Duration::from_secs(10), || {
        let b = bans(&env);
        b.contains(&("127.0.0.30".into(), "scanner.user_agent".into()))
            && b.contains(&("127.0.0.31".into(), "flood.requests".into()))
    });
    // Over TCP the handshake proves the source: the scanner's User-Agent from the
    // office's own address bans it.
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(server.sip).expect("tcp");
    let text = scanner_options(&forger, 3).replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let _ = tcp.write_all(text.as_bytes());
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = tcp.read(&mut [0u8; 512]);
    drop(tcp);
    eventually(
        "a scanner over TCP is banned",
        Duration::from_secs(10),
        || bans(&env).contains(&("127.0.0.1".into(), "scanner.user_agent".into())),
    );
}

#[test]
fn a_flood_from_ipv6_loopback_bans_that_address() {
    let env = Env::new();
    let server = env.serve_via(&[], "[::1]:0", &[]);
    let c = UdpClient::from_address("::1", server.sip, Duration::from_millis(500));
    assert!(c.request(&plain_options(c.local, 0)).is_some(), "answered");
    for n in 1..=60 {
        c.send(&plain_options(c.local, n));
    }
    eventually("the flood ban is recorded", Duration::from_secs(10), || {
        bans(&env) == vec![("::1".to_owned(), "flood.requests".to_owned())]
    });
    let again = UdpClient::from_address("::1", server.sip, Duration::from_millis(500));
    assert!(
        again.request(&plain_options(again.local, 100)).is_none(),
        "banned"
    );
    // By hand, a prefix: `ban list` shows it as such.
    env.ok(&["ban", "add", "2001:db8:1:2:3::/64", "--for", "1h"]);
    let listed = env.json(&["ban", "list", "--json"]);
    assert!(
        listed
            .as_array()
            .expect("array")
            .iter()
            .any(|b| b["source"] == "2001:db8:1:2::/64"),
        "{listed}"
    );
    let table = env.ok(&["ban", "list"]);
    assert!(table.contains("2001:db8:1:2::/64"), "{table}");
}

/// A network namespace of this test's own, removed when dropped. In it `fd00::1/64` is
/// on a veth pair (the server's address; both ends stay inside), and every address of
/// `fd00::/48` is local (`ip -6 route add local`), so a test can send from as many
/// addresses as it likes. Nothing leaves the namespace.
pub(crate) struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("sipward-{tag}-{}", std::process::id());
        let steps: [&[&str]; 8] = [
            &["netns", "add", &name],
            &["-n", &name, "link", "set", "lo", "up"],
            &[
                "-n", &name, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
            ],
            &["-n", &name, "link", "set", "v0", "up"],
            &["-n", &name, "link", "set", "v1", "up"],
            &[
                "-n",
                &name,
                "-6",
                "addr",
                "add",
                "fd00::1/64",
                "dev",
                "v0",
                "nodad",
            ],
            &[
                "-n",
                &name,
                "-6",
                "route",
                "add",
                "local",
                "fd00::/48",
                "dev",
                "lo",
            ],
            &[
                "netns",
                "exec",
                &name,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.ip_nonlocal_bind=1",
            ],
        ];
        let ns = Netns { name: name.clone() };
        for args in steps {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "cannot set up the network namespace {name} (`ip {}` failed): these tests need root and iproute2, as CI has",
                args.join(" ")
            );
        }
        ns
    }

    pub fn exec(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Runs `f` on a thread inside the namespace; sockets it makes stay in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }

    fn enter(&self) {
        use std::os::fd::AsFd;
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.name)).expect("netns");
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the test's network namespace");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn from(ip: &str, server: &Server) -> UdpClient {
    UdpClient::from_address(ip, server.sip, Duration::from_millis(500))
}

#[test]
fn a_flood_spread_over_an_ipv6_64_bans_the_prefix_and_one_host_only_itself() {
    let ns = Netns::new("v6flood");
    let env = Env::new();
    let server = env.serve_via(&ns.exec(), "[fd00::1]:0", &[]);
    // 201 addresses of fd00:0:0:dead::/64, one request each: no address is over its
    // limit (50 in 10 s), the /64 is over its own (4 × 50).
    ns.run(|| {
        for i in 1..=201u32 {
            let c = from(&format!("fd00:0:0:dead::{i:x}"), &server);
            c.send(&plain_options(c.local, i));
        }
    });
    eventually("the /64 is banned", Duration::from_secs(10), || {
        bans(&env).contains(&("fd00:0:0:dead::/64".into(), "flood.requests".into()))
    });
    ns.run(|| {
        let inside = from("fd00:0:0:dead::beef:1", &server);
        assert!(
            inside.request(&plain_options(inside.local, 1)).is_none(),
            "the whole /64 is banned"
        );
        let next = from("fd00:0:0:beef::1", &server);
        assert!(
            next.request(&plain_options(next.local, 1)).is_some(),
            "the next /64 is not"
        );
        // One host of another /64 floods: that address is banned, its neighbours are not.
        let host = from("fd00:0:0:cafe::1", &server);
        for n in 0..60 {
            host.send(&plain_options(host.local, n));
        }
    });
    eventually("the host is banned", Duration::from_secs(10), || {
        bans(&env).contains(&("fd00:0:0:cafe::1".into(), "flood.requests".into()))
    });
    ns.run(|| {
        let neighbour = from("fd00:0:0:cafe::2", &server);
        assert!(
            neighbour
                .request(&plain_options(neighbour.local, 1))
                .is_some()
        );
    });
    assert!(
        server.log().contains(r#""source":"fd00:0:0:dead::/64""#),
        "{}",
        server.log()
    );
}

fn login<'a>(number: &'a str, auth_id: &'a str, password: &'a str) -> Login<'a> {
    Login {
        number,
        auth_id,
        realm: "sipward",
        password,
    }
}

#[test]
fn one_credential_from_65600_addresses_of_an_ipv6_64_flushes_nothing() {
    let ns = Netns::new("v6flush");
    // Flood limits off: the /64's limit would otherwise throttle the attack itself
    // (the component test shows that); here the tables must hold on their own.
    let env = Env::with_config("[guard]\nflood_requests = \"off\"\n");
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "1001",
        "--password",
        "1001",
    ]);
    env.ok(&[
        "ext",
        "add",
        "1002",
        "--auth-id",
        "1002",
        "--password",
        "1002",
    ]);
    env.ok(&[
        "ext",
        "add",
        "2000",
        "--auth-id",
        "x2000",
        "--password",
        PASSWORD,
    ]);
    env.ok(&[
        "allow",
        "add",
        "fd00:0:0:1::/64",
        "--note",
        "the office, while it sets up",
    ]);
    let server = env.serve_via(&ns.exec(), "[fd00::1]:0", &[]);
    let phone = login("1001", "1001", "1001");
    let contact = Some("<sip:1001@[fd00:0:0:1::20]:5999>");
    ns.run(|| {
        let office = from("fd00:0:0:1::20", &server);
        assert_eq!(
            status(&register(&office, &phone, "phone", 1, contact, Some(600))),
            200
        );
    });
    // The office no longer needs the allow list: its weak phone is trusted where it
    // registered. (Another weak extension that never registered there shows when the
    // server has dropped the allow-list entry.)
    env.ok(&["allow", "remove", "fd00:0:0:1::/64"]);
    let mut n = 0;
    eventually(
        "the allow list is gone from the server",
        Duration::from_secs(20),
        || {
            n += 1;
            ns.run(|| {
                // A new address each time: one that logged in is trusted from then on.
                let other = from(&format!("fd00:0:0:1::1:{n:x}"), &server);
                status(&register(
                    &other,
                    &login("1002", "1002", "1002"),
                    &format!("o{n}"),
                    1,
                    None,
                    None,
                )) == 401
            })
        },
    );
    let attacker = login("2000", "x2000", PASSWORD);
    let (spot, captured) = ns.run(|| {
        let spot = from("fd00:0:0:bad::ffff:1", &server);
        let challenge = spot
            .request(&register_text(&spot, "2000", 1, "captured", None, None, ""))
            .expect("401");
        let nonce = nonce_of(header(&challenge, "WWW-Authenticate")[0]);
        let auth = authorization("x2000", "sipward", PASSWORD, &nonce);
        let text = register_text(&spot, "2000", 2, "captured", None, None, &auth);
        assert_eq!(status(&spot.request(&text).expect("answer")), 200);
        (spot, text)
    });
    let started = Instant::now();
    std::thread::scope(|s| {
        for part in 0..2u32 {
            let (ns, server, attacker) = (&ns, &server, &attacker);
            s.spawn(move || {
                ns.enter();
                for i in (part..65_600).step_by(2) {
                    let c = UdpClient::from_address(
                        &format!("fd00:0:0:bad::{:x}:{:x}", i >> 16, i & 0xffff),
                        server.sip,
                        Duration::from_secs(5),
                    );
                    let answer = register(&c, attacker, &format!("a{i}"), 1, None, None);
                    assert_eq!(status(&answer), 200, "login {i}");
                }
            });
        }
    });
    eprintln!("65,600 logins from one /64 in {:?}", started.elapsed());
    ns.run(|| {
        let office = from("fd00:0:0:1::20", &server);
        assert_eq!(
            status(&register(&office, &phone, "phone", 3, contact, Some(600))),
            200,
            "the weak phone's refresh (401 on main: its trust was pushed out)"
        );
    });
    let replay = spot.request(&captured).map(|a| status(&a));
    assert_eq!(
        replay,
        Some(401),
        "the captured REGISTER replayed (200 on main)"
    );
    assert_eq!(bans(&env), vec![]);
}

#[test]
fn numbers_sip_ids_and_auth_ids_are_one_namespace() {
    let env = Env::new();
    env.ok(&["ext", "add", "2102", "--auth-id", "a2102kq8"]);
    // Issue #17: this was accepted, and then 2102's calls rang 2104's phone.
    let err = env.fails(&["ext", "add", "2104", "--sip-id", "2102"], 2);
    assert_eq!(
        err.trim(),
        "error: SIP ID 2102 is already used by ext:2102 (as its number)",
        "one sentence"
    );
    for (args, expect) in [
        (
            &["ext", "add", "2105", "--auth-id", "2102"][..],
            "auth ID 2102 is already used by ext:2102 (as its number)",
        ),
        (&["ext", "add", "a2102kq8"][..], ""),
        (
            &["ext", "add", "2106", "--sip-id", "a2102kq8"][..],
            "SIP ID a2102kq8 is already used by ext:2102 (as its auth ID)",
        ),
    ] {
        let r = env.run(args);
        if expect.is_empty() {
            // Not a number at all: refused by validation, whatever the namespace says.
            assert_eq!(r.code, 2, "{args:?}");
        } else {
            assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
            assert!(r.stderr.contains(expect), "{args:?}: {}", r.stderr);
        }
    }
    env.ok(&["ext", "add", "2107", "--sip-id", "3000"]);
    let err = env.fails(&["ext", "add", "3000"], 2);
    assert!(
        err.contains("number 3000 is already used by ext:2107 (as its SIP ID)"),
        "{err}"
    );
    let err = env.fails(&["ext", "update", "2102", "--sip-id", "2107"], 2);
    assert!(
        err.contains("SIP ID 2107 is already used by ext:2107 (as its number)"),
        "{err}"
    );
    // An account's own identifiers may repeat each other (only a finding).
    env.ok(&["ext", "add", "2109", "--sip-id", "2109"]);
    let gw = |number: &str, auth_id: &str| {
        env.run(&[
            "gateway",
            "add",
            "gw1",
            "--vendor",
            "generic",
            "--ext",
            number,
            "--auth-id",
            auth_id,
            "--password",
            PASSWORD,
            "--host",
            "127.0.0.10",
        ])
    };
    let r = gw("3000", "gwauth77");
    assert!(
        r.code == 2
            && r.stderr
                .contains("number 3000 is already used by ext:2107 (as its SIP ID)"),
        "{}",
        r.stderr
    );
    let r = gw("4001", "3000");
    assert!(
        r.code == 2
            && r.stderr
                .contains("auth ID 3000 is already used by ext:2107"),
        "{}",
        r.stderr
    );
    assert_eq!(gw("4001", "gwauth77").code, 0);
    let err = env.fails(&["ext", "add", "2108", "--auth-id", "gwauth77"], 2);
    assert!(err.contains("gateway:gw1 (as its auth ID)"), "{err}");
    // Import: against what is stored and within the file, all or nothing.
    let csv = env.path("collide.csv");
    std::fs::write(
        &csv,
        "number,sip_id,auth_id\n5001,2102,\n5002,,5003\n5003,,\n5004,4001,\n",
    )
    .expect("csv");
    let err = env.fails(&["import", csv.to_str().expect("utf8")], 2);
    for line in [
        "SIP ID 2102 is already used by ext:2102 (as its number)",
        "number 5003 is also on line 3 (as its auth ID)",
        "SIP ID 4001 is already used by gateway:gw1 (as its number)",
    ] {
        assert!(err.contains(line), "{line}: {err}");
    }
    assert!(
        env.ok(&["ext", "list"])
            .lines()
            .all(|l| !l.contains("5002")),
        "nothing imported"
    );

    // Collisions already in a data dir (from before this check) are critical findings.
    let db = env.data.join("sipward.db");
    let done = Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE extensions SET sip_id = '2102' WHERE number = '2107'")
        .status()
        .expect("sqlite3");
    assert!(done.success());
    let findings = env.json(&["audit", "--json"]);
    let collisions: Vec<(String, String, String)> = findings["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["rule"] == "ext.identity_collision")
        .map(|f| {
            (
                f["subject"].as_str().expect("subject").to_owned(),
                f["field"].as_str().expect("field").to_owned(),
                f["severity"].as_str().expect("severity").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        collisions,
        vec![
            (
                "ext:2102".to_owned(),
                "number".to_owned(),
                "critical".to_owned()
            ),
            (
                "ext:2107".to_owned(),
                "sip_id".to_owned(),
                "critical".to_owned()
            ),
        ],
        "{findings}"
    );
    let r = env.run(&["audit", "--fail-on", "critical"]);
    assert_eq!(r.code, 1);
    // An edit that does not touch the colliding field still works; one that keeps it
    // is refused.
    env.ok(&["ext", "update", "2107", "--name", "Front desk"]);
    env.fails(&["ext", "update", "2107", "--sip-id", "2102"], 2);

    // The API refuses the same with 409 and the same sentence.
    let token = env
        .ok(&["admin", "token", "create", "ci"])
        .trim()
        .to_owned();
    let server = env.serve();
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
        .args([
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--data", r#"{"number": "2110", "sip_id": "2109"}"#])
        .arg(format!("http://{}/api/v1/extensions", server.http))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("\n409"), "{text}");
    assert!(
        text.contains("SIP ID 2109 is already used by ext:2109 (as its number)"),
        "{text}"
    );
}

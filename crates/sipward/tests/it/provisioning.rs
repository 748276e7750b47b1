//! The provisioning server as phones and attackers meet it: vendors' boot sequences,
//! probes from where a phone is registered (SIPp as the phone), replayed logins, and
//! answers whose timing must not tell known phones from unknown ones.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use crate::harness::Env;
use crate::peers::{Server, eventually};
use crate::regenerate::{base_config, curl, register};

/// The provisioning realm (the server's constant).
const REALM: &str = "sipward-provisioning";

/// A phone's provisioning login and path, from `ext show --reveal`.
fn login(env: &Env, number: &str) -> (String, String, String) {
    let shown = env.json(&["ext", "show", number, "--reveal", "--json"]);
    let p = &shown["provisioning"];
    (
        p["user"].as_str().expect("user").to_owned(),
        p["password"].as_str().expect("password").to_owned(),
        p["path"].as_str().expect("path").to_owned(),
    )
}

fn banned(env: &Env, ip: &str) -> bool {
    env.json(&["ban", "list", "--json"])
        .as_array()
        .expect("bans")
        .iter()
        .any(|b| b["source"] == ip)
}

#[test]
fn probes_from_a_registered_phones_address_limit_provisioning_and_never_ban_it() {
    let env = Env::with_config(&base_config());
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "desk1001",
        "--password",
        "Vq3Lx9TzKp2Wm7Rb",
        "--mac",
        "001565aabb01",
        "--model",
        "Yealink T46U",
    ]);
    let (user, _, path) = login(&env, "1001");
    let server = env.serve();
    let desk = "127.0.0.9";
    assert!(register(
        &env,
        desk,
        &server,
        "1001",
        "desk1001",
        "Vq3Lx9TzKp2Wm7Rb"
    ));
    let url = format!("http://{}/prov/{path}/{user}.cfg", server.http);
    let wrong = |from: &str, i: usize| {
        let guess = format!("{user}:wrong-{i}");
        curl(&["--interface", from, "--digest", "-u", &guess], &url).0
    };
    // Ten wrong logins from the phone's own address (a spoofed source, a broken phone,
    // a neighbour behind the same NAT): provisioning is refused there for a while...
    let codes: Vec<u16> = (0..12).map(|i| wrong(desk, i)).collect();
    assert_eq!(&codes[..9], &[401; 9], "{codes:?}");
    assert!(codes[9..].iter().all(|c| *c == 403), "{codes:?}");
    // ...but it is not banned: the phone keeps registering.
    assert!(
        !banned(&env, desk),
        "a phone's address is never banned by provisioning"
    );
    assert!(register(
        &env,
        desk,
        &server,
        "1001",
        "desk1001",
        "Vq3Lx9TzKp2Wm7Rb"
    ));
    assert!(server.metric("sipward_provisioning_limited_total") >= 1);
    let log = server.log();
    let event = log
        .lines()
        .find(|l| l.contains("\"event\":\"provisioning_limited\""))
        .unwrap_or_else(|| panic!("no event: {log}"));
    assert!(
        event.contains("not banned") && event.contains(desk),
        "{event}"
    );

    // Control: the same from an address where no phone is, and it is banned (SIP too).
    let stranger = "127.0.0.10";
    let codes: Vec<u16> = (0..10).map(|i| wrong(stranger, i)).collect();
    assert_eq!(codes[9], 403, "{codes:?}");
    eventually("the ban is stored", Duration::from_secs(10), || {
        banned(&env, stranger)
    });
    assert!(!register(
        &env,
        stranger,
        &server,
        "1001",
        "desk1001",
        "Vq3Lx9TzKp2Wm7Rb"
    ));
    server.stop();
}

/// A phone of the boot test: number, model, MAC, and the files of its vendor's boot
/// sequence with whether sipward serves each.
type Phone = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, bool)>,
);

/// Each vendor's documented boot sequence: the files its phones ask for, in order (the
/// vendor's own file names, common and per-model files included). Six phones of an
/// office behind one address boot at once.
#[test]
fn every_vendors_boot_sequence_finishes_without_a_ban() {
    let env = Env::with_config(&base_config());
    let phones: [Phone; 6] = [
        // Yealink Auto Provisioning Guide: common file, MAC file, MAC-local file.
        (
            "2001",
            "Yealink T46U",
            "001565000001",
            vec![
                ("y000000000108.cfg", false),
                ("001565000001.cfg", true),
                ("001565000001-local.cfg", false),
            ],
        ),
        // Poly UC Software: the master file, the application it names (APP_FILE_PATH),
        // its CONFIG_FILES, then the overrides and contacts files (their directories
        // are empty in the master, so at the root).
        (
            "2002",
            "Polycom VVX 450",
            "0004f2000002",
            vec![
                ("0004f2000002.cfg", true),
                ("sip.ld", false),
                ("0004f2000002-sipward.cfg", true),
                ("0004f2000002-phone.cfg", false),
                ("0004f2000002-web.cfg", false),
                ("0004f2000002-directory.xml", false),
                ("000000000000-directory.xml", false),
            ],
        ),
        // snom: the model file, the model-MAC file, then its XML settings.
        (
            "2003",
            "snom D785",
            "000413000003",
            vec![
                ("snomD785.htm", false),
                ("snomD785-000413000003.htm", false),
                ("000413000003.xml", true),
            ],
        ),
        // Grandstream: cfg<mac>, cfg<mac>.xml, cfg<model>.xml, cfg.xml.
        (
            "2004",
            "Grandstream GXP2170",
            "000b82000004",
            vec![
                ("cfg000b82000004", false),
                ("cfg000b82000004.xml", true),
                ("cfggxp2170.xml", false),
                ("cfg.xml", false),
            ],
        ),
        // Cisco SPA: the profile rule's model file, then spa$MA.xml.
        (
            "2005",
            "Cisco SPA504G",
            "e05fb9000005",
            vec![("spa504G.cfg", false), ("spae05fb9000005.xml", true)],
        ),
        // Fanvil: the common (model) file, then the MAC file.
        (
            "2006",
            "Fanvil X4U",
            "0c383e000006",
            vec![("f0C00000000.cfg", false), ("0c383e000006.cfg", true)],
        ),
    ];
    for (number, model, mac, _) in &phones {
        env.ok(&["ext", "add", number, "--mac", mac, "--model", model]);
    }
    let server = env.serve();
    let office = "127.0.0.11";
    let (mut served, mut answered) = (0, 0);
    for (number, model, mac, files) in &phones {
        let (user, pw, path) = login(&env, number);
        assert_eq!(&user, mac);
        for (f, own) in files {
            let url = format!("http://{}/prov/{path}/{f}", server.http);
            let (code, body) = curl(
                &[
                    "--interface",
                    office,
                    "--digest",
                    "-u",
                    &format!("{user}:{pw}"),
                ],
                &url,
            );
            if *own {
                assert_eq!(code, 200, "{model}: {f} is the phone's own file: {body}");
                served += 1;
            } else {
                assert_eq!(code, 404, "{model}: {f} is answered, never a probe: {body}");
                answered += 1;
            }
        }
    }
    assert_eq!((served, answered), (7, 14));
    assert!(!banned(&env, office));
    assert_eq!(server.metric("sipward_provisioning_refused_total"), 0);
    assert_eq!(server.metric("sipward_provisioning_not_served_total"), 14);
    server.stop();
}

/// A bare HTTP/1.1 client on one kept-alive connection, with Digest by hand.
struct Http {
    reader: BufReader<TcpStream>,
    /// The server's own address, the Host it answers to.
    host: String,
}

struct Answer {
    status: u16,
    head: String,
}

impl Http {
    fn new(server: &Server) -> Http {
        let s = TcpStream::connect(server.http).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Http {
            reader: BufReader::new(s),
            host: server.http.to_string(),
        }
    }

    fn get(&mut self, path: &str, authorization: Option<&str>) -> Answer {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(a) = authorization {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .expect("write");
        let mut head = String::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).expect("body");
        Answer { status, head }
    }
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// The MD5 nonce of a 401.
fn nonce(a: &Answer) -> String {
    let line = a
        .head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:") && !l.contains("SHA-256"))
        .expect("an MD5 challenge");
    let i = line.find("nonce=\"").expect("nonce") + 7;
    line[i..i + line[i..].find('"').expect("end")].to_owned()
}

/// An Authorization header for `GET uri` (MD5, qop=auth).
fn digest(user: &str, password: &str, nonce: &str, uri: &str, nc: u32) -> String {
    let ha1 = md5_hex(&format!("{user}:{REALM}:{password}"));
    let ha2 = md5_hex(&format!("GET:{uri}"));
    let nc = format!("{nc:08x}");
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:0a4f113b:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         algorithm=MD5, qop=auth, nc={nc}, cnonce=\"0a4f113b\", response=\"{response}\""
    )
}

#[test]
fn a_replayed_authorization_is_refused() {
    let env = Env::with_config(&base_config());
    env.ok(&[
        "ext",
        "add",
        "1201",
        "--mac",
        "001565aabb12",
        "--model",
        "Yealink T46U",
    ]);
    let (user, pw, path) = login(&env, "1201");
    let server = env.serve();
    let uri = format!("/prov/{path}/{user}.cfg");
    let mut http = Http::new(&server);
    let n = nonce(&http.get(&uri, None));
    let first = digest(&user, &pw, &n, &uri, 1);
    assert_eq!(
        http.get(&uri, Some(&first)).status,
        200,
        "the phone's fetch"
    );
    // The same Authorization again, as someone who captured it would send it.
    assert_eq!(http.get(&uri, Some(&first)).status, 401, "replayed");
    assert_eq!(
        server.metric("sipward_provisioning_refused_total"),
        1,
        "counted"
    );
    // The phone itself counts on.
    assert_eq!(
        http.get(&uri, Some(&digest(&user, &pw, &n, &uri, 2)))
            .status,
        200
    );
    server.stop();
}

fn median(v: &mut [u128]) -> u128 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Wrong logins for a phone that exists and for one that does not take the same time;
/// the same statistic tells apart requests that do less work (no login), which proves
/// it would see a difference of the size the issue measured.
#[test]
fn known_and_unknown_phones_cost_the_same_time() {
    let env = Env::with_config(&base_config());
    env.ok(&[
        "ext",
        "add",
        "1301",
        "--mac",
        "001565aabb13",
        "--model",
        "Yealink T46U",
    ]);
    // Failing logins from here are counted, never banned: the loop makes hundreds.
    env.ok(&["allow", "add", "127.0.0.1/32"]);
    let (known, _, path) = login(&env, "1301");
    let unknown = "0015650000ff".to_owned();
    let server = env.serve();
    eventually(
        "the allow list is in force",
        Duration::from_secs(10),
        || server.metric("sipward_allowed_networks") >= 1,
    );
    let mut http = Http::new(&server);
    let uri = |mac: &str| format!("/prov/{path}/{mac}.cfg");
    let n = nonce(&http.get(&uri(&known), None));
    let known_req = digest(&known, "wrong-password-1", &n, &uri(&known), 1);
    let unknown_req = digest(&unknown, "wrong-password-1", &n, &uri(&unknown), 1);
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    // Warm up, then interleave (drift in the machine's load hits all three alike).
    for round in 0..450 {
        let order = [round % 3, (round + 1) % 3, (round + 2) % 3];
        for which in order {
            let t = Instant::now();
            let status = match which {
                0 => http.get(&uri(&known), Some(&known_req)).status,
                1 => http.get(&uri(&unknown), Some(&unknown_req)).status,
                _ => http.get(&uri(&known), None).status,
            };
            let took = t.elapsed().as_micros();
            assert_eq!(status, 401);
            if round >= 50 {
                [&mut a, &mut b, &mut c][which].push(took);
            }
        }
    }
    let (ma, mb, mc) = (median(&mut a), median(&mut b), median(&mut c));
    let gap = ma.abs_diff(mb);
    let control = ma.saturating_sub(mc);
    eprintln!("median µs: known {ma}, unknown {mb}, no login {mc}");
    // The statistic sees the work a lookup and a digest cost...
    assert!(
        control >= 20,
        "control: no login must be measurably cheaper (known {ma} µs, no login {mc} µs)"
    );
    // ...and no difference between a known and an unknown phone.
    assert!(
        gap * 4 < control,
        "known {ma} µs vs unknown {mb} µs: a gap of {gap} µs against the control's {control} µs"
    );
    server.stop();
}

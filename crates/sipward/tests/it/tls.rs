//! SIP over TLS end to end (issue #19): `openssl s_client -verify_return_error` against
//! the generated CA and a wrong one, old protocol versions and weak suites refused, an
//! operator certificate reloaded (`sipward tls reload`, SIGHUP, the files changing) with
//! a bad one refused and the old kept, the expiry metric and audit warning; SIPp through
//! `stunnel4` registering over TLS; baresip phones over TCP and TLS each reached on their
//! own connection by a check-sync NOTIFY and a call, the TLS call kept up across a
//! reload; a flood of half-open connections from one address cut while another address
//! registers.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pbx::tls::CertificateFacts;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::baresip::Baresip;
use crate::harness::Env;
use crate::peers::{eventually, eventually_or, free_port, require, sipp_auth, sipp_from};

const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Sets a certificate's validity to [from, to] (Unix seconds).
fn valid(p: &mut rcgen::CertificateParams, from: i64, to: i64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + Duration::from_secs(from as u64);
    p.not_after = epoch + Duration::from_secs(to as u64);
}

/// A CA of the test's own.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_owned());
        valid(&mut p, now() - DAY, now() + 365 * DAY);
        let cert = p.self_signed(&key).expect("ca");
        let pem = cert.pem();
        Ca {
            issuer: rcgen::Issuer::new(p, key),
            pem,
        }
    }

    /// A server certificate for 127.0.0.1 valid from `from` to `to`: (cert, key) PEM.
    fn leaf(&self, from: i64, to: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        valid(&mut p, from, to);
        let cert = p.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// `openssl s_client` against `addr` verifying with `ca`: whether the handshake and
/// verification succeeded, and the certificate the server presented.
fn s_client(
    addr: SocketAddr,
    ca: &Path,
    extra: &[&str],
) -> (bool, Option<CertificateFacts>, String) {
    let openssl = require("openssl", "openssl");
    let out = Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-verify_return_error",
        ])
        .arg("-CAfile")
        .arg(ca)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = out.status.success() && text.contains("Verify return code: 0 (ok)");
    let facts = CertificateDer::from_pem_slice(text.as_bytes())
        .ok()
        .and_then(|der| CertificateFacts::of(&der).ok());
    (ok, facts, text)
}

fn serial_of_file(path: &Path) -> String {
    let pem = std::fs::read(path).expect("cert");
    let der = CertificateDer::from_pem_slice(&pem).expect("pem");
    CertificateFacts::of(&der).expect("facts").serial
}

#[test]
fn the_generated_ca_verifies_the_server_a_wrong_ca_is_refused_and_old_protocols_are_refused() {
    let env = Env::new();
    let server = env.serve();
    let tls = server.sip_tls.expect("TLS served by default");
    let dir = env.data.join("tls");
    for (name, mode) in [("ca.key", 0o600), ("server.key", 0o600)] {
        assert_eq!(crate::harness::mode_of(&dir.join(name)), mode, "{name}");
    }
    assert_eq!(crate::harness::mode_of(&dir), 0o700);
    // The generated CA verifies the server, over TLS 1.3 and 1.2.
    let ca = dir.join("ca.pem");
    let (ok, facts, out) = s_client(tls, &ca, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    assert_eq!(
        facts.expect("cert").serial,
        serial_of_file(&dir.join("server.pem"))
    );
    let (ok, _, out) = s_client(tls, &ca, &["-tls1_2"]);
    assert!(ok, "{out}");
    // A CA that did not sign it is refused.
    let wrong = env.path("wrong-ca.pem");
    std::fs::write(&wrong, Ca::new("someone else").pem).expect("write");
    let (ok, _, out) = s_client(tls, &wrong, &[]);
    assert!(!ok, "a wrong CA verified:\n{out}");
    assert!(out.contains("verify error"), "{out}");
    // TLS 1.0 and 1.1 (even with openssl's own floor lowered) and weak suites.
    for args in [
        &["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"][..],
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
        &["-tls1_2", "-cipher", "AES128-SHA:DEFAULT@SECLEVEL=0"],
        &["-tls1_2", "-cipher", "AES256-SHA256"],
        &["-tls1_2", "-cipher", "DES-CBC3-SHA:@SECLEVEL=0"],
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA",
        ],
    ] {
        let (ok, facts, out) = s_client(tls, &ca, args);
        assert!(!ok && facts.is_none(), "{args:?} was accepted:\n{out}");
    }
    // The positive control of the refusals: the same client with a modern suite.
    let (ok, _, out) = s_client(
        tls,
        &ca,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    );
    assert!(ok, "{out}");
    assert!(server.metric("sipward_tls_handshakes_failed_total") >= 6);
    let expiry = server.metric("sipward_tls_cert_expiry_seconds") as i64;
    assert!((390 * DAY..=397 * DAY).contains(&expiry), "{expiry}");
    // `tls show` names the CA's fingerprint.
    let shown = env.json(&["tls", "show", "--json"]);
    assert_eq!(shown["generated"], true);
    assert_eq!(
        shown["ca"]["sha256"].as_str().map(str::len),
        Some(64),
        "{shown}"
    );
    server.stop();
}

/// A data dir whose `[tls]` uses the operator's files; returns the paths.
fn operator_env(extra: &str) -> (Env, PathBuf, PathBuf) {
    let env = Env::new();
    env.ok(&["ext", "list"]);
    let cert = env.path("operator.pem");
    let key = env.path("operator.key");
    std::fs::write(
        env.data.join("sipward.toml"),
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            cert.display(),
            key.display()
        ),
    )
    .expect("config");
    (env, cert, key)
}

fn install(cert: &Path, key: &Path, pair: &(String, String)) {
    // The key first, as an ACME client renaming into place would leave them at the end.
    std::fs::write(key, &pair.1).expect("key");
    std::fs::write(cert, &pair.0).expect("cert");
}

#[test]
fn an_operator_certificate_is_reloaded_and_an_expired_one_is_refused_with_the_old_kept() {
    let ca = Ca::new("operator CA");
    let (env, cert, key) = operator_env("");
    let ca_file = env.path("operator-ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("ca");
    // Valid for 10 days: the audit warns (21 days before expiry).
    install(&cert, &key, &ca.leaf(now() - DAY, now() + 10 * DAY));
    let first = serial_of_file(&cert);
    let audit = env.json(&["audit", "--json"]);
    let rules = crate::harness::rules_of(&audit["findings"]);
    assert!(rules.contains(&"tls.cert_expiring".to_owned()), "{audit}");
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    let (ok, facts, out) = s_client(tls, &ca_file, &[]);
    assert!(ok, "{out}");
    assert_eq!(facts.expect("cert").serial, first);

    // A renewed certificate: `tls reload` puts it in force and says so.
    install(&cert, &key, &ca.leaf(now() - DAY, now() + 90 * DAY));
    let second = serial_of_file(&cert);
    assert_ne!(first, second);
    let answer = env.json(&["tls", "reload", "--json"]);
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["serial"], second.as_str(), "{answer}");
    let (ok, facts, out) = s_client(tls, &ca_file, &[]);
    assert!(ok, "{out}");
    assert_eq!(
        facts.expect("cert").serial,
        second,
        "the serial changes after a reload"
    );
    assert!(server.metric("sipward_tls_cert_expiry_seconds") as i64 > 80 * DAY);
    assert!(
        !crate::harness::rules_of(&env.json(&["audit", "--json"])["findings"])
            .iter()
            .any(|r| r.starts_with("tls.")),
        "no TLS finding for a certificate valid 90 days"
    );

    // An expired one is refused, by the command and by the server; the old one stays.
    install(&cert, &key, &ca.leaf(now() - 30 * DAY, now() - DAY));
    // (The files are bad input: exit 2, one sentence.)
    let refused = env.fails(&["tls", "reload"], 2);
    assert!(refused.contains("expired"), "{refused}");
    eventually_or(
        "the server refuses the expired files it saw change",
        Duration::from_secs(10),
        || server.log().contains("tls_reload_refused"),
        || server.log(),
    );
    let (ok, facts, out) = s_client(tls, &ca_file, &[]);
    assert!(ok, "{out}");
    assert_eq!(
        facts.expect("cert").serial,
        second,
        "the old certificate is kept"
    );
    // A key that is not the certificate's is refused too.
    let other = ca.leaf(now() - DAY, now() + 90 * DAY);
    let mine = ca.leaf(now() - DAY, now() + 90 * DAY);
    install(&cert, &key, &(mine.0.clone(), other.1.clone()));
    let refused = env.fails(&["tls", "reload"], 2);
    assert!(refused.contains("does not match"), "{refused}");

    // SIGHUP reloads too (and the files changing: whichever comes first).
    install(&cert, &key, &mine);
    let third = serial_of_file(&cert);
    server.signal("HUP");
    eventually_or(
        "the new certificate is in force after SIGHUP",
        Duration::from_secs(10),
        || {
            s_client(tls, &ca_file, &[])
                .1
                .is_some_and(|f| f.serial == third)
        },
        || server.log(),
    );
    server.stop();
}

/// `stunnel4` in client mode: plain TCP on a local port into sipward's TLS port,
/// verifying the server with `ca`. Killed when dropped.
struct Stunnel {
    child: Child,
    pub local: SocketAddr,
    log: PathBuf,
}

impl Stunnel {
    fn start(env: &Env, name: &str, tls: SocketAddr, ca: &Path) -> Stunnel {
        let stunnel = require("stunnel4", "stunnel4");
        let port = free_port();
        let conf = env.path(&format!("stunnel-{name}.conf"));
        let log = env.path(&format!("stunnel-{name}.log"));
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = 5\noutput = {}\n[sip]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = {tls}\nCAfile = {}\nverifyChain = yes\ncheckIP = {}\n",
                log.display(),
                ca.display(),
                tls.ip()
            ),
        )
        .expect("stunnel conf");
        let child = Command::new(stunnel)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stunnel4");
        let local: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let start = Instant::now();
        while std::net::TcpStream::connect(local).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "stunnel4 did not listen:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Stunnel { child, local, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extensions with known credentials: (number, auth id, password).
fn add_extensions(env: &Env, numbers: &[&str]) -> Vec<(String, String, String)> {
    numbers
        .iter()
        .map(|n| {
            let added = env.json(&["ext", "add", n, "--json"]);
            (
                (*n).to_owned(),
                added["generated"]["auth_id"]
                    .as_str()
                    .expect("auth")
                    .to_owned(),
                added["generated"]["password"]
                    .as_str()
                    .expect("pw")
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn sipp_registers_over_tls_through_stunnel() {
    let env = Env::new();
    let users = add_extensions(&env, &["2101", "2102", "2103"]);
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    let tunnel = Stunnel::start(&env, "reg", tls, &env.data.join("tls/ca.pem"));
    let csv: String = std::iter::once("SEQUENTIAL\n".to_owned())
        .chain(
            users
                .iter()
                .map(|(n, a, p)| format!("{n};{}\n", sipp_auth(a, p))),
        )
        .collect();
    let run = sipp_from(
        "127.0.0.1",
        &env,
        "register_auth.xml",
        &csv,
        tunnel.local,
        "t1",
        3,
        3,
    );
    assert_eq!(
        (run.successful, run.failed, run.code),
        (3, 0, 0),
        "{run:?}\n{}",
        tunnel.log()
    );
    eventually("TLS registrations visible", Duration::from_secs(20), || {
        users.iter().all(|(n, _, _)| {
            env.json(&["ext", "show", n, "--json"])["registrations"][0]["transport"] == "tls"
        })
    });
    server.stop();
}

#[test]
fn phones_over_tcp_and_tls_get_notify_and_calls_on_their_own_connections_across_a_reload() {
    // baresip 1.0 (libre 1.x) answers only MD5 challenges.
    let env = Env::with_config(
        "[sip]\ndigest_algorithms = [\"MD5\"]\n[registrar]\nmin_expires = 5\ndefault_expires = 300\n",
    );
    let mut users = Vec::new();
    for (n, mac) in [("1201", "001565aabb01"), ("1202", "001565aabb02")] {
        let added = env.json(&[
            "ext",
            "add",
            n,
            "--mac",
            mac,
            "--model",
            "snom D785",
            "--json",
        ]);
        users.push((
            n.to_owned(),
            added["generated"]["auth_id"]
                .as_str()
                .expect("auth")
                .to_owned(),
            added["generated"]["password"]
                .as_str()
                .expect("pw")
                .to_owned(),
        ));
    }
    let caller = add_extensions(&env, &["1200"]).remove(0);
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    let accounts: String = users
        .iter()
        .zip([("tcp", server.sip), ("tls", tls)])
        .map(|((n, a, p), (transport, addr))| {
            format!(
                "<sip:{n}@{addr};transport={transport}>;auth_user={a};auth_pass={p};regint=300;answermode=auto\n"
            )
        })
        .collect();
    let phone = Baresip::start(&env, &accounts);
    eventually_or(
        "baresip registers over TCP and TLS",
        Duration::from_secs(20),
        || {
            let l = phone.log();
            l.contains("1201@127.0.0.1: {0/TCP/v4} 200 OK")
                && l.contains("1202@127.0.0.1: {0/TLS/v4} 200 OK")
        },
        || phone.log(),
    );
    eventually(
        "the registrations' transports",
        Duration::from_secs(20),
        || {
            env.json(&["ext", "show", "1201", "--json"])["registrations"][0]["transport"] == "tcp"
                && env.json(&["ext", "show", "1202", "--json"])["registrations"][0]["transport"]
                    == "tls"
        },
    );

    // A call to each: sipward opens no connection to a phone, so an answered call went
    // over the one the phone opened. The TLS call is held while the certificate is
    // reloaded, and ends with BYE and 200 over the same connection afterwards.
    let call = |callee: &str, scenario: &str| {
        let csv = format!(
            "SEQUENTIAL\n{};{};{callee}\n",
            caller.0,
            sipp_auth(&caller.1, &caller.2)
        );
        sipp_from("127.0.0.1", &env, scenario, &csv, server.sip, "u1", 1, 1)
    };
    let run = call("1201", "call_uac.xml");
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "TCP call: {run:?}\n{}",
        phone.log()
    );
    // A caller over TLS too: SIPp's call scenario through stunnel4 to the TCP phone.
    let tunnel = Stunnel::start(&env, "caller", tls, &env.data.join("tls/ca.pem"));
    let csv = format!(
        "SEQUENTIAL\n{};{};1201\n",
        caller.0,
        sipp_auth(&caller.1, &caller.2)
    );
    let run = sipp_from(
        "127.0.0.1",
        &env,
        "call_uac.xml",
        &csv,
        tunnel.local,
        "t1",
        1,
        1,
    );
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "a call from a TLS caller: {run:?}\n{}",
        tunnel.log()
    );
    let held = std::thread::scope(|s| {
        let held = s.spawn(|| call("1202", "call_uac_held.xml"));
        eventually("the TLS call is up", Duration::from_secs(10), || {
            server.metric("sipward_calls_proxied_total") >= 3
        });
        std::thread::sleep(Duration::from_millis(500));
        let answer = env.json(&["tls", "reload", "--json"]);
        assert_eq!(answer["ok"], true, "{answer}");
        held.join().expect("call thread")
    });
    assert_eq!(
        (held.successful, held.failed),
        (1, 0),
        "TLS call across the reload: {held:?}\n{}",
        phone.log()
    );
    assert!(server.log().contains("tls_reloaded"), "{}", server.log());

    // A check-sync NOTIFY to each, on its own connection.
    let out = env.json(&["ext", "regenerate", "1201", "1202", "--no-email", "--json"]);
    assert_eq!(
        out["regenerated"].as_array().map(Vec::len),
        Some(2),
        "{out}"
    );
    eventually_or(
        "both phones answer the NOTIFY",
        Duration::from_secs(15),
        || server.metric("sipward_notify_answered_total") == 2,
        || format!("{}\n{}", server.log(), phone.log()),
    );
    assert_eq!(server.metric("sipward_notify_unanswered_total"), 0);
    drop(phone);
    server.stop();
}

#[test]
fn a_flood_of_half_open_connections_is_cut_and_other_addresses_keep_registering() {
    let env = Env::new();
    env.ok(&["ext", "list"]);
    std::fs::write(
        env.data.join("sipward.toml"),
        "[tls]\nhandshake_secs = 2\nhandshakes_per_source = 4\n",
    )
    .expect("config");
    let users = add_extensions(&env, &["2201"]);
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    // 20 TCP connections to the TLS port from one address, none starting TLS.
    let flood: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            let from: SocketAddr = "127.0.0.61:0".parse().expect("addr");
            s.bind(&from.into()).expect("bind");
            s.connect(&tls.into()).expect("connect");
            let s: std::net::TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s
        })
        .collect();
    // Over the cap of handshakes in flight: closed at once.
    eventually(
        "the 16 over the cap are refused",
        Duration::from_secs(5),
        || server.metric("sipward_tcp_connections_refused_total") >= 16,
    );
    // Meanwhile another address registers over TLS.
    let tunnel = Stunnel::start(&env, "flood", tls, &env.data.join("tls/ca.pem"));
    let (n, a, p) = &users[0];
    let csv = format!("SEQUENTIAL\n{n};{}\n", sipp_auth(a, p));
    let run = sipp_from(
        "127.0.0.1",
        &env,
        "register_auth.xml",
        &csv,
        tunnel.local,
        "t1",
        1,
        1,
    );
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "{run:?}\n{}",
        tunnel.log()
    );
    // The four in flight are cut at the handshake deadline: every flood socket ends
    // (end of stream or reset), none is still waiting when its read times out.
    let start = Instant::now();
    for mut s in flood {
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("{n} bytes to a connection that never started TLS"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a half-open connection stayed open: {e}"
            ),
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    eventually(
        "the half-open ones time out",
        Duration::from_secs(5),
        || server.metric("sipward_tls_handshakes_timed_out_total") >= 4,
    );
    server.stop();
}

#[test]
fn tls_phones_are_provisioned_with_the_transport_the_port_and_the_private_ca() {
    let env = Env::with_config(
        "[sip]\ndomain = \"pbx.example.com\"\n[provisioning]\ntransport = \"tls\"\n\
         base_url = \"http://pbx.example.com:8080\"\n",
    );
    let mac = "001565aabb61";
    env.ok(&[
        "ext",
        "add",
        "3601",
        "--mac",
        mac,
        "--model",
        "Yealink T46U",
    ]);
    let shown = env.json(&["ext", "show", "3601", "--reveal", "--json"]);
    let login = &shown["provisioning"];
    let (user, pw, path) = (
        login["user"].as_str().expect("user"),
        login["password"].as_str().expect("password"),
        login["path"].as_str().expect("path"),
    );
    let server = env.serve();
    let url = |f: &str| format!("http://{}/prov/{path}/{f}", server.http);
    let good = format!("{user}:{pw}");
    let (code, cfg) =
        crate::regenerate::curl(&["--digest", "-u", &good], &url(&format!("{mac}.cfg")));
    assert_eq!(code, 200, "{cfg}");
    assert!(
        cfg.contains("account.1.sip_server.1.transport_type = 2\n"),
        "{cfg}"
    );
    assert!(
        cfg.contains("account.1.sip_server.1.port = 5061\n"),
        "{cfg}"
    );
    let ca_name = format!("{mac}-ca.pem");
    assert!(
        cfg.contains(&format!(
            "static.trusted_certificates.url = http://pbx.example.com:8080/prov/{path}/{ca_name}\n"
        )),
        "{cfg}"
    );
    // The CA file is served behind the same login, and is the CA that signed the server.
    let (code, ca) = crate::regenerate::curl(&["--digest", "-u", &good], &url(&ca_name));
    assert_eq!(code, 200);
    assert_eq!(
        ca,
        std::fs::read_to_string(env.data.join("tls/ca.pem")).expect("ca")
    );
    assert_eq!(
        crate::regenerate::curl(&[], &url(&ca_name)).0,
        401,
        "no login, no file"
    );
    let fetched = env.path("fetched-ca.pem");
    std::fs::write(&fetched, &ca).expect("write");
    let (ok, _, out) = s_client(server.sip_tls.expect("tls"), &fetched, &[]);
    assert!(ok, "{out}");
    server.stop();
}

#[test]
fn one_extension_can_be_given_tls_while_the_others_keep_the_installations_transport() {
    let env = Env::with_config(
        "[sip]\ndomain = \"pbx.example.com\"\n[provisioning]\nbase_url = \"http://pbx.example.com:8080\"\n",
    );
    let (remote, office) = ("001565aabb71", "001565aabb72");
    env.ok(&[
        "ext",
        "add",
        "3701",
        "--mac",
        remote,
        "--model",
        "Yealink T46U",
        "--transport",
        "tls",
    ]);
    env.ok(&[
        "ext",
        "add",
        "3702",
        "--mac",
        office,
        "--model",
        "Yealink T46U",
    ]);
    let err = env.fails(&["ext", "add", "3703", "--transport", "sctp"], 2);
    assert!(err.contains("udp, tcp or tls"), "{err}");
    let file = |mac: &str| {
        std::fs::read_to_string(env.data.join("provisioning").join(format!("{mac}.cfg")))
            .expect("file")
    };
    let tls = file(remote);
    assert!(
        tls.contains("transport_type = 2\n") && tls.contains(".port = 5061\n"),
        "{tls}"
    );
    assert!(tls.contains(&format!("{remote}-ca.pem")), "{tls}");
    assert!(
        env.data
            .join("provisioning")
            .join(format!("{remote}-ca.pem"))
            .is_file()
    );
    let udp = file(office);
    assert!(
        udp.contains("transport_type = 0\n") && udp.contains(".port = 5060\n"),
        "{udp}"
    );
    assert!(!udp.contains("ca.pem"), "{udp}");
    let shown = env.json(&["ext", "show", "3701", "--json"]);
    assert_eq!(shown["transport"], "tls", "{shown}");
    // Back to the installation's setting.
    env.ok(&["ext", "update", "3701", "--transport", ""]);
    let back = file(remote);
    assert!(
        back.contains("transport_type = 0\n") && back.contains(".port = 5060\n"),
        "{back}"
    );
}

/// A `ca.pem` whose `ca.key` is gone is refused with one sentence and exit code 2 (the
/// operator's environment): what is missing, and what removing `ca.pem` would cost. The
/// CA stays as it was; removing `ca.pem` makes a new one, as the sentence says.
#[test]
fn a_ca_without_its_key_is_refused_with_what_to_do_and_a_new_one_made_only_when_asked() {
    let env = Env::with_config("");
    env.ok(&["ext", "list"]);
    let ca = env.data.join("tls/ca.pem");
    let first = std::fs::read_to_string(&ca).expect("ca.pem");
    std::fs::remove_file(env.data.join("tls/ca.key")).expect("remove the key");
    let err = env.fails(&["ext", "list"], 2);
    assert!(err.contains("ca.key") && err.contains("missing"), "{err}");
    assert!(
        err.contains("remove") && err.contains("provisioned"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&ca).expect("ca.pem"), first);
    // The operator's choice: a new CA.
    std::fs::remove_file(&ca).expect("remove ca.pem");
    env.ok(&["ext", "list"]);
    let new = std::fs::read_to_string(&ca).expect("a new ca.pem");
    assert_ne!(new, first);
    assert!(env.data.join("tls/ca.key").exists());
}

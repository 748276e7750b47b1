//! The call path of the running server, in process: `pbx::server::bind` on real loopback
//! sockets with a clock the test moves, UDP sockets standing for the phones and the
//! gateway. Timers (Timer B, the ring limit, the maximum duration, the late-answer
//! window) are shown by moving the clock, never by waiting for them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accounts::extension::NewExtension;
use accounts::gateway::NewGateway;
use accounts::provider::NewProvider;
use accounts::trunks::NewRoute;
use accounts::{Registry, Settings};
use pbx::registrar::RegistrarConfig;
use pbx::server::{ServeConfig, ServerKeys};
use policy::PolicyConfig;
use policy::ban::BanPolicy;
use policy::clock::ManualClock;
use policy::dialplan::DialPlan;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sip::header::auth::Challenge;
use store::DataDir;
use tokio::net::UdpSocket;

const T0: i64 = 1_800_000_000;
/// How long anything that must come may take (real time: the server ticks every 20 ms).
const ANSWER: Duration = Duration::from_secs(5);
/// How long silence is watched for where nothing must come.
const QUIET: Duration = Duration::from_millis(600);

/// A user agent on one UDP socket, or on one TCP connection it opened to the PBX: it
/// records everything that arrives.
struct Ua {
    addr: SocketAddr,
    pbx: SocketAddr,
    sock: Arc<UdpSocket>,
    tcp: Option<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    inbox: Arc<Mutex<Vec<(String, bool)>>>,
    number: String,
    auth_id: String,
    password: String,
    counter: std::sync::atomic::AtomicU32,
}

fn header<'a>(m: &'a str, name: &str) -> Option<&'a str> {
    m.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn status(m: &str) -> u16 {
    m.strip_prefix("SIP/2.0 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn method(m: &str) -> Option<&str> {
    if m.starts_with("SIP/2.0") {
        return None;
    }
    m.split(' ').next()
}

fn tag_of(value: &str) -> Option<&str> {
    value
        .split(";tag=")
        .nth(1)
        .map(|t| t.split(';').next().unwrap_or(t))
}

/// A response to `req` (Vias, From, To with `tag`, Call-ID, CSeq), with `extra` headers.
fn response(req: &str, code: u16, reason: &str, tag: &str, extra: &str, body: &str) -> String {
    let head = req.split("\r\n\r\n").next().unwrap_or(req);
    let mut t = format!("SIP/2.0 {code} {reason}\r\n");
    for l in head.lines().skip(1) {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" | "record-route" => {
                t.push_str(l);
                t.push_str("\r\n");
            }
            "to" if !tag.is_empty() && tag_of(l).is_none() && code > 100 => {
                t.push_str(&format!("{l};tag={tag}\r\n"));
            }
            "to" => {
                t.push_str(l);
                t.push_str("\r\n");
            }
            _ => {}
        }
    }
    t.push_str(&format!(
        "{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    t
}

/// What a UAC remembers of the INVITE it sent.
#[derive(Clone, Debug)]
struct Outgoing {
    call_id: String,
    from: String,
    to: String,
    ruri: String,
    branch: String,
    cseq: u32,
}

impl Ua {
    async fn bind(ip: &str, pbx: SocketAddr, number: &str) -> Ua {
        let sock = Arc::new(UdpSocket::bind((ip, 0)).await.expect("bind"));
        let addr = sock.local_addr().expect("addr");
        let inbox: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let (rx, ib) = (sock.clone(), inbox.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                if let Ok((n, _)) = rx.recv_from(&mut buf).await {
                    ib.lock()
                        .expect("inbox")
                        .push((String::from_utf8_lossy(&buf[..n]).into_owned(), false));
                }
            }
        });
        Ua {
            addr,
            pbx,
            sock,
            tcp: None,
            inbox,
            number: number.to_owned(),
            auth_id: format!("cp{number}desk"),
            password: format!("Vb7-qLx9-{number}-Tz4Wm"),
            counter: Default::default(),
        }
    }

    /// A phone on a TCP connection it opens from `ip` to the PBX (its address is the
    /// connection's).
    async fn connect(ip: &str, pbx: SocketAddr, number: &str) -> Ua {
        use tokio::io::AsyncReadExt;
        let mut ua = Ua::bind(ip, pbx, number).await;
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind((ua.addr.ip(), 0).into()).expect("bind");
        let stream = s.connect(pbx).await.expect("connect");
        ua.addr = stream.local_addr().expect("addr");
        let (mut rd, wr) = stream.into_split();
        let ib = ua.inbox.clone();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 65_536];
            while let Ok(n) = rd.read(&mut chunk).await {
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Ok(Some(len)) = sip::msg::frame_len(&buf, 1 << 20) {
                    let m: Vec<u8> = buf.drain(..len).collect();
                    ib.lock()
                        .expect("inbox")
                        .push((String::from_utf8_lossy(&m).into_owned(), false));
                }
            }
        });
        ua.tcp = Some(tokio::sync::Mutex::new(wr));
        ua
    }

    fn next(&self, what: &str) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{what}{}x{n}", self.addr.port())
    }

    async fn send(&self, text: &str) {
        use tokio::io::AsyncWriteExt;
        match &self.tcp {
            Some(w) => w
                .lock()
                .await
                .write_all(text.as_bytes())
                .await
                .expect("send TCP"),
            None => {
                self.sock
                    .send_to(text.as_bytes(), self.pbx)
                    .await
                    .expect("send");
            }
        }
    }

    /// Takes the first message not taken yet that `pred` accepts, within `within`.
    async fn try_wait(&self, within: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let start = Instant::now();
        loop {
            {
                let mut ib = self.inbox.lock().expect("inbox");
                if let Some((m, taken)) = ib.iter_mut().find(|(m, t)| !*t && pred(m)) {
                    *taken = true;
                    return Some(m.clone());
                }
            }
            if start.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        match self.try_wait(ANSWER, pred).await {
            Some(m) => m,
            None => {
                let seen: Vec<String> = self
                    .inbox
                    .lock()
                    .expect("inbox")
                    .iter()
                    .map(|(m, _)| m.lines().next().unwrap_or("").to_owned())
                    .collect();
                panic!(
                    "{what}: nothing at {} within {ANSWER:?}; it saw {seen:#?}",
                    self.addr
                )
            }
        }
    }

    /// Whether nothing `pred` accepts arrives within [`QUIET`].
    async fn quiet(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.try_wait(QUIET, pred).await.is_none()
    }

    async fn request_for(&self, method_: &str, call_id: &str, cseq: u32) -> String {
        self.wait(&format!("{method_} of {call_id}"), |m| {
            method(m) == Some(method_)
                && header(m, "Call-ID") == Some(call_id)
                && (cseq == 0
                    || header(m, "CSeq").is_some_and(|c| c.starts_with(&format!("{cseq} "))))
        })
        .await
    }

    async fn reply(&self, req: &str, code: u16, reason: &str, tag: &str, extra: &str, body: &str) {
        self.send(&response(req, code, reason, tag, extra, body))
            .await;
    }

    fn via(&self, branch: &str) -> String {
        let t = if self.tcp.is_some() { "TCP" } else { "UDP" };
        format!("SIP/2.0/{t} {};branch={branch};rport", self.addr)
    }

    async fn register(&self) {
        let call_id = self.next("reg");
        let tag = self.next("rt");
        let text = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\n\
                 From: <sip:{n}@127.0.0.1>;tag={tag}\r\nTo: <sip:{n}@127.0.0.1>\r\nCall-ID: {call_id}\r\n\
                 CSeq: {cseq} REGISTER\r\nContact: <sip:{n}@{}>\r\nExpires: 3600\r\n{auth}Content-Length: 0\r\n\r\n",
                self.via(&self.next("z9hG4bKreg")),
                self.addr,
                n = self.number,
            )
        };
        self.send(&text(1, "")).await;
        let challenge = self
            .wait("401", |m| {
                header(m, "Call-ID") == Some(&call_id) && status(m) == 401
            })
            .await;
        let auth = self.answer(&challenge, "WWW-Authenticate", "REGISTER", "sip:127.0.0.1");
        self.send(&text(2, &format!("Authorization: {auth}\r\n")))
            .await;
        let ok = self
            .wait("200 to REGISTER", |m| {
                header(m, "Call-ID") == Some(&call_id) && status(m) >= 200 && status(m) != 401
            })
            .await;
        assert_eq!(status(&ok), 200, "{ok}");
    }

    fn answer(&self, challenge: &str, name: &str, method_: &str, uri: &str) -> String {
        let ch = Challenge::parse(header(challenge, name).expect("challenge")).expect("parses");
        ch.answer(method_, uri, &self.auth_id, &self.password, "c0ffee01")
            .expect("MD5")
    }

    fn sdp(&self) -> String {
        let ip = self.addr.ip();
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\n\
             a=rtpmap:101 telephone-event/8000\r\n",
            self.addr.port() + 2
        )
    }

    fn invite_text(&self, out: &Outgoing, extra: &str) -> String {
        let sdp = self.sdp();
        format!(
            "INVITE {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {} INVITE\r\nContact: <sip:{}@{}>\r\n{extra}\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            out.ruri,
            self.via(&out.branch),
            out.from,
            out.to,
            out.call_id,
            out.cseq,
            self.number,
            self.addr,
            sdp.len()
        )
    }

    /// Calls `dialled` through the PBX, answering its 407; returns the INVITE sent last.
    async fn invite(&self, dialled: &str, extra: &str) -> Outgoing {
        let ruri = format!("sip:{dialled}@{}", self.pbx);
        let mut out = Outgoing {
            call_id: self.next("call"),
            from: format!("<sip:{}@127.0.0.1>;tag={}", self.number, self.next("ft")),
            to: format!("<{ruri}>"),
            ruri: ruri.clone(),
            branch: self.next("z9hG4bKinv"),
            cseq: 1,
        };
        self.send(&self.invite_text(&out, extra)).await;
        let challenge = self
            .wait("407", |m| {
                header(m, "Call-ID") == Some(&out.call_id) && status(m) == 407
            })
            .await;
        self.ack_failure(&out, &challenge).await;
        let auth = self.answer(&challenge, "Proxy-Authenticate", "INVITE", &ruri);
        out.cseq = 2;
        out.branch = self.next("z9hG4bKinv");
        self.send(&self.invite_text(&out, &format!("{extra}Proxy-Authorization: {auth}\r\n")))
            .await;
        out
    }

    async fn answer_to(&self, out: &Outgoing, pred: impl Fn(u16) -> bool) -> String {
        self.wait("an answer to our INVITE", |m| {
            header(m, "Call-ID") == Some(&out.call_id)
                && header(m, "CSeq") == Some(&format!("{} INVITE", out.cseq))
                && pred(status(m))
        })
        .await
    }

    async fn ack_failure(&self, out: &Outgoing, answer: &str) {
        let text = format!(
            "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\n\
             CSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            out.ruri,
            self.via(&out.branch),
            out.from,
            header(answer, "To").unwrap_or(&out.to),
            out.call_id,
            out.cseq
        );
        self.send(&text).await;
    }

    async fn cancel(&self, out: &Outgoing) {
        let text = format!(
            "CANCEL {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\n\
             CSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
            out.ruri,
            self.via(&out.branch),
            out.from,
            out.to,
            out.call_id,
            out.cseq
        );
        self.send(&text).await;
    }

    /// A request in the dialog the answer `answer` to `out` made (no route set: sipward
    /// is the other end of the phone's leg).
    async fn in_dialog(&self, out: &Outgoing, answer: &str, method_: &str, cseq: u32) {
        let target = header(answer, "Contact")
            .map(|c| {
                c.trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or(c)
                    .to_owned()
            })
            .unwrap_or_else(|| out.ruri.clone());
        let text = format!(
            "{method_} {target} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {cseq} {method_}\r\nContent-Length: 0\r\n\r\n",
            self.via(&self.next("z9hG4bKdlg")),
            out.from,
            header(answer, "To").unwrap_or(&out.to),
            out.call_id,
        );
        self.send(&text).await;
    }
}

/// A server running in process on a manual clock.
struct Pbx {
    sip: SocketAddr,
    /// The internal hop socket, when hops are on.
    internal: Option<SocketAddr>,
    clock: Arc<ManualClock>,
    registry: Registry,
    endpoint: Arc<pbx::endpoint::Endpoint>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Pbx {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Pbx {
    /// Moves the clock, then lets the server's timer (every 20 ms) see it.
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        tokio::time::sleep(Duration::from_millis(80)).await;
    }

    fn metric(&self, name: &str) -> u64 {
        let text = self.endpoint.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
            .unwrap_or(0)
    }
}

/// What a test sets up before the server starts.
#[derive(Default)]
struct Setup {
    plan: DialPlan,
    /// (number, class) of extensions.
    extensions: Vec<(&'static str, &'static str)>,
    /// The gateway's address, with routes `1NXXNXXXXXX` and `911`.
    gateway: Option<SocketAddr>,
    admin_email: bool,
    /// (DID, extension) pairs: numbers the gateway may call in on.
    dids: Vec<(&'static str, &'static str)>,
    /// A provider `carrier` whose registrar is at this address.
    provider: Option<SocketAddr>,
    /// Voicemail on, filing messages here.
    voicemail: Option<Arc<dyn pbx::voicemail::Deposits>>,
    /// Hops on (`[cluster] internal` on 127.0.0.1, a port of the OS's choosing).
    internal: bool,
    /// Retrieval (`*97`, `*98`) on, with these boxes.
    retrieval: Option<Arc<dyn pbx::voicemail::Boxes>>,
}

async fn start(setup: Setup) -> Pbx {
    let dir = tempfile::tempdir().expect("tmp");
    let data = DataDir::new(dir.path().join("data"));
    let clock = Arc::new(ManualClock::new(T0, Instant::now()));
    let settings = Settings {
        realm: "sipward".into(),
        domain: None,
        policy: PolicyConfig::default(),
        dialplan: setup.plan,
        admin_email: setup.admin_email.then(|| "admin@example.com".into()),
        provisioning: Default::default(),
    };
    let (registry, _) = Registry::open(
        &data,
        settings,
        Box::new(StdRng::seed_from_u64(14)),
        clock.clone(),
    )
    .await
    .expect("open");
    for (number, class) in &setup.extensions {
        registry
            .add_extension(
                number,
                NewExtension {
                    auth_id: Some(format!("cp{number}desk")),
                    password: Some(format!("Vb7-qLx9-{number}-Tz4Wm")),
                    class_of_service: Some((*class).into()),
                    ..NewExtension::default()
                },
            )
            .await
            .expect("extension");
    }
    if let Some(gw) = setup.gateway {
        registry
            .add_gateway(
                "pstn",
                NewGateway {
                    vendor: "generic".into(),
                    number: "800".into(),
                    auth_id: "gw-pstn-7".into(),
                    password: "Gw7-pQ2v-Xk9m-Lr4t".into(),
                    host: gw.to_string(),
                },
            )
            .await
            .expect("gateway");
        for (did, number) in &setup.dids {
            registry.add_did(did, number).await.expect("did");
        }
        for (name, pattern, priority) in [
            ("emergency", "911", Some(1)),
            ("us", "1NXXNXXXXXX", None),
            ("world", "011.", None),
        ] {
            registry
                .add_route(
                    name,
                    NewRoute {
                        pattern: pattern.into(),
                        trunk: "pstn".into(),
                        strip: 0,
                        prepend: String::new(),
                        priority,
                    },
                )
                .await
                .expect("route");
        }
    }
    if let Some(registrar) = setup.provider {
        registry
            .add_provider(
                "carrier",
                NewProvider {
                    registrar: registrar.to_string(),
                    auth_id: "acct-77".into(),
                    password: "Pv9-qT4m-Wz8k-Lc2x".into(),
                },
            )
            .await
            .expect("provider");
    }
    let bans = BanPolicy {
        flood_requests: 0,
        auth_failures: 10_000,
        extension_failures: 0,
        ..BanPolicy::default()
    };
    let cfg = ServeConfig {
        sip: "127.0.0.1:0".parse().expect("addr"),
        registrar: RegistrarConfig::default(),
        nonce_max_age_secs: 300,
        digest_algorithms: vec![sip::digest::Algorithm::Md5],
        bans,
        min_strength_score: 3,
        udp_workers: 2,
        tcp: pbx::transport::TcpLimits::default(),
        messages: pbx::transport::MessageLimits::default(),
        mailer: None,
        tls: None,
        node: policy::node::NodeName::parse("test").expect("name"),
        internal: setup.internal.then(|| "127.0.0.1:0".parse().expect("addr")),
        version_poll: pbx::server::VERSION_POLL,
        voicemail: setup
            .voicemail
            .map(|deposits| pbx::server::VoicemailConfig {
                deposits,
                rtp: pbx::rtp::RtpConfig {
                    ports: 31000..=31999,
                    ports_per_source: 4,
                    ports_per_trunk: None,
                },
                limits: pbx::voicemail::DepositLimits::default(),
                boxes: None,
                any_box: "*98".into(),
                operator: None,
            }),
    };
    let keys = ServerKeys {
        nonce: [1; 32],
        dummy: [2; 32],
        notify: [3; 32],
    };
    let mut cfg = cfg;
    if let Some(vm) = cfg.voicemail.as_mut() {
        vm.boxes = setup.retrieval.clone();
    }
    let bound = pbx::server::bind(registry.clone(), cfg, keys, clock.clone())
        .await
        .expect("bind");
    let sip = bound.sip_udp;
    let internal = bound.sip_internal;
    let endpoint = bound.endpoint.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));
    Pbx {
        sip,
        internal,
        clock,
        registry,
        endpoint,
        stop: Some(stop),
        _dir: dir,
    }
}

/// A gateway socket on 127.0.0.7, made before the server (its address is configured).
async fn gateway_socket() -> Ua {
    Ua::bind("127.0.0.7", "127.0.0.1:9".parse().expect("addr"), "800").await
}

fn towards(mut ua: Ua, pbx: &Pbx) -> Ua {
    ua.pbx = pbx.sip;
    ua
}

/// A call from `phone` to a US number; the gateway's INVITE as it arrived.
async fn trunk_call(phone: &Ua, gw: &Ua, dialled: &str) -> (Outgoing, String) {
    let out = phone.invite(dialled, "").await;
    let invite = gw
        .wait("the trunk leg's INVITE", |m| {
            method(m) == Some("INVITE") && m.contains(&dialled[1..])
        })
        .await;
    (out, invite)
}

fn us_plan() -> DialPlan {
    let mut plan = DialPlan::default();
    plan.limits.attempts_per_minute = 100;
    plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_trunk_call_ends_at_its_class_maximum_with_bye_both_ways() {
    let gw = gateway_socket().await;
    let mut plan = us_plan();
    plan.classes.national.max_call_seconds = 60;
    let pbx = start(Setup {
        plan,
        extensions: vec![("3101", "national")],
        gateway: Some(gw.addr),
        ..Setup::default()
    })
    .await;
    let gw = towards(gw, &pbx);
    let phone = Ua::bind("127.0.0.21", pbx.sip, "3101").await;
    let (out, invite) = trunk_call(&phone, &gw, "12125550123").await;
    let tag = "gw1";
    gw.reply(
        &invite,
        200,
        "OK",
        tag,
        &format!("Contact: <sip:{}>\r\n", gw.addr),
        "",
    )
    .await;
    let ok = phone.answer_to(&out, |c| c == 200).await;
    gw.request_for("ACK", header(&invite, "Call-ID").expect("call-id"), 0)
        .await;
    // The phone ACKs its leg.
    phone.in_dialog(&out, &ok, "ACK", out.cseq).await;
    // Nothing ends the call before its time...
    pbx.advance(Duration::from_secs(59)).await;
    assert!(
        gw.quiet(|m| method(m) == Some("BYE")).await,
        "no BYE before 60 s"
    );
    // ...and at 60 s sipward hangs up both sides.
    pbx.advance(Duration::from_secs(2)).await;
    let bye_gw = gw
        .request_for("BYE", header(&invite, "Call-ID").expect("call-id"), 0)
        .await;
    let bye_phone = phone.request_for("BYE", &out.call_id, 0).await;
    gw.reply(&bye_gw, 200, "OK", "", "", "").await;
    phone.reply(&bye_phone, 200, "OK", "", "", "").await;
    assert_eq!(pbx.metric("sipward_calls_ended_max_duration_total"), 1);
}

/// `/metrics` shows every bounded table's size (what the soak suite holds flat): a
/// trunk call up is in the B2BUA's table and the dialog table, and leaves both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_size_of_every_bounded_table() {
    let gw = gateway_socket().await;
    let pbx = start(Setup {
        plan: us_plan(),
        extensions: vec![("3101", "national")],
        gateway: Some(gw.addr),
        ..Setup::default()
    })
    .await;
    let names: Vec<&str> = pbx
        .endpoint
        .table_sizes()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "table names repeat: {names:?}");
    for table in [
        "server_transactions",
        "client_transactions",
        "dialogs",
        "proxy_calls",
        "trunk_calls",
        "registered_extensions",
        "nonce_nc_tracked",
        "guard_trusted_pairs",
        "guard_flood_sources",
        "admission_leases_held",
        "hop_targets",
        "hop_nodes",
        "hop_replays",
    ] {
        assert!(names.contains(&table), "{table} missing from {names:?}");
    }
    let trunk_calls = "sipward_table_entries{table=\"trunk_calls\"}";
    let gw = towards(gw, &pbx);
    let phone = Ua::bind("127.0.0.21", pbx.sip, "3101").await;
    let (out, invite) = trunk_call(&phone, &gw, "12125550123").await;
    let contact = format!("Contact: <sip:{}>\r\n", gw.addr);
    gw.reply(&invite, 200, "OK", "gw1", &contact, "").await;
    let ok = phone.answer_to(&out, |c| c == 200).await;
    phone.in_dialog(&out, &ok, "ACK", out.cseq).await;
    // Sampled once a second by the server's writer.
    until("the trunk call is counted in its table", || {
        pbx.metric(trunk_calls) == 1
    })
    .await;
    assert!(pbx.metric("sipward_table_entries{table=\"dialogs\"}") >= 1);
    let text = pbx.endpoint.metrics.render();
    assert!(text.contains("sipward_write_behind_backlog "), "{text}");
    assert!(
        text.contains("sipward_table_entries{table=\"tcp_connections\"} 0"),
        "{text}"
    );
    phone.in_dialog(&out, &ok, "BYE", out.cseq + 1).await;
    let bye = gw
        .request_for("BYE", header(&invite, "Call-ID").expect("call-id"), 0)
        .await;
    gw.reply(&bye, 200, "OK", "", "", "").await;
    // The B2BUA keeps an answered call until its INVITE transactions end (64·T1 after
    // the 2xx, for retransmissions): then it leaves the table.
    pbx.advance(Duration::from_secs(33)).await;
    pbx.advance(Duration::from_secs(33)).await;
    until("the ended call leaves the table", || {
        pbx.metric(trunk_calls) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ringing_trunk_leg_outlives_timer_b_and_ends_at_the_ring_limit() {
    let gw = gateway_socket().await;
    let mut plan = us_plan();
    plan.classes.national.max_ring_seconds = 60;
    let pbx = start(Setup {
        plan,
        extensions: vec![("3201", "national")],
        gateway: Some(gw.addr),
        ..Setup::default()
    })
    .await;
    let gw = towards(gw, &pbx);
    let phone = Ua::bind("127.0.0.21", pbx.sip, "3201").await;
    let (out, invite) = trunk_call(&phone, &gw, "12125550124").await;
    let gw_call = header(&invite, "Call-ID").expect("call-id").to_owned();
    gw.reply(&invite, 180, "Ringing", "gw1", "", "").await;
    phone.answer_to(&out, |c| c == 180).await;
    // Timer A stops at the first provisional answer, and Timer B with it: 40 s of
    // ringing bring no retransmission, no 408 and no CANCEL.
    for _ in 0..4 {
        pbx.advance(Duration::from_secs(10)).await;
    }
    assert!(
        gw.quiet(|m| header(m, "Call-ID") == Some(gw_call.as_str()))
            .await,
        "nothing more to the trunk while it rings"
    );
    assert!(
        phone.quiet(|m| status(m) >= 200).await,
        "no final answer to the phone"
    );
    assert_eq!(pbx.endpoint.b2bua.active_for("3201"), 1);
    // The class's ring time (60 s) ends it: CANCEL to the trunk, 480 to the phone.
    pbx.advance(Duration::from_secs(21)).await;
    let cancel = gw.request_for("CANCEL", &gw_call, 0).await;
    let refused = phone.answer_to(&out, |c| c >= 300).await;
    assert_eq!(status(&refused), 480, "{refused}");
    phone.ack_failure(&out, &refused).await;
    gw.reply(&cancel, 200, "OK", "gw1", "", "").await;
    gw.reply(&invite, 487, "Request Terminated", "gw1", "", "")
        .await;
    gw.request_for("ACK", &gw_call, 0).await;
    assert_eq!(pbx.metric("sipward_trunk_legs_cancelled_total"), 1);
    // Answered and ACKed: the leg no longer counts.
    pbx.advance(Duration::from_millis(100)).await;
    assert_eq!(pbx.endpoint.b2bua.active_for("3201"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_after_timer_b_is_acked_and_hung_up() {
    let gw = gateway_socket().await;
    let pbx = start(Setup {
        plan: us_plan(),
        extensions: vec![("3301", "national")],
        gateway: Some(gw.addr),
        ..Setup::default()
    })
    .await;
    let gw = towards(gw, &pbx);
    let phone = Ua::bind("127.0.0.21", pbx.sip, "3301").await;
    let (out, invite) = trunk_call(&phone, &gw, "12125550125").await;
    let gw_call = header(&invite, "Call-ID").expect("call-id").to_owned();
    // Timer A retransmits the unanswered INVITE...
    pbx.advance(Duration::from_millis(600)).await;
    gw.wait("a retransmitted INVITE", |m| {
        method(m) == Some("INVITE") && header(m, "Call-ID") == Some(gw_call.as_str())
    })
    .await;
    // ...until Timer B gives up: the phone gets 408.
    for _ in 0..4 {
        pbx.advance(Duration::from_secs(8)).await;
    }
    let timeout = phone.answer_to(&out, |c| c >= 300).await;
    assert_eq!(status(&timeout), 408, "{timeout}");
    phone.ack_failure(&out, &timeout).await;
    // The trunk leg still counts: a 2xx may yet come.
    assert_eq!(pbx.endpoint.b2bua.active_for("3301"), 1);
    assert!(
        pbx.endpoint
            .b2bua
            .snapshot()
            .iter()
            .any(|c| c.caller == "3301"),
        "shown in `sipward calls` while it counts"
    );
    // It does: ACKed, then ended with BYE.
    gw.reply(
        &invite,
        200,
        "OK",
        "late",
        &format!("Contact: <sip:{}>\r\n", gw.addr),
        "",
    )
    .await;
    gw.request_for("ACK", &gw_call, 1).await;
    let bye = gw.request_for("BYE", &gw_call, 0).await;
    assert_eq!(tag_of(header(&bye, "To").expect("To")), Some("late"));
    gw.reply(&bye, 200, "OK", "", "", "").await;
    assert_eq!(pbx.metric("sipward_late_answers_ended_total"), 1);
    assert!(
        phone.quiet(|m| status(m) == 200).await,
        "the phone never hears of it"
    );
    // Another fork could still answer late: the leg counts until that window closes.
    assert_eq!(pbx.endpoint.b2bua.active_for("3301"), 1);
    pbx.advance(Duration::from_secs(33)).await;
    assert_eq!(pbx.endpoint.b2bua.active_for("3301"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_cancel_and_early_bye_cancel_the_trunk_leg() {
    let gw = gateway_socket().await;
    let pbx = start(Setup {
        plan: us_plan(),
        extensions: vec![("3401", "national")],
        gateway: Some(gw.addr),
        ..Setup::default()
    })
    .await;
    let gw = towards(gw, &pbx);
    let phone = Ua::bind("127.0.0.21", pbx.sip, "3401").await;
    for how in ["cancel", "bye"] {
        let (out, invite) = trunk_call(&phone, &gw, "12125550126").await;
        let gw_call = header(&invite, "Call-ID").expect("call-id").to_owned();
        gw.reply(&invite, 180, "Ringing", "gw1", "", "").await;
        let ringing = phone.answer_to(&out, |c| c == 180).await;
        if how == "cancel" {
            phone.cancel(&out).await;
            phone
                .wait("200 to CANCEL", |m| {
                    status(m) == 200 && header(m, "CSeq").is_some_and(|c| c.ends_with("CANCEL"))
                })
                .await;
        } else {
            // Hung up in the early dialog the 180 made.
            phone.in_dialog(&out, &ringing, "BYE", out.cseq + 1).await;
            phone
                .wait("200 to BYE", |m| {
                    status(m) == 200 && header(m, "CSeq").is_some_and(|c| c.ends_with("BYE"))
                })
                .await;
        }
        let terminated = phone.answer_to(&out, |c| c >= 300).await;
        assert_eq!(status(&terminated), 487, "{how}: {terminated}");
        phone.ack_failure(&out, &terminated).await;
        let cancel = gw.request_for("CANCEL", &gw_call, 0).await;
        gw.reply(&cancel, 200, "OK", "gw1", "", "").await;
        gw.reply(&invite, 487, "Request Terminated", "gw1", "", "")
            .await;
        gw.request_for("ACK", &gw_call, 0).await;
    }
    assert_eq!(pbx.metric("sipward_trunk_legs_cancelled_total"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_leg_counts_against_the_limits_until_its_final_end() {
    let gw = gateway_socket().await;
    let mut plan = us_plan();
    plan.limits.concurrent_external = 1;
    let pbx = start(Setup {
        plan,
        extensions: vec![("3501", "national"), ("3502", "national")],
        gateway: Some(gw.addr),
        ..Setup::default()
    })
    .await;
    let gw = towards(gw, &pbx);
    let phone = Ua::bind("127.0.0.21", pbx.sip, "3501").await;
    let (out, invite) = trunk_call(&phone, &gw, "12125550127").await;
    let gw_call = header(&invite, "Call-ID").expect("call-id").to_owned();
    gw.reply(&invite, 180, "Ringing", "gw1", "", "").await;
    phone.answer_to(&out, |c| c == 180).await;
    // The caller gives up; the far end never answers the CANCEL nor the INVITE.
    phone.cancel(&out).await;
    gw.request_for("CANCEL", &gw_call, 0).await;
    let terminated = phone.answer_to(&out, |c| c >= 300).await;
    phone.ack_failure(&out, &terminated).await;
    assert_eq!(pbx.endpoint.b2bua.active_for("3501"), 1, "still counts");
    // A second call while it counts breaks the limit of one.
    let second = phone.invite("12125550128", "").await;
    let refused = phone.answer_to(&second, |c| c >= 300).await;
    assert_eq!(status(&refused), 403, "{refused}");
    phone.ack_failure(&second, &refused).await;
    assert!(
        gw.quiet(|m| method(m) == Some("INVITE") && m.contains("2125550128"))
            .await
    );
    // 64·T1 after the CANCEL the INVITE is given up, and for 64·T1 more a late 2xx
    // could still come: it counts all that time, then no more.
    pbx.advance(Duration::from_secs(33)).await;
    assert_eq!(
        pbx.endpoint.b2bua.active_for("3501"),
        1,
        "the late-2xx window"
    );
    pbx.advance(Duration::from_secs(33)).await;
    assert_eq!(pbx.endpoint.b2bua.active_for("3501"), 0, "over");
    assert!(pbx.endpoint.b2bua.snapshot().is_empty());
    // Another extension was never held back.
    let other = Ua::bind("127.0.0.22", pbx.sip, "3502").await;
    trunk_call(&other, &gw, "12125550129").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_calls_go_through_within_the_caps_and_alerts_are_merged() {
    let gw = gateway_socket().await;
    let mut plan = us_plan();
    plan.emergency.per_extension = 1;
    plan.emergency.total = 2;
    let pbx = start(Setup {
        plan,
        extensions: vec![
            ("3601", "internal"),
            ("3602", "internal"),
            ("3603", "internal"),
        ],
        gateway: Some(gw.addr),
        admin_email: true,
        ..Setup::default()
    })
    .await;
    let gw = towards(gw, &pbx);
    let emergency_invites = |m: &str| {
        method(m) == Some("INVITE") && m.lines().next().is_some_and(|l| l.contains("sip:911@"))
    };
    let a = Ua::bind("127.0.0.21", pbx.sip, "3601").await;
    let b = Ua::bind("127.0.0.22", pbx.sip, "3602").await;
    let c = Ua::bind("127.0.0.23", pbx.sip, "3603").await;
    // An internal-class extension reaches the emergency number.
    let first = a.invite("911", "").await;
    let invite = gw.wait("the first emergency call", emergency_invites).await;
    gw.reply(&invite, 180, "Ringing", "e1", "", "").await;
    a.answer_to(&first, |code| code == 180).await;
    // One at a time per extension: a second one from it is refused.
    let again = a.invite("911", "").await;
    let busy = a.answer_to(&again, |code| code >= 300).await;
    assert_eq!(status(&busy), 486, "{busy}");
    a.ack_failure(&again, &busy).await;
    // Another extension's goes (two in all)...
    let second = b.invite("911", "").await;
    let invite2 = gw.wait("the second extension's", emergency_invites).await;
    gw.reply(&invite2, 180, "Ringing", "e2", "", "").await;
    b.answer_to(&second, |code| code == 180).await;
    // ...and the global cap holds a third.
    let third = c.invite("911", "").await;
    let capped = c.answer_to(&third, |code| code >= 300).await;
    assert_eq!(status(&capped), 486, "{capped}");
    c.ack_failure(&third, &capped).await;
    assert!(
        gw.quiet(emergency_invites).await,
        "two emergency calls reached the trunk, no more"
    );
    assert_eq!(pbx.metric("sipward_emergency_refused_total"), 2);
    assert_eq!(pbx.metric("sipward_emergency_calls_total"), 2);
    // The first ends; the extension may call again, and its alerts are one mail.
    gw.reply(&invite, 486, "Busy Here", "e1", "", "").await;
    a.answer_to(&first, |code| code == 486).await;
    let fourth = a.invite("911", "").await;
    gw.wait("the extension's next emergency call", emergency_invites)
        .await;
    let _ = fourth;
    let deadline = Instant::now() + ANSWER;
    let alerts = loop {
        let alerts: Vec<_> = pbx
            .registry
            .outbox()
            .await
            .expect("outbox")
            .into_iter()
            .filter(|m| m.number == "alert:3601")
            .collect();
        let mut conn = pbx.registry.store().conn().await.expect("conn");
        let window = store::outbox::alert_window(&mut conn, "3601", "emergency")
            .await
            .expect("read");
        if window.as_ref().is_some_and(|w| w.count >= 2) || Instant::now() > deadline {
            break (alerts, window);
        }
        drop(conn);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (mails, window) = alerts;
    let emergency_mails = mails
        .iter()
        .filter(|m| window.as_ref().is_some_and(|w| w.mail_id == m.id))
        .count();
    assert_eq!(
        emergency_mails, 1,
        "one mail for two emergency calls: {mails:?}"
    );
    assert_eq!(window.map(|w| w.count), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_transfer_abroad_is_the_referrers_call() {
    let gw = gateway_socket().await;
    let pbx = start(Setup {
        plan: us_plan(),
        extensions: vec![("3701", "international"), ("3702", "internal")],
        gateway: Some(gw.addr),
        ..Setup::default()
    })
    .await;
    let gw = towards(gw, &pbx);
    let referrer = Ua::bind("127.0.0.21", pbx.sip, "3701").await;
    let transferee = Ua::bind("127.0.0.22", pbx.sip, "3702").await;
    transferee.register().await;
    // Control: the internal-class extension cannot call abroad by itself.
    let own = transferee.invite("011442079460000", "").await;
    let refused = transferee.answer_to(&own, |c| c >= 300).await;
    assert_eq!(status(&refused), 403, "{refused}");
    transferee.ack_failure(&own, &refused).await;
    // A call between them, answered.
    let out = referrer.invite("3702", "").await;
    let invite = transferee.request_for("INVITE", &out.call_id, 0).await;
    transferee
        .reply(
            &invite,
            200,
            "OK",
            "callee",
            &format!("Contact: <sip:3702@{}>\r\n", transferee.addr),
            "",
        )
        .await;
    let ok = referrer.answer_to(&out, |c| c == 200).await;
    let route = header(&ok, "Record-Route")
        .expect("record-routed")
        .to_owned();
    // The referrer (international) sends the transferee abroad.
    let refer = format!(
        "REFER sip:3702@{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKrefer1;rport\r\n\
         Route: {route}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 3 REFER\r\n\
         Refer-To: <sip:011442079460000@{}>\r\nContent-Length: 0\r\n\r\n",
        transferee.addr,
        referrer.addr,
        out.from,
        header(&ok, "To").expect("To"),
        out.call_id,
        pbx.sip
    );
    referrer.send(&refer).await;
    let got = transferee.request_for("REFER", &out.call_id, 0).await;
    transferee.reply(&got, 202, "Accepted", "", "", "").await;
    // The transferee places the call: it goes out, charged to the referrer.
    transferee.invite("011442079460000", "").await;
    gw.wait("the transferred call", |m| {
        method(m) == Some("INVITE") && m.contains("011442079460000")
    })
    .await;
    assert_eq!(pbx.endpoint.b2bua.active_for("3701"), 1, "the referrer's");
    assert_eq!(pbx.endpoint.b2bua.active_for("3702"), 0);
    // The grant is used once: the same number again is the transferee's own call.
    let again = transferee.invite("011442079460000", "").await;
    let refused = transferee.answer_to(&again, |c| c >= 300).await;
    assert_eq!(status(&refused), 403, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_answer_passes_only_from_an_intercom_class() {
    let mut plan = us_plan();
    plan.classes.international.intercom = true;
    let pbx = start(Setup {
        plan,
        extensions: vec![
            ("3801", "international"),
            ("3802", "national"),
            ("3803", "internal"),
        ],
        ..Setup::default()
    })
    .await;
    let intercom = Ua::bind("127.0.0.21", pbx.sip, "3801").await;
    let plain = Ua::bind("127.0.0.22", pbx.sip, "3802").await;
    let callee = Ua::bind("127.0.0.23", pbx.sip, "3803").await;
    callee.register().await;
    let hint = "Call-Info: <sip:127.0.0.1>;answer-after=0\r\nAlert-Info: info=alert-autoanswer\r\n";
    let out = intercom.invite("3803", hint).await;
    let invite = callee.request_for("INVITE", &out.call_id, 0).await;
    assert!(
        invite.contains("answer-after=0") && invite.contains("alert-autoanswer"),
        "{invite}"
    );
    let out = plain.invite("3803", hint).await;
    let invite = callee.request_for("INVITE", &out.call_id, 0).await;
    assert!(
        !invite.contains("answer-after") && !invite.contains("autoanswer"),
        "{invite}"
    );
    assert_eq!(pbx.metric("sipward_auto_answer_removed_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_egress_rule_refuses_is_counted_by_reason() {
    let pbx = start(Setup {
        extensions: vec![("3901", "national")],
        ..Setup::default()
    })
    .await;
    let phone = Ua::bind("127.0.0.21", pbx.sip, "3901").await;
    phone.register().await;
    // A response no transaction of ours sent: dropped, counted, and nothing relayed.
    phone
        .send(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKforged\r\n\
             Via: SIP/2.0/UDP 127.0.0.66:5060;branch=z9hG4bKvictim\r\nFrom: <sip:a@b>;tag=1\r\n\
             To: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
    let deadline = Instant::now() + ANSWER;
    while pbx.metric("sipward_responses_dropped_total{reason=\"no_transaction\"}") == 0 {
        assert!(
            Instant::now() < deadline,
            "the forged response was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A response to a request sipward never received: refused by the rule itself.
    let stray = sip::transaction::TxKey::new("z9hG4bKnever", "127.0.0.66", Some(5060), "OPTIONS")
        .expect("key");
    let bytes = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.66:5060;branch=z9hG4bKnever\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".to_vec();
    assert!(pbx.endpoint.egress.respond(&stray, bytes).is_err());
    let text = pbx.endpoint.metrics.render();
    assert!(
        text.contains("sipward_egress_denied_total{reason=\"no_server_transaction\"} 1"),
        "{text}"
    );
    for reason in [
        "not_a_registration",
        "not_a_trunk",
        "no_dialog",
        "not_from_a_party",
    ] {
        assert!(
            text.contains(&format!(
                "sipward_egress_denied_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_over_tcp_on_the_connection_a_phone_registered_on() {
    let pbx = start(Setup {
        extensions: vec![("4001", "national"), ("4002", "national")],
        ..Setup::default()
    })
    .await;
    let tcp = Ua::connect("127.0.0.21", pbx.sip, "4001").await;
    let udp = Ua::bind("127.0.0.22", pbx.sip, "4002").await;
    tcp.register().await;
    udp.register().await;
    // UDP to TCP: the INVITE comes on the phone's own connection.
    let out = udp.invite("4001", "").await;
    let invite = tcp.request_for("INVITE", &out.call_id, 0).await;
    assert!(invite.contains("Via: SIP/2.0/TCP "), "{invite}");
    assert!(
        invite.contains(";transport=tcp;lr>"),
        "a Record-Route the TCP phone reaches on its connection: {invite}"
    );
    assert!(
        invite.contains(";lr>\r\nRecord-Route: <sip:127.0.0.1:"),
        "two, RFC 5658: {invite}"
    );
    tcp.reply(
        &invite,
        200,
        "OK",
        "t1",
        &format!("Contact: <sip:4001@{};transport=tcp>\r\n", tcp.addr),
        "",
    )
    .await;
    let ok = udp.answer_to(&out, |c| c == 200).await;
    assert!(ok.contains("tag=t1"));
    // TCP to UDP: the call goes the other way too (it used to get 480).
    let out = tcp.invite("4002", "").await;
    let invite = udp.request_for("INVITE", &out.call_id, 0).await;
    udp.reply(&invite, 486, "Busy Here", "u1", "", "").await;
    let busy = tcp.answer_to(&out, |c| c >= 300).await;
    assert_eq!(status(&busy), 486, "{busy}");
}

/// The URI inside a name-addr header value (`<sip:...>;params` → `sip:...`).
fn uri_of(value: &str) -> &str {
    value
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map_or(value, |(uri, _)| uri)
}

/// A request the callee of `invite` (it answered with tag `tag`) sends in that dialog,
/// through the Record-Route the INVITE carried.
fn callee_request(callee: &Ua, invite: &str, tag: &str, method_: &str, extra: &str) -> String {
    let route = header(invite, "Record-Route")
        .map(|r| format!("Route: {r}\r\n"))
        .unwrap_or_default();
    format!(
        "{method_} {} SIP/2.0\r\nVia: {}\r\n{route}Max-Forwards: 70\r\nFrom: {};tag={tag}\r\n\
         To: {}\r\nCall-ID: {}\r\nCSeq: 7 {method_}\r\nContact: <sip:{}@{}>\r\n{extra}\
         Content-Length: 0\r\n\r\n",
        uri_of(header(invite, "Contact").expect("Contact")),
        callee.via(&callee.next("z9hG4bKuas")),
        header(invite, "To").expect("To"),
        header(invite, "From").expect("From"),
        header(invite, "Call-ID").expect("Call-ID"),
        callee.number,
        callee.addr,
    )
}

/// The gateway calls `dialled` from its configured address (no challenge: it is known
/// by its address).
async fn call_in(gw: &Ua, dialled: &str) -> Outgoing {
    let ruri = format!("sip:{dialled}@{}", gw.pbx);
    let out = Outgoing {
        call_id: gw.next("in"),
        from: format!("<sip:+15551230000@{}>;tag={}", gw.addr, gw.next("ft")),
        to: format!("<{ruri}>"),
        ruri,
        branch: gw.next("z9hG4bKin"),
        cseq: 1,
    };
    gw.send(&gw.invite_text(&out, "")).await;
    out
}

/// The callee `ua` answers the INVITE of `call_id` with 200 (tag `tag`).
async fn pick_up(ua: &Ua, call_id: &str, tag: &str) -> String {
    let invite = ua.request_for("INVITE", call_id, 0).await;
    let contact = format!("Contact: <sip:{}@{}>\r\n", ua.number, ua.addr);
    ua.reply(&invite, 200, "OK", tag, &contact, "").await;
    invite
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transfer_or_redirect_goes_to_a_trunk_and_a_refer_names_one_target() {
    let gw = gateway_socket().await;
    let pbx = start(Setup {
        plan: us_plan(),
        extensions: vec![
            ("4201", "international"),
            ("4202", "international"),
            ("4203", "international"),
        ],
        gateway: Some(gw.addr),
        dids: vec![("12125550100", "4201"), ("12125550101", "4202")],
        ..Setup::default()
    })
    .await;
    let gw = towards(gw, &pbx);
    let a = Ua::bind("127.0.0.21", pbx.sip, "4201").await;
    let b = Ua::bind("127.0.0.22", pbx.sip, "4202").await;
    let c = Ua::bind("127.0.0.23", pbx.sip, "4203").await;
    for ua in [&a, &b, &c] {
        ua.register().await;
    }
    let to_c = format!("Refer-To: <sip:4203@{}>\r\n", pbx.sip);

    // Between extensions a REFER to an extension passes, but not one naming two targets.
    let out = b.invite("4201", "").await;
    let invite = pick_up(&a, &out.call_id, "a1").await;
    let ok = b.answer_to(&out, |c| c == 200).await;
    b.in_dialog(&out, &ok, "ACK", out.cseq).await;
    let two = format!("{to_c}Refer-To: <sip:011442079460000@{}>\r\n", pbx.sip);
    a.send(&callee_request(&a, &invite, "a1", "REFER", &two))
        .await;
    let refused = a
        .wait("the answer to a REFER with two targets", |m| {
            header(m, "CSeq") == Some("7 REFER") && status(m) >= 200
        })
        .await;
    assert_eq!(status(&refused), 403, "{refused}");
    assert!(b.quiet(|m| method(m) == Some("REFER")).await);
    a.send(&callee_request(&a, &invite, "a1", "REFER", &to_c))
        .await;
    b.request_for("REFER", &out.call_id, 0).await;

    // A call from the trunk: the same REFER towards the gateway is refused, target inside
    // or not (the gateway would place the call itself, at the owner's cost).
    let inbound = call_in(&gw, "12125550100").await;
    let invite = pick_up(&a, &inbound.call_id, "a2").await;
    let ok = gw.answer_to(&inbound, |c| c == 200).await;
    gw.in_dialog(&inbound, &ok, "ACK", inbound.cseq).await;
    let before = pbx.metric("sipward_transfers_refused_total");
    a.send(&callee_request(&a, &invite, "a2", "REFER", &to_c))
        .await;
    let refused = a
        .wait("the answer to a REFER towards the trunk", |m| {
            header(m, "CSeq") == Some("7 REFER")
                && header(m, "Call-ID") == Some(inbound.call_id.as_str())
                && status(m) >= 200
        })
        .await;
    assert_eq!(status(&refused), 403, "{refused}");
    assert!(gw.quiet(|m| method(m) == Some("REFER")).await);
    assert_eq!(pbx.metric("sipward_transfers_refused_total"), before + 1);

    // A redirect to an extension reaches an extension caller...
    let moved = format!("Contact: <sip:4203@{}>\r\n", pbx.sip);
    let out = a.invite("4202", "").await;
    let invite = b.request_for("INVITE", &out.call_id, 0).await;
    b.reply(&invite, 302, "Moved Temporarily", "b1", &moved, "")
        .await;
    let redirected = a.answer_to(&out, |c| c >= 300).await;
    assert_eq!(status(&redirected), 302, "{redirected}");
    a.ack_failure(&out, &redirected).await;
    // ...but never goes back to a trunk.
    let inbound = call_in(&gw, "12125550101").await;
    let invite = b.request_for("INVITE", &inbound.call_id, 0).await;
    b.reply(&invite, 302, "Moved Temporarily", "b2", &moved, "")
        .await;
    let answer = gw.answer_to(&inbound, |c| c >= 300).await;
    assert_eq!(status(&answer), 480, "{answer}");
    assert!(!answer.contains("4203"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_that_ends_its_early_dialog_has_its_invite_cancelled() {
    let gw = gateway_socket().await;
    let pbx = start(Setup {
        plan: us_plan(),
        extensions: vec![("4301", "national")],
        gateway: Some(gw.addr),
        ..Setup::default()
    })
    .await;
    let gw = towards(gw, &pbx);
    let phone = Ua::bind("127.0.0.21", pbx.sip, "4301").await;
    let (out, invite) = trunk_call(&phone, &gw, "12125550130").await;
    let gw_call = header(&invite, "Call-ID").expect("call-id").to_owned();
    let contact = format!("Contact: <sip:{}>\r\n", gw.addr);
    gw.reply(&invite, 183, "Session Progress", "gw1", &contact, "")
        .await;
    phone.answer_to(&out, |c| c == 183).await;
    // The trunk hangs up its early dialog, and never answers the INVITE.
    gw.send(&callee_request(&gw, &invite, "gw1", "BYE", ""))
        .await;
    gw.wait("200 to the trunk's BYE", |m| {
        status(m) == 200 && header(m, "CSeq") == Some("7 BYE")
    })
    .await;
    let over = phone.answer_to(&out, |c| c >= 300).await;
    assert_eq!(status(&over), 480, "{over}");
    phone.ack_failure(&out, &over).await;
    gw.request_for("CANCEL", &gw_call, 0).await;
    assert_eq!(pbx.endpoint.b2bua.active_for("4301"), 1, "until its end");
    // 64·T1 after the CANCEL the INVITE is given up, 64·T1 more for a late 2xx: then
    // nothing counts it any more.
    pbx.advance(Duration::from_secs(33)).await;
    pbx.advance(Duration::from_secs(33)).await;
    assert_eq!(pbx.endpoint.b2bua.active_for("4301"), 0);
    assert!(pbx.endpoint.b2bua.snapshot().is_empty());
}

/// The calls of the server's trunk calls as `sipward calls` shows them, by caller.
fn trunk_callers(pbx: &Pbx) -> Vec<String> {
    let mut callers: Vec<String> = pbx
        .endpoint
        .b2bua
        .snapshot()
        .into_iter()
        .map(|r| r.caller)
        .collect();
    callers.sort();
    callers
}

/// Waits (real time, bounded) until `pred` holds of the server.
async fn until(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + ANSWER;
    while !pred() {
        assert!(Instant::now() < deadline, "{what} within {ANSWER:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gateway answers its INVITE 200 and the phone ACKs: an answered trunk call. The
/// phone's 200.
async fn answered_trunk_call(
    phone: &Ua,
    gw: &Ua,
    out: &Outgoing,
    invite: &str,
    tag: &str,
) -> String {
    let contact = format!("Contact: <sip:{}>\r\n", gw.addr);
    gw.reply(invite, 200, "OK", tag, &contact, "").await;
    let ok = phone.answer_to(out, |c| c == 200).await;
    gw.request_for("ACK", header(invite, "Call-ID").expect("call-id"), 0)
        .await;
    phone.in_dialog(out, &ok, "ACK", out.cseq).await;
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_extensions_trunk_call_ends_with_bye_on_both_legs_but_an_emergency_call_goes_on()
{
    let gw = gateway_socket().await;
    let pbx = start(Setup {
        plan: us_plan(),
        extensions: vec![
            ("4401", "national"),
            ("4402", "national"),
            ("4403", "national"),
        ],
        gateway: Some(gw.addr),
        ..Setup::default()
    })
    .await;
    let gw = towards(gw, &pbx);
    let doomed = Ua::bind("127.0.0.21", pbx.sip, "4401").await;
    let other = Ua::bind("127.0.0.22", pbx.sip, "4402").await;
    let rescued = Ua::bind("127.0.0.23", pbx.sip, "4403").await;
    let (out, invite) = trunk_call(&doomed, &gw, "12125550141").await;
    let ok = answered_trunk_call(&doomed, &gw, &out, &invite, "gw1").await;
    let (other_out, other_invite) = trunk_call(&other, &gw, "12125550142").await;
    answered_trunk_call(&other, &gw, &other_out, &other_invite, "gw2").await;
    let sos = rescued.invite("911", "").await;
    let sos_invite = gw
        .wait("the emergency call", |m| {
            method(m) == Some("INVITE") && m.lines().next().is_some_and(|l| l.contains("sip:911@"))
        })
        .await;
    answered_trunk_call(&rescued, &gw, &sos, &sos_invite, "gw3").await;
    assert_eq!(trunk_callers(&pbx), ["4401", "4402", "4403"]);

    // 4401 is removed, and 4403 too, in the middle of its emergency call.
    pbx.registry.remove_extension("4401").await.expect("remove");
    pbx.registry.remove_extension("4403").await.expect("remove");
    // The directory reload ends 4401's call: BYE to the phone and to the gateway.
    let gw_call = header(&invite, "Call-ID").expect("call-id");
    let bye_gw = gw.request_for("BYE", gw_call, 0).await;
    let bye_phone = doomed.request_for("BYE", &out.call_id, 0).await;
    // Each in its own dialog: the phone's with sipward's tag, the trunk's with the
    // gateway's.
    assert_eq!(
        header(&bye_phone, "From").and_then(tag_of),
        header(&ok, "To").and_then(tag_of),
        "{bye_phone}"
    );
    assert_eq!(
        header(&bye_phone, "To").and_then(tag_of),
        tag_of(&out.from),
        "{bye_phone}"
    );
    assert_eq!(
        header(&bye_gw, "To").and_then(tag_of),
        Some("gw1"),
        "{bye_gw}"
    );
    gw.reply(&bye_gw, 200, "OK", "", "", "").await;
    doomed.reply(&bye_phone, 200, "OK", "", "", "").await;
    until("4401's call gone from the active calls", || {
        trunk_callers(&pbx) == ["4402", "4403"]
    })
    .await;
    assert_eq!(pbx.metric("sipward_calls_ended_revoked_total"), 1);
    // Nothing ends the other extension's call or the emergency call.
    for call_id in [
        header(&other_invite, "Call-ID").expect("call-id"),
        header(&sos_invite, "Call-ID").expect("call-id"),
    ] {
        assert!(
            gw.quiet(|m| method(m) == Some("BYE") && header(m, "Call-ID") == Some(call_id))
                .await
        );
    }
    assert!(other.quiet(|m| method(m) == Some("BYE")).await);
    assert!(rescued.quiet(|m| method(m) == Some("BYE")).await);
    assert_eq!(pbx.endpoint.b2bua.emergencies("4403"), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_ends_the_extensions_calls_between_extensions_with_bye_to_both_phones() {
    let pbx = start(Setup {
        extensions: vec![
            ("4501", "national"),
            ("4502", "national"),
            ("4503", "national"),
            ("4504", "national"),
            ("4505", "national"),
        ],
        ..Setup::default()
    })
    .await;
    let caller = Ua::bind("127.0.0.21", pbx.sip, "4501").await;
    let callee = Ua::bind("127.0.0.22", pbx.sip, "4502").await;
    let bystander = Ua::bind("127.0.0.23", pbx.sip, "4503").await;
    let friend = Ua::bind("127.0.0.24", pbx.sip, "4504").await;
    let ringer = Ua::bind("127.0.0.25", pbx.sip, "4505").await;
    callee.register().await;
    friend.register().await;

    // 4501 calls 4502, who answers; each side sends a request in the dialog.
    let out = caller.invite("4502", "").await;
    let invite = pick_up(&callee, &out.call_id, "b1").await;
    let ok = caller.answer_to(&out, |c| c == 200).await;
    caller.in_dialog(&out, &ok, "ACK", out.cseq).await;
    callee.request_for("ACK", &out.call_id, 0).await;
    caller.in_dialog(&out, &ok, "INFO", 5).await;
    let info = callee.request_for("INFO", &out.call_id, 5).await;
    callee.reply(&info, 200, "OK", "", "", "").await;
    caller
        .wait("200 to the caller's INFO", |m| {
            status(m) == 200 && header(m, "CSeq") == Some("5 INFO")
        })
        .await;
    callee
        .send(&callee_request(&callee, &invite, "b1", "INFO", ""))
        .await;
    let info = caller.request_for("INFO", &out.call_id, 7).await;
    caller.reply(&info, 200, "OK", "", "", "").await;
    callee
        .wait("200 to the callee's INFO", |m| {
            status(m) == 200 && header(m, "CSeq") == Some("7 INFO")
        })
        .await;
    // Control: 4503 calls 4504, answered.
    let other = bystander.invite("4504", "").await;
    pick_up(&friend, &other.call_id, "d1").await;
    let other_ok = bystander.answer_to(&other, |c| c == 200).await;
    bystander
        .in_dialog(&other, &other_ok, "ACK", other.cseq)
        .await;
    // And 4505 calls 4502, which rings.
    let ringing = ringer.invite("4502", "").await;
    let ring_invite = callee.request_for("INVITE", &ringing.call_id, 0).await;
    callee
        .reply(&ring_invite, 180, "Ringing", "r1", "", "")
        .await;
    ringer.answer_to(&ringing, |c| c == 180).await;

    // 4502's password changes.
    pbx.registry
        .update_extension(
            "4502",
            accounts::extension::ExtensionChange {
                password: Some("Wq8-Lz3r-Tk6v-Pm2x-Hn9c".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update");

    // A BYE to each phone, in the other's name: its tags, a CSeq above what the other
    // sent, the phone's Contact as Request-URI.
    let to_callee = callee.request_for("BYE", &out.call_id, 0).await;
    let to_caller = caller.request_for("BYE", &out.call_id, 0).await;
    let caller_tag = tag_of(&out.from).expect("tag");
    assert!(
        to_callee.starts_with(&format!("BYE sip:4502@{} SIP/2.0", callee.addr)),
        "{to_callee}"
    );
    assert_eq!(
        header(&to_callee, "From").and_then(tag_of),
        Some(caller_tag)
    );
    assert_eq!(header(&to_callee, "To").and_then(tag_of), Some("b1"));
    assert_eq!(header(&to_callee, "CSeq"), Some("6 BYE"), "{to_callee}");
    assert!(
        to_caller.starts_with(&format!("BYE sip:4501@{} SIP/2.0", caller.addr)),
        "{to_caller}"
    );
    assert_eq!(header(&to_caller, "From").and_then(tag_of), Some("b1"));
    assert_eq!(header(&to_caller, "To").and_then(tag_of), Some(caller_tag));
    assert_eq!(header(&to_caller, "CSeq"), Some("8 BYE"), "{to_caller}");
    callee.reply(&to_callee, 200, "OK", "", "", "").await;
    caller.reply(&to_caller, 200, "OK", "", "", "").await;
    // The ringing call is cancelled, and its caller gets the 487.
    let cancel = callee.request_for("CANCEL", &ringing.call_id, 0).await;
    callee.reply(&cancel, 200, "OK", "r1", "", "").await;
    callee
        .reply(&ring_invite, 487, "Request Terminated", "r1", "", "")
        .await;
    let gone = ringer.answer_to(&ringing, |c| c >= 300).await;
    assert_eq!(status(&gone), 487, "{gone}");
    assert_eq!(pbx.metric("sipward_calls_ended_revoked_total"), 2);
    // The dialog is over: what the caller sends in it now gets 481.
    let ended = || {
        pbx.endpoint
            .dialogs
            .of(&pbx::dialog::Who::Extension("4502".into()))
            .is_empty()
    };
    until("the dialog to end", ended).await;
    caller.in_dialog(&out, &ok, "INFO", 9).await;
    let refused = caller
        .wait("an answer to an INFO in the ended dialog", |m| {
            header(m, "CSeq") == Some("9 INFO") && status(m) >= 200
        })
        .await;
    assert_eq!(status(&refused), 481, "{refused}");
    // Control: the other call goes on, untouched.
    assert!(bystander.quiet(|m| method(m) == Some("BYE")).await);
    assert!(friend.quiet(|m| method(m) == Some("BYE")).await);
    bystander.in_dialog(&other, &other_ok, "INFO", 3).await;
    friend.request_for("INFO", &other.call_id, 3).await;
}

/// The `REGISTER` with CSeq `cseq` that the hostile registrar `reg` received.
async fn register_at(reg: &Ua, cseq: u32) -> String {
    reg.wait(&format!("REGISTER {cseq}"), |m| {
        method(m) == Some("REGISTER")
            && header(m, "CSeq").is_some_and(|c| c.starts_with(&format!("{cseq} ")))
    })
    .await
}

/// Whether no REGISTER with CSeq `cseq` comes.
async fn no_register(reg: &Ua, cseq: u32) -> bool {
    reg.quiet(|m| {
        method(m) == Some("REGISTER")
            && header(m, "CSeq").is_some_and(|c| c.starts_with(&format!("{cseq} ")))
    })
    .await
}

/// sipward's registration at a hostile registrar: a challenge without qop and one for
/// another realm are not answered, twenty stale challenges are answered a bounded
/// number of times and then backed off from, a 136-year grant is refreshed within the
/// clamp, and a 200 from another address registers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_client_stands_up_to_a_hostile_registrar() {
    let reg = Ua::bind("127.0.0.8", "127.0.0.1:9".parse().expect("addr"), "900").await;
    let pbx = start(Setup {
        provider: Some(reg.addr),
        ..Setup::default()
    })
    .await;
    let reg = towards(reg, &pbx);
    let registered = || pbx.endpoint.providers.registered("carrier");
    let md5 =
        "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"n1\", qop=\"auth\", algorithm=MD5\r\n";
    let sha = "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"n2\", qop=\"auth\", algorithm=SHA-256\r\n";

    // A challenge without qop: not answered.
    let r1 = register_at(&reg, 1).await;
    reg.reply(
        &r1,
        401,
        "Unauthorized",
        "r",
        "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"bare\"\r\n",
        "",
    )
    .await;
    assert!(
        no_register(&reg, 2).await,
        "a qop-less challenge was answered"
    );
    assert!(!registered());

    // After the backoff: challenged with MD5 and SHA-256, it answers SHA-256 and
    // pins the realm; a 200 granting 4294967295 s registers it.
    pbx.advance(Duration::from_secs(31)).await;
    let r2 = register_at(&reg, 2).await;
    assert!(header(&r2, "Authorization").is_none());
    reg.reply(&r2, 401, "Unauthorized", "r", &format!("{md5}{sha}"), "")
        .await;
    let r3 = register_at(&reg, 3).await;
    let auth = header(&r3, "Authorization").expect("answered");
    assert!(
        auth.contains("realm=\"carrier\"")
            && auth.contains("algorithm=SHA-256")
            && auth.contains("qop=auth"),
        "{auth}"
    );
    reg.reply(&r3, 200, "OK", "r", "Expires: 4294967295\r\n", "")
        .await;
    until("registered", registered).await;

    // Refreshed at half the clamped grant, not in 68 years.
    pbx.advance(Duration::from_secs(1_790)).await;
    assert!(no_register(&reg, 4).await, "refreshed too early");
    pbx.advance(Duration::from_secs(15)).await;
    let r4 = register_at(&reg, 4).await;

    // A challenge for another realm: not answered, and the registration is failed.
    reg.reply(
        &r4,
        401,
        "Unauthorized",
        "r",
        "WWW-Authenticate: Digest realm=\"elsewhere\", nonce=\"n3\", qop=\"auth\"\r\n",
        "",
    )
    .await;
    assert!(
        no_register(&reg, 5).await,
        "another realm's challenge was answered"
    );
    until("the registration failed", || !registered()).await;

    // Twenty stale challenges: at most three answered after the first answer.
    pbx.advance(Duration::from_secs(31)).await;
    let r5 = register_at(&reg, 5).await;
    reg.reply(&r5, 401, "Unauthorized", "r", sha, "").await;
    let mut last = register_at(&reg, 6).await;
    let mut cseq = 6;
    let mut answered = 0;
    for i in 0..20 {
        let stale = format!(
            "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"s{i}\", qop=\"auth\", algorithm=SHA-256, stale=true\r\n"
        );
        reg.reply(&last, 401, "Unauthorized", "r", &stale, "").await;
        match reg
            .try_wait(QUIET, |m| {
                method(m) == Some("REGISTER")
                    && header(m, "CSeq").is_some_and(|c| c.starts_with(&format!("{} ", cseq + 1)))
            })
            .await
        {
            Some(m) => {
                answered += 1;
                cseq += 1;
                last = m;
            }
            None => break,
        }
    }
    assert_eq!(answered, 3, "stale challenges answered");
    // Backoff: the previous failure doubled the wait to 60 s.
    pbx.advance(Duration::from_secs(40)).await;
    assert!(
        no_register(&reg, cseq + 1).await,
        "no backoff after the stale run"
    );
    pbx.advance(Duration::from_secs(25)).await;
    let again = register_at(&reg, cseq + 1).await;
    reg.reply(&again, 401, "Unauthorized", "r", sha, "").await;
    let answer = register_at(&reg, cseq + 2).await;

    // A 200 from another address, with the right branch: ignored.
    // Another host, then another port of the registrar's host.
    for ip in ["127.0.0.9", "127.0.0.8"] {
        let other = towards(Ua::bind(ip, pbx.sip, "901").await, &pbx);
        other
            .reply(&answer, 200, "OK", "r", "Expires: 600\r\n", "")
            .await;
    }
    let dropped = "sipward_responses_dropped_total{reason=\"wrong_source\"}";
    until("the 200s from other addresses dropped", || {
        pbx.metric(dropped) >= 2
    })
    .await;
    assert!(
        !registered(),
        "a 200 from another address registered sipward"
    );
    // The registrar's own 200 does.
    reg.reply(&answer, 200, "OK", "r", "Expires: 600\r\n", "")
        .await;
    until("registered by the registrar itself", registered).await;
}

/// Voicemail boxes in a directory: what the server's store side does, without accounts.
#[derive(Debug)]
struct Boxes {
    dir: std::path::PathBuf,
    /// (file, caller, duration in ms) of each message filed.
    filed: Mutex<Vec<(std::path::PathBuf, String, u64)>>,
}

impl pbx::voicemail::Deposits for Boxes {
    fn begin(
        &self,
        mailbox: &str,
    ) -> pbx::voicemail::BoxFuture<'_, Option<pbx::voicemail::Opened>> {
        let mailbox = mailbox.to_owned();
        Box::pin(async move {
            use std::os::unix::fs::OpenOptionsExt;
            if mailbox != "1002" {
                return None;
            }
            let n = self.filed.lock().expect("filed").len();
            let path = self.dir.join(format!("{mailbox}-{n}.wav"));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .ok()?;
            Some(pbx::voicemail::Opened {
                path,
                handle: Box::new(()),
            })
        })
    }

    fn commit(
        &self,
        opened: pbx::voicemail::Opened,
        caller: String,
        duration_ms: u64,
    ) -> pbx::voicemail::BoxFuture<'_, Option<pbx::voicemail::Waiting>> {
        Box::pin(async move {
            let mut f = self.filed.lock().expect("filed");
            f.push((opened.path, caller, duration_ms));
            Some(pbx::voicemail::Waiting {
                new: f.len() as u32,
                saved: 0,
            })
        })
    }

    fn discard(&self, opened: pbx::voicemail::Opened) {
        let _ = std::fs::remove_file(opened.path);
    }

    fn greeting(&self, _: &str) -> pbx::voicemail::BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(async { None })
    }

    fn ring_times(
        &self,
    ) -> pbx::voicemail::BoxFuture<'_, Option<std::collections::HashMap<String, u32>>> {
        Box::pin(async { Some([("1002".to_owned(), 5)].into_iter().collect()) })
    }

    fn waiting(&self, _: &str) -> pbx::voicemail::BoxFuture<'_, Option<pbx::voicemail::Waiting>> {
        Box::pin(async move {
            Some(pbx::voicemail::Waiting {
                new: self.filed.lock().expect("filed").len() as u32,
                saved: 0,
            })
        })
    }
}

/// The audio port of an SDP body.
fn sdp_port(body: &str) -> u16 {
    body.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_extension_without_a_phone_leaves_a_message_with_the_sent_audio() {
    let boxes_dir = tempfile::tempdir().expect("tmp");
    let boxes = Arc::new(Boxes {
        dir: boxes_dir.path().to_owned(),
        filed: Mutex::new(Vec::new()),
    });
    let pbx = start(Setup {
        extensions: vec![("1001", "internal"), ("1002", "internal")],
        voicemail: Some(boxes.clone()),
        ..Setup::default()
    })
    .await;
    let phone = Ua::bind("127.0.0.1", pbx.sip, "1001").await;
    phone.register().await;
    let out = phone.invite("1002", "").await;
    let ok = phone.answer_to(&out, |c| c == 200).await;
    assert_eq!(header(&ok, "Content-Type"), Some("application/sdp"), "{ok}");
    let body = ok.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(body.contains("a=rtpmap:0 PCMU/8000"), "{body}");
    let rtp_to = SocketAddr::from(([127, 0, 0, 1], sdp_port(body)));
    phone.in_dialog(&out, &ok, "ACK", out.cseq).await;

    // The phone's RTP comes from another port than its SDP named, on the IP its SDP
    // names (a NAT or ALG that rewrites the address and not the port): for the grace
    // after the answer only the SDP's port latches, then the first packet from the
    // signalling IP latches the call to it (the clock is moved past the grace half a
    // second in, while the greeting plays). A stranger's packets (one sent before the
    // phone's first) never latch and never reach the message.
    let stranger = UdpSocket::bind("127.0.0.9:0").await.expect("bind");
    let rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let heard = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (rtp, heard) = (rtp.clone(), heard.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = rtp.recv_from(&mut buf).await {
                if media::rtp::RtpPacket::parse(&buf[..n]).is_ok_and(|p| p.payload_type == 0) {
                    heard.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    // A 1 kHz tone, 20 ms per packet, for 4 s: the greeting and tone take about 2.75 s,
    // the rest is the message.
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let start = Instant::now();
    for i in 0..200u16 {
        let samples: Vec<i16> = (0..160)
            .map(|k| {
                let t = f64::from(u32::from(i) * 160 + k) / 8000.0;
                (6000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
            })
            .collect();
        let payload = media::g711::Law::MuLaw.encode(&samples);
        let packet = media::rtp::RtpPacket {
            marker: i == 0,
            payload_type: 0,
            sequence: 1000 + i,
            timestamp: 5000 + u32::from(i) * 160,
            ssrc: 77,
            payload: &payload,
        }
        .build();
        if i % 10 == 0 {
            stranger.send_to(&packet, rtp_to).await.expect("send");
        }
        if i == 25 {
            pbx.clock.advance(pbx::rtp::LATCH_GRACE);
        }
        rtp.send_to(&packet, rtp_to).await.expect("send");
        sent.push(payload);
        // Paced like a phone: packet i leaves at i × 20 ms.
        let due = start + Duration::from_millis(20 * (u64::from(i) + 1));
        tokio::time::sleep_until(due.into()).await;
    }
    phone.in_dialog(&out, &ok, "BYE", out.cseq + 1).await;
    phone
        .wait("200 to BYE", |m| {
            status(m) == 200 && header(m, "CSeq") == Some(&format!("{} BYE", out.cseq + 1))
        })
        .await;
    until("the message is filed", || {
        !boxes.filed.lock().expect("filed").is_empty()
    })
    .await;
    let (path, caller, ms) = boxes.filed.lock().expect("filed")[0].clone();
    assert!(caller.contains("1001"), "{caller}");
    assert!(
        (800..=1600).contains(&ms),
        "about 1.25 s recorded after the tone: {ms} ms"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).expect("file").permissions().mode() & 0o777,
        0o600
    );
    let recorded =
        media::wav::decode(&std::fs::read(&path).expect("read"), 8000 * 60).expect("wav");
    // The recording is the sent audio, sample for sample: the tail of what was sent.
    let mut all = Vec::new();
    for p in &sent {
        media::g711::Law::MuLaw.decode_into(p, &mut all);
    }
    assert!(recorded.len() >= 160 * 40, "{} samples", recorded.len());
    let tail = &all[all.len() - recorded.len()..];
    assert_eq!(recorded, tail, "the WAV holds what was sent, in order");
    // The greeting reached the latched port; the stranger was refused, counted.
    assert!(heard.load(std::sync::atomic::Ordering::Relaxed) > 100);
    // The stranger's packet before the latch is refused and counted; after it the
    // socket is connected to the phone and the kernel drops the rest unseen.
    assert!(pbx.metric("sipward_rtp_dropped_total{reason=\"wrong_source\"}") >= 1);
    assert_eq!(pbx.metric("sipward_voicemail_messages_total"), 1);
    until("the port is given back", || {
        pbx.metric("sipward_rtp_ports_in_use") == 0
    })
    .await;
}

/// Digits are media (they keep a call open like audio), but a deposit records none of
/// them: a caller who sends only RFC 4733 digits outlives the no-media time, and is
/// ended once the greeting and the longest message have passed on the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_held_open_by_digits_alone_ends_at_its_longest() {
    let boxes_dir = tempfile::tempdir().expect("tmp");
    let boxes = Arc::new(Boxes {
        dir: boxes_dir.path().to_owned(),
        filed: Mutex::new(Vec::new()),
    });
    let pbx = start(Setup {
        extensions: vec![("1001", "internal"), ("1002", "internal")],
        voicemail: Some(boxes.clone()),
        ..Setup::default()
    })
    .await;
    let phone = Ua::bind("127.0.0.1", pbx.sip, "1001").await;
    phone.register().await;
    let out = phone.invite("1002", "").await;
    let ok = phone.answer_to(&out, |c| c == 200).await;
    let body = ok.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(body.contains("telephone-event"), "{body}");
    let rtp_to = SocketAddr::from(([127, 0, 0, 1], sdp_port(body)));
    phone.in_dialog(&out, &ok, "ACK", out.cseq).await;
    // From the port its SDP names, as a phone does: the latch's grace takes only that
    // port on the caller's IP (any other port only after it).
    let rtp = UdpSocket::bind(SocketAddr::new(phone.addr.ip(), phone.addr.port() + 2))
        .await
        .expect("bind");
    let bye = |m: &str| m.starts_with("BYE ") && header(m, "Call-ID") == Some(&out.call_id);
    // One `5` (a new event each time) every 5 s of the clock (a packet taken just
    // before or just after the clock moves leaves gaps of at most 10 s): never audio.
    let digit = |i: u16| {
        let payload = media::dtmf::Event {
            event: 5,
            end: true,
            volume: 10,
            duration: 800,
        }
        .build();
        media::rtp::RtpPacket {
            marker: true,
            payload_type: 101,
            sequence: 2000 + i,
            timestamp: 9000 + u32::from(i) * 4000,
            ssrc: 78,
            payload: &payload,
        }
        .build()
    };
    for i in 0..12u16 {
        rtp.send_to(&digit(i), rtp_to).await.expect("send");
        pbx.advance(Duration::from_secs(5)).await;
    }
    assert!(
        phone
            .try_wait(Duration::from_millis(200), bye)
            .await
            .is_none(),
        "60 s of digits alone: still up (the no-media time is 20 s)"
    );
    // The last digit at 170 s; at 185 s the greeting (2.75 s) and the longest message
    // (180 s) are over, while the no-media time (20 s after the last digit) is not.
    for i in 12..35u16 {
        rtp.send_to(&digit(i), rtp_to).await.expect("send");
        pbx.advance(Duration::from_secs(5)).await;
    }
    until("every digit taken", || {
        pbx.metric("sipward_voicemail_digits_total") == 35
    })
    .await;
    pbx.advance(Duration::from_secs(10)).await;
    phone.wait("the box's BYE after its longest", bye).await;
    assert_eq!(
        pbx.metric("sipward_voicemail_messages_total"),
        0,
        "digits are no message"
    );
}

/// A server with voicemail filing into a temporary directory, and phones of 1001 and
/// 1002 registered (1002's rings for 5 s before its voicemail answers).
async fn with_boxes() -> (Pbx, Ua, Ua, tempfile::TempDir) {
    let boxes_dir = tempfile::tempdir().expect("tmp");
    let boxes = Arc::new(Boxes {
        dir: boxes_dir.path().to_owned(),
        filed: Mutex::new(Vec::new()),
    });
    let pbx = start(Setup {
        extensions: vec![("1001", "internal"), ("1002", "internal")],
        voicemail: Some(boxes),
        ..Setup::default()
    })
    .await;
    let caller = Ua::bind("127.0.0.1", pbx.sip, "1001").await;
    caller.register().await;
    let callee = Ua::bind("127.0.0.1", pbx.sip, "1002").await;
    callee.register().await;
    (pbx, caller, callee, boxes_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_phone_sends_the_call_to_its_voicemail() {
    let (pbx, caller, callee, _boxes) = with_boxes().await;
    let out = caller.invite("1002", "").await;
    let invite = callee.request_for("INVITE", &out.call_id, 0).await;
    callee
        .reply(&invite, 486, "Busy Here", "busy1", "", "")
        .await;
    let ok = caller.answer_to(&out, |c| c >= 200).await;
    assert_eq!(status(&ok), 200, "the voicemail answers: {ok}");
    assert!(ok.contains("m=audio "), "{ok}");
    assert!(
        header(&ok, "Contact").is_some_and(|c| c.contains("voicemail@")),
        "{ok}"
    );
    caller.in_dialog(&out, &ok, "ACK", out.cseq).await;
    caller.in_dialog(&out, &ok, "BYE", out.cseq + 1).await;
    caller
        .wait("200 to BYE", |m| {
            status(m) == 200 && header(m, "CSeq") == Some(&format!("{} BYE", out.cseq + 1))
        })
        .await;
    assert_eq!(pbx.metric("sipward_voicemail_calls_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_call_goes_to_voicemail_at_the_extensions_ring_time() {
    let (pbx, caller, callee, _boxes) = with_boxes().await;
    let out = caller.invite("1002", "").await;
    let invite = callee.request_for("INVITE", &out.call_id, 0).await;
    callee.reply(&invite, 180, "Ringing", "ring1", "", "").await;
    caller.answer_to(&out, |c| c == 180).await;
    // Not yet at 4 s; at 5 s the phone's branch is cancelled and the box answers.
    pbx.advance(Duration::from_secs(4)).await;
    assert!(callee.quiet(|m| method(m) == Some("CANCEL")).await);
    pbx.advance(Duration::from_secs(1)).await;
    let cancel = callee.request_for("CANCEL", &out.call_id, 0).await;
    callee.reply(&cancel, 200, "OK", "ring1", "", "").await;
    callee
        .reply(&invite, 487, "Request Terminated", "ring1", "", "")
        .await;
    let ok = caller.answer_to(&out, |c| c >= 200).await;
    assert_eq!(status(&ok), 200, "the voicemail answers: {ok}");
    caller.in_dialog(&out, &ok, "ACK", out.cseq).await;
    caller.in_dialog(&out, &ok, "BYE", out.cseq + 1).await;
    caller
        .wait("200 to BYE", |m| {
            status(m) == 200 && header(m, "CSeq") == Some(&format!("{} BYE", out.cseq + 1))
        })
        .await;
    assert_eq!(pbx.metric("sipward_voicemail_calls_total"), 1);
}

/// Another node, "b", as the test plays it: a socket on `ip` whose address is published
/// in a live `nodes` row, talking to the PBX's internal hop socket once the PBX's hop
/// tables name it.
async fn node_b(pbx: &Pbx, ip: &str) -> Ua {
    let internal = pbx.internal.expect("hops on");
    let b = Ua::bind(ip, internal, "b").await;
    pbx::node::NodeHold::claim(
        pbx.registry.store(),
        "b",
        "b-instance",
        &b.addr.to_string(),
        T0,
        false,
    )
    .await
    .expect("b claims its name");
    let targets = pbx.endpoint.egress.hop_targets().clone();
    let at = b.addr;
    until("the PBX reads node b's row", move || targets.is_node(at)).await;
    b
}

/// A hop INVITE from node "b" (at `from`) for `extension`, stamped at `at` under `key`.
fn hop_invite(from: SocketAddr, extension: &str, call_id: &str, proof: Option<&str>) -> String {
    let proof = proof
        .map(|p| format!("X-Sipward-Hop: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "INVITE sip:{extension}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 69\r\nFrom: <sip:1002@pbx>;tag=f{call_id}\r\nTo: <sip:{extension}@pbx>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:1002@{from}>\r\n{proof}Content-Length: 0\r\n\r\n"
    )
}

fn hop_proof(pbx: &Pbx, extension: &str, call_id: &str, at: i64) -> String {
    let key = pbx::hop::HopKey::new(*pbx.registry.hop_key());
    pbx::hop::stamp(
        &key,
        &pbx::hop::HopFields {
            method: "INVITE",
            extension,
            call_id,
            cseq: 1,
            from_tag: &format!("f{call_id}"),
            node: "b",
        },
        at,
    )
}

/// Issue 21, the taking node: a hop from a live node with its proof reaches this node's
/// phone (without the proof) and its answer goes back to the node; a forged, stale,
/// replayed or strangers' hop reaches nothing, and a hop naming a trunk number reaches
/// no trunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_reaches_this_nodes_phone_only_with_a_live_nodes_fresh_unseen_proof() {
    let gw = gateway_socket().await;
    let pbx = start(Setup {
        plan: us_plan(),
        extensions: vec![("1001", "national")],
        gateway: Some(gw.addr),
        internal: true,
        ..Setup::default()
    })
    .await;
    let phone = Ua::bind("127.0.0.31", pbx.sip, "1001").await;
    phone.register().await;
    let b = node_b(&pbx, "127.0.0.1").await;
    let is_invite = |m: &str| method(m) == Some("INVITE");
    let refused = |code: u16| move |m: &str| status(m) == code;

    // A stranger (not a node's published address) gets nothing at all, proof or not.
    let stranger = Ua::bind("127.0.0.32", pbx.internal.expect("hops on"), "x").await;
    let proof = hop_proof(&pbx, "1001", "h0", T0);
    stranger
        .send(&hop_invite(stranger.addr, "1001", "h0", Some(&proof)))
        .await;
    assert!(stranger.quiet(|_| true).await);
    // From the node: a bad MAC, a stale time, no proof at all: 403, nothing rings.
    let mut bad = hop_proof(&pbx, "1001", "h1", T0);
    bad.replace_range(bad.len() - 2.., "00");
    b.send(&hop_invite(b.addr, "1001", "h1", Some(&bad))).await;
    b.wait("403 to a bad MAC", refused(403)).await;
    let stale = hop_proof(&pbx, "1001", "h2", T0 - 120);
    b.send(&hop_invite(b.addr, "1001", "h2", Some(&stale)))
        .await;
    b.wait("403 to a stale hop", refused(403)).await;
    b.send(&hop_invite(b.addr, "1001", "h3", None)).await;
    b.wait("403 to no proof", refused(403)).await;
    // A proof made for another extension does not carry over.
    let other = hop_proof(&pbx, "1002", "h4", T0);
    b.send(&hop_invite(b.addr, "1001", "h4", Some(&other)))
        .await;
    b.wait("403 to another extension's proof", refused(403))
        .await;
    assert!(
        phone.quiet(is_invite).await,
        "nothing refused rings the phone"
    );
    assert_eq!(
        pbx.metric("sipward_hops_refused_total{reason=\"not_a_node\"}"),
        1
    );
    assert_eq!(
        pbx.metric("sipward_hops_refused_total{reason=\"bad_mac\"}"),
        2
    );
    assert_eq!(
        pbx.metric("sipward_hops_refused_total{reason=\"stale\"}"),
        1
    );
    assert_eq!(
        pbx.metric("sipward_hops_refused_total{reason=\"malformed\"}"),
        1
    );

    // Control: the node's real hop rings the phone, without the proof.
    let proof = hop_proof(&pbx, "1001", "h5", T0);
    let hop = hop_invite(b.addr, "1001", "h5", Some(&proof));
    b.send(&hop).await;
    let rung = phone.request_for("INVITE", "h5", 1).await;
    assert!(
        !rung.to_ascii_lowercase().contains("x-sipward-hop"),
        "{rung}"
    );
    phone
        .reply(
            &rung,
            200,
            "OK",
            "p5",
            &format!("Contact: <sip:1001@{}>\r\n", phone.addr),
            "",
        )
        .await;
    let ok = b
        .wait("the phone's 200 back to the node", |m| {
            status(m) == 200 && header(m, "Call-ID") == Some("h5")
        })
        .await;
    assert!(
        ok.contains(&format!("Via: SIP/2.0/UDP {};branch=z9hG4bKh5", b.addr)),
        "{ok}"
    );
    // In the dialog: the node's ACK and BYE reach the phone; the same BYE from the
    // PBX's public side (a stranger's socket) reaches nothing.
    let in_dialog = |from: SocketAddr, method_: &str, cseq: u32, branch: &str| {
        format!(
            "{method_} sip:1001@{} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{branch};rport\r\n\
             Max-Forwards: 69\r\nFrom: <sip:1002@pbx>;tag=fh5\r\nTo: <sip:1001@pbx>;tag=p5\r\n\
             Call-ID: h5\r\nCSeq: {cseq} {method_}\r\nContent-Length: 0\r\n\r\n",
            phone.addr
        )
    };
    b.send(&in_dialog(b.addr, "ACK", 1, "ack5")).await;
    phone.request_for("ACK", "h5", 1).await;
    let outsider = Ua::bind("127.0.0.33", pbx.sip, "x").await;
    outsider
        .send(&in_dialog(outsider.addr, "BYE", 2, "bye5x"))
        .await;
    assert!(
        phone
            .quiet(|m| method(m) == Some("BYE") && header(m, "Call-ID") == Some("h5"))
            .await,
        "no BYE but the node's"
    );
    b.send(&in_dialog(b.addr, "BYE", 2, "bye5")).await;
    let bye = phone.request_for("BYE", "h5", 2).await;
    phone.reply(&bye, 200, "OK", "", "", "").await;
    b.wait("the phone's 200 to the BYE", |m| {
        status(m) == 200 && header(m, "CSeq") == Some("2 BYE")
    })
    .await;

    // The same hop again (a replay, under a new branch) rings nothing.
    b.send(&hop.replace("branch=z9hG4bKh5", "branch=z9hG4bKh5again"))
        .await;
    b.wait("403 to a replay", refused(403)).await;
    assert!(
        phone
            .quiet(|m| is_invite(m) && header(m, "Call-ID") == Some("h5"))
            .await
    );
    assert_eq!(
        pbx.metric("sipward_hops_refused_total{reason=\"replayed\"}"),
        1
    );

    // The node's CANCEL of a ringing hop reaches the phone (the caller hung up on B).
    let proof = hop_proof(&pbx, "1001", "h7", T0);
    let hop = hop_invite(b.addr, "1001", "h7", Some(&proof));
    b.send(&hop).await;
    let rung = phone.request_for("INVITE", "h7", 1).await;
    // A branch is cancelled once it answered provisionally (RFC 3261 §9.1).
    phone.reply(&rung, 180, "Ringing", "p7", "", "").await;
    b.wait("the 180 back to the node", |m| {
        status(m) == 180 && header(m, "Call-ID") == Some("h7")
    })
    .await;
    let cancel = hop
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .replace(&format!("X-Sipward-Hop: {proof}\r\n"), "");
    b.send(&cancel).await;
    b.wait("200 to the CANCEL", |m| {
        status(m) == 200 && header(m, "CSeq") == Some("1 CANCEL")
    })
    .await;
    phone.request_for("CANCEL", "h7", 1).await;

    // A hop naming a number the dial plan routes to the gateway reaches no trunk.
    let proof = hop_proof(&pbx, "12125550123", "h6", T0);
    b.send(&hop_invite(b.addr, "12125550123", "h6", Some(&proof)))
        .await;
    b.wait("404 to a hop for no extension", refused(404)).await;
    assert!(gw.quiet(|_| true).await, "no trunk is reached by a hop");
}

/// Node "a" as a sending PBX sees it: a socket on 127.0.0.1 published in a live `nodes`
/// row that holds a live binding of `number`. Returns once the PBX's hop table sends
/// calls for `number` there.
async fn node_holding(pbx: &Pbx, number: &str) -> Ua {
    let internal = pbx.internal.expect("hops on");
    let a = Ua::bind("127.0.0.1", internal, "a").await;
    let store = pbx.registry.store();
    pbx::node::NodeHold::claim(store, "a", "a-instance", &a.addr.to_string(), T0, false)
        .await
        .expect("a claims its name");
    let mut conn = store.conn().await.expect("conn");
    let generation = store::account::get_extension(&mut conn, number)
        .await
        .expect("read")
        .expect("the extension")
        .credential_generation;
    let row = store::bindings::BindingRow {
        number: number.to_owned(),
        contact: format!("sip:{number}@192.0.2.9:5060"),
        call_id: format!("reg-{number}-on-a"),
        cseq: 1,
        expires_at: T0 + 3600,
        source: "192.0.2.9:5060".into(),
        transport: "udp".into(),
        generation,
    };
    store::bindings::replace_node_bindings(&mut conn, "a", number, &[row], T0)
        .await
        .expect("a's binding");
    drop(conn);
    let targets = pbx.endpoint.egress.hop_targets().clone();
    let (number, at) = (number.to_owned(), a.addr);
    until("the PBX hops calls for the number to a", move || {
        targets.of(&number) == [at]
    })
    .await;
    a
}

/// Issue 21, the sending node: a call for an extension whose phone is registered on
/// another node hops there, and when that node answers 480 (no phone there any more)
/// or 408 (nobody answered), or the phone rings past the extension's voicemail time,
/// the call ends in THIS node's voicemail, exactly as for a phone of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_that_fails_or_rings_out_ends_in_this_nodes_voicemail() {
    let boxes_dir = tempfile::tempdir().expect("tmp");
    let boxes = Arc::new(Boxes {
        dir: boxes_dir.path().to_owned(),
        filed: Mutex::new(Vec::new()),
    });
    let pbx = start(Setup {
        extensions: vec![("1001", "internal"), ("1002", "internal")],
        voicemail: Some(boxes),
        internal: true,
        ..Setup::default()
    })
    .await;
    let caller = Ua::bind("127.0.0.1", pbx.sip, "1001").await;
    caller.register().await;
    let node_a = node_holding(&pbx, "1002").await;
    let to_voicemail = |out: &Outgoing, ok: &str| {
        assert_eq!(status(ok), 200, "the voicemail answers: {ok}");
        assert!(
            header(ok, "Contact").is_some_and(|c| c.contains("voicemail@")),
            "this node's box answered, not the other node: {ok}"
        );
        assert_eq!(header(ok, "Call-ID"), Some(out.call_id.as_str()));
    };
    let hang_up = |out: Outgoing, ok: String| {
        let caller = &caller;
        async move {
            caller.in_dialog(&out, &ok, "ACK", out.cseq).await;
            caller.in_dialog(&out, &ok, "BYE", out.cseq + 1).await;
            caller
                .wait("200 to BYE", |m| {
                    status(m) == 200
                        && header(m, "Call-ID") == Some(&out.call_id)
                        && header(m, "CSeq") == Some(&format!("{} BYE", out.cseq + 1))
                })
                .await;
        }
    };

    // The other node answers at once that it cannot: 480, then 408.
    for (n, (code, reason)) in [(480, "Temporarily Unavailable"), (408, "Request Timeout")]
        .into_iter()
        .enumerate()
    {
        let out = caller.invite("1002", "").await;
        let hop = node_a.request_for("INVITE", &out.call_id, 0).await;
        assert!(
            hop.starts_with(&format!("INVITE sip:1002@{}", node_a.addr)),
            "the hop names the extension at the node's address: {hop}"
        );
        assert!(hop.contains("X-Sipward-Hop: "), "with this node's proof");
        node_a
            .reply(&hop, code, reason, &format!("a{n}"), "", "")
            .await;
        // Acknowledged hop by hop, to the node.
        node_a.request_for("ACK", &out.call_id, 0).await;
        let ok = caller.answer_to(&out, |c| c >= 200).await;
        to_voicemail(&out, &ok);
        hang_up(out, ok).await;
        assert_eq!(
            pbx.metric("sipward_voicemail_calls_total"),
            n as u64 + 1,
            "{code} from the node"
        );
    }

    // The phone on the other node rings and nobody answers: at the extension's voicemail
    // time (5 s) this node cancels the hop and its box takes the call.
    let out = caller.invite("1002", "").await;
    let hop = node_a.request_for("INVITE", &out.call_id, 0).await;
    node_a.reply(&hop, 180, "Ringing", "ring-a", "", "").await;
    caller.answer_to(&out, |c| c == 180).await;
    pbx.advance(Duration::from_secs(4)).await;
    assert!(node_a.quiet(|m| method(m) == Some("CANCEL")).await);
    pbx.advance(Duration::from_secs(1)).await;
    let cancel = node_a.request_for("CANCEL", &out.call_id, 0).await;
    node_a.reply(&cancel, 200, "OK", "ring-a", "", "").await;
    node_a
        .reply(&hop, 487, "Request Terminated", "ring-a", "", "")
        .await;
    let ok = caller.answer_to(&out, |c| c >= 200).await;
    to_voicemail(&out, &ok);
    hang_up(out, ok).await;
    assert_eq!(pbx.metric("sipward_voicemail_calls_total"), 3);
}

/// A REFER in the dialog of `out` (answered by `answer`) naming `target`.
async fn refer(ua: &Ua, out: &Outgoing, answer: &str, cseq: u32, target: &str) {
    let to = header(answer, "Contact")
        .map(|c| {
            c.trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or(c)
                .to_owned()
        })
        .unwrap_or_else(|| out.ruri.clone());
    let text = format!(
        "REFER {to} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
         Call-ID: {}\r\nCSeq: {cseq} REFER\r\nRefer-To: <{target}>\r\nContent-Length: 0\r\n\r\n",
        ua.via(&ua.next("z9hG4bKref")),
        out.from,
        header(answer, "To").unwrap_or(&out.to),
        out.call_id,
    );
    ua.send(&text).await;
}

/// Issue 21: transfers are not offered across nodes. A REFER in a call that crosses
/// the hop, or naming an extension whose phone is registered only on another node, is
/// answered 403 and reaches neither the other node nor a phone; the call goes on. The
/// control: the same REFER naming a phone of this node, in a call between two of its
/// phones, is carried to the transferee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refer_across_nodes_is_refused_and_the_call_goes_on() {
    let pbx = start(Setup {
        extensions: vec![
            ("1001", "internal"),
            ("1002", "internal"),
            ("1003", "internal"),
            ("1004", "internal"),
        ],
        internal: true,
        ..Setup::default()
    })
    .await;
    let caller = Ua::bind("127.0.0.1", pbx.sip, "1001").await;
    caller.register().await;
    let local = Ua::bind("127.0.0.1", pbx.sip, "1003").await;
    local.register().await;
    let other_local = Ua::bind("127.0.0.1", pbx.sip, "1004").await;
    other_local.register().await;
    let node_a = node_holding(&pbx, "1002").await;
    let is_refer = |m: &str| method(m) == Some("REFER");
    let answered_refer = |cseq: u32| {
        move |m: &str| header(m, "CSeq") == Some(&format!("{cseq} REFER")) && status(m) >= 200
    };

    // A call between two phones of this node.
    let out = caller.invite("1003", "").await;
    let invite = local.request_for("INVITE", &out.call_id, 0).await;
    local
        .reply(
            &invite,
            200,
            "OK",
            "l1",
            &format!("Contact: <sip:1003@{}>\r\n", local.addr),
            "",
        )
        .await;
    let ok = caller.answer_to(&out, |c| c == 200).await;
    caller.in_dialog(&out, &ok, "ACK", out.cseq).await;
    local.request_for("ACK", &out.call_id, 0).await;
    // Naming the phone on the other node: 403, the transferee hears nothing.
    refer(&caller, &out, &ok, 2, "sip:1002@pbx").await;
    let no = caller
        .wait("the answer to the REFER", answered_refer(2))
        .await;
    assert_eq!(status(&no), 403, "{no}");
    assert!(
        local.quiet(is_refer).await,
        "nothing reaches the transferee"
    );
    // Control: naming a phone of this node, the REFER is carried to the transferee.
    refer(&caller, &out, &ok, 3, "sip:1004@pbx").await;
    let carried = local.request_for("REFER", &out.call_id, 3).await;
    assert!(carried.contains("sip:1004@pbx"), "{carried}");
    local.reply(&carried, 202, "Accepted", "l1", "", "").await;
    let yes = caller.wait("202 to the REFER", answered_refer(3)).await;
    assert_eq!(status(&yes), 202, "{yes}");

    // A call that crosses the hop: a REFER naming a phone of this node is refused too,
    // and the other node gets nothing but the call's own requests.
    let out = caller.invite("1002", "").await;
    let hop = node_a.request_for("INVITE", &out.call_id, 0).await;
    node_a
        .reply(
            &hop,
            200,
            "OK",
            "a1",
            &format!("Contact: <sip:1002@{}>\r\n", node_a.addr),
            "",
        )
        .await;
    let ok = caller.answer_to(&out, |c| c == 200).await;
    caller.in_dialog(&out, &ok, "ACK", out.cseq).await;
    node_a.request_for("ACK", &out.call_id, 0).await;
    refer(&caller, &out, &ok, 2, "sip:1004@pbx").await;
    let no = caller
        .wait("the answer to the REFER", answered_refer(2))
        .await;
    assert_eq!(status(&no), 403, "{no}");
    assert!(node_a.quiet(is_refer).await, "no REFER goes over the hop");
    // The call goes on: its BYE still reaches the other node.
    caller.in_dialog(&out, &ok, "BYE", 3).await;
    let bye = node_a.request_for("BYE", &out.call_id, 3).await;
    node_a.reply(&bye, 200, "OK", "a1", "", "").await;
    caller
        .wait("200 to BYE", |m| {
            status(m) == 200 && header(m, "CSeq") == Some("3 BYE")
        })
        .await;
    assert_eq!(pbx.metric("sipward_transfers_refused_total"), 2);
}

/// Box 1002 for the menu: PIN 482913, one new message; what the menu asked of it.
#[derive(Debug, Default)]
struct Menus {
    /// (box, the owner's login rather than a PIN, granted) of each login.
    logins: Mutex<Vec<(String, bool, bool)>>,
    deleted: Mutex<Vec<String>>,
    /// Answers a PIN login this much later (a locked box's slower path, say).
    slow: Mutex<Duration>,
}

impl pbx::voicemail::Boxes for Menus {
    fn login(
        &self,
        mailbox: &str,
        credential: policy::voicemail::Credential,
        _: std::net::IpAddr,
    ) -> pbx::voicemail::BoxFuture<'_, policy::voicemail::Login> {
        let mailbox = mailbox.to_owned();
        Box::pin(async move {
            let slow = *self.slow.lock().expect("slow");
            tokio::time::sleep(slow).await;
            let (owner, granted) = match &credential {
                policy::voicemail::Credential::AuthenticatedOwner => (true, true),
                policy::voicemail::Credential::Pin(p) => {
                    (false, mailbox == "1002" && p.expose() == "482913")
                }
            };
            self.logins
                .lock()
                .expect("logins")
                .push((mailbox, owner, granted));
            if granted {
                policy::voicemail::Login::Granted {
                    must_change_pin: false,
                }
            } else {
                policy::voicemail::Login::Refused
            }
        })
    }
    fn messages(
        &self,
        _: &str,
    ) -> pbx::voicemail::BoxFuture<'_, Option<Vec<policy::voicemail::MessageView>>> {
        Box::pin(async move {
            let gone = !self.deleted.lock().expect("deleted").is_empty();
            Some(if gone {
                Vec::new()
            } else {
                vec![policy::voicemail::MessageView {
                    id: "m1".into(),
                    received_at: 1,
                    duration_ms: 500,
                    caller: "sip:1001@sipward".into(),
                    folder: policy::voicemail::Folder::New,
                }]
            })
        })
    }
    fn recording(&self, _: &str, _: &str) -> pbx::voicemail::BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(async { Some(media::wav::encode(&[1000; 4000])) })
    }
    fn delete(
        &self,
        _: &str,
        id: &str,
        _: std::net::IpAddr,
    ) -> pbx::voicemail::BoxFuture<'_, bool> {
        let id = id.to_owned();
        Box::pin(async move {
            self.deleted.lock().expect("deleted").push(id);
            true
        })
    }
    fn save(&self, _: &str, _: &str, _: std::net::IpAddr) -> pbx::voicemail::BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
    fn change_pin(
        &self,
        _: &str,
        _: policy::Secret,
        _: std::net::IpAddr,
    ) -> pbx::voicemail::BoxFuture<'_, policy::voicemail::PinChange> {
        Box::pin(async { policy::voicemail::PinChange::Changed })
    }
    fn set_greeting(
        &self,
        _: &str,
        _: Vec<u8>,
        _: std::net::IpAddr,
    ) -> pbx::voicemail::BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

/// A digit by SIP INFO `application/dtmf-relay` in the call's dialog.
async fn info_digit(ua: &Ua, out: &Outgoing, answer: &str, cseq: u32, digit: char) {
    let target = header(answer, "Contact")
        .map(|c| {
            c.trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or(c)
                .to_owned()
        })
        .unwrap_or_else(|| out.ruri.clone());
    let body = format!("Signal={digit}\r\nDuration=160\r\n");
    let text = format!(
        "INFO {target} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
         Call-ID: {}\r\nCSeq: {cseq} INFO\r\nContent-Type: application/dtmf-relay\r\n\
         Content-Length: {}\r\n\r\n{body}",
        ua.via(&ua.next("z9hG4bKinfo")),
        out.from,
        header(answer, "To").unwrap_or(&out.to),
        out.call_id,
        body.len(),
    );
    ua.send(&text).await;
    ua.wait("200 to INFO", |m| {
        status(m) == 200 && header(m, "CSeq") == Some(&format!("{cseq} INFO"))
    })
    .await;
}

/// A menu call answered: the 200, and a socket that records when each prompt (an RTP
/// packet with the marker bit) started.
async fn menu_call(ua: &Ua, dialled: &str) -> (Outgoing, String, Arc<Mutex<Vec<Instant>>>) {
    let out = ua.invite(dialled, "").await;
    let ok = ua.answer_to(&out, |c| c >= 200).await;
    assert_eq!(status(&ok), 200, "the menu answers: {ok}");
    ua.in_dialog(&out, &ok, "ACK", out.cseq).await;
    let body = ok.split("\r\n\r\n").nth(1).unwrap_or("");
    let rtp_to = SocketAddr::new(ua.pbx.ip(), sdp_port(body));
    // From the phone's own address and the port its SDP names: the RTP guard latches
    // only to the signalling IP, and during its grace only to that port.
    let rtp = Arc::new(
        UdpSocket::bind(SocketAddr::new(ua.addr.ip(), ua.addr.port() + 2))
            .await
            .expect("bind"),
    );
    let starts = Arc::new(Mutex::new(Vec::new()));
    {
        let (rtp, starts) = (rtp.clone(), starts.clone());
        tokio::spawn(async move {
            // Keeps the call's media alive and latches it to this socket.
            let keep = rtp.clone();
            tokio::spawn(async move {
                for i in 0..1500u16 {
                    let payload = [0xffu8; 160];
                    let p = media::rtp::RtpPacket {
                        marker: false,
                        payload_type: 0,
                        sequence: i,
                        timestamp: u32::from(i) * 160,
                        ssrc: 9,
                        payload: &payload,
                    }
                    .build();
                    if keep.send_to(&p, rtp_to).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = rtp.recv_from(&mut buf).await {
                if media::rtp::RtpPacket::parse(&buf[..n]).is_ok_and(|p| p.marker) {
                    starts.lock().expect("starts").push(Instant::now());
                }
            }
        });
    }
    (out, ok, starts)
}

/// How long after `since` the next prompt started.
async fn next_prompt(starts: &Mutex<Vec<Instant>>, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = starts.lock().expect("starts").iter().find(|t| **t > since) {
            return *t - since;
        }
        assert!(Instant::now() < deadline, "no prompt after the entry");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn with_menus() -> (Pbx, Ua, Arc<Menus>, tempfile::TempDir) {
    let boxes_dir = tempfile::tempdir().expect("tmp");
    let boxes = Arc::new(Boxes {
        dir: boxes_dir.path().to_owned(),
        filed: Mutex::new(Vec::new()),
    });
    let menus = Arc::new(Menus::default());
    let pbx = start(Setup {
        extensions: vec![("1001", "internal"), ("1002", "internal")],
        voicemail: Some(boxes),
        retrieval: Some(menus.clone()),
        ..Setup::default()
    })
    .await;
    let phone = Ua::bind("127.0.0.1", pbx.sip, "1002").await;
    phone.register().await;
    (pbx, phone, menus, boxes_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_97_from_the_owners_registered_phone_opens_its_box_and_a_delete_turns_the_light_off() {
    let (pbx, phone, menus, _dir) = with_menus().await;
    let (out, ok, _starts) = menu_call(&phone, "*97").await;
    until("the owner's login", || {
        !menus.logins.lock().expect("l").is_empty()
    })
    .await;
    assert_eq!(
        menus.logins.lock().expect("l")[0],
        ("1002".to_owned(), true, true),
        "no PIN for the authenticated owner on its registered flow"
    );
    // `1` listens to the first message, `7` deletes it.
    info_digit(&phone, &out, &ok, out.cseq + 1, '1').await;
    info_digit(&phone, &out, &ok, out.cseq + 2, '7').await;
    until("the message deleted", || {
        menus.deleted.lock().expect("d").as_slice() == ["m1"]
    })
    .await;
    phone
        .wait("the light goes off", |m| {
            method(m) == Some("NOTIFY") && m.contains("Messages-Waiting: no")
        })
        .await;
    assert_eq!(pbx.metric("sipward_voicemail_retrievals_total"), 1);
    phone.in_dialog(&out, &ok, "BYE", out.cseq + 3).await;
    until("the port is given back", || {
        pbx.metric("sipward_rtp_ports_in_use") == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_97_from_another_address_asks_for_the_pin() {
    let (_pbx, phone, menus, _dir) = with_menus().await;
    // The same account's credentials, but not from the flow it registered on.
    let elsewhere = Ua::bind("127.0.0.2", phone.pbx, "1002").await;
    let (out, ok, starts) = menu_call(&elsewhere, "*97").await;
    let t = Instant::now();
    for d in "482913#".chars().enumerate() {
        info_digit(&elsewhere, &out, &ok, out.cseq + 1 + d.0 as u32, d.1).await;
    }
    until("a PIN login", || {
        !menus.logins.lock().expect("l").is_empty()
    })
    .await;
    assert_eq!(
        menus.logins.lock().expect("l")[0],
        ("1002".to_owned(), false, true),
        "asked for the PIN, not let in as the owner"
    );
    next_prompt(&starts, t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pin_is_answered_after_the_same_delay_however_long_the_login_took() {
    let (pbx, phone, menus, _dir) = with_menus().await;
    let (out, ok, starts) = menu_call(&phone, "*98").await;
    let mut cseq = out.cseq;
    let mut typed = |digits: &'static str| {
        let v: Vec<(u32, char)> = digits
            .chars()
            .map(|d| {
                cseq += 1;
                (cseq, d)
            })
            .collect();
        v
    };
    let mut delays = Vec::new();
    for slow in [0u64, 600] {
        *menus.slow.lock().expect("slow") = Duration::from_millis(slow);
        for (c, d) in typed("1002#1111") {
            info_digit(&phone, &out, &ok, c, d).await;
        }
        // Every earlier prompt has started by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (c, d) = typed("#")[0];
        let at = Instant::now();
        info_digit(&phone, &out, &ok, c, d).await;
        delays.push(next_prompt(&starts, at).await);
    }
    let wait = pbx::voicemail::retrieval::REFUSAL_DELAY;
    for d in &delays {
        assert!(
            *d >= wait - Duration::from_millis(50) && *d < wait + Duration::from_millis(300),
            "refusal after {d:?}, not {wait:?}"
        );
    }
    let spread = delays[0].abs_diff(delays[1]);
    assert!(spread < Duration::from_millis(150), "{delays:?}");
    assert_eq!(pbx.metric("sipward_voicemail_logins_refused_total"), 2);
}

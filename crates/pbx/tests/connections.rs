//! SIP over TCP under connections held by an attacker (issue #17): per-source caps, the
//! first-message deadline, a ban closing open connections, junk counted by the flood
//! guard. The real server runs in process on loopback; its deadlines are made short,
//! and every wait polls against a deadline. Each case has a control: a well-behaved
//! connection from another address stays open and is answered.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use accounts::{Registry, Settings};
use pbx::endpoint::Endpoint;
use pbx::registrar::RegistrarConfig;
use pbx::server::{ServeConfig, ServerKeys};
use pbx::transport::TcpLimits;
use policy::PolicyConfig;
use policy::ban::BanPolicy;
use policy::clock::ManualClock;
use rand::SeedableRng;
use rand::rngs::StdRng;
use store::DataDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const T0: i64 = 1_800_000_000;

struct Pbx {
    tcp: SocketAddr,
    /// The TLS listener, when the server was given a certificate.
    tls: Option<SocketAddr>,
    endpoint: Arc<Endpoint>,
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

/// Limits short enough to watch: 1 s to the first message, 2 s idle, bans looked up
/// every 50 ms.
fn short_limits() -> TcpLimits {
    TcpLimits {
        first_message: Duration::from_secs(1),
        idle: Duration::from_secs(2),
        ban_check: Duration::from_millis(50),
        ..TcpLimits::default()
    }
}

async fn start(bans: BanPolicy, tcp: TcpLimits) -> Pbx {
    start_on(bans, tcp, 1).await
}

/// The server with `workers` UDP receivers (and as many lanes for stream messages).
async fn start_on(bans: BanPolicy, tcp: TcpLimits, workers: usize) -> Pbx {
    start_with(bans, tcp, workers, None).await
}

/// The server, with a TLS listener presenting `identity` when given one.
async fn start_with(
    bans: BanPolicy,
    tcp: TcpLimits,
    workers: usize,
    identity: Option<Arc<pbx::tls::ServerIdentity>>,
) -> Pbx {
    let dir = tempfile::tempdir().expect("tmp");
    let data = DataDir::new(dir.path().join("data"));
    let clock = Arc::new(ManualClock::new(T0, std::time::Instant::now()));
    let settings = Settings {
        realm: "sipward".into(),
        domain: None,
        policy: PolicyConfig::default(),
        dialplan: Default::default(),
        admin_email: None,
        provisioning: Default::default(),
    };
    let (registry, _) = Registry::open(
        &data,
        settings,
        Box::new(StdRng::seed_from_u64(17)),
        clock.clone(),
    )
    .await
    .expect("open");
    let cfg = ServeConfig {
        sip: "127.0.0.1:0".parse().expect("addr"),
        registrar: RegistrarConfig::default(),
        nonce_max_age_secs: 300,
        digest_algorithms: vec![sip::digest::Algorithm::Md5],
        bans,
        min_strength_score: 3,
        udp_workers: workers,
        tcp,
        messages: pbx::transport::MessageLimits::default(),
        mailer: None,
        tls: identity.map(|identity| pbx::server::TlsListen {
            addr: "127.0.0.1:0".parse().expect("addr"),
            identity,
        }),
        node: policy::node::NodeName::parse("test").expect("name"),
        internal: None,
        version_poll: pbx::server::VERSION_POLL,
        voicemail: None,
    };
    let keys = ServerKeys {
        nonce: [1; 32],
        dummy: [2; 32],
        notify: [3; 32],
    };
    let bound = pbx::server::bind(registry, cfg, keys, clock)
        .await
        .expect("bind");
    let tcp = bound.sip_tcp;
    let tls = bound.sip_tls;
    let endpoint = bound.endpoint.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));
    Pbx {
        tcp,
        tls,
        endpoint,
        stop: Some(stop),
        _dir: dir,
    }
}

/// Limits that never silence the tests' own requests.
fn calm() -> BanPolicy {
    BanPolicy {
        flood_requests: 10_000,
        silence_requests: 10_000,
        ..BanPolicy::default()
    }
}

async fn connect(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::new(from.parse().expect("ip"), 0))
        .expect("bind");
    s.connect(to).await.expect("connect")
}

fn options(c: &TcpStream, n: u32, user_agent: &str) -> Vec<u8> {
    let local = c.local_addr().expect("local");
    let to = c.peer_addr().expect("peer");
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-conn-{n}-{port}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{ip}>;tag=t{n}\r\nTo: <sip:{to}>\r\n\
         Call-ID: conn-{n}-{port}@test\r\nCSeq: {n} OPTIONS\r\nUser-Agent: {user_agent}\r\n\
         Content-Length: 0\r\n\r\n",
        port = local.port(),
        ip = local.ip(),
    )
    .into_bytes()
}

/// What became of a connection: the bytes it received before `within` ran out, and
/// whether the server closed it.
async fn read_for(c: &mut TcpStream, within: Duration) -> (String, bool) {
    let until = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, c.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    return (String::from_utf8_lossy(&got).into_owned(), false);
                }
            }
        }
    }
}

/// Sends an OPTIONS and says whether a 200 came back on the same connection.
async fn answered(c: &mut TcpStream, n: u32) -> bool {
    let m = options(c, n, "control-phone/1.0");
    if c.write_all(&m).await.is_err() {
        return false;
    }
    let (reply, _) = read_for(c, Duration::from_secs(3)).await;
    reply.starts_with("SIP/2.0 200")
}

fn metric(pbx: &Pbx, f: impl Fn(&pbx::metrics::Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(&pbx.endpoint.metrics).load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_at_most_its_cap_of_connections() {
    let pbx = start(calm(), short_limits()).await;
    let cap = TcpLimits::default().per_source;
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(connect("127.0.0.21", pbx.tcp).await);
    }
    let mut open = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        if answered(c, u32::try_from(i).expect("small")).await {
            open += 1;
        }
    }
    assert_eq!(open, cap, "exactly the cap of connections is served");
    assert_eq!(metric(&pbx, |m| &m.tcp_refused), 40 - u64::from(cap));
    // Control: another address is not affected by the first one's cap.
    let mut other = connect("127.0.0.22", pbx.tcp).await;
    assert!(answered(&mut other, 1).await, "another source is served");
    // A closed connection gives its place back.
    conns.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect("127.0.0.21", pbx.tcp).await;
        if answered(&mut again, 99).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the places were never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dripping_bytes_is_closed_at_the_first_message_deadline() {
    let limits = short_limits();
    let pbx = start(calm(), limits.clone()).await;
    let mut control = connect("127.0.0.24", pbx.tcp).await;
    assert!(answered(&mut control, 1).await);
    let mut drip = connect("127.0.0.23", pbx.tcp).await;
    let opened = Instant::now();
    let message = options(&drip, 1, "drip/1.0");
    let mut closed_after = None;
    for byte in message.iter().take(60) {
        if drip.write_all(std::slice::from_ref(byte)).await.is_err() {
            closed_after = Some(opened.elapsed());
            break;
        }
        let (_, closed) = read_for(&mut drip, Duration::from_millis(100)).await;
        if closed {
            closed_after = Some(opened.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the dripping connection was never closed");
    assert!(
        closed_after >= limits.first_message - Duration::from_millis(100)
            && closed_after < limits.first_message * 3,
        "closed after {closed_after:?}, the deadline is {:?}",
        limits.first_message
    );
    assert!(metric(&pbx, |m| &m.tcp_timeouts) >= 1);
    // Control: the connection that sent a whole message in time is still served, past
    // the first-message deadline.
    assert!(opened.elapsed() > limits.first_message);
    assert!(answered(&mut control, 2).await, "the control was cut too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_without_a_complete_message_do_not_restart_the_idle_timeout() {
    let limits = short_limits();
    let pbx = start(calm(), limits.clone()).await;
    let mut c = connect("127.0.0.25", pbx.tcp).await;
    assert!(answered(&mut c, 1).await);
    let last_message = Instant::now();
    let mut closed_after = None;
    for byte in options(&c, 2, "drip/1.0").iter().take(80) {
        if c.write_all(std::slice::from_ref(byte)).await.is_err() {
            closed_after = Some(last_message.elapsed());
            break;
        }
        let (_, closed) = read_for(&mut c, Duration::from_millis(100)).await;
        if closed {
            closed_after = Some(last_message.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the idle connection was never closed");
    assert!(
        closed_after >= limits.idle - Duration::from_millis(200) && closed_after < limits.idle * 2,
        "closed after {closed_after:?}, the idle timeout is {:?}",
        limits.idle
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_closes_the_sources_open_connections() {
    let pbx = start(calm(), short_limits()).await;
    let mut held = connect("127.0.0.31", pbx.tcp).await;
    assert!(answered(&mut held, 1).await, "the connection is open first");
    let mut control = connect("127.0.0.32", pbx.tcp).await;
    assert!(answered(&mut control, 1).await);
    // The same address shows itself a scanner on another connection: banned.
    let mut scanner = connect("127.0.0.31", pbx.tcp).await;
    let m = options(&scanner, 2, "friendly-scanner");
    scanner.write_all(&m).await.expect("write");
    let ip: IpAddr = "127.0.0.31".parse().expect("ip");
    let deadline = Instant::now() + Duration::from_secs(3);
    while pbx.endpoint.guard.admits(ip) {
        assert!(Instant::now() < deadline, "the scanner was not banned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, closed) = read_for(&mut held, Duration::from_secs(2)).await;
    assert!(closed, "the banned source's earlier connection stayed open");
    assert!(metric(&pbx, |m| &m.tcp_banned_closed) >= 1);
    assert!(answered(&mut control, 2).await, "the control was cut too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_over_tcp_closes_the_connection_and_counts_toward_the_flood_limit() {
    let bans = BanPolicy {
        flood_requests: 20,
        silence_requests: 10,
        ..BanPolicy::default()
    };
    let pbx = start(bans, short_limits()).await;
    let mut control = connect("127.0.0.42", pbx.tcp).await;
    assert!(answered(&mut control, 1).await);
    let ip: IpAddr = "127.0.0.41".parse().expect("ip");
    // A head with no Content-Length cannot be framed.
    let junk = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.41\r\n\r\n";
    let mut sent = 0;
    while pbx.endpoint.guard.admits(ip) {
        assert!(sent < 30, "30 junk connections and no ban");
        let mut c = connect("127.0.0.41", pbx.tcp).await;
        // A refused connection may be reset before the junk goes out.
        let _ = c.write_all(junk).await;
        let (_, closed) = read_for(&mut c, Duration::from_secs(2)).await;
        assert!(closed, "a junk connection stayed open");
        sent += 1;
    }
    assert!(sent > 20, "banned after {sent}: before the flood limit");
    assert!(metric(&pbx, |m| &m.parse_errors) >= 21);
    // Banned now: a new connection is closed at once.
    let mut after = connect("127.0.0.41", pbx.tcp).await;
    assert!(!answered(&mut after, 1).await);
    assert!(answered(&mut control, 2).await, "the control was cut too");
}

/// Marks `ip` as the source of a live registration (as the registrar would after a
/// REGISTER over TCP that answered our nonce).
fn registered(pbx: &Pbx, ip: &str) {
    pbx.endpoint
        .registrar
        .load(vec![store::bindings::BindingRow {
            number: "1000".into(),
            contact: format!("<sip:1000@{ip}:5999;transport=tcp>"),
            call_id: format!("reg-{ip}"),
            cseq: 1,
            expires_at: T0 + 3600,
            source: format!("{ip}:5999"),
            transport: "tcp".into(),
            generation: 1,
        }]);
    assert!(
        pbx.endpoint
            .registrar
            .registered_from(ip.parse().expect("ip"))
    );
}

/// Sends `bytes` to `c` every `every` until `total` passed or the server closed it;
/// how long after `since` it was closed, None when it stayed open.
async fn keep_sending(
    c: &mut TcpStream,
    bytes: &[u8],
    every: Duration,
    total: Duration,
    since: Instant,
) -> Option<Duration> {
    let start = Instant::now();
    let mut bytes = bytes.iter().cycle();
    while start.elapsed() < total {
        let chunk: Vec<u8> = if every >= Duration::from_millis(500) {
            b"\r\n\r\n".to_vec()
        } else {
            bytes.next().map(|b| vec![*b]).unwrap_or_default()
        };
        if c.write_all(&chunk).await.is_err() {
            return Some(since.elapsed());
        }
        let (_, closed) = read_for(c, every).await;
        if closed {
            return Some(since.elapsed());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_connection_gets_the_long_idle_restarted_by_messages_and_keepalives_only() {
    // The long idle made short (`[sip] tcp_idle_registered_secs`; 900 s by default).
    let limits = TcpLimits {
        first_message: Duration::from_secs(1),
        idle: Duration::from_secs(1),
        idle_registered: Duration::from_secs(3),
        message: Duration::from_secs(60),
        ban_check: Duration::from_millis(50),
        ..TcpLimits::default()
    };
    let pbx = start(calm(), limits.clone()).await;
    registered(&pbx, "127.0.0.51");
    let mut phone = connect("127.0.0.51", pbx.tcp).await;
    let mut stranger = connect("127.0.0.52", pbx.tcp).await;
    assert!(answered(&mut phone, 1).await);
    assert!(answered(&mut stranger, 1).await);
    // Keep-alives (RFC 5626 CRLF pings) every second for 5 s: the registered flow
    // outlives its 3 s idle; the stranger's keep-alives keep nothing open (1 s idle).
    let since = Instant::now();
    let stranger_closed = keep_sending(
        &mut stranger,
        b"",
        Duration::from_millis(500),
        Duration::from_secs(3),
        since,
    )
    .await
    .expect("a stranger's keep-alives kept its connection open");
    assert!(
        stranger_closed < Duration::from_secs(3),
        "{stranger_closed:?}"
    );
    let kept = keep_sending(
        &mut phone,
        b"",
        Duration::from_secs(1),
        Duration::from_secs(5),
        Instant::now(),
    )
    .await;
    assert_eq!(
        kept, None,
        "keep-alives restart the registered flow's idle timer"
    );
    // A complete message restarts it too; then bytes alone (a request dripped, never
    // finished) do not: the flow is closed its idle after the last message.
    assert!(answered(&mut phone, 2).await, "open past its idle");
    let last_message = Instant::now();
    let drip = options(&phone, 3, "drip/1.0");
    let closed = keep_sending(
        &mut phone,
        &drip,
        Duration::from_millis(200),
        Duration::from_secs(8),
        last_message,
    )
    .await
    .expect("dripped bytes kept the registered flow open");
    assert!(
        closed >= limits.idle_registered - Duration::from_millis(200)
            && closed < limits.idle_registered + Duration::from_secs(1),
        "closed {closed:?} after the last message; the idle is {:?}",
        limits.idle_registered
    );
    assert!(metric(&pbx, |m| &m.tcp_timeouts) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_capped_per_source_and_per_prefix_and_must_finish_in_time() {
    let limits = TcpLimits {
        first_message: Duration::from_secs(30),
        idle: Duration::from_secs(30),
        unfinished_per_source: 3,
        unfinished_per_prefix: 4,
        ipv4_prefix: 24,
        message: Duration::from_secs(2),
        ban_check: Duration::from_millis(50),
        ..TcpLimits::default()
    };
    let pbx = start(calm(), limits.clone()).await;
    let half = |c: &TcpStream, n| {
        let m = options(c, n, "half/1.0");
        m[..m.len() / 2].to_vec()
    };
    // Six connections from one address, each with half a request.
    let started = Instant::now();
    let mut held = Vec::new();
    for n in 0..6 {
        let mut c = connect("127.0.1.61", pbx.tcp).await;
        let h = half(&c, n);
        c.write_all(&h).await.expect("write");
        held.push(c);
    }
    let mut open = Vec::new();
    for mut c in held {
        let (_, closed) = read_for(&mut c, Duration::from_millis(300)).await;
        if !closed {
            open.push(c);
        }
    }
    assert_eq!(open.len(), 3, "the cap per source");
    assert_eq!(metric(&pbx, |m| &m.tcp_unfinished_closed), 3);
    // Whole requests from that address are still served: only unfinished ones count.
    let mut whole = connect("127.0.1.61", pbx.tcp).await;
    assert!(answered(&mut whole, 10).await);
    // The prefix (a /24 here) holds 4: another address of it gets one more, not two.
    let mut neighbours = Vec::new();
    for n in 0..2 {
        let mut c = connect("127.0.1.62", pbx.tcp).await;
        let h = half(&c, 20 + n);
        c.write_all(&h).await.expect("write");
        neighbours.push(c);
    }
    let mut neighbours_open = 0;
    for c in &mut neighbours {
        if !read_for(c, Duration::from_millis(300)).await.1 {
            neighbours_open += 1;
        }
    }
    assert_eq!(neighbours_open, 1, "the cap per prefix");
    // Control: another network is not affected, and a request finished within the
    // deadline is answered.
    let mut other = connect("127.0.2.63", pbx.tcp).await;
    let m = options(&other, 30, "slow-but-fine/1.0");
    other.write_all(&m[..m.len() / 2]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    other.write_all(&m[m.len() / 2..]).await.expect("write");
    assert!(
        read_for(&mut other, Duration::from_secs(2))
            .await
            .0
            .starts_with("SIP/2.0 200")
    );
    // The held ones are closed at the deadline to finish a message.
    for mut c in open {
        let (_, closed) = read_for(&mut c, Duration::from_secs(4)).await;
        assert!(closed, "an unfinished request outlived its deadline");
    }
    let took = started.elapsed();
    assert!(
        took >= limits.message && took < limits.message * 3,
        "closed after {took:?}"
    );
    // The neighbour's one goes the same way, a little later.
    let (_, closed) = read_for(&mut neighbours[0], Duration::from_secs(4)).await;
    let (_, closed_too) = read_for(&mut neighbours[1], Duration::from_secs(4)).await;
    assert!(closed && closed_too);
    assert_eq!(metric(&pbx, |m| &m.tcp_unfinished_closed), 3 + 1 + 3 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_crlf_ping_is_answered_with_a_crlf_pong() {
    let pbx = start(calm(), short_limits()).await;
    let mut c = connect("127.0.0.51", pbx.tcp).await;
    assert!(answered(&mut c, 1).await, "the connection works");
    // RFC 5626 §4.4.1: CRLFCRLF in, CRLF out; a ping split over two writes too.
    c.write_all(b"\r\n\r\n").await.expect("ping");
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(3), c.read_exact(&mut pong))
        .await
        .expect("a pong within 3 s")
        .expect("read");
    assert_eq!(&pong, b"\r\n");
    c.write_all(b"\r\n").await.expect("half");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"\r\n").await.expect("other half");
    tokio::time::timeout(Duration::from_secs(3), c.read_exact(&mut pong))
        .await
        .expect("a pong within 3 s")
        .expect("read");
    assert_eq!(&pong, b"\r\n");
    // A lone CRLF (a pong of the phone's own) is not answered; a message still is.
    c.write_all(b"\r\n").await.expect("lone");
    assert!(
        answered(&mut c, 2).await,
        "the next message is answered, and nothing before it"
    );
}

/// Keep-alive pings are counted (`sipward_keepalive_pings_total`). From a source with
/// no live registration each counts toward its flood limit: a ping flood bans it and
/// closes its connection. A registered phone's pings are never limited: far more of
/// them than the flood limit are all answered, and the phone is not banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_are_counted_and_only_an_unregistered_sources_are_limited() {
    let bans = BanPolicy {
        flood_requests: 20,
        silence_requests: 10,
        ..BanPolicy::default()
    };
    let pbx = start(bans, short_limits()).await;
    registered(&pbx, "127.0.0.61");
    let mut phone = connect("127.0.0.61", pbx.tcp).await;
    // 100 pings, five times the flood limit, in one write.
    phone
        .write_all(&b"\r\n\r\n".repeat(100))
        .await
        .expect("pings");
    let mut pongs = vec![0u8; 200];
    tokio::time::timeout(Duration::from_secs(3), phone.read_exact(&mut pongs))
        .await
        .expect("every pong within 3 s")
        .expect("read");
    assert!(pongs.chunks(2).all(|p| p == b"\r\n"));
    assert!(pbx.endpoint.guard.admits("127.0.0.61".parse().expect("ip")));
    assert!(metric(&pbx, |m| &m.keepalive_pings) >= 100);

    let ip: IpAddr = "127.0.0.62".parse().expect("ip");
    let mut stranger = connect("127.0.0.62", pbx.tcp).await;
    let _ = stranger.write_all(&b"\r\n\r\n".repeat(100)).await;
    // The first pongs come back; then the connection is closed.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout_at(until, stranger.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(_)) => {}
        }
    };
    assert!(closed, "the ping flood's connection stayed open");
    assert!(
        !pbx.endpoint.guard.admits(ip),
        "the ping flood was not banned"
    );
    assert!(metric(&pbx, |m| &m.keepalive_pings) >= 121);
    // Control: the registered phone's connection still works.
    assert!(answered(&mut phone, 1).await);
}

/// The status line and CSeq number of every response in `text`, in order.
fn responses(text: &str) -> Vec<(String, String, u32)> {
    text.split("SIP/2.0 ")
        .skip(1)
        .filter_map(|r| {
            let status = r.get(..3)?.to_owned();
            let call = r
                .lines()
                .find_map(|l| l.strip_prefix("Call-ID: "))?
                .to_owned();
            let cseq = r
                .lines()
                .find_map(|l| l.strip_prefix("CSeq: "))?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((status, call, cseq))
        })
        .collect()
}

/// Many requests pipelined on one connection (written at once, before any answer is
/// read) are handled beside each other on several lanes: every one is answered, and the
/// answers of each call come back in the order its requests were sent, since one call's
/// messages keep to one lane. A connection also cannot hold more than its share: the
/// reader waits at its bound instead of dropping anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_one_connection_are_all_answered_each_call_in_order() {
    let limits = TcpLimits {
        in_flight: 4,
        ..short_limits()
    };
    let pbx = start_on(calm(), limits, 4).await;
    let mut c = connect("127.0.0.41", pbx.tcp).await;
    let local = c.local_addr().expect("local");
    let (calls, per_call) = (40u32, 10u32);
    let mut all = Vec::new();
    for n in 1..=per_call {
        for call in 0..calls {
            all.extend_from_slice(
                format!(
                    "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-pipe-{call}-{n}\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.41>;tag=p{call}\r\nTo: <sip:{to}>\r\n\
                     Call-ID: pipe-{call}@test\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n",
                    to = pbx.tcp,
                )
                .as_bytes(),
            );
        }
    }
    c.write_all(&all).await.expect("write");
    let want = usize::try_from(calls * per_call).expect("small");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while responses(&String::from_utf8_lossy(&got)).len() < want {
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let answers = responses(&String::from_utf8_lossy(&got));
    assert_eq!(answers.len(), want, "every pipelined request is answered");
    assert!(answers.iter().all(|(s, _, _)| s == "200"), "{answers:?}");
    let mut last: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for (_, call, cseq) in &answers {
        let before = last.insert(call.as_str(), *cseq).unwrap_or(0);
        assert!(
            *cseq == before + 1,
            "{call}: CSeq {cseq} answered after {before}"
        );
    }
}

/// A certificate for 127.0.0.1 in force, and a client configuration that trusts it.
fn tls_pair() -> (Arc<pbx::tls::ServerIdentity>, tokio_rustls::TlsConnector) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("sign");
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
    )
    .expect("seconds");
    let ours =
        pbx::tls::Certificate::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
            .expect("pem");
    let identity = Arc::new(pbx::tls::ServerIdentity::new(&ours, now).expect("in force"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    (identity, tokio_rustls::TlsConnector::from(Arc::new(client)))
}

/// A TLS connection from `from` that completes its handshake and has an OPTIONS
/// answered; false when the server refused it anywhere along the way.
async fn tls_answered(tls: &tokio_rustls::TlsConnector, from: &str, to: SocketAddr) -> bool {
    let c = connect(from, to).await;
    let local = c.local_addr().expect("local");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(3), tls.connect(name, c)).await
    else {
        return false;
    };
    let m = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-tls-{port}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{ip}>;tag=t\r\nTo: <sip:{to}>\r\n\
         Call-ID: tls-{port}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        port = local.port(),
        ip = local.ip(),
    );
    if s.write_all(m.as_bytes()).await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    got.starts_with(b"SIP/2.0 200")
}

/// The start of a TLS ClientHello (a handshake record header announcing more than is
/// sent): the client has spoken, so its handshake is in flight, and it never finishes.
const STALLED_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];

/// A handshake flood is bounded on the whole listener, before any cryptography: with
/// its handshakes in flight at the bound (clients that began and stalled), a further
/// handshake is closed at once and counted, and once the stalled ones have waited a
/// second (or reached their deadline) the server takes and answers handshakes again:
/// never wedged. Connections that
/// never speak (half-open) take no place among the handshakes in flight, so they cannot
/// shut anyone out. Control: with the stalled handshakes under the bound, another client
/// is served beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_refused_before_any_cryptography_and_leaves_the_server_serving() {
    let (identity, client) = tls_pair();
    let limits = TcpLimits {
        handshake: Duration::from_secs(2),
        handshakes: 4,
        ..short_limits()
    };
    let pbx = start_with(calm(), limits, 2, Some(identity)).await;
    let tls = pbx.tls.expect("a TLS listener");
    // Half-open connections, as many as the source may hold: they take no handshake place.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(connect("127.0.0.51", tls).await);
    }
    // Control: three stalled handshakes, under the bound of four, leave room for one.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut c = connect("127.0.0.52", tls).await;
        c.write_all(STALLED_HELLO).await.expect("write");
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tls_answered(&client, "127.0.0.53", tls).await,
        "a client beside three stalled handshakes and eight half-open connections is served"
    );
    assert_eq!(metric(&pbx, |m| &m.tls_handshakes_refused), 0);
    // The flood: the bound is reached, and what comes over it is refused at once.
    for _ in 0..5 {
        let mut c = connect("127.0.0.54", tls).await;
        c.write_all(STALLED_HELLO).await.expect("write");
        stalled.push(c);
    }
    let refused_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&pbx, |m| &m.tls_handshakes_refused) < 4 {
        assert!(
            Instant::now() < deadline,
            "the excess handshakes were not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused_at.elapsed() < Duration::from_secs(1),
        "the excess was refused at once, not at the handshake deadline"
    );
    assert_eq!(
        metric(&pbx, |m| &m.tls_handshakes_refused),
        4,
        "exactly the excess"
    );
    // After the flood: a newcomer takes the place of a handshake stalled for a second
    // (or the stalled ones reach their deadline) and the server takes handshakes again.
    let deadline = Instant::now() + Duration::from_secs(8);
    while !tls_answered(&client, "127.0.0.55", tls).await {
        assert!(
            Instant::now() < deadline,
            "the server stayed wedged after the handshake flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metric(&pbx, |m| &m.tls_handshakes_yielded) + metric(&pbx, |m| &m.tls_handshake_timeouts)
            >= 1,
        "a stalled handshake gave way"
    );
    drop(silent);
}

/// A peer that sends many requests at once and reads its answers only later loses none
/// of them: once the socket buffers are full the writer waits, and the reader stops
/// handing on messages (TCP pushes back on the peer) instead of the writer's queue
/// overflowing and answers being dropped. Control: the peer that reads at once gets as
/// many answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reading_its_answers_late_loses_none() {
    let bans = BanPolicy {
        flood_requests: 100_000,
        silence_requests: 100_000,
        ..BanPolicy::default()
    };
    let pbx = start_on(bans, short_limits(), 2).await;
    const N: usize = 20_000;
    for (ip, late) in [("127.0.0.43", false), ("127.0.0.44", true)] {
        let s = TcpSocket::new_v4().expect("socket");
        // A small window: the answers soon fill the socket buffers.
        s.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
        s.bind(SocketAddr::new(ip.parse().expect("ip"), 0))
            .expect("bind");
        let c = s.connect(pbx.tcp).await.expect("connect");
        let mut all = Vec::new();
        for n in 1..=u32::try_from(N).expect("small") {
            all.extend_from_slice(&options(&c, n, "slow-reader/1.0"));
        }
        let (mut rd, mut wr) = c.into_split();
        let before = metric(&pbx, |m| &m.requests);
        // Written from its own task: once the server pushes back, the write waits.
        let writing = tokio::spawn(async move { wr.write_all(&all).await.map(|()| wr) });
        if late {
            // The slow reader: nothing read until the server has handled every
            // request, or has stopped reading (none handled for 300 ms).
            let until = tokio::time::Instant::now() + Duration::from_secs(20);
            let (mut seen, mut since) = (0, tokio::time::Instant::now());
            loop {
                let now = tokio::time::Instant::now();
                let handled = metric(&pbx, |m| &m.requests);
                if handled - before >= u64::try_from(N).expect("small") {
                    break;
                }
                if handled != seen {
                    (seen, since) = (handled, now);
                } else if seen > 0 && now - since > Duration::from_millis(300) {
                    break;
                }
                assert!(now < until, "the server neither handled all nor stopped");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // An upper bound only (a loaded machine moves 8 MB through a small window
        // slowly): the loop ends as soon as every answer is in.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        // Status lines counted as they come (a Via says "SIP/2.0/TCP", never this).
        let (mut count, mut scanned) = (0, 0);
        while count < N {
            match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    got.extend_from_slice(&buf[..n]);
                    while let Some(at) = got[scanned..].windows(8).position(|w| w == b"SIP/2.0 ") {
                        count += 1;
                        scanned += at + 8;
                    }
                }
                _ => break,
            }
        }
        assert_eq!(count, N, "answers to {ip} (late reader: {late})");
        let _ = writing.await;
    }
}

/// A connection from `ip` that sends `n` OPTIONS and never reads: its answers fill the
/// socket buffers and the writer's queue, and the server's reader waits for room. The
/// sending task ends (with an error) once the server closes the connection. Returns
/// when the server has stopped handling its requests (none for 300 ms).
async fn stalled(
    pbx: &Pbx,
    ip: &str,
    n: u32,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let s = TcpSocket::new_v4().expect("socket");
    s.set_recv_buffer_size(4096).expect("rcvbuf");
    s.bind(SocketAddr::new(ip.parse().expect("ip"), 0))
        .expect("bind");
    let c = s.connect(pbx.tcp).await.expect("connect");
    let mut all = Vec::new();
    for k in 1..=n {
        all.extend_from_slice(&options(&c, k, "never-reads/1.0"));
    }
    let (rd, mut wr) = c.into_split();
    let before = metric(pbx, |m| &m.requests);
    let writing = tokio::spawn(async move {
        wr.write_all(&all).await?;
        // Held open (not shut down) until the server closes: a later write fails.
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            wr.write_all(b"\r\n").await?;
        }
    });
    let until = Instant::now() + Duration::from_secs(10);
    let (mut seen, mut since) = (before, Instant::now());
    loop {
        let handled = metric(pbx, |m| &m.requests);
        if handled != seen {
            (seen, since) = (handled, Instant::now());
        } else if seen > before && since.elapsed() > Duration::from_millis(300) {
            break;
        }
        assert!(Instant::now() < until, "the server never stopped handling");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !writing.is_finished(),
        "the stalled connection was closed at once"
    );
    (rd, writing)
}

/// How long until `writing` (a [`stalled`] connection's sender) saw the server close.
async fn closed_within(
    writing: &mut tokio::task::JoinHandle<std::io::Result<()>>,
    within: Duration,
) -> Option<Duration> {
    let t = Instant::now();
    tokio::time::timeout(within, writing)
        .await
        .ok()
        .map(|_| t.elapsed())
}

/// Attack (#19): a peer that sends and never reads parks the server's reader waiting
/// for room in its writer's queue. It must hold its connection no longer than the write
/// deadline (plus the close deadlines). Finding: when the writer gives up at the write
/// deadline, its queue is dropped and so has room again; the reader only asks whether
/// the writer is gone while the queue is short of room, so it goes on reading and
/// handling the peer's requests (answers dropped) for as long as the peer sends.
/// Control: another source's requests (same lanes) are answered at once meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_cut_at_the_write_deadline_and_stalls_no_other() {
    let bans = BanPolicy {
        flood_requests: 100_000,
        silence_requests: 100_000,
        ..BanPolicy::default()
    };
    let pbx = start_on(bans, short_limits(), 2).await;
    let (_rd, mut writing) = stalled(&pbx, "127.0.0.61", 40_000).await;
    let stalled_at = Instant::now();
    // Control: another source on the same lanes is answered while the first waits.
    let mut other = connect("127.0.0.62", pbx.tcp).await;
    for n in 1..=5 {
        let t = Instant::now();
        assert!(answered(&mut other, n).await, "another source stalled");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "another source slowed"
        );
    }
    let bound = pbx::transport::WRITE_DEADLINE + pbx::transport::CLOSE_DEADLINE;
    let closed = closed_within(&mut writing, bound + Duration::from_secs(3)).await;
    assert!(
        closed.is_some(),
        "a peer that never reads held its connection past {:?}",
        stalled_at.elapsed()
    );
}

/// Attack (#19): a source banned while its connection's reader waits for room in the
/// writer's queue. The wait listened only to the writer and shutdown, not to the ban
/// check, and once the reader was out the connection still waited for its writer, stuck
/// on the peer that does not read: the socket stayed open until the write deadline ran
/// out (9.6 s measured after the ban). Now the ban ends the wait, and the writer gets
/// only the close deadline (2 s) to write what is queued.
/// Control: the same source's idle connection is cut at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_banned_while_its_reader_waits_for_room_is_cut_within_the_close_deadline() {
    let bans = BanPolicy {
        flood_requests: 100_000,
        silence_requests: 100_000,
        ..BanPolicy::default()
    };
    let pbx = start_on(bans, short_limits(), 2).await;
    let mut idle = connect("127.0.0.63", pbx.tcp).await;
    assert!(
        answered(&mut idle, 1).await,
        "the idle connection is open first"
    );
    let (_rd, mut writing) = stalled(&pbx, "127.0.0.63", 40_000).await;
    let banned_before = metric(&pbx, |m| &m.tcp_banned_closed);
    let mut scanner = connect("127.0.0.63", pbx.tcp).await;
    let m = options(&scanner, 2, "friendly-scanner");
    scanner.write_all(&m).await.expect("write");
    let ip: IpAddr = "127.0.0.63".parse().expect("ip");
    let deadline = Instant::now() + Duration::from_secs(3);
    while pbx.endpoint.guard.admits(ip) {
        assert!(Instant::now() < deadline, "the scanner was not banned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Control: the idle connection of the banned source goes at the ban check.
    let (_, closed) = read_for(&mut idle, Duration::from_secs(2)).await;
    assert!(closed, "the banned source's idle connection stayed open");
    let closed = closed_within(&mut writing, Duration::from_secs(15)).await;
    let noticed = metric(&pbx, |m| &m.tcp_banned_closed) - banned_before;
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(4)),
        "the banned, non-reading connection closed after {closed:?} \
         ({noticed} ban closes counted)"
    );
}

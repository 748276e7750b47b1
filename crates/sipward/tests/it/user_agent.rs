//! A raw SIP user agent on tokio sockets, for the relay tests. One type plays every part
//! on the wire: a phone that registers and answers digest challenges, a callee that
//! answers the way the test says, an attacker that sends whatever bytes it likes, and a
//! listener standing for a gateway or a target that records everything reaching it (UDP
//! datagrams, and bytes on any TCP connection made to the same address and port). It
//! knows nothing of sipward's internals: only what RFC 3261 puts on the wire.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::task::JoinHandle;

/// How long a test waits for an answer that must come.
pub const ANSWER: Duration = Duration::from_secs(5);
/// How long a UAC waits for a challenge (or another final answer) before it takes the
/// request as forwarded or dropped.
const CHALLENGE: Duration = Duration::from_secs(2);

/// One message (or, for bytes on a TCP connection we did not frame, one chunk) that
/// reached a user agent.
#[derive(Clone, Debug)]
pub struct Received {
    pub text: String,
    pub from: SocketAddr,
    pub tcp: bool,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Inbox {
    /// Every arrival, in order; `true` once a wait has taken it.
    list: Mutex<Vec<(Received, bool)>>,
}

impl Inbox {
    fn push(&self, r: Received) {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((r, false));
    }
}

/// An extension's (or a gateway's) login.
#[derive(Clone, Debug)]
pub struct Account {
    pub number: String,
    pub auth_id: String,
    pub password: String,
}

/// What a UAC sent for a request it placed (after answering a challenge, if any).
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub method: String,
    pub call_id: String,
    /// The From header value, tag included.
    pub from: String,
    pub to: String,
    pub ruri: String,
    pub cseq: u32,
    pub branch: String,
    pub tcp: bool,
}

/// One side's view of a dialog (RFC 3261 §12).
#[derive(Clone, Debug)]
pub struct Dialog {
    pub call_id: String,
    /// Our From value (with our tag) for requests we send.
    pub local: String,
    /// The peer's (with its tag).
    pub remote: String,
    /// The remote target: the peer's Contact URI.
    pub target: String,
    /// The route set, as `Route` values.
    pub route: Vec<String>,
    pub cseq: u32,
}

impl Dialog {
    /// The caller's view once an answer with a To tag arrived for `out`.
    pub fn uac(out: &Outgoing, answer: &str) -> Dialog {
        let mut route: Vec<String> = headers(answer, "Record-Route")
            .iter()
            .flat_map(|v| split_commas(v))
            .collect();
        route.reverse();
        Dialog {
            call_id: out.call_id.clone(),
            local: out.from.clone(),
            remote: header(answer, "To").unwrap_or_default().to_owned(),
            target: header(answer, "Contact")
                .map(uri_in)
                .unwrap_or(&out.ruri)
                .to_owned(),
            route,
            cseq: out.cseq,
        }
    }

    /// The callee's view of `invite`, answered with `tag`.
    pub fn uas(invite: &str, tag: &str) -> Dialog {
        Dialog {
            call_id: header(invite, "Call-ID").unwrap_or_default().to_owned(),
            local: format!("{};tag={tag}", header(invite, "To").unwrap_or_default()),
            remote: header(invite, "From").unwrap_or_default().to_owned(),
            target: header(invite, "Contact")
                .map(uri_in)
                .unwrap_or_default()
                .to_owned(),
            route: headers(invite, "Record-Route")
                .iter()
                .flat_map(|v| split_commas(v))
                .collect(),
            cseq: 1000,
        }
    }

    /// The URI of sipward's own route entry (its Record-Route, dialog token and all),
    /// or, when sipward recorded no route, the remote target it gave (itself, as a
    /// back-to-back agent).
    pub fn ours(&self) -> String {
        self.route
            .first()
            .map_or(self.target.as_str(), |r| uri_in(r))
            .to_owned()
    }
}

/// A SIP user agent on `ip`: UDP and TCP on the same port.
#[derive(Debug)]
pub struct Ua {
    pub addr: SocketAddr,
    /// sipward's SIP address (UDP and TCP).
    pub pbx: SocketAddr,
    pub account: Option<Account>,
    udp: Arc<UdpSocket>,
    inbox: Arc<Inbox>,
    /// Our connection to sipward, and whether sipward has closed it.
    tcp: tokio::sync::Mutex<Option<(OwnedWriteHalf, Arc<AtomicBool>)>>,
    counter: AtomicU32,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Ua {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// Splits off one framed SIP message (head + Content-Length body) from a stream buffer.
fn frame(buf: &mut Vec<u8>) -> Option<String> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            let n = n.trim();
            (n.eq_ignore_ascii_case("Content-Length") || n.eq_ignore_ascii_case("l"))
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    if buf.len() < end + len {
        return None;
    }
    let msg: Vec<u8> = buf.drain(..end + len).collect();
    Some(String::from_utf8_lossy(&msg).into_owned())
}

impl Ua {
    /// Binds UDP and TCP on `ip` (the same free port for both) and starts recording.
    pub async fn bind(ip: &str, pbx: SocketAddr) -> Ua {
        let ip: IpAddr = ip.parse().expect("an IP address");
        let (udp, listener) = loop {
            let udp = UdpSocket::bind((ip, 0)).await.expect("bind UDP");
            let port = udp.local_addr().expect("addr").port();
            if let Ok(l) = TcpListener::bind((ip, port)).await {
                break (udp, l);
            }
        };
        let addr = udp.local_addr().expect("addr");
        let udp = Arc::new(udp);
        let inbox = Arc::new(Inbox::default());
        let mut tasks = Vec::new();
        let (rx, ib) = (udp.clone(), inbox.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                match rx.recv_from(&mut buf).await {
                    Ok((n, from)) => ib.push(Received {
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                        from,
                        tcp: false,
                        at: Instant::now(),
                    }),
                    // An ICMP error reported on the socket must not end the recording:
                    // a listener that stopped listening would pass every test.
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }));
        let ib = inbox.clone();
        tasks.push(tokio::spawn(async move {
            // Whatever connects to us: every byte is recorded (a listener standing for a
            // target must see a TCP relay as surely as a UDP one).
            loop {
                let Ok((mut s, from)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let ib = ib.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = vec![0u8; 65_536];
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(text) = frame(&mut buf) {
                            ib.push(Received {
                                text,
                                from,
                                tcp: true,
                                at: Instant::now(),
                            });
                        }
                        if buf.len() > 1 << 20 {
                            // Not SIP as we frame it: record the raw bytes all the same.
                            ib.push(Received {
                                text: String::from_utf8_lossy(&buf).into_owned(),
                                from,
                                tcp: true,
                                at: Instant::now(),
                            });
                            buf.clear();
                        }
                    }
                    if !buf.is_empty() {
                        ib.push(Received {
                            text: String::from_utf8_lossy(&buf).into_owned(),
                            from,
                            tcp: true,
                            at: Instant::now(),
                        });
                    }
                });
            }
        }));
        Ua {
            addr,
            pbx,
            account: None,
            udp,
            inbox,
            tcp: tokio::sync::Mutex::new(None),
            counter: AtomicU32::new(0),
            tasks: Mutex::new(tasks),
        }
    }

    /// A user agent that logs in as `account`.
    pub async fn phone(ip: &str, pbx: SocketAddr, account: &Account) -> Ua {
        let mut ua = Ua::bind(ip, pbx).await;
        ua.account = Some(account.clone());
        ua
    }

    fn account(&self) -> &Account {
        self.account
            .as_ref()
            .expect("this user agent has no account")
    }

    pub fn number(&self) -> &str {
        &self.account().number
    }

    /// A fresh token (tags, branches, Call-IDs) unique within this user agent.
    pub fn next(&self, what: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{what}{}x{n}", self.addr.port())
    }

    /// `<sip:NUMBER@ADDR>`: where this phone says it is.
    pub fn contact(&self) -> String {
        let user = self.account.as_ref().map_or("ua", |a| a.number.as_str());
        format!("<sip:{user}@{}>", self.addr)
    }

    /// A minimal SDP offer or answer.
    pub fn sdp(&self, direction: &str) -> String {
        let ip = self.addr.ip();
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n",
            self.addr.port() + 2
        )
    }

    /// The Via sent-by for `tcp` or UDP (our TCP connections use an ephemeral port, so
    /// that side is named by our address with `rport`).
    fn via(&self, tcp: bool, branch: &str) -> String {
        let t = if tcp { "TCP" } else { "UDP" };
        format!("SIP/2.0/{t} {};branch={branch};rport", self.addr)
    }

    /// Sends bytes to sipward over UDP.
    pub async fn send(&self, text: &str) {
        self.send_to(text, self.pbx).await;
    }

    pub async fn send_to(&self, text: &str, to: SocketAddr) {
        self.udp
            .send_to(text.as_bytes(), to)
            .await
            .expect("send UDP");
    }

    /// Sends bytes to sipward on this agent's TCP connection (opened from our address
    /// on first use, and again if sipward closed it; what comes back on it is recorded
    /// like everything else). A connection sipward refuses is a refusal: nothing sent.
    pub async fn send_tcp(&self, text: &str) {
        let mut guard = self.tcp.lock().await;
        for _ in 0..2 {
            if guard
                .as_ref()
                .is_none_or(|(_, closed)| closed.load(Ordering::Acquire))
            {
                *guard = self.connect_tcp().await;
            }
            let Some((w, _)) = guard.as_mut() else {
                return;
            };
            if w.write_all(text.as_bytes()).await.is_ok() {
                return;
            }
            *guard = None;
        }
    }

    async fn connect_tcp(&self) -> Option<(OwnedWriteHalf, Arc<AtomicBool>)> {
        let s = TcpSocket::new_v4().expect("TCP socket");
        s.bind(SocketAddr::new(self.addr.ip(), 0))
            .expect("bind TCP");
        let stream = s.connect(self.pbx).await.ok()?;
        let (mut rd, wr) = stream.into_split();
        let ib = self.inbox.clone();
        let from = self.pbx;
        let closed = Arc::new(AtomicBool::new(false));
        let closing = closed.clone();
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 65_536];
                while let Ok(n) = rd.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(text) = frame(&mut buf) {
                        ib.push(Received {
                            text,
                            from,
                            tcp: true,
                            at: Instant::now(),
                        });
                    }
                }
                closing.store(true, Ordering::Release);
            }));
        Some((wr, closed))
    }

    /// Sends over TCP or UDP.
    pub async fn send_over(&self, tcp: bool, text: &str) {
        if tcp {
            self.send_tcp(text).await;
        } else {
            self.send(text).await;
        }
    }

    /// Everything received so far (taken or not).
    pub fn received(&self) -> Vec<Received> {
        self.inbox
            .list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// How many messages have arrived so far: a mark for [`Ua::quiet_after`].
    pub fn mark(&self) -> usize {
        self.inbox
            .list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Waits until nothing has arrived for `window` (counted from `since` at the
    /// earliest: the last packet an attacker sent), at most `deadline`; returns what
    /// arrived after `mark`. Silence is observed, never assumed.
    pub async fn quiet_after(
        &self,
        mark: usize,
        since: Instant,
        window: Duration,
        deadline: Duration,
    ) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let after: Vec<Received> = self.received().into_iter().skip(mark).collect();
            let last = after.iter().map(|r| r.at).max().unwrap_or(since).max(since);
            if last.elapsed() >= window || start.elapsed() >= deadline {
                return after;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes the first message not taken yet that `pred` accepts, waiting up to
    /// `deadline`.
    pub async fn try_wait(
        &self,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let start = Instant::now();
        loop {
            {
                let mut list = self.inbox.list.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((r, taken)) = list.iter_mut().find(|(r, t)| !*t && pred(&r.text)) {
                    *taken = true;
                    return Some(r.text.clone());
                }
            }
            if start.elapsed() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`Ua::try_wait`] for something that must come: fails naming `what`, with what
    /// did arrive.
    pub async fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        match self.try_wait(ANSWER, pred).await {
            Some(m) => m,
            None => panic!(
                "{what}: nothing within {ANSWER:?} at {}; it received:\n{}",
                self.addr,
                self.received()
                    .iter()
                    .map(|r| first_line(&r.text).to_owned())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    /// Waits for a request `method` in the call `call_id`.
    pub async fn wait_request(&self, method: &str, call_id: &str) -> String {
        self.wait(&format!("{method} of call {call_id}"), |m| {
            request_method(m) == Some(method) && header(m, "Call-ID") == Some(call_id)
        })
        .await
    }

    /// Waits for an answer to `out` whose status `what` accepts.
    pub async fn wait_answer(&self, out: &Outgoing, what: impl Fn(u16) -> bool) -> String {
        self.wait(
            &format!("an answer to {} {}", out.method, out.call_id),
            |m| answers(m, out) && what(status(m)),
        )
        .await
    }

    /// The REGISTER text for this phone's account.
    fn register_text(
        &self,
        call_id: &str,
        cseq: u32,
        contact: &str,
        auth: Option<&str>,
        tcp: bool,
    ) -> String {
        let a = self.account();
        let mut t = format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\n\
             From: <sip:{n}@127.0.0.1>;tag={tag}\r\nTo: <sip:{n}@127.0.0.1>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\nExpires: 3600\r\n",
            self.via(tcp, &self.next("z9hG4bKreg")),
            n = a.number,
            tag = self.next("rt"),
        );
        if let Some(auth) = auth {
            t.push_str(&format!("Authorization: {auth}\r\n"));
        }
        t.push_str("Content-Length: 0\r\n\r\n");
        t
    }

    /// Registers this phone from its own address, naming `contact`; returns the final
    /// answer (whatever it is).
    pub async fn register_as(&self, contact: &str) -> String {
        let call_id = self.next("reg-");
        self.send(&self.register_text(&call_id, 1, contact, None, false))
            .await;
        let challenge = self
            .wait("a 401 to REGISTER", |m| {
                header(m, "Call-ID") == Some(call_id.as_str()) && status(m) >= 200
            })
            .await;
        assert_eq!(status(&challenge), 401, "{challenge}");
        let a = self.account();
        let auth = digest(
            header(&challenge, "WWW-Authenticate").expect("a challenge"),
            "REGISTER",
            "sip:127.0.0.1",
            &a.auth_id,
            &a.password,
        );
        self.send(&self.register_text(&call_id, 2, contact, Some(&auth), false))
            .await;
        self.wait("the answer to an authenticated REGISTER", |m| {
            header(m, "Call-ID") == Some(call_id.as_str())
                && header(m, "CSeq").is_some_and(|c| c.starts_with("2 "))
                && status(m) >= 200
        })
        .await
    }

    /// Registers this phone at its own address; it must be accepted.
    pub async fn register(&self) {
        let answer = self.register_as(&self.contact()).await;
        assert_eq!(
            status(&answer),
            200,
            "REGISTER of {}: {answer}",
            self.number()
        );
    }

    /// A request outside any dialog.
    #[allow(clippy::too_many_arguments)]
    pub fn request_text(
        &self,
        method: &str,
        ruri: &str,
        call_id: &str,
        from: &str,
        to: &str,
        cseq: u32,
        branch: &str,
        tcp: bool,
        extra: &str,
        body: &str,
    ) -> String {
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: {}\r\n{extra}\
             Content-Length: {}\r\n\r\n{body}",
            self.via(tcp, branch),
            self.contact(),
            body.len()
        )
    }

    /// Sends `method` to `ruri` through sipward as this phone's account, answering a
    /// 401/407 challenge once (with `digest_uri` as the digest's `uri=`, normally the
    /// Request-URI). Returns what was sent last and the first final answer, if one came
    /// within two seconds (none for a request that was forwarded, or dropped).
    #[allow(clippy::too_many_arguments)]
    pub async fn request_authenticated(
        &self,
        method: &str,
        ruri: &str,
        digest_uri: &str,
        extra: &str,
        body: &str,
        tcp: bool,
    ) -> (Outgoing, Option<String>) {
        let call_id = self.next("call-");
        let from = format!("<sip:{}@127.0.0.1>;tag={}", self.number(), self.next("ft"));
        // A REGISTER's To is the address of record; anything else's is where it goes.
        let to = if method == "REGISTER" {
            format!("<sip:{}@127.0.0.1>", self.number())
        } else {
            format!("<{ruri}>")
        };
        let mut out = Outgoing {
            method: method.to_owned(),
            call_id: call_id.clone(),
            from: from.clone(),
            to: to.clone(),
            ruri: ruri.to_owned(),
            cseq: 1,
            branch: self.next("z9hG4bKua"),
            tcp,
        };
        let text = self.request_text(
            method,
            ruri,
            &call_id,
            &from,
            &to,
            1,
            &out.branch,
            tcp,
            extra,
            body,
        );
        self.send_over(tcp, &text).await;
        let first = self
            .try_wait(CHALLENGE, |m| answers(m, &out) && status(m) >= 200)
            .await;
        let Some(first) = first else {
            return (out, None);
        };
        let code = status(&first);
        if code != 401 && code != 407 {
            return (out, Some(first));
        }
        if method == "INVITE" {
            self.send_over(tcp, &ack_for(&out, &first, &self.via(tcp, &out.branch)))
                .await;
        }
        let (challenge, answer_header) = if code == 401 {
            ("WWW-Authenticate", "Authorization")
        } else {
            ("Proxy-Authenticate", "Proxy-Authorization")
        };
        let a = self.account();
        let auth = digest(
            header(&first, challenge).expect("a challenge"),
            method,
            digest_uri,
            &a.auth_id,
            &a.password,
        );
        out.cseq = 2;
        out.branch = self.next("z9hG4bKua");
        let text = self.request_text(
            method,
            ruri,
            &call_id,
            &from,
            &to,
            2,
            &out.branch,
            tcp,
            &format!("{extra}{answer_header}: {auth}\r\n"),
            body,
        );
        self.send_over(tcp, &text).await;
        (out, Some(first))
    }

    /// Places an INVITE to `dialled`@sipward (answering the 407), with `extra` headers
    /// and an SDP offer. What happens next is for the test to see.
    pub async fn invite(&self, dialled: &str, extra: &str) -> Outgoing {
        self.invite_over(false, dialled, extra).await
    }

    pub async fn invite_over(&self, tcp: bool, dialled: &str, extra: &str) -> Outgoing {
        let ruri = format!("sip:{dialled}@{}", self.pbx);
        let sdp = self.sdp("sendrecv");
        let extra = format!("{extra}Content-Type: application/sdp\r\n");
        self.request_authenticated("INVITE", &ruri, &ruri, &extra, &sdp, tcp)
            .await
            .0
    }

    /// Answers a received request over UDP, to the address it came from.
    pub async fn reply(
        &self,
        request: &str,
        code: u16,
        reason: &str,
        tag: &str,
        extra: &str,
        body: &str,
    ) {
        let from = self
            .received()
            .into_iter()
            .find(|r| r.text == request)
            .map_or(self.pbx, |r| r.from);
        self.send_to(&response(request, code, reason, tag, extra, body), from)
            .await;
    }

    /// Answers `invite` 180 then 200 (with our Contact and an SDP answer): the callee's
    /// side of an answered call.
    pub async fn answer(&self, invite: &str) -> Dialog {
        let tag = self.next("callee");
        let contact = format!("Contact: {}\r\n", self.contact());
        self.reply(invite, 180, "Ringing", &tag, &contact, "").await;
        let sdp = self.sdp("sendrecv");
        self.reply(
            invite,
            200,
            "OK",
            &tag,
            &format!("{contact}Content-Type: application/sdp\r\n"),
            &sdp,
        )
        .await;
        Dialog::uas(invite, &tag)
    }

    /// An in-dialog request (RFC 3261 §12.2.1.1): the remote target as Request-URI, the
    /// route set as Route. The CSeq moves on.
    pub fn in_dialog_text(
        &self,
        d: &mut Dialog,
        method: &str,
        extra: &str,
        body: &str,
    ) -> (String, String) {
        if method != "ACK" {
            d.cseq += 1;
        }
        let branch = self.next("z9hG4bKdlg");
        let route = if d.route.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", d.route.join(", "))
        };
        let text = format!(
            "{method} {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\n{route}From: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {} {method}\r\nContact: {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            d.target,
            self.via(false, &branch),
            d.local,
            d.remote,
            d.call_id,
            d.cseq,
            self.contact(),
            body.len()
        );
        (text, branch)
    }

    /// Sends an in-dialog request over UDP; returns its text.
    pub async fn send_in_dialog(
        &self,
        d: &mut Dialog,
        method: &str,
        extra: &str,
        body: &str,
    ) -> String {
        let (text, _) = self.in_dialog_text(d, method, extra, body);
        self.send(&text).await;
        text
    }

    /// The ACK for a 2xx to the INVITE that made `d` (CSeq `invite_cseq`).
    pub async fn ack_2xx(&self, d: &Dialog, invite_cseq: u32) {
        let mut d = d.clone();
        d.cseq = invite_cseq;
        self.send_in_dialog(&mut d, "ACK", "", "").await;
    }

    /// The ACK for a non-2xx final answer (same branch as the INVITE, hop by hop).
    pub async fn ack_failure(&self, out: &Outgoing, answer: &str) {
        self.send_over(
            out.tcp,
            &ack_for(out, answer, &self.via(out.tcp, &out.branch)),
        )
        .await;
    }
}

/// The ACK of a non-2xx final answer to `out` (RFC 3261 §17.1.1.3).
fn ack_for(out: &Outgoing, answer: &str, via: &str) -> String {
    format!(
        "ACK {} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\n\
         CSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
        out.ruri,
        out.from,
        header(answer, "To").unwrap_or(&out.to),
        out.call_id,
        out.cseq
    )
}

/// Whether `m` is a response to the request `out` last sent.
pub fn answers(m: &str, out: &Outgoing) -> bool {
    status(m) > 0
        && header(m, "Call-ID") == Some(out.call_id.as_str())
        && cseq(m) == Some((out.cseq, out.method.clone()))
}

/// A response to `request` (RFC 3261 §8.2.6): its Vias, From, Call-ID and CSeq; its To
/// with `tag` (unless it has one, or this is a 100); its Record-Route on answers that
/// make a dialog; then `extra` headers and `body`.
pub fn response(
    request: &str,
    code: u16,
    reason: &str,
    tag: &str,
    extra: &str,
    body: &str,
) -> String {
    let mut t = format!("SIP/2.0 {code} {reason}\r\n");
    for v in headers(request, "Via") {
        t.push_str(&format!("Via: {v}\r\n"));
    }
    if (101..300).contains(&code) && request_method(request) == Some("INVITE") {
        for r in headers(request, "Record-Route") {
            t.push_str(&format!("Record-Route: {r}\r\n"));
        }
    }
    t.push_str(&format!(
        "From: {}\r\n",
        header(request, "From").unwrap_or_default()
    ));
    let to = header(request, "To").unwrap_or_default();
    if code > 100 && tag_of(to).is_none() && !tag.is_empty() {
        t.push_str(&format!("To: {to};tag={tag}\r\n"));
    } else {
        t.push_str(&format!("To: {to}\r\n"));
    }
    t.push_str(&format!(
        "Call-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        header(request, "Call-ID").unwrap_or_default(),
        header(request, "CSeq").unwrap_or_default(),
        body.len()
    ));
    t
}

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(s.as_bytes()))
}

/// The Authorization value answering a Digest `challenge` with MD5 (RFC 2617, qop=auth
/// when offered), computed here independently of sipward's code. `uri` goes into both
/// the hash and `uri=`.
pub fn digest(challenge: &str, method: &str, uri: &str, user: &str, password: &str) -> String {
    let realm = quoted(challenge, "realm").expect("realm");
    let nonce = quoted(challenge, "nonce").expect("nonce");
    let opaque = quoted(challenge, "opaque");
    let qop = quoted(challenge, "qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth"));
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let (cnonce, nc) = ("0a4f113b", "00000001");
    let response = if qop {
        md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
    } else {
        md5_hex(&format!("{ha1}:{nonce}:{ha2}"))
    };
    let mut s = format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5"
    );
    if qop {
        s.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
    }
    if let Some(o) = opaque {
        s.push_str(&format!(", opaque=\"{o}\""));
    }
    s
}

/// A `name="value"` (or `name=value`) parameter of a Digest challenge.
fn quoted<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    let lower = challenge.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(&format!("{name}=")) {
        let at = from + i;
        let boundary = at == 0 || matches!(lower.as_bytes()[at - 1], b' ' | b',' | b'\t');
        let rest = &challenge[at + name.len() + 1..];
        if boundary {
            return Some(match rest.strip_prefix('"') {
                Some(q) => q.split('"').next().unwrap_or(""),
                None => rest.split([',', ' ']).next().unwrap_or(""),
            });
        }
        from = at + 1;
    }
    None
}

/// The first line of a message.
pub fn first_line(m: &str) -> &str {
    m.lines().next().unwrap_or("")
}

/// The status code of a response; 0 for a request.
pub fn status(m: &str) -> u16 {
    let line = first_line(m);
    line.strip_prefix("SIP/2.0 ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The method of a request; None for a response.
pub fn request_method(m: &str) -> Option<&str> {
    let line = first_line(m);
    if line.starts_with("SIP/2.0") {
        return None;
    }
    line.split_whitespace().next()
}

/// The Request-URI of a request.
pub fn request_uri(m: &str) -> Option<&str> {
    request_method(m)?;
    first_line(m).split_whitespace().nth(1)
}

fn compact(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "via" => "v",
        "from" => "f",
        "to" => "t",
        "call-id" => "i",
        "contact" => "m",
        "content-length" => "l",
        "content-type" => "c",
        "subject" => "s",
        "refer-to" => "r",
        _ => return None,
    })
}

/// Every value of header `name` (full or compact form) in the head of `m`, in order.
pub fn headers<'a>(m: &'a str, name: &str) -> Vec<&'a str> {
    let short = compact(name);
    let head = m.split("\r\n\r\n").next().unwrap_or(m);
    head.lines()
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            let n = n.trim();
            (n.eq_ignore_ascii_case(name) || short.is_some_and(|s| n.eq_ignore_ascii_case(s)))
                .then_some(v.trim())
        })
        .collect()
}

/// The first value of header `name`.
pub fn header<'a>(m: &'a str, name: &str) -> Option<&'a str> {
    headers(m, name).into_iter().next()
}

/// The body of a message.
pub fn body(m: &str) -> &str {
    m.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// CSeq number and method.
pub fn cseq(m: &str) -> Option<(u32, String)> {
    let v = header(m, "CSeq")?;
    let mut it = v.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.to_owned()))
}

/// The URI of a name-addr (inside `<>`) or of a bare addr-spec.
pub fn uri_in(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// A parameter's value anywhere in a header value (`;name=value`).
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split([';', '>', ',']).find_map(|p| {
        let (n, v) = p.trim().split_once('=')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// The tag of a From/To value.
pub fn tag_of(value: &str) -> Option<&str> {
    let after = value.rsplit_once('>').map_or(value, |(_, rest)| rest);
    param(after, "tag")
}

/// The entries of a comma-separated header value (commas inside `<>` or quotes kept).
pub fn split_commas(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut cur) = (0i32, false, String::new());
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// The top Via's branch.
pub fn top_branch(m: &str) -> Option<&str> {
    let top = header(m, "Via")?;
    param(top.split(',').next().unwrap_or(top), "branch")
}

/// Adds extension `number` of `class` with known credentials (a test's phone).
pub fn ext(env: &crate::harness::Env, number: &str, class: &str) -> Account {
    let auth_id = format!("ua{number}desk");
    let password = format!("Vb7-qLx9-{number}-Tz4Wm");
    env.ok(&[
        "ext",
        "add",
        number,
        "--auth-id",
        &auth_id,
        "--password",
        &password,
        "--class",
        class,
    ]);
    Account {
        number: number.to_owned(),
        auth_id,
        password,
    }
}

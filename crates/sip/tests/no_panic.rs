//! The parser, every header parser, the request builder and the client transactions
//! must survive any input without panicking.

use proptest::prelude::*;
use sip::header::addr::{NameAddr, SipUri};
use sip::header::auth::DigestCredentials;
use sip::header::cseq::CSeq;
use sip::header::via::Via;
use sip::msg::{self, Name};

const REGISTER: &str = "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK776asdhds;rport\r\n\
To: \"Bob\" <sip:1001@pbx.example.com>\r\n\
From: <sip:1001@pbx.example.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:1001@192.0.2.10:5062>;expires=60, *\r\n\
Authorization: Digest username=\"k3x\", realm=\"r\", nonce=\"n\", uri=\"sip:pbx\", response=\"0a\", qop=auth, nc=00000001, cnonce=\"c\"\r\n\
Content-Length: 0\r\n\r\n";

/// Everything the server does with a message, exercised on whatever parsed.
fn exercise(bytes: &[u8]) {
    let _ = msg::frame_len(bytes, 65_535);
    if let Ok(m) = msg::parse(bytes) {
        for h in &m.headers {
            let v = h.value.as_ref();
            let _ = Via::parse(v);
            let _ = Via::parse_top(v);
            let _ = CSeq::parse(v);
            let _ = DigestCredentials::parse(v);
            for part in sip::header::split_list(v) {
                if let Some(a) = NameAddr::parse(part) {
                    let _ = SipUri::parse(a.uri);
                    let _ = a.tag();
                }
            }
        }
        let src = "192.0.2.1:5060".parse().expect("addr");
        if let Ok(b) = sip::response::ResponseBuilder::new(&m, 400, "Bad Request", src, "t") {
            let out = b.finish();
            // What we print must parse again.
            assert!(
                msg::parse(&out).is_ok(),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
        let _ = m.header(Name::Contact);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        exercise(&bytes);
    }

    #[test]
    fn mutated_register(pos in 0usize..REGISTER.len(), len in 0usize..8, fill in proptest::collection::vec(any::<u8>(), 0..8)) {
        let mut bytes = REGISTER.as_bytes().to_vec();
        let end = (pos + len).min(bytes.len());
        bytes.splice(pos..end, fill);
        exercise(&bytes);
    }

    #[test]
    fn textual_noise_in_headers(value in "[ -~\\t]{0,120}") {
        let text = format!("OPTIONS sip:x SIP/2.0\r\nVia: {value}\r\nTo: {value}\r\nContact: {value}\r\nAuthorization: {value}\r\nCSeq: {value}\r\nl: 0\r\n\r\n");
        exercise(text.as_bytes());
    }
}

// --- The request builder: any value is either refused or printed so that it parses
// back; a control character anywhere is always refused.

mod builder {
    use super::*;
    use sip::branch::Branch;
    use sip::header::cseq::CSeq;
    use sip::request::{Party, RequestBuilder, SentBy, TopVia};

    /// A valid value for every field the builder takes text for, in this order:
    /// method, Request-URI, From URI, From tag, From display name, To URI, To tag,
    /// Call-ID, Contact, Route, header name, header value, sent-by host, transport,
    /// Content-Type.
    const VALID: [&str; 15] = [
        "INVITE",
        "sip:1002@192.0.2.9",
        "sip:1001@pbx.example.com",
        "f1",
        "Alice",
        "sip:1002@pbx.example.com",
        "t1",
        "c1@pbx",
        "sip:1001@192.0.2.1",
        "sip:edge.example.com;lr",
        "X-Peer",
        "some value",
        "pbx.example.com",
        "UDP",
        "application/sdp",
    ];

    /// What a peer might put in a field: plausible, printable noise, or hostile.
    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            "sip:[a-z0-9]{1,8}@[a-z0-9.]{1,12}(;lr)?",
            "[A-Za-z0-9.!%*_+`'~-]{1,12}",
            "[ -~]{0,24}",
            any::<String>(),
            "[ -~]{0,8}[\r\n\t\x00\x7f\u{85}][ -~]{0,8}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Valid requests with up to three fields replaced by anything: never a panic,
        /// never a control character printed, and what is printed parses back.
        #[test]
        fn any_values(
            overrides in proptest::collection::vec((0usize..VALID.len(), hostile()), 0..4),
            cseq in 0u32..=sip::request::MAX_CSEQ,
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut v: Vec<String> = VALID.iter().map(|s| (*s).to_owned()).collect();
            for (i, text) in &overrides {
                v[*i] = text.clone();
            }
            let branch = Branch::new("0123456789abcdef").expect("branch");
            let b = RequestBuilder::new(&v[0], &v[1])
                .via(TopVia { transport: &v[13], sent_by: SentBy::Name { host: &v[12], port: Some(5060) }, branch: &branch, rport: true })
                .from(Party::new(&v[2]).tag(&v[3]).display(&v[4]))
                .to(Party::new(&v[5]).tag(&v[6]))
                .call_id(&v[7])
                .cseq(cseq)
                .contact(&v[8])
                .route(&v[9])
                .header(&v[10], &v[11])
                .body(&v[14], &body);
            let controls = v.iter().any(|t| t.chars().any(char::is_control));
            match b.build() {
                Ok(bytes) => {
                    prop_assert!(!controls, "a control character was printed");
                    let m = msg::parse(&bytes).expect("what we build parses");
                    prop_assert_eq!(msg::frame_len(&bytes, usize::MAX), Ok(Some(bytes.len())));
                    prop_assert_eq!(m.method(), Some(v[0].as_str()));
                    prop_assert_eq!(&m.start, &msg::StartLine::Request { method: &v[0], uri: &v[1] });
                    prop_assert_eq!(m.header(Name::CallId), Some(v[7].as_str()));
                    let c = CSeq::parse(m.header(Name::CSeq).expect("cseq")).expect("parses");
                    prop_assert_eq!((c.seq, c.method), (cseq, v[0].as_str()));
                    let f = NameAddr::parse(m.header(Name::From).expect("from")).expect("parses");
                    prop_assert_eq!((f.uri, f.tag()), (v[2].as_str(), Some(v[3].as_str())));
                    let t = NameAddr::parse(m.header(Name::To).expect("to")).expect("parses");
                    prop_assert_eq!((t.uri, t.tag()), (v[5].as_str(), Some(v[6].as_str())));
                    let route = format!("<{}>", v[9]);
                    prop_assert_eq!(m.header(Name::Route), Some(route.as_str()));
                    prop_assert_eq!(m.headers.iter().find(|h| h.raw_name == v[10]).map(|h| h.value.as_ref()), Some(v[11].trim_matches([' ', '\t'])));
                    prop_assert_eq!(m.body, body.as_slice());
                }
                Err(_) => prop_assert!(!overrides.is_empty(), "valid values refused"),
            }
        }
    }
}

// --- Client transactions: random answers, timers and transport errors never panic
// the table, never send anywhere but the destination given at start, and never
// report anything after Terminated.

mod transactions {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::time::{Duration, Instant};

    use sip::branch::Branch;
    use sip::request::{Party, RequestBuilder, TopVia};
    use sip::transaction::{
        Action, ClientTransactions, Reliability, ResponseClass, State, Timers, TxId,
    };

    #[derive(Clone, Debug)]
    enum Op {
        Start { invite: bool, reliable: bool },
        Respond { which: usize, code: u16, twist: u8 },
        Garbage(Vec<u8>),
        Advance(u64),
        TransportError(usize),
        Cancel(usize),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (any::<bool>(), any::<bool>()).prop_map(|(invite, reliable)| Op::Start { invite, reliable }),
            6 => (0usize..8, prop_oneof![100u16..200, 200u16..300, 300u16..700], 0u8..8)
                .prop_map(|(which, code, twist)| Op::Respond { which, code, twist }),
            1 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Op::Garbage),
            4 => prop_oneof![0u64..600, 0u64..40_000].prop_map(Op::Advance),
            1 => (0usize..8).prop_map(Op::TransportError),
            1 => (0usize..8).prop_map(Op::Cancel),
            1 => (0usize..8).prop_map(Op::Remove),
        ]
    }

    /// What the test knows about a transaction it started (or a CANCEL it asked for).
    #[derive(Debug)]
    struct Known {
        dest: u32,
        request: Vec<u8>,
        invite: bool,
        reliable: bool,
        request_sends: usize,
        /// A final outcome was reported (Failure, TimedOut, TransportFailed).
        failed: bool,
        succeeded: bool,
        finals: usize,
    }

    fn request(method: &str, n: usize) -> Vec<u8> {
        let branch = Branch::new(&format!("prop{n:016}")).expect("branch");
        let local = "192.0.2.1:5060".parse().expect("addr");
        RequestBuilder::new(method, "sip:x@192.0.2.9")
            .via(TopVia::new("UDP", local, &branch))
            .from(Party::new("sip:a@pbx").tag("f"))
            .to(Party::new("sip:x@pbx"))
            .call_id("c@pbx")
            .cseq(1)
            .build()
            .expect("builds")
    }

    fn answer(req: &[u8], code: u16, twist: u8) -> Vec<u8> {
        let m = msg::parse(req).expect("parses");
        let mut via = m.header(Name::Via).expect("via").to_owned();
        let mut cseq = m.header(Name::CSeq).expect("cseq").to_owned();
        match twist {
            0 => via = via.replace("prop", "porp"),
            1 => {
                cseq = cseq
                    .replace("INVITE", "CANCEL")
                    .replace("OPTIONS", "INVITE")
            }
            _ => {}
        }
        format!(
            "SIP/2.0 {code} X\r\nVia: {via}\r\nTo: <sip:x@pbx>;tag=t{twist}\r\nCSeq: {cseq}\r\n\r\n"
        )
        .into_bytes()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn random_sequences(ops in proptest::collection::vec(op(), 1..48)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut table: ClientTransactions<u32> = ClientTransactions::new(5, Timers::default());
            let mut known: HashMap<TxId, Known> = HashMap::new();
            let mut order: Vec<TxId> = Vec::new();
            let mut ended: HashSet<TxId> = HashSet::new();
            let mut dests = 0u32;

            let check = |outs: Vec<sip::transaction::Output<u32>>, known: &mut HashMap<TxId, Known>, ended: &mut HashSet<TxId>| -> Result<(), TestCaseError> {
                for o in outs {
                    prop_assert!(!ended.contains(&o.tx), "output after Terminated: {:?}", o);
                    let k = known.get_mut(&o.tx).expect("outputs only for known ids");
                    match &o.action {
                        Action::Send { to, bytes } => {
                            prop_assert_eq!(*to, k.dest, "sent elsewhere than chosen");
                            if **bytes == *k.request {
                                k.request_sends += 1;
                                prop_assert!(!k.reliable || k.request_sends == 1, "reliable retransmission");
                            } else {
                                let m = msg::parse(bytes).expect("the ACK parses");
                                prop_assert_eq!(m.method(), Some("ACK"));
                                prop_assert!(k.invite);
                            }
                        }
                        Action::Deliver(ResponseClass::Provisional) => {}
                        Action::Deliver(ResponseClass::Success) => {
                            prop_assert!(!k.failed, "a 2xx after a failure must be LateSuccess");
                            prop_assert!(k.invite || k.finals == 0);
                            k.succeeded = true;
                            k.finals += 1;
                        }
                        Action::Deliver(ResponseClass::Failure) | Action::TimedOut | Action::TransportFailed => {
                            prop_assert!(!k.failed && !k.succeeded, "two outcomes");
                            k.failed = true;
                            k.finals += 1;
                        }
                        Action::LateSuccess => prop_assert!(k.invite && k.failed),
                        Action::Terminated => {
                            ended.insert(o.tx);
                        }
                    }
                }
                Ok(())
            };

            for op in ops {
                match op {
                    Op::Start { invite, reliable } => {
                        let req = request(if invite { "INVITE" } else { "OPTIONS" }, order.len() + 100);
                        dests += 1;
                        let rel = if reliable { Reliability::Reliable } else { Reliability::Unreliable };
                        if let Ok((id, outs)) = table.start(req.clone(), dests, rel, now) {
                            known.insert(id, Known { dest: dests, request: req, invite, reliable, request_sends: 0, failed: false, succeeded: false, finals: 0 });
                            order.push(id);
                            check(outs, &mut known, &mut ended)?;
                        }
                    }
                    Op::Respond { which, code, twist } => {
                        let Some(id) = order.get(which % order.len().max(1)) else { continue };
                        let bytes = answer(&known[id].request, code, twist);
                        let m = msg::parse(&bytes).expect("parses");
                        if let Ok(outs) = table.on_response(&m, now) {
                            check(outs, &mut known, &mut ended)?;
                        }
                    }
                    Op::Garbage(bytes) => {
                        if let Ok(m) = msg::parse(&bytes)
                            && let Ok(outs) = table.on_response(&m, now)
                        {
                            check(outs, &mut known, &mut ended)?;
                        }
                    }
                    Op::Advance(ms) => {
                        now += Duration::from_millis(ms);
                        let outs = table.on_deadline(now);
                        check(outs, &mut known, &mut ended)?;
                        prop_assert!(table.next_deadline().is_none_or(|d| d > now), "a due timer left over");
                    }
                    Op::TransportError(which) => {
                        if let Some(id) = order.get(which % order.len().max(1)) {
                            let outs = table.on_transport_error(*id, now);
                            check(outs, &mut known, &mut ended)?;
                        }
                    }
                    Op::Cancel(which) => {
                        let Some(&id) = order.get(which % order.len().max(1)) else { continue };
                        if let Ok((cancel, outs)) = table.cancel(id, now) {
                            let k = &known[&id];
                            let m = msg::parse(&k.request).expect("parses");
                            let req = sip::request::cancel(&m).expect("builds");
                            known.insert(cancel, Known { dest: k.dest, request: req, invite: false, reliable: k.reliable, request_sends: 0, failed: false, succeeded: false, finals: 0 });
                            order.push(cancel);
                            check(outs, &mut known, &mut ended)?;
                        }
                    }
                    Op::Remove(which) => {
                        if let Some(id) = order.get(which % order.len().max(1))
                            && table.remove(*id)
                        {
                            ended.insert(*id);
                        }
                    }
                }
                prop_assert!(table.len() <= table.capacity());
            }
            // Liveness: an hour later only INVITEs left ringing (the TU's to end) remain.
            let end = now + Duration::from_secs(3600);
            while let Some(d) = table.next_deadline() {
                prop_assert!(d <= end, "a deadline beyond an hour");
                now = d;
                let outs = table.on_deadline(now);
                check(outs, &mut known, &mut ended)?;
            }
            for id in &order {
                if let Some(tx) = table.get(*id) {
                    prop_assert!(tx.is_invite() && tx.state() == State::Proceeding && !tx.is_cancelled(), "{:?}", tx.state());
                }
            }
        }
    }
}

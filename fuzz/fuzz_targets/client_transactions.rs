//! Any bytes as a sequence of answers (well-formed ones on our branches and raw
//! ones), timer ticks, cancels and transport errors against a client transaction
//! table: nothing panics, nothing is sent anywhere but where its transaction was
//! started to, and nothing about a transaction follows its Terminated.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sip::branch::Branch;
use sip::request::{Party, RequestBuilder, TopVia};
use sip::transaction::{Action, ClientTransactions, Output, Reliability, Timers, TxId};

const METHODS: [&str; 3] = ["INVITE", "INVITE", "REGISTER"];

fn request(method: &str, n: usize) -> Vec<u8> {
    let branch = Branch::new(&format!("fuzz{n:016}")).expect("valid branch");
    let local = "192.0.2.1:5060".parse().expect("literal address");
    RequestBuilder::new(method, "sip:x@192.0.2.9")
        .via(TopVia::new("UDP", local, &branch))
        .from(Party::new("sip:a@pbx").tag("f"))
        .to(Party::new("sip:x@pbx"))
        .call_id("c@pbx")
        .cseq(1)
        .build()
        .expect("valid request")
}

struct Seen {
    dest: HashMap<TxId, u32>,
    ended: HashSet<TxId>,
}

impl Seen {
    fn check(&mut self, outs: Vec<Output<u32>>) {
        for o in outs {
            assert!(!self.ended.contains(&o.tx), "output after Terminated");
            match o.action {
                Action::Send { to, .. } => assert_eq!(Some(&to), self.dest.get(&o.tx)),
                Action::Terminated => {
                    self.ended.insert(o.tx);
                }
                _ => {}
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The harness's origin; everything after it is moved by the input.
    let mut now = Instant::now();
    let mut table: ClientTransactions<u32> = ClientTransactions::new(8, Timers::default());
    let mut seen = Seen {
        dest: HashMap::new(),
        ended: HashSet::new(),
    };
    let mut ids = Vec::new();
    let mut requests = Vec::new();
    for (n, method) in METHODS.iter().enumerate() {
        let req = request(method, n);
        let reliability = if n == 1 {
            Reliability::Reliable
        } else {
            Reliability::Unreliable
        };
        let dest = n as u32 + 1;
        let (id, outs) = table
            .start(req.clone(), dest, reliability, now)
            .expect("room for three");
        seen.dest.insert(id, dest);
        seen.check(outs);
        ids.push(id);
        requests.push(req);
    }
    let mut rest = data;
    while let [op, a, b, tail @ ..] = rest {
        rest = tail;
        let k = usize::from(*a) % ids.len();
        match op % 6 {
            0 => {
                now += Duration::from_millis(u64::from(u16::from_be_bytes([*a, *b])) * 8);
                let outs = table.on_deadline(now);
                seen.check(outs);
                assert!(table.next_deadline().is_none_or(|d| d > now));
            }
            1 => {
                if let Ok((cancel, outs)) = table.cancel(ids[k], now) {
                    let dest = seen.dest[&ids[k]];
                    seen.dest.insert(cancel, dest);
                    seen.check(outs);
                }
            }
            2 => {
                let outs = table.on_transport_error(ids[k], now);
                seen.check(outs);
            }
            3 => {
                let len = usize::from(*b).min(rest.len());
                let (raw, tail) = rest.split_at(len);
                rest = tail;
                if let Ok(m) = sip::msg::parse(raw)
                    && let Ok(outs) = table.on_response(&m, now)
                {
                    seen.check(outs);
                }
            }
            _ => {
                // A well-formed answer on one of our branches (or its CANCEL's).
                let code = 100 + u16::from_be_bytes([*a, *b]) % 600;
                let method = if op % 6 == 5 { "CANCEL" } else { METHODS[k] };
                let text = format!(
                    "SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfuzz{k:016}\r\n\
                     To: <sip:x@pbx>;tag={b}\r\nCSeq: 1 {method}\r\n\r\n"
                );
                let m = sip::msg::parse(text.as_bytes()).expect("well-formed answer");
                if let Ok(outs) = table.on_response(&m, now) {
                    seen.check(outs);
                }
            }
        }
        assert!(table.len() <= table.capacity());
    }
});

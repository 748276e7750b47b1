//! The parser and every header parser must survive any input without panicking.

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

//! Any bytes through everything the server does with a received message: framing,
//! parsing, every typed header, and building a response (which must parse again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::header::addr::{NameAddr, SipUri};
use sip::header::auth::DigestCredentials;
use sip::header::cseq::CSeq;
use sip::header::via::Via;

fuzz_target!(|data: &[u8]| {
    let _ = sip::msg::frame_len(data, 65_535);
    // An oversized message is answered 513 from its head alone.
    if let Ok(head) = sip::msg::parse_head(data) {
        assert!(head.body.is_empty());
        let src = "192.0.2.1:5060".parse().expect("literal address");
        if let Ok(b) =
            sip::response::ResponseBuilder::new(&head, 513, "Message Too Large", src, "t")
        {
            assert!(sip::msg::parse(&b.finish()).is_ok());
        }
    }
    let Ok(m) = sip::msg::parse(data) else { return };
    for h in &m.headers {
        let v = h.value.as_ref();
        let _ = Via::parse_top(v);
        let _ = CSeq::parse(v);
        let _ = DigestCredentials::parse(v);
        for part in sip::header::split_list(v) {
            if let Some(a) = NameAddr::parse(part) {
                let _ = SipUri::parse(a.uri);
                let _ = a.param("expires");
            }
        }
    }
    let src = "192.0.2.1:5060".parse().expect("literal address");
    if let Ok(b) = sip::response::ResponseBuilder::new(&m, 400, "Bad Request", src, "t") {
        let out = b.finish();
        assert!(sip::msg::parse(&out).is_ok());
    }
});

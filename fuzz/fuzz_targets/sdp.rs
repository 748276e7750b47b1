//! Any bytes as an INVITE's SDP body: parsing, answering, and printing (what sipward
//! prints must parse again, and an answer must parse as an answer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::sdp::{answer, Local, SessionDescription};

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = SessionDescription::parse(data) else { return };
    assert!(SessionDescription::parse(offer.print().as_bytes()).is_ok());
    let local = Local {
        address: "192.0.2.1:10000".parse().expect("literal address"),
        session_id: 1,
        session_version: 1,
    };
    if let Ok((ans, _)) = answer(&offer, local) {
        let back = SessionDescription::parse(ans.print().as_bytes()).expect("answer parses");
        assert_eq!(back.media.len(), offer.media.len());
    }
});

//! RTCP (RFC 3550 §6): the headers of a received compound packet, walked without
//! trusting its lengths, and the two reports sipward sends for a call it answers: an
//! empty receiver report with an SDES CNAME, and BYE when it hangs up.

/// A compound packet with more parts than this is refused.
pub const MAX_PARTS: usize = 16;

/// Packet types (RFC 3550 §12.1).
pub const SR: u8 = 200;
pub const RR: u8 = 201;
pub const SDES: u8 = 202;
pub const BYE: u8 = 203;
pub const APP: u8 = 204;

/// Why a datagram is not an RTCP compound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP packet shorter than its header or its length")]
    BadLength,
    #[error("RTCP version is not 2 or the packet type is unknown")]
    NotRtcp,
    #[error("RTCP compound packet has more than {MAX_PARTS} parts")]
    TooManyParts,
}

/// One part of a compound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcpPart<'a> {
    pub packet_type: u8,
    /// The five-bit count field (reports, sources or subtype).
    pub count: u8,
    /// The sender's SSRC, when the part is long enough to carry one.
    pub ssrc: Option<u32>,
    /// The part after its four-byte header.
    pub body: &'a [u8],
}

/// Splits a compound packet into its parts (RFC 3550 §6.1: the first must be SR or RR).
pub fn parse(b: &[u8]) -> Result<Vec<RtcpPart<'_>>, RtcpError> {
    let mut parts = Vec::new();
    let mut rest = b;
    while !rest.is_empty() {
        if parts.len() == MAX_PARTS {
            return Err(RtcpError::TooManyParts);
        }
        let head = rest.get(..4).ok_or(RtcpError::BadLength)?;
        if head[0] >> 6 != 2 || !(SR..=APP).contains(&head[1]) {
            return Err(RtcpError::NotRtcp);
        }
        let len = 4 * (usize::from(u16::from_be_bytes([head[2], head[3]])) + 1);
        let part = rest.get(..len).ok_or(RtcpError::BadLength)?;
        let body = &part[4..];
        let ssrc = body
            .get(..4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
        parts.push(RtcpPart {
            packet_type: head[1],
            count: head[0] & 0x1F,
            ssrc,
            body,
        });
        rest = &rest[len..];
    }
    match parts.first() {
        Some(p) if p.packet_type == SR || p.packet_type == RR => Ok(parts),
        _ => Err(RtcpError::NotRtcp),
    }
}

fn header(out: &mut Vec<u8>, count: u8, packet_type: u8, words_after: u16) {
    out.push(0x80 | (count & 0x1F));
    out.push(packet_type);
    out.extend_from_slice(&words_after.to_be_bytes());
}

/// An SDES part with one CNAME chunk, padded to a word (RFC 3550 §6.5).
fn sdes(out: &mut Vec<u8>, ssrc: u32, cname: &str) {
    let name = &cname.as_bytes()[..cname.len().min(255)];
    // SSRC + type + length + name + at least one null, to a multiple of four.
    let chunk = 4 + 2 + name.len();
    let padded = (chunk + 1).div_ceil(4) * 4;
    header(out, 1, SDES, (padded / 4) as u16);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.resize(out.len() + padded - chunk, 0);
}

/// An empty receiver report with the SDES CNAME every compound packet must carry.
pub fn receiver_report(ssrc: u32, cname: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    header(&mut out, 0, RR, 1);
    out.extend_from_slice(&ssrc.to_be_bytes());
    sdes(&mut out, ssrc, cname);
    out
}

/// A receiver report, the CNAME, and BYE for `ssrc` (RFC 3550 §6.6).
pub fn bye(ssrc: u32, cname: &str) -> Vec<u8> {
    let mut out = receiver_report(ssrc, cname);
    header(&mut out, 1, BYE, 1);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_reports_parse_back() {
        let rr = receiver_report(0x1234_5678, "sipward");
        assert_eq!(rr.len() % 4, 0);
        let parts = parse(&rr).expect("valid");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].packet_type, RR);
        assert_eq!(parts[0].ssrc, Some(0x1234_5678));
        assert_eq!(parts[1].packet_type, SDES);
        assert_eq!(&parts[1].body[6..13], b"sipward");
        let b = bye(7, "abcd");
        let parts = parse(&b).expect("valid");
        assert_eq!(
            parts.iter().map(|p| p.packet_type).collect::<Vec<_>>(),
            [RR, SDES, BYE]
        );
        assert_eq!(parts[2].ssrc, Some(7));
    }

    #[test]
    fn refuses_lies() {
        assert_eq!(parse(&[0x80, 201, 0]), Err(RtcpError::BadLength));
        assert_eq!(
            parse(&[0x80, 201, 0, 9, 0, 0, 0, 0]),
            Err(RtcpError::BadLength)
        );
        assert_eq!(parse(&[0x40, 201, 0, 0]), Err(RtcpError::NotRtcp));
        assert_eq!(parse(&[0x80, 0, 0, 0]), Err(RtcpError::NotRtcp));
        // A compound packet must start with a report.
        assert_eq!(parse(&[0x81, BYE, 0, 0]), Err(RtcpError::NotRtcp));
        assert_eq!(parse(&[]), Err(RtcpError::NotRtcp));
        let many: Vec<u8> = [0x80, RR, 0, 0].repeat(MAX_PARTS + 1);
        assert_eq!(parse(&many), Err(RtcpError::TooManyParts));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = parse(&b);
        }
    }
}

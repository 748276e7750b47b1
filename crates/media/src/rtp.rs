//! RTP data packets (RFC 3550 §5.1): a borrowed view of a received packet and the
//! builder for the packets sipward sends. CSRC lists, header extensions and padding are
//! read past; a packet whose lengths do not add up is refused, never sliced past its end.

/// The fixed header's length.
pub const HEADER_LEN: usize = 12;

/// Why a datagram is not an RTP packet. Carries no packet bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("RTP packet shorter than its header")]
    TooShort,
    #[error("RTP version is not 2")]
    Version,
    #[error("RTP CSRC list, extension or padding runs past the packet")]
    BadLength,
}

/// A received RTP packet, borrowing its payload from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

impl<'a> RtpPacket<'a> {
    /// Parses a datagram. Payload types 72–76 (RTCP's 200–204 with the marker bit) are
    /// refused as RTP, as RFC 5761 §4 tells the two apart.
    pub fn parse(b: &'a [u8]) -> Result<Self, RtpError> {
        if b.len() < HEADER_LEN {
            return Err(RtpError::TooShort);
        }
        if b[0] >> 6 != 2 {
            return Err(RtpError::Version);
        }
        let padding = b[0] & 0x20 != 0;
        let extension = b[0] & 0x10 != 0;
        let csrc = usize::from(b[0] & 0x0F);
        let marker = b[1] & 0x80 != 0;
        let payload_type = b[1] & 0x7F;
        if (72..=76).contains(&payload_type) {
            return Err(RtpError::Version);
        }
        let mut start = HEADER_LEN + 4 * csrc;
        if extension {
            let words = be16(b, start + 2).ok_or(RtpError::BadLength)?;
            start += 4 + 4 * usize::from(words);
        }
        let mut end = b.len();
        if padding {
            let pad = usize::from(*b.last().ok_or(RtpError::BadLength)?);
            if pad == 0 {
                return Err(RtpError::BadLength);
            }
            end = end.checked_sub(pad).ok_or(RtpError::BadLength)?;
        }
        let payload = b.get(start..end).ok_or(RtpError::BadLength)?;
        Ok(RtpPacket {
            marker,
            payload_type,
            sequence: be16(b, 2).ok_or(RtpError::TooShort)?,
            timestamp: be32(b, 4).ok_or(RtpError::TooShort)?,
            ssrc: be32(b, 8).ok_or(RtpError::TooShort)?,
            payload,
        })
    }

    /// The packet as bytes (no CSRC, extension or padding: sipward never sends them).
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.push(0x80);
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7F));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(self.payload);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_back() {
        let p = RtpPacket {
            marker: true,
            payload_type: 8,
            sequence: 0xBEEF,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x0102_0304,
            payload: &[1, 2, 3],
        };
        let b = p.build();
        assert_eq!(&b[..4], &[0x80, 0x88, 0xBE, 0xEF]);
        assert_eq!(RtpPacket::parse(&b), Ok(p));
    }

    #[test]
    fn reads_past_csrc_extension_and_padding() {
        let mut b = vec![0xB1, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        b.extend_from_slice(&[0xAA; 4]); // one CSRC
        b.extend_from_slice(&[0xBE, 0xDE, 0, 1, 7, 7, 7, 7]); // one-word extension
        b.extend_from_slice(&[5, 6]); // payload
        b.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = RtpPacket::parse(&b).expect("valid");
        assert_eq!(p.payload, &[5, 6]);
        assert_eq!((p.sequence, p.timestamp, p.ssrc), (1, 160, 9));
    }

    #[test]
    fn refuses_what_does_not_add_up() {
        assert_eq!(RtpPacket::parse(&[0x80; 11]), Err(RtpError::TooShort));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::Version));
        let mut rtcp = vec![0x80, 200];
        rtcp.extend_from_slice(&[0; 10]);
        assert_eq!(RtpPacket::parse(&rtcp), Err(RtpError::Version));
        let mut csrc = vec![0x8F, 0];
        csrc.extend_from_slice(&[0; 10]);
        assert_eq!(RtpPacket::parse(&csrc), Err(RtpError::BadLength));
        let mut ext = vec![0x90, 0];
        ext.extend_from_slice(&[0; 10]);
        ext.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
        assert_eq!(RtpPacket::parse(&ext), Err(RtpError::BadLength));
        let mut pad = vec![0xA0, 0];
        pad.extend_from_slice(&[0; 9]);
        pad.push(200);
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::BadLength));
        pad.pop();
        pad.push(0);
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::BadLength));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = RtpPacket::parse(&b);
        }
    }
}

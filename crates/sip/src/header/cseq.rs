//! `CSeq` (RFC 3261 §20.16): sequence number and method.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: &'a str,
}

impl<'a> CSeq<'a> {
    /// The sequence number must fit 32 bits (RFC 3261 §8.1.1.5: less than 2^31 when
    /// chosen, but a 32-bit value is accepted).
    pub fn parse(value: &'a str) -> Option<Self> {
        let mut parts = value.split_ascii_whitespace();
        let seq = parts.next()?.parse().ok()?;
        let method = parts.next()?;
        parts.next().is_none().then_some(Self { seq, method })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq() {
        assert_eq!(
            CSeq::parse("1826 REGISTER"),
            Some(CSeq {
                seq: 1826,
                method: "REGISTER"
            })
        );
        assert_eq!(
            CSeq::parse(" 1   INVITE "),
            Some(CSeq {
                seq: 1,
                method: "INVITE"
            })
        );
        for bad in [
            "",
            "REGISTER",
            "x REGISTER",
            "1",
            "1 A B",
            "4294967296 REGISTER",
        ] {
            assert_eq!(CSeq::parse(bad), None, "{bad:?}");
        }
    }
}

//! G.711 (ITU-T 11/1988) µ-law and A-law, written from the recommendation's segment
//! tables: 16-bit linear samples in, one byte per sample out, and back. Tested against
//! the full 256-entry decode tables and the reference encoder over every 16-bit input.

/// Which companding law a stream uses (RFC 3551: PCMU is µ-law, PCMA is A-law).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Law {
    MuLaw,
    ALaw,
}

impl Law {
    /// Encodes samples, one byte each.
    pub fn encode(self, samples: &[i16]) -> Vec<u8> {
        let f = match self {
            Law::MuLaw => ulaw_encode,
            Law::ALaw => alaw_encode,
        };
        samples.iter().map(|s| f(*s)).collect()
    }

    /// Decodes bytes into `out` (appended), one sample each.
    pub fn decode_into(self, bytes: &[u8], out: &mut Vec<i16>) {
        let f = match self {
            Law::MuLaw => ulaw_decode,
            Law::ALaw => alaw_decode,
        };
        out.extend(bytes.iter().map(|b| f(*b)));
    }

    /// The code for silence (a zero sample), used to fill lost packets.
    pub fn silence(self) -> u8 {
        match self {
            Law::MuLaw => 0xFF,
            Law::ALaw => 0xD5,
        }
    }
}

/// µ-law's bias (33 in 14-bit units, 0x84 in 16-bit ones) and its clip level.
const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 8159;

/// The segment (chord) a biased magnitude falls in: the first whose end is not below it.
fn segment(value: i32, ends: &[i32; 8]) -> usize {
    ends.iter().position(|e| value <= *e).unwrap_or(8)
}

/// A 16-bit sample to its µ-law code. The sample is taken at 14 bits (G.711's µ-law
/// range), the magnitude clipped to 8159 and biased by 33; all bits are inverted.
pub fn ulaw_encode(sample: i16) -> u8 {
    const ENDS: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
    let v = i32::from(sample) >> 2;
    let (magnitude, mask) = if v < 0 { (-v, 0x7F) } else { (v, 0xFF) };
    let biased = magnitude.min(ULAW_CLIP) + (ULAW_BIAS >> 2);
    let seg = segment(biased, &ENDS);
    // The clip keeps `biased` within the last segment; the arm is for completeness.
    let code = if seg >= 8 {
        0x7F
    } else {
        ((seg as i32) << 4) | ((biased >> (seg + 1)) & 0x0F)
    };
    (code ^ mask) as u8
}

/// A µ-law code to its 16-bit sample (the 14-bit value times 4).
pub fn ulaw_decode(code: u8) -> i16 {
    let u = !code;
    let mantissa = i32::from(u & 0x0F);
    let seg = u32::from((u >> 4) & 0x07);
    let t = ((mantissa << 3) + ULAW_BIAS) << seg;
    let v = if u & 0x80 != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    };
    // |v| <= 32124 by construction.
    v as i16
}

/// A 16-bit sample to its A-law code. The sample is taken at 13 bits (G.711's A-law
/// range); negative values are coded from their ones' complement; even bits are
/// inverted (the 0x55 mask).
pub fn alaw_encode(sample: i16) -> u8 {
    const ENDS: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let v = i32::from(sample) >> 3;
    let (magnitude, mask) = if v >= 0 { (v, 0xD5) } else { (-v - 1, 0x55) };
    let seg = segment(magnitude, &ENDS);
    let code = if seg >= 8 {
        0x7F
    } else {
        let shift = if seg < 2 { 1 } else { seg };
        ((seg as i32) << 4) | ((magnitude >> shift) & 0x0F)
    };
    (code ^ mask) as u8
}

/// An A-law code to its 16-bit sample (the 13-bit value times 8).
pub fn alaw_decode(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mantissa = i32::from(a & 0x0F) << 4;
    let seg = u32::from((a >> 4) & 0x07);
    let t = match seg {
        0 => mantissa + 8,
        1 => mantissa + 0x108,
        _ => (mantissa + 0x108) << (seg - 1),
    };
    // |t| <= 32256 by construction.
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711_reference::{ALAW, ULAW};

    #[test]
    fn decode_matches_the_itu_tables() {
        for code in 0..=255u8 {
            assert_eq!(
                ulaw_decode(code),
                ULAW[usize::from(code)],
                "µ-law {code:#04x}"
            );
            assert_eq!(
                alaw_decode(code),
                ALAW[usize::from(code)],
                "A-law {code:#04x}"
            );
        }
        // Anchors read from G.711 Tables 1 and 2: the largest µ-law value is 8031
        // (14-bit), A-law's is 4032 (13-bit); the smallest positive are 0 and 1.
        assert_eq!(ulaw_decode(0x80), 8031 * 4);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(alaw_decode(0xAA), 4032 * 8);
        assert_eq!(alaw_decode(0xD5), 8);
    }

    #[test]
    fn encode_round_trips_every_code() {
        for code in 0..=255u8 {
            // µ-law has two zeros (0xFF and 0x7F); the encoder gives 0xFF for zero.
            let want = if code == 0x7F { 0xFF } else { code };
            assert_eq!(ulaw_encode(ulaw_decode(code)), want, "µ-law {code:#04x}");
            assert_eq!(alaw_encode(alaw_decode(code)), code, "A-law {code:#04x}");
        }
    }

    /// FNV-1a 64 over the reference encoder's output for every sample from -32768 to
    /// 32767 in order (CPython 3.11 `audioop.lin2ulaw`/`lin2alaw`, the CCITT `g711.c`).
    #[test]
    fn encode_matches_the_reference_encoder_on_every_sample() {
        fn fnv(f: fn(i16) -> u8) -> u64 {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for s in i16::MIN..=i16::MAX {
                h = (h ^ u64::from(f(s))).wrapping_mul(0x0100_0000_01b3);
            }
            h
        }
        assert_eq!(fnv(ulaw_encode), 0xd5ee_23f7_d0ff_ae91);
        assert_eq!(fnv(alaw_encode), 0xf030_666e_b780_cf25);
        assert_eq!(ulaw_encode(-1), 0x7E);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn law_helpers() {
        let s = [0i16, 1000, -1000, i16::MAX, i16::MIN];
        for law in [Law::MuLaw, Law::ALaw] {
            let bytes = law.encode(&s);
            let mut back = Vec::new();
            law.decode_into(&bytes, &mut back);
            for (a, b) in s.iter().zip(&back) {
                assert!(
                    (i32::from(*a) - i32::from(*b)).abs() <= 1024,
                    "{law:?} {a} {b}"
                );
            }
            let mut z = Vec::new();
            law.decode_into(&[law.silence()], &mut z);
            assert!(z[0].abs() <= 8);
        }
    }
}

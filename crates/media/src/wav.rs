//! WAV files as sipward records and plays them: RIFF, PCM format 1, 8000 Hz, 16-bit,
//! one channel, as bytes in and out (the caller writes the file). A recording is
//! written header first with a zero length and the header rewritten when it ends, so
//! [`header`] takes the data length. Reading skips chunks it does not know, bounds
//! what it accepts, and refuses any other format.

use crate::SAMPLE_RATE;

/// Length of the header [`header`] writes.
pub const HEADER_LEN: usize = 44;

/// Why bytes are not a WAV file sipward plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF WAVE file")]
    NotWav,
    #[error("WAV file is not 8 kHz 16-bit mono PCM")]
    Format,
    #[error("WAV file's chunks run past its end or it lacks fmt or data")]
    BadLength,
    #[error("WAV file holds more audio than allowed")]
    TooLong,
}

/// The 44-byte header for `data_len` bytes of samples.
pub fn header(data_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let byte_rate = SAMPLE_RATE * 2;
    let fields: [&[u8]; 13] = [
        b"RIFF",
        &data_len.saturating_add(36).to_le_bytes(),
        b"WAVE",
        b"fmt ",
        &16u32.to_le_bytes(),
        &1u16.to_le_bytes(),
        &1u16.to_le_bytes(),
        &SAMPLE_RATE.to_le_bytes(),
        &byte_rate.to_le_bytes(),
        &2u16.to_le_bytes(),
        &16u16.to_le_bytes(),
        b"data",
        &data_len.to_le_bytes(),
    ];
    let mut at = 0;
    for f in fields {
        h[at..at + f.len()].copy_from_slice(f);
        at += f.len();
    }
    h
}

/// Samples as little-endian bytes (the data chunk's body).
pub fn sample_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A whole file.
pub fn encode(samples: &[i16]) -> Vec<u8> {
    let data = sample_bytes(samples);
    let mut out = header(data.len() as u32).to_vec();
    out.extend_from_slice(&data);
    out
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// The samples of a file, at most `max_samples` of them. A data chunk whose length
/// runs past the end (a recording cut by a crash before its header was rewritten, or
/// a streaming writer's 0xFFFFFFFF) is read to the end of the bytes.
pub fn decode(b: &[u8], max_samples: usize) -> Result<Vec<i16>, WavError> {
    if b.get(..4) != Some(b"RIFF") || b.get(8..12) != Some(b"WAVE") {
        return Err(WavError::NotWav);
    }
    let mut at = 12;
    let mut format_ok = false;
    loop {
        let id = b.get(at..at + 4).ok_or(WavError::BadLength)?;
        let len = le32(b, at + 4).ok_or(WavError::BadLength)? as usize;
        let body = at + 8;
        match id {
            b"fmt " => {
                let fmt = b.get(body..body + len.min(64)).ok_or(WavError::BadLength)?;
                if len < 16 {
                    return Err(WavError::BadLength);
                }
                // PCM (1), or WAVE_FORMAT_EXTENSIBLE (0xFFFE) as sox writes some files.
                let tag = le16(fmt, 0).ok_or(WavError::BadLength)?;
                let ok = matches!(tag, 1 | 0xFFFE)
                    && le16(fmt, 2) == Some(1)
                    && le32(fmt, 4) == Some(SAMPLE_RATE)
                    && le16(fmt, 14) == Some(16);
                if !ok {
                    return Err(WavError::Format);
                }
                format_ok = true;
            }
            b"data" => {
                if !format_ok {
                    return Err(WavError::BadLength);
                }
                let end = body.saturating_add(len).min(b.len());
                let data = b.get(body..end).ok_or(WavError::BadLength)?;
                if data.len() / 2 > max_samples {
                    return Err(WavError::TooLong);
                }
                return Ok(data
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect());
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        at = body
            .checked_add(len)
            .and_then(|e| e.checked_add(len & 1))
            .ok_or(WavError::BadLength)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_header_is_canonical() {
        let s: Vec<i16> = (0..400).map(|i| (i * 97 % 2000 - 1000) as i16).collect();
        let b = encode(&s);
        assert_eq!(b.len(), HEADER_LEN + 800);
        assert_eq!(&b[..4], b"RIFF");
        assert_eq!(le32(&b, 4), Some(836));
        assert_eq!(le32(&b, 24), Some(8000));
        assert_eq!(le32(&b, 40), Some(800));
        assert_eq!(decode(&b, 1000), Ok(s));
    }

    #[test]
    fn skips_unknown_chunks_and_reads_cut_files() {
        let s = [1i16, -2, 3];
        let full = encode(&s);
        let mut b = full[..36].to_vec();
        b.extend_from_slice(b"LIST\x03\x00\x00\x00abc\x00");
        let mut data = full[36..].to_vec();
        data[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&data);
        assert_eq!(decode(&b, 10), Ok(s.to_vec()));
    }

    #[test]
    fn refuses_other_formats_and_lies() {
        let good = encode(&[0; 10]);
        assert_eq!(decode(b"RIFX", 10), Err(WavError::NotWav));
        let mut rate = good.clone();
        rate[24..28].copy_from_slice(&16000u32.to_le_bytes());
        assert_eq!(decode(&rate, 10), Err(WavError::Format));
        let mut stereo = good.clone();
        stereo[22] = 2;
        assert_eq!(decode(&stereo, 10), Err(WavError::Format));
        assert_eq!(decode(&good, 9), Err(WavError::TooLong));
        assert_eq!(decode(&good[..30], 10), Err(WavError::BadLength));
        let mut no_fmt = good[..12].to_vec();
        no_fmt.extend_from_slice(&good[36..]);
        assert_eq!(decode(&no_fmt, 10), Err(WavError::BadLength));
        let mut huge = good[..12].to_vec();
        huge.extend_from_slice(b"junk\xff\xff\xff\xff");
        assert_eq!(decode(&huge, 10), Err(WavError::BadLength));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128), at in 0usize..64) {
            let _ = decode(&b, 100);
            let mut g = encode(&[5; 20]);
            if at < g.len() { g[at] ^= 0xA5; }
            let _ = decode(&g, 100);
        }
    }
}

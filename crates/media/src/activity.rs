//! Whether anyone is still there: silence in the received audio, and no media at all.
//! Both are told the time by the caller (the audio's own sample count, or a duration
//! since the call began measured on the caller's clock), so tests need no sleeping.

use std::time::Duration;

/// Detects a stretch of silence: frames whose mean absolute level stays under a
/// threshold for a given time. A caller who stops speaking for that long has hung up
/// in all but name; the recording then ends.
#[derive(Clone, Debug)]
pub struct SilenceDetector {
    threshold: u32,
    limit: u64,
    silent: u64,
}

impl SilenceDetector {
    /// `threshold` is a mean absolute 16-bit level (≈ 300 is −40 dBFS, below speech
    /// and above a quiet line's noise); `limit` the silence that ends a recording.
    pub fn new(threshold: u16, limit: Duration) -> Self {
        SilenceDetector {
            threshold: u32::from(threshold),
            limit: limit.as_millis() as u64 * u64::from(crate::SAMPLE_RATE) / 1000,
            silent: 0,
        }
    }

    /// One frame of audio; true once the silence (in samples of audio) reaches the limit.
    pub fn feed(&mut self, frame: &[i16]) -> bool {
        if frame.is_empty() {
            return self.silent >= self.limit;
        }
        let sum: u64 = frame.iter().map(|s| u64::from(s.unsigned_abs())).sum();
        let mean = sum / frame.len() as u64;
        if mean < u64::from(self.threshold) {
            self.silent += frame.len() as u64;
        } else {
            self.silent = 0;
        }
        self.silent >= self.limit
    }

    /// The current silent stretch.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(self.silent * 1000 / u64::from(crate::SAMPLE_RATE))
    }
}

/// The no-media timeout: a call whose peer has sent nothing for `timeout` is dead
/// (RFC 3550 leaves this to the application; phones that hang up without BYE, or
/// whose BYE was lost, would otherwise hold a port and a recording open).
#[derive(Clone, Copy, Debug)]
pub struct MediaTimeout {
    timeout: Duration,
    last: Duration,
}

impl MediaTimeout {
    /// Starts watching at `now` (the start counts as the last packet).
    pub fn new(timeout: Duration, now: Duration) -> Self {
        MediaTimeout { timeout, last: now }
    }

    /// A packet arrived at `now`.
    pub fn packet(&mut self, now: Duration) {
        self.last = self.last.max(now);
    }

    /// True when nothing has arrived for the timeout.
    pub fn expired(&self, now: Duration) -> bool {
        now.saturating_sub(self.last) >= self.timeout
    }

    /// When to look again if nothing arrives.
    pub fn deadline(&self) -> Duration {
        self.last + self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_ends_after_its_limit_and_speech_resets_it() {
        let mut d = SilenceDetector::new(300, Duration::from_millis(100));
        let quiet = [10i16, -20, 5, 0].repeat(40); // 160 samples = 20 ms
        let loud = [3000i16, -3000].repeat(80);
        for _ in 0..4 {
            assert!(!d.feed(&quiet));
        }
        assert!(!d.feed(&loud));
        assert_eq!(d.silent_for(), Duration::ZERO);
        for _ in 0..4 {
            assert!(!d.feed(&quiet));
        }
        assert!(d.feed(&quiet), "five frames of 20 ms");
        assert_eq!(d.silent_for(), Duration::from_millis(100));
        // Extreme samples do not overflow.
        assert!(!d.feed(&[i16::MIN; 160]));
    }

    #[test]
    fn no_media_timeout() {
        let s = Duration::from_secs;
        let mut t = MediaTimeout::new(s(10), s(0));
        assert!(!t.expired(s(9)));
        t.packet(s(5));
        assert!(!t.expired(s(14)));
        assert!(t.expired(s(15)));
        assert_eq!(t.deadline(), s(15));
        // A clock read out of order never moves it back.
        t.packet(s(1));
        assert_eq!(t.deadline(), s(15));
    }
}

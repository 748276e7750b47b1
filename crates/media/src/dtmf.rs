//! DTMF digits: RFC 4733 telephone-events carried in RTP, and the `application/dtmf-relay`
//! body of a SIP INFO that phones without RFC 4733 send instead.
//!
//! An event is one RTP timestamp: its packets repeat with a growing duration and its
//! end is sent three times (RFC 4733 §2.5.1.4). A digit is reported once, at its first
//! end packet; an event whose end packets were all lost is reported when the next
//! event starts or when the caller calls [`EventReceiver::finish`]. A packet with the
//! timestamp of one of the last few events is a late or repeated packet of that event,
//! never a new digit; any other timestamp starts a new event, even one behind the
//! current (senders that splice recorded events, as SIPp's pcap play does, go back).

/// The digits of events 0–15 (RFC 4733 §3.2).
const DIGITS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

/// One telephone-event payload (RFC 4733 §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

impl Event {
    /// Parses the first four bytes (later blocks of a redundant payload are ignored).
    pub fn parse(payload: &[u8]) -> Option<Event> {
        let b = payload.get(..4)?;
        Some(Event {
            event: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3F,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }

    /// The event's payload bytes.
    pub fn build(&self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }

    /// The DTMF digit of events 0–15; other events (tones, flash) are not digits.
    pub fn digit(&self) -> Option<char> {
        DIGITS.get(usize::from(self.event)).copied()
    }
}

/// The event being received: its timestamp, digit, and whether it was reported.
#[derive(Clone, Copy, Debug)]
struct Current {
    timestamp: u32,
    digit: char,
    reported: bool,
}

/// How many finished events' timestamps are remembered.
const RECENT: usize = 4;

/// Turns the telephone-event packets of one stream into digits, each once.
#[derive(Clone, Debug, Default)]
pub struct EventReceiver {
    current: Option<Current>,
    /// Timestamps of the events before the current one (a ring).
    recent: [Option<u32>; RECENT],
    next_recent: usize,
}

impl EventReceiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// One telephone-event packet with its RTP timestamp; digits it completes are
    /// appended to `out` (at most two: an unended previous event, and this one).
    pub fn receive(&mut self, timestamp: u32, payload: &[u8], out: &mut Vec<char>) {
        let Some(event) = Event::parse(payload) else {
            return;
        };
        let Some(digit) = event.digit() else {
            return;
        };
        match &mut self.current {
            Some(c) if c.timestamp == timestamp => {
                if event.end && !c.reported {
                    c.reported = true;
                    out.push(c.digit);
                }
                return;
            }
            _ => {}
        }
        // A late or repeated packet of an earlier event is not a new event.
        if self.recent.contains(&Some(timestamp)) {
            return;
        }
        if let Some(previous) = self.finish() {
            out.push(previous);
        }
        if let Some(c) = self.current {
            self.recent[self.next_recent] = Some(c.timestamp);
            self.next_recent = (self.next_recent + 1) % RECENT;
        }
        self.current = Some(Current {
            timestamp,
            digit,
            reported: event.end,
        });
        if event.end {
            out.push(digit);
        }
    }

    /// Reports the current event if its end never came (call when the stream stops
    /// sending events for longer than an event lasts).
    pub fn finish(&mut self) -> Option<char> {
        let c = self.current.as_mut()?;
        if c.reported {
            return None;
        }
        c.reported = true;
        Some(c.digit)
    }
}

/// The digit of an `application/dtmf-relay` INFO body (`Signal=5` and `Duration=160`
/// lines, as Cisco and most phones send it).
pub fn parse_dtmf_relay(body: &[u8]) -> Option<char> {
    let text = std::str::from_utf8(body.get(..body.len().min(256))?).ok()?;
    let value = text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
    })?;
    let mut chars = value.chars();
    let c = chars.next()?.to_ascii_uppercase();
    if chars.next().is_some() {
        // Some phones send the event number instead of the digit.
        let n: usize = value.parse().ok()?;
        return DIGITS.get(n).copied();
    }
    DIGITS.contains(&c).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(event: u8, end: bool, duration: u16) -> [u8; 4] {
        Event {
            event,
            end,
            volume: 10,
            duration,
        }
        .build()
    }

    #[test]
    fn an_event_with_retransmitted_ends_is_one_digit() {
        let mut r = EventReceiver::new();
        let mut out = Vec::new();
        for d in [160, 320, 480] {
            r.receive(1000, &packet(5, false, d), &mut out);
        }
        assert!(out.is_empty(), "no digit before the end");
        for _ in 0..3 {
            r.receive(1000, &packet(5, true, 640), &mut out);
        }
        assert_eq!(out, ['5']);
        // The same digit again is a new event with a new timestamp.
        r.receive(2000, &packet(5, false, 160), &mut out);
        r.receive(2000, &packet(5, true, 320), &mut out);
        r.receive(2000, &packet(5, true, 320), &mut out);
        assert_eq!(out, ['5', '5']);
        assert_eq!(r.finish(), None);
    }

    #[test]
    fn lost_ends_are_reported_by_the_next_event_or_finish() {
        let mut r = EventReceiver::new();
        let mut out = Vec::new();
        r.receive(100, &packet(11, false, 160), &mut out);
        r.receive(900, &packet(10, true, 800), &mut out);
        assert_eq!(out, ['#', '*']);
        r.receive(1800, &packet(1, false, 160), &mut out);
        assert_eq!(r.finish(), Some('1'));
        assert_eq!(r.finish(), None);
    }

    #[test]
    fn late_packets_and_non_digits_are_ignored() {
        let mut r = EventReceiver::new();
        let mut out = Vec::new();
        r.receive(5000, &packet(2, true, 160), &mut out);
        r.receive(6000, &packet(4, true, 160), &mut out);
        // A late end packet of the event before: not a new digit.
        r.receive(5000, &packet(2, true, 160), &mut out);
        r.receive(7000, &packet(16, true, 160), &mut out); // flash
        r.receive(8000, &[1, 2], &mut out);
        assert_eq!(out, ['2', '4']);
    }

    #[test]
    fn spliced_events_whose_timestamps_go_back_are_digits() {
        // SIPp plays each digit's pcap with the timestamps it was recorded with.
        let mut r = EventReceiver::new();
        let mut out = Vec::new();
        for (ts, ev) in [
            (17632, 0),
            (13280, 1),
            (43200, 5),
            (92640, 11),
            (13280 + 8, 1),
        ] {
            r.receive(ts, &packet(ev, false, 160), &mut out);
            r.receive(ts, &packet(ev, true, 480), &mut out);
            r.receive(ts, &packet(ev, true, 480), &mut out);
        }
        assert_eq!(out, ['0', '1', '5', '#', '1']);
        // Wrapping timestamps are nothing special.
        r.receive(u32::MAX, &packet(3, true, 160), &mut out);
        r.receive(0, &packet(6, true, 160), &mut out);
        assert_eq!(out[5..], ['3', '6']);
    }

    #[test]
    fn event_build_parse() {
        let e = Event {
            event: 15,
            end: true,
            volume: 63,
            duration: 0xABCD,
        };
        assert_eq!(Event::parse(&e.build()), Some(e));
        assert_eq!(e.digit(), Some('D'));
    }

    #[test]
    fn dtmf_relay_bodies() {
        assert_eq!(parse_dtmf_relay(b"Signal=5\r\nDuration=160\r\n"), Some('5'));
        assert_eq!(parse_dtmf_relay(b"signal= *\nduration=100"), Some('*'));
        assert_eq!(parse_dtmf_relay(b"Signal=11\r\n"), Some('#'));
        assert_eq!(parse_dtmf_relay(b"Signal=a\r\n"), Some('A'));
        for bad in [
            &b""[..],
            b"Signal=\r\n",
            b"Signal=x",
            b"Signal=99",
            b"Duration=1",
            &[0xff, 0xfe],
        ] {
            assert_eq!(parse_dtmf_relay(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(ts in proptest::collection::vec((proptest::prelude::any::<u32>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8)), 0..32),
                        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut r = EventReceiver::new();
            let mut out = Vec::new();
            for (t, p) in &ts {
                r.receive(*t, p, &mut out);
            }
            proptest::prop_assert!(out.len() <= 2 * ts.len());
            let _ = parse_dtmf_relay(&body);
        }
    }
}

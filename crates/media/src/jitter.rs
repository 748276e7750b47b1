//! A small jitter buffer: packets of one stream put back in sequence order (RFC 3550
//! sequence numbers, extended over their wrap), duplicates and packets later than what
//! was already played dropped, at most `capacity` held. Sequence numbers are the only
//! clock it needs: the caller pops when it has received `depth` packets more than it
//! has played, or at the end of the stream.

use std::collections::BTreeMap;

/// What happened to a pushed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Accepted,
    /// Its turn to play has passed.
    Late,
    Duplicate,
    /// The buffer was full (the caller did not pop): the packet was dropped.
    Overflow,
}

/// What comes out next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Playout<T> {
    Packet(T),
    /// This many packets never came (the caller fills the gap, bounded by its own rule).
    Lost(u64),
}

/// The buffer. `T` is what the caller keeps per packet (its payload, usually).
#[derive(Debug)]
pub struct JitterBuffer<T> {
    capacity: usize,
    depth: usize,
    held: BTreeMap<u64, T>,
    /// Extended sequence number of the next packet to play.
    next: Option<u64>,
    /// Highest extended sequence number seen.
    highest: u64,
}

impl<T> JitterBuffer<T> {
    /// `depth` packets are held before a gap is declared lost (e.g. 3 × 20 ms);
    /// `capacity` bounds memory whatever the peer sends.
    pub fn new(depth: usize, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        JitterBuffer {
            capacity,
            depth: depth.clamp(1, capacity),
            held: BTreeMap::new(),
            next: None,
            highest: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The extended number of `seq`: the one nearest the highest seen.
    fn extend(&self, seq: u16) -> u64 {
        let delta = i64::from(seq.wrapping_sub(self.highest as u16) as i16);
        // Start streams at 2^16 so that a first packet's predecessors do not go below 0.
        (self.highest as i64 + delta).max(0) as u64
    }

    pub fn push(&mut self, seq: u16, item: T) -> Pushed {
        let ext = match self.next {
            None => {
                let ext = (1 << 16) + u64::from(seq);
                self.next = Some(ext);
                self.highest = ext;
                ext
            }
            Some(_) => self.extend(seq),
        };
        let next = self.next.unwrap_or(ext);
        if ext < next {
            return Pushed::Late;
        }
        if self.held.contains_key(&ext) {
            return Pushed::Duplicate;
        }
        if self.held.len() >= self.capacity {
            return Pushed::Overflow;
        }
        self.highest = self.highest.max(ext);
        self.held.insert(ext, item);
        Pushed::Accepted
    }

    /// The next packet in order, or the gap before it once `depth` packets wait behind
    /// it; `None` while it is still worth waiting.
    pub fn pop(&mut self) -> Option<Playout<T>> {
        self.pop_with(self.depth)
    }

    /// Like [`pop`](Self::pop) at the end of a stream: nothing more is waited for.
    pub fn drain(&mut self) -> Option<Playout<T>> {
        self.pop_with(1)
    }

    fn pop_with(&mut self, depth: usize) -> Option<Playout<T>> {
        let next = self.next?;
        if let Some(item) = self.held.remove(&next) {
            self.next = Some(next + 1);
            return Some(Playout::Packet(item));
        }
        if self.held.len() < depth {
            return None;
        }
        let (&first, _) = self.held.first_key_value()?;
        self.next = Some(first);
        Some(Playout::Lost(first - next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn played(b: &mut JitterBuffer<u16>, drain: bool) -> Vec<Playout<u16>> {
        let mut out = Vec::new();
        while let Some(p) = if drain { b.drain() } else { b.pop() } {
            out.push(p);
        }
        out
    }

    #[test]
    fn reorders_and_drops_late_and_duplicates() {
        let mut b = JitterBuffer::new(3, 16);
        assert_eq!(b.push(10, 10), Pushed::Accepted);
        assert_eq!(b.push(12, 12), Pushed::Accepted);
        assert_eq!(b.push(11, 11), Pushed::Accepted);
        assert_eq!(b.push(11, 11), Pushed::Duplicate);
        assert_eq!(
            played(&mut b, false),
            [
                Playout::Packet(10),
                Playout::Packet(11),
                Playout::Packet(12)
            ]
        );
        assert_eq!(b.push(9, 9), Pushed::Late);
        assert_eq!(b.push(12, 12), Pushed::Late);
    }

    #[test]
    fn a_gap_is_waited_for_then_declared_lost() {
        let mut b = JitterBuffer::new(2, 16);
        b.push(1, 1);
        assert_eq!(played(&mut b, false), [Playout::Packet(1)]);
        b.push(4, 4);
        assert_eq!(played(&mut b, false), [], "one behind the gap: wait");
        b.push(5, 5);
        assert_eq!(
            played(&mut b, false),
            [Playout::Lost(2), Playout::Packet(4), Playout::Packet(5)]
        );
        // A packet of the gap arriving now is late.
        assert_eq!(b.push(3, 3), Pushed::Late);
        b.push(7, 7);
        assert_eq!(played(&mut b, true), [Playout::Lost(1), Playout::Packet(7)]);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut b = JitterBuffer::new(2, 16);
        for s in [65534u16, 0, 65535, 1] {
            assert_eq!(b.push(s, s), Pushed::Accepted, "{s}");
        }
        assert_eq!(
            played(&mut b, true),
            [65534, 65535, 0, 1].map(Playout::Packet)
        );
    }

    #[test]
    fn bounded_when_the_caller_does_not_pop() {
        let mut b = JitterBuffer::new(4, 8);
        for s in 0..8u16 {
            assert_eq!(b.push(s * 2, s), Pushed::Accepted);
        }
        assert_eq!(b.push(100, 100), Pushed::Overflow);
        assert_eq!(b.len(), 8);
        assert!(matches!(b.pop(), Some(Playout::Packet(0))));
    }

    proptest::proptest! {
        #[test]
        fn plays_in_order_and_never_holds_more_than_capacity(seqs in proptest::collection::vec(proptest::prelude::any::<u16>(), 0..200)) {
            let mut b = JitterBuffer::new(3, 16);
            let mut last: Option<u64> = None;
            let check = |p: Playout<u16>, last: &mut Option<u64>, b: &JitterBuffer<u16>| {
                if let Playout::Packet(_) = p {
                    let n = b.next.unwrap_or(0) - 1;
                    proptest::prop_assert!(last.is_none_or(|l| n > l));
                    *last = Some(n);
                }
                Ok(())
            };
            for s in seqs {
                b.push(s, s);
                while let Some(p) = b.pop() {
                    check(p, &mut last, &b)?;
                }
                proptest::prop_assert!(b.len() <= 16);
            }
            while let Some(p) = b.drain() {
                check(p, &mut last, &b)?;
            }
            proptest::prop_assert!(b.is_empty());
        }
    }
}

//! Voice media for sipward, sans IO and with no workspace dependencies: G.711 µ-law and
//! A-law (RFC 3551 PCMU/PCMA), RTP and RTCP packets (RFC 3550), RFC 4733 telephone
//! events, a bounded jitter buffer, silence and no-media detection, and 8 kHz mono WAV
//! as bytes. The sockets that carry RTP live in `pbx`; the files WAV bytes go to are
//! written there too.
//!
//! Architecture invariant: nothing here performs IO, reads a clock (time is passed in
//! as RTP timestamps or durations the caller measured) or panics on input.

pub mod activity;
pub mod dtmf;
pub mod g711;
#[cfg(test)]
mod g711_reference;
pub mod jitter;
pub mod rtcp;
pub mod rtp;
pub mod wav;

/// Samples per second of G.711 and of every WAV file sipward writes.
pub const SAMPLE_RATE: u32 = 8000;

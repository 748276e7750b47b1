//! What a deposit and a retrieval share about one voicemail call's media: its RTP and
//! RTCP sockets behind the RTP guard, what is sent to the caller (and where: nothing
//! before the latch except to an SDP address on the caller's own IP), and the one rule
//! for what keeps a call open (audio of the negotiated codec and telephone-events;
//! never RTCP or another payload type).
//!
//! The deposit (`voicemail.rs`) and the menu (`voicemail/retrieval.rs`) both build on
//! this file and it names neither, so the imports between the three go one way.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use media::activity::MediaTimeout;
use media::dtmf::EventReceiver;
use media::g711::Law;
use media::rtp::RtpPacket;
use sip::sdp::{self, Codec};

use crate::rtp::{Lease, RtpDrop, RtpPeer, Verdict};
use crate::signalling::Signalling;

/// Samples in one 20 ms G.711 packet.
pub(super) const FRAME: usize = 160;

/// A boxed future, as [`super::Deposits`] and [`super::Boxes`] return (no async-trait
/// dependency).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long things may last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepositLimits {
    /// The longest message recorded; the call is then ended.
    pub max_message: Duration,
    /// Silence this long ends the recording.
    pub silence: Duration,
    /// No audio and no digit for this long ends the call.
    pub no_media: Duration,
    /// A recording shorter than this is not kept (a caller who hung up at the tone).
    pub min_message: Duration,
}

impl Default for DepositLimits {
    fn default() -> Self {
        DepositLimits {
            max_message: Duration::from_secs(180),
            silence: Duration::from_secs(10),
            no_media: Duration::from_secs(20),
            min_message: Duration::from_millis(500),
        }
    }
}

/// What the media task is told by the signalling side.
#[derive(Debug)]
pub(super) enum Signal {
    /// The caller hung up (BYE or CANCEL).
    HungUp,
    /// A digit from a SIP INFO.
    Digit(char),
}

/// The tone after the greeting: 425 Hz for 400 ms at about −12 dBFS.
pub(super) fn tone() -> Vec<i16> {
    (0..3200)
        .map(|i| {
            let t = f64::from(i) / f64::from(media::SAMPLE_RATE);
            (8000.0 * (2.0 * std::f64::consts::PI * 425.0 * t).sin()) as i16
        })
        .collect()
}

/// What one datagram on the RTP socket brought, once the guard let it in.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard<'a> {
    /// A frame of the negotiated codec.
    Audio { sequence: u16, payload: &'a [u8] },
    /// A telephone-event packet and the digits it ended (none for a retransmission or
    /// an event still going on).
    Digits(Vec<char>),
    /// Nothing the call takes: refused, malformed or another payload type (counted).
    Nothing,
}

/// One call's RTP: the sockets, the guard, what is sent, and when the call has gone
/// without media for too long.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) rtp: tokio::net::UdpSocket,
    pub(super) rtcp: tokio::net::UdpSocket,
    _lease: Lease,
    peer: RtpPeer,
    pub(super) law: Law,
    payload_type: u8,
    telephone_event: Option<u8>,
    events: EventReceiver,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    pub(super) sig: Arc<Signalling>,
    /// When the media task started (on the injected clock).
    start: Instant,
    no_media: MediaTimeout,
}

impl Session {
    pub(super) fn new(
        lease: Lease,
        peer: RtpPeer,
        n: sdp::Negotiated,
        sig: Arc<Signalling>,
        no_media: Duration,
    ) -> Option<Self> {
        let rtp = lease.rtp.try_clone().ok()?;
        let rtcp = lease.rtcp.try_clone().ok()?;
        rtp.set_nonblocking(true).ok()?;
        rtcp.set_nonblocking(true).ok()?;
        let seed = sig.token("vm-ssrc");
        let mut h = 0u64;
        for b in seed.bytes() {
            h = h.wrapping_mul(31).wrapping_add(u64::from(b));
        }
        Some(Session {
            rtp: tokio::net::UdpSocket::from_std(rtp).ok()?,
            rtcp: tokio::net::UdpSocket::from_std(rtcp).ok()?,
            _lease: lease,
            peer,
            law: match n.codec {
                Codec::Pcmu => Law::MuLaw,
                Codec::Pcma => Law::ALaw,
            },
            payload_type: n.codec.payload_type(),
            telephone_event: n.telephone_event,
            events: EventReceiver::new(),
            ssrc: h as u32,
            sequence: (h >> 32) as u16,
            timestamp: (h >> 16) as u32,
            start: sig.clock.instant(),
            no_media: MediaTimeout::new(no_media, Duration::ZERO),
            sig,
        })
    }

    /// How long the call has run, on the injected clock.
    pub(super) fn elapsed(&self) -> Duration {
        self.sig
            .clock
            .instant()
            .saturating_duration_since(self.start)
    }

    /// Whether the caller has sent neither audio nor a digit for the no-media time.
    pub(super) fn media_expired(&self) -> bool {
        self.no_media.expired(self.elapsed())
    }

    pub(super) async fn send_frame(&mut self, samples: &[i16], marker: bool) {
        let payload = self.law.encode(samples);
        let p = RtpPacket {
            marker,
            payload_type: self.payload_type,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
            payload: &payload,
        };
        // Before the caller's first packet nothing is sent (see `RtpPeer::target`); the
        // frames still count, so the prompt keeps its time.
        if let Some(target) = self.peer.target() {
            let _ = self.rtp.send_to(&p.build(), target).await;
        }
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples.len() as u32);
    }

    /// Takes what the RTP socket received through the RTP guard. The first packet from
    /// the caller latches the call and connects the socket to it, so the kernel drops
    /// every other source's datagrams before they take room in its queue or cost a
    /// wake-up (a flood to an open port then cannot crowd out the caller's audio).
    ///
    /// Only audio of the negotiated codec and telephone-events are media: they alone
    /// hold the call open. RTCP or another payload type alone would hold the call and
    /// its ports for as long as the caller likes.
    pub(super) async fn hear_rtp<'b>(
        &mut self,
        received: std::io::Result<(usize, SocketAddr)>,
        buf: &'b [u8],
    ) -> Heard<'b> {
        let metrics = &self.sig.metrics;
        let Ok((n, from)) = received else {
            return Heard::Nothing;
        };
        match self.peer.judge(from, self.sig.clock.instant()) {
            Verdict::Refuse => {
                metrics.rtp_dropped(RtpDrop::WrongSource);
                return Heard::Nothing;
            }
            Verdict::Latch => {
                let _ = self.rtp.connect(from).await;
            }
            Verdict::Take => {}
        }
        let Some(Ok(p)) = buf.get(..n).map(RtpPacket::parse) else {
            metrics.rtp_dropped(RtpDrop::Malformed);
            return Heard::Nothing;
        };
        let heard = if p.payload_type == self.payload_type {
            Heard::Audio {
                sequence: p.sequence,
                payload: p.payload,
            }
        } else if Some(p.payload_type) == self.telephone_event {
            let mut digits = Vec::new();
            self.events.receive(p.timestamp, p.payload, &mut digits);
            Heard::Digits(digits)
        } else {
            metrics.rtp_dropped(RtpDrop::UnexpectedPayload);
            return Heard::Nothing;
        };
        let now = self.elapsed();
        self.no_media.packet(now);
        heard
    }

    /// Takes what the RTCP socket received: from the caller's IP and well formed, or
    /// counted as dropped. It never holds the call open (see [`Session::hear_rtp`]).
    pub(super) fn hear_rtcp(&self, received: std::io::Result<(usize, SocketAddr)>, buf: &[u8]) {
        let Ok((n, from)) = received else { return };
        if !self.peer.rtcp_from(from) {
            self.sig.metrics.rtp_dropped(RtpDrop::WrongSource);
        } else if buf
            .get(..n)
            .map(media::rtcp::parse)
            .is_none_or(|r| r.is_err())
        {
            self.sig.metrics.rtp_dropped(RtpDrop::Malformed);
        }
    }

    /// An RTCP BYE to the caller, if the call has a target (see `RtpPeer::target`).
    pub(super) async fn close(&self) {
        if let Some(target) = self.peer.target() {
            let bye = media::rtcp::bye(self.ssrc, "sipward");
            let _ = self
                .rtcp
                .send_to(
                    &bye,
                    SocketAddr::new(target.ip(), target.port().wrapping_add(1)),
                )
                .await;
        }
    }
}

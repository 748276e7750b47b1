//! SDP (RFC 4566) session descriptions and the offer/answer model (RFC 3264) for the
//! one kind of call sipward answers itself: G.711 audio (PCMU or PCMA) with RFC 4733
//! telephone-events.
//!
//! Hostile input arrives here in every INVITE body: the parser never panics, bounds the
//! body, its lines, its media sections and every list, and its errors never quote the
//! input. Lines sipward does not use (`i=`, `u=`, `b=`, `k=`, `z=`, `r=` and unknown
//! attributes) are checked for shape and skipped.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// A body longer than this is refused (an audio offer is a few hundred bytes).
pub const MAX_BODY: usize = 8 * 1024;
/// A description with more lines than this is refused.
pub const MAX_LINES: usize = 256;
/// A description with more media sections than this is refused.
pub const MAX_MEDIA: usize = 8;
/// A media section listing more formats than this is refused.
pub const MAX_FORMATS: usize = 32;
/// A media section with more `rtpmap`/`fmtp` attributes than this is refused.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest text kept from a field (user name, session name, encoding, fmtp parameters).
pub const MAX_TEXT: usize = 256;

/// Why a body is not an SDP description sipward accepts. Coarse and free of input text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("session description longer than {MAX_BODY} bytes")]
    TooLarge,
    #[error("session description not UTF-8")]
    NotUtf8,
    #[error("session description has more than {MAX_LINES} lines")]
    TooManyLines,
    #[error("session description has more than {MAX_MEDIA} media sections")]
    TooManyMedia,
    #[error("media section lists more than {MAX_FORMATS} formats")]
    TooManyFormats,
    #[error("media section has more than {MAX_ATTRIBUTES} rtpmap or fmtp attributes")]
    TooManyAttributes,
    /// Line number (from 1) of a line that is not `x=value` or whose value is malformed.
    #[error("malformed line {0} in session description")]
    Malformed(usize),
    /// A required line (`v=`, `o=`, `s=`, `t=`) is missing or out of order.
    #[error("session description lacks its {0} line")]
    Missing(&'static str),
}

/// The stream direction attribute (RFC 4566 §6; RFC 3264 §6.1 for the answer's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// What the answerer says to an offer of this direction (RFC 3264 §6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }
}

/// `o=` (RFC 4566 §5.2). The address is kept as text: it may be a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: u64,
    pub session_version: u64,
    pub address: String,
}

/// `a=rtpmap:` (RFC 4566 §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// `a=fmtp:` (RFC 4566 §6); the parameters are kept as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fmtp {
    pub payload_type: u8,
    pub parameters: String,
}

/// One `m=` section with the attributes sipward reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, ... as offered.
    pub kind: String,
    pub port: u16,
    /// `RTP/AVP`, `RTP/SAVP`, ... as offered.
    pub protocol: String,
    /// Formats as offered (payload type numbers for RTP; other protocols' tokens are
    /// kept as text so the section can be refused by mirroring it).
    pub formats: Vec<String>,
    /// The section's own `c=`, when it has one.
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap>,
    pub fmtps: Vec<Fmtp>,
    pub direction: Option<Direction>,
    pub ptime: Option<u32>,
}

impl Media {
    /// A section for `kind` at `port` over RTP/AVP with no attributes yet.
    pub fn new(kind: &str, port: u16) -> Self {
        Media {
            kind: kind.to_owned(),
            port,
            protocol: "RTP/AVP".to_owned(),
            formats: Vec::new(),
            connection: None,
            rtpmaps: Vec::new(),
            fmtps: Vec::new(),
            direction: None,
            ptime: None,
        }
    }

    /// The payload types among the formats (non-numeric formats are skipped).
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse().ok())
    }

    /// The rtpmap of `pt`, if the section has one.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.payload_type == pt)
    }
}

/// A session description (RFC 4566 §5), holding what sipward reads and prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin: Origin,
    pub session_name: String,
    /// The session-level `c=`.
    pub connection: Option<IpAddr>,
    /// The session-level direction attribute.
    pub direction: Option<Direction>,
    pub media: Vec<Media>,
}

fn bounded(text: &str, line: usize) -> Result<String, ParseError> {
    if text.len() > MAX_TEXT {
        return Err(ParseError::Malformed(line));
    }
    Ok(text.to_owned())
}

/// `c=IN IP4 addr` / `c=IN IP6 addr` (a TTL or count suffix on multicast is refused:
/// sipward answers only unicast).
fn parse_connection(value: &str, line: usize) -> Result<IpAddr, ParseError> {
    let bad = ParseError::Malformed(line);
    let mut parts = value.split(' ');
    if parts.next() != Some("IN") {
        return Err(bad);
    }
    let family = parts.next().ok_or(bad)?;
    let addr: IpAddr = parts.next().ok_or(bad)?.parse().map_err(|_| bad)?;
    if parts.next().is_some() {
        return Err(bad);
    }
    match (family, addr) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(addr),
        _ => Err(bad),
    }
}

fn parse_origin(value: &str, line: usize) -> Result<Origin, ParseError> {
    let bad = ParseError::Malformed(line);
    let parts: Vec<&str> = value.split(' ').take(7).collect();
    let [username, id, version, "IN", family, address] = parts.as_slice() else {
        return Err(bad);
    };
    if !matches!(*family, "IP4" | "IP6") || username.is_empty() || address.is_empty() {
        return Err(bad);
    }
    Ok(Origin {
        username: bounded(username, line)?,
        session_id: id.parse().map_err(|_| bad)?,
        session_version: version.parse().map_err(|_| bad)?,
        address: bounded(address, line)?,
    })
}

fn parse_media(value: &str, line: usize) -> Result<Media, ParseError> {
    let bad = ParseError::Malformed(line);
    let mut parts = value.split(' ');
    let kind = parts.next().filter(|k| !k.is_empty()).ok_or(bad)?;
    // `port/count` (RFC 4566 §5.14) is for layered multicast: refused.
    let port: u16 = parts.next().ok_or(bad)?.parse().map_err(|_| bad)?;
    let protocol = parts.next().filter(|p| !p.is_empty()).ok_or(bad)?;
    let mut media = Media::new(&bounded(kind, line)?, port);
    media.protocol = bounded(protocol, line)?;
    for f in parts {
        if f.is_empty() || f.len() > 32 {
            return Err(bad);
        }
        if media.formats.len() == MAX_FORMATS {
            return Err(ParseError::TooManyFormats);
        }
        media.formats.push(f.to_owned());
    }
    if media.formats.is_empty() {
        return Err(bad);
    }
    Ok(media)
}

fn parse_payload_type(text: &str, line: usize) -> Result<u8, ParseError> {
    match text.parse::<u8>() {
        Ok(pt) if pt < 128 => Ok(pt),
        _ => Err(ParseError::Malformed(line)),
    }
}

fn parse_rtpmap(value: &str, line: usize) -> Result<RtpMap, ParseError> {
    let bad = ParseError::Malformed(line);
    let (pt, rest) = value.split_once(' ').ok_or(bad)?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next().filter(|e| !e.is_empty()).ok_or(bad)?;
    let clock_rate = parts.next().ok_or(bad)?.parse().map_err(|_| bad)?;
    let channels = match parts.next() {
        Some(c) => Some(c.parse().map_err(|_| bad)?),
        None => None,
    };
    if parts.next().is_some() {
        return Err(bad);
    }
    Ok(RtpMap {
        payload_type: parse_payload_type(pt, line)?,
        encoding: bounded(encoding, line)?,
        clock_rate,
        channels,
    })
}

fn parse_fmtp(value: &str, line: usize) -> Result<Fmtp, ParseError> {
    let (pt, parameters) = value.split_once(' ').ok_or(ParseError::Malformed(line))?;
    Ok(Fmtp {
        payload_type: parse_payload_type(pt, line)?,
        parameters: bounded(parameters.trim(), line)?,
    })
}

impl SessionDescription {
    /// Parses a body. Lines may end in CRLF or LF (RFC 4566 §5 asks CRLF; phones differ).
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        if body.len() > MAX_BODY {
            return Err(ParseError::TooLarge);
        }
        let text = std::str::from_utf8(body).map_err(|_| ParseError::NotUtf8)?;
        let mut lines = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let l = raw.strip_suffix('\r').unwrap_or(raw);
            if l.is_empty() {
                continue;
            }
            if lines.len() == MAX_LINES {
                return Err(ParseError::TooManyLines);
            }
            let n = i + 1;
            let b = l.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
                return Err(ParseError::Malformed(n));
            }
            if l.bytes().any(|c| c.is_ascii_control() && c != b'\t') {
                return Err(ParseError::Malformed(n));
            }
            lines.push((n, b[0], &l[2..]));
        }
        let mut it = lines.into_iter().peekable();
        match it.next() {
            Some((_, b'v', "0")) => {}
            Some((n, b'v', _)) => return Err(ParseError::Malformed(n)),
            _ => return Err(ParseError::Missing("v=")),
        }
        let origin = match it.next() {
            Some((n, b'o', v)) => parse_origin(v, n)?,
            _ => return Err(ParseError::Missing("o=")),
        };
        let session_name = match it.next() {
            Some((n, b's', v)) => bounded(v, n)?,
            _ => return Err(ParseError::Missing("s=")),
        };
        let mut sd = SessionDescription {
            origin,
            session_name,
            connection: None,
            direction: None,
            media: Vec::new(),
        };
        let mut timing = false;
        for (n, kind, value) in it {
            if kind == b'm' {
                if sd.media.len() == MAX_MEDIA {
                    return Err(ParseError::TooManyMedia);
                }
                sd.media.push(parse_media(value, n)?);
                continue;
            }
            match (kind, sd.media.last_mut()) {
                (b'c', None) => sd.connection = Some(parse_connection(value, n)?),
                (b'c', Some(m)) => m.connection = Some(parse_connection(value, n)?),
                (b't', None) => {
                    let mut p = value.split(' ');
                    let ok = p.next().is_some_and(|s| s.parse::<u64>().is_ok())
                        && p.next().is_some_and(|s| s.parse::<u64>().is_ok())
                        && p.next().is_none();
                    if !ok {
                        return Err(ParseError::Malformed(n));
                    }
                    timing = true;
                }
                (b'a', media) => {
                    let (name, arg) = match value.split_once(':') {
                        Some((name, arg)) => (name, Some(arg)),
                        None => (value, None),
                    };
                    let direction = match name {
                        "sendrecv" => Some(Direction::SendRecv),
                        "sendonly" => Some(Direction::SendOnly),
                        "recvonly" => Some(Direction::RecvOnly),
                        "inactive" => Some(Direction::Inactive),
                        _ => None,
                    };
                    match (media, direction, name, arg) {
                        (None, Some(d), _, None) => sd.direction = Some(d),
                        (Some(m), Some(d), _, None) => m.direction = Some(d),
                        (Some(m), None, "rtpmap", Some(arg)) => {
                            if m.rtpmaps.len() == MAX_ATTRIBUTES {
                                return Err(ParseError::TooManyAttributes);
                            }
                            m.rtpmaps.push(parse_rtpmap(arg, n)?);
                        }
                        (Some(m), None, "fmtp", Some(arg)) => {
                            if m.fmtps.len() == MAX_ATTRIBUTES {
                                return Err(ParseError::TooManyAttributes);
                            }
                            m.fmtps.push(parse_fmtp(arg, n)?);
                        }
                        (Some(m), None, "ptime", Some(arg)) => {
                            m.ptime =
                                Some(arg.trim().parse().map_err(|_| ParseError::Malformed(n))?);
                        }
                        (_, Some(_), _, Some(_)) => return Err(ParseError::Malformed(n)),
                        _ => {}
                    }
                }
                (b'i' | b'u' | b'e' | b'p' | b'b' | b'k' | b'z' | b'r', _) => {}
                _ => return Err(ParseError::Malformed(n)),
            }
        }
        if !timing {
            return Err(ParseError::Missing("t="));
        }
        Ok(sd)
    }

    /// The description as an SDP body, CRLF line ends, in RFC 4566's order.
    pub fn print(&self) -> String {
        let mut s = String::with_capacity(256);
        let o = &self.origin;
        let family = |a: &str| if a.contains(':') { "IP6" } else { "IP4" };
        let c = |a: &IpAddr| match a {
            IpAddr::V4(v4) => format!("c=IN IP4 {v4}\r\n"),
            IpAddr::V6(v6) => format!("c=IN IP6 {v6}\r\n"),
        };
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "v=0\r\no={} {} {} IN {} {}\r\ns={}\r\n",
            o.username,
            o.session_id,
            o.session_version,
            family(&o.address),
            o.address,
            if self.session_name.is_empty() {
                "-"
            } else {
                &self.session_name
            }
        );
        if let Some(a) = &self.connection {
            s.push_str(&c(a));
        }
        s.push_str("t=0 0\r\n");
        if let Some(d) = self.direction {
            let _ = write!(s, "a={}\r\n", d.attribute());
        }
        for m in &self.media {
            let _ = write!(s, "m={} {} {}", m.kind, m.port, m.protocol);
            for f in &m.formats {
                let _ = write!(s, " {f}");
            }
            s.push_str("\r\n");
            if let Some(a) = &m.connection {
                s.push_str(&c(a));
            }
            for r in &m.rtpmaps {
                let _ = write!(
                    s,
                    "a=rtpmap:{} {}/{}",
                    r.payload_type, r.encoding, r.clock_rate
                );
                if let Some(ch) = r.channels {
                    let _ = write!(s, "/{ch}");
                }
                s.push_str("\r\n");
            }
            for f in &m.fmtps {
                let _ = write!(s, "a=fmtp:{} {}\r\n", f.payload_type, f.parameters);
            }
            if let Some(p) = m.ptime {
                let _ = write!(s, "a=ptime:{p}\r\n");
            }
            if let Some(d) = m.direction {
                let _ = write!(s, "a={}\r\n", d.attribute());
            }
        }
        s
    }

    /// Where the first media section's RTP should be sent, from its own `c=` or the
    /// session's.
    fn media_address(&self, m: &Media) -> Option<IpAddr> {
        m.connection.or(self.connection)
    }
}

/// The two G.711 laws sipward speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// µ-law, static payload type 0.
    Pcmu,
    /// A-law, static payload type 8.
    Pcma,
}

impl Codec {
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    fn encoding(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The codec a format of `m` means, by rtpmap when one is given, else by the static
    /// assignment of RFC 3551.
    fn of(m: &Media, pt: u8) -> Option<Codec> {
        match m.rtpmap(pt) {
            Some(r) if r.clock_rate == 8000 && r.channels.unwrap_or(1) == 1 => {
                if r.encoding.eq_ignore_ascii_case("PCMU") {
                    Some(Codec::Pcmu)
                } else if r.encoding.eq_ignore_ascii_case("PCMA") {
                    Some(Codec::Pcma)
                } else {
                    None
                }
            }
            Some(_) => None,
            None => match pt {
                0 => Some(Codec::Pcmu),
                8 => Some(Codec::Pcma),
                _ => None,
            },
        }
    }
}

/// What an accepted offer settled: where to send, in what, and how digits come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The address and port the offer asked RTP to be sent to.
    pub remote: SocketAddr,
    pub codec: Codec,
    /// The offer's payload type for telephone-event at 8000 Hz, if it offered one.
    pub telephone_event: Option<u8>,
    /// Packet time in milliseconds (the offer's, or 20).
    pub ptime: u32,
    /// The direction of our answer.
    pub direction: Direction,
}

/// Why an offer cannot be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// No `m=audio` section over RTP/AVP with a non-zero port offers PCMU or PCMA
    /// (answered 488 Not Acceptable Here).
    #[error("no acceptable audio stream in the offer")]
    NoCommonCodec,
    /// The audio section has no connection address.
    #[error("the offer's audio stream has no connection address")]
    NoAddress,
}

/// Who we are in the answer: our RTP address and the `o=` line's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub address: SocketAddr,
    pub session_id: u64,
    pub session_version: u64,
}

/// Packet time when the offer names none or one sipward does not send (RFC 3551's 20 ms).
const PTIME_DEFAULT: u32 = 20;

/// Answers an offer (RFC 3264 §6): the first acceptable audio stream is accepted with
/// the offer's first G.711 law and its telephone-event payload type; every other
/// section is refused with port 0, mirroring its formats as §6 asks.
pub fn answer(
    offer: &SessionDescription,
    local: Local,
) -> Result<(SessionDescription, Negotiated), AnswerError> {
    let mut chosen: Option<(usize, Negotiated)> = None;
    let mut no_address = false;
    for (i, m) in offer.media.iter().enumerate() {
        if m.kind != "audio" || m.port == 0 || !m.protocol.eq_ignore_ascii_case("RTP/AVP") {
            continue;
        }
        let Some(codec) = m.payload_types().find_map(|pt| Codec::of(m, pt)) else {
            continue;
        };
        let Some(addr) = offer.media_address(m) else {
            no_address = true;
            continue;
        };
        let telephone_event = m.payload_types().find(|pt| {
            m.rtpmap(*pt).is_some_and(|r| {
                r.encoding.eq_ignore_ascii_case("telephone-event") && r.clock_rate == 8000
            })
        });
        let direction = m.direction.or(offer.direction).unwrap_or_default().answer();
        let ptime = m
            .ptime
            .filter(|p| (10..=60).contains(p) && p % 10 == 0)
            .unwrap_or(PTIME_DEFAULT);
        chosen = Some((
            i,
            Negotiated {
                remote: SocketAddr::new(addr, m.port),
                codec,
                telephone_event,
                ptime,
                direction,
            },
        ));
        break;
    }
    let Some((index, negotiated)) = chosen else {
        return Err(if no_address {
            AnswerError::NoAddress
        } else {
            AnswerError::NoCommonCodec
        });
    };
    let media = offer
        .media
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if i != index {
                let mut refused = Media::new(&m.kind, 0);
                refused.protocol.clone_from(&m.protocol);
                refused.formats.clone_from(&m.formats);
                return refused;
            }
            let mut a = Media::new("audio", local.address.port());
            let codec = negotiated.codec;
            a.formats.push(codec.payload_type().to_string());
            a.rtpmaps.push(RtpMap {
                payload_type: codec.payload_type(),
                encoding: codec.encoding().to_owned(),
                clock_rate: 8000,
                channels: None,
            });
            if let Some(pt) = negotiated.telephone_event {
                a.formats.push(pt.to_string());
                a.rtpmaps.push(RtpMap {
                    payload_type: pt,
                    encoding: "telephone-event".to_owned(),
                    clock_rate: 8000,
                    channels: None,
                });
                a.fmtps.push(Fmtp {
                    payload_type: pt,
                    parameters: "0-15".to_owned(),
                });
            }
            a.ptime = Some(negotiated.ptime);
            a.direction = Some(negotiated.direction);
            a
        })
        .collect();
    let answer = SessionDescription {
        origin: Origin {
            username: "sipward".to_owned(),
            session_id: local.session_id,
            session_version: local.session_version,
            address: local.address.ip().to_string(),
        },
        session_name: "sipward".to_owned(),
        connection: Some(local.address.ip()),
        direction: None,
        media,
    };
    Ok((answer, negotiated))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINPHONE: &str = "v=0\r\n\
o=1001 3342 2143 IN IP4 192.168.1.20\r\n\
s=Talk\r\n\
c=IN IP4 192.168.1.20\r\n\
t=0 0\r\n\
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\r\n\
m=audio 7078 RTP/AVP 96 97 98 0 8 101\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=fmtp:96 useinbandfec=1\r\n\
a=rtpmap:97 speex/16000\r\n\
a=rtpmap:98 speex/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=ptime:20\r\n\
m=video 9078 RTP/AVP 103\r\n\
a=rtpmap:103 VP8/90000\r\n";

    fn local() -> Local {
        Local {
            address: "203.0.113.5:10000".parse().expect("literal"),
            session_id: 7,
            session_version: 1,
        }
    }

    #[test]
    fn parses_a_phone_offer() {
        let sd = SessionDescription::parse(LINPHONE.as_bytes()).expect("parses");
        assert_eq!(sd.origin.username, "1001");
        assert_eq!(sd.origin.session_id, 3342);
        assert_eq!(sd.connection, Some("192.168.1.20".parse().expect("ip")));
        assert_eq!(sd.media.len(), 2);
        let a = &sd.media[0];
        assert_eq!((a.kind.as_str(), a.port), ("audio", 7078));
        assert_eq!(
            a.payload_types().collect::<Vec<_>>(),
            [96, 97, 98, 0, 8, 101]
        );
        assert_eq!(a.rtpmap(96).map(|r| r.channels), Some(Some(2)));
        assert_eq!(a.fmtps[0].parameters, "useinbandfec=1");
        assert_eq!(a.ptime, Some(20));
    }

    #[test]
    fn answers_first_g711_with_telephone_event_and_refuses_video() {
        let offer = SessionDescription::parse(LINPHONE.as_bytes()).expect("parses");
        let (ans, n) = answer(&offer, local()).expect("answerable");
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.remote, "192.168.1.20:7078".parse().expect("addr"));
        assert_eq!(n.direction, Direction::SendRecv);
        let text = ans.print();
        assert_eq!(
            text,
            "v=0\r\no=sipward 7 1 IN IP4 203.0.113.5\r\ns=sipward\r\n\
c=IN IP4 203.0.113.5\r\nt=0 0\r\n\
m=audio 10000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n\
m=video 0 RTP/AVP 103\r\n"
        );
        // The answer parses back to itself.
        assert_eq!(SessionDescription::parse(text.as_bytes()), Ok(ans));
    }

    #[test]
    fn pcma_first_ipv6_media_level_connection_and_sendonly() {
        let offer = "v=0\no=- 1 1 IN IP6 2001:db8::1\ns=-\nt=0 0\n\
m=audio 4000 RTP/AVP 8 0\nc=IN IP6 2001:db8::2\na=sendonly\n";
        let sd = SessionDescription::parse(offer.as_bytes()).expect("parses");
        let mut l = local();
        l.address = "[2001:db8::5]:10002".parse().expect("addr");
        let (ans, n) = answer(&sd, l).expect("answerable");
        assert_eq!(n.codec, Codec::Pcma);
        assert_eq!(n.telephone_event, None);
        assert_eq!(n.remote, "[2001:db8::2]:4000".parse().expect("addr"));
        assert_eq!(n.direction, Direction::RecvOnly);
        let text = ans.print();
        assert!(
            text.contains("o=sipward 7 1 IN IP6 2001:db8::5\r\n"),
            "{text}"
        );
        assert!(text.contains("c=IN IP6 2001:db8::5\r\n"), "{text}");
        assert!(text.contains("m=audio 10002 RTP/AVP 8\r\n"), "{text}");
    }

    #[test]
    fn rtpmap_overrides_static_numbers() {
        // PT 0 remapped to something else is not PCMU; a dynamic PT named PCMA is.
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 99\r\na=rtpmap:0 G722/8000\r\na=rtpmap:99 PCMA/8000\r\n";
        let sd = SessionDescription::parse(offer.as_bytes()).expect("parses");
        let (_, n) = answer(&sd, local()).expect("answerable");
        assert_eq!(n.codec, Codec::Pcma);
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        let no_g711 = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 9\r\nm=audio 0 RTP/AVP 0\r\nm=audio 4002 RTP/SAVP 0\r\n";
        let sd = SessionDescription::parse(no_g711.as_bytes()).expect("parses");
        assert_eq!(answer(&sd, local()), Err(AnswerError::NoCommonCodec));
        let no_addr =
            "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let sd = SessionDescription::parse(no_addr.as_bytes()).expect("parses");
        assert_eq!(answer(&sd, local()), Err(AnswerError::NoAddress));
    }

    #[test]
    fn malformed_and_oversized_input_is_refused_without_echo() {
        let cases: &[(&str, ParseError)] = &[
            ("", ParseError::Missing("v=")),
            ("v=1\r\n", ParseError::Malformed(1)),
            ("v=0\r\ns=-\r\n", ParseError::Missing("o=")),
            (
                "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\n",
                ParseError::Missing("t="),
            ),
            ("v=0\r\no=- x 1 IN IP4 a\r\n", ParseError::Malformed(2)),
            (
                "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nc=IN IP4 999.1.1.1\r\n",
                ParseError::Malformed(4),
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nc=IN IP6 10.0.0.1\r\n",
                ParseError::Malformed(4),
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nm=audio 70000 RTP/AVP 0\r\n",
                ParseError::Malformed(5),
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP\r\n",
                ParseError::Malformed(5),
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:200 X/8000\r\n",
                ParseError::Malformed(6),
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\na=ptime:x\r\n",
                ParseError::Malformed(6),
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nX=1\r\n",
                ParseError::Malformed(5),
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nq=1\r\n",
                ParseError::Malformed(5),
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 a\r\ns=a\u{1}b\r\n",
                ParseError::Malformed(3),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                SessionDescription::parse(input.as_bytes()),
                Err(*want),
                "{input:?}"
            );
        }
        assert_eq!(
            SessionDescription::parse(&[0xff, 0xfe]),
            Err(ParseError::NotUtf8)
        );
        assert_eq!(
            SessionDescription::parse(&vec![b'a'; MAX_BODY + 1]),
            Err(ParseError::TooLarge)
        );
        let head = "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\n";
        let many_media = format!("{head}{}", "m=audio 1 RTP/AVP 0\r\n".repeat(MAX_MEDIA + 1));
        assert_eq!(
            SessionDescription::parse(many_media.as_bytes()),
            Err(ParseError::TooManyMedia)
        );
        let many_lines = format!("{head}{}", "a=x\r\n".repeat(MAX_LINES));
        assert_eq!(
            SessionDescription::parse(many_lines.as_bytes()),
            Err(ParseError::TooManyLines)
        );
        let formats = " 0".repeat(MAX_FORMATS + 1);
        let many_formats = format!("{head}m=audio 1 RTP/AVP{formats}\r\n");
        assert_eq!(
            SessionDescription::parse(many_formats.as_bytes()),
            Err(ParseError::TooManyFormats)
        );
        let many_maps = format!(
            "{head}m=audio 1 RTP/AVP 0\r\n{}",
            "a=rtpmap:0 PCMU/8000\r\n".repeat(MAX_ATTRIBUTES + 1)
        );
        assert_eq!(
            SessionDescription::parse(many_maps.as_bytes()),
            Err(ParseError::TooManyAttributes)
        );
        // Error text never quotes input.
        let e = SessionDescription::parse(b"v=0\r\no=secret x 1 IN IP4 a\r\n").expect_err("bad");
        assert!(!e.to_string().contains("secret"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_mutated_offers(cut in 0usize..600, byte in proptest::prelude::any::<u8>(), at in 0usize..600) {
            let mut b = LINPHONE.as_bytes().to_vec();
            if at < b.len() { b[at] = byte; }
            b.truncate(cut);
            if let Ok(sd) = SessionDescription::parse(&b) {
                let _ = answer(&sd, local());
                // What we print parses back.
                let printed = sd.print();
                proptest::prop_assert!(SessionDescription::parse(printed.as_bytes()).is_ok());
            }
        }

        #[test]
        fn never_panics_on_any_bytes(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = SessionDescription::parse(&b);
        }
    }
}

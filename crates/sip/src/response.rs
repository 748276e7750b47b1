//! Building responses to requests (RFC 3261 §8.2.6) and deciding where they go (§18.2.2,
//! RFC 3581). Every response of one kind is built by the same code path, so responses
//! that must not be told apart (unknown user, wrong password) cannot differ by accident.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::header::via::Via;
use crate::msg::{Message, Name};

/// A request with more Via header lines than this is not answered: no path that long
/// is legitimate (Max-Forwards starts at 70), and the response must stay within the
/// header limit of [`crate::msg::MAX_HEADERS`] together with what it adds.
pub const MAX_VIA_LINES: usize = 70;

/// Headers copied from the request into every response, in this order.
const COPIED: [Name; 4] = [Name::From, Name::To, Name::CallId, Name::CSeq];

/// A response under construction.
#[derive(Debug)]
pub struct ResponseBuilder {
    text: String,
}

/// Why no response can be built: without a usable top Via there is nowhere to send it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unroutable;

/// Whether a response to `req` can be built at all: a top Via that parses, and no more
/// than [`MAX_VIA_LINES`] Via lines. Checked before a request is entered in the server
/// transaction table, so that a request sipward could never answer takes no place there.
pub fn answerable(req: &Message<'_>) -> bool {
    let mut vias = req.headers_named(Name::Via);
    let top_ok = vias
        .next()
        .and_then(|v| crate::header::split_list(v).next())
        .and_then(Via::parse)
        .is_some();
    top_ok && vias.count() < MAX_VIA_LINES
}

impl ResponseBuilder {
    /// Starts a response to `req` received from `source`. The top Via gets `received`
    /// and, when asked for, `rport` filled in; `to_tag` is added to `To` when the request
    /// has none (all responses except 100 must carry one).
    pub fn new(
        req: &Message<'_>,
        code: u16,
        reason: &str,
        source: SocketAddr,
        to_tag: &str,
    ) -> Result<Self, Unroutable> {
        let mut text = String::with_capacity(512);
        let _ = write!(text, "SIP/2.0 {code} {reason}\r\n");
        // Via lines are copied one for one (only the top entry is rewritten), so a
        // response never has more header lines than its request.
        if req.headers_named(Name::Via).count() > MAX_VIA_LINES {
            return Err(Unroutable);
        }
        let mut first = true;
        for value in req.headers_named(Name::Via) {
            text.push_str("Via: ");
            if first {
                let mut entries = crate::header::split_list(value);
                let top = entries.next().ok_or(Unroutable)?;
                let via = Via::parse(top).ok_or(Unroutable)?;
                text.push_str(&top_via_with_source(top, &via, source));
                for rest in entries {
                    text.push_str(", ");
                    text.push_str(rest);
                }
                first = false;
            } else {
                text.push_str(value);
            }
            text.push_str("\r\n");
        }
        if first {
            return Err(Unroutable);
        }
        for name in COPIED {
            let Some(value) = req.header(name) else {
                continue;
            };
            let label = match name {
                Name::From => "From",
                Name::To => "To",
                Name::CallId => "Call-ID",
                _ => "CSeq",
            };
            text.push_str(label);
            text.push_str(": ");
            text.push_str(value);
            if name == Name::To && code > 100 && !has_tag(value) {
                text.push_str(";tag=");
                text.push_str(to_tag);
            }
            text.push_str("\r\n");
        }
        Ok(Self { text })
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.text.push_str(name);
        self.text.push_str(": ");
        self.text.push_str(value);
        self.text.push_str("\r\n");
        self
    }

    /// Finishes the response without a body.
    pub fn finish(mut self) -> Vec<u8> {
        self.text.push_str("Content-Length: 0\r\n\r\n");
        self.text.into_bytes()
    }

    /// Finishes the response with `body` of `content_type` (an SDP answer a back-to-back
    /// agent passes on); Content-Length is computed. An empty body is no body. A content
    /// type that holds a control character is not printed, and then neither is the body.
    pub fn finish_with_body(mut self, content_type: &str, body: &[u8]) -> Vec<u8> {
        if body.is_empty() || content_type.is_empty() || content_type.chars().any(char::is_control)
        {
            return self.finish();
        }
        self.text.push_str("Content-Type: ");
        self.text.push_str(content_type);
        let _ = write!(self.text, "\r\nContent-Length: {}\r\n\r\n", body.len());
        let mut bytes = self.text.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

fn has_tag(to: &str) -> bool {
    crate::header::addr::NameAddr::parse(to).is_some_and(|a| a.tag().is_some())
}

/// The top Via with `received` (when the packet came from elsewhere than `sent-by`, or
/// rport was asked for) and `rport` filled in (RFC 3581 §4).
pub fn top_via_with_source(raw: &str, via: &Via<'_>, source: SocketAddr) -> String {
    let ip = source.ip().to_string();
    let mut out = String::with_capacity(raw.len() + 40);
    // Rebuild the parameter list, replacing rport/received.
    let head_len = raw.len() - via.params.len();
    out.push_str(raw[..head_len].trim_end());
    for (name, value) in crate::header::params(via.params) {
        if name.eq_ignore_ascii_case("rport") || name.eq_ignore_ascii_case("received") {
            continue;
        }
        out.push(';');
        out.push_str(name);
        if let Some(v) = value {
            out.push('=');
            out.push_str(v);
        }
    }
    if via.rport.is_some() || via.host != ip {
        let _ = write!(out, ";received={ip}");
    }
    if via.rport.is_some() {
        let _ = write!(out, ";rport={}", source.port());
    }
    out
}

/// Where a response to a datagram goes: the source address when `rport` was asked for
/// (NAT-friendly), else the source IP with the `sent-by` port (default 5060).
pub fn datagram_target(via: &Via<'_>, source: SocketAddr) -> SocketAddr {
    if via.rport.is_some() {
        source
    } else {
        SocketAddr::new(source.ip(), via.port.unwrap_or(5060))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::parse;

    const REQ: &[u8] = b"REGISTER sip:pbx SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK1;rport\r\n\
Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK0, SIP/2.0/UDP far.example.com\r\n\
From: <sip:1001@pbx>;tag=f1\r\n\
To: <sip:1001@pbx>\r\n\
Call-ID: c1\r\n\
CSeq: 2 REGISTER\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn copies_headers_and_fills_received_and_rport() {
        let req = parse(REQ).expect("req");
        let src: SocketAddr = "192.0.2.7:40000".parse().expect("addr");
        let bytes = ResponseBuilder::new(&req, 401, "Unauthorized", src, "t9")
            .expect("routable")
            .header("WWW-Authenticate", "Digest x")
            .finish();
        let text = String::from_utf8(bytes).expect("utf8");
        let res = parse(text.as_bytes()).expect("our response parses");
        let vias: Vec<&str> = res.headers_named(Name::Via).collect();
        assert_eq!(
            vias,
            vec![
                "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK1;received=192.0.2.7;rport=40000",
                "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK0, SIP/2.0/UDP far.example.com",
            ]
        );
        assert_eq!(res.header(Name::To), Some("<sip:1001@pbx>;tag=t9"));
        assert_eq!(res.header(Name::From), Some("<sip:1001@pbx>;tag=f1"));
        assert_eq!(res.header(Name::CSeq), Some("2 REGISTER"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        let top = Via::parse("SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK1;rport").expect("via");
        assert_eq!(datagram_target(&top, src), src);
        let plain = Via::parse("SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK1").expect("via");
        assert_eq!(
            datagram_target(&plain, src),
            "192.0.2.7:5062".parse().expect("addr")
        );
    }

    #[test]
    fn a_body_is_counted_and_a_bad_content_type_drops_it() {
        let req = parse(REQ).expect("req");
        let src: SocketAddr = "192.0.2.7:40000".parse().expect("addr");
        let ok = ResponseBuilder::new(&req, 200, "OK", src, "t")
            .expect("ok")
            .finish_with_body("application/sdp", b"v=0\r\n");
        let m = parse(&ok).expect("parses");
        assert_eq!(m.header(Name::ContentType), Some("application/sdp"));
        assert_eq!(m.body, b"v=0\r\n");
        assert_eq!(crate::msg::frame_len(&ok, usize::MAX), Ok(Some(ok.len())));
        let bad = ResponseBuilder::new(&req, 200, "OK", src, "t")
            .expect("ok")
            .finish_with_body("application/sdp\r\nX: y", b"v=0");
        assert!(bad.ends_with(b"Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn an_existing_to_tag_is_kept_and_no_via_means_unroutable() {
        let req = parse(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa\r\nTo: <sip:x>;tag=keep\r\n\r\n").expect("req");
        let src: SocketAddr = "192.0.2.7:5060".parse().expect("addr");
        let text = String::from_utf8(
            ResponseBuilder::new(&req, 200, "OK", src, "new")
                .expect("ok")
                .finish(),
        )
        .expect("utf8");
        assert!(text.contains("To: <sip:x>;tag=keep\r\n"), "{text}");
        assert!(
            text.contains("Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa\r\n"),
            "no received when sent-by matches: {text}"
        );
        let novia = parse(b"OPTIONS sip:x SIP/2.0\r\nTo: <sip:x>\r\n\r\n").expect("req");
        assert_eq!(
            ResponseBuilder::new(&novia, 200, "OK", src, "t").err(),
            Some(Unroutable)
        );
        let long: String = std::iter::once("OPTIONS sip:x SIP/2.0\r\n".to_string())
            .chain(
                (0..=MAX_VIA_LINES).map(|i| format!("Via: SIP/2.0/UDP h{i};branch=z9hG4bK{i}\r\n")),
            )
            .chain(std::iter::once("\r\n".to_string()))
            .collect();
        let long = parse(long.as_bytes()).expect("parses");
        assert_eq!(
            ResponseBuilder::new(&long, 200, "OK", src, "t").err(),
            Some(Unroutable),
            "too many Via lines"
        );
        assert!(!answerable(&long), "refused before the transaction table");
        assert!(answerable(&req));
        assert!(!answerable(&novia));
        let badvia = parse(b"OPTIONS sip:x SIP/2.0\r\nVia: garbage\r\n\r\n").expect("req");
        assert_eq!(
            ResponseBuilder::new(&badvia, 400, "Bad Request", src, "t").err(),
            Some(Unroutable)
        );
        assert!(!answerable(&badvia));
        let most: String = std::iter::once("OPTIONS sip:x SIP/2.0\r\n".to_string())
            .chain(
                (1..=MAX_VIA_LINES).map(|i| format!("Via: SIP/2.0/UDP h{i};branch=z9hG4bK{i}\r\n")),
            )
            .chain(std::iter::once("\r\n".to_string()))
            .collect();
        let most = parse(most.as_bytes()).expect("parses");
        assert!(answerable(&most), "exactly the limit is answerable");
        assert!(ResponseBuilder::new(&most, 200, "OK", src, "t").is_ok());
    }
}

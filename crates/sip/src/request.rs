//! Building the requests sipward sends (RFC 3261 §8.1.1), in one place: new requests,
//! requests within a dialog (§12.2.1.1), the ACK of a 2xx (§13.2.2.4), and the two
//! requests derived from an INVITE already sent: its CANCEL (§9.1) and the ACK of a
//! non-2xx final answer (§17.1.1.3).
//!
//! Values often come from a peer (a display name, a Contact, a Record-Route), so every
//! one is checked before it is printed: a CR, LF or any other control character, a
//! header name that is not a token, or a header the builder writes itself is refused
//! with an error, never printed. Content-Length is always computed. Errors never quote
//! the value they refuse.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::branch::Branch;
use crate::header::addr::NameAddr;
use crate::header::cseq::CSeq;
use crate::header::{is_token, split_list};
use crate::msg::{MAX_HEADERS, Message, Name, StartLine};

/// A value longer than this is refused: no legitimate URI, tag or header value needs
/// more, and a request must still fit a datagram.
pub const MAX_VALUE_LEN: usize = 2048;

/// Max-Forwards of every request sipward originates (§8.1.1.6).
pub const DEFAULT_MAX_FORWARDS: u8 = 70;

/// The largest CSeq number a request may carry (§8.1.1.5: below 2^31).
pub const MAX_CSEQ: u32 = (1 << 31) - 1;

/// Header names the builder writes itself (with their compact forms): given as extra
/// headers they could contradict the real ones, Content-Length above all.
const RESERVED: [&str; 17] = [
    "via",
    "v",
    "from",
    "f",
    "to",
    "t",
    "call-id",
    "i",
    "cseq",
    "max-forwards",
    "contact",
    "m",
    "route",
    "content-length",
    "l",
    "content-type",
    "c",
];

/// The part of a request a refused value was meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Method,
    RequestUri,
    Via,
    Transport,
    SentBy,
    From,
    FromDisplay,
    FromTag,
    To,
    ToDisplay,
    ToTag,
    CallId,
    CSeq,
    Contact,
    Route,
    HeaderName,
    HeaderValue,
    ContentType,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Method => "method",
            Field::RequestUri => "Request-URI",
            Field::Via => "Via",
            Field::Transport => "Via transport",
            Field::SentBy => "Via sent-by host",
            Field::From => "From URI",
            Field::FromDisplay => "From display name",
            Field::FromTag => "From tag",
            Field::To => "To URI",
            Field::ToDisplay => "To display name",
            Field::ToTag => "To tag",
            Field::CallId => "Call-ID",
            Field::CSeq => "CSeq",
            Field::Contact => "Contact URI",
            Field::Route => "Route URI",
            Field::HeaderName => "header name",
            Field::HeaderValue => "header value",
            Field::ContentType => "Content-Type",
        })
    }
}

/// Why a request was not built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the {0} contains a control character")]
    ControlCharacter(Field),
    #[error("the {0} is malformed")]
    Malformed(Field),
    #[error("the {0} is missing")]
    Missing(Field),
    #[error("the {0} is longer than {MAX_VALUE_LEN} bytes")]
    TooLong(Field),
    #[error("an extra header may not be one the builder writes itself")]
    ReservedHeader,
    #[error("a request may have at most {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("a CANCEL or an ACK is derived only from an INVITE")]
    NotAnInvite,
    #[error("only a final answer from 300 to 699 is acknowledged by the transaction")]
    NotAFailure,
}

type Result<T, E = RequestError> = std::result::Result<T, E>;

/// The `sent-by` of our Via: the address we send from, or a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SentBy<'a> {
    Addr(SocketAddr),
    Name { host: &'a str, port: Option<u16> },
}

/// The Via sipward puts on top of a request it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopVia<'a> {
    /// `UDP`, `TCP`, `TLS`... (a token; printed upper-case).
    pub transport: &'a str,
    pub sent_by: SentBy<'a>,
    pub branch: &'a Branch,
    /// Ask for `rport` (RFC 3581), so answers come back through NATs.
    pub rport: bool,
}

impl<'a> TopVia<'a> {
    /// The usual Via: this transport, the address we send from, `rport` asked for.
    pub fn new(transport: &'a str, local: SocketAddr, branch: &'a Branch) -> Self {
        Self {
            transport,
            sent_by: SentBy::Addr(local),
            branch,
            rport: true,
        }
    }
}

/// A `From` or `To` value: optional display name, URI, optional tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Party<'a> {
    pub display: Option<&'a str>,
    pub uri: &'a str,
    pub tag: Option<&'a str>,
}

impl<'a> Party<'a> {
    pub fn new(uri: &'a str) -> Self {
        Self {
            display: None,
            uri,
            tag: None,
        }
    }

    pub fn display(self, name: &'a str) -> Self {
        Self {
            display: Some(name),
            ..self
        }
    }

    pub fn tag(self, tag: &'a str) -> Self {
        Self {
            tag: Some(tag),
            ..self
        }
    }
}

/// What a request within a dialog is built from (RFC 3261 §12: the dialog state).
/// `route_set` holds URIs (without angle brackets) in the order they are used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DialogState<'a> {
    pub call_id: &'a str,
    pub local_uri: &'a str,
    pub local_tag: &'a str,
    pub remote_uri: &'a str,
    /// `None` only for a peer that sent no tag (RFC 2543).
    pub remote_tag: Option<&'a str>,
    /// The peer's Contact: where requests within the dialog go.
    pub remote_target: &'a str,
    pub route_set: Vec<&'a str>,
}

impl<'a> DialogState<'a> {
    /// The dialog that an answer with a To tag (a 2xx, or a 1xx) to an INVITE we
    /// sent creates (§12.1.2): Call-ID and our From from the INVITE, the peer's tag
    /// from the answer's To, the remote target from its Contact, the route set from
    /// its Record-Route entries in reverse order. What a TU needs to ACK a 2xx
    /// (even a late one) and to end the call with a BYE.
    pub fn from_answer(invite: &'a Message<'_>, answer: &'a Message<'_>) -> Result<Self> {
        let addr = |m: &'a Message<'_>, name, field| {
            let value = m.header(name).ok_or(RequestError::Missing(field))?;
            NameAddr::parse(value).ok_or(RequestError::Malformed(field))
        };
        let from = addr(invite, Name::From, Field::From)?;
        let to = addr(invite, Name::To, Field::To)?;
        let answer_to = addr(answer, Name::To, Field::To)?;
        let local_tag = from.tag().ok_or(RequestError::Missing(Field::FromTag))?;
        let contact = answer
            .header(Name::Contact)
            .and_then(|c| split_list(c).next())
            .ok_or(RequestError::Missing(Field::Contact))?;
        let remote_target = NameAddr::parse(contact)
            .ok_or(RequestError::Malformed(Field::Contact))?
            .uri;
        let mut route_set = Vec::new();
        for line in answer.headers_named(Name::RecordRoute) {
            for entry in split_list(line) {
                if route_set.len() >= MAX_HEADERS {
                    return Err(RequestError::TooManyHeaders);
                }
                let uri = NameAddr::parse(entry)
                    .ok_or(RequestError::Malformed(Field::Route))?
                    .uri;
                route_set.push(uri);
            }
        }
        route_set.reverse();
        Ok(Self {
            call_id: invite
                .header(Name::CallId)
                .ok_or(RequestError::Missing(Field::CallId))?,
            local_uri: from.uri,
            local_tag,
            remote_uri: to.uri,
            remote_tag: answer_to.tag(),
            remote_target,
            route_set,
        })
    }
}

/// One request under construction. Setters only record; [`RequestBuilder::build`]
/// checks every value and prints the request, or says which field it refused.
#[derive(Clone, Debug)]
pub struct RequestBuilder<'a> {
    method: &'a str,
    uri: &'a str,
    via: Option<TopVia<'a>>,
    max_forwards: u8,
    from: Option<Party<'a>>,
    to: Option<Party<'a>>,
    call_id: Option<&'a str>,
    cseq: Option<u32>,
    contact: Option<&'a str>,
    routes: Vec<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    body: Option<(&'a str, &'a [u8])>,
}

impl<'a> RequestBuilder<'a> {
    pub fn new(method: &'a str, request_uri: &'a str) -> Self {
        Self {
            method,
            uri: request_uri,
            via: None,
            max_forwards: DEFAULT_MAX_FORWARDS,
            from: None,
            to: None,
            call_id: None,
            cseq: None,
            contact: None,
            routes: Vec::new(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A request within a dialog (§12.2.1.1): From, To, Call-ID and CSeq from the
    /// dialog; the Request-URI and Route from its remote target and route set (loose
    /// routing when the first route has `lr`, strict routing otherwise). Via, Contact
    /// (for a target refresh) and a body are the caller's to add.
    pub fn in_dialog(dialog: &DialogState<'a>, method: &'a str, cseq: u32) -> Self {
        let mut b = Self::new(method, dialog.remote_target)
            .from(Party::new(dialog.local_uri).tag(dialog.local_tag))
            .to(Party {
                display: None,
                uri: dialog.remote_uri,
                tag: dialog.remote_tag,
            })
            .call_id(dialog.call_id)
            .cseq(cseq);
        match dialog.route_set.split_first() {
            None => {}
            Some(_) if dialog.route_set.first().is_some_and(|r| loose_route(r)) => {
                b.routes = dialog.route_set.clone();
            }
            Some((first, rest)) => {
                // A strict router (RFC 2543) expects to find itself in the Request-URI.
                b.uri = first;
                b.routes = rest.to_vec();
                b.routes.push(dialog.remote_target);
            }
        }
        b
    }

    pub fn via(mut self, via: TopVia<'a>) -> Self {
        self.via = Some(via);
        self
    }

    pub fn max_forwards(mut self, hops: u8) -> Self {
        self.max_forwards = hops;
        self
    }

    /// The From; it must carry a tag (§8.1.1.3).
    pub fn from(mut self, party: Party<'a>) -> Self {
        self.from = Some(party);
        self
    }

    pub fn to(mut self, party: Party<'a>) -> Self {
        self.to = Some(party);
        self
    }

    pub fn call_id(mut self, call_id: &'a str) -> Self {
        self.call_id = Some(call_id);
        self
    }

    /// The CSeq number; the method is the request's.
    pub fn cseq(mut self, seq: u32) -> Self {
        self.cseq = Some(seq);
        self
    }

    /// The Contact URI (printed in angle brackets).
    pub fn contact(mut self, uri: &'a str) -> Self {
        self.contact = Some(uri);
        self
    }

    /// Appends one Route URI (printed as `<uri>`, one header line each, in order).
    pub fn route(mut self, uri: &'a str) -> Self {
        self.routes.push(uri);
        self
    }

    /// Any other header. Its name must be a token and not one this builder writes.
    pub fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A body and its type; Content-Length is computed.
    pub fn body(mut self, content_type: &'a str, body: &'a [u8]) -> Self {
        self.body = Some((content_type, body));
        self
    }

    /// Checks every value and prints the request.
    pub fn build(&self) -> Result<Vec<u8>> {
        check_token(self.method, Field::Method)?;
        check_uri(self.uri, Field::RequestUri)?;
        let via = self.via.ok_or(RequestError::Missing(Field::Via))?;
        let from = self.from.ok_or(RequestError::Missing(Field::From))?;
        if from.tag.is_none() {
            return Err(RequestError::Missing(Field::FromTag));
        }
        let to = self.to.ok_or(RequestError::Missing(Field::To))?;
        let call_id = self.call_id.ok_or(RequestError::Missing(Field::CallId))?;
        check_call_id(call_id)?;
        let cseq = self.cseq.ok_or(RequestError::Missing(Field::CSeq))?;
        if cseq > MAX_CSEQ {
            return Err(RequestError::Malformed(Field::CSeq));
        }
        // Via, Max-Forwards, From, To, Call-ID, CSeq and Content-Length, plus the rest.
        let lines = 7
            + self.routes.len()
            + usize::from(self.contact.is_some())
            + self.headers.len()
            + usize::from(self.body.is_some());
        if lines > MAX_HEADERS {
            return Err(RequestError::TooManyHeaders);
        }

        let mut out = String::with_capacity(512);
        let _ = write!(out, "{} {} SIP/2.0\r\n", self.method, self.uri);
        write_via(&mut out, &via)?;
        for route in &self.routes {
            check_uri(route, Field::Route)?;
            let _ = write!(out, "Route: <{route}>\r\n");
        }
        let _ = write!(out, "Max-Forwards: {}\r\n", self.max_forwards);
        write_party(&mut out, "From", &from, PartyFields::FROM)?;
        write_party(&mut out, "To", &to, PartyFields::TO)?;
        let _ = write!(
            out,
            "Call-ID: {call_id}\r\nCSeq: {cseq} {}\r\n",
            self.method
        );
        if let Some(contact) = self.contact {
            check_uri(contact, Field::Contact)?;
            let _ = write!(out, "Contact: <{contact}>\r\n");
        }
        for (name, value) in &self.headers {
            check_token(name, Field::HeaderName)?;
            if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
                return Err(RequestError::ReservedHeader);
            }
            check_text(value, Field::HeaderValue, Tab::Refused)?;
            let _ = write!(out, "{name}: {value}\r\n");
        }
        let body: &[u8] = match self.body {
            Some((content_type, body)) => {
                check_content_type(content_type)?;
                let _ = write!(out, "Content-Type: {content_type}\r\n");
                body
            }
            None => &[],
        };
        let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        Ok(bytes)
    }
}

/// The ACK of a 2xx answer to an INVITE (§13.2.2.4): a request within the dialog the
/// 2xx created, with the INVITE's CSeq number and a new branch (it is no part of the
/// INVITE's transaction). The caller may add a body (the answer to an offer in the 2xx)
/// and the INVITE's credentials before building it.
pub fn ack_2xx<'a>(
    dialog: &DialogState<'a>,
    invite_cseq: u32,
    via: TopVia<'a>,
) -> RequestBuilder<'a> {
    RequestBuilder::in_dialog(dialog, "ACK", invite_cseq).via(via)
}

/// The CANCEL of an INVITE we sent (§9.1): its Request-URI, top Via (same branch),
/// Route, From, To, Call-ID and CSeq number, method CANCEL.
pub fn cancel(invite: &Message<'_>) -> Result<Vec<u8>> {
    derived(invite, "CANCEL", None)
}

/// The ACK of a final answer from 300 to 699 to an INVITE we sent (§17.1.1.3): as the
/// CANCEL, but with the answer's To (and so its tag).
pub fn ack_non_2xx(invite: &Message<'_>, answer: &Message<'_>) -> Result<Vec<u8>> {
    match answer.start {
        StartLine::Response { code, .. } if (300..=699).contains(&code) => {}
        _ => return Err(RequestError::NotAFailure),
    }
    derived(invite, "ACK", Some(answer))
}

/// CANCEL and ACK of a non-2xx copy values from messages our parser accepted, where a
/// horizontal tab is legal whitespace (RFC 3261 §25.1 LWS); anything else that is a
/// control character is still refused (a `Message` can be put together by hand).
/// The To is the INVITE's for a CANCEL and the answer's for an ACK.
fn derived(invite: &Message<'_>, method: &str, answer: Option<&Message<'_>>) -> Result<Vec<u8>> {
    let StartLine::Request {
        method: "INVITE",
        uri,
    } = invite.start
    else {
        return Err(RequestError::NotAnInvite);
    };
    let to = answer
        .unwrap_or(invite)
        .header(Name::To)
        .ok_or(RequestError::Missing(Field::To))?;
    check_uri(uri, Field::RequestUri)?;
    let via = invite
        .header(Name::Via)
        .and_then(|v| split_list(v).next())
        .ok_or(RequestError::Missing(Field::Via))?;
    check_text(via, Field::Via, Tab::Allowed)?;
    if crate::header::via::Via::parse(via).is_none() {
        return Err(RequestError::Malformed(Field::Via));
    }
    let from = invite
        .header(Name::From)
        .ok_or(RequestError::Missing(Field::From))?;
    check_text(from, Field::From, Tab::Allowed)?;
    check_text(to, Field::To, Tab::Allowed)?;
    let call_id = invite
        .header(Name::CallId)
        .ok_or(RequestError::Missing(Field::CallId))?;
    check_call_id(call_id)?;
    let seq = invite
        .header(Name::CSeq)
        .ok_or(RequestError::Missing(Field::CSeq))
        .and_then(|c| CSeq::parse(c).ok_or(RequestError::Malformed(Field::CSeq)))?
        .seq;
    let routes = invite.headers_named(Name::Route);
    if invite.headers_named(Name::Route).count() + 7 > MAX_HEADERS {
        return Err(RequestError::TooManyHeaders);
    }
    let mut out = String::with_capacity(384);
    let _ = write!(out, "{method} {uri} SIP/2.0\r\nVia: {via}\r\n");
    for route in routes {
        check_text(route, Field::Route, Tab::Allowed)?;
        let _ = write!(out, "Route: {route}\r\n");
    }
    let _ = write!(
        out,
        "Max-Forwards: {DEFAULT_MAX_FORWARDS}\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {call_id}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n"
    );
    Ok(out.into_bytes())
}

/// Whether the first route is a loose router (its URI has the `lr` parameter).
fn loose_route(uri: &str) -> bool {
    // Parameters follow the host part; the user part may itself contain `;`.
    let after_user = uri.rsplit_once('@').map_or(uri, |(_, h)| h);
    let without_headers = after_user.split('?').next().unwrap_or("");
    without_headers.split(';').skip(1).any(|p| {
        p.trim()
            .split('=')
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case("lr"))
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tab {
    Allowed,
    Refused,
}

fn check_text(value: &str, field: Field, tab: Tab) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(RequestError::TooLong(field));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !(tab == Tab::Allowed && c == '\t'))
    {
        return Err(RequestError::ControlCharacter(field));
    }
    Ok(())
}

/// A token (method, transport, tag, header name); control characters are reported
/// as such.
fn check_token(value: &str, field: Field) -> Result<()> {
    check_text(value, field, Tab::Refused)?;
    if is_token(value) {
        Ok(())
    } else {
        Err(RequestError::Malformed(field))
    }
}

/// A URI as sipward prints it inside `<...>` or on the request line: a scheme, no
/// whitespace, no characters that would end the angle brackets or a quoted string.
fn check_uri(uri: &str, field: Field) -> Result<()> {
    check_text(uri, field, Tab::Refused)?;
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(RequestError::Malformed(field));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok
        || rest.is_empty()
        || uri.contains(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"'))
    {
        return Err(RequestError::Malformed(field));
    }
    Ok(())
}

/// `word ["@" word]` (RFC 3261 §25.1).
fn check_call_id(call_id: &str) -> Result<()> {
    check_text(call_id, Field::CallId, Tab::Refused)?;
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~()<>:\\\"/[]?{}".contains(&b))
    };
    let ok = match call_id.split_once('@') {
        Some((a, b)) => word(a) && word(b),
        None => word(call_id),
    };
    if ok {
        Ok(())
    } else {
        Err(RequestError::Malformed(Field::CallId))
    }
}

/// `type/subtype` tokens, then parameters.
fn check_content_type(value: &str) -> Result<()> {
    check_text(value, Field::ContentType, Tab::Refused)?;
    let media = value.split(';').next().unwrap_or("").trim();
    match media.split_once('/') {
        Some((t, s)) if is_token(t) && is_token(s) => Ok(()),
        _ => Err(RequestError::Malformed(Field::ContentType)),
    }
}

fn write_via(out: &mut String, via: &TopVia<'_>) -> Result<()> {
    check_token(via.transport, Field::Transport)?;
    let _ = write!(out, "Via: SIP/2.0/{} ", via.transport.to_ascii_uppercase());
    match via.sent_by {
        SentBy::Addr(addr) => match addr.ip() {
            IpAddr::V4(ip) => {
                let _ = write!(out, "{ip}:{}", addr.port());
            }
            IpAddr::V6(ip) => {
                let _ = write!(out, "[{ip}]:{}", addr.port());
            }
        },
        SentBy::Name { host, port } => {
            check_text(host, Field::SentBy, Tab::Refused)?;
            let inner = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if inner.parse::<Ipv6Addr>().is_ok() {
                let _ = write!(out, "[{inner}]");
            } else if !inner.is_empty()
                && inner.len() == host.len()
                && inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                out.push_str(inner);
            } else {
                return Err(RequestError::Malformed(Field::SentBy));
            }
            if let Some(port) = port {
                let _ = write!(out, ":{port}");
            }
        }
    }
    let _ = write!(out, ";branch={}", via.branch);
    if via.rport {
        out.push_str(";rport");
    }
    out.push_str("\r\n");
    Ok(())
}

/// Which fields a From or To refusal names.
struct PartyFields {
    uri: Field,
    display: Field,
    tag: Field,
}

impl PartyFields {
    const FROM: PartyFields = PartyFields {
        uri: Field::From,
        display: Field::FromDisplay,
        tag: Field::FromTag,
    };
    const TO: PartyFields = PartyFields {
        uri: Field::To,
        display: Field::ToDisplay,
        tag: Field::ToTag,
    };
}

fn write_party(out: &mut String, name: &str, party: &Party<'_>, fields: PartyFields) -> Result<()> {
    check_uri(party.uri, fields.uri)?;
    out.push_str(name);
    out.push_str(": ");
    if let Some(display) = party.display {
        check_text(display, fields.display, Tab::Refused)?;
        // A quoted string (§25.1) with `"` and `\` escaped: a display name cannot end
        // the quotes early.
        out.push('"');
        for c in display.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("\" ");
    }
    let _ = write!(out, "<{}>", party.uri);
    if let Some(tag) = party.tag {
        check_token(tag, fields.tag)?;
        let _ = write!(out, ";tag={tag}");
    }
    out.push_str("\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::via::Via;
    use crate::msg::parse;

    fn branch() -> Branch {
        Branch::new("0123456789abcdef").expect("branch")
    }

    fn local() -> SocketAddr {
        "192.0.2.1:5070".parse().expect("addr")
    }

    /// A complete request with every field set; `f` may replace one of them.
    fn full<'a>(b: &'a Branch) -> RequestBuilder<'a> {
        RequestBuilder::new("INVITE", "sip:+441234@trunk.example.net;user=phone")
            .via(TopVia::new("udp", local(), b))
            .max_forwards(69)
            .from(
                Party::new("sip:1001@pbx.example.com")
                    .display("Alice Smith")
                    .tag("f-1"),
            )
            .to(Party::new("sip:+441234@trunk.example.net").display("Bob"))
            .call_id("a84b4c76e66710@pbx.example.com")
            .cseq(314_159)
            .contact("sip:1001@192.0.2.1:5070;transport=udp")
            .route("sip:p1.example.com;lr")
            .route("sip:p2.example.com;lr")
            .header("Subject", "lunch?")
            .header("Proxy-Authorization", "Digest username=\"a\", realm=\"r\"")
            .body("application/sdp", b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n")
    }

    #[test]
    fn what_the_builder_prints_parses_back_field_for_field() {
        let b = branch();
        let bytes = full(&b).build().expect("builds");
        let m = parse(&bytes).expect("our own request parses");
        assert_eq!(
            m.start,
            StartLine::Request {
                method: "INVITE",
                uri: "sip:+441234@trunk.example.net;user=phone"
            }
        );
        let via = Via::parse(m.header(Name::Via).expect("via")).expect("via parses");
        assert_eq!(
            (via.transport, via.host, via.port, via.branch, via.rport),
            (
                "UDP",
                "192.0.2.1",
                Some(5070),
                Some("z9hG4bK0123456789abcdef"),
                Some(None)
            )
        );
        assert_eq!(m.header(Name::MaxForwards), Some("69"));
        let from = NameAddr::parse(m.header(Name::From).expect("from")).expect("parses");
        assert_eq!(
            (from.display, from.uri, from.tag()),
            (Some("Alice Smith"), "sip:1001@pbx.example.com", Some("f-1"))
        );
        let to = NameAddr::parse(m.header(Name::To).expect("to")).expect("parses");
        assert_eq!(
            (to.display, to.uri, to.tag()),
            (Some("Bob"), "sip:+441234@trunk.example.net", None)
        );
        assert_eq!(
            m.header(Name::CallId),
            Some("a84b4c76e66710@pbx.example.com")
        );
        let cseq = CSeq::parse(m.header(Name::CSeq).expect("cseq")).expect("parses");
        assert_eq!((cseq.seq, cseq.method), (314_159, "INVITE"));
        assert_eq!(
            m.header(Name::Contact),
            Some("<sip:1001@192.0.2.1:5070;transport=udp>")
        );
        assert_eq!(
            m.headers_named(Name::Route).collect::<Vec<_>>(),
            vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(m.other_header("subject"), Some("lunch?"));
        assert_eq!(
            m.header(Name::ProxyAuthorization),
            Some("Digest username=\"a\", realm=\"r\"")
        );
        assert_eq!(m.header(Name::ContentType), Some("application/sdp"));
        assert_eq!(m.body, b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n");
        assert_eq!(
            m.header(Name::ContentLength),
            Some(m.body.len().to_string().as_str())
        );
        assert_eq!(
            crate::msg::frame_len(&bytes, 65_535),
            Ok(Some(bytes.len())),
            "framed on a stream exactly"
        );
    }

    #[test]
    fn ipv6_sent_by_is_bracketed_and_names_are_kept() {
        let b = branch();
        let via_of = |sent_by| {
            let bytes = full(&b)
                .via(TopVia {
                    transport: "TCP",
                    sent_by,
                    branch: &b,
                    rport: false,
                })
                .build()
                .expect("builds");
            let text = String::from_utf8(bytes).expect("utf8");
            let m = parse(text.as_bytes()).expect("parses");
            let via = Via::parse(m.header(Name::Via).expect("via")).expect("parses");
            assert_eq!((via.transport, via.rport), ("TCP", None));
            (via.host.to_owned(), via.port)
        };
        let v6: SocketAddr = "[2001:db8::1]:5061".parse().expect("addr");
        assert_eq!(via_of(SentBy::Addr(v6)), ("2001:db8::1".into(), Some(5061)));
        assert_eq!(
            via_of(SentBy::Name {
                host: "2001:db8::2",
                port: None
            }),
            ("2001:db8::2".into(), None)
        );
        assert_eq!(
            via_of(SentBy::Name {
                host: "[2001:db8::3]",
                port: Some(5060)
            }),
            ("2001:db8::3".into(), Some(5060))
        );
        assert_eq!(
            via_of(SentBy::Name {
                host: "pbx.example.com",
                port: Some(5060)
            }),
            ("pbx.example.com".into(), Some(5060))
        );
        for bad in [
            "",
            "[pbx]",
            "a b",
            "pbx.example.com:5060",
            "[2001:db8::1",
            "h;x=1",
        ] {
            let err = full(&b)
                .via(TopVia {
                    transport: "UDP",
                    sent_by: SentBy::Name {
                        host: bad,
                        port: None,
                    },
                    branch: &b,
                    rport: true,
                })
                .build();
            assert_eq!(err, Err(RequestError::Malformed(Field::SentBy)), "{bad:?}");
        }
    }

    #[test]
    fn display_names_are_quoted_with_escapes() {
        let b = branch();
        let bytes = full(&b)
            .from(
                Party::new("sip:1001@pbx")
                    .display(r#"Evil" <sip:x@y>;tag=z \"#)
                    .tag("t"),
            )
            .build()
            .expect("builds");
        let m = parse(&bytes).expect("parses");
        let from = m.header(Name::From).expect("from");
        assert_eq!(from, r#""Evil\" <sip:x@y>;tag=z \\" <sip:1001@pbx>;tag=t"#);
        let na = NameAddr::parse(from).expect("parses");
        assert_eq!((na.uri, na.tag()), ("sip:1001@pbx", Some("t")), "no escape");
    }

    /// Every field that takes text, set to `value` in an otherwise complete request.
    fn with_each_field(value: &str) -> Vec<(Field, Result<Vec<u8>>)> {
        let b = branch();
        let v = value;
        let via = |sent_by, transport| TopVia {
            transport,
            sent_by,
            branch: &b,
            rport: true,
        };
        let name = |host| SentBy::Name { host, port: None };
        let cases: Vec<(Field, RequestBuilder<'_>)> = vec![
            (Field::Method, full(&b).tap_method(v)),
            (Field::RequestUri, full(&b).tap_uri(v)),
            (
                Field::Transport,
                full(&b).via(via(SentBy::Addr(local()), v)),
            ),
            (Field::SentBy, full(&b).via(via(name(v), "UDP"))),
            (Field::From, full(&b).from(Party::new(v).tag("t"))),
            (
                Field::FromDisplay,
                full(&b).from(Party::new("sip:a@b").display(v).tag("t")),
            ),
            (Field::FromTag, full(&b).from(Party::new("sip:a@b").tag(v))),
            (Field::To, full(&b).to(Party::new(v))),
            (
                Field::ToDisplay,
                full(&b).to(Party::new("sip:a@b").display(v)),
            ),
            (Field::ToTag, full(&b).to(Party::new("sip:a@b").tag(v))),
            (Field::CallId, full(&b).call_id(v)),
            (Field::Contact, full(&b).contact(v)),
            (Field::Route, full(&b).route(v)),
            (Field::HeaderName, full(&b).header(v, "x")),
            (Field::HeaderValue, full(&b).header("X-Peer", v)),
            (Field::ContentType, full(&b).body(v, b"x")),
        ];
        cases.into_iter().map(|(f, r)| (f, r.build())).collect()
    }

    impl<'a> RequestBuilder<'a> {
        fn tap_method(mut self, method: &'a str) -> Self {
            self.method = method;
            self
        }
        fn tap_uri(mut self, uri: &'a str) -> Self {
            self.uri = uri;
            self
        }
    }

    #[test]
    fn cr_lf_and_other_control_characters_are_refused_in_every_field() {
        for bad in [
            "sip:a@b\r\nX-Injected: 1",
            "sip:a@b\nX: 1",
            "sip:a@b\rX",
            "sip:a@b\0",
            "sip:a@b\t",
            "sip:a@b\x7f",
            "sip:a@b\u{85}",
        ] {
            for (field, result) in with_each_field(bad) {
                assert_eq!(
                    result,
                    Err(RequestError::ControlCharacter(field)),
                    "{field} with {bad:?}"
                );
            }
        }
        // The control: the same fields with harmless values build.
        let b = branch();
        assert!(full(&b).build().is_ok());
    }

    #[test]
    fn header_names_must_be_tokens_and_not_the_builders_own() {
        let b = branch();
        for bad in ["X Y", "X:Y", "", "Ü", "X;"] {
            assert_eq!(
                full(&b).header(bad, "v").build(),
                Err(RequestError::Malformed(Field::HeaderName)),
                "{bad:?}"
            );
        }
        for reserved in [
            "Content-Length",
            "l",
            "VIA",
            "Call-ID",
            "i",
            "To",
            "cseq",
            "Route",
        ] {
            assert_eq!(
                full(&b).header(reserved, "0").build(),
                Err(RequestError::ReservedHeader),
                "{reserved}"
            );
        }
        assert!(full(&b).header("X-Custom.1", "fine").build().is_ok());
    }

    #[test]
    fn malformed_and_missing_values_are_named() {
        let b = branch();
        let base = || {
            RequestBuilder::new("OPTIONS", "sip:x@y")
                .via(TopVia::new("UDP", local(), &b))
                .from(Party::new("sip:a@b").tag("t"))
                .to(Party::new("sip:x@y"))
                .call_id("c")
                .cseq(1)
        };
        assert!(base().build().is_ok());
        let cases = [
            (
                RequestBuilder::new("OPTIONS", "sip:x@y"),
                RequestError::Missing(Field::Via),
            ),
            (
                base().tap_uri("x@y"),
                RequestError::Malformed(Field::RequestUri),
            ),
            (
                base().tap_uri("sip:x y"),
                RequestError::Malformed(Field::RequestUri),
            ),
            (
                base().tap_uri("sip:x>y"),
                RequestError::Malformed(Field::RequestUri),
            ),
            (
                base().tap_uri("1sip:x"),
                RequestError::Malformed(Field::RequestUri),
            ),
            (
                base().tap_method("OPT IONS"),
                RequestError::Malformed(Field::Method),
            ),
            (
                base().from(Party::new("sip:a@b")),
                RequestError::Missing(Field::FromTag),
            ),
            (
                base().to(Party::new("sip:a@b").tag("a;b")),
                RequestError::Malformed(Field::ToTag),
            ),
            (
                base().call_id("a b"),
                RequestError::Malformed(Field::CallId),
            ),
            (
                base().call_id("a@b@c"),
                RequestError::Malformed(Field::CallId),
            ),
            (base().call_id(""), RequestError::Malformed(Field::CallId)),
            (base().cseq(1 << 31), RequestError::Malformed(Field::CSeq)),
            (
                base().route("<sip:p;lr>"),
                RequestError::Malformed(Field::Route),
            ),
            (
                base().body("sdp", b""),
                RequestError::Malformed(Field::ContentType),
            ),
            (
                base().contact("sip:a@b\"x"),
                RequestError::Malformed(Field::Contact),
            ),
        ];
        for (builder, want) in cases {
            assert_eq!(builder.build(), Err(want));
        }
        let long = format!("sip:{}", "a".repeat(MAX_VALUE_LEN));
        assert_eq!(
            base().contact(&long).build(),
            Err(RequestError::TooLong(Field::Contact))
        );
        let mut many = base();
        for _ in 0..MAX_HEADERS {
            many = many.header("X", "y");
        }
        assert_eq!(many.build(), Err(RequestError::TooManyHeaders));
        let mut request = RequestBuilder::new("OPTIONS", "sip:x@y");
        for missing in [
            Field::Via,
            Field::From,
            Field::To,
            Field::CallId,
            Field::CSeq,
        ] {
            assert_eq!(request.build(), Err(RequestError::Missing(missing)));
            request = match missing {
                Field::Via => request.via(TopVia::new("UDP", local(), &b)),
                Field::From => request.from(Party::new("sip:a@b").tag("t")),
                Field::To => request.to(Party::new("sip:x@y")),
                Field::CallId => request.call_id("c"),
                _ => request.cseq(1),
            };
        }
        assert!(request.build().is_ok());
    }

    fn dialog(route_set: Vec<&'static str>) -> DialogState<'static> {
        DialogState {
            call_id: "d1@pbx",
            local_uri: "sip:1001@pbx.example.com",
            local_tag: "lt",
            remote_uri: "sip:+441234@trunk.example.net",
            remote_tag: Some("rt"),
            remote_target: "sip:gw@203.0.113.5:5060",
            route_set,
        }
    }

    #[test]
    fn requests_in_a_dialog_follow_its_route_set() {
        let b = branch();
        let bye = |d: &DialogState<'static>| {
            let bytes = RequestBuilder::in_dialog(d, "BYE", 8)
                .via(TopVia::new("UDP", local(), &b))
                .build()
                .expect("builds");
            let m = parse(&bytes).expect("parses");
            let StartLine::Request { uri, .. } = m.start else {
                panic!("a request")
            };
            let routes: Vec<String> = m.headers_named(Name::Route).map(str::to_owned).collect();
            assert_eq!(
                m.header(Name::From),
                Some("<sip:1001@pbx.example.com>;tag=lt")
            );
            assert_eq!(
                m.header(Name::To),
                Some("<sip:+441234@trunk.example.net>;tag=rt")
            );
            assert_eq!(m.header(Name::CSeq), Some("8 BYE"));
            assert_eq!(m.header(Name::CallId), Some("d1@pbx"));
            (uri.to_owned(), routes)
        };
        assert_eq!(
            bye(&dialog(vec![])),
            ("sip:gw@203.0.113.5:5060".into(), vec![])
        );
        assert_eq!(
            bye(&dialog(vec![
                "sip:p1.example.com;lr",
                "sip:p2.example.com;lr"
            ])),
            (
                "sip:gw@203.0.113.5:5060".into(),
                vec![
                    "<sip:p1.example.com;lr>".into(),
                    "<sip:p2.example.com;lr>".into()
                ]
            ),
            "loose routing"
        );
        assert_eq!(
            bye(&dialog(vec![
                "sip:old.example.com",
                "sip:p2.example.com;lr"
            ])),
            (
                "sip:old.example.com".into(),
                vec![
                    "<sip:p2.example.com;lr>".into(),
                    "<sip:gw@203.0.113.5:5060>".into()
                ]
            ),
            "a strict router is put in the Request-URI"
        );
        assert!(loose_route("sip:p;LR=on"));
        assert!(
            !loose_route("sip:a;lr@p"),
            "a ;lr in the user part is not a parameter"
        );
        assert!(!loose_route("sip:p?lr"));
    }

    #[test]
    fn the_ack_of_a_2xx_is_in_the_dialog_with_a_new_branch_and_the_invite_cseq() {
        let b = Branch::new("ack-branch-0123456789").expect("branch");
        let d = dialog(vec!["sip:p1.example.com;lr"]);
        let bytes = ack_2xx(&d, 42, TopVia::new("UDP", local(), &b))
            .body("application/sdp", b"v=0\r\n")
            .build()
            .expect("builds");
        let m = parse(&bytes).expect("parses");
        assert_eq!(m.method(), Some("ACK"));
        assert_eq!(m.header(Name::CSeq), Some("42 ACK"));
        assert_eq!(
            m.header(Name::To),
            Some("<sip:+441234@trunk.example.net>;tag=rt")
        );
        assert_eq!(
            m.header(Name::From),
            Some("<sip:1001@pbx.example.com>;tag=lt")
        );
        assert_eq!(
            Via::parse(m.header(Name::Via).expect("via")).and_then(|v| v.branch),
            Some("z9hG4bKack-branch-0123456789")
        );
        assert_eq!(m.header(Name::Route), Some("<sip:p1.example.com;lr>"));
        assert_eq!(m.body, b"v=0\r\n");
    }

    #[test]
    fn a_2xx_gives_the_dialog_to_ack_and_bye_it() {
        let invite = parse(INVITE).expect("parses");
        let ok = parse(
            b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc0123456789def;rport=5060\r\n\
Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\r\n\
Record-Route: \"edge\" <sip:edge.example.com;lr;x=1>\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=f1\r\n\
To: <sip:1002@pbx.example.com>;tag=callee\r\n\
Call-ID: c1@pbx\r\nCSeq: 11 INVITE\r\n\
Contact: <sip:1002@192.0.2.9:5062;transport=udp>;expires=60\r\n\r\n",
        )
        .expect("parses");
        let d = DialogState::from_answer(&invite, &ok).expect("a dialog");
        assert_eq!(
            d,
            DialogState {
                call_id: "c1@pbx",
                local_uri: "sip:1001@pbx.example.com",
                local_tag: "f1",
                remote_uri: "sip:1002@pbx.example.com",
                remote_tag: Some("callee"),
                remote_target: "sip:1002@192.0.2.9:5062;transport=udp",
                route_set: vec![
                    "sip:edge.example.com;lr;x=1",
                    "sip:p1.example.com;lr",
                    "sip:p2.example.com;lr"
                ],
            }
        );
        let b = Branch::new("another-0123456789").expect("branch");
        let ack = ack_2xx(&d, 11, TopVia::new("UDP", local(), &b))
            .build()
            .expect("builds");
        let ack = parse(&ack).expect("parses");
        assert_eq!(
            ack.start,
            StartLine::Request {
                method: "ACK",
                uri: "sip:1002@192.0.2.9:5062;transport=udp"
            }
        );
        assert_eq!(
            ack.header(Name::Route),
            Some("<sip:edge.example.com;lr;x=1>")
        );
        assert_eq!(
            ack.header(Name::To),
            Some("<sip:1002@pbx.example.com>;tag=callee")
        );
        let bye = RequestBuilder::in_dialog(&d, "BYE", 12)
            .via(TopVia::new("UDP", local(), &b))
            .build()
            .expect("builds");
        assert!(parse(&bye).is_ok());

        let no_contact = parse(b"SIP/2.0 200 OK\r\nTo: <sip:x>;tag=a\r\n\r\n").expect("parses");
        assert_eq!(
            DialogState::from_answer(&invite, &no_contact),
            Err(RequestError::Missing(Field::Contact))
        );
        let bad_rr = parse(
            b"SIP/2.0 200 OK\r\nTo: <sip:x>;tag=a\r\nContact: <sip:c@d>\r\nRecord-Route: junk junk\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(
            DialogState::from_answer(&invite, &bad_rr),
            Err(RequestError::Malformed(Field::Route))
        );
        let many = format!(
            "SIP/2.0 200 OK\r\nTo: <sip:x>;tag=a\r\nContact: <sip:c@d>\r\nRecord-Route: {}\r\n\r\n",
            vec!["<sip:p;lr>"; 200].join(",")
        );
        let many = parse(many.as_bytes()).expect("parses");
        assert_eq!(
            DialogState::from_answer(&invite, &many),
            Err(RequestError::TooManyHeaders)
        );
    }

    const INVITE: &[u8] = b"INVITE sip:1002@192.0.2.9:5062 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc0123456789def;rport\r\n\
Route: <sip:edge1.example.com;lr>\r\n\
Route: <sip:edge2.example.com;lr>\r\n\
Max-Forwards: 69\r\n\
From: \"Alice\"\t<sip:1001@pbx.example.com>;tag=f1\r\n\
To: <sip:1002@pbx.example.com>\r\n\
Call-ID: c1@pbx\r\n\
CSeq: 11 INVITE\r\n\
Contact: <sip:1001@192.0.2.1>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn the_cancel_copies_the_invite_on_its_branch() {
        let invite = parse(INVITE).expect("parses");
        let bytes = cancel(&invite).expect("builds");
        let c = parse(&bytes).expect("parses");
        assert_eq!(
            c.start,
            StartLine::Request {
                method: "CANCEL",
                uri: "sip:1002@192.0.2.9:5062"
            }
        );
        assert_eq!(c.headers_named(Name::Via).count(), 1);
        assert_eq!(c.header(Name::Via), invite.header(Name::Via));
        for name in [Name::From, Name::To, Name::CallId] {
            assert_eq!(c.header(name), invite.header(name), "{name:?}");
        }
        assert_eq!(
            c.headers_named(Name::Route).collect::<Vec<_>>(),
            invite.headers_named(Name::Route).collect::<Vec<_>>()
        );
        assert_eq!(c.header(Name::CSeq), Some("11 CANCEL"));
        assert_eq!(c.header(Name::ContentType), None);
        assert!(c.body.is_empty());
        assert_eq!(c.header(Name::ContentLength), Some("0"));
    }

    #[test]
    fn the_ack_of_a_failure_takes_the_answers_to() {
        let invite = parse(INVITE).expect("parses");
        let answer = parse(
            b"SIP/2.0 486 Busy Here\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc0123456789def;rport=5060\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=f1\r\n\
To: <sip:1002@pbx.example.com>;tag=callee\r\n\
Call-ID: c1@pbx\r\nCSeq: 11 INVITE\r\n\r\n",
        )
        .expect("parses");
        let bytes = ack_non_2xx(&invite, &answer).expect("builds");
        let a = parse(&bytes).expect("parses");
        assert_eq!(a.method(), Some("ACK"));
        assert_eq!(
            a.header(Name::Via),
            invite.header(Name::Via),
            "the INVITE's branch"
        );
        assert_eq!(
            a.header(Name::To),
            Some("<sip:1002@pbx.example.com>;tag=callee")
        );
        assert_eq!(a.header(Name::From), invite.header(Name::From));
        assert_eq!(a.header(Name::CSeq), Some("11 ACK"));
        assert_eq!(a.headers_named(Name::Route).count(), 2);

        let ok = parse(b"SIP/2.0 200 OK\r\nTo: <sip:x>;tag=y\r\n\r\n").expect("parses");
        assert_eq!(ack_non_2xx(&invite, &ok), Err(RequestError::NotAFailure));
        let ringing = parse(b"SIP/2.0 180 Ringing\r\nTo: <sip:x>;tag=y\r\n\r\n").expect("parses");
        assert_eq!(
            ack_non_2xx(&invite, &ringing),
            Err(RequestError::NotAFailure)
        );
        let no_to = parse(b"SIP/2.0 404 Not Found\r\n\r\n").expect("parses");
        assert_eq!(
            ack_non_2xx(&invite, &no_to),
            Err(RequestError::Missing(Field::To))
        );
        let bye = parse(
            b"BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 BYE\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(cancel(&bye), Err(RequestError::NotAnInvite));
        assert_eq!(cancel(&answer), Err(RequestError::NotAnInvite));
    }

    #[test]
    fn derived_requests_refuse_values_a_hand_made_message_smuggles_in() {
        let mut invite = parse(INVITE).expect("parses");
        for h in invite.headers.iter_mut().filter(|h| h.name == Name::From) {
            h.value = "<sip:a@b>;tag=x\r\nX-Injected: 1".into();
        }
        assert_eq!(
            cancel(&invite),
            Err(RequestError::ControlCharacter(Field::From))
        );
        let mut invite = parse(INVITE).expect("parses");
        invite.headers.retain(|h| h.name != Name::Via);
        assert_eq!(cancel(&invite), Err(RequestError::Missing(Field::Via)));
    }
}

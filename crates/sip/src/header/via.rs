//! `Via` (RFC 3261 §20.42, RFC 3581 `rport`): where responses go.

use super::{param, split_list};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// `UDP`, `TCP`, `TLS`, ... (upper-cased by the sender, compared case-insensitively).
    pub transport: &'a str,
    /// Host of `sent-by`, without brackets for IPv6.
    pub host: &'a str,
    pub port: Option<u16>,
    pub branch: Option<&'a str>,
    /// `None`: no rport; `Some(None)`: rport requested; `Some(Some(p))`: already filled.
    pub rport: Option<Option<u16>>,
    /// Everything after `sent-by`, starting at the first `;` (or empty).
    pub params: &'a str,
}

impl<'a> Via<'a> {
    pub fn parse(value: &'a str) -> Option<Self> {
        let value = value.trim();
        let (proto, rest) = value.split_once(|c: char| c.is_ascii_whitespace())?;
        let mut p = proto.split(['/']);
        let (name, version, transport) = (p.next()?, p.next()?, p.next()?);
        if !name.trim().eq_ignore_ascii_case("SIP")
            || version.trim() != "2.0"
            || transport.is_empty()
            || p.next().is_some()
        {
            return None;
        }
        let rest = rest.trim_start();
        let (sent_by, params) = match rest.bytes().position(|b| b == b';') {
            Some(i) => (rest[..i].trim(), &rest[i..]),
            None => (rest.trim(), ""),
        };
        let (host, port) = split_host_port(sent_by)?;
        let branch = param(params, "branch").flatten().filter(|b| !b.is_empty());
        let rport = match param(params, "rport") {
            None => None,
            Some(None) => Some(None),
            Some(Some(v)) => Some(Some(v.parse().ok()?)),
        };
        Some(Self {
            transport: transport.trim(),
            host,
            port,
            branch,
            rport,
            params,
        })
    }

    /// The first (top) Via of a header value that may hold several.
    pub fn parse_top(value: &'a str) -> Option<Self> {
        split_list(value).next().and_then(Self::parse)
    }
}

/// Splits `host[:port]`, `[v6]:port`; refuses an empty host or a bad port.
pub fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return (!host.is_empty()).then_some((host, port));
    }
    let (host, port) = match text.bytes().rposition(|b| b == b':') {
        Some(i) => (&text[..i], Some(text[i + 1..].parse().ok()?)),
        None => (text, None),
    };
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    ok.then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `split_host_port` before the byte search, kept as the reference.
    fn split_host_port_reference(text: &str) -> Option<(&str, Option<u16>)> {
        if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?.parse().ok()?),
            };
            return (!host.is_empty()).then_some((host, port));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse().ok()?)),
            None => (text, None),
        };
        let ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        ok.then_some((host, port))
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(3000))]

        /// Attack: IPv6 references, several colons, empty and huge ports, multi-byte
        /// text beside the colon: split as before, never a panic.
        #[test]
        fn hostile_sent_by_splits_as_before(text in "[\\[\\]:0-9a-fA-Fé.€+-]{0,16}") {
            proptest::prop_assert_eq!(split_host_port(&text), split_host_port_reference(&text));
        }

        /// Attack: a whole hostile Via never panics, and its top is the first item.
        #[test]
        fn a_hostile_via_never_panics(
            v in "(SIP|sip|é)/(2\\.0|é)/(UDP|TCP|é) ?[\\[\\]:0-9a-fé;=,\" ]{0,30}"
        ) {
            let _ = Via::parse(&v);
            let _ = Via::parse_top(&v);
        }
    }

    #[test]
    fn typical_vias() {
        let v = Via::parse("SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK776;rport").expect("via");
        assert_eq!(
            (v.transport, v.host, v.port, v.branch, v.rport),
            (
                "UDP",
                "192.0.2.10",
                Some(5062),
                Some("z9hG4bK776"),
                Some(None)
            )
        );
        let v = Via::parse("SIP / 2.0 / TCP [2001:db8::1]:5060 ; branch=z9hG4bKx; rport=4000")
            .map(|v| (v.host, v.port, v.rport));
        assert_eq!(
            v, None,
            "spaces inside the protocol are rare; refused rather than guessed"
        );
        let v =
            Via::parse("SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKx;rport=4000").expect("v6");
        assert_eq!(
            (v.host, v.port, v.rport),
            ("2001:db8::1", Some(5060), Some(Some(4000)))
        );
        let v =
            Via::parse_top("SIP/2.0/UDP a.example.com, SIP/2.0/UDP b.example.com").expect("top");
        assert_eq!((v.host, v.port, v.branch), ("a.example.com", None, None));
    }

    #[test]
    fn bad_vias() {
        for bad in [
            "",
            "SIP/2.0/UDP",
            "SIP/2.0 host",
            "HTTP/1.1/TCP host",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP [::1",
            "SIP/2.0/UDP :5060",
            "SIP/2.0/UDP h;rport=x",
        ] {
            assert_eq!(Via::parse(bad), None, "{bad:?}");
        }
    }
}

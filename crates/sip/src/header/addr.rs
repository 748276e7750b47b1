//! name-addr / addr-spec values of `From`, `To` and `Contact` (RFC 3261 §20.10, §25.1),
//! and the parts of a SIP URI the registrar needs.

use super::param;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub display: Option<&'a str>,
    /// The URI exactly as written (without the angle brackets).
    pub uri: &'a str,
    /// Header parameters after the address, starting at `;` (or empty).
    pub params: &'a str,
}

impl<'a> NameAddr<'a> {
    pub fn parse(value: &'a str) -> Option<Self> {
        let value = value.trim();
        if let Some(open) = find_unquoted(value, '<') {
            let display = value[..open].trim().trim_matches('"').trim();
            let rest = &value[open + 1..];
            let close = rest.find('>')?;
            let uri = rest[..close].trim();
            let params = rest[close + 1..].trim();
            if uri.is_empty() || !(params.is_empty() || params.starts_with(';')) {
                return None;
            }
            return Some(Self {
                display: (!display.is_empty()).then_some(display),
                uri,
                params,
            });
        }
        // addr-spec: no display name; parameters after the URI belong to the header.
        if value.contains(['"', '>', ' ']) {
            return None;
        }
        let (uri, params) = match value.find(';') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, ""),
        };
        (!uri.is_empty()).then_some(Self {
            display: None,
            uri,
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        param(self.params, name)
    }

    pub fn tag(&self) -> Option<&'a str> {
        self.param("tag").flatten()
    }
}

fn find_unquoted(s: &str, needle: char) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == needle && !quoted {
            return Some(i);
        }
    }
    None
}

/// The parts of a `sip:`/`sips:` URI: user (without password), host, port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub secure: bool,
    pub user: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
}

impl<'a> SipUri<'a> {
    pub fn parse(uri: &'a str) -> Option<Self> {
        let (secure, rest) = if let Some(r) = strip_prefix_ci(uri, "sips:") {
            (true, r)
        } else {
            (false, strip_prefix_ci(uri, "sip:")?)
        };
        let rest = rest.split(['?']).next().unwrap_or("");
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let hostport = hostpart.split(';').next().unwrap_or("");
        let (host, port) = super::via::split_host_port(hostport)?;
        let user = match userinfo {
            Some(u) => {
                let user = u.split(':').next().unwrap_or("");
                if user.is_empty() {
                    return None;
                }
                Some(user)
            }
            None => None,
        };
        Some(Self {
            secure,
            user,
            host,
            port,
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addrs() {
        let a = NameAddr::parse(
            r#""Smith, Bob" <sip:1001@pbx.example.com;transport=udp>;tag=a73k;expires=60"#,
        )
        .expect("na");
        assert_eq!(a.display, Some("Smith, Bob"));
        assert_eq!(a.uri, "sip:1001@pbx.example.com;transport=udp");
        assert_eq!(a.tag(), Some("a73k"));
        assert_eq!(a.param("expires"), Some(Some("60")));
        let b = NameAddr::parse("sip:1001@192.0.2.1:5062;expires=0").expect("addr-spec");
        assert_eq!(
            (b.uri, b.param("expires")),
            ("sip:1001@192.0.2.1:5062", Some(Some("0")))
        );
        let c = NameAddr::parse("<sip:a@b>").expect("bare");
        assert_eq!((c.display, c.uri, c.params), (None, "sip:a@b", ""));
        for bad in [
            "",
            "<>",
            "<sip:a@b",
            "<sip:a@b>junk",
            "Bob sip:a@b",
            "\"x\" y",
        ] {
            assert_eq!(NameAddr::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sip_uris() {
        let u = SipUri::parse("sip:1001:secret@pbx.example.com:5070;transport=tcp?subject=x")
            .expect("uri");
        assert_eq!(
            (u.secure, u.user, u.host, u.port),
            (false, Some("1001"), "pbx.example.com", Some(5070))
        );
        let u = SipUri::parse("SIPS:[2001:db8::1]").expect("v6");
        assert_eq!(
            (u.secure, u.user, u.host, u.port),
            (true, None, "2001:db8::1", None)
        );
        for bad in [
            "",
            "tel:+1555",
            "sip:",
            "sip:@host",
            "sip:a@",
            "sip:a@host:x",
            "http://x",
        ] {
            assert_eq!(SipUri::parse(bad), None, "{bad:?}");
        }
    }
}

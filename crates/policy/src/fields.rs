//! Validated account fields. Every value that reaches the store went through one of these
//! parsers, so a stored extension number is always digits, a MAC is always 12 lower-case
//! hex digits, and no text field carries control characters (which would allow
//! config-line injection into provisioning files later).

use std::fmt;

/// A value that failed validation. The message names the field and says what is wrong;
/// it never repeats a secret's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidField {}

type Result<T> = std::result::Result<T, InvalidField>;

/// Shows a (non-secret) value in an error message, shortened and with control
/// characters escaped so the message itself cannot be used for terminal injection.
fn shown(value: &str) -> String {
    let short: String = value.chars().take(40).collect();
    let mut out = format!("{short:?}");
    if value.chars().count() > 40 {
        out.push('…');
    }
    out
}

fn has_control(value: &str) -> bool {
    value.chars().any(char::is_control)
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// An extension (or a gateway's virtual extension) number: 2 to 10 ASCII digits.
    ExtensionNumber
);
string_newtype!(
    /// A SIP authentication user name: 1 to 64 characters from `A-Z a-z 0-9 . _ - +`.
    AuthId
);
string_newtype!(
    /// A SIP ID (an alias user part); blank SIP IDs are represented as `None`.
    SipId
);
string_newtype!(
    /// A display name: up to 64 characters, no control characters, trimmed.
    DisplayName
);
string_newtype!(
    /// An email address in the common `local@domain.tld` form.
    Email
);
string_newtype!(
    /// A phone's MAC address, normalised to 12 lower-case hex digits.
    Mac
);
string_newtype!(
    /// A phone model, such as `yealink-t46u`.
    PhoneModel
);
string_newtype!(
    /// The name of a gateway or provider: 1 to 32 characters from `A-Z a-z 0-9 . _ -`.
    AccountName
);
string_newtype!(
    /// A host name or IP address with an optional port.
    Host
);

pub const MAX_NUMBER_DIGITS: usize = 10;

impl ExtensionNumber {
    pub fn parse(value: &str) -> Result<Self> {
        const FIELD: &str = "extension number";
        if value.is_empty() {
            return Err(InvalidField::new(FIELD, "it is empty"));
        }
        if !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidField::new(
                FIELD,
                format!("{} must contain digits only", shown(value)),
            ));
        }
        if value.len() < 2 || value.len() > MAX_NUMBER_DIGITS {
            return Err(InvalidField::new(
                FIELD,
                format!("{} must have 2 to {MAX_NUMBER_DIGITS} digits", shown(value)),
            ));
        }
        Ok(Self(value.to_owned()))
    }
}

fn is_user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')
}

impl AuthId {
    pub fn parse(value: &str) -> Result<Self> {
        parse_user_part("auth ID", value).map(Self)
    }
}

impl SipId {
    /// Parses a SIP ID; a blank value means "no SIP ID" and returns `Ok(None)`.
    pub fn parse(value: &str) -> Result<Option<Self>> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        parse_user_part("SIP ID", value).map(|v| Some(Self(v)))
    }
}

fn parse_user_part(field: &'static str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(InvalidField::new(field, "it is empty"));
    }
    if value.len() > 64 {
        return Err(InvalidField::new(field, "it is longer than 64 characters"));
    }
    if !value.chars().all(is_user_char) {
        return Err(InvalidField::new(
            field,
            format!(
                "{} may only contain letters, digits and . _ - +",
                shown(value)
            ),
        ));
    }
    Ok(value.to_owned())
}

impl DisplayName {
    pub fn parse(value: &str) -> Result<Self> {
        const FIELD: &str = "display name";
        if has_control(value) {
            return Err(InvalidField::new(
                FIELD,
                "it contains control characters (such as a line break)",
            ));
        }
        let value = value.trim();
        if value.chars().count() > 64 {
            return Err(InvalidField::new(FIELD, "it is longer than 64 characters"));
        }
        Ok(Self(value.to_owned()))
    }
}

impl Email {
    pub fn parse(value: &str) -> Result<Self> {
        const FIELD: &str = "email";
        let bad = |why: &str| Err(InvalidField::new(FIELD, format!("{} {why}", shown(value))));
        if value.len() > 254 {
            return bad("is longer than 254 characters");
        }
        let Some((local, domain)) = value.split_once('@') else {
            return bad("has no @");
        };
        const LOCAL_SPECIALS: &str = ".!#$%&'*+/=?^_`{|}~-";
        if local.is_empty()
            || local.len() > 64
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
            || !local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(c))
        {
            return bad("has an invalid part before the @");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        let tld_ok = labels
            .last()
            .is_some_and(|t| t.len() >= 2 && t.chars().all(|c| c.is_ascii_alphabetic()));
        if labels.len() < 2 || !labels.iter().all(label_ok) || !tld_ok {
            return bad("has an invalid domain after the @");
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }
}

impl Mac {
    /// Accepts `001565aabbcc`, `00:15:65:AA:BB:CC`, `00-15-65-aa-bb-cc` and `0015.65aa.bbcc`.
    pub fn parse(value: &str) -> Result<Self> {
        const FIELD: &str = "MAC address";
        let hex: String = value
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | '.'))
            .collect();
        if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(InvalidField::new(
                FIELD,
                format!("{} must be 12 hex digits", shown(value)),
            ));
        }
        let hex = hex.to_ascii_lowercase();
        if hex == "000000000000" || hex == "ffffffffffff" {
            return Err(InvalidField::new(
                FIELD,
                format!("{} is not a device address", shown(value)),
            ));
        }
        // The low bit of the first octet marks a multicast (group) address.
        let first = u8::from_str_radix(&hex[..2], 16).unwrap_or(1);
        if first & 1 == 1 {
            return Err(InvalidField::new(
                FIELD,
                format!("{} is a multicast address", shown(value)),
            ));
        }
        Ok(Self(hex))
    }
}

impl PhoneModel {
    pub fn parse(value: &str) -> Result<Self> {
        const FIELD: &str = "phone model";
        if value.is_empty() || value.len() > 64 {
            return Err(InvalidField::new(FIELD, "it must have 1 to 64 characters"));
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | ' ' | '/'))
        {
            return Err(InvalidField::new(
                FIELD,
                format!(
                    "{} may only contain letters, digits, spaces and . _ - + /",
                    shown(value)
                ),
            ));
        }
        Ok(Self(value.to_owned()))
    }
}

impl AccountName {
    pub fn parse(field: &'static str, value: &str) -> Result<Self> {
        let ok_len = !value.is_empty() && value.len() <= 32;
        let ok_chars = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        let ok_start = value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if !(ok_len && ok_chars && ok_start) {
            return Err(InvalidField::new(
                field,
                format!(
                    "{} must be 1 to 32 letters, digits, . _ or -, starting with a letter or digit",
                    shown(value)
                ),
            ));
        }
        Ok(Self(value.to_owned()))
    }
}

impl Host {
    /// The IP address a host names literally (`192.0.2.1:5060`, `[2001:db8::1]`), if any.
    pub fn ip_literal(value: &str) -> Option<std::net::IpAddr> {
        if let Some(rest) = value.strip_prefix('[') {
            return rest
                .split_once(']')?
                .0
                .parse()
                .ok()
                .map(std::net::IpAddr::V6);
        }
        let host = value.rsplit_once(':').map_or(value, |(h, _)| h);
        host.parse().ok().map(std::net::IpAddr::V4)
    }

    /// Accepts `name.example.com`, `192.0.2.1`, `[2001:db8::1]`, each with an optional `:port`.
    pub fn parse(value: &str) -> Result<Self> {
        const FIELD: &str = "host";
        let bad = |why: &str| Err(InvalidField::new(FIELD, format!("{} {why}", shown(value))));
        if value.is_empty() || value.len() > 255 {
            return bad("must have 1 to 255 characters");
        }
        let (host, port) = if let Some(rest) = value.strip_prefix('[') {
            let Some((v6, after)) = rest.split_once(']') else {
                return bad("has an unclosed [");
            };
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("is not a valid IPv6 address");
            }
            match after {
                "" => (v6, None),
                p => match p.strip_prefix(':') {
                    Some(port) => (v6, Some(port)),
                    None => return bad("has text after the ]"),
                },
            }
        } else {
            match value.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (value, None),
            }
        };
        if let Some(port) = port
            && !port.parse::<u16>().is_ok_and(|p| p > 0)
        {
            return bad("has an invalid port");
        }
        if !value.starts_with('[') {
            let labels_ok = host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
            if !labels_ok {
                return bad("is not a valid host name or IP address");
            }
        }
        Ok(Self(value.to_ascii_lowercase()))
    }
}

/// A password given by an administrator: 1 to 128 printable ASCII characters.
/// Weak passwords are accepted here (a legacy system must be mirrored) and flagged by the audit.
pub fn parse_password(field: &'static str, value: &str) -> Result<crate::Secret> {
    if value.is_empty() {
        return Err(InvalidField::new(field, "it is empty"));
    }
    if value.len() > 128 {
        return Err(InvalidField::new(field, "it is longer than 128 characters"));
    }
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(InvalidField::new(
            field,
            "it may only contain printable ASCII characters (no line breaks or control characters)",
        ));
    }
    Ok(crate::Secret::new(value))
}

/// A voicemail PIN given by an administrator: 1 to 12 digits.
pub fn parse_pin(value: &str) -> Result<crate::Secret> {
    const FIELD: &str = "voicemail PIN";
    if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidField::new(FIELD, "it must be 1 to 12 digits"));
    }
    Ok(crate::Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_numbers() {
        for ok in ["10", "1001", "0123456789", "888"] {
            assert_eq!(ExtensionNumber::parse(ok).expect(ok).as_str(), ok);
        }
        for bad in ["", "1", "12345678901", "10a1", " 1001", "١٢٣٤", "-100"] {
            assert!(ExtensionNumber::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auth_and_sip_ids() {
        assert!(AuthId::parse("k3x9.m2_p-8+q").is_ok());
        for bad in ["", "a b", "a@b", "a:b", "a\"b", &"x".repeat(65)] {
            assert!(AuthId::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(SipId::parse("  ").expect("blank"), None);
        assert_eq!(
            SipId::parse("alice").expect("ok").map(SipId::into_string),
            Some("alice".into())
        );
        assert!(SipId::parse("al ice").is_err());
    }

    #[test]
    fn display_names_refuse_control_characters() {
        assert_eq!(
            DisplayName::parse("  Ann Smith ").expect("ok").as_str(),
            "Ann Smith"
        );
        assert_eq!(
            DisplayName::parse("<script>alert(1)</script>")
                .expect("stored as text")
                .as_str(),
            "<script>alert(1)</script>"
        );
        for bad in ["a\nb", "a\rb", "a\u{7}b", "a\tb", &"x".repeat(65)] {
            assert!(DisplayName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse("ann.smith+pbx@Example.COM")
                .expect("ok")
                .as_str(),
            "ann.smith+pbx@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "ann@@example.com",
            "ann@exa mple.com",
            "ann@example.c",
            "ann@-example.com",
            ".ann@example.com",
            "an..n@example.com",
            "ann@example.com\r\nBcc: x@y.z",
            "ann@example..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn macs() {
        for ok in [
            "001565aabbcc",
            "00:15:65:AA:BB:CC",
            "00-15-65-aa-bb-cc",
            "0015.65aa.bbcc",
        ] {
            assert_eq!(Mac::parse(ok).expect(ok).as_str(), "001565aabbcc");
        }
        for bad in [
            "",
            "001565aabb",
            "001565aabbccdd",
            "00156gaabbcc",
            "000000000000",
            "ffffffffffff",
            "011565aabbcc",
        ] {
            assert!(Mac::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_and_hosts() {
        assert!(AccountName::parse("gateway name", "patton-1").is_ok());
        for bad in ["", "-x", "a b", "a:b", &"x".repeat(33)] {
            assert!(AccountName::parse("gateway name", bad).is_err(), "{bad:?}");
        }
        for ok in [
            "gw.example.com",
            "192.0.2.1:5060",
            "[2001:db8::1]",
            "[2001:db8::1]:5061",
            "GW1",
        ] {
            assert!(Host::parse(ok).is_ok(), "{ok}");
            assert_eq!(
                Host::ip_literal(ok).is_some(),
                ok.starts_with('[') || ok.starts_with(|c: char| c.is_ascii_digit()),
                "{ok}"
            );
        }
        for bad in [
            "",
            "gw..example",
            "gw.example.com:0",
            "gw:99999",
            "[2001:db8::1",
            "[zz]",
            "a b",
            "-gw",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_and_pins() {
        assert!(
            parse_password("password", "1001").is_ok(),
            "weak but storable"
        );
        for bad in ["", "a\nb", "pässword", &"x".repeat(129)] {
            assert!(parse_password("password", bad).is_err(), "{bad:?}");
        }
        let err = parse_password("password", "secret\u{1}").expect_err("control");
        assert!(
            !err.to_string().contains("secret"),
            "never echo a secret: {err}"
        );
        assert!(parse_pin("0000").is_ok());
        for bad in ["", "12a4", "1234567890123", " 1234"] {
            assert!(parse_pin(bad).is_err(), "{bad:?}");
        }
    }
}

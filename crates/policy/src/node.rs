//! A node's name: what one sipward process sharing a database with others is called in
//! the rows it owns (call leases, bindings) and on `/metrics`. A name is a label, never
//! an address: metric labels must not hold addresses, so a name that reads as an IP
//! address is refused.

use std::fmt;

/// The longest name (a DNS label's length).
pub const MAX_LEN: usize = 63;

/// A validated node name: 1 to 63 lower-case letters, digits, `-`, `_` and `.`, starting
/// with a letter or digit, and not an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeName(String);

/// Why a node name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNodeName {
    #[error("a node name must be 1 to {MAX_LEN} characters")]
    Length,
    #[error(
        "a node name may hold only letters, digits, '-', '_' and '.', and starts with a letter or digit"
    )]
    Characters,
    #[error("a node name must not be an IP address (it appears in metric labels)")]
    Address,
}

impl NodeName {
    /// Parses a name as an operator gives it (`--node-name`, `[cluster] node`, or the
    /// host name); letters are lower-cased, so `PBX-A` and `pbx-a` are one node.
    pub fn parse(raw: &str) -> Result<Self, InvalidNodeName> {
        let name = raw.trim().to_ascii_lowercase();
        if name.is_empty() || name.len() > MAX_LEN {
            return Err(InvalidNodeName::Length);
        }
        let first_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let all_ok = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !first_ok || !all_ok {
            return Err(InvalidNodeName::Characters);
        }
        if name.parse::<std::net::IpAddr>().is_ok() {
            return Err(InvalidNodeName::Address);
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_node_names_in_lower_case() {
        for (raw, name) in [
            ("pbx-a", "pbx-a"),
            ("PBX-A", "pbx-a"),
            ("node1.example.net", "node1.example.net"),
            ("a", "a"),
            ("n_2", "n_2"),
            (" pbx-b\n", "pbx-b"),
        ] {
            assert_eq!(NodeName::parse(raw).map(|n| n.to_string()), Ok(name.into()));
        }
        assert!(NodeName::parse(&"a".repeat(MAX_LEN)).is_ok());
    }

    #[test]
    fn addresses_labels_breakers_and_empty_names_are_refused() {
        for (raw, why) in [
            ("", InvalidNodeName::Length),
            ("   ", InvalidNodeName::Length),
            ("10.0.0.1", InvalidNodeName::Address),
            ("127.0.0.2", InvalidNodeName::Address),
            ("::1", InvalidNodeName::Characters),
            ("fd00::1", InvalidNodeName::Characters),
            ("a\"b", InvalidNodeName::Characters),
            ("a}b", InvalidNodeName::Characters),
            ("a b", InvalidNodeName::Characters),
            ("-a", InvalidNodeName::Characters),
            (".a", InvalidNodeName::Characters),
            ("ä", InvalidNodeName::Characters),
        ] {
            assert_eq!(NodeName::parse(raw), Err(why), "{raw:?}");
        }
        assert_eq!(
            NodeName::parse(&"a".repeat(MAX_LEN + 1)),
            Err(InvalidNodeName::Length)
        );
    }
}

//! Trunks as the rules see them: the two kinds sipward sends calls to, and DIDs (the
//! inbound numbers that reach an extension) in the one form they are stored and
//! matched in. Shared by the account workflow (records) and the server (routing).

use serde::Serialize;

use crate::dialplan::MAX_DIALLED;

/// A trunk sipward sends calls to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkKind {
    Gateway,
    Provider,
}

impl TrunkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TrunkKind::Gateway => "gateway",
            TrunkKind::Provider => "provider",
        }
    }

    /// The kind a stored route names; None for anything else (never guessed at).
    pub fn parse(value: &str) -> Option<TrunkKind> {
        match value {
            "gateway" => Some(TrunkKind::Gateway),
            "provider" => Some(TrunkKind::Provider),
            _ => None,
        }
    }
}

/// A DID as sipward keeps it: digits only (a leading `+` dropped; providers differ in
/// sending it), at most [`MAX_DIALLED`] of them.
pub fn normalize_did(did: &str) -> Option<String> {
    let d = did.trim();
    let d = d.strip_prefix('+').unwrap_or(d);
    (!d.is_empty() && d.len() <= MAX_DIALLED && d.bytes().all(|b| b.is_ascii_digit()))
        .then(|| d.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dids_keep_digits_only_and_drop_one_leading_plus() {
        assert_eq!(normalize_did("+441234567").as_deref(), Some("441234567"));
        assert_eq!(normalize_did(" 441234567 ").as_deref(), Some("441234567"));
        assert_eq!(normalize_did("0800").as_deref(), Some("0800"));
        let longest = "1".repeat(MAX_DIALLED);
        assert_eq!(normalize_did(&longest), Some(longest.clone()));
        for bad in [
            "",
            "+",
            "++44",
            "44 12",
            "44-12",
            "12a",
            "*97",
            &format!("{longest}1"),
        ] {
            assert_eq!(normalize_did(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn trunk_kinds_round_trip_and_nothing_else_parses() {
        for k in [TrunkKind::Gateway, TrunkKind::Provider] {
            assert_eq!(TrunkKind::parse(k.as_str()), Some(k));
        }
        for bad in ["", "Gateway", "trunk", "gateway "] {
            assert_eq!(TrunkKind::parse(bad), None, "{bad:?}");
        }
    }
}

//! The `branch` parameter sipward puts in the Via of its own requests (RFC 3261
//! §8.1.1.7): the magic cookie `z9hG4bK` and a part nobody else can guess, so that a
//! response can only reach a client transaction by answering a request it really saw.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Every RFC 3261 branch starts with this; transactions match only such branches.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// The unguessable part must be at least this long (16 hex digits = 64 bits).
pub const MIN_UNGUESSABLE_LEN: usize = 16;

/// A branch longer than this is refused (nothing legitimate needs more).
pub const MAX_LEN: usize = 128;

/// Why a branch was refused. The text is never quoted back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BranchError {
    #[error("the unguessable part of a branch must have at least {MIN_UNGUESSABLE_LEN} characters")]
    TooShort,
    #[error("a branch may have at most {MAX_LEN} characters")]
    TooLong,
    #[error("a branch may contain only token characters (RFC 3261 §25.1)")]
    NotAToken,
}

/// A validated branch of our own: `z9hG4bK` followed by token characters, at least
/// [`MIN_UNGUESSABLE_LEN`] of them. Only the request builder's Via takes one, so a
/// request sipward starts can never carry a guessable or malformed branch.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Branch(String);

impl Branch {
    /// The branch for an unguessable part drawn by the caller (see [`BranchSource`]).
    /// The part may start with a component prefix of its own (say `swp`), as long as
    /// enough unguessable characters follow it.
    pub fn new(unguessable: &str) -> Result<Self, BranchError> {
        if unguessable.len() < MIN_UNGUESSABLE_LEN {
            return Err(BranchError::TooShort);
        }
        if unguessable.len() + MAGIC_COOKIE.len() > MAX_LEN {
            return Err(BranchError::TooLong);
        }
        if !crate::header::is_token(unguessable) {
            return Err(BranchError::NotAToken);
        }
        Ok(Self(format!("{MAGIC_COOKIE}{unguessable}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Branch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Branch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Branches go on the wire anyway; printing them helps follow a transaction.
        write!(f, "Branch({})", self.0)
    }
}

/// Where new branches come from. Pluggable so that the runtime decides how keys are
/// drawn (OS CSPRNG at start) and tests can use fixed ones.
pub trait BranchSource {
    fn next_branch(&self) -> Branch;
}

/// Branches from a secret key and a counter: `hex(HMAC-SHA256(key, counter))[..24]`.
/// 96 bits an attacker cannot predict without the key, unique until the counter wraps,
/// and shareable between threads (`&self`).
pub struct KeyedBranches {
    key: [u8; 32],
    counter: AtomicU64,
}

impl KeyedBranches {
    /// `key` should come from the OS CSPRNG; it never leaves this value.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            counter: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for KeyedBranches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyedBranches([redacted])")
    }
}

impl BranchSource for KeyedBranches {
    fn next_branch(&self) -> Branch {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC-SHA256 accepts keys of any length"));
        mac.update(b"branch");
        mac.update(&n.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        // 12 bytes of hex are 24 token characters: always a valid unguessable part.
        Branch(format!(
            "{MAGIC_COOKIE}{}",
            hex::encode(digest.get(..12).unwrap_or_default())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_carry_the_cookie_and_refuse_short_or_odd_parts() {
        let b = Branch::new("0123456789abcdef").expect("long enough");
        assert_eq!(b.as_str(), "z9hG4bK0123456789abcdef");
        assert_eq!(Branch::new("0123"), Err(BranchError::TooShort));
        assert_eq!(
            Branch::new("0123456789abcdef;rport"),
            Err(BranchError::NotAToken)
        );
        assert_eq!(
            Branch::new("0123456789abcdef\r\nX"),
            Err(BranchError::NotAToken)
        );
        assert_eq!(Branch::new(&"a".repeat(200)), Err(BranchError::TooLong));
    }

    #[test]
    fn keyed_branches_are_distinct_and_depend_on_the_key() {
        let a = KeyedBranches::new([1; 32]);
        let b = KeyedBranches::new([2; 32]);
        let (a1, a2, b1) = (a.next_branch(), a.next_branch(), b.next_branch());
        assert_ne!(a1, a2);
        assert_ne!(a1, b1, "another key, another sequence");
        assert_eq!(a1.as_str().len(), MAGIC_COOKIE.len() + 24);
        assert_eq!(
            KeyedBranches::new([1; 32]).next_branch(),
            a1,
            "deterministic"
        );
        assert_eq!(format!("{a:?}"), "KeyedBranches([redacted])");
    }
}

//! A secret value (SIP password, voicemail PIN, trunk password) that cannot be printed
//! by accident: its `Debug` is redacted, it has no `Display`, its memory is wiped on drop,
//! and equality is decided in constant time.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A plaintext secret. Reach the text only through [`Secret::expose`], which makes every
/// place that handles plaintext easy to find.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The plaintext. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison (length still leaks, as it must).
    pub fn ct_eq(&self, other: &str) -> bool {
        self.0.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other.expose())
    }
}
impl Eq for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-very-secret");
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn equality_is_by_value() {
        assert_eq!(Secret::new("a1"), Secret::new("a1"));
        assert_ne!(Secret::new("a1"), Secret::new("a2"));
        assert!(!Secret::new("a1").ct_eq("a10"));
    }
}

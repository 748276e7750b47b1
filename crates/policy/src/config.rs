//! The policy knobs an administrator can set in the `[policy]` table of the config file.

use serde::Deserialize;

/// Thresholds for the credential rules and sizes for the generators.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Passwords shorter than this are flagged (`*.password_too_short`).
    pub min_password_length: usize,
    /// Length of generated SIP passwords (at least 16).
    pub generated_password_length: usize,
    /// Length of generated voicemail PINs (at least 4).
    pub generated_pin_length: usize,
    /// zxcvbn scores below this are flagged (`*.password_guessable`), 1..=4, or `"off"`
    /// (0 in memory: no password is ever guessable, which `sipward audit` reports).
    #[serde(with = "crate::switch::level_or_off")]
    pub min_strength_score: u8,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            min_password_length: 12,
            generated_password_length: 20,
            generated_pin_length: 6,
            min_strength_score: 3,
        }
    }
}

impl PolicyConfig {
    /// Checks the knobs make sense together; returns a sentence for the administrator.
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=64).contains(&self.generated_password_length) {
            return Err("policy.generated_password_length must be between 16 and 64".into());
        }
        if !(4..=12).contains(&self.generated_pin_length) {
            return Err("policy.generated_pin_length must be between 4 and 12".into());
        }
        if !(8..=64).contains(&self.min_password_length) {
            return Err("policy.min_password_length must be between 8 and 64".into());
        }
        if self.min_password_length > self.generated_password_length {
            return Err(
                "policy.min_password_length must not exceed policy.generated_password_length"
                    .into(),
            );
        }
        if self.min_strength_score > 4 {
            return Err("policy.min_strength_score must be between 1 and 4, or \"off\"".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        PolicyConfig::default().validate().expect("defaults valid");
    }

    #[test]
    fn nonsense_is_refused() {
        let bad = [
            PolicyConfig {
                generated_password_length: 8,
                ..Default::default()
            },
            PolicyConfig {
                generated_pin_length: 3,
                ..Default::default()
            },
            PolicyConfig {
                min_password_length: 4,
                ..Default::default()
            },
            PolicyConfig {
                min_password_length: 30,
                ..Default::default()
            },
            PolicyConfig {
                min_strength_score: 5,
                ..Default::default()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }
}

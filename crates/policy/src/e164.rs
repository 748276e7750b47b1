//! E.164 numbers: the only form in which a number may leave sipward. An [`E164`] is `+`
//! and 1 to 15 digits whose leading digits are an assigned country code (from the
//! compiled-in `data/country-codes.toml`), with the national number long enough to reach
//! someone; numbers of the North American Numbering Plan must also have NANP structure.
//! Turning what a phone dialled into an `E164` is the dial plan's job
//! ([`crate::dialplan::DialPlan::to_e164`]); this module only says what a valid one is.

use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;

/// E.164 allows at most 15 digits, country code included.
pub const MAX_DIGITS: usize = 15;

/// The shortest national significant number accepted. Niue (+683) and Tokelau (+690)
/// have 4-digit subscriber numbers; nothing in service is shorter.
pub const MIN_NATIONAL_DIGITS: usize = 4;

/// The NANP's national significant number: 3-digit area code, 3-digit exchange, 4 digits.
pub const NANP_NATIONAL_DIGITS: usize = 10;

const DATA: &str = include_str!("../data/country-codes.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[allow(dead_code)] // read by the data file's test; kept so the source travels with the list
    source: String,
    codes: Vec<String>,
}

fn country_codes() -> &'static HashSet<String> {
    static CODES: OnceLock<HashSet<String>> = OnceLock::new();
    CODES.get_or_init(|| {
        // Compiled in and checked by a unit test. Were it ever unreadable, an empty table
        // refuses every number: failing closed is the only safe way for a toll-fraud rule.
        toml::from_str::<File>(DATA)
            .map(|f| f.codes.into_iter().collect())
            .unwrap_or_default()
    })
}

/// The length of the assigned country code `digits` starts with, if any. Country codes
/// are a prefix code, so at most one length matches.
pub fn country_code_len(digits: &str) -> Option<usize> {
    let codes = country_codes();
    (1..=3).find(|&n| digits.get(..n).is_some_and(|cc| codes.contains(cc)))
}

/// Why a number is not an E.164 number (or does not map to one under the dial plan).
/// Messages never quote the number: it came from the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotE164 {
    #[error("the number is empty")]
    Empty,
    #[error("the number has more digits than E.164 allows (15 including the country code)")]
    TooLong,
    #[error(
        "the number is too short to reach a telephone (at least 4 digits after the country code)"
    )]
    TooShort,
    #[error("a number holds only digits, after an optional leading +")]
    NotDigits,
    #[error("a number in international form starts with +")]
    NoPlus,
    #[error("* and # service codes are not numbers and do not leave the PBX")]
    ServiceCode,
    #[error("the number's country code is not an assigned E.164 country code")]
    UnknownCountryCode,
    #[error(
        "a +1 number has 10 digits: an area code (2-9, then not 9, not N11), an exchange (2-9, not N11) and 4 digits"
    )]
    NotNanp,
    #[error(
        "a number dialled without a national or international prefix needs dialplan.area_code (local dialling is off)"
    )]
    NoLocalDialling,
}

/// A number in international format: `+`, an assigned country code and a national
/// significant number, at most 15 digits. Only [`E164::from_digits`] (and so
/// [`E164::parse`] and the dial plan) build one, so holding one proves all of that.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164 {
    /// `+` and the digits.
    text: String,
    /// Digits of the country code (1 to 3).
    cc_len: usize,
}

impl E164 {
    /// Parses the international form, `+` then digits.
    pub fn parse(text: &str) -> Result<Self, NotE164> {
        if text.is_empty() {
            return Err(NotE164::Empty);
        }
        let digits = text.strip_prefix('+').ok_or_else(|| {
            if text.bytes().all(|b| b.is_ascii_digit()) {
                NotE164::NoPlus
            } else {
                non_digit_reason(text)
            }
        })?;
        Self::from_digits(digits)
    }

    /// Builds a number from its digits without the `+` (country code first).
    pub fn from_digits(digits: &str) -> Result<Self, NotE164> {
        if digits.is_empty() {
            return Err(NotE164::TooShort);
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(non_digit_reason(digits));
        }
        if digits.len() > MAX_DIGITS {
            return Err(NotE164::TooLong);
        }
        let Some(cc_len) = country_code_len(digits) else {
            return Err(if digits.len() < 3 {
                NotE164::TooShort
            } else {
                NotE164::UnknownCountryCode
            });
        };
        let national = &digits[cc_len..];
        if national.len() < MIN_NATIONAL_DIGITS {
            return Err(NotE164::TooShort);
        }
        if cc_len == 1 && digits.starts_with('1') && !is_nanp_national(national) {
            return Err(NotE164::NotNanp);
        }
        Ok(Self {
            text: format!("+{digits}"),
            cc_len,
        })
    }

    /// `+` and the digits, as it goes on the wire.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The digits, country code first, without `+`.
    pub fn digits(&self) -> &str {
        &self.text[1..]
    }

    pub fn country_code(&self) -> &str {
        &self.text[1..=self.cc_len]
    }

    /// The national significant number (what follows the country code).
    pub fn national(&self) -> &str {
        &self.text[1 + self.cc_len..]
    }

    /// For a NANP number, its area code (NPA).
    pub fn nanp_area_code(&self) -> Option<&str> {
        (self.country_code() == "1").then(|| &self.national()[..3])
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.text)
    }
}

impl serde::Serialize for E164 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Why text that is not all digits is refused: `*` and `#` are feature codes, anything
/// else is not a number.
pub(crate) fn non_digit_reason(text: &str) -> NotE164 {
    if text.bytes().any(|b| b == b'*' || b == b'#') {
        NotE164::ServiceCode
    } else {
        NotE164::NotDigits
    }
}

/// NANP structure (NANP numbering plan, ATIS-0300076): NPA-NXX-XXXX where the area code
/// starts 2-9, has no 9 in the middle (reserved for expansion) and is not an N11 service
/// code, and the exchange starts 2-9 and is not N11.
fn is_nanp_national(n: &str) -> bool {
    let b = n.as_bytes();
    if b.len() != NANP_NATIONAL_DIGITS {
        return false;
    }
    let n11 = |i: usize| b[i + 1] == b'1' && b[i + 2] == b'1';
    (b'2'..=b'9').contains(&b[0])
        && b[1] != b'9'
        && !n11(0)
        && (b'2'..=b'9').contains(&b[3])
        && !n11(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_data_file_parses_and_is_a_prefix_code() {
        let file: File = toml::from_str(DATA).expect("country-codes.toml parses");
        assert!(!file.source.is_empty());
        let codes = &file.codes;
        assert!(codes.len() > 200, "{}", codes.len());
        for c in codes {
            assert!(
                (1..=3).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()),
                "{c}"
            );
            assert!(!c.starts_with('0'), "{c}");
            for other in codes {
                assert!(
                    c == other || !other.starts_with(c.as_str()),
                    "{c} is a prefix of {other}"
                );
            }
        }
        assert_eq!(country_codes().len(), codes.len(), "no duplicates");
    }

    #[test]
    fn country_codes_are_found_by_length() {
        assert_eq!(country_code_len("12125551234"), Some(1));
        assert_eq!(country_code_len("74951234567"), Some(1));
        assert_eq!(country_code_len("442079460000"), Some(2));
        assert_eq!(country_code_len("4930123456"), Some(2));
        assert_eq!(country_code_len("252612345678"), Some(3));
        assert_eq!(country_code_len("8816123456"), Some(3));
        assert_eq!(country_code_len("2801234567"), None, "28x is spare");
        assert_eq!(country_code_len("3881234567"), None, "388 withdrawn");
        assert_eq!(country_code_len("0123"), None);
        assert_eq!(country_code_len(""), None);
    }

    #[test]
    fn valid_numbers_parse() {
        let n = E164::parse("+442079460000").expect("UK");
        assert_eq!(n.as_str(), "+442079460000");
        assert_eq!(n.digits(), "442079460000");
        assert_eq!(n.country_code(), "44");
        assert_eq!(n.national(), "2079460000");
        assert_eq!(n.nanp_area_code(), None);
        assert_eq!(n.to_string(), "+442079460000");

        let j = E164::parse("+18765550123").expect("Jamaica");
        assert_eq!(j.country_code(), "1");
        assert_eq!(j.nanp_area_code(), Some("876"));

        let niue = E164::parse("+6834002").expect("4-digit national number");
        assert_eq!(niue.national(), "4002");
        assert!(E164::parse("+252612345678").is_ok());
        assert!(E164::parse("+491234567890123").is_ok(), "15 digits");
    }

    #[test]
    fn invalid_numbers_say_why() {
        use NotE164::*;
        let cases = [
            ("", Empty),
            ("+", TooShort),
            ("442079460000", NoPlus),
            ("+44207946000a", NotDigits),
            ("alice", NotDigits),
            ("+*97", ServiceCode),
            ("*97#", ServiceCode),
            ("+4912345678901234", TooLong),
            ("+44123", TooShort),
            ("+4", TooShort),
            ("+2801234567", UnknownCountryCode),
            ("+0441234567", UnknownCountryCode),
            ("+1212555123", NotNanp),
            ("+121255512345", NotNanp),
            ("+11125551234", NotNanp),
            ("+12915551234", NotNanp),
            ("+14115551234", NotNanp),
            ("+12121551234", NotNanp),
            ("+12124115555", NotNanp),
        ];
        for (text, want) in cases {
            assert_eq!(E164::parse(text), Err(want), "{text:?}");
        }
    }

    #[test]
    fn messages_never_quote_the_number() {
        let text = "+44207946000a";
        let err = E164::parse(text).expect_err("invalid");
        assert!(!err.to_string().contains("207946"), "{err}");
    }

    proptest! {
        #[test]
        fn no_input_panics_the_parser(s in "\\PC{0,40}") {
            let _ = E164::parse(&s);
            let _ = E164::from_digits(&s);
        }

        #[test]
        fn accepted_numbers_hold_their_invariants(s in "\\+?[0-9]{0,18}") {
            if let Ok(n) = E164::parse(&s) {
                prop_assert!(n.as_str().starts_with('+'));
                prop_assert!(n.digits().len() <= MAX_DIGITS);
                prop_assert!(n.national().len() >= MIN_NATIONAL_DIGITS);
                prop_assert_eq!(country_code_len(n.digits()), Some(n.country_code().len()));
                prop_assert_eq!(E164::parse(n.as_str()), Ok(n.clone()));
            }
        }
    }
}

//! Password facts used by the audit rules: the common-password list, character mix,
//! identity containment, and the zxcvbn strength score.

use std::collections::HashSet;
use std::sync::OnceLock;

/// The shipped common-password list (see the header of the data file for its source).
const COMMON_PASSWORDS: &str = include_str!("../data/common-passwords.txt");

/// zxcvbn's running time grows with length; a longer tail adds nothing to the verdict.
const MAX_SCORED_CHARS: usize = 64;

fn common_set() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// How many entries the shipped common-password list has.
pub fn common_list_len() -> usize {
    common_set().len()
}

/// Whether the password (ignoring case) is in the common-password list.
pub fn is_common(password: &str) -> bool {
    is_common_lower(&password.to_ascii_lowercase())
}

/// [`is_common`] for a password already lower-cased.
pub fn is_common_lower(lower: &str) -> bool {
    common_set().contains(lower)
}

/// Whether the password has at least one letter and at least one digit.
pub fn is_mixed(password: &str) -> bool {
    password.chars().any(|c| c.is_ascii_alphabetic())
        && password.chars().any(|c| c.is_ascii_digit())
}

/// zxcvbn's score (0..=4) for the password on its own, without user inputs: it depends
/// only on the password, so it can be computed once when the password is set and stored
/// next to it. Identity containment is checked by our own rules instead.
pub fn strength_score(password: &str) -> u8 {
    let capped: String = password.chars().take(MAX_SCORED_CHARS).collect();
    if capped.is_empty() {
        return 0;
    }
    zxcvbn::zxcvbn(&capped, &[]).score() as u8
}

/// Case-insensitive substring test, for identity containment rules.
pub fn contains_ci(password: &str, needle: &str) -> bool {
    !needle.is_empty()
        && password
            .to_ascii_lowercase()
            .contains(&needle.to_ascii_lowercase())
}

/// The parts of a display name worth looking for inside a password: each word of three
/// or more letters/digits, and the whole name without separators.
pub fn name_tokens(name: &str) -> Vec<String> {
    let mut tokens: Vec<String> = name
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .map(str::to_lowercase)
        .collect();
    let joined: String = name
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    if joined.chars().count() >= 3 && !tokens.contains(&joined) {
        tokens.push(joined);
    }
    tokens
}

/// The parts of a domain worth looking for inside a password: the whole domain and each
/// label of four or more characters that is not all digits (`pbx.example.com` gives
/// `pbx.example.com` and `example`).
pub fn domain_tokens(domain: &str) -> Vec<String> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return Vec::new();
    }
    let mut tokens = vec![domain.clone()];
    for label in domain.split('.') {
        if label.len() >= 4
            && !label.bytes().all(|b| b.is_ascii_digit())
            && !tokens.iter().any(|t| t == label)
        {
            tokens.push(label.to_owned());
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_large_enough() {
        assert!(common_list_len() >= 10_000, "{}", common_list_len());
    }

    #[test]
    fn common_passwords_are_found_ignoring_case() {
        for p in ["123456", "Password", "qwerty", "LetMeIn", "trustno1"] {
            assert!(is_common(p), "{p}");
        }
        for p in ["Xk29fLq8PzR4tW7yM3cB", "q8#Lm2!vR9"] {
            assert!(!is_common(p), "{p}");
        }
    }

    #[test]
    fn mix() {
        assert!(is_mixed("abc123"));
        assert!(!is_mixed("abcdefgh"));
        assert!(!is_mixed("12345678"));
        assert!(!is_mixed("!!!!...."));
    }

    #[test]
    fn scores() {
        assert!(strength_score("password1") <= 1);
        assert_eq!(strength_score("Xk29fLq8PzR4tW7yM3cB"), 4);
        assert_eq!(strength_score(""), 0);
        // Very long input is capped, not slow, and still strong.
        assert_eq!(strength_score(&"Xk29fLq8PzR4tW7yM3cB".repeat(50)), 4);
    }

    #[test]
    fn tokens() {
        assert_eq!(
            name_tokens("Ann-Marie O'Neil"),
            vec!["ann", "marie", "neil", "annmarieoneil"]
        );
        assert!(name_tokens("Al").is_empty());
        assert_eq!(
            domain_tokens("pbx.example.com."),
            vec!["pbx.example.com", "example"]
        );
        assert_eq!(domain_tokens("10.0.0.1"), vec!["10.0.0.1"]);
        assert!(domain_tokens("").is_empty());
        assert!(contains_ci("xxEXAMPLE11", "example"));
        assert!(!contains_ci("anything", ""));
    }
}

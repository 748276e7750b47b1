//! Strong credentials from a caller-supplied CSPRNG (the binary passes the OS CSPRNG;
//! tests pass a seeded one). Every draw is uniform: bytes outside the largest multiple of
//! the alphabet size are rejected rather than folded, so no character is favoured.

use rand_core::CryptoRng;

use crate::Secret;
use crate::fields::AuthId;
use crate::pin;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const DIGITS: &[u8] = b"0123456789";

/// The zxcvbn score of every password [`password`] returns: a uniformly random
/// alphanumeric password of 16+ characters carries 95+ bits, far above zxcvbn's top band
/// (10^10 guesses); the property tests confirm zxcvbn agrees. Storing it saves the
/// ~0.4 ms zxcvbn costs per password when thousands are generated at once.
pub const GENERATED_PASSWORD_SCORE: u8 = 4;

/// Length of generated auth IDs.
pub const AUTH_ID_LEN: usize = 12;

fn pick<R: CryptoRng + ?Sized>(rng: &mut R, alphabet: &[u8]) -> u8 {
    let n = alphabet.len();
    debug_assert!(n > 0 && n <= 256);
    let limit = 256 - (256 % n);
    loop {
        let mut b = [0u8; 1];
        rng.fill_bytes(&mut b);
        let v = usize::from(b[0]);
        if v < limit {
            return alphabet[v % n];
        }
    }
}

fn draw<R: CryptoRng + ?Sized>(rng: &mut R, alphabet: &[u8], len: usize) -> String {
    (0..len).map(|_| char::from(pick(rng, alphabet))).collect()
}

/// A random alphanumeric password of `len` characters (at least 16) with at least one
/// upper-case letter, one lower-case letter and one digit, and containing none of `avoid`
/// in any case (pass the account's number, auth ID, name words and domain words, which
/// the audit's containment rules look for).
pub fn password<R: CryptoRng + ?Sized>(rng: &mut R, len: usize, avoid: &[&str]) -> Secret {
    let len = len.max(16);
    loop {
        let candidate = draw(rng, ALNUM, len);
        let mixed = candidate.bytes().any(|b| b.is_ascii_uppercase())
            && candidate.bytes().any(|b| b.is_ascii_lowercase())
            && candidate.bytes().any(|b| b.is_ascii_digit());
        let lower = candidate.to_ascii_lowercase();
        let clean = avoid
            .iter()
            .filter(|a| a.len() >= 2)
            .all(|a| !lower.contains(&a.to_ascii_lowercase()));
        if mixed && clean {
            return Secret::new(candidate);
        }
    }
}

/// A random voicemail PIN of `len` digits (at least 4) that shows no trivial pattern and
/// neither equals nor contains the extension number.
pub fn pin<R: CryptoRng + ?Sized>(rng: &mut R, len: usize, number: &str) -> Secret {
    let len = len.max(4);
    loop {
        let candidate = draw(rng, DIGITS, len);
        if candidate != number
            && pin::trivial_reason(&candidate).is_none()
            && !pin::contains_number(&candidate, number)
        {
            return Secret::new(candidate);
        }
    }
}

/// A random auth ID: a lower-case letter then lower-case letters and digits. It starts
/// with a letter, so it is never an extension number.
pub fn auth_id<R: CryptoRng + ?Sized>(rng: &mut R) -> AuthId {
    let mut s = draw(rng, LOWER, 1);
    s.push_str(&draw(rng, LOWER_ALNUM, AUTH_ID_LEN - 1));
    // The alphabet and length are always valid for an auth ID.
    AuthId::parse(&s).unwrap_or_else(|_| unreachable_auth_id())
}

#[cold]
fn unreachable_auth_id() -> AuthId {
    // Only reachable if the constants above were changed to something invalid; the
    // property test below guards them.
    AuthId::parse("sipward").unwrap_or_else(|e| panic!("constant auth ID invalid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Auditor, Context, ExtensionFacts};
    use crate::{PolicyConfig, password};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A generated set of credentials never triggers any credential rule, whatever the
        /// extension's number, name and the domain; alphabets and lengths hold.
        #[test]
        fn generated_credentials_pass_every_rule(
            seed in any::<u64>(),
            number in "[0-9]{2,10}",
            name in "[A-Za-z]{0,12}( [A-Za-z]{0,12})?",
            domain in "[a-z]{1,10}\\.(com|net|org)",
            len in 16usize..40,
            pin_len in 4usize..12,
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let policy = PolicyConfig::default();
            let mut avoid = vec![number.clone()];
            avoid.extend(password::name_tokens(&name));
            avoid.extend(password::domain_tokens(&domain));
            let avoid: Vec<&str> = avoid.iter().map(String::as_str).collect();
            let pw = super::password(&mut rng, len, &avoid);
            let pin = super::pin(&mut rng, pin_len, &number);
            let auth = auth_id(&mut rng);

            prop_assert_eq!(pw.expose().len(), len);
            prop_assert!(pw.expose().bytes().all(|b| ALNUM.contains(&b)));
            prop_assert_eq!(pin.expose().len(), pin_len);
            prop_assert!(pin.expose().bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(auth.as_str().len(), AUTH_ID_LEN);
            prop_assert!(auth.as_str().as_bytes()[0].is_ascii_lowercase());
            prop_assert_eq!(password::strength_score(pw.expose()), GENERATED_PASSWORD_SCORE);

            let mut a = Auditor::new(Context { policy: &policy, domain: Some(&domain) });
            a.extension(&ExtensionFacts {
                number: &number,
                auth_id: auth.as_str(),
                sip_id: None,
                name: &name,
                email: Some("user@example.com"),
                password: pw.expose(),
                password_score: None,
                pin: pin.expose(),
            });
            let findings = a.finish();
            prop_assert!(findings.is_empty(), "{:?}", findings);
        }
    }

    #[test]
    fn draws_are_roughly_uniform() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 10];
        for _ in 0..2000 {
            for b in pin(&mut rng, 6, "1001").expose().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        // 12,000 digits: each should be near 1,200; a biased draw (e.g. modulo folding of
        // a byte) or a stuck generator would fall far outside this band.
        for (d, c) in counts.iter().enumerate() {
            assert!((1000..1400).contains(c), "digit {d}: {c}");
        }
    }

    #[test]
    fn avoided_text_is_avoided() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..500 {
            let p = password(&mut rng, 16, &["ab", "12"]);
            let l = p.expose().to_ascii_lowercase();
            assert!(!l.contains("ab") && !l.contains("12"), "{l}");
        }
    }
}

//! Voicemail PIN facts: the patterns people pick, which the audit flags and the
//! generator avoids.

/// PINs seen most often in leaked PIN sets (DataGenetics, "PIN number analysis", 2012,
/// top-20 four-digit PINs) plus phone-keypad shapes (columns, diagonals, crosses) that
/// the arithmetic checks below do not cover.
const COMMON_PINS: &[&str] = &[
    "1234",
    "1111",
    "0000",
    "1212",
    "7777",
    "1004",
    "2000",
    "4444",
    "2222",
    "6969",
    "9999",
    "3333",
    "5555",
    "6666",
    "1122",
    "1313",
    "8888",
    "4321",
    "2001",
    "1010",
    "2580",
    "0852",
    "1470",
    "0741",
    "3690",
    "0963",
    "1397",
    "1379",
    "1590",
    "159753",
    "147258",
    "258369",
    "369258",
    "147258369",
    "123654",
    "123789",
    "789456",
    "456123",
    "147852",
    "159357",
];

/// Why a PIN is trivial, in words, or `None` when it shows no known pattern.
/// The extension number is checked separately (see [`contains_number`]).
pub fn trivial_reason(pin: &str) -> Option<&'static str> {
    let digits: Vec<u8> = pin.bytes().map(|b| b.wrapping_sub(b'0')).collect();
    if digits.is_empty() || digits.iter().any(|&d| d > 9) {
        return None;
    }
    if digits.iter().all(|&d| d == digits[0]) {
        return Some("it is one digit repeated");
    }
    if is_run(&digits, 1) {
        return Some("it is a run of ascending digits");
    }
    if is_run(&digits, 9) {
        return Some("it is a run of descending digits");
    }
    if COMMON_PINS.contains(&pin) {
        return Some("it is one of the most commonly chosen PINs");
    }
    let repeats_block = (1..=digits.len() / 2)
        .any(|p| digits.len().is_multiple_of(p) && digits.chunks(p).all(|c| c == &digits[..p]));
    if repeats_block {
        return Some("it repeats a shorter block of digits");
    }
    if digits.len().is_multiple_of(2) && digits.len() >= 4 && digits.chunks(2).all(|c| c[0] == c[1])
    {
        let halves: Vec<u8> = digits.chunks(2).map(|c| c[0]).collect();
        if is_run(&halves, 1) || is_run(&halves, 9) {
            return Some("it is a run of doubled digits");
        }
    }
    if digits.len() >= 4 && digits.iter().eq(digits.iter().rev()) {
        return Some("it reads the same backwards");
    }
    if digits.len() == 4 && (pin.starts_with("19") || pin.starts_with("20")) {
        return Some("it looks like a year");
    }
    None
}

/// Each digit is the previous plus `step` (mod 10): step 1 ascends (wrapping 9 to 0, so
/// 7890 and 0123 count), step 9 descends (3210, 1098).
fn is_run(digits: &[u8], step: u8) -> bool {
    digits.len() >= 3 && digits.windows(2).all(|w| (w[0] + step) % 10 == w[1])
}

/// Whether the PIN contains the extension number or the number reversed. Two-digit
/// numbers are too likely to appear by chance, so only numbers of three or more digits count.
pub fn contains_number(pin: &str, number: &str) -> bool {
    if number.len() < 3 || pin == number {
        return false;
    }
    let reversed: String = number.chars().rev().collect();
    pin.contains(number) || pin.contains(&reversed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trivial_pins_are_flagged() {
        for pin in [
            "0000",
            "111111",
            "1234",
            "012345",
            "0123",
            "123456789",
            "7890",
            "8901",
            "4321",
            "3210",
            "9876543210",
            "1098",
            "1212",
            "123123",
            "100100",
            "112233",
            "998877",
            "2580",
            "1221",
            "123321",
            "1984",
            "2024",
            "147258369",
            "6969",
        ] {
            assert!(trivial_reason(pin).is_some(), "{pin} must be trivial");
        }
    }

    #[test]
    fn ordinary_pins_are_not_flagged() {
        for pin in [
            "4829", "731958", "508213", "9402", "1357924", "2718281", "0481",
        ] {
            assert_eq!(trivial_reason(pin), None, "{pin} must not be trivial");
        }
        assert_eq!(
            trivial_reason("12a4"),
            None,
            "not a PIN at all: handled by validation"
        );
    }

    #[test]
    fn extension_digits() {
        assert!(contains_number("910019", "1001"));
        assert!(contains_number("510429", "2401"), "reversed");
        assert!(!contains_number("1001", "1001"), "equality is its own rule");
        assert!(
            !contains_number("731058", "10"),
            "two-digit numbers are too common to flag"
        );
        assert!(!contains_number("731958", "1001"));
    }
}

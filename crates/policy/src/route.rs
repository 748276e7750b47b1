//! Outbound routes: which trunk a dialled number goes to, and how the number is
//! rewritten for it. Patterns use the notation PBX administrators know from Asterisk:
//! digits, `+`, `*` and `#` match themselves, `X` any digit, `Z` 1-9, `N` 2-9, `[...]`
//! a set of digits (with ranges, `[1-35]`), and a final `.` one or more further
//! characters. A pattern without `.` matches numbers of exactly its length.

use crate::dialplan::MAX_DIALLED;

/// The longest pattern accepted.
pub const MAX_PATTERN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Elem {
    Literal(u8),
    Set([bool; 10]),
}

/// A parsed dial pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    elems: Vec<Elem>,
    open: bool,
}

fn digit_set(lo: u8, hi: u8) -> [bool; 10] {
    let mut s = [false; 10];
    for d in lo..=hi {
        s[usize::from(d)] = true;
    }
    s
}

impl Pattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.strip_prefix('_').unwrap_or(text);
        if text.is_empty() || text.len() > MAX_PATTERN {
            return Err(format!("a dial pattern has 1 to {MAX_PATTERN} characters"));
        }
        let bytes = text.as_bytes();
        let mut elems = Vec::new();
        let mut open = false;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match b {
                b'0'..=b'9' | b'+' | b'*' | b'#' => elems.push(Elem::Literal(b)),
                b'X' | b'x' => elems.push(Elem::Set(digit_set(0, 9))),
                b'Z' | b'z' => elems.push(Elem::Set(digit_set(1, 9))),
                b'N' | b'n' => elems.push(Elem::Set(digit_set(2, 9))),
                b'.' if i + 1 == bytes.len() => open = true,
                b'[' => {
                    let end = text[i..]
                        .find(']')
                        .ok_or("a dial pattern's [ has no closing ]")?
                        + i;
                    let inner = &bytes[i + 1..end];
                    let mut set = [false; 10];
                    let mut j = 0;
                    while j < inner.len() {
                        let d = inner[j];
                        if !d.is_ascii_digit() {
                            return Err(
                                "a [set] in a dial pattern holds only digits and ranges".into()
                            );
                        }
                        if inner.get(j + 1) == Some(&b'-') {
                            let hi = *inner
                                .get(j + 2)
                                .filter(|h| h.is_ascii_digit() && **h >= d)
                                .ok_or(
                                    "a range in a dial pattern runs from a digit up to a digit",
                                )?;
                            for x in d..=hi {
                                set[usize::from(x - b'0')] = true;
                            }
                            j += 3;
                        } else {
                            set[usize::from(d - b'0')] = true;
                            j += 1;
                        }
                    }
                    if !set.contains(&true) {
                        return Err("a [set] in a dial pattern is empty".into());
                    }
                    elems.push(Elem::Set(set));
                    i = end;
                }
                _ => {
                    return Err(format!(
                        "a dial pattern holds digits, + * #, X Z N, [sets] and a final . (not {:?})",
                        char::from(b)
                    ));
                }
            }
            i += 1;
        }
        if elems.is_empty() {
            return Err("a dial pattern needs at least one digit or class before its .".into());
        }
        Ok(Self {
            text: text.to_owned(),
            elems,
            open,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `number` matches the whole pattern.
    pub fn matches(&self, number: &str) -> bool {
        let n = number.as_bytes();
        if n.len() < self.elems.len() || (!self.open && n.len() != self.elems.len()) {
            return false;
        }
        if self.open && n.len() == self.elems.len() {
            return false; // `.` needs one more character at least
        }
        let head = self.elems.iter().zip(n).all(|(e, &c)| match e {
            Elem::Literal(l) => *l == c,
            Elem::Set(s) => c.is_ascii_digit() && s[usize::from(c - b'0')],
        });
        head && n[self.elems.len()..]
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'*' | b'#'))
    }
}

/// How a route rewrites the number it sends to the trunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// Leading characters removed.
    pub strip: usize,
    /// Then put in front (digits and `+` only).
    pub prepend: String,
}

impl Rewrite {
    pub fn parse(strip: u32, prepend: &str) -> Result<Self, String> {
        let strip = usize::try_from(strip).unwrap_or(usize::MAX);
        if strip > MAX_DIALLED {
            return Err(format!("--strip is at most {MAX_DIALLED}"));
        }
        let ok = prepend.len() <= 8
            && prepend
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_digit() || (b == b'+' && i == 0));
        if !ok {
            return Err("--prepend is up to 8 digits, optionally starting with +".into());
        }
        Ok(Self {
            strip,
            prepend: prepend.to_owned(),
        })
    }

    /// The number for the trunk; None when nothing would be left to dial.
    pub fn apply(&self, dialled: &str) -> Option<String> {
        let rest = dialled.get(self.strip..)?;
        let out = format!("{}{rest}", self.prepend);
        (!out.is_empty() && out != "+").then_some(out)
    }
}

/// The first route (in the order given) whose pattern matches `dialled`, and the
/// number to send.
pub fn pick<'a, T>(
    routes: &'a [T],
    dialled: &str,
    parts: impl Fn(&T) -> (&Pattern, &Rewrite),
) -> Option<(&'a T, String)> {
    routes.iter().find_map(|r| {
        let (p, w) = parts(r);
        if p.matches(dialled) {
            w.apply(dialled).map(|n| (r, n))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Pattern::parse(p).expect(p).matches(n)
    }

    #[test]
    fn patterns_match_as_asterisk_administrators_expect() {
        assert!(m("0.", "0301234567"));
        assert!(!m("0.", "0"), "`.` needs at least one more digit");
        assert!(m("_0ZX.", "030123"));
        assert!(!m("0ZX.", "000123"));
        assert!(m("NXXNXXXXXX", "2125551234"));
        assert!(!m("NXXNXXXXXX", "212555123"), "exact length without `.`");
        assert!(!m("NXXNXXXXXX", "1125551234"));
        assert!(m("00[1-35]X.", "00351234"));
        assert!(m("00[1-35]X.", "00551234"));
        assert!(!m("00[1-35]X.", "00451234"));
        assert!(m("+.", "+4930123"));
        assert!(!m("+.", "004930123"));
        assert!(m("911", "911"));
        assert!(!m("911", "9110"));
        assert!(!m("X.", "1a2"), "letters never match");
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in [
            "",
            "_",
            "0a",
            "[",
            "[]",
            "[9-1]",
            "0.1",
            ".",
            "[a]",
            &"1".repeat(65),
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rewrites_strip_then_prepend() {
        let w = Rewrite::parse(1, "+49").expect("valid");
        assert_eq!(w.apply("0301234").as_deref(), Some("+49301234"));
        let w = Rewrite::parse(2, "").expect("valid");
        assert_eq!(w.apply("00").as_deref(), None, "nothing left");
        assert_eq!(w.apply("0").as_deref(), None);
        assert!(Rewrite::parse(0, "1+").is_err());
        assert!(Rewrite::parse(0, "123456789").is_err());
        assert!(Rewrite::parse(25, "").is_err());
    }

    #[test]
    fn the_first_matching_route_wins() {
        let routes = vec![
            (
                "intl",
                Pattern::parse("00.").expect("ok"),
                Rewrite::parse(0, "").expect("ok"),
            ),
            (
                "nat",
                Pattern::parse("0.").expect("ok"),
                Rewrite::parse(1, "49").expect("ok"),
            ),
        ];
        let pick = |n| pick(&routes, n, |r| (&r.1, &r.2)).map(|(r, n)| (r.0, n));
        assert_eq!(pick("0044123"), Some(("intl", "0044123".into())));
        assert_eq!(pick("030123"), Some(("nat", "4930123".into())));
        assert_eq!(pick("123"), None);
    }
}

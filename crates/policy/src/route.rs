//! Outbound routes: which trunk a dialled number goes to, and how the number is
//! rewritten for it. Patterns use the notation PBX administrators know from Asterisk:
//! digits, `+`, `*` and `#` match themselves, `X` any digit, `Z` 1-9, `N` 2-9, `[...]`
//! a set of digits (with ranges, `[1-35]`), and a final `.` one or more further
//! characters. A pattern without `.` matches numbers of exactly its length.
//!
//! Also the route audit's rule ([`raised_class`]): a route whose rewrite sends numbers
//! out as a higher class than they have as dialled.

use crate::dialplan::{Destination, DialPlan, Dialled, Leaving, MAX_DIALLED};

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

/// How many of a sample's variable positions take every digit their class allows; the
/// others take one representative digit. Three positions cover a country code or a NANP
/// area code whole, at most 1,000 samples per length.
pub const ENUMERATED_POSITIONS: usize = 3;

/// The total lengths an open pattern (`.`) is sampled at, besides one past its fixed
/// part: international and national numbers with and without prefixes, subscriber
/// numbers, short codes. Typical full lengths come first, so that the sample a finding
/// quotes looks like a number people dial.
pub const SAMPLE_LENGTHS: [usize; 12] = [12, 13, 11, 14, 10, 15, 8, 7, 16, 17, 18, 4];

fn digits_of(set: &[bool; 10]) -> impl Iterator<Item = u8> + '_ {
    (0u8..10).filter(|&d| set[usize::from(d)]).map(|d| b'0' + d)
}

/// The digit a set contributes where it is not enumerated: 5 where allowed (555 numbers
/// are valid almost everywhere: a NANP exchange must not start with 0 or 1), else the
/// first digit from 2 up, else the lowest.
fn representative(set: &[bool; 10]) -> u8 {
    if set[5] {
        return b'5';
    }
    digits_of(set)
        .find(|&d| d >= b'2')
        .or_else(|| digits_of(set).next())
        .unwrap_or(b'5')
}

impl Pattern {
    /// Representative numbers this pattern matches, for the route audit. Every sample
    /// matches the pattern. An open pattern is sampled at each of [`SAMPLE_LENGTHS`]
    /// beyond its fixed part and at one character past it, the `.` tail counting as `X`. In each sample, the first [`ENUMERATED_POSITIONS`] variable positions at
    /// or after `strip` (the digits that lead the number once the route has stripped its
    /// prefix: country and area codes), then those before it, take every digit they
    /// allow; all other variable positions take a representative digit.
    pub fn samples(&self, strip: usize) -> Vec<String> {
        let fixed = self.elems.len();
        let lengths: Vec<usize> = if self.open {
            SAMPLE_LENGTHS
                .into_iter()
                .filter(|&l| l > fixed + 1)
                .chain(std::iter::once(fixed + 1))
                .filter(|&l| l <= MAX_DIALLED)
                .collect()
        } else {
            vec![fixed]
        };
        let any = Elem::Set([true; 10]);
        let mut out = Vec::new();
        for len in lengths {
            let elems: Vec<&Elem> = (0..len)
                .map(|i| self.elems.get(i).unwrap_or(&any))
                .collect();
            let mut sample: Vec<u8> = elems
                .iter()
                .map(|e| match e {
                    Elem::Literal(b) => *b,
                    Elem::Set(set) => representative(set),
                })
                .collect();
            let enumerated: Vec<(usize, Vec<u8>)> = (strip.min(len)..len)
                .chain(0..strip.min(len))
                .filter_map(|i| match elems[i] {
                    Elem::Set(set) => Some((i, digits_of(set).collect())),
                    Elem::Literal(_) => None,
                })
                .take(ENUMERATED_POSITIONS)
                .collect();
            // An odometer over the enumerated positions.
            let mut at = vec![0usize; enumerated.len()];
            loop {
                for ((pos, digits), &k) in enumerated.iter().zip(&at) {
                    if let Some(&d) = digits.get(k) {
                        sample[*pos] = d;
                    }
                }
                out.push(sample.iter().map(|&b| char::from(b)).collect());
                // Turn the first wheel; one that comes round turns the next.
                let mut wheel = 0;
                while let Some((k, (_, digits))) = at.get_mut(wheel).zip(enumerated.get(wheel)) {
                    *k += 1;
                    if *k < digits.len() {
                        break;
                    }
                    *k = 0;
                    wheel += 1;
                }
                if wheel == enumerated.len() {
                    break;
                }
            }
        }
        out
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

/// A number whose class a route's rewrite changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassChange {
    /// A number the pattern matches, as dialled.
    pub dialled: String,
    /// Its class as dialled; `None` when, as dialled, it is no number the dial plan maps
    /// (a `00` prefix under a NANP plan, a feature code, ...).
    pub as_dialled: Option<Destination>,
    /// The number the route sends for it, and where the dial plan reads it to lead.
    pub sent: Leaving,
}

/// How a route's rewrite changes the class of the numbers its pattern matches: the worst
/// sample in each direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteClasses {
    /// Sent as a higher class than dialled (`route.rewrite_raises_class`); the worst is
    /// the one sent as the highest class, then the one dialled as the lowest.
    pub raised: Option<ClassChange>,
    /// Sent as what the dial plan reads as a lower class than dialled
    /// (`route.rewrite_lowers_class`); the worst is the one dialled as the highest class,
    /// then the one sent as the lowest.
    pub lowered: Option<ClassChange>,
}

/// Compares, for a route, the class of the numbers its pattern matches as dialled with
/// the class of what its strip/prepend rewrite sends.
///
/// Method: the pattern is sampled ([`Pattern::samples`]): every digit at the positions
/// that lead the number once stripped, representative digits elsewhere, at lengths from
/// short codes to full international numbers. Each sample is classified twice with the
/// dial plan: as dialled (its E.164 destination, or none if it does not map) and as the
/// route would send it (after the rewrite). Samples that are emergency numbers, or that
/// would not leave at all (the rewrite leaves nothing, or the result does not map), are
/// skipped: the runtime refuses those anyway. Sampling is bounded (at most 1,000 samples
/// per length), so a change that needs digits fixed deep inside a pattern's open tail
/// can be missed; classes are decided by country and area codes, which the enumerated
/// positions cover.
///
/// *Raised*: the `00.` route (strip 2, prepend `+`) under a NANP plan, the attack of
/// issue 14 while the class was decided on the dialled text. With the class decided on
/// the number that leaves the call is held to the right class, but the route does not
/// do what its pattern says, and an administrator should know.
///
/// *Lowered*: the number sent reads, under the dial plan, as a cheaper call than the one
/// dialled, typically because it is sent in a form the dial plan does not read as the
/// trunk does: `4420794600` (international digits without `+`) reads as a subscriber
/// number in the plan's area code, while a provider that takes E.164 without `+` dials
/// the United Kingdom. The call would be held to the lower class: the one direction in
/// which a wrong class costs money.
pub fn classes(plan: &DialPlan, pattern: &Pattern, rewrite: &Rewrite) -> RouteClasses {
    use std::cmp::Reverse;
    let mut out = RouteClasses::default();
    for dialled in pattern.samples(rewrite.strip) {
        if plan.dialled(&dialled, |_| false) != Dialled::Outside {
            continue;
        }
        let Some(sent) = rewrite.apply(&dialled).and_then(|n| plan.leaving(&n).ok()) else {
            continue;
        };
        let as_dialled = plan.leaving(&dialled).ok().map(|l| l.destination);
        let to = sent.destination;
        if Some(to) > as_dialled {
            let worse = out.raised.as_ref().is_none_or(|w| {
                (to, Reverse(as_dialled)) > (w.sent.destination, Reverse(w.as_dialled))
            });
            if worse {
                out.raised = Some(ClassChange {
                    dialled,
                    as_dialled,
                    sent,
                });
            }
        } else if Some(to) < as_dialled {
            let worse = out.lowered.as_ref().is_none_or(|w| {
                (as_dialled, Reverse(to)) > (w.as_dialled, Reverse(w.sent.destination))
            });
            if worse {
                out.lowered = Some(ClassChange {
                    dialled,
                    as_dialled,
                    sent,
                });
            }
        }
    }
    out
}

/// The rule behind the audit's `route.rewrite_raises_class`: whether a route's rewrite
/// sends numbers out as a higher class than its pattern matches as dialled, and the worst
/// case found ([`classes`] explains the method).
pub fn raised_class(plan: &DialPlan, pattern: &Pattern, rewrite: &Rewrite) -> Option<ClassChange> {
    classes(plan, pattern, rewrite).raised
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
    use proptest::prelude::*;

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
    fn samples_match_their_pattern_and_are_bounded() {
        for p in [
            "00.",
            "0ZX.",
            "+.",
            "911",
            "[2-4]X",
            "X.",
            "*9X.",
            "NXXNXXXXXX",
            "1NXXNXXXXXX",
            "011.",
            "9.",
            "[1-35]XXXXXXXXXXXXXXXXXXXXX.",
        ] {
            let pattern = Pattern::parse(p).expect(p);
            for strip in [0, 1, 2, 3, 30] {
                let samples = pattern.samples(strip);
                assert!(!samples.is_empty(), "{p}");
                assert!(samples.len() <= 13 * 1000, "{p}: {}", samples.len());
                for s in &samples {
                    assert!(pattern.matches(s), "{p} does not match its sample {s}");
                }
            }
        }
        let s = |p: &str, strip| Pattern::parse(p).expect(p).samples(strip);
        assert_eq!(s("911", 0), vec!["911"]);
        assert_eq!(s("[2-4]X", 0).len(), 30, "both positions enumerated");
        let nanp = s("1NXXNXXXXXX", 1);
        assert_eq!(nanp.len(), 800, "the area code enumerated");
        assert!(nanp.contains(&"18765555555".to_owned()));
        assert!(nanp.iter().all(|n| n.len() == 11 && &n[4..5] == "5"));
        // The digits after the strip lead: `00.` strip 2 covers every country code.
        let world = s("00.", 2);
        for cc in ["1", "44", "53", "252", "881"] {
            assert!(world.iter().any(|n| n[2..].starts_with(cc)), "{cc}");
        }
    }

    fn changes(plan: &DialPlan, pattern: &str, strip: u32, prepend: &str) -> RouteClasses {
        classes(
            plan,
            &Pattern::parse(pattern).expect(pattern),
            &Rewrite::parse(strip, prepend).expect("rewrite"),
        )
    }

    fn raised(plan: &DialPlan, pattern: &str, strip: u32, prepend: &str) -> Option<ClassChange> {
        changes(plan, pattern, strip, prepend).raised
    }

    fn germany() -> DialPlan {
        DialPlan {
            country_code: "49".into(),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
            area_code: "30".into(),
            emergency_numbers: vec!["112".into(), "110".into()],
            ..DialPlan::default()
        }
    }

    fn manhattan() -> DialPlan {
        DialPlan {
            area_code: "212".into(),
            ..DialPlan::default()
        }
    }

    /// The README's `world` route under the default (NANP) plan: `00` is no prefix
    /// there, so as dialled its numbers are nothing; sent, they are abroad.
    #[test]
    fn the_readme_world_route_raises_class_under_the_default_plan() {
        let r = raised(&DialPlan::default(), "00.", 2, "+").expect("raises");
        assert_eq!(r.as_dialled, None);
        assert!(r.sent.destination >= Destination::International, "{r:?}");
        assert!(r.dialled.starts_with("00"));
        assert_eq!(r.sent.number.as_str(), format!("+{}", &r.dialled[2..]));
        // The worst case is found: a high-cost destination.
        assert_eq!(r.sent.destination, Destination::HighCost, "{r:?}");
        assert!(r.sent.high_cost.is_some());
        // Where `00` is the international prefix, the same route is what it says.
        assert_eq!(raised(&germany(), "00.", 2, "+"), None);
    }

    #[test]
    fn a_local_looking_pattern_sent_to_a_high_cost_destination_is_found() {
        let r = raised(&manhattan(), "NXXXXXX", 0, "+1876").expect("raises");
        assert_eq!(r.as_dialled, Some(Destination::Local));
        assert_eq!(r.sent.destination, Destination::HighCost);
        assert!(r.sent.number.as_str().starts_with("+1876"));
        // Local sent as national: raised, but only to national.
        let r = raised(&manhattan(), "NXXXXXX", 0, "+1415").expect("raises");
        assert_eq!(
            (r.as_dialled, r.sent.destination),
            (Some(Destination::Local), Destination::National)
        );
        // Dial 9 for an outside line: as dialled, 9 + a number is no number.
        let r = raised(&manhattan(), "9.", 1, "").expect("raises");
        assert_eq!(r.as_dialled, None);
        // Ten digits sent with a bare + (no country code): abroad, to whatever country
        // code the area code spells.
        let r = raised(&manhattan(), "NXXNXXXXXX", 0, "+").expect("raises");
        assert!(
            r.as_dialled.is_none_or(|d| d <= Destination::National),
            "{r:?}"
        );
        assert!(r.sent.destination >= Destination::International);
    }

    #[test]
    fn routes_that_send_what_they_match_are_not_flagged() {
        let de = germany();
        assert_eq!(raised(&de, "0ZX.", 0, ""), None, "README national route");
        assert_eq!(
            raised(&de, "0ZX.", 1, "+49"),
            None,
            "national in international form"
        );
        assert_eq!(raised(&de, "00.", 0, ""), None);
        assert_eq!(raised(&de, "+.", 0, ""), None);
        assert_eq!(raised(&de, "112", 0, ""), None, "emergency");
        assert_eq!(
            raised(&de, "112", 0, "+4930"),
            None,
            "emergency, whatever it is sent as"
        );
        assert_eq!(
            raised(&de, "Z.", 0, "+4930"),
            None,
            "local in international form"
        );
        let us = manhattan();
        assert_eq!(raised(&us, "NXXNXXXXXX", 0, "+1"), None);
        assert_eq!(raised(&us, "1NXXNXXXXXX", 0, "+"), None);
        assert_eq!(raised(&us, "011.", 3, "+"), None);
        assert_eq!(raised(&us, "NXXXXXX", 0, "+1212"), None);
        assert_eq!(raised(&us, "911", 0, ""), None);
        // Nothing that leaves: every sample refused after the rewrite.
        assert_eq!(raised(&us, "*9X.", 0, ""), None);
        // Faithful routes lower nothing either.
        for (plan, p, strip, prepend) in [
            (&de, "0ZX.", 1, "+49"),
            (&de, "00.", 2, "+"),
            (&de, "Z.", 0, "+4930"),
            (&us, "NXXNXXXXXX", 0, "+1"),
            (&us, "011.", 3, "+"),
        ] {
            assert_eq!(
                changes(plan, p, strip, prepend),
                RouteClasses::default(),
                "{p}"
            );
        }
    }

    /// International digits without `+`: the dial plan reads them as a subscriber
    /// number in its area code, a provider taking E.164 without `+` dials them abroad.
    #[test]
    fn numbers_sent_without_plus_that_read_as_cheaper_calls_are_found() {
        let de = germany();
        let l = changes(&de, "00.", 2, "").lowered.expect("lowered");
        assert_eq!(l.as_dialled, Some(Destination::HighCost), "{l:?}");
        assert_eq!(l.sent.destination, Destination::Local, "{l:?}");
        // The same with the home country code: national calls, and the worst of them,
        // 0900 premium numbers, read as local.
        let l = changes(&de, "0ZX.", 1, "49").lowered.expect("lowered");
        assert_eq!(
            (l.as_dialled, l.sent.destination),
            (Some(Destination::HighCost), Destination::Local),
            "{l:?}"
        );
        assert!(
            l.dialled.starts_with("0900") || l.dialled.starts_with("0137"),
            "{l:?}"
        );
        // Without local dialling such numbers do not map at all: refused, not lowered.
        let no_area = DialPlan {
            area_code: String::new(),
            ..germany()
        };
        assert_eq!(changes(&no_area, "0ZX.", 1, "49").lowered, None);
        // A route that really does send a cheaper call than it matches is reported too:
        // `011.` (abroad) sent into the home area. (It raises as well: exchange 976 there
        // is pay-per-call.)
        let c = changes(&manhattan(), "011.", 3, "+1212");
        let l = c.lowered.expect("lowered");
        assert_eq!(l.sent.destination, Destination::Local);
        let r = c.raised.expect("raised");
        assert_eq!(r.sent.destination, Destination::HighCost);
        assert!(r.sent.number.as_str().starts_with("+1212976"), "{r:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any pattern an administrator can store is sampled within bounds, every sample
        /// matches it, and comparing classes never panics, whatever the rewrite.
        #[test]
        fn any_pattern_is_sampled_and_compared_safely(
            text in "_?[0-9XZNxzn+*#.]{1,12}|[0-9]{0,3}\\[[0-9-]{1,5}\\][0-9X]{0,8}\\.?",
            strip in 0u32..=24,
            prepend in "\\+?[0-9]{0,7}",
        ) {
            if let (Ok(pattern), Ok(rewrite)) = (Pattern::parse(&text), Rewrite::parse(strip, &prepend)) {
                let samples = pattern.samples(rewrite.strip);
                prop_assert!(!samples.is_empty() && samples.len() <= 13 * 1000);
                for s in &samples {
                    prop_assert!(pattern.matches(s), "{} does not match {}", text, s);
                }
                let c = classes(&DialPlan::default(), &pattern, &rewrite);
                if let Some(r) = c.raised {
                    prop_assert!(Some(r.sent.destination) > r.as_dialled);
                }
                if let Some(l) = c.lowered {
                    prop_assert!(Some(l.sent.destination) < l.as_dialled);
                }
            }
        }
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

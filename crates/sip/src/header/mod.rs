//! Typed views of the headers sipward acts on, parsed from the raw values of
//! [`crate::msg::Message`]. One file per header, each with its own tests.

pub mod addr;
pub mod auth;
pub mod cseq;
pub mod via;

/// A `token` (RFC 3261 §25.1): method names, header names, tags, transport names.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Splits a header value at commas that are outside quoted strings and `<...>`
/// (RFC 3261 §7.3: several values of one header may share a line).
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    ListItems { rest: Some(value) }
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The raw items of [`split_list`], found one at a time: a caller that wants only the
/// first (the top Via) neither scans the rest of the value nor allocates (the hot path
/// reads the top Via of every request several times).
struct ListItems<'a> {
    /// What is left to split; `None` once the last item was given.
    rest: Option<&'a str>,
}

impl<'a> Iterator for ListItems<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let value = self.rest?;
        let (mut quoted, mut angle, mut escaped) = (false, false, false);
        // Only ASCII bytes are looked at, so every index found is a char boundary.
        for (i, b) in value.bytes().enumerate() {
            if escaped {
                escaped = false;
                continue;
            }
            match b {
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b'<' if !quoted => angle = true,
                b'>' if !quoted => angle = false,
                b',' if !quoted && !angle => {
                    self.rest = value.get(i + 1..);
                    return value.get(..i);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(value)
    }
}

/// Parses `;name=value;flag` parameters. Values may be quoted; names are compared
/// case-insensitively by [`param`].
pub fn params(text: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    // Byte searches for the ASCII separators: a `char` pattern compares each candidate
    // through `memcmp`, and these run several times on every request.
    text.split([';'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match split_at_byte(p, b'=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches(['"']))),
            None => (p, None),
        })
}

/// `text` split around the first `sep` (an ASCII byte, so both sides are `str`s).
pub(crate) fn split_at_byte(text: &str, sep: u8) -> Option<(&str, &str)> {
    let i = text.bytes().position(|b| b == sep)?;
    Some((text.get(..i)?, text.get(i + 1..)?))
}

/// The value of a parameter: `None` when absent, `Some(None)` for a flag without value.
pub fn param<'a>(text: &'a str, name: &str) -> Option<Option<&'a str>> {
    params(text)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_outside_quotes_and_brackets() {
        let v = r#""Smith, Bob" <sip:b@x;a=1,2>;expires=60, <sip:c@y>, sip:d@z"#;
        assert_eq!(
            split_list(v).collect::<Vec<_>>(),
            vec![
                r#""Smith, Bob" <sip:b@x;a=1,2>;expires=60"#,
                "<sip:c@y>",
                "sip:d@z"
            ]
        );
        assert_eq!(split_list(r#""a\"," <sip:x>"#).count(), 1);
        assert_eq!(split_list(" , ,").count(), 0);
    }

    /// The allocating splitter `split_list` replaced, kept as the reference.
    fn split_list_reference(value: &str) -> Vec<&str> {
        let mut parts = Vec::new();
        let (mut quoted, mut angle, mut escaped, mut start) = (false, false, false, 0);
        for (i, c) in value.char_indices() {
            if escaped {
                escaped = false;
                continue;
            }
            match c {
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '<' if !quoted => angle = true,
                '>' if !quoted => angle = false,
                ',' if !quoted && !angle => {
                    parts.push(&value[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&value[start..]);
        parts
            .into_iter()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn the_lazy_split_agrees_with_the_reference(
            value in "[a-z ,;=<>\"\\\\é\u{85}]{0,40}"
        ) {
            proptest::prop_assert_eq!(
                split_list(&value).collect::<Vec<_>>(),
                split_list_reference(&value)
            );
        }
    }

    /// Pieces an attacker strings together: quoted strings holding commas and escaped
    /// quotes, comments, IPv6 references, empty parameter names, `;;`, trailing
    /// separators, multi-byte UTF-8 next to every separator, a lone backslash.
    fn hostile_piece() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::sample::select(vec![
            "\"a,b\"",
            "\"a\\\",b\"",
            "\\",
            "\"",
            "(c, d)",
            "[::1]:5060",
            "[::1]",
            ";;",
            ";=x",
            ";x=",
            "=",
            ",",
            ", ,",
            "<sip:a@b;x=1,2>",
            "<",
            ">",
            "é",
            "\u{85}",
            "\u{2028}",
            "€,",
            ",é",
            "\"é\\é\"",
            "\\é",
            ";é=\"é\"",
            "SIP/2.0/UDP h",
            " ",
            "\t",
            "z9hG4bK",
            "Branch=Z",
            ";RPORT",
            "",
        ])
        .prop_map(str::to_owned)
    }

    fn hostile_value() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::collection::vec(hostile_piece(), 0..24).prop_map(|v| v.concat())
    }

    /// The `params` before byte searches, kept as the reference.
    fn params_reference(text: &str) -> Vec<(&str, Option<&str>)> {
        text.split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (p, None),
            })
            .collect()
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// Attack: any value built from hostile pieces splits exactly as before (a
        /// difference would let the top Via, read lazily, differ from the full list).
        #[test]
        fn hostile_lists_split_as_before(value in hostile_value()) {
            proptest::prop_assert_eq!(
                split_list(&value).collect::<Vec<_>>(),
                split_list_reference(&value)
            );
            proptest::prop_assert_eq!(
                split_list(&value).next(),
                split_list_reference(&value).first().copied()
            );
        }

        #[test]
        fn hostile_parameters_parse_as_before(value in hostile_value()) {
            proptest::prop_assert_eq!(params(&value).collect::<Vec<_>>(), params_reference(&value));
        }

        #[test]
        fn split_at_byte_is_split_once(value in hostile_value()) {
            for sep in [b'=', b';', b',', b':', b'"'] {
                proptest::prop_assert_eq!(
                    split_at_byte(&value, sep),
                    value.split_once(char::from(sep))
                );
            }
        }
    }

    /// Attack: a list of 200 000 items of commas and quoted commas is split in linear
    /// time (a quadratic rescan would take minutes). Control: its item count.
    #[test]
    fn a_very_long_list_splits_in_linear_time() {
        let value = "\"a,\\\"b\" <sip:x,y>,".repeat(200_000);
        let start = std::time::Instant::now();
        assert_eq!(split_list(&value).count(), 200_000);
        let open = "\"".to_owned() + &",".repeat(1_000_000);
        assert_eq!(
            split_list(&open).count(),
            1,
            "an unclosed quote holds every comma"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn parameters() {
        let p = ";branch=z9hG4bK1 ; rport; received=\"1.2.3.4\";Expires=30";
        assert_eq!(param(p, "branch"), Some(Some("z9hG4bK1")));
        assert_eq!(param(p, "rport"), Some(None));
        assert_eq!(param(p, "received"), Some(Some("1.2.3.4")));
        assert_eq!(param(p, "expires"), Some(Some("30")));
        assert_eq!(param(p, "maddr"), None);
    }
}

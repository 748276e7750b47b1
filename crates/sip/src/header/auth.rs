//! `Authorization: Digest ...` (RFC 3261 §22.4, RFC 7616/8760) and the challenge sipward sends.

use std::borrow::Cow;

use crate::digest::Algorithm;

/// The parameters of a Digest `Authorization` header. Values are unquoted and
/// unescaped; `uri` is kept exactly as sent because HA2 is computed over it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestCredentials<'a> {
    pub username: Cow<'a, str>,
    pub realm: Cow<'a, str>,
    pub nonce: Cow<'a, str>,
    pub uri: Cow<'a, str>,
    pub response: Cow<'a, str>,
    /// The `algorithm=` token as sent (absent means MD5).
    pub algorithm: Option<Cow<'a, str>>,
    pub qop: Option<Cow<'a, str>>,
    /// The nonce count as a number (for replay checks)...
    pub nc: Option<u32>,
    /// ...and exactly as sent (the response hash covers this text).
    pub nc_raw: Option<Cow<'a, str>>,
    pub cnonce: Option<Cow<'a, str>>,
    pub opaque: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthParseError {
    NotDigest,
    Malformed,
    Missing(&'static str),
}

impl<'a> DigestCredentials<'a> {
    pub fn algorithm(&self) -> Option<Algorithm> {
        Algorithm::from_token(self.algorithm.as_deref())
    }

    /// Parses the header value. The scheme is matched case-insensitively (`digest`
    /// is as valid as `Digest`); duplicate parameters are refused.
    pub fn parse(value: &'a str) -> Result<Self, AuthParseError> {
        let mut out = DigestCredentials::default();
        let mut seen: u16 = 0;
        for_each_param(value, |name, val| {
            let slot = match name.to_ascii_lowercase().as_str() {
                "username" => 0,
                "realm" => 1,
                "nonce" => 2,
                "uri" => 3,
                "response" => 4,
                "algorithm" => 5,
                "qop" => 6,
                "nc" => 7,
                "cnonce" => 8,
                "opaque" => 9,
                _ => return Ok(()), // unknown parameters are ignored (RFC 7616 §3.4)
            };
            if seen & (1 << slot) != 0 {
                return Err(AuthParseError::Malformed);
            }
            seen |= 1 << slot;
            match slot {
                0 => out.username = val,
                1 => out.realm = val,
                2 => out.nonce = val,
                3 => out.uri = val,
                4 => out.response = val,
                5 => out.algorithm = Some(val),
                6 => out.qop = Some(val),
                7 => {
                    // nc is exactly 8 hex digits (a 32-bit counter).
                    if val.len() != 8 {
                        return Err(AuthParseError::Malformed);
                    }
                    out.nc =
                        Some(u32::from_str_radix(&val, 16).map_err(|_| AuthParseError::Malformed)?);
                    out.nc_raw = Some(val);
                }
                8 => out.cnonce = Some(val),
                _ => out.opaque = Some(val),
            }
            Ok(())
        })?;
        for (bit, name) in [
            (0, "username"),
            (1, "realm"),
            (2, "nonce"),
            (3, "uri"),
            (4, "response"),
        ] {
            if seen & (1 << bit) == 0 {
                return Err(AuthParseError::Missing(name));
            }
        }
        Ok(out)
    }
}

/// Walks the `name=value` parameters of a `Digest ...` header value (the scheme is
/// matched case-insensitively), values unquoted and unescaped.
fn for_each_param<'a>(
    value: &'a str,
    mut f: impl FnMut(&'a str, Cow<'a, str>) -> Result<(), AuthParseError>,
) -> Result<(), AuthParseError> {
    let value = value.trim();
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .ok_or(AuthParseError::NotDigest)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(AuthParseError::NotDigest);
    }
    let mut i = rest.trim_start();
    while !i.is_empty() {
        let eq = i.find('=').ok_or(AuthParseError::Malformed)?;
        let name = i[..eq].trim();
        let after = i[eq + 1..].trim_start();
        let (val, remaining) = if let Some(q) = after.strip_prefix('"') {
            let (v, used) = unquote(q).ok_or(AuthParseError::Malformed)?;
            (v, &q[used..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            let token = after[..end].trim();
            // An unquoted value is a token: no spaces, quotes or separators.
            if token.is_empty()
                || token.contains(|c: char| c.is_whitespace() || c == '"' || c == '=')
            {
                return Err(AuthParseError::Malformed);
            }
            (Cow::Borrowed(token), &after[end..])
        };
        let remaining = remaining.trim_start();
        i = match remaining.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if remaining.is_empty() => remaining,
            None => return Err(AuthParseError::Malformed),
        };
        f(name, val)?;
    }
    Ok(())
}

/// A `WWW-Authenticate` / `Proxy-Authenticate` Digest challenge a server sent us
/// (sipward as a client of a VoIP provider or gateway).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// None when the algorithm is one we do not speak.
    pub algorithm: Option<Algorithm>,
    /// The server offered `qop=auth`.
    pub qop_auth: bool,
    pub stale: bool,
}

/// The longest challenge value accepted from a peer.
const MAX_CHALLENGE: usize = 2048;

impl Challenge {
    pub fn parse(value: &str) -> Result<Self, AuthParseError> {
        if value.len() > MAX_CHALLENGE {
            return Err(AuthParseError::Malformed);
        }
        let mut c = Challenge {
            algorithm: Some(Algorithm::Md5),
            ..Challenge::default()
        };
        let (mut realm, mut nonce) = (false, false);
        for_each_param(value, |name, val| {
            match name.to_ascii_lowercase().as_str() {
                "realm" => {
                    realm = true;
                    c.realm = val.into_owned();
                }
                "nonce" => {
                    nonce = true;
                    c.nonce = val.into_owned();
                }
                "opaque" => c.opaque = Some(val.into_owned()),
                "algorithm" => c.algorithm = Algorithm::from_token(Some(&val)),
                "qop" => {
                    c.qop_auth = val
                        .split(',')
                        .any(|q| q.trim().eq_ignore_ascii_case("auth"))
                }
                "stale" => c.stale = val.eq_ignore_ascii_case("true"),
                _ => {}
            }
            Ok(())
        })?;
        if !realm {
            return Err(AuthParseError::Missing("realm"));
        }
        if !nonce {
            return Err(AuthParseError::Missing("nonce"));
        }
        // Whatever we echo back goes into a header: never line breaks or quotes.
        let clean = |s: &str| !s.chars().any(|c| c.is_control() || c == '"' || c == '\\');
        if !clean(&c.realm) || !clean(&c.nonce) || !c.opaque.as_deref().is_none_or(clean) {
            return Err(AuthParseError::Malformed);
        }
        Ok(c)
    }

    /// The `Authorization` / `Proxy-Authorization` value answering this challenge.
    /// `cnonce` comes from the caller's CSPRNG; `nc` is always 1 (one use per nonce).
    pub fn answer(
        &self,
        method: &str,
        uri: &str,
        username: &str,
        password: &str,
        cnonce: &str,
    ) -> Option<String> {
        let alg = self.algorithm?;
        let ha1 = crate::digest::ha1(alg, username, &self.realm, password);
        let nc = "00000001";
        let input = crate::digest::ResponseInput {
            method,
            uri,
            nonce: &self.nonce,
            qop_auth: self.qop_auth.then_some((nc, cnonce)),
        };
        let response = crate::digest::expected_response(alg, &ha1, &input);
        let mut s = format!(
            "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
            self.realm,
            self.nonce,
            alg.token()
        );
        if self.qop_auth {
            s.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        }
        if let Some(o) = &self.opaque {
            s.push_str(&format!(", opaque=\"{o}\""));
        }
        Some(s)
    }
}

/// Reads a quoted string body (after the opening quote): returns the unescaped value and
/// the number of bytes consumed including the closing quote.
fn unquote(s: &str) -> Option<(Cow<'_, str>, usize)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut owned: Option<String> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let v = match owned {
                    Some(o) => Cow::Owned(o),
                    None => Cow::Borrowed(&s[..i]),
                };
                return Some((v, i + 1));
            }
            b'\\' => {
                let next = s.get(i + 1..)?.chars().next()?;
                let o = owned.get_or_insert_with(|| s[..i].to_owned());
                o.push(next);
                i += 1 + next.len_utf8();
            }
            _ => {
                let c = s.get(i..)?.chars().next()?;
                if let Some(o) = owned.as_mut() {
                    o.push(c);
                }
                i += c.len_utf8();
            }
        }
    }
    None
}

/// A `WWW-Authenticate` value: `qop="auth"`, the given algorithm, `stale=true` when the
/// client's nonce only expired (RFC 7616 §3.3).
pub fn challenge(
    realm: &str,
    nonce: &str,
    opaque: &str,
    algorithm: Algorithm,
    stale: bool,
) -> String {
    // Pushed into one buffer of the right size: built for every challenge sent.
    let token = algorithm.token();
    let mut s = String::with_capacity(realm.len() + nonce.len() + opaque.len() + token.len() + 80);
    for part in [
        "Digest realm=\"",
        realm,
        "\", nonce=\"",
        nonce,
        "\", opaque=\"",
        opaque,
        "\", algorithm=",
        token,
        ", qop=\"auth\"",
    ] {
        s.push_str(part);
    }
    if stale {
        s.push_str(", stale=true");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formatter-built `challenge`, kept as the reference.
    fn challenge_reference(
        realm: &str,
        nonce: &str,
        opaque: &str,
        algorithm: Algorithm,
        stale: bool,
    ) -> String {
        let mut s = format!(
            "Digest realm=\"{realm}\", nonce=\"{nonce}\", opaque=\"{opaque}\", algorithm={}, qop=\"auth\"",
            algorithm.token()
        );
        if stale {
            s.push_str(", stale=true");
        }
        s
    }

    proptest::proptest! {
        /// Attack: the challenge is byte for byte what the formatter built, whatever its
        /// parts (quotes, commas, `{}` and multi-byte text included).
        #[test]
        fn the_challenge_is_what_it_was(
            realm in "[a-z.\"{}\\\\,é ]{0,20}",
            nonce in "[A-Za-z0-9+/={}]{0,40}",
            opaque in "[a-f0-9{}]{0,20}",
            sha in proptest::prelude::any::<bool>(),
            stale in proptest::prelude::any::<bool>(),
        ) {
            let alg = if sha { Algorithm::Sha256 } else { Algorithm::Md5 };
            proptest::prop_assert_eq!(
                challenge(&realm, &nonce, &opaque, alg, stale),
                challenge_reference(&realm, &nonce, &opaque, alg, stale)
            );
        }
    }

    /// A typical challenge, byte for byte, parsed back by a client's reading.
    #[test]
    fn a_challenge_byte_for_byte() {
        assert_eq!(
            challenge(
                "pbx.example.com",
                "bm9uY2U=",
                "0a1b",
                Algorithm::Sha256,
                true
            ),
            "Digest realm=\"pbx.example.com\", nonce=\"bm9uY2U=\", opaque=\"0a1b\", algorithm=SHA-256, qop=\"auth\", stale=true"
        );
    }

    #[test]
    fn a_typical_header() {
        let h = r#"Digest username="k3x9m2p8q4wz", realm="pbx.example.com", nonce="abc", uri="sip:pbx.example.com", response="0123abcd", algorithm=SHA-256, qop=auth, nc=0000012f, cnonce="x y", opaque="o""#;
        let c = DigestCredentials::parse(h).expect("parses");
        assert_eq!(c.username, "k3x9m2p8q4wz");
        assert_eq!(c.uri, "sip:pbx.example.com");
        assert_eq!(c.algorithm(), Some(Algorithm::Sha256));
        assert_eq!(c.nc, Some(0x12f), "nc above 255 is fine");
        assert_eq!(c.nc_raw.as_deref(), Some("0000012f"));
        assert_eq!(c.cnonce.as_deref(), Some("x y"));
        assert_eq!(c.qop.as_deref(), Some("auth"));
    }

    #[test]
    fn lenient_forms() {
        let c = DigestCredentials::parse(
            "digest username = \"a\\\"b\" ,realm=r,nonce=n,uri=\"sip:x\",response=r2",
        )
        .expect("parses");
        assert_eq!(c.username, "a\"b");
        assert_eq!(c.realm, "r");
        assert_eq!(
            c.algorithm(),
            Some(Algorithm::Md5),
            "absent algorithm is MD5"
        );
        let c = DigestCredentials::parse("Digest username=\"u\",realm=\"r\",nonce=\"n\",uri=\"sip:x\",response=\"r\",algorithm=SHA-512-256").expect("parses");
        assert_eq!(
            c.algorithm(),
            None,
            "known to the parser, not offered by us"
        );
    }

    #[test]
    fn bad_headers() {
        let cases = [
            ("Basic dXNlcjpwYXNz", AuthParseError::NotDigest),
            ("Digest", AuthParseError::NotDigest),
            ("Digest username=\"u\"", AuthParseError::Missing("realm")),
            ("Digest username=\"u, realm=r", AuthParseError::Malformed),
            ("Digest username=u username=v", AuthParseError::Malformed),
            (
                "Digest username=u,username=v,realm=r,nonce=n,uri=x,response=y",
                AuthParseError::Malformed,
            ),
            (
                "Digest username=u,realm=r,nonce=n,uri=x,response=y,nc=1",
                AuthParseError::Malformed,
            ),
            (
                "Digest username=u,realm=r,nonce=n,uri=x,response=y,nc=zzzzzzzz",
                AuthParseError::Malformed,
            ),
            ("Digest novalue", AuthParseError::Malformed),
        ];
        for (h, e) in cases {
            assert_eq!(DigestCredentials::parse(h), Err(e), "{h}");
        }
    }

    #[test]
    fn challenges() {
        let c = challenge("r", "n", "o", Algorithm::Sha256, true);
        assert_eq!(
            c,
            "Digest realm=\"r\", nonce=\"n\", opaque=\"o\", algorithm=SHA-256, qop=\"auth\", stale=true"
        );
    }

    #[test]
    fn answering_a_challenge_verifies_on_our_own_server_side() {
        let c = Challenge::parse(
            "Digest realm=\"sip.example.net\", nonce=\"n1\", opaque=\"o\", qop=\"auth,auth-int\", algorithm=MD5",
        )
        .expect("parses");
        assert!(c.qop_auth);
        let header = c
            .answer("INVITE", "sip:0301234@sip.example.net", "acct", "pw", "cn")
            .expect("MD5 is spoken");
        let creds = DigestCredentials::parse(&header).expect("our own header parses");
        let ha1 = crate::digest::ha1(Algorithm::Md5, "acct", "sip.example.net", "pw");
        let input = crate::digest::ResponseInput {
            method: "INVITE",
            uri: &creds.uri,
            nonce: &creds.nonce,
            qop_auth: Some(("00000001", "cn")),
        };
        assert!(crate::digest::verify_response(
            Algorithm::Md5,
            &ha1,
            &input,
            &creds.response
        ));
        assert_eq!(creds.opaque.as_deref(), Some("o"));
        // Without qop (RFC 2069 style) and with SHA-256.
        let c = Challenge::parse("Digest realm=r, nonce=n, algorithm=SHA-256").expect("parses");
        assert!(!c.qop_auth);
        let header = c
            .answer("REGISTER", "sip:r", "u", "p", "x")
            .expect("spoken");
        assert!(!header.contains("qop"));
        assert!(header.contains("algorithm=SHA-256"));
    }

    #[test]
    fn hostile_challenges_are_refused() {
        for bad in [
            "Basic realm=x",
            "Digest nonce=n",
            "Digest realm=r",
            "Digest realm=\"a\r\nX: y\", nonce=n",
            "Digest realm=\"a\\\"b\", nonce=n",
        ] {
            assert!(Challenge::parse(bad).is_err(), "{bad}");
        }
        let long = format!("Digest realm=r, nonce=\"{}\"", "n".repeat(3000));
        assert!(Challenge::parse(&long).is_err());
        let c = Challenge::parse("Digest realm=r, nonce=n, algorithm=SHA-512-256").expect("parses");
        assert_eq!(
            c.answer("INVITE", "sip:x", "u", "p", "c"),
            None,
            "unknown algorithm"
        );
    }
}

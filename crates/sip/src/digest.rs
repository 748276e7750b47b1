//! HTTP/SIP Digest computations (RFC 2617, RFC 7616, RFC 8760), sans IO.
//!
//! The store keeps `HA1 = H(username ":" realm ":" password)` per algorithm; the registrar
//! checks `response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)` with
//! `HA2 = H(method ":" uri)` over the raw `uri` parameter, compared in constant time.

use md5::Md5;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A digest algorithm sipward offers. RFC 8760 names them `MD5` and `SHA-256`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm=` token, ignoring case; absent means MD5 (RFC 2617).
    pub fn from_token(token: Option<&str>) -> Option<Self> {
        match token {
            None => Some(Algorithm::Md5),
            Some(t) if t.eq_ignore_ascii_case("MD5") => Some(Algorithm::Md5),
            Some(t) if t.eq_ignore_ascii_case("SHA-256") => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    /// Lower-case hex of the hash of the parts joined by `:`.
    pub fn hash_joined(self, parts: &[&[u8]]) -> String {
        fn run<D: sha2::Digest>(parts: &[&[u8]]) -> String {
            let mut h = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    h.update(b":");
                }
                h.update(p);
            }
            hex::encode(h.finalize())
        }
        match self {
            Algorithm::Md5 => run::<Md5>(parts),
            Algorithm::Sha256 => run::<Sha256>(parts),
        }
    }
}

/// `H(username:realm:password)` in lower-case hex.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hash_joined(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The values a client put in its `Authorization` header that the response covers.
#[derive(Clone, Copy, Debug)]
pub struct ResponseInput<'a> {
    pub method: &'a str,
    /// The `uri=` parameter exactly as the client sent it.
    pub uri: &'a str,
    pub nonce: &'a str,
    /// `qop=auth` with `nc` and `cnonce`; `None` for RFC 2069 style responses.
    pub qop_auth: Option<(&'a str, &'a str)>,
}

/// The expected `response=` value for a stored HA1.
pub fn expected_response(alg: Algorithm, ha1_hex: &str, input: &ResponseInput<'_>) -> String {
    let ha2 = alg.hash_joined(&[input.method.as_bytes(), input.uri.as_bytes()]);
    match input.qop_auth {
        Some((nc, cnonce)) => alg.hash_joined(&[
            ha1_hex.as_bytes(),
            input.nonce.as_bytes(),
            nc.as_bytes(),
            cnonce.as_bytes(),
            b"auth",
            ha2.as_bytes(),
        ]),
        None => alg.hash_joined(&[ha1_hex.as_bytes(), input.nonce.as_bytes(), ha2.as_bytes()]),
    }
}

/// Whether `response` matches, compared in constant time (hex case ignored).
pub fn verify_response(
    alg: Algorithm,
    ha1_hex: &str,
    input: &ResponseInput<'_>,
    response: &str,
) -> bool {
    let expected = expected_response(alg, ha1_hex, input);
    let given = response.to_ascii_lowercase();
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7616 section 3.9.1: the worked example for both algorithms.
    #[test]
    fn rfc7616_example() {
        let input = ResponseInput {
            method: "GET",
            uri: "/dir/index.html",
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            qop_auth: Some(("00000001", "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")),
        };
        let cases = [
            (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ];
        for (alg, want) in cases {
            let h = ha1(alg, "Mufasa", "http-auth@example.org", "Circle of Life");
            assert_eq!(expected_response(alg, &h, &input), want, "{alg:?}");
            assert!(verify_response(alg, &h, &input, &want.to_ascii_uppercase()));
            assert!(!verify_response(alg, &h, &input, &want[1..]));
            let wrong = ha1(alg, "Mufasa", "http-auth@example.org", "Circle of life");
            assert!(!verify_response(alg, &wrong, &input, want));
        }
    }

    /// RFC 2617 section 3.5 example (MD5, qop=auth).
    #[test]
    fn rfc2617_example() {
        let h = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let input = ResponseInput {
            method: "GET",
            uri: "/dir/index.html",
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop_auth: Some(("00000001", "0a4f113b")),
        };
        assert_eq!(
            expected_response(Algorithm::Md5, &h, &input),
            "6629fae49393a05397450978507c4ef1"
        );
    }

    #[test]
    fn algorithm_tokens() {
        assert_eq!(Algorithm::from_token(None), Some(Algorithm::Md5));
        assert_eq!(
            Algorithm::from_token(Some("sha-256")),
            Some(Algorithm::Sha256)
        );
        assert_eq!(Algorithm::from_token(Some("SHA-512-256")), None);
        assert_eq!(Algorithm::Sha256.token(), "SHA-256");
    }
}

//! SIP over TLS (RFC 3261 §26, RFC 5630): the server certificate sipward presents, and
//! the rustls configuration built from it. TLS 1.2 and 1.3 only, with ring's suites
//! (ECDHE key exchange and AEAD ciphers only: rustls implements nothing weaker).
//!
//! The configuration in force sits behind one atomic pointer that the TLS accept loop
//! reads once per connection: a reload swaps it whole, connections already up keep the
//! one they were made with, and a certificate that does not pass [`Certificate::check`]
//! never replaces the one in force. No file is read here; the binary hands over PEM text.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why a certificate and key were not put in force.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate file holds no PEM certificate")]
    NoCertificate,
    #[error("the certificate is not valid PEM: {0}")]
    CertificatePem(rustls::pki_types::pem::Error),
    #[error("the key file holds no usable PEM private key: {0}")]
    KeyPem(rustls::pki_types::pem::Error),
    #[error("the certificate cannot be read as X.509")]
    Unreadable,
    #[error("the certificate expired at {not_after} (Unix time)")]
    Expired { not_after: i64 },
    #[error("the certificate is not valid before {not_before} (Unix time)")]
    NotYetValid { not_before: i64 },
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("the key or certificate is refused by rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What an operator (and the expiry metric) needs to know about a server certificate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CertificateFacts {
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The serial number, hex with colons (as openssl prints it).
    pub serial: String,
    /// The subject's common name, if any.
    pub subject: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub names: Vec<String>,
    /// SHA-256 of the DER certificate, hex.
    pub sha256: String,
}

impl CertificateFacts {
    /// Reads the facts of one DER certificate.
    pub fn of(der: &[u8]) -> Result<Self, TlsError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| TlsError::Unreadable)?;
        let validity = cert.validity();
        let subject = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            names.push(std::net::IpAddr::from(a).to_string());
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            names.push(std::net::IpAddr::from(a).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            serial: cert.raw_serial_as_string(),
            subject,
            names,
            sha256: hex::encode(Sha256::digest(der)),
        })
    }
}

/// A server certificate chain and its private key, parsed but not yet in force.
#[derive(Debug)]
pub struct Certificate {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    facts: CertificateFacts,
}

impl Certificate {
    /// Parses PEM text: the certificate file (leaf first, then any intermediates) and
    /// the key file (PKCS#8, PKCS#1 or SEC1). Nothing is checked beyond the syntax here.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(TlsError::CertificatePem)?;
        let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
        let facts = CertificateFacts::of(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(TlsError::KeyPem)?;
        Ok(Self { chain, key, facts })
    }

    pub fn facts(&self) -> &CertificateFacts {
        &self.facts
    }

    /// Whether this certificate may be put in force at `now` (Unix seconds): valid now,
    /// and its key the one the certificate names. An expired or mismatched certificate
    /// would fail every handshake; refusing it keeps the one in force.
    pub fn check(&self, now: i64) -> Result<(), TlsError> {
        if now >= self.facts.not_after {
            return Err(TlsError::Expired {
                not_after: self.facts.not_after,
            });
        }
        if now < self.facts.not_before {
            return Err(TlsError::NotYetValid {
                not_before: self.facts.not_before,
            });
        }
        Ok(())
    }

    /// The rustls configuration for this certificate: TLS 1.2 and 1.3, ring's suites,
    /// no client certificates (phones log in with Digest over the tunnel).
    pub fn server_config(&self, now: i64) -> Result<ServerConfig, TlsError> {
        self.check(now)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = provider
            .key_provider
            .load_private_key(self.key.clone_key())?;
        let certified = rustls::sign::CertifiedKey::new(self.chain.clone(), key);
        certified.keys_match().map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
            other => TlsError::Rustls(other),
        })?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(config)
    }
}

/// The certificate in force and its configuration, swapped whole on reload.
#[derive(Debug)]
pub struct ServerIdentity {
    config: ArcSwap<ServerConfig>,
    facts: ArcSwap<CertificateFacts>,
}

impl ServerIdentity {
    /// Puts `cert` in force, or says why it cannot be.
    pub fn new(cert: &Certificate, now: i64) -> Result<Self, TlsError> {
        let config = cert.server_config(now)?;
        Ok(Self {
            config: ArcSwap::from_pointee(config),
            facts: ArcSwap::from_pointee(cert.facts.clone()),
        })
    }

    /// Replaces the certificate in force with `cert` when it passes every check; the old
    /// one stays otherwise. Connections already up keep the configuration they began with.
    pub fn replace(&self, cert: &Certificate, now: i64) -> Result<(), TlsError> {
        let config = cert.server_config(now)?;
        self.config.store(Arc::new(config));
        self.facts.store(Arc::new(cert.facts.clone()));
        Ok(())
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// The certificate in force.
    pub fn facts(&self) -> Arc<CertificateFacts> {
        self.facts.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name` valid from `from` to `to` (Unix seconds),
    /// as (cert PEM, key PEM).
    fn make(name: &str, from: i64, to: i64) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        p.not_before =
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(from as u64);
        p.not_after = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(to as u64);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_valid_certificate_goes_in_force_and_its_facts_are_read() {
        let (c, k) = make("pbx.example.com", NOW - 10, NOW + 86_400);
        let cert = Certificate::from_pem(c.as_bytes(), k.as_bytes()).expect("parse");
        assert_eq!(cert.facts().not_after, NOW + 86_400);
        assert_eq!(cert.facts().names, vec!["pbx.example.com".to_owned()]);
        let id = ServerIdentity::new(&cert, NOW).expect("in force");
        assert_eq!(id.facts().not_after, NOW + 86_400);
    }

    #[test]
    fn expired_not_yet_valid_and_mismatched_certificates_are_refused_and_the_old_one_kept() {
        let (c, k) = make("pbx.example.com", NOW - 10, NOW + 86_400);
        let good = Certificate::from_pem(c.as_bytes(), k.as_bytes()).expect("parse");
        let id = ServerIdentity::new(&good, NOW).expect("in force");
        let (c2, k2) = make("pbx.example.com", NOW - 200, NOW - 100);
        let expired = Certificate::from_pem(c2.as_bytes(), k2.as_bytes()).expect("parse");
        assert!(matches!(
            id.replace(&expired, NOW),
            Err(TlsError::Expired { .. })
        ));
        let (c3, k3) = make("pbx.example.com", NOW + 100, NOW + 200);
        let early = Certificate::from_pem(c3.as_bytes(), k3.as_bytes()).expect("parse");
        assert!(matches!(
            id.replace(&early, NOW),
            Err(TlsError::NotYetValid { .. })
        ));
        let mixed = Certificate::from_pem(c.as_bytes(), k2.as_bytes()).expect("parse");
        assert!(matches!(
            id.replace(&mixed, NOW),
            Err(TlsError::KeyMismatch)
        ));
        assert_eq!(id.facts().sha256, good.facts().sha256);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        for (c, k) in [
            ("", ""),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "",
            ),
            ("not pem", "not pem"),
        ] {
            assert!(Certificate::from_pem(c.as_bytes(), k.as_bytes()).is_err());
        }
        let (c, _) = make("a", NOW - 1, NOW + 1);
        assert!(matches!(
            Certificate::from_pem(c.as_bytes(), b"junk"),
            Err(TlsError::KeyPem(_))
        ));
    }
}

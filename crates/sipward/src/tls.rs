//! The SIP TLS certificate: where it comes from (the operator's PEM files, or a private
//! CA and a server certificate this binary makes in DATA/tls at the first start), reading
//! it for the server, and reloading it while the server runs (SIGHUP, `sipward tls
//! reload`, or the files changing). A reload that fails keeps the certificate in force.
//!
//! `sipward tls reload` reaches the running server through the database, like every
//! other CLI change: it checks the files itself, then moves the `tls_reload` counter in
//! the meta table; each `serve` sharing that database sees it within a second, reloads,
//! and writes its answer (`tls_reloaded`), which the command waits for and prints.

use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use pbx::metrics::Metrics;
use pbx::tls::{Certificate, CertificateFacts, ServerIdentity};
use rustls_pki_types::pem::PemObject as _;

use crate::config::TlsConfig;
use crate::error::OperatorError;

/// The generated server certificate is valid this long (what browsers accept; phones
/// mostly do not care, but a year keeps a lost key's use short) ...
const SERVER_DAYS: i64 = 397;
/// ... and is made anew at start when fewer days than this are left.
const RENEW_BEFORE_DAYS: i64 = 30;
/// The private CA is valid this long: phones are provisioned with it once.
const CA_DAYS: i64 = 3650;
/// How often the server looks at the files and the reload counter.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// The meta keys `sipward tls reload` and `serve` talk through.
const META_REQUEST: &str = "tls_reload";
const META_ANSWER: &str = "tls_reloaded";

/// Where the certificate in use lives.
#[derive(Clone, Debug)]
pub struct Source {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The private CA's certificate, for a generated server certificate (what phones
    /// are given to verify sipward).
    pub ca: Option<PathBuf>,
}

impl Source {
    /// The operator's files when configured, else the generated ones in DATA/tls.
    pub fn of(config: &TlsConfig, data: &Path) -> Self {
        match &config.operator {
            Some((cert, key)) => Self {
                cert: cert.clone(),
                key: key.clone(),
                ca: None,
            },
            None => {
                let dir = data.join("tls");
                Self {
                    cert: dir.join("server.pem"),
                    key: dir.join("server.key"),
                    ca: Some(dir.join("ca.pem")),
                }
            }
        }
    }

    /// Reads and parses the certificate and key (nothing is put in force).
    pub fn read(&self) -> anyhow::Result<Certificate> {
        let cert = std::fs::read(&self.cert)
            .with_context(|| format!("cannot read the certificate {}", self.cert.display()))?;
        let key = std::fs::read(&self.key)
            .with_context(|| format!("cannot read the key {}", self.key.display()))?;
        Certificate::from_pem(&cert, &key).map_err(|e| {
            OperatorError(format!(
                "the certificate {} is refused: {e}",
                self.cert.display()
            ))
            .into()
        })
    }

    /// What the files' metadata says now, so a change is noticed without reading them.
    fn stamp(&self) -> Option<[(SystemTime, u64); 2]> {
        let one = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        Some([one(&self.cert)?, one(&self.key)?])
    }
}

/// The names the generated certificate is made for: the domain (or a realm that looks
/// like a host name), the configured extra names, and the listening address when it is
/// a specific one. Never empty ("localhost" at least).
pub fn names(config: &TlsConfig, settings: &accounts::Settings, listen: SocketAddr) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |n: String| {
        if !out.contains(&n) {
            out.push(n);
        }
    };
    if let Some(d) = &settings.domain {
        push(d.clone());
    } else if policy::fields::Host::parse(&settings.realm).is_ok() && settings.realm.contains('.') {
        push(settings.realm.clone());
    }
    for n in &config.names {
        push(n.clone());
    }
    if !listen.ip().is_unspecified() {
        push(listen.ip().to_string());
    }
    if out.is_empty() {
        out.push("localhost".into());
    }
    out
}

/// The private CA's certificate (PEM) phones must trust, when sipward's certificate is
/// the generated one: read from DATA/tls, made first when `create` and missing (the
/// data dir must exist then). None with TLS off or an operator's certificate.
pub fn private_ca(config: &TlsConfig, data: &Path, create: bool) -> anyhow::Result<Option<String>> {
    if !config.enabled {
        return Ok(None);
    }
    let source = Source::of(config, data);
    let Some(ca) = &source.ca else {
        return Ok(None);
    };
    if create && data.is_dir() {
        ensure_ca(ca, &[])?;
    }
    Ok(std::fs::read_to_string(ca).ok())
}

/// Makes the private CA in DATA/tls unless it exists (the key 0600, the directory 0700).
/// Returns whether it was made. A `ca.pem` without its `ca.key` is refused (an operator
/// error), never replaced.
fn ensure_ca(ca_path: &Path, names: &[String]) -> anyhow::Result<bool> {
    let dir = ca_path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("the TLS directory has no parent"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let ca_key_path = dir.join("ca.key");
    if ca_path.exists() && ca_key_path.exists() {
        return Ok(false);
    }
    // The CA phones were given stays theirs: a new one written over it would make every
    // TLS phone stop verifying sipward, without a word. Only the operator may choose
    // that, by removing ca.pem.
    if ca_path.exists() {
        return Err(OperatorError(format!(
            "the private CA's key {} is missing while its certificate {} is there: put \
             the key back, or remove {} to make a new CA, which every TLS phone must \
             then be provisioned with again",
            ca_key_path.display(),
            ca_path.display(),
            ca_path.display()
        ))
        .into());
    }
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name = rcgen::DistinguishedName::new();
    let mut cn = "sipward private CA".to_owned();
    if let Some(n) = names.first() {
        cn = format!("{cn} {n}");
    }
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "sipward");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    validity(&mut p, now, CA_DAYS)?;
    let cert = p.self_signed(&key)?;
    write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
    write_public(ca_path, cert.pem().as_bytes())?;
    Ok(true)
}

/// Makes what is missing in DATA/tls: the private CA (once), and a server certificate
/// signed by it when there is none, when it is not for `names`, or when it expires
/// within [`RENEW_BEFORE_DAYS`]. Keys are written 0600 in a 0700 directory.
pub fn ensure_generated(source: &Source, names: &[String], now: i64) -> anyhow::Result<()> {
    let Some(ca_path) = &source.ca else {
        return Ok(());
    };
    if ensure_ca(ca_path, names)? {
        // A new CA makes the old server certificate useless.
        let _ = std::fs::remove_file(&source.cert);
    }
    let ca_key_path = ca_path.with_file_name("ca.key");
    let current = source.read().ok();
    let fits = current.as_ref().is_some_and(|c| {
        let f = c.facts();
        f.not_after - now > RENEW_BEFORE_DAYS * 86_400
            && f.not_before <= now
            && names.iter().all(|n| f.names.contains(n))
    });
    if fits {
        return Ok(());
    }
    let ca_pem = std::fs::read_to_string(ca_path)?;
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path)?)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(names.to_vec())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, now, SERVER_DAYS)?;
    let cert = p.signed_by(&key, &issuer)?;
    // The key first: a reload between the two writes must not pair a new certificate
    // with the old key (it would be refused, and the old pair kept, anyway).
    write_private(&source.key, key.serialize_pem().as_bytes())?;
    write_public(&source.cert, format!("{}{ca_pem}", cert.pem()).as_bytes())?;
    Ok(())
}

/// Valid from an hour ago (clocks of phones drift) for `days`.
fn validity(p: &mut rcgen::CertificateParams, now: i64, days: i64) -> anyhow::Result<()> {
    let at = |t: i64| -> anyhow::Result<_> {
        let secs = u64::try_from(t).map_err(|_| anyhow::anyhow!("the clock is before 1970"))?;
        Ok(rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs))
    };
    p.not_before = at(now - 3600)?;
    p.not_after = at(now + days * 86_400)?;
    // A random serial: a reload must show a new one.
    let mut serial = [0u8; 16];
    rand_core::Rng::fill_bytes(&mut rand_core::UnwrapErr(rand::rngs::SysRng), &mut serial);
    serial[0] &= 0x7f;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    Ok(())
}

/// Writes a file only its owner reads, atomically (a temporary file renamed over it).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_mode(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_mode(path, bytes, 0o644)
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The one reload: reads the files and puts them in force when they pass every check
/// (the SIGHUP path, the file watch and `sipward tls reload` all come here). Logs one
/// event line either way.
pub fn reload(
    source: &Source,
    identity: &ServerIdentity,
    metrics: &Metrics,
    now: i64,
) -> anyhow::Result<CertificateFacts> {
    let started = std::time::Instant::now();
    let outcome = source.read().and_then(|cert| {
        identity.replace(&cert, now).map_err(|e| {
            anyhow::Error::from(OperatorError(format!(
                "the certificate {} is refused: {e}",
                source.cert.display()
            )))
        })?;
        Ok(cert.facts().clone())
    });
    let line = match &outcome {
        Ok(f) => serde_json::json!({
            "event": "tls_reloaded",
            "serial": f.serial,
            "not_after": f.not_after,
            // Reading, checking and swapping in the new certificate (benchmarks read it).
            "micros": u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }),
        Err(e) => serde_json::json!({
            "event": "tls_reload_refused",
            "error": format!("{e:#}"),
            "kept_serial": identity.facts().serial,
        }),
    };
    eprintln!("{line}");
    record_expiry(identity, metrics, now);
    outcome
}

/// Keeps `sipward_tls_cert_expiry_seconds` current.
pub fn record_expiry(identity: &ServerIdentity, metrics: &Metrics, now: i64) {
    metrics
        .tls_cert_expiry
        .store(identity.facts().not_after - now, Ordering::Relaxed);
    metrics.tls_enabled.store(true, Ordering::Relaxed);
}

/// Puts the certificate in force at start: the generated one made or renewed first.
pub fn open(source: &Source, names: &[String], now: i64) -> anyhow::Result<Arc<ServerIdentity>> {
    ensure_generated(source, names, now)?;
    let cert = source.read()?;
    let identity = ServerIdentity::new(&cert, now).map_err(|e| {
        OperatorError(format!(
            "the certificate {} is refused: {e}",
            source.cert.display()
        ))
    })?;
    Ok(Arc::new(identity))
}

/// Watches for reasons to reload until `stop`: SIGHUP (`hup`), the files changing, and
/// `sipward tls reload` (the meta counter), whose answer is written back.
pub async fn watch(
    reg: accounts::Registry,
    source: Source,
    identity: Arc<ServerIdentity>,
    metrics: Arc<Metrics>,
    mut hup: tokio::sync::mpsc::Receiver<()>,
) {
    let clock = crate::clock::clock();
    let mut stamp = source.stamp();
    let mut seen = match reg.store().conn().await {
        Ok(mut c) => store::meta::meta_counter(&mut c, META_REQUEST)
            .await
            .unwrap_or(0),
        Err(_) => 0,
    };
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        let by_signal = tokio::select! {
            _ = tick.tick() => false,
            r = hup.recv() => {
                if r.is_none() {
                    return;
                }
                true
            }
        };
        let now = clock.now();
        let mut asked = None;
        if let Ok(mut c) = reg.store().conn().await
            && let Ok(n) = store::meta::meta_counter(&mut c, META_REQUEST).await
            && n != seen
        {
            seen = n;
            asked = Some(n);
        }
        let changed = source.stamp();
        let files_moved = changed.is_some() && changed != stamp;
        if by_signal || asked.is_some() || files_moved {
            stamp = changed;
            let outcome = reload(&source, &identity, &metrics, now);
            if let Some(n) = asked
                && let Ok(mut c) = reg.store().conn().await
            {
                let answer = match &outcome {
                    Ok(f) => {
                        serde_json::json!({"request": n, "ok": true, "serial": f.serial, "not_after": f.not_after})
                    }
                    Err(e) => {
                        serde_json::json!({"request": n, "ok": false, "error": format!("{e:#}"), "kept_serial": identity.facts().serial})
                    }
                };
                let _ = store::meta::set_meta(&mut c, META_ANSWER, &answer.to_string()).await;
            }
        } else {
            record_expiry(&identity, &metrics, now);
        }
    }
}

/// `sipward tls reload`: checks the files here (a bad certificate is refused with the
/// reason, exit 1), then asks the running server and waits for its answer.
pub async fn request_reload(
    reg: &accounts::Registry,
    source: &Source,
    now: i64,
    serving: bool,
) -> anyhow::Result<serde_json::Value> {
    let cert = source.read()?;
    cert.check(now).map_err(|e| {
        OperatorError(format!(
            "the certificate {} is refused: {e}",
            source.cert.display()
        ))
    })?;
    // The key must match too: build the configuration the server would.
    cert.server_config(now).map_err(|e| {
        OperatorError(format!(
            "the certificate {} is refused: {e}",
            source.cert.display()
        ))
    })?;
    if !serving {
        return Ok(serde_json::json!({
            "ok": true,
            "serial": cert.facts().serial,
            "not_after": cert.facts().not_after,
            "server": "not running: the certificate is used at its next start",
        }));
    }
    let mut c = reg.store().conn().await?;
    let n = store::meta::meta_counter(&mut c, META_REQUEST).await? + 1;
    store::meta::set_meta(&mut c, META_REQUEST, &n.to_string()).await?;
    drop(c);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = reg.store().conn().await?;
        if let Some(text) = store::meta::get_meta(&mut c, META_ANSWER).await?
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["request"].as_i64() == Some(n)
        {
            return Ok(v);
        }
    }
    Err(
        OperatorError("the running server did not answer the reload within 10 seconds".into())
            .into(),
    )
}

/// What `sipward tls show` and the audit read: the files' facts, and the CA's
/// fingerprint for a generated certificate.
pub fn show(source: &Source) -> anyhow::Result<serde_json::Value> {
    let cert = source.read()?;
    let ca = match &source.ca {
        Some(p) => {
            let pem = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem)
                .map_err(|e| anyhow::anyhow!("the CA {} is not PEM: {e}", p.display()))?;
            let f = CertificateFacts::of(&der)?;
            Some(serde_json::json!({
                "path": p,
                "subject": f.subject,
                "sha256": f.sha256,
                "not_after": f.not_after,
            }))
        }
        None => None,
    };
    Ok(serde_json::json!({
        "cert": source.cert,
        "key": source.key,
        "generated": source.ca.is_some(),
        "certificate": cert.facts(),
        "ca": ca,
    }))
}

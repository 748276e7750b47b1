//! Phone provisioning files: one set of templates per vendor (minijinja; an operator can
//! override any of them from DATA/templates), rendered from an extension's account and
//! written atomically into DATA/provisioning, where `sipward serve` serves them over HTTP
//! behind per-phone Digest credentials.
//!
//! Config files are not escaped the way HTML is: a CR, LF or any other control
//! character in a value would start a new config line on the phone, so such values are
//! refused before rendering (XML templates are also auto-escaped).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use minijinja::Environment;
use serde::Serialize;

/// Phone vendors sipward writes provisioning files for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Yealink,
    Poly,
    Snom,
    Grandstream,
    Cisco,
    Fanvil,
}

/// Built-in templates: (name, text). The name's suffix decides auto-escaping.
const BUILTIN: &[(&str, &str)] = &[
    ("yealink.cfg", include_str!("../templates/yealink.cfg")),
    ("poly.xml", include_str!("../templates/poly.xml")),
    (
        "poly-phone.xml",
        include_str!("../templates/poly-phone.xml"),
    ),
    ("snom.xml", include_str!("../templates/snom.xml")),
    (
        "grandstream.xml",
        include_str!("../templates/grandstream.xml"),
    ),
    ("cisco.xml", include_str!("../templates/cisco.xml")),
    ("fanvil.xml", include_str!("../templates/fanvil.xml")),
    ("welcome.txt", include_str!("../templates/welcome.txt")),
    ("welcome.html", include_str!("../templates/welcome.html")),
];

impl Vendor {
    pub const ALL: [Vendor; 6] = [
        Vendor::Yealink,
        Vendor::Poly,
        Vendor::Snom,
        Vendor::Grandstream,
        Vendor::Cisco,
        Vendor::Fanvil,
    ];

    /// The vendor a phone model names (`Yealink T46U`, `Polycom VVX 450`, `snom D785`).
    pub fn from_model(model: &str) -> Option<Vendor> {
        let m = model.to_ascii_lowercase();
        let has = |w: &str| m.split([' ', '-', '_', '/']).any(|t| t == w);
        if has("yealink") {
            Some(Vendor::Yealink)
        } else if has("poly") || has("polycom") {
            Some(Vendor::Poly)
        } else if has("snom") {
            Some(Vendor::Snom)
        } else if has("grandstream") {
            Some(Vendor::Grandstream)
        } else if has("cisco") {
            Some(Vendor::Cisco)
        } else if has("fanvil") {
            Some(Vendor::Fanvil)
        } else {
            None
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Vendor::Yealink => "yealink",
            Vendor::Poly => "poly",
            Vendor::Snom => "snom",
            Vendor::Grandstream => "grandstream",
            Vendor::Cisco => "cisco",
            Vendor::Fanvil => "fanvil",
        }
    }

    /// The files a phone of this vendor fetches, as (file name, template name); `mac` is
    /// 12 lower-case hex digits. The first is the one the phone is pointed at.
    pub fn files(self, mac: &str) -> Vec<(String, &'static str)> {
        match self {
            Vendor::Yealink => vec![(format!("{mac}.cfg"), "yealink.cfg")],
            Vendor::Poly => vec![
                (format!("{mac}.cfg"), "poly.xml"),
                (format!("{mac}-sipward.cfg"), "poly-phone.xml"),
            ],
            Vendor::Snom => vec![(format!("{}.xml", mac.to_ascii_uppercase()), "snom.xml")],
            Vendor::Grandstream => vec![(format!("cfg{mac}.xml"), "grandstream.xml")],
            Vendor::Cisco => vec![(format!("spa{mac}.xml"), "cisco.xml")],
            Vendor::Fanvil => vec![(format!("{mac}.cfg"), "fanvil.xml")],
        }
    }

    /// The `Event` header value of the NOTIFY that makes this vendor's phones re-fetch
    /// their files without rebooting when nothing requires it.
    pub fn check_sync_event(self) -> &'static str {
        match self {
            // Yealink and Snom reboot on a bare check-sync unless told not to.
            Vendor::Yealink | Vendor::Snom => "check-sync;reboot=false",
            // Cisco SPA/MPP listen for "resync".
            Vendor::Cisco => "resync",
            Vendor::Poly | Vendor::Grandstream | Vendor::Fanvil => "check-sync",
        }
    }
}

/// The MAC a requested file name belongs to, if the name has one of the shapes
/// [`Vendor::files`] produces. The caller still checks the phone's vendor.
pub fn mac_of_file(name: &str) -> Option<String> {
    let stem = name
        .strip_suffix("-ca.pem")
        .or_else(|| name.strip_suffix("-sipward.cfg"))
        .or_else(|| name.strip_suffix(".cfg"))
        .or_else(|| name.strip_suffix(".xml"))?;
    let stem = stem
        .strip_prefix("cfg")
        .or_else(|| stem.strip_prefix("spa"))
        .unwrap_or(stem);
    (stem.len() == 12 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| stem.to_ascii_lowercase())
}

/// Transport the phones register over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhoneTransport {
    #[default]
    Udp,
    Tcp,
    /// SIP over TLS: the files also carry the CA phones verify sipward with, where the
    /// vendor can take it from a file.
    Tls,
}

impl PhoneTransport {
    /// `udp`, `tcp` or `tls` (any case).
    pub fn parse(value: &str) -> Result<Self, policy::InvalidField> {
        match value.trim().to_ascii_lowercase().as_str() {
            "udp" => Ok(PhoneTransport::Udp),
            "tcp" => Ok(PhoneTransport::Tcp),
            "tls" => Ok(PhoneTransport::Tls),
            _ => Err(policy::InvalidField::new(
                "transport",
                "must be udp, tcp or tls",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PhoneTransport::Udp => "udp",
            PhoneTransport::Tcp => "tcp",
            PhoneTransport::Tls => "tls",
        }
    }
}

/// The CA file served beside a phone's own files (PEM), for vendors that fetch the
/// certificate to trust from a URL.
pub fn ca_file(mac: &str) -> String {
    format!("{mac}-ca.pem")
}

/// Everything one phone's files say.
#[derive(Clone, Debug, Serialize)]
pub struct PhoneAccount<'a> {
    pub number: &'a str,
    pub display_name: &'a str,
    /// The user part phones register (the SIP ID when set, else the number).
    pub user: &'a str,
    pub auth_id: &'a str,
    pub password: &'a str,
    pub admin_password: &'a str,
    pub server: &'a str,
    pub port: u16,
    pub transport: PhoneTransport,
    pub voicemail: &'a str,
    pub mac: &'a str,
    /// The directory URL the phone fetches its files from (`http://host/prov/<path>/`),
    /// when `provisioning.base_url` is set: the files tell the phone where to come back.
    pub provisioning_url: Option<&'a str>,
    /// The phone's provisioning login (user = MAC): the files set it, so that a
    /// rotated login reaches the phone with its next fetch.
    pub provisioning_password: &'a str,
    /// Where the phone fetches the CA that signed sipward's TLS certificate ([`ca_file`]
    /// under the provisioning URL), when it registers over TLS and the CA is private.
    pub ca_url: Option<&'a str>,
}

/// The Digest realm of the provisioning server (HA1s of provisioning logins are over it).
pub const REALM: &str = "sipward-provisioning";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the value of {field} contains a line break or control character")]
    ControlCharacter { field: &'static str },
    #[error("template {name}: {detail}")]
    Render { name: String, detail: String },
    #[error("cannot read the template {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Refuses values that would break out of a config line.
pub fn check_value(field: &'static str, value: &str) -> Result<(), TemplateError> {
    if value.chars().any(char::is_control) {
        return Err(TemplateError::ControlCharacter { field });
    }
    Ok(())
}

/// The template set: built-ins, each replaced by DIR/<name> when that file exists.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Loads the templates; `overrides` is the operator's template directory.
    pub fn load(overrides: Option<&Path>) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .trim_blocks(true)
            .build()
            .map_err(|e| TemplateError::Render {
                name: "syntax".into(),
                detail: e.to_string(),
            })?;
        env.set_syntax(syntax);
        for (name, builtin) in BUILTIN {
            let custom = overrides.map(|d| d.join(name)).filter(|p| p.is_file());
            let text = match custom {
                Some(path) => fs::read_to_string(&path)
                    .map_err(|source| TemplateError::Read { path, source })?,
                None => (*builtin).to_owned(),
            };
            env.add_template_owned(*name, text)
                .map_err(|e| TemplateError::Render {
                    name: (*name).to_owned(),
                    detail: e.to_string(),
                })?;
        }
        Ok(Self { env })
    }

    /// Renders template `name` with `ctx`.
    pub fn render<S: Serialize>(&self, name: &str, ctx: &S) -> Result<String, TemplateError> {
        let err = |e: minijinja::Error| TemplateError::Render {
            name: name.to_owned(),
            detail: e.to_string(),
        };
        self.env
            .get_template(name)
            .map_err(err)?
            .render(minijinja::value::Serde(ctx))
            .map_err(err)
    }

    /// The files of one phone: (file name, content).
    pub fn phone_files(
        &self,
        vendor: Vendor,
        a: &PhoneAccount<'_>,
    ) -> Result<Vec<(String, String)>, TemplateError> {
        for (field, v) in [
            ("number", a.number),
            ("display name", a.display_name),
            ("user", a.user),
            ("auth ID", a.auth_id),
            ("password", a.password),
            ("admin password", a.admin_password),
            ("server", a.server),
            ("voicemail number", a.voicemail),
            ("MAC address", a.mac),
            ("provisioning URL", a.provisioning_url.unwrap_or("")),
            ("provisioning password", a.provisioning_password),
            ("CA URL", a.ca_url.unwrap_or("")),
        ] {
            check_value(field, v)?;
        }
        vendor
            .files(a.mac)
            .into_iter()
            .map(|(file, template)| Ok((file, self.render(template, a)?)))
            .collect()
    }
}

/// Writes `content` to `dir/name` atomically: a temporary file (mode 0600) is written,
/// synced and renamed over the old one, so a reader (or a crash) sees the old file or
/// the new one, never a mix.
pub fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(content)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))
}

/// Creates the provisioning directory (0700) when missing.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    Ok(())
}

/// Makes renames in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn account() -> PhoneAccount<'static> {
        PhoneAccount {
            number: "1001",
            display_name: "Alice <Sales> & Co",
            user: "1001",
            auth_id: "k3j9x2m4q8w1",
            password: "Zq8xLmTr4wPyK7vB2nHc",
            admin_password: "Ad9mQ2xLp7Rt4wVb8nKe",
            server: "pbx.example.com",
            port: 5060,
            transport: PhoneTransport::Udp,
            voicemail: "*97",
            mac: "001565aabbcc",
            provisioning_url: Some("http://pbx.example.com:8080/prov/Kq2Zx8Lm4TwPy7Rb3Nc9Vd5H/"),
            provisioning_password: "Pv7Lq2Zx8Mn4Tw9Ry3Kb",
            ca_url: None,
        }
    }

    #[test]
    fn vendors_from_models() {
        assert_eq!(Vendor::from_model("Yealink T46U"), Some(Vendor::Yealink));
        assert_eq!(Vendor::from_model("Polycom VVX 450"), Some(Vendor::Poly));
        assert_eq!(Vendor::from_model("Poly Edge E450"), Some(Vendor::Poly));
        assert_eq!(Vendor::from_model("snom D785"), Some(Vendor::Snom));
        assert_eq!(
            Vendor::from_model("Grandstream GXP2170"),
            Some(Vendor::Grandstream)
        );
        assert_eq!(Vendor::from_model("Cisco SPA504G"), Some(Vendor::Cisco));
        assert_eq!(Vendor::from_model("Fanvil X4U"), Some(Vendor::Fanvil));
        assert_eq!(Vendor::from_model("Acme 9000"), None);
        assert_eq!(Vendor::from_model("Polyglot 1"), None);
    }

    #[test]
    fn tls_phones_are_told_the_transport_the_port_and_where_the_ca_is() {
        let t = Templates::load(None).expect("builtins");
        let url = "http://pbx.example.com:8080/prov/Kq2Zx8Lm4TwPy7Rb3Nc9Vd5H/001565aabbcc-ca.pem";
        let a = PhoneAccount {
            transport: PhoneTransport::Tls,
            port: 5061,
            ca_url: Some(url),
            ..account()
        };
        let text = |v: Vendor| -> String {
            t.phone_files(v, &a)
                .expect("render")
                .into_iter()
                .map(|(_, c)| c)
                .collect()
        };
        let y = text(Vendor::Yealink);
        assert!(
            y.contains("account.1.sip_server.1.transport_type = 2\n"),
            "{y}"
        );
        assert!(y.contains("account.1.sip_server.1.port = 5061\n"), "{y}");
        assert!(
            y.contains(&format!("static.trusted_certificates.url = {url}\n")),
            "{y}"
        );
        assert!(text(Vendor::Poly).contains(r#"reg.1.server.1.transport="TLS""#));
        assert!(text(Vendor::Snom).contains("pbx.example.com:5061;transport=tls<"));
        assert!(text(Vendor::Grandstream).contains("<P130>2</P130>"));
        let c = text(Vendor::Cisco);
        assert!(
            c.contains("<SIP_Transport_1_>TLS</SIP_Transport_1_>"),
            "{c}"
        );
        // (XML templates escape `/` as `&#x2f;`, which every XML parser reads back.)
        assert!(
            c.contains("<Custom_CA_Rule>http:&#x2f;&#x2f;pbx.example.com"),
            "{c}"
        );
        assert!(c.contains("001565aabbcc-ca.pem</Custom_CA_Rule>"), "{c}");
        assert!(text(Vendor::Fanvil).contains("<Transport>2</Transport>"));
        // Every vendor's file names the CA's place (a key, or a note for the operator).
        for v in Vendor::ALL {
            assert!(text(v).contains("001565aabbcc-ca.pem"), "{v:?}");
        }
        // Without TLS, nothing about a CA.
        for v in Vendor::ALL {
            let udp: String = t
                .phone_files(v, &account())
                .expect("render")
                .into_iter()
                .map(|(_, c)| c)
                .collect();
            assert!(!udp.contains("ca.pem"), "{v:?}");
        }
    }

    #[test]
    fn file_names_map_back_to_their_mac() {
        for v in Vendor::ALL {
            for (file, _) in v.files("001565aabbcc") {
                assert_eq!(
                    mac_of_file(&file).as_deref(),
                    Some("001565aabbcc"),
                    "{file}"
                );
            }
        }
        assert_eq!(
            mac_of_file(&ca_file("001565aabbcc")).as_deref(),
            Some("001565aabbcc")
        );
        for bad in [
            "",
            "x.cfg",
            "001565aabbc.cfg",
            "../001565aabbcc.cfg",
            "001565aabbcc",
            "cfg.xml",
        ] {
            assert_eq!(mac_of_file(bad), None, "{bad}");
        }
    }

    #[test]
    fn control_characters_are_refused() {
        let t = Templates::load(None).expect("builtins");
        for bad in [
            "Alice\nadmin.password = x",
            "Alice\r",
            "A\u{0}",
            "A\u{1b}[0m",
            "A\u{85}",
        ] {
            let mut a = account();
            a.display_name = bad;
            for v in Vendor::ALL {
                assert!(matches!(
                    t.phone_files(v, &a),
                    Err(TemplateError::ControlCharacter {
                        field: "display name"
                    })
                ));
            }
        }
    }

    #[test]
    fn xml_values_are_escaped_and_cfg_values_kept() {
        let t = Templates::load(None).expect("builtins");
        let a = account();
        let files = t.phone_files(Vendor::Snom, &a).expect("render");
        assert!(files[0].1.contains("Alice &lt;Sales&gt; &amp; Co"));
        let files = t.phone_files(Vendor::Yealink, &a).expect("render");
        assert!(
            files[0]
                .1
                .contains("account.1.display_name = Alice <Sales> & Co\n")
        );
    }

    #[test]
    fn operator_templates_override_builtins() {
        let dir = tempfile::tempdir().expect("tmp");
        fs::write(dir.path().join("yealink.cfg"), "custom {{ number }}\n").expect("write");
        let t = Templates::load(Some(dir.path())).expect("load");
        let files = t.phone_files(Vendor::Yealink, &account()).expect("render");
        assert_eq!(files[0].1, "custom 1001\n");
        fs::write(dir.path().join("snom.xml"), "{{ nope }}").expect("write");
        let t = Templates::load(Some(dir.path())).expect("load");
        assert!(matches!(
            t.phone_files(Vendor::Snom, &account()),
            Err(TemplateError::Render { .. })
        ));
    }

    /// Every vendor's files are pinned by a snapshot in `tests/snapshots/` (regenerate
    /// with `UPDATE_SNAPSHOTS=1`), XML files are well-formed, Yealink files are
    /// `key = value` lines after the version header.
    #[test]
    fn vendor_files_parse_and_match_their_snapshots() {
        let t = Templates::load(None).expect("builtins");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
        let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
        for v in Vendor::ALL {
            let files = t.phone_files(v, &account()).expect("render");
            let all: String = files.iter().map(|(_, c)| c.as_str()).collect();
            assert!(all.contains(account().password) && all.contains(account().admin_password));
            assert!(
                all.contains(account().provisioning_password),
                "{v:?}: the file brings the phone its (rotated) provisioning login"
            );
            for (file, content) in files {
                if content.trim_start().starts_with("<?xml") {
                    roxmltree::Document::parse(&content)
                        .unwrap_or_else(|e| panic!("{file} is not well-formed XML: {e}"));
                } else {
                    let mut lines = content.lines();
                    assert_eq!(lines.next(), Some("#!version:1.0.0.1"), "{file}");
                    for l in lines.filter(|l| !l.is_empty() && !l.starts_with('#')) {
                        let (k, _) = l.split_once(" = ").unwrap_or_else(|| panic!("{file}: {l}"));
                        assert!(
                            k.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_'),
                            "{l}"
                        );
                    }
                }
                let snap = dir.join(format!("{}-{file}", v.id()));
                if update {
                    fs::create_dir_all(&dir).expect("mkdir");
                    fs::write(&snap, &content).expect("write snapshot");
                }
                let want = fs::read_to_string(&snap).unwrap_or_else(|e| {
                    panic!("{}: {e} (UPDATE_SNAPSHOTS=1 writes it)", snap.display())
                });
                assert_eq!(content, want, "{file} differs from its snapshot");
            }
        }
    }

    #[test]
    fn atomic_writes_leave_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tmp");
        write_atomic(dir.path(), "a.cfg", b"one").expect("write");
        write_atomic(dir.path(), "a.cfg", b"two").expect("write");
        assert_eq!(fs::read(dir.path().join("a.cfg")).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1);
        let mode = fs::metadata(dir.path().join("a.cfg"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

//! CSV import of extensions: all or nothing. Every row is validated first and every bad
//! row is reported with its line number; only a file without errors is written, in one
//! transaction.
//!
//! Columns (header row, any order, names case-insensitive): `number` (required), `name`,
//! `email`, `kind` (`user`/`fax`), `password`, `pin`, `sip_id`, `auth_id`, `mac`, `model`.
//! Empty cells mean "not given": credentials are then generated, the SIP ID stays blank.

use std::collections::HashMap;
use std::io::Read;

use store::account as q;

use crate::error::{ImportErrors, RowError};
use crate::extension::{ExtensionKind, NewExtension, Prepared};
use crate::registry::{Identity, Registry};
use crate::{Error, Result};

const COLUMNS: &[&str] = &[
    "number",
    "name",
    "email",
    "kind",
    "password",
    "pin",
    "sip_id",
    "auth_id",
    "mac",
    "model",
    "transport",
    "voicemail_after_secs",
    "voicemail_mail",
];

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    pub imported: usize,
    /// Rows whose password or PIN was generated (send them with `ext regenerate` or
    /// read them once with `ext show --reveal`).
    pub with_generated_credentials: usize,
}

struct ParsedRow {
    line: u64,
    number: String,
    new: NewExtension,
}

fn parse_rows(reader: impl Read, errors: &mut Vec<RowError>) -> Vec<ParsedRow> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(reader);
    let headers = match csv.headers() {
        Ok(h) if h.iter().any(|c| !c.is_empty()) => h.clone(),
        Ok(_) => {
            errors.push(RowError {
                line: 1,
                message: "the file is empty; the first line must name the columns".into(),
            });
            return Vec::new();
        }
        Err(e) => {
            errors.push(RowError {
                line: 1,
                message: format!("the header row cannot be read: {e}"),
            });
            return Vec::new();
        }
    };
    let mut index: HashMap<&'static str, usize> = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        let h = h.to_ascii_lowercase().replace([' ', '-'], "_");
        match COLUMNS.iter().find(|c| **c == h) {
            Some(c) if index.contains_key(c) => {
                errors.push(RowError {
                    line: 1,
                    message: format!("column {c:?} appears twice"),
                });
            }
            Some(c) => {
                index.insert(c, i);
            }
            None => errors.push(RowError {
                line: 1,
                message: format!(
                    "unknown column {:?}; known columns: {}",
                    h.chars().take(40).collect::<String>(),
                    COLUMNS.join(", ")
                ),
            }),
        }
    }
    if !index.contains_key("number") {
        errors.push(RowError {
            line: 1,
            message: "the header row has no \"number\" column".into(),
        });
    }
    if !errors.is_empty() {
        return Vec::new();
    }
    let mut rows = Vec::new();
    for record in csv.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => {
                        format!("the row has {len} fields but the header has {expected_len}")
                    }
                    csv::ErrorKind::Utf8 { .. } => "the row is not valid UTF-8".into(),
                    _ => "the row cannot be read as CSV".into(),
                };
                errors.push(RowError { line, message });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let cell = |c: &str| {
            index
                .get(c)
                .and_then(|&i| record.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let kind = match ExtensionKind::parse(cell("kind").as_deref().unwrap_or("")) {
            Ok(k) => k,
            Err(e) => {
                errors.push(RowError {
                    line,
                    message: e.to_string(),
                });
                continue;
            }
        };
        rows.push(ParsedRow {
            line,
            number: cell("number").unwrap_or_default(),
            new: NewExtension {
                kind,
                name: cell("name"),
                email: cell("email"),
                password: cell("password"),
                pin: cell("pin"),
                sip_id: cell("sip_id"),
                auth_id: cell("auth_id"),
                mac: cell("mac"),
                model: cell("model"),
                // Imported extensions get their kind's default; set classes with
                // `ext update --class`.
                class_of_service: None,
                transport: cell("transport"),
                voicemail_after_secs: cell("voicemail_after_secs"),
                voicemail_mail: cell("voicemail_mail"),
            },
        });
    }
    rows
}

/// Checks a unique field across the file and against what is stored.
struct Uniques<'a> {
    label: &'static str,
    stored: HashMap<String, String>,
    seen: HashMap<&'a str, u64>,
}

impl<'a> Uniques<'a> {
    fn new(label: &'static str, stored: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            label,
            stored: stored.into_iter().collect(),
            seen: HashMap::new(),
        }
    }

    fn check(&mut self, value: &'a str, line: u64, errors: &mut Vec<RowError>) {
        if let Some(owner) = self.stored.get(value) {
            errors.push(RowError {
                line,
                message: format!("{} {value} is already used by {owner}", self.label),
            });
        } else if let Some(first) = self.seen.insert(value, line) {
            errors.push(RowError {
                line,
                message: format!("{} {value} is also on line {first}", self.label),
            });
        }
    }
}

/// The one namespace of numbers, SIP IDs and auth IDs, across the file and against
/// what is stored (extensions and gateways). A row's own identifiers may repeat each
/// other; nobody else's.
struct Identities<'a> {
    /// Value -> (owner subject, its role there).
    stored: HashMap<String, (String, Identity)>,
    /// Value -> (line, role) of the row that used it first.
    seen: HashMap<&'a str, (u64, Identity)>,
}

impl<'a> Identities<'a> {
    fn check(&mut self, row: &'a [(Identity, &'a str)], line: u64, errors: &mut Vec<RowError>) {
        let mut mine: Vec<&str> = Vec::new();
        for (role, value) in row {
            if mine.contains(value) {
                continue;
            }
            mine.push(value);
            if let Some((owner, as_role)) = self.stored.get(*value) {
                errors.push(RowError {
                    line,
                    message: format!(
                        "{} {value} is already used by {owner} (as its {})",
                        role.label(),
                        as_role.label()
                    ),
                });
            } else if let Some((first, as_role)) = self.seen.insert(value, (line, *role)) {
                errors.push(RowError {
                    line,
                    message: format!(
                        "{} {value} is also on line {first} (as its {})",
                        role.label(),
                        as_role.label()
                    ),
                });
            }
        }
    }
}

impl Registry {
    /// Imports extensions from CSV, all or nothing.
    pub async fn import_extensions_csv(&self, reader: impl Read) -> Result<ImportReport> {
        let mut errors = Vec::new();
        let rows = parse_rows(reader, &mut errors);

        // Validation is dominated by zxcvbn on given passwords (~0.4 ms each): spread it
        // over the cores.
        let validated: Vec<(u64, Result<Prepared>)> =
            crate::registry::parallel_map(&rows, crate::registry::worker_threads(), |r| {
                (
                    r.line,
                    self.validate_new_extension(&r.number, r.new.clone()),
                )
            });

        let mut conn = self.store().conn().await?;
        let exts = q::list_extensions(&mut conn).await?;
        let gws = q::list_gateways(&mut conn).await?;
        drop(conn);
        let ext_subject = |n: &str| format!("ext:{n}");
        let mut stored: HashMap<String, (String, Identity)> = HashMap::new();
        for e in &exts {
            let who = ext_subject(&e.number);
            let ids = [
                Some((Identity::Number, &e.number)),
                e.sip_id.as_ref().map(|s| (Identity::SipId, s)),
                Some((Identity::AuthId, &e.auth_id)),
            ];
            for (role, value) in ids.into_iter().flatten() {
                stored.entry(value.clone()).or_insert((who.clone(), role));
            }
        }
        for g in &gws {
            let who = format!("gateway:{}", g.name);
            for (role, value) in [
                (Identity::Number, &g.number),
                (Identity::AuthId, &g.auth_id),
            ] {
                stored.entry(value.clone()).or_insert((who.clone(), role));
            }
        }
        let mut identities = Identities {
            stored,
            seen: HashMap::new(),
        };
        let mut macs = Uniques::new(
            "MAC address",
            exts.iter()
                .filter_map(|e| Some((e.mac.clone()?, ext_subject(&e.number)))),
        );

        let mut prepared = Vec::with_capacity(validated.len());
        for (line, result) in &validated {
            match result {
                Ok(p) => prepared.push((*line, p)),
                Err(e) => errors.push(RowError {
                    line: *line,
                    message: e.to_string(),
                }),
            }
        }
        let ids: Vec<Vec<(Identity, &str)>> = prepared
            .iter()
            .map(|(_, p)| {
                let mut v = vec![(Identity::Number, p.row.number.as_str())];
                if let Some(s) = &p.row.sip_id {
                    v.push((Identity::SipId, s.as_str()));
                }
                v.push((Identity::AuthId, p.row.auth_id.as_str()));
                v
            })
            .collect();
        for ((line, p), ids) in prepared.iter().zip(&ids) {
            identities.check(ids, *line, &mut errors);
            if let Some(m) = &p.row.mac {
                macs.check(m, *line, &mut errors);
            }
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.line);
            return Err(Error::Import(ImportErrors(errors)));
        }

        let generated = prepared
            .iter()
            .filter(|(_, p)| p.generated.password.is_some() || p.generated.pin.is_some())
            .count();
        let mut tx = self.store().begin().await?;
        let mut phones = Vec::new();
        for (_, p) in &prepared {
            q::insert_extension(&mut tx, &p.row).await?;
            if self.bump_provisioning(&mut tx, &p.row).await?.is_some() {
                phones.push(p.row.number.clone());
            }
        }
        tx.commit().await?;
        // Phones' files follow the commit (rewritten at the next open if this is cut short).
        if !phones.is_empty() {
            self.write_files(&phones).await?;
        }
        Ok(ImportReport {
            imported: prepared.len(),
            with_generated_credentials: generated,
        })
    }
}

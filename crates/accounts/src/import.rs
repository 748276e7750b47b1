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
use crate::registry::Registry;
use crate::{Error, Result};

const COLUMNS: &[&str] = &[
    "number", "name", "email", "kind", "password", "pin", "sip_id", "auth_id", "mac", "model",
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
        let mut numbers = Uniques::new(
            "number",
            exts.iter()
                .map(|e| (e.number.clone(), ext_subject(&e.number)))
                .chain(
                    gws.iter()
                        .map(|g| (g.number.clone(), format!("gateway:{}", g.name))),
                ),
        );
        let mut auth_ids = Uniques::new(
            "auth ID",
            exts.iter()
                .map(|e| (e.auth_id.clone(), ext_subject(&e.number)))
                .chain(
                    gws.iter()
                        .map(|g| (g.auth_id.clone(), format!("gateway:{}", g.name))),
                ),
        );
        let mut sip_ids = Uniques::new(
            "SIP ID",
            exts.iter()
                .filter_map(|e| Some((e.sip_id.clone()?, ext_subject(&e.number)))),
        );
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
        for (line, p) in &prepared {
            numbers.check(&p.row.number, *line, &mut errors);
            auth_ids.check(&p.row.auth_id, *line, &mut errors);
            if let Some(s) = &p.row.sip_id {
                sip_ids.check(s, *line, &mut errors);
            }
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

//! Human and machine output: aligned tables (weak rows in red on a terminal), one JSON
//! document for `--json`, warnings on stderr.

use std::io::{IsTerminal, Write};

use policy::{Finding, Severity};
use serde::Serialize;

/// Prints one JSON document on stdout. Buffered: stdout is line-buffered, and a pretty
/// document of 100,000 findings would otherwise cost a million write calls.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Whether to colour stdout: a terminal, and NO_COLOR unset (https://no-color.org).
pub fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

const RED_BOLD: &str = "\x1b[1;31m";
const RESET: &str = "\x1b[0m";

/// A plain-text table; rows marked `alert` are printed bold red on a terminal.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<(Vec<String>, bool)>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>, alert: bool) {
        // Stored text is validated, but a table never lets a control character through.
        let cells = cells
            .into_iter()
            .map(|c| {
                c.chars()
                    .map(|ch| if ch.is_control() { '?' } else { ch })
                    .collect()
            })
            .collect();
        self.rows.push((cells, alert));
    }

    pub fn print(&self) -> anyhow::Result<()> {
        let color = color_stdout();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for (cells, _) in &self.rows {
            for (w, c) in widths.iter_mut().zip(cells) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
                }
            }
            s
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        writeln!(out, "{}", line(&headers))?;
        for (cells, alert) in &self.rows {
            if *alert && color {
                writeln!(out, "{RED_BOLD}{}{RESET}", line(cells))?;
            } else {
                writeln!(out, "{}", line(cells))?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// Tells the operator on stderr that what was just stored has weaknesses (info-level
/// findings are left to `sipward audit`).
pub fn warn_findings(what: &str, findings: &[Finding]) {
    let serious: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.severity >= Severity::Warning)
        .collect();
    if serious.is_empty() {
        return;
    }
    eprintln!("warning: {what} was stored with weak credentials:");
    for f in serious {
        eprintln!("  {} {}: {}", f.severity.as_str(), f.rule, f.message);
    }
}

/// Re-Generate progress to stderr, for selections larger than one batch.
pub fn regenerate_progress(done: usize, total: usize) {
    if total > accounts::regenerate::BATCH {
        eprintln!("regenerated {done}/{total}");
    }
}

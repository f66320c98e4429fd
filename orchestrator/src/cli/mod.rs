//! The `kangaroo` command line's subcommands, one function each: the daemons ([`daemons`]),
//! what runs without a server ([`offline`]) and the tenant operations over the API
//! ([`tenant`]); [`Output`] prints a typed answer as a table or, with `--json`, as JSON.

pub mod daemons;
pub mod offline;
pub mod tenant;

use std::path::PathBuf;

use serde::Serialize;

/// Where answers go: tables for a person, JSON for a script.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Print JSON instead of tables.
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON with `--json`, else as `human` prints it.
    ///
    /// # Errors
    /// The value cannot be written as JSON.
    pub fn emit<T: Serialize>(&self, value: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            human(value);
        }
        Ok(())
    }
}

/// Prints `rows` under upper-cased `headers`, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<width$}", c, width = w.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

/// `value`, or `-` when absent.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The data directory: the one given, else the default for this user.
pub fn data_dir(given: Option<&PathBuf>) -> PathBuf {
    given
        .cloned()
        .unwrap_or_else(kangaroo_orchestrator::server::default_data_dir)
}

//! Session parameters: what a backend has and what a client wants, so that a client moved to
//! another backend finds its settings there.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::proto::sql::{plain_name, quote_literal};

/// One parameter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Name as PostgreSQL reports it (`DateStyle`) or as the client wrote it.
    pub display: String,
    /// The value: plain text, or SQL text when `sql` is set.
    pub value: String,
    /// `value` is SQL as the client wrote it in a `SET` (re-applied verbatim).
    pub sql: bool,
    /// PostgreSQL reports the parameter with `ParameterStatus` (then `value` is what it
    /// reported last).
    pub reported: bool,
}

/// A set of session parameters, keyed by lower-case name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// The parameters.
    pub map: BTreeMap<String, Param>,
}

/// Reported parameters that describe the server and cannot be set.
const FIXED: [&str; 6] = [
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
];

impl Params {
    /// Record a `ParameterStatus`.
    pub fn reported(&mut self, name: &str, value: &str) {
        self.map.insert(
            name.to_ascii_lowercase(),
            Param {
                display: name.to_string(),
                value: value.to_string(),
                sql: false,
                reported: true,
            },
        );
    }

    /// Whether PostgreSQL reports `name` (lower case).
    pub fn is_reported(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|p| p.reported)
    }

    /// SQL that makes a backend whose parameters are `have` match `self`; empty when they do.
    pub fn sync_sql(&self, have: &Params) -> String {
        let mut sql = String::new();
        for (key, want) in &self.map {
            if FIXED.contains(&key.as_str()) || !plain_name(key) {
                continue;
            }
            if have.map.get(key).is_some_and(|h| h.value == want.value) {
                continue;
            }
            let value = if want.sql {
                want.value.clone()
            } else {
                quote_literal(&want.value)
            };
            let _ = write!(sql, "SET {key} TO {value};");
        }
        for (key, h) in &have.map {
            if !h.reported && !self.map.contains_key(key) && plain_name(key) {
                let _ = write!(sql, "RESET {key};");
            }
        }
        sql
    }

    /// The `ParameterStatus` pairs a client is shown at login.
    pub fn reported_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map
            .values()
            .filter(|p| p.reported)
            .map(|p| (p.display.as_str(), p.value.as_str()))
    }
}

/// Parameters a client passes in its startup packet's `options` (`-c name=value`,
/// `--name=value`; backslash escapes a space). Unrecognised words are returned as errors.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let pair = if w == "-c" {
            it.next()
                .ok_or_else(|| "-c without a setting".to_string())?
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_string()
        } else {
            return Err(format!("unsupported option {w:?}"));
        };
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("option {pair:?} has no value"))?;
        out.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_sql_sets_and_resets_differences() {
        let mut base = Params::default();
        base.reported("TimeZone", "UTC");
        base.reported("server_version", "15.8");
        let mut want = base.clone();
        want.reported("TimeZone", "Europe/Paris");
        want.map.insert(
            "search_path".into(),
            Param {
                display: "search_path".into(),
                value: "app, public".into(),
                sql: true,
                reported: false,
            },
        );
        assert_eq!(
            want.sync_sql(&base),
            "SET search_path TO app, public;SET timezone TO 'Europe/Paris';"
        );
        assert_eq!(
            base.sync_sql(&want),
            "SET timezone TO 'UTC';RESET search_path;"
        );
        assert_eq!(want.sync_sql(&want), "");
        let pairs: Vec<_> = want.reported_pairs().collect();
        assert_eq!(
            pairs,
            vec![("server_version", "15.8"), ("TimeZone", "Europe/Paris")]
        );
    }

    #[test]
    fn options_are_parsed() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=1MB").unwrap(),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "1MB".into())
            ]
        );
        assert_eq!(
            parse_options("-c application_name=a\\ b").unwrap(),
            vec![("application_name".into(), "a b".into())]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c").is_err());
    }
}

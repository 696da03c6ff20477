//! Session parameters: what a backend has and what a client wants, so that a client moved to
//! another backend finds its settings there.

use std::collections::BTreeMap;

use crate::proto::sql::{plain_name, quote_literal};

/// One parameter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Name as PostgreSQL reports it (`DateStyle`) or as the client wrote it.
    pub display: String,
    /// The value: plain text, or SQL text when `sql` is set; bytes in the client's encoding.
    pub value: Vec<u8>,
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
    pub fn reported(&mut self, name: &str, value: &[u8]) {
        self.map.insert(
            name.to_ascii_lowercase(),
            Param {
                display: name.to_string(),
                value: value.to_vec(),
                sql: false,
                reported: true,
            },
        );
    }

    /// Whether PostgreSQL reports `name` (lower case).
    pub fn is_reported(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|p| p.reported)
    }

    /// The queries that make a backend whose parameters are `have` match `self`; none when they
    /// do. A change of `client_encoding` goes alone and first: PostgreSQL reads a query string
    /// in the encoding in force when it arrives, and the values that follow are in the new one.
    pub fn sync_sql(&self, have: &Params) -> Vec<Vec<u8>> {
        let mut encoding = Vec::new();
        let mut sql = Vec::new();
        for (key, want) in &self.map {
            if FIXED.contains(&key.as_str()) || !plain_name(key) {
                continue;
            }
            if have.map.get(key).is_some_and(|h| h.value == want.value) {
                continue;
            }
            let out = if key == "client_encoding" {
                &mut encoding
            } else {
                &mut sql
            };
            out.extend_from_slice(b"SET ");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b" TO ");
            if want.sql {
                out.extend_from_slice(&want.value);
            } else {
                out.extend_from_slice(&quote_literal(&want.value));
            }
            out.push(b';');
        }
        for (key, h) in &have.map {
            if !h.reported && !self.map.contains_key(key) && plain_name(key) {
                sql.extend_from_slice(b"RESET ");
                sql.extend_from_slice(key.as_bytes());
                sql.push(b';');
            }
        }
        [encoding, sql]
            .into_iter()
            .filter(|q| !q.is_empty())
            .collect()
    }

    /// The `ParameterStatus` pairs a client is shown at login.
    pub fn reported_pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.map
            .values()
            .filter(|p| p.reported)
            .map(|p| (p.display.as_str(), p.value.as_slice()))
    }

    /// The client's encoding and string syntax, as its settings say.
    pub fn dialect(&self) -> crate::proto::sql::Dialect {
        crate::proto::sql::Dialect {
            encoding: self
                .map
                .get("client_encoding")
                .map(|p| crate::proto::sql::ClientEncoding::from_name(&p.value))
                .unwrap_or_default(),
            backslash_strings: self
                .map
                .get("standard_conforming_strings")
                .is_some_and(|p| p.value.eq_ignore_ascii_case(b"off")),
        }
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
        base.reported("TimeZone", b"UTC");
        base.reported("server_version", b"15.8");
        let mut want = base.clone();
        want.reported("TimeZone", b"Europe/Paris");
        want.map.insert(
            "search_path".into(),
            Param {
                display: "search_path".into(),
                value: b"app, public".to_vec(),
                sql: true,
                reported: false,
            },
        );
        assert_eq!(
            want.sync_sql(&base),
            vec![b"SET search_path TO app, public;SET timezone TO 'Europe/Paris';".to_vec()]
        );
        assert_eq!(
            base.sync_sql(&want),
            vec![b"SET timezone TO 'UTC';RESET search_path;".to_vec()]
        );
        assert!(want.sync_sql(&want).is_empty());
        let pairs: Vec<_> = want.reported_pairs().collect();
        assert_eq!(
            pairs,
            vec![
                ("server_version", &b"15.8"[..]),
                ("TimeZone", &b"Europe/Paris"[..])
            ]
        );
        // A new encoding first and alone, then values in it.
        let mut latin = want.clone();
        latin.reported("client_encoding", b"LATIN9");
        latin.reported("application_name", b"caf\xe9");
        assert_eq!(
            latin.sync_sql(&want),
            vec![
                b"SET client_encoding TO 'LATIN9';".to_vec(),
                b"SET application_name TO 'caf\xe9';".to_vec()
            ]
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

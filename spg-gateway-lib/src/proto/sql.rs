//! What a client's SQL does to its session, as far as transaction pooling cares.
//!
//! The pooler never decides transaction boundaries from SQL (those come from `ReadyForQuery`);
//! it reads SQL only to learn about session state a statement creates: `SET`s it can carry to
//! another backend, and state it cannot move (temporary tables, `LISTEN`, SQL-level `PREPARE`,
//! session advisory locks, `WITH HOLD` cursors, role changes), which pins the client to its
//! backend. The lexer knows comments, quoted strings and identifiers, dollar quoting and
//! statement separators; it never panics on any input (fuzz target `sql_effects`).

/// Session state a client can create that pins it to its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PinKind {
    /// A temporary table, view or sequence.
    TempTable,
    /// `LISTEN` on a channel.
    Listen,
    /// A SQL-level `PREPARE`d statement.
    SqlPrepare,
    /// A session-level advisory lock.
    AdvisoryLock,
    /// A `WITH HOLD` cursor.
    HoldCursor,
    /// A session setting the pooler cannot carry to another backend.
    UntrackedSet,
    /// `SET ROLE` / `SET SESSION AUTHORIZATION`.
    Role,
}

impl PinKind {
    /// Short name shown in the admin view and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PinKind::TempTable => "temp_table",
            PinKind::Listen => "listen",
            PinKind::SqlPrepare => "sql_prepare",
            PinKind::AdvisoryLock => "advisory_lock",
            PinKind::HoldCursor => "with_hold_cursor",
            PinKind::UntrackedSet => "untracked_set",
            PinKind::Role => "set_role",
        }
    }

    /// Every kind, in display order.
    pub const ALL: [PinKind; 7] = [
        PinKind::TempTable,
        PinKind::Listen,
        PinKind::SqlPrepare,
        PinKind::AdvisoryLock,
        PinKind::HoldCursor,
        PinKind::UntrackedSet,
        PinKind::Role,
    ];
}

/// One effect of a statement on the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET name TO value` at session level; `value` is the SQL text as written.
    Set {
        /// Parameter name, lower case.
        name: String,
        /// Value as SQL text.
        value: String,
    },
    /// `RESET name` (or `SET name TO DEFAULT`).
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// Creates pinned state; the name (table, channel, statement, cursor) when it has one.
    Pin(PinKind, Option<String>),
    /// Removes pinned state: one name, or all of the kind (`None`).
    Unpin(PinKind, Option<String>),
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DEALLOCATE ALL`.
    DeallocateAll,
    /// `DEALLOCATE name`.
    Deallocate(String),
}

/// The effects of a query string, and whether it is a single statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Effects in statement order.
    pub effects: Vec<Effect>,
    /// Number of non-empty statements (exact when there are effects; otherwise 1 for any
    /// non-blank text).
    pub statements: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// Unquoted word (keyword or identifier), as written.
    Word(&'a str),
    /// Quoted identifier, without quotes (doubled quotes not collapsed).
    Ident(&'a str),
    /// String literal, without quotes.
    Str(&'a str),
    /// Any other single character or number run.
    Punct(char),
    Number,
    /// `;`
    End,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok<'a>,
    start: usize,
    end: usize,
}

/// Whether a query has a word that can start a statement with session effects, or a function
/// call that creates or drops session state. One pass over the bytes; everything else (most
/// queries) has no session effect.
fn worth_analysing(sql: &[u8]) -> bool {
    let mut i = 0;
    while i < sql.len() {
        let c = sql[i];
        if !(c.is_ascii_alphabetic() || c == b'_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < sql.len() && (sql[i].is_ascii_alphanumeric() || sql[i] == b'_') {
            i += 1;
        }
        let w = &sql[start..i];
        let is = |k: &[u8]| w.eq_ignore_ascii_case(k);
        let hit = match w.len() {
            3 => is(b"set"),
            4 => is(b"drop"),
            5 => is(b"reset") || is(b"close"),
            6 => is(b"create") || is(b"listen"),
            7 => is(b"discard") || is(b"prepare") || is(b"declare"),
            8 => is(b"unlisten"),
            10 => is(b"deallocate") || is(b"set_config"),
            _ => false,
        };
        let advisory = w.len() > 11
            && (w[..11].eq_ignore_ascii_case(b"pg_advisory")
                || w.len() > 15 && w[..15].eq_ignore_ascii_case(b"pg_try_advisory"));
        if hit || advisory {
            return true;
        }
    }
    false
}

/// Analyse a query string (the text of a `Query` or `Parse` message).
pub fn analyze(sql: &str) -> Analysis {
    let bytes = sql.as_bytes();
    if !worth_analysing(bytes) {
        // No session effects; the statement count is only needed alongside effects.
        return Analysis {
            effects: Vec::new(),
            statements: usize::from(!sql.trim().is_empty()),
        };
    }
    let mut out = Analysis::default();
    let mut stmt: Vec<Token<'_>> = Vec::new();
    let mut lexer = Lexer { s: sql, i: 0 };
    loop {
        let t = lexer.next();
        match t {
            Some(Token { tok: Tok::End, .. }) | None => {
                if !stmt.is_empty() {
                    out.statements += 1;
                    classify(sql, &stmt, &mut out.effects);
                    stmt.clear();
                }
                if t.is_none() {
                    break;
                }
            }
            Some(t) => stmt.push(t),
        }
    }
    out
}

struct Lexer<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Lexer<'a> {
    fn next(&mut self) -> Option<Token<'a>> {
        let b = self.s.as_bytes();
        loop {
            // Whitespace and comments.
            while self.i < b.len() && b[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
            if self.i + 1 < b.len() && b[self.i] == b'-' && b[self.i + 1] == b'-' {
                while self.i < b.len() && b[self.i] != b'\n' {
                    self.i += 1;
                }
                continue;
            }
            if self.i + 1 < b.len() && b[self.i] == b'/' && b[self.i + 1] == b'*' {
                let mut depth = 0usize;
                while self.i < b.len() {
                    if self.i + 1 < b.len() && b[self.i] == b'/' && b[self.i + 1] == b'*' {
                        depth += 1;
                        self.i += 2;
                    } else if self.i + 1 < b.len() && b[self.i] == b'*' && b[self.i + 1] == b'/' {
                        depth -= 1;
                        self.i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        self.i += 1;
                    }
                }
                continue;
            }
            break;
        }
        if self.i >= b.len() {
            return None;
        }
        let start = self.i;
        let c = b[self.i];
        let tok = match c {
            b';' => {
                self.i += 1;
                Tok::End
            }
            b'\'' => Tok::Str(self.quoted(b'\'', false)),
            b'"' => Tok::Ident(self.quoted(b'"', false)),
            b'e' | b'E' if b.get(self.i + 1) == Some(&b'\'') => {
                self.i += 1;
                Tok::Str(self.quoted(b'\'', true))
            }
            b'$' if self.dollar_tag().is_some() => {
                let tag_len = self.dollar_tag().unwrap_or(1);
                let tag = &self.s[self.i..self.i + tag_len];
                let body_start = self.i + tag_len;
                match self.s[body_start..].find(tag) {
                    Some(off) => {
                        self.i = body_start + off + tag_len;
                        Tok::Str(&self.s[body_start..body_start + off])
                    }
                    None => {
                        self.i = b.len();
                        Tok::Str(&self.s[body_start..])
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while self.i < b.len()
                    && (b[self.i].is_ascii_alphanumeric()
                        || b[self.i] == b'_'
                        || b[self.i] == b'$'
                        || b[self.i] >= 0x80)
                {
                    self.i += 1;
                }
                Tok::Word(&self.s[start..self.i])
            }
            c if c.is_ascii_digit() => {
                while self.i < b.len() && (b[self.i].is_ascii_alphanumeric() || b[self.i] == b'.') {
                    self.i += 1;
                }
                Tok::Number
            }
            _ => {
                // One character (which may be multi-byte UTF-8; `c < 0x80` here).
                self.i += 1;
                Tok::Punct(c as char)
            }
        };
        Some(Token {
            tok,
            start,
            end: self.i,
        })
    }

    /// Length of a dollar-quote tag (`$$`, `$tag$`) starting at the cursor.
    fn dollar_tag(&self) -> Option<usize> {
        let b = self.s.as_bytes();
        let mut j = self.i + 1;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
            if j == self.i + 1 && b[j].is_ascii_digit() {
                return None; // `$1` is a parameter
            }
            j += 1;
        }
        (j < b.len() && b[j] == b'$').then_some(j + 1 - self.i)
    }

    /// A quoted run starting at the cursor (on the opening quote); returns its content.
    fn quoted(&mut self, q: u8, backslash: bool) -> &'a str {
        let b = self.s.as_bytes();
        self.i += 1;
        let start = self.i;
        while self.i < b.len() {
            if backslash && b[self.i] == b'\\' {
                self.i += 2;
                continue;
            }
            if b[self.i] == q {
                if b.get(self.i + 1) == Some(&q) {
                    self.i += 2;
                    continue;
                }
                let content = &self.s[start..self.i];
                self.i += 1;
                return content;
            }
            self.i += 1;
        }
        self.i = b.len();
        self.s.get(start..).unwrap_or("")
    }
}

fn word_is(t: Option<&Token<'_>>, w: &str) -> bool {
    matches!(t, Some(Token { tok: Tok::Word(x), .. }) if x.eq_ignore_ascii_case(w))
}

/// An identifier token (word or quoted), as the name PostgreSQL would use.
fn ident(t: Option<&Token<'_>>) -> Option<String> {
    match t?.tok {
        Tok::Word(w) => Some(w.to_ascii_lowercase()),
        Tok::Ident(w) => Some(w.replace("\"\"", "\"")),
        _ => None,
    }
}

/// A possibly qualified name starting at `i`: returns the last part and the index after it.
fn qualified(toks: &[Token<'_>], mut i: usize) -> Option<(Vec<String>, usize)> {
    let mut parts = vec![ident(toks.get(i))?];
    i += 1;
    while matches!(
        toks.get(i),
        Some(Token {
            tok: Tok::Punct('.'),
            ..
        })
    ) {
        parts.push(ident(toks.get(i + 1))?);
        i += 2;
    }
    Some((parts, i))
}

fn classify(sql: &str, t: &[Token<'_>], out: &mut Vec<Effect>) {
    // Function calls anywhere in the statement.
    let mut words = t.iter().enumerate().filter_map(|(i, x)| match x.tok {
        Tok::Word(w) => Some((i, w)),
        _ => None,
    });
    let mut advisory = false;
    let mut unlock_all = false;
    let mut session_set_config = false;
    for (i, w) in &mut words {
        let lw = w.to_ascii_lowercase();
        match lw.as_str() {
            "pg_advisory_lock"
            | "pg_advisory_lock_shared"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared" => advisory = true,
            "pg_advisory_unlock_all" => unlock_all = true,
            "set_config" => {
                // set_config(name, value, is_local): session level unless is_local is true.
                let mut depth = 0i32;
                let mut last_word: Option<&str> = None;
                for x in &t[i + 1..] {
                    match x.tok {
                        Tok::Punct('(') => depth += 1,
                        Tok::Punct(')') => {
                            depth -= 1;
                            if depth <= 0 {
                                break;
                            }
                        }
                        Tok::Word(w) if depth == 1 => last_word = Some(w),
                        Tok::Str(s) if depth == 1 => last_word = Some(s),
                        _ if depth == 1 => last_word = None,
                        _ => {}
                    }
                }
                let local = last_word.is_some_and(|w| {
                    matches!(w.to_ascii_lowercase().as_str(), "true" | "t" | "on" | "yes")
                });
                if !local {
                    session_set_config = true;
                }
            }
            _ => {}
        }
    }
    if unlock_all {
        out.push(Effect::Unpin(PinKind::AdvisoryLock, None));
    }
    if advisory {
        out.push(Effect::Pin(PinKind::AdvisoryLock, None));
    }
    if session_set_config {
        out.push(Effect::Pin(
            PinKind::UntrackedSet,
            Some("set_config()".into()),
        ));
    }

    let Some(Token {
        tok: Tok::Word(first),
        ..
    }) = t.first()
    else {
        return;
    };
    let w = |i: usize, s: &str| word_is(t.get(i), s);
    match first.to_ascii_lowercase().as_str() {
        "set" => classify_set(sql, t, out),
        "reset" => {
            if w(1, "all") {
                out.push(Effect::ResetAll);
            } else if w(1, "role") || (w(1, "session") && w(2, "authorization")) {
                out.push(Effect::Unpin(PinKind::Role, None));
            } else if w(1, "time") && w(2, "zone") {
                out.push(Effect::Reset("timezone".into()));
            } else if let Some((parts, _)) = qualified(t, 1) {
                out.push(Effect::Reset(parts.join(".")));
            }
        }
        "create" => {
            let mut i = 1;
            if w(i, "or") && w(i + 1, "replace") {
                i += 2;
            }
            if w(i, "global") || w(i, "local") {
                i += 1;
            }
            let temp = w(i, "temp") || w(i, "temporary");
            if temp {
                i += 1;
            }
            if w(i, "unlogged") {
                i += 1;
            }
            if !(w(i, "table") || w(i, "view") || w(i, "sequence")) {
                return;
            }
            i += 1;
            if w(i, "if") && w(i + 1, "not") && w(i + 2, "exists") {
                i += 3;
            }
            let Some((parts, _)) = qualified(t, i) else {
                return;
            };
            let in_pg_temp = parts.len() > 1 && parts[0] == "pg_temp";
            if !(temp || in_pg_temp) {
                return;
            }
            // ON COMMIT DROP: gone at the end of the transaction.
            let on_commit_drop = t.windows(3).any(|x| {
                word_is(Some(&x[0]), "on")
                    && word_is(Some(&x[1]), "commit")
                    && word_is(Some(&x[2]), "drop")
            });
            if !on_commit_drop {
                out.push(Effect::Pin(PinKind::TempTable, parts.last().cloned()));
            }
        }
        "drop" => {
            if !(w(1, "table") || w(1, "view") || w(1, "sequence")) {
                return;
            }
            let mut i = 2;
            if w(i, "if") && w(i + 1, "exists") {
                i += 2;
            }
            while let Some((parts, next)) = qualified(t, i) {
                out.push(Effect::Unpin(PinKind::TempTable, parts.last().cloned()));
                if matches!(
                    t.get(next),
                    Some(Token {
                        tok: Tok::Punct(','),
                        ..
                    })
                ) {
                    i = next + 1;
                } else {
                    break;
                }
            }
        }
        "discard" => {
            if w(1, "all") {
                out.push(Effect::DiscardAll);
            } else if w(1, "temp") || w(1, "temporary") {
                out.push(Effect::Unpin(PinKind::TempTable, None));
            }
        }
        "listen" => out.push(Effect::Pin(PinKind::Listen, ident(t.get(1)))),
        "unlisten" => {
            if matches!(
                t.get(1),
                Some(Token {
                    tok: Tok::Punct('*'),
                    ..
                })
            ) {
                out.push(Effect::Unpin(PinKind::Listen, None));
            } else {
                out.push(Effect::Unpin(PinKind::Listen, ident(t.get(1))));
            }
        }
        "prepare" if !w(1, "transaction") => {
            out.push(Effect::Pin(PinKind::SqlPrepare, ident(t.get(1))));
        }
        "deallocate" => {
            let i = if w(1, "prepare") { 2 } else { 1 };
            if w(i, "all") {
                out.push(Effect::DeallocateAll);
            } else if let Some(name) = ident(t.get(i)) {
                out.push(Effect::Deallocate(name));
            }
        }
        "declare" => {
            let hold = t
                .windows(2)
                .any(|x| word_is(Some(&x[0]), "with") && word_is(Some(&x[1]), "hold"));
            if hold {
                out.push(Effect::Pin(PinKind::HoldCursor, ident(t.get(1))));
            }
        }
        "close" => {
            if w(1, "all") {
                out.push(Effect::Unpin(PinKind::HoldCursor, None));
            } else {
                out.push(Effect::Unpin(PinKind::HoldCursor, ident(t.get(1))));
            }
        }
        _ => {}
    }
}

fn classify_set(sql: &str, t: &[Token<'_>], out: &mut Vec<Effect>) {
    let w = |i: usize, s: &str| word_is(t.get(i), s);
    let mut i = 1;
    if w(i, "local") || w(i, "transaction") || w(i, "constraints") {
        return; // transaction-scoped
    }
    if w(i, "session") {
        if w(i + 1, "characteristics") {
            out.push(Effect::Pin(
                PinKind::UntrackedSet,
                Some("session characteristics".into()),
            ));
            return;
        }
        if w(i + 1, "authorization") {
            out.push(Effect::Pin(PinKind::Role, None));
            return;
        }
        i += 1;
    }
    if w(i, "role") {
        out.push(Effect::Pin(PinKind::Role, None));
        return;
    }
    let (name, value_at) = if w(i, "time") && w(i + 1, "zone") {
        ("timezone".to_string(), i + 2)
    } else if w(i, "names") {
        ("client_encoding".to_string(), i + 1)
    } else if w(i, "schema") {
        ("search_path".to_string(), i + 1)
    } else {
        let Some((parts, next)) = qualified(t, i) else {
            out.push(Effect::Pin(PinKind::UntrackedSet, None));
            return;
        };
        let name = parts.join(".");
        let ok = w(next, "to")
            || matches!(
                t.get(next),
                Some(Token {
                    tok: Tok::Punct('='),
                    ..
                })
            );
        if !ok {
            out.push(Effect::Pin(PinKind::UntrackedSet, Some(name)));
            return;
        }
        (name, next + 1)
    };
    let Some(first) = t.get(value_at) else {
        out.push(Effect::Pin(PinKind::UntrackedSet, Some(name)));
        return;
    };
    if t.len() == value_at + 1 && (w(value_at, "default") || w(value_at, "local")) {
        out.push(Effect::Reset(name));
        return;
    }
    if w(value_at, "from") && w(value_at + 1, "current") {
        out.push(Effect::Pin(PinKind::UntrackedSet, Some(name)));
        return;
    }
    let last = t.last().unwrap_or(first);
    let value = sql
        .get(first.start..last.end)
        .unwrap_or("")
        .trim()
        .to_string();
    if value.is_empty() {
        out.push(Effect::Pin(PinKind::UntrackedSet, Some(name)));
        return;
    }
    out.push(Effect::Set { name, value });
}

/// Quote `value` as a SQL string literal (standard conforming strings).
pub fn quote_literal(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    s.push('\'');
    for c in value.chars() {
        if c == '\'' {
            s.push('\'');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// Whether `name` can be written unquoted in `SET name ...` (letters, digits, `_`, `.`).
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && !name.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fx(sql: &str) -> Vec<Effect> {
        analyze(sql).effects
    }

    #[test]
    fn plain_queries_have_no_effects() {
        assert_eq!(
            analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 7;"),
            Analysis {
                effects: vec![],
                statements: 1
            }
        );
        assert_eq!(analyze("set a = 1; select 2").statements, 2);
        assert_eq!(analyze("  ").statements, 0);
        assert_eq!(fx("UPDATE t SET a = 1 WHERE b = 'set x = 1'"), vec![]);
        assert_eq!(fx("select 'create temp table x' -- listen y\n"), vec![]);
    }

    #[test]
    fn sets_are_tracked_with_their_sql_value() {
        assert_eq!(
            fx("SET search_path TO app, public"),
            vec![Effect::Set {
                name: "search_path".into(),
                value: "app, public".into()
            }]
        );
        assert_eq!(
            fx("set SESSION myapp.user_id = '42';"),
            vec![Effect::Set {
                name: "myapp.user_id".into(),
                value: "'42'".into()
            }]
        );
        assert_eq!(
            fx("SET TIME ZONE 'UTC'"),
            vec![Effect::Set {
                name: "timezone".into(),
                value: "'UTC'".into()
            }]
        );
        assert_eq!(
            fx("SET work_mem TO DEFAULT"),
            vec![Effect::Reset("work_mem".into())]
        );
        assert_eq!(fx("SET LOCAL work_mem = '1MB'"), vec![]);
        assert_eq!(fx("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), vec![]);
        assert_eq!(fx("RESET ALL"), vec![Effect::ResetAll]);
        assert_eq!(
            fx("reset statement_timeout"),
            vec![Effect::Reset("statement_timeout".into())]
        );
        assert_eq!(fx("SET ROLE admin"), vec![Effect::Pin(PinKind::Role, None)]);
        assert_eq!(
            fx("SET x FROM CURRENT"),
            vec![Effect::Pin(PinKind::UntrackedSet, Some("x".into()))]
        );
        assert_eq!(
            fx("select set_config('a.b', '1', false)"),
            vec![Effect::Pin(
                PinKind::UntrackedSet,
                Some("set_config()".into())
            )]
        );
        assert_eq!(fx("select set_config('a.b', '1', true)"), vec![]);
    }

    #[test]
    fn pinning_statements() {
        assert_eq!(
            fx("CREATE TEMP TABLE scratch (a int)"),
            vec![Effect::Pin(PinKind::TempTable, Some("scratch".into()))]
        );
        assert_eq!(
            fx("create temporary table if not exists \"Tmp\" as select 1"),
            vec![Effect::Pin(PinKind::TempTable, Some("Tmp".into()))]
        );
        assert_eq!(
            fx("CREATE TABLE pg_temp.t (a int)"),
            vec![Effect::Pin(PinKind::TempTable, Some("t".into()))]
        );
        assert_eq!(fx("CREATE TEMP TABLE t (a int) ON COMMIT DROP"), vec![]);
        assert_eq!(fx("CREATE TABLE t (a int)"), vec![]);
        assert_eq!(
            fx("DROP TABLE IF EXISTS a, s.b"),
            vec![
                Effect::Unpin(PinKind::TempTable, Some("a".into())),
                Effect::Unpin(PinKind::TempTable, Some("b".into()))
            ]
        );
        assert_eq!(
            fx("LISTEN jobs; UNLISTEN *"),
            vec![
                Effect::Pin(PinKind::Listen, Some("jobs".into())),
                Effect::Unpin(PinKind::Listen, None)
            ]
        );
        assert_eq!(
            fx("PREPARE q(int) AS SELECT $1"),
            vec![Effect::Pin(PinKind::SqlPrepare, Some("q".into()))]
        );
        assert_eq!(fx("PREPARE TRANSACTION 'x'"), vec![]);
        assert_eq!(
            fx("DEALLOCATE PREPARE q"),
            vec![Effect::Deallocate("q".into())]
        );
        assert_eq!(fx("deallocate all"), vec![Effect::DeallocateAll]);
        assert_eq!(
            fx("SELECT pg_advisory_lock(1)"),
            vec![Effect::Pin(PinKind::AdvisoryLock, None)]
        );
        assert_eq!(fx("SELECT pg_advisory_xact_lock(1)"), vec![]);
        assert_eq!(
            fx("select pg_advisory_unlock_all()"),
            vec![Effect::Unpin(PinKind::AdvisoryLock, None)]
        );
        assert_eq!(
            fx("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            vec![Effect::Pin(PinKind::HoldCursor, Some("c".into()))]
        );
        assert_eq!(fx("DECLARE c CURSOR FOR SELECT 1"), vec![]);
        assert_eq!(
            fx("CLOSE ALL"),
            vec![Effect::Unpin(PinKind::HoldCursor, None)]
        );
        assert_eq!(fx("DISCARD ALL"), vec![Effect::DiscardAll]);
        assert_eq!(
            fx("DISCARD TEMP"),
            vec![Effect::Unpin(PinKind::TempTable, None)]
        );
    }

    #[test]
    fn the_prefilter_lets_every_classified_statement_through() {
        for sql in [
            "SET a = 1",
            "RESET a",
            "CREATE TEMP TABLE t (a int)",
            "DROP TABLE t",
            "DISCARD ALL",
            "LISTEN c",
            "UNLISTEN *",
            "PREPARE p AS SELECT 1",
            "DEALLOCATE p",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CLOSE c",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_lock_shared(1)",
            "SELECT pg_advisory_unlock_all()",
            "SELECT set_config('a', 'b', false)",
        ] {
            assert!(!analyze(sql).effects.is_empty(), "{sql}");
        }
    }

    #[test]
    fn quoting_and_comments_are_respected() {
        assert_eq!(
            fx("/* set x = 1; */ SELECT $$; LISTEN a$$, E'\\'; listen b'"),
            vec![]
        );
        assert_eq!(
            fx("SELECT $t$ ; $t$; LISTEN c"),
            vec![Effect::Pin(PinKind::Listen, Some("c".into()))]
        );
        assert_eq!(analyze("select $1; listen x").statements, 2);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(plain_name("myapp.user_id"));
        assert!(!plain_name("x; drop"));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = analyze(&s);
        }

        #[test]
        fn never_panics_on_sql_like_input(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("set "), Just("create temp table "), Just("'"), Just("\""), Just("$$"),
                    Just("$a$"), Just("--"), Just("/*"), Just("*/"), Just(";"), Just("e'\\"),
                    Just("listen "), Just("set_config("), Just(", true)"), Just("to "), Just("x"),
                    Just("."), Just("é"), Just("drop table "), Just("declare c with hold "),
                ],
                0..30,
            )
        ) {
            let _ = analyze(&parts.concat());
        }
    }
}

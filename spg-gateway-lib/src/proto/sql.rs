//! What a client's SQL does to its session, as far as transaction pooling cares.
//!
//! The pooler never decides transaction boundaries from SQL (those come from `ReadyForQuery`).
//! It reads SQL for three things, statement by statement:
//!
//! - **settings** it can carry to another backend (`SET`, `RESET`, `RESET ALL`, `DISCARD ALL`),
//!   which take hold only once the statement succeeded and its transaction committed;
//! - **transaction control** (`BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `ROLLBACK TO`,
//!   `RELEASE`), so that a rollback, also to a savepoint, undoes those settings;
//! - whether the statement **may create or remove session state the gateway cannot carry**
//!   (temporary objects, `LISTEN`, SQL-level `PREPARE`, session advisory locks, `WITH HOLD`
//!   cursors, `SET ROLE`): `CREATE`, `DROP`, `DO`, `CALL`, `SELECT ... INTO`, `LISTEN`, calls of
//!   functions that are not known to be harmless, and so on. The gateway does not guess what
//!   such a statement did: after its transaction it asks the backend ([`CHECK_QUERY`]) and pins
//!   the client to its backend exactly while state is there.
//!
//! The text is bytes in the client's encoding: the lexer treats only ASCII bytes as syntax, and
//! in the encodings whose second byte of a character can look like ASCII (`SJIS`, `BIG5`, `GBK`,
//! `UHC`, `JOHAB`, `GB18030`) it steps over whole characters ([`ClientEncoding`]). It knows
//! comments, quoted strings and identifiers, dollar quoting, parentheses, `BEGIN ATOMIC` bodies
//! and statement separators; it never panics on any input (fuzz target `sql_effects`).

/// Session state a client can hold that pins it to its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PinKind {
    /// A temporary table, view, sequence, function or type.
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
    /// A library loaded with `LOAD` (the backend is closed, not reset, when the client leaves).
    Library,
    /// The backend could not be asked what state the client left (it is reset before reuse).
    Unverified,
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
            PinKind::Library => "loaded_library",
            PinKind::Unverified => "unverified",
        }
    }

    /// Every kind, in display order.
    pub const ALL: [PinKind; 9] = [
        PinKind::TempTable,
        PinKind::Listen,
        PinKind::SqlPrepare,
        PinKind::AdvisoryLock,
        PinKind::HoldCursor,
        PinKind::UntrackedSet,
        PinKind::Role,
        PinKind::Library,
        PinKind::Unverified,
    ];
}

/// An effect of a statement on the session's settings and statement names, applied when the
/// statement succeeded and its transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET name TO value` at session level; `value` is the SQL text as written (bytes in the
    /// client's encoding).
    Set {
        /// Parameter name, lower case.
        name: String,
        /// Value as SQL text.
        value: Vec<u8>,
    },
    /// `RESET name` (or `SET name TO DEFAULT`).
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DEALLOCATE ALL` (also removes protocol-level prepared statements).
    DeallocateAll,
    /// `DEALLOCATE name`.
    Deallocate(Vec<u8>),
    /// A setting changed in a way the pooler cannot carry (`set_config(.., false)`, `SET ...
    /// FROM CURRENT`, `SET SESSION CHARACTERISTICS`): pins until `RESET ALL` / `DISCARD ALL`.
    Untracked(String),
    /// `LOAD`: a library stays loaded in the backend for its life.
    Library,
}

/// Transaction control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END` (a failed transaction's `COMMIT` reports `ROLLBACK`).
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
    /// `SAVEPOINT name`.
    Savepoint(Vec<u8>),
    /// `ROLLBACK TO [SAVEPOINT] name`.
    RollbackTo(Vec<u8>),
    /// `RELEASE [SAVEPOINT] name`.
    Release(Vec<u8>),
    /// `PREPARE TRANSACTION`: the transaction leaves the session like a rollback.
    Prepare,
}

/// What one statement does, as far as pooling cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statement {
    /// Transaction control, if it is one.
    pub control: Option<Control>,
    /// Effects on settings and statement names.
    pub effects: Vec<Effect>,
    /// It may create or remove state only the backend can tell (see the module documentation).
    pub check: bool,
}

/// The statements of a query string that matter to pooling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Every statement, in order, when any of them matters; empty when none does (the
    /// common case: nothing to track).
    pub statements: Vec<Statement>,
}

impl Analysis {
    /// Whether some statement may change state only the backend can tell.
    pub fn wants_check(&self) -> bool {
        self.statements.iter().any(|s| s.check)
    }

    /// The name of a lone `DEALLOCATE name`.
    pub fn sole_deallocate(&self) -> Option<&[u8]> {
        match self.statements.as_slice() {
            [Statement {
                control: None,
                effects,
                ..
            }] => match effects.as_slice() {
                [Effect::Deallocate(name)] => Some(name),
                _ => None,
            },
            _ => None,
        }
    }
}

/// How a client encoding spells characters, as far as finding ASCII syntax goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientEncoding {
    /// Every byte below 0x80 is an ASCII character (UTF-8, the EUC and ISO 8859 families, the
    /// Windows code pages, ...).
    #[default]
    AsciiSafe,
    /// Shift JIS: 0xA1–0xDF stand alone; other bytes from 0x80 start two-byte characters whose
    /// second byte may be ASCII-looking.
    Sjis,
    /// BIG5, GBK, UHC, JOHAB: a byte from 0x80 starts a two-byte character.
    DoubleByte,
    /// GB18030: two-byte characters, and four-byte ones whose second byte is a digit.
    Gb18030,
}

impl ClientEncoding {
    /// The encoding PostgreSQL names `name` (as in `client_encoding`).
    pub fn from_name(name: &[u8]) -> ClientEncoding {
        let canon: Vec<u8> = name
            .iter()
            .filter(|b| **b != b'_' && **b != b'-')
            .map(u8::to_ascii_uppercase)
            .collect();
        match canon.as_slice() {
            b"SJIS" | b"SHIFTJIS" | b"SHIFTJIS2004" | b"MSKANJI" | b"WIN932" | b"WINDOWS932" => {
                ClientEncoding::Sjis
            }
            b"BIG5" | b"WIN950" | b"WINDOWS950" | b"GBK" | b"WIN936" | b"WINDOWS936" | b"UHC"
            | b"WIN949" | b"WINDOWS949" | b"JOHAB" => ClientEncoding::DoubleByte,
            b"GB18030" => ClientEncoding::Gb18030,
            _ => ClientEncoding::AsciiSafe,
        }
    }

    /// Length of the character starting at `b[i]` (at least 1, at most what is left).
    fn char_len(self, b: &[u8], i: usize) -> usize {
        let c = b[i];
        let n = if c < 0x80 {
            1
        } else {
            match self {
                ClientEncoding::AsciiSafe => 1,
                ClientEncoding::Sjis if (0xA1..=0xDF).contains(&c) => 1,
                ClientEncoding::Sjis | ClientEncoding::DoubleByte => 2,
                ClientEncoding::Gb18030 => {
                    if b.get(i + 1).is_some_and(|x| x.is_ascii_digit()) {
                        4
                    } else {
                        2
                    }
                }
            }
        };
        n.min(b.len() - i)
    }
}

/// Options of the lexer the session's settings decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dialect {
    /// The client's encoding.
    pub encoding: ClientEncoding,
    /// `standard_conforming_strings` is off: backslashes escape in ordinary string literals.
    pub backslash_strings: bool,
}

/// The query the gateway sends a backend, after a transaction with a statement that may have
/// changed session state, to learn what state is there: one row of seven text columns —
/// temporary objects, channels listened to, SQL-level prepared statements, holdable cursors
/// (each a comma-separated list of names, NULL when none), the number of advisory locks held,
/// the `role` setting (`none` unless `SET ROLE`), and the settings changed in the session.
/// Everything is qualified with `pg_catalog`, so nothing a tenant creates can answer instead.
pub const CHECK_QUERY: &str = "SELECT \
 (SELECT pg_catalog.string_agg(n, ',') FROM (\
 SELECT c.relname::pg_catalog.text AS n FROM pg_catalog.pg_class c \
 WHERE c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
 AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,v,m,S,f,p,c}'::pg_catalog.\"char\"[]) \
 UNION ALL SELECT p.proname::pg_catalog.text FROM pg_catalog.pg_proc p \
 WHERE p.pronamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
 UNION ALL SELECT t.typname::pg_catalog.text FROM pg_catalog.pg_type t \
 WHERE t.typnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
 AND t.typtype OPERATOR(pg_catalog.=) ANY ('{d,e,r,m}'::pg_catalog.\"char\"[])) o), \
 (SELECT pg_catalog.string_agg(l, ',') FROM pg_catalog.pg_listening_channels() l), \
 (SELECT pg_catalog.string_agg(s.name, ',') FROM pg_catalog.pg_prepared_statements s WHERE s.from_sql), \
 (SELECT pg_catalog.string_agg(k.name, ',') FROM pg_catalog.pg_cursors k WHERE k.is_holdable), \
 (SELECT pg_catalog.count(*)::pg_catalog.text FROM pg_catalog.pg_locks x \
 WHERE x.locktype OPERATOR(pg_catalog.=) 'advisory' \
 AND x.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()), \
 pg_catalog.current_setting('role'), \
 (SELECT pg_catalog.string_agg(g.name, ',') FROM pg_catalog.pg_settings g \
 WHERE g.source OPERATOR(pg_catalog.=) 'session')";

/// Words that may precede `(` without calling a function that could change session state:
/// keywords followed by a parenthesis, type names with a modifier, and built-in functions that
/// keep no session state. Anything else before `(` is a call the gateway cannot see into.
const HARMLESS_BEFORE_PAREN: &[&str] = &[
    // keywords
    "all",
    "and",
    "any",
    "array",
    "as",
    "between",
    "by",
    "case",
    "cast",
    "check",
    "collate",
    "conflict",
    "constraint",
    "cube",
    "default",
    "distinct",
    "do",
    "else",
    "except",
    "exists",
    "extract",
    "fetch",
    "filter",
    "for",
    "foreign",
    "from",
    "group",
    "grouping",
    "having",
    "if",
    "ilike",
    "in",
    "include",
    "intersect",
    "into",
    "is",
    "join",
    "key",
    "lateral",
    "like",
    "limit",
    "not",
    "nulls",
    "of",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "over",
    "overlay",
    "partition",
    "position",
    "primary",
    "range",
    "references",
    "returning",
    "rollup",
    "row",
    "rows",
    "select",
    "set",
    "sets",
    "similar",
    "some",
    "substring",
    "table",
    "then",
    "to",
    "treat",
    "trim",
    "union",
    "unique",
    "using",
    "values",
    "when",
    "where",
    "window",
    "with",
    "within",
    // types with a modifier
    "bit",
    "char",
    "character",
    "decimal",
    "float",
    "interval",
    "numeric",
    "time",
    "timestamp",
    "timestamptz",
    "varbit",
    "varchar",
    "varying",
    // built-in functions that keep no session state
    "abs",
    "age",
    "array_agg",
    "array_append",
    "array_cat",
    "array_length",
    "array_position",
    "array_prepend",
    "array_remove",
    "array_to_json",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_setting",
    "date",
    "date_part",
    "date_trunc",
    "decode",
    "dense_rank",
    "encode",
    "every",
    "exp",
    "first_value",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "greatest",
    "int4",
    "int8",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "json_object_agg",
    "jsonb_agg",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_object_agg",
    "jsonb_set",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "ltrim",
    "make_interval",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "octet_length",
    "percent_rank",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_backend_pid",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "power",
    "random",
    "rank",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "lpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "sum",
    "text",
    "timeofday",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trunc",
    "unnest",
    "upper",
    "uuid_generate_v4",
    "version",
    // sequences (per-sequence state; currval/lastval are listed as pooling differences)
    "nextval",
    "currval",
    "setval",
    "lastval",
    "crypt",
    "digest",
    "gen_salt",
    "hmac",
    "make_date",
    "make_timestamp",
    "make_timestamptz",
    "pg_sleep",
    "plainto_tsquery",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "similarity",
    "to_tsquery",
    "to_tsvector",
    "ts_rank",
    "websearch_to_tsquery",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// Unquoted word (keyword or identifier), as written.
    Word(&'a [u8]),
    /// Quoted identifier, without quotes (doubled quotes not collapsed).
    Ident(&'a [u8]),
    /// String literal, without quotes.
    Str(&'a [u8]),
    /// Any other ASCII character.
    Punct(u8),
    Number,
    /// `;` ending a statement.
    End,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok<'a>,
    start: usize,
    end: usize,
}

/// Whether a query may matter to pooling at all: a word that can start a statement of
/// interest, or a parenthesis after a word that is not known to be harmless. One pass over
/// the bytes, quotes ignored (a false "yes" only costs the full analysis).
fn worth_analysing(sql: &[u8], enc: ClientEncoding) -> bool {
    /// Stands for a name no call of which is harmless (quoted, or in a schema of the tenant's).
    const FOREIGN: &[u8] = b"\"";
    let mut i = 0;
    let mut last_word: Option<&[u8]> = None;
    // The word just before a `.`: the next word is qualified by it.
    let mut qualifier: Option<&[u8]> = None;
    while i < sql.len() {
        let c = sql[i];
        if c == b'(' {
            if let Some(w) = last_word {
                if !harmless_before_paren(w) {
                    return true;
                }
            }
            last_word = None;
            i += 1;
            continue;
        }
        if c == b'"' {
            i += 1;
            while i < sql.len() && sql[i] != b'"' {
                i += 1;
            }
            i += 1;
            last_word = Some(FOREIGN);
            continue;
        }
        if c == b'.' {
            qualifier = last_word;
            last_word = None;
            i += 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == b'_' || c >= 0x80) {
            if !c.is_ascii_whitespace() {
                last_word = None;
                qualifier = None;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < sql.len() && (sql[i].is_ascii_alphanumeric() || sql[i] == b'_' || sql[i] >= 0x80)
        {
            i += enc.char_len(sql, i);
        }
        let w = &sql[start..i];
        if starts_statement_of_interest(w) {
            return true;
        }
        last_word = match qualifier.take() {
            Some(q) if !eq_word(q, "pg_catalog") => Some(FOREIGN),
            _ => Some(w),
        };
    }
    false
}

fn eq_word(w: &[u8], k: &str) -> bool {
    w.eq_ignore_ascii_case(k.as_bytes())
}

fn starts_statement_of_interest(w: &[u8]) -> bool {
    const WORDS: &[&str] = &[
        "abort",
        "begin",
        "call",
        "close",
        "commit",
        "create",
        "deallocate",
        "declare",
        "discard",
        "do",
        "drop",
        "end",
        "execute",
        "into",
        "listen",
        "load",
        "prepare",
        "release",
        "reset",
        "rollback",
        "savepoint",
        "set",
        "start",
        "unlisten",
    ];
    w.len() <= 10 && WORDS.iter().any(|k| eq_word(w, k))
}

fn harmless_before_paren(w: &[u8]) -> bool {
    w.len() <= 30 && HARMLESS_BEFORE_PAREN.iter().any(|k| eq_word(w, k))
}

/// Analyse a query string (the text of a `Query` or `Parse` message).
pub fn analyze(sql: &[u8], dialect: Dialect) -> Analysis {
    if !worth_analysing(sql, dialect.encoding) {
        return Analysis::default();
    }
    let mut statements = Vec::new();
    let mut stmt: Vec<Token<'_>> = Vec::new();
    let mut lexer = Lexer {
        s: sql,
        i: 0,
        dialect,
        depth: 0,
        atomic: None,
        prev_word: None,
    };
    loop {
        let t = lexer.next();
        match t {
            Some(Token { tok: Tok::End, .. }) | None => {
                if !stmt.is_empty() {
                    statements.push(classify(sql, &stmt));
                    stmt.clear();
                }
                if t.is_none() {
                    break;
                }
            }
            Some(t) => stmt.push(t),
        }
    }
    if statements.iter().all(|s| *s == Statement::default()) {
        statements.clear();
    }
    Analysis { statements }
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    dialect: Dialect,
    /// Parentheses open (a `;` inside them does not end the statement: rule actions).
    depth: u32,
    /// Inside a `BEGIN ATOMIC` body: the `CASE` expressions open in it.
    atomic: Option<u32>,
    prev_word: Option<&'a [u8]>,
}

impl<'a> Lexer<'a> {
    fn next(&mut self) -> Option<Token<'a>> {
        let b = self.s;
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
                if self.depth == 0 && self.atomic.is_none() {
                    Tok::End
                } else {
                    Tok::Punct(b';')
                }
            }
            b'\'' => Tok::Str(self.quoted(b'\'', self.dialect.backslash_strings)),
            b'"' => Tok::Ident(self.quoted(b'"', false)),
            b'e' | b'E' if b.get(self.i + 1) == Some(&b'\'') => {
                self.i += 1;
                Tok::Str(self.quoted(b'\'', true))
            }
            b'$' if self.dollar_tag().is_some() => {
                let tag_len = self.dollar_tag().unwrap_or(1);
                let tag = &b[self.i..self.i + tag_len];
                let body_start = self.i + tag_len;
                match find(&b[body_start..], tag) {
                    Some(off) => {
                        self.i = body_start + off + tag_len;
                        Tok::Str(&b[body_start..body_start + off])
                    }
                    None => {
                        self.i = b.len();
                        Tok::Str(&b[body_start..])
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
                    self.i += self.dialect.encoding.char_len(b, self.i);
                }
                let w = &b[start..self.i];
                self.track_atomic(w);
                Tok::Word(w)
            }
            c if c.is_ascii_digit() => {
                while self.i < b.len() && (b[self.i].is_ascii_alphanumeric() || b[self.i] == b'.') {
                    self.i += 1;
                }
                Tok::Number
            }
            _ => {
                self.i += 1;
                match c {
                    b'(' => self.depth += 1,
                    b')' => self.depth = self.depth.saturating_sub(1),
                    _ => {}
                }
                Tok::Punct(c)
            }
        };
        if !matches!(tok, Tok::Word(_)) {
            self.prev_word = None;
        }
        Some(Token {
            tok,
            start,
            end: self.i,
        })
    }

    /// `BEGIN ATOMIC ... END` (a SQL-standard function body): its `;` end no statement.
    fn track_atomic(&mut self, w: &'a [u8]) {
        match &mut self.atomic {
            None => {
                if eq_word(w, "atomic") && self.prev_word.is_some_and(|p| eq_word(p, "begin")) {
                    self.atomic = Some(0);
                }
            }
            Some(cases) => {
                if eq_word(w, "case") {
                    *cases += 1;
                } else if eq_word(w, "end") {
                    if *cases == 0 {
                        self.atomic = None;
                    } else {
                        *cases -= 1;
                    }
                }
            }
        }
        self.prev_word = Some(w);
    }

    /// Length of a dollar-quote tag (`$$`, `$tag$`) starting at the cursor.
    fn dollar_tag(&self) -> Option<usize> {
        let b = self.s;
        let mut j = self.i + 1;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
            if j == self.i + 1 && b[j].is_ascii_digit() {
                return None; // `$1` is a parameter
            }
            j += self.dialect.encoding.char_len(b, j);
        }
        (j < b.len() && b[j] == b'$').then_some(j + 1 - self.i)
    }

    /// A quoted run starting at the cursor (on the opening quote); returns its content.
    fn quoted(&mut self, q: u8, backslash: bool) -> &'a [u8] {
        let b = self.s;
        self.i += 1;
        let start = self.i;
        while self.i < b.len() {
            if backslash && b[self.i] == b'\\' {
                self.i += 1;
                if self.i < b.len() {
                    self.i += self.dialect.encoding.char_len(b, self.i);
                }
                continue;
            }
            if b[self.i] == q {
                if b.get(self.i + 1) == Some(&q) {
                    self.i += 2;
                    continue;
                }
                let content = &b[start..self.i];
                self.i += 1;
                return content;
            }
            self.i += self.dialect.encoding.char_len(b, self.i);
        }
        self.i = b.len();
        b.get(start..).unwrap_or(&[])
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn word_is(t: Option<&Token<'_>>, w: &str) -> bool {
    matches!(t, Some(Token { tok: Tok::Word(x), .. }) if eq_word(x, w))
}

/// An identifier token (word or quoted), as the name PostgreSQL would use (unquoted words are
/// folded to lower case, ASCII only).
fn ident(t: Option<&Token<'_>>) -> Option<Vec<u8>> {
    match t?.tok {
        Tok::Word(w) => Some(w.to_ascii_lowercase()),
        Tok::Ident(w) => {
            let mut out = Vec::with_capacity(w.len());
            let mut i = 0;
            while i < w.len() {
                out.push(w[i]);
                i += if w[i] == b'"' && w.get(i + 1) == Some(&b'"') {
                    2
                } else {
                    1
                };
            }
            Some(out)
        }
        _ => None,
    }
}

/// A setting's name: ASCII only (anything else is no setting the gateway can carry).
fn setting_name(parts: &[Vec<u8>]) -> Option<String> {
    let joined = parts.join(&b'.');
    (joined.is_ascii() && !joined.is_empty()).then(|| String::from_utf8_lossy(&joined).into())
}

/// A possibly qualified name starting at `i`: its parts and the index after it.
fn qualified(toks: &[Token<'_>], mut i: usize) -> Option<(Vec<Vec<u8>>, usize)> {
    let mut parts = vec![ident(toks.get(i))?];
    i += 1;
    while matches!(
        toks.get(i),
        Some(Token {
            tok: Tok::Punct(b'.'),
            ..
        })
    ) {
        parts.push(ident(toks.get(i + 1))?);
        i += 2;
    }
    Some((parts, i))
}

fn classify(sql: &[u8], t: &[Token<'_>]) -> Statement {
    let mut out = Statement::default();
    calls(t, &mut out);
    let Some(Token {
        tok: Tok::Word(first),
        ..
    }) = t.first()
    else {
        return out;
    };
    let w = |i: usize, s: &str| word_is(t.get(i), s);
    let first = first.to_ascii_lowercase();
    match first.as_slice() {
        b"set" => classify_set(sql, t, &mut out),
        b"reset" => {
            if w(1, "all") {
                out.effects.push(Effect::ResetAll);
            } else if w(1, "role") || (w(1, "session") && w(2, "authorization")) {
                out.check = true;
            } else if w(1, "time") && w(2, "zone") {
                out.effects.push(Effect::Reset("timezone".into()));
            } else if let Some(name) = qualified(t, 1).and_then(|(p, _)| setting_name(&p)) {
                out.effects.push(Effect::Reset(name));
            }
        }
        b"create" | b"drop" | b"do" | b"call" | b"listen" | b"unlisten" | b"close" | b"execute" => {
            out.check = true
        }
        // `SELECT ... INTO [TEMP] t` creates a table.
        b"select" | b"with" | b"table" | b"values"
            if t.iter().any(|x| word_is(Some(x), "into")) =>
        {
            out.check = true
        }
        b"declare"
            if t.windows(2)
                .any(|x| word_is(Some(&x[0]), "with") && word_is(Some(&x[1]), "hold")) =>
        {
            out.check = true
        }
        b"prepare" => {
            if w(1, "transaction") {
                out.control = Some(Control::Prepare);
            } else {
                out.check = true;
            }
        }
        b"deallocate" => {
            out.check = true;
            let i = if w(1, "prepare") { 2 } else { 1 };
            if w(i, "all") {
                out.effects.push(Effect::DeallocateAll);
            } else if let Some(name) = ident(t.get(i)) {
                out.effects.push(Effect::Deallocate(name));
            }
        }
        b"discard" => {
            if w(1, "all") {
                out.effects.push(Effect::DiscardAll);
                out.check = true;
            } else if w(1, "temp") || w(1, "temporary") {
                out.check = true;
            }
        }
        b"load" => out.effects.push(Effect::Library),
        b"begin" => out.control = Some(Control::Begin),
        b"start" if w(1, "transaction") => out.control = Some(Control::Begin),
        b"commit" | b"end" if !w(1, "prepared") => out.control = Some(Control::Commit),
        b"rollback" | b"abort" => {
            let mut i = 1;
            if w(i, "work") || w(i, "transaction") {
                i += 1;
            }
            if w(i, "prepared") {
                // Another transaction's business.
            } else if w(i, "to") {
                i += 1;
                if w(i, "savepoint") {
                    i += 1;
                }
                match ident(t.get(i)) {
                    Some(name) => out.control = Some(Control::RollbackTo(name)),
                    None => out.check = true,
                }
            } else {
                out.control = Some(Control::Rollback);
            }
        }
        b"savepoint" => match ident(t.get(1)) {
            Some(name) => out.control = Some(Control::Savepoint(name)),
            None => out.check = true,
        },
        b"release" => {
            let i = if w(1, "savepoint") { 2 } else { 1 };
            match ident(t.get(i)) {
                Some(name) => out.control = Some(Control::Release(name)),
                None => out.check = true,
            }
        }
        _ => {}
    }
    out
}

/// Function calls anywhere in the statement: advisory locks and `set_config` by name, anything
/// not known to be harmless as a call the gateway cannot see into.
fn calls(t: &[Token<'_>], out: &mut Statement) {
    for (i, x) in t.iter().enumerate() {
        if !matches!(x.tok, Tok::Punct(b'(')) || i == 0 {
            continue;
        }
        let name = match t[i - 1].tok {
            Tok::Word(w) => w,
            // A quoted name: a function of the tenant's.
            Tok::Ident(_) => {
                out.check = true;
                continue;
            }
            _ => continue,
        };
        let qualified_by =
            (i >= 3 && matches!(t[i - 2].tok, Tok::Punct(b'.'))).then(|| match t[i - 3].tok {
                Tok::Word(s) | Tok::Ident(s) => s,
                _ => b"",
            });
        let name = name.to_ascii_lowercase();
        match name.as_slice() {
            b"set_config" => {
                if !set_config_is_local(&t[i..]) {
                    out.effects.push(Effect::Untracked("set_config()".into()));
                    out.check = true;
                }
            }
            b"pg_advisory_lock"
            | b"pg_advisory_lock_shared"
            | b"pg_try_advisory_lock"
            | b"pg_try_advisory_lock_shared"
            | b"pg_advisory_unlock"
            | b"pg_advisory_unlock_shared"
            | b"pg_advisory_unlock_all" => out.check = true,
            _ => {
                // `INSERT INTO [s.]t (a, b)` and the like: a column list, not a call.
                let name_at = if qualified_by.is_some() { i - 3 } else { i - 1 };
                let column_list = name_at >= 1
                    && ["into", "table", "references", "only"]
                        .iter()
                        .any(|k| word_is(t.get(name_at - 1), k));
                let harmless = match qualified_by {
                    Some(schema) => schema.eq_ignore_ascii_case(b"pg_catalog"),
                    None => harmless_before_paren(&name),
                };
                if !column_list && !harmless {
                    out.check = true;
                }
            }
        }
    }
}

/// `set_config(name, value, is_local)` with `is_local` true (tokens from the `(`).
fn set_config_is_local(t: &[Token<'_>]) -> bool {
    let mut depth = 0i32;
    let mut last: Option<&[u8]> = None;
    for x in t {
        match x.tok {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') => {
                depth -= 1;
                if depth <= 0 {
                    break;
                }
            }
            Tok::Word(w) | Tok::Str(w) if depth == 1 => last = Some(w),
            _ if depth == 1 => last = None,
            _ => {}
        }
    }
    last.is_some_and(|w| {
        [b"true" as &[u8], b"t", b"on", b"yes"]
            .iter()
            .any(|k| w.eq_ignore_ascii_case(k))
    })
}

fn classify_set(sql: &[u8], t: &[Token<'_>], out: &mut Statement) {
    let w = |i: usize, s: &str| word_is(t.get(i), s);
    let mut i = 1;
    if w(i, "local") || w(i, "transaction") || w(i, "constraints") {
        return; // transaction-scoped
    }
    if w(i, "session") {
        if w(i + 1, "characteristics") {
            out.effects
                .push(Effect::Untracked("session characteristics".into()));
            return;
        }
        if w(i + 1, "authorization") {
            out.check = true;
            return;
        }
        i += 1;
    }
    if w(i, "role") {
        out.check = true;
        return;
    }
    let untracked = |out: &mut Statement, name: &str| {
        out.effects.push(Effect::Untracked(name.to_string()));
    };
    let (name, value_at) = if w(i, "time") && w(i + 1, "zone") {
        ("timezone".to_string(), i + 2)
    } else if w(i, "names") {
        ("client_encoding".to_string(), i + 1)
    } else if w(i, "schema") {
        ("search_path".to_string(), i + 1)
    } else {
        let Some((parts, next)) = qualified(t, i) else {
            untracked(out, "SET");
            return;
        };
        let Some(name) = setting_name(&parts) else {
            untracked(out, "SET");
            return;
        };
        let ok = w(next, "to")
            || matches!(
                t.get(next),
                Some(Token {
                    tok: Tok::Punct(b'='),
                    ..
                })
            );
        if !ok {
            untracked(out, &name);
            return;
        }
        (name, next + 1)
    };
    let Some(first) = t.get(value_at) else {
        untracked(out, &name);
        return;
    };
    if t.len() == value_at + 1 && (w(value_at, "default") || w(value_at, "local")) {
        out.effects.push(Effect::Reset(name));
        return;
    }
    if w(value_at, "from") && w(value_at + 1, "current") {
        untracked(out, &name);
        return;
    }
    let last = t.last().unwrap_or(first);
    let value = sql.get(first.start..last.end).unwrap_or(&[]).trim_ascii();
    if value.is_empty() {
        untracked(out, &name);
        return;
    }
    out.effects.push(Effect::Set {
        name,
        value: value.to_vec(),
    });
}

/// Quote `value` as a SQL string literal (standard conforming strings). Works on the bytes of
/// any client encoding PostgreSQL supports: a quote is never the second byte of a character.
pub fn quote_literal(value: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(value.len() + 2);
    s.push(b'\'');
    for &c in value {
        if c == b'\'' {
            s.push(b'\'');
        }
        s.push(c);
    }
    s.push(b'\'');
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

/// The check query's row ([`CHECK_QUERY`]): what state the backend holds, by kind, with
/// names where they are known. `settings` are the names of settings changed in the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendState {
    /// Pinned state found, by kind.
    pub pins: std::collections::BTreeMap<PinKind, std::collections::BTreeSet<String>>,
    /// Settings whose source is the session.
    pub settings: Vec<String>,
}

/// Read the check query's `DataRow` columns (`None`: NULL).
pub fn backend_state(columns: &[Option<&[u8]>]) -> Option<BackendState> {
    if columns.len() != 7 {
        return None;
    }
    let list = |c: Option<&[u8]>| -> Vec<String> {
        c.map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
    };
    let mut st = BackendState::default();
    for (kind, col) in [
        (PinKind::TempTable, 0),
        (PinKind::Listen, 1),
        (PinKind::SqlPrepare, 2),
        (PinKind::HoldCursor, 3),
    ] {
        let names = list(columns[col]);
        if !names.is_empty() {
            st.pins.insert(kind, names.into_iter().collect());
        }
    }
    let locks: u64 = std::str::from_utf8(columns[4]?).ok()?.parse().ok()?;
    if locks > 0 {
        st.pins
            .insert(PinKind::AdvisoryLock, [locks.to_string()].into());
    }
    let role = columns[5]?;
    if role != b"none" {
        st.pins.insert(
            PinKind::Role,
            [String::from_utf8_lossy(role).into_owned()].into(),
        );
    }
    st.settings = list(columns[6]);
    Some(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn an(sql: &str) -> Analysis {
        analyze(sql.as_bytes(), Dialect::default())
    }

    fn fx(sql: &str) -> Vec<Effect> {
        an(sql)
            .statements
            .into_iter()
            .flat_map(|s| s.effects)
            .collect()
    }

    fn checks(sql: &str) -> bool {
        an(sql).wants_check()
    }

    fn controls(sql: &str) -> Vec<Option<Control>> {
        an(sql).statements.into_iter().map(|s| s.control).collect()
    }

    fn set(name: &str, value: &str) -> Effect {
        Effect::Set {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn plain_queries_need_nothing() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)",
            "SELECT count(*), coalesce(max(a), 0), lower(b) FROM t WHERE c IN (1, 2) AND EXISTS (SELECT 1)",
            "select 'create temp table x' -- listen y\n",
            "  ",
        ] {
            assert_eq!(an(sql), Analysis::default(), "{sql}");
        }
    }

    #[test]
    fn sets_are_tracked_with_their_sql_value() {
        assert_eq!(
            fx("SET search_path TO app, public"),
            vec![set("search_path", "app, public")]
        );
        assert_eq!(
            fx("set SESSION myapp.user_id = '42';"),
            vec![set("myapp.user_id", "'42'")]
        );
        assert_eq!(fx("SET TIME ZONE 'UTC'"), vec![set("timezone", "'UTC'")]);
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
        assert_eq!(
            fx("SET x FROM CURRENT"),
            vec![Effect::Untracked("x".into())]
        );
        assert_eq!(
            fx("select set_config('a.b', '1', false)"),
            vec![Effect::Untracked("set_config()".into())]
        );
        assert_eq!(fx("select set_config('a.b', '1', true)"), vec![]);
        assert!(!checks("select set_config('a.b', '1', true)"));
        assert!(checks("SET ROLE admin") && checks("RESET ROLE"));
    }

    #[test]
    fn statements_that_may_change_backend_state_want_a_check() {
        for sql in [
            "CREATE TEMP TABLE scratch (a int)",
            "create temporary table if not exists \"Tmp\" as select 1",
            "DROP TABLE IF EXISTS a, s.b",
            "DO $$ BEGIN CREATE TEMP TABLE t (a int); END $$",
            "SELECT 1 AS a INTO TEMP t",
            "WITH x AS (SELECT 1) SELECT * INTO TEMPORARY t FROM x",
            "CALL p()",
            "LISTEN jobs",
            "UNLISTEN *",
            "PREPARE q(int) AS SELECT $1",
            "EXECUTE q(1)",
            "DEALLOCATE q",
            "SELECT pg_advisory_lock(1)",
            "select pg_advisory_unlock_all()",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CLOSE c",
            "DISCARD TEMP",
            "SELECT my_function(1)",
            "SELECT \"MyFunc\"()",
            "SELECT app.count(1)",
            "SELECT * FROM make_things(3)",
        ] {
            assert!(checks(sql), "{sql}");
        }
        for sql in [
            "SELECT pg_advisory_xact_lock(1)",
            "DECLARE c CURSOR FOR SELECT 1",
            "SELECT pg_catalog.count(*) FROM t",
            "INSERT INTO t (a) SELECT generate_series(1, 3)",
            "INSERT INTO app.t (a, b) VALUES (1, 2)",
            "INSERT INTO t (id) VALUES (nextval('t_id_seq'))",
        ] {
            assert!(!checks(sql), "{sql}");
        }
    }

    #[test]
    fn transaction_control_is_told_apart() {
        assert_eq!(
            controls(
                "BEGIN; SET a = 1; SAVEPOINT s1; ROLLBACK TO SAVEPOINT s1; RELEASE s1; COMMIT"
            ),
            vec![
                Some(Control::Begin),
                None,
                Some(Control::Savepoint(b"s1".to_vec())),
                Some(Control::RollbackTo(b"s1".to_vec())),
                Some(Control::Release(b"s1".to_vec())),
                Some(Control::Commit),
            ]
        );
        assert_eq!(
            controls("start transaction; set a = 1; rollback work to \"S\"; abort"),
            vec![
                Some(Control::Begin),
                None,
                Some(Control::RollbackTo(b"S".to_vec())),
                Some(Control::Rollback),
            ]
        );
        assert_eq!(controls("SET a = 1; COMMIT PREPARED 'x'"), vec![None, None]);
        assert_eq!(
            controls("SET a = 1; PREPARE TRANSACTION 'x'"),
            vec![None, Some(Control::Prepare)]
        );
        assert_eq!(
            controls("SET a = 1; END"),
            vec![None, Some(Control::Commit)]
        );
    }

    #[test]
    fn statement_boundaries() {
        // Parenthesised rule actions and SQL-standard function bodies hold semicolons.
        let a = an("CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO u VALUES (1); INSERT INTO u VALUES (2)); SET a = 1");
        assert_eq!(a.statements.len(), 2);
        let a = an("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; SET a = 1");
        assert_eq!(a.statements.len(), 2, "{a:?}");
        assert_eq!(a.statements[1].effects, vec![set("a", "1")]);
        assert_eq!(an("set a = 1;; ;select 2").statements.len(), 2);
    }

    #[test]
    fn quoting_and_comments_are_respected() {
        assert_eq!(
            fx("/* set x = 1; */ SELECT $$; SET a = 1 $$, E'\\'; set b = 2'"),
            vec![]
        );
        assert_eq!(fx("SELECT $t$ ; $t$; SET c = 3"), vec![set("c", "3")]);
        assert_eq!(an("select $1; set x = 1").statements.len(), 2);
        assert_eq!(quote_literal(b"it's"), b"'it''s'");
        assert!(plain_name("myapp.user_id"));
        assert!(!plain_name("x; drop"));
    }

    #[test]
    fn deallocate_is_recognised_alone() {
        assert_eq!(
            an("DEALLOCATE PREPARE q").sole_deallocate(),
            Some(&b"q"[..])
        );
        assert_eq!(an("deallocate all").sole_deallocate(), None);
        assert_eq!(an("DEALLOCATE q; SELECT 1").sole_deallocate(), None);
    }

    #[test]
    fn multibyte_encodings_do_not_hide_syntax_or_invent_it() {
        // Shift JIS: ソ is 0x83 0x5C, whose second byte is a backslash; 能 is 0x94 0x5C.
        let sjis = Dialect {
            encoding: ClientEncoding::from_name(b"SJIS"),
            backslash_strings: false,
        };
        let q = b"SET application_name = E'\x83\x5C'; SET a = 1".to_vec();
        let a = analyze(&q, sjis);
        assert_eq!(a.statements.len(), 2, "{a:?}");
        assert_eq!(
            a.statements[0].effects,
            vec![Effect::Set {
                name: "application_name".into(),
                value: b"E'\x83\x5C'".to_vec()
            }]
        );
        // JOHAB: a second byte may be a semicolon.
        let johab = Dialect {
            encoding: ClientEncoding::from_name(b"JOHAB"),
            backslash_strings: false,
        };
        let a = analyze(b"SET app.x = \x88\x3B; SET b = 2", johab);
        assert_eq!(a.statements.len(), 2, "{a:?}");
        // LATIN9 and EUC_JP: every ASCII byte is ASCII.
        let latin9 = Dialect {
            encoding: ClientEncoding::from_name(b"LATIN9"),
            backslash_strings: false,
        };
        assert_eq!(
            analyze(b"SET app.name = 'caf\xe9'", latin9).statements[0].effects,
            vec![Effect::Set {
                name: "app.name".into(),
                value: b"'caf\xe9'".to_vec()
            }]
        );
        assert_eq!(
            ClientEncoding::from_name(b"euc_jp"),
            ClientEncoding::AsciiSafe
        );
        assert_eq!(
            ClientEncoding::from_name(b"Shift_JIS"),
            ClientEncoding::Sjis
        );
        assert_eq!(
            ClientEncoding::from_name(b"GB18030"),
            ClientEncoding::Gb18030
        );
    }

    #[test]
    fn backslashes_escape_when_standard_conforming_strings_is_off() {
        let sql = b"SELECT 'a\\' ; SET x = 1; SELECT 'b'";
        let off = Dialect {
            encoding: ClientEncoding::AsciiSafe,
            backslash_strings: true,
        };
        // Off: the backslash escapes the quote, and `SET x` is inside the string.
        assert_eq!(analyze(sql, off), Analysis::default());
        let on = analyze(sql, Dialect::default());
        assert_eq!(on.statements.len(), 3, "{on:?}");
        assert_eq!(on.statements[1].effects, vec![set("x", "1")]);
    }

    #[test]
    fn the_check_row_is_read() {
        let row: Vec<Option<&[u8]>> = vec![
            Some(b"p1,p2"),
            None,
            Some(b"q"),
            None,
            Some(b"2"),
            Some(b"none"),
            Some(b"search_path,app.x"),
        ];
        let st = backend_state(&row).unwrap();
        assert_eq!(
            st.pins.keys().copied().collect::<Vec<_>>(),
            vec![
                PinKind::TempTable,
                PinKind::SqlPrepare,
                PinKind::AdvisoryLock
            ]
        );
        assert_eq!(st.settings, vec!["search_path", "app.x"]);
        let clean: Vec<Option<&[u8]>> =
            vec![None, None, None, None, Some(b"0"), Some(b"none"), None];
        assert_eq!(backend_state(&clean).unwrap(), BackendState::default());
        assert!(backend_state(&clean[..3]).is_none());
    }

    proptest! {
        #[test]
        fn never_panics(s in proptest::collection::vec(any::<u8>(), 0..200), enc in 0u8..4, bs in any::<bool>()) {
            let encoding = [ClientEncoding::AsciiSafe, ClientEncoding::Sjis, ClientEncoding::DoubleByte, ClientEncoding::Gb18030][enc as usize];
            let _ = analyze(&s, Dialect { encoding, backslash_strings: bs });
        }

        #[test]
        fn never_panics_on_sql_like_input(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("set "), Just("create temp table "), Just("'"), Just("\""), Just("$$"),
                    Just("$a$"), Just("--"), Just("/*"), Just("*/"), Just(";"), Just("e'\\"),
                    Just("listen "), Just("set_config("), Just(", true)"), Just("to "), Just("x"),
                    Just("."), Just("é"), Just("drop table "), Just("begin atomic "), Just("end"),
                    Just("("), Just(")"), Just("case "), Just("savepoint "), Just("rollback to "),
                ],
                0..30,
            )
        ) {
            let _ = analyze(parts.concat().as_bytes(), Dialect::default());
        }
    }
}

//! What the SQL wire-protocol parsers ([`super::postgres`], [`super::mysql`])
//! share: the query-text sanitizer, operation / collection / summary
//! extraction, DB span assembly, a length-prefixed message framer that copes
//! with captured prefixes, and a bounded statement cache.
//!
//! # Sanitizer rules
//! * String literals become `?`: `'...'` (`''` escapes; backslash escapes too
//!   in MySQL, which is its default), `E'...'` (backslash escapes), `B'..'`,
//!   `X'..'`, `N'..'`, `U&'..'`, MySQL `_charset'..'` introducers, PostgreSQL
//!   dollar quotes `$tag$...$tag$`, and MySQL `"..."` (a string there unless
//!   ANSI_QUOTES is on, so treating it as a literal is the safe reading).
//! * Numeric literals become `?`: integers, decimals, exponents, `0x..` hex,
//!   `0b..` bits. A sign stays an operator (`-5` gives `-?`).
//! * `TRUE`, `FALSE` and `NULL` stay: they are keywords, they carry no data
//!   worth hiding and they change a query's meaning.
//! * Placeholders stay: `$1`, `?`, `:name`. Identifiers stay, including ones
//!   with digits (`t1`) and quoted ones (`"Items"`, `` `items` ``).
//! * Comments (`-- ..`, `/* .. */`, MySQL `# ..`) are removed: they can hold
//!   anything, including secrets. Runs of whitespace collapse to one space.
//! * `IN (?, ?, ?)` collapses to `IN (?)` when every element was a literal or
//!   a `?`, so list length does not multiply cardinality. `$n` lists stay.
//! * Unterminated quotes or comments (captured text is often cut) are
//!   sanitized to the end of the text; nothing here can panic.
//!
//! # Operation and collection
//! * `db.operation.name` is the first keyword of the statement, uppercased
//!   (leading parentheses skipped); `WITH ... SELECT|INSERT|UPDATE|DELETE|MERGE`
//!   gives the main statement's keyword.
//! * Several statements in one query text (`BEGIN; UPDATE ..; COMMIT`) are a
//!   batch: operation `BATCH <OP>` when all share one keyword, else `BATCH`,
//!   no collection, and `db.operation.batch.size` is set.
//! * `db.collection.name` is set only when there is one obvious table: the
//!   target of `INSERT/REPLACE [INTO] t`, `UPDATE t`, `DELETE FROM t`,
//!   `MERGE INTO t`, `TRUNCATE [TABLE] t`, `COPY t`, `TABLE t`,
//!   `CREATE|DROP|ALTER TABLE t`, or the single table of a top-level
//!   `SELECT ... FROM t`. A join, a comma list, a subquery or function in
//!   FROM, a set operation naming another table, a CTE name, or a query cut
//!   before its FROM clause closed all leave it absent. Quoting is stripped
//!   and a schema prefix kept (`"public"."Items"` gives `public.Items`), as
//!   semconv asks for names parsed from query text.
//! * `db.query.summary` is `<operation> <collection>` or just the operation.
use std::{collections::HashMap, hash::Hash, sync::Arc};

use super::Chunk;
use crate::model::{AttrValue, Attribute, ParsedSpan, SpanKind, SpanStatus};

/// Query text bytes kept per statement; longer text is cut and marked with
/// `waggle.db.query.truncated`.
pub const MAX_QUERY_TEXT: usize = 4096;
/// Longest collection name reported (longer ones are not "obvious").
const MAX_COLLECTION: usize = 128;
/// Longest operation keyword accepted.
const MAX_OPERATION: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Word,
    QuotedIdent,
    Literal,
    Number,
    Param,
    Punct,
    /// Whitespace or a comment.
    Space,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

fn is_ident_start(b: u8, dialect: Dialect) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 || (dialect == Dialect::MySql && b == b'$')
}

fn is_ident_cont(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Index just past a quoted run opened at `i` (`s[i] == quote`); a doubled
/// quote is an escaped one, and so is a backslashed one when `backslash`.
/// Unterminated runs end at the end of the text.
fn scan_quoted(s: &[u8], i: usize, quote: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < s.len() {
        let c = s[j];
        if backslash && c == b'\\' {
            j += 2;
            continue;
        }
        if c == quote {
            if s.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    s.len()
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from >= haystack.len() {
        return None;
    }
    haystack[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Splits SQL into tokens. Token boundaries only fall next to ASCII bytes or
/// at the ends, so slicing the `&str` at them is always valid.
fn tokenize(sql: &str, dialect: Dialect) -> Vec<Token> {
    let s = sql.as_bytes();
    let n = s.len();
    let mut out = Vec::with_capacity(n / 3 + 1);
    let mut i = 0;
    while i < n {
        let c = s[i];
        let start = i;
        let kind;
        if c.is_ascii_whitespace() {
            while i < n && s[i].is_ascii_whitespace() {
                i += 1;
            }
            kind = Kind::Space;
        } else if (c == b'-' && s.get(i + 1) == Some(&b'-')) || (c == b'#' && dialect == Dialect::MySql) {
            while i < n && s[i] != b'\n' {
                i += 1;
            }
            kind = Kind::Space;
        } else if c == b'/' && s.get(i + 1) == Some(&b'*') {
            i += 2;
            let mut depth = 1usize;
            while i < n && depth > 0 {
                if s[i] == b'*' && s.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                } else if dialect == Dialect::Postgres && s[i] == b'/' && s.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            i = i.min(n);
            kind = Kind::Space;
        } else if c == b'\'' {
            i = scan_quoted(s, i, b'\'', dialect == Dialect::MySql).min(n);
            kind = Kind::Literal;
        } else if c == b'"' {
            if dialect == Dialect::MySql {
                i = scan_quoted(s, i, b'"', true).min(n);
                kind = Kind::Literal;
            } else {
                i = scan_quoted(s, i, b'"', false).min(n);
                kind = Kind::QuotedIdent;
            }
        } else if c == b'`' {
            i = scan_quoted(s, i, b'`', false).min(n);
            kind = Kind::QuotedIdent;
        } else if c == b'$' && dialect == Dialect::Postgres {
            let mut j = i + 1;
            if j < n && s[j].is_ascii_digit() {
                while j < n && s[j].is_ascii_digit() {
                    j += 1;
                }
                i = j;
                kind = Kind::Param;
            } else {
                while j < n
                    && (s[j].is_ascii_alphabetic()
                        || s[j] == b'_'
                        || s[j] >= 0x80
                        || (j > i + 1 && s[j].is_ascii_digit()))
                {
                    j += 1;
                }
                if j < n && s[j] == b'$' {
                    let tag = &s[i..=j];
                    i = match find(s, tag, j + 1) {
                        Some(close) => close + tag.len(),
                        None => n,
                    };
                    kind = Kind::Literal;
                } else {
                    i += 1;
                    kind = Kind::Punct;
                }
            }
        } else if c == b'?' {
            i += 1;
            kind = Kind::Param;
        } else if c.is_ascii_digit() || (c == b'.' && s.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            i = scan_number(s, i);
            if dialect == Dialect::MySql && i < n && is_ident_start(s[i], dialect) {
                // MySQL identifiers may start with digits (`1st_table`).
                while i < n && is_ident_cont(s[i]) {
                    i += 1;
                }
                kind = Kind::Word;
            } else {
                kind = Kind::Number;
            }
        } else if is_ident_start(c, dialect) {
            while i < n && is_ident_cont(s[i]) {
                i += 1;
            }
            let word = &s[start..i];
            let next = s.get(i).copied();
            if next == Some(b'\'') && is_literal_prefix(word, dialect) {
                let backslash = dialect == Dialect::MySql || word.eq_ignore_ascii_case(b"e");
                i = scan_quoted(s, i, b'\'', backslash).min(n);
                kind = Kind::Literal;
            } else if next == Some(b'&') && s.get(i + 1) == Some(&b'\'') && word.eq_ignore_ascii_case(b"u") {
                i = scan_quoted(s, i + 1, b'\'', false).min(n);
                kind = Kind::Literal;
            } else {
                kind = Kind::Word;
            }
        } else {
            i += 1;
            kind = Kind::Punct;
        }
        out.push(Token { kind, start, end: i });
    }
    out
}

fn is_literal_prefix(word: &[u8], dialect: Dialect) -> bool {
    let single = word.len() == 1 && matches!(word[0].to_ascii_lowercase(), b'b' | b'x' | b'n' | b'e');
    match dialect {
        Dialect::Postgres => single,
        // `_utf8mb4'..'` charset introducers; MySQL has no E'' strings.
        Dialect::MySql => (single && !word.eq_ignore_ascii_case(b"e")) || (word.len() > 1 && word[0] == b'_'),
    }
}

fn scan_number(s: &[u8], mut i: usize) -> usize {
    let n = s.len();
    if s[i] == b'0' {
        let radix = s.get(i + 1).map(u8::to_ascii_lowercase);
        let digit_ok: Option<fn(&u8) -> bool> = match radix {
            Some(b'x') => Some(u8::is_ascii_hexdigit),
            Some(b'b') => Some(|b: &u8| *b == b'0' || *b == b'1'),
            _ => None,
        };
        if let Some(ok) = digit_ok {
            if s.get(i + 2).is_some_and(ok) {
                i += 2;
                while i < n && ok(&s[i]) {
                    i += 1;
                }
                return i;
            }
        }
    }
    while i < n && s[i].is_ascii_digit() {
        i += 1;
    }
    if i < n && s[i] == b'.' {
        i += 1;
        while i < n && s[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < n && (s[i] == b'e' || s[i] == b'E') {
        let mut j = i + 1;
        if j < n && (s[j] == b'+' || s[j] == b'-') {
            j += 1;
        }
        if j < n && s[j].is_ascii_digit() {
            while j < n && s[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    i
}

fn is_hidden(t: &Token) -> bool {
    matches!(t.kind, Kind::Literal | Kind::Number)
}

/// Replaces literals with `?` and drops comments; see the module docs.
pub fn sanitize(sql: &str, dialect: Dialect) -> String {
    let tokens = tokenize(sql, dialect);
    render(sql, &tokens, true)
}

/// Renders tokens back to text, collapsing whitespace; with `hide`, literals
/// become `?` and `IN` lists of them collapse.
fn render(sql: &str, tokens: &[Token], hide: bool) -> String {
    let mut out = String::with_capacity(sql.len().min(MAX_QUERY_TEXT + 16));
    let mut pending_space = false;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        if t.kind == Kind::Space {
            pending_space = !out.is_empty();
            i += 1;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        let text = &sql[t.start..t.end];
        if hide && is_hidden(&t) {
            out.push('?');
        } else {
            out.push_str(text);
        }
        if hide && t.kind == Kind::Word && text.eq_ignore_ascii_case("in") {
            if let Some(after) = collapsible_in_list(sql, tokens, i + 1) {
                out.push_str(" (?)");
                i = after;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// If `tokens[from..]` is `(` lit {, lit} `)` (spaces allowed) where every lit
/// is a literal or `?`, the index after `)`.
fn collapsible_in_list(sql: &str, tokens: &[Token], from: usize) -> Option<usize> {
    let mut i = from;
    let skip = |i: &mut usize| {
        while tokens.get(*i).is_some_and(|t| t.kind == Kind::Space) {
            *i += 1;
        }
    };
    let punct = |t: Option<&Token>, c: &str| t.is_some_and(|t| t.kind == Kind::Punct && &sql[t.start..t.end] == c);
    skip(&mut i);
    if !punct(tokens.get(i), "(") {
        return None;
    }
    i += 1;
    loop {
        skip(&mut i);
        let t = tokens.get(i)?;
        let plain = is_hidden(t) || (t.kind == Kind::Param && &sql[t.start..t.end] == "?");
        if !plain {
            return None;
        }
        i += 1;
        skip(&mut i);
        if punct(tokens.get(i), ")") {
            return Some(i + 1);
        }
        if !punct(tokens.get(i), ",") {
            return None;
        }
        i += 1;
    }
}

/// A statement as the parsers remember and report it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct QueryInfo {
    /// Sanitized text (raw with `raw_sql`), at most [`MAX_QUERY_TEXT`] bytes of input.
    pub text: String,
    /// The text is a prefix of the real query.
    pub truncated: bool,
    pub operation: Option<String>,
    pub collection: Option<String>,
    pub summary: Option<String>,
    /// Statements in the text (more than one: a batch).
    pub statements: usize,
}

impl QueryInfo {
    /// Bytes this entry keeps alive (for cache budgets).
    pub fn weight(&self) -> usize {
        self.text.len() + 64
    }
}

/// Builds the reportable form of a query text captured from the wire.
/// `truncated` says the bytes are only a prefix of the query.
pub fn analyze_query(raw: &[u8], mut truncated: bool, dialect: Dialect, raw_sql: bool) -> QueryInfo {
    let raw = if raw.len() > MAX_QUERY_TEXT {
        truncated = true;
        &raw[..MAX_QUERY_TEXT]
    } else {
        raw
    };
    let sql = String::from_utf8_lossy(raw);
    let tokens = tokenize(&sql, dialect);
    let text = render(&sql, &tokens, !raw_sql);
    let statements = split_statements(&tokens, &sql);
    let count = statements.len();
    let (operation, collection) = match statements.as_slice() {
        [] => (None, None),
        [only] => {
            let a = analyze_statement(&sql, only, truncated);
            (a.0, a.1)
        }
        many => {
            let ops: Vec<Option<String>> = many
                .iter()
                .enumerate()
                .map(|(k, st)| analyze_statement(&sql, st, truncated && k + 1 == many.len()).0)
                .collect();
            let first = ops.first().cloned().flatten();
            let same = first.is_some() && ops.iter().all(|o| *o == first);
            let op = match (same, first) {
                (true, Some(op)) => format!("BATCH {op}"),
                _ => "BATCH".to_owned(),
            };
            (Some(op), None)
        }
    };
    let summary = match (&operation, &collection) {
        (Some(op), Some(coll)) => Some(format!("{op} {coll}")),
        (Some(op), None) => Some(op.clone()),
        _ => None,
    };
    QueryInfo { text, truncated, operation, collection, summary, statements: count }
}

/// Non-space tokens of each non-empty `;`-separated statement.
fn split_statements<'t>(tokens: &'t [Token], sql: &str) -> Vec<Vec<&'t Token>> {
    let mut out = Vec::new();
    let mut cur: Vec<&Token> = Vec::new();
    for t in tokens {
        match t.kind {
            Kind::Space => {}
            Kind::Punct if &sql[t.start..t.end] == ";" => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(t),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Cursor over one statement's significant tokens.
struct Stmt<'a> {
    sql: &'a str,
    toks: &'a [&'a Token],
    /// The text was cut: the last token may be partial and clauses may be missing.
    truncated: bool,
}

impl<'a> Stmt<'a> {
    fn text(&self, i: usize) -> Option<&'a str> {
        self.toks.get(i).map(|t| &self.sql[t.start..t.end])
    }
    fn is_word(&self, i: usize, w: &str) -> bool {
        self.toks.get(i).is_some_and(|t| t.kind == Kind::Word)
            && self.text(i).is_some_and(|t| t.eq_ignore_ascii_case(w))
    }
    fn is_punct(&self, i: usize, p: &str) -> bool {
        self.toks.get(i).is_some_and(|t| t.kind == Kind::Punct) && self.text(i) == Some(p)
    }
    /// Whether token `i` is complete (not cut by truncation).
    fn complete(&self, i: usize) -> bool {
        i < self.toks.len() && !(self.truncated && i + 1 == self.toks.len())
    }
    fn skip_words(&self, mut i: usize, words: &[&str]) -> usize {
        while words.iter().any(|w| self.is_word(i, w)) {
            i += 1;
        }
        i
    }

    fn name(&self, i: usize) -> Option<(String, usize)> {
        self.name_with(i, false)
    }

    /// Token `i` as an identifier: quotes stripped, doubled quotes undone.
    fn ident(&self, i: usize) -> String {
        let Some(text) = self.text(i) else {
            return String::new();
        };
        if self.toks[i].kind != Kind::QuotedIdent {
            return text.to_owned();
        }
        let inner = text.get(1..text.len().saturating_sub(1)).unwrap_or("");
        let q = text.get(..1).unwrap_or("\"");
        inner.replace(&format!("{q}{q}"), q)
    }

    /// A table name (`a`, `"A"`, `s.t`) at `i`: (name, index after it).
    /// Names followed by `(` are function calls, not tables, unless
    /// `column_list` (as after `INSERT INTO t`).
    fn name_with(&self, mut i: usize, column_list: bool) -> Option<(String, usize)> {
        let mut name = String::new();
        loop {
            let t = self.toks.get(i)?;
            if !self.complete(i) {
                return None;
            }
            let text = self.text(i)?;
            match t.kind {
                Kind::Word => {
                    if is_reserved(text) {
                        return None;
                    }
                    name.push_str(text);
                }
                Kind::QuotedIdent => {
                    let ident = self.ident(i);
                    if ident.is_empty() {
                        return None;
                    }
                    name.push_str(&ident);
                }
                _ => return None,
            }
            i += 1;
            if self.is_punct(i, ".") {
                name.push('.');
                i += 1;
                continue;
            }
            break;
        }
        if (self.is_punct(i, "(") && !column_list) || name.len() > MAX_COLLECTION {
            return None;
        }
        if self.truncated && i >= self.toks.len() {
            // `FROM items` cut here might have continued as `items_archive`
            // or `items.x`; only a following token proves the name complete.
            return None;
        }
        Some((name, i))
    }
}

/// Words that cannot be table names (clause keywords).
fn is_reserved(word: &str) -> bool {
    const RESERVED: &[&str] = &[
        "select",
        "from",
        "where",
        "group",
        "order",
        "having",
        "limit",
        "offset",
        "union",
        "intersect",
        "except",
        "join",
        "inner",
        "left",
        "right",
        "full",
        "cross",
        "natural",
        "on",
        "using",
        "as",
        "set",
        "values",
        "into",
        "lateral",
        "only",
        "returning",
        "window",
        "for",
        "fetch",
        "with",
        "and",
        "or",
        "not",
        "straight_join",
        "outer",
        "default",
        "table",
        "if",
        "exists",
    ];
    RESERVED.iter().any(|r| word.eq_ignore_ascii_case(r))
}

/// Words ending a FROM clause.
fn ends_from_clause(word: &str) -> bool {
    const ENDS: &[&str] = &[
        "where",
        "group",
        "order",
        "having",
        "limit",
        "offset",
        "fetch",
        "for",
        "window",
        "union",
        "intersect",
        "except",
        "returning",
        "into",
        "lock",
        "procedure",
    ];
    ENDS.iter().any(|r| word.eq_ignore_ascii_case(r))
}

fn is_join_word(word: &str) -> bool {
    const JOINS: &[&str] = &["join", "straight_join"];
    JOINS.iter().any(|r| word.eq_ignore_ascii_case(r))
}

/// (operation, collection) of one statement.
fn analyze_statement(sql: &str, toks: &[&Token], truncated: bool) -> (Option<String>, Option<String>) {
    let st = Stmt { sql, toks, truncated };
    let mut i = 0;
    while st.is_punct(i, "(") {
        i += 1;
    }
    let Some(first) = st.text(i) else {
        return (None, None);
    };
    if st.toks[i].kind != Kind::Word
        || !st.complete(i)
        || first.len() > MAX_OPERATION
        || !first.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
    {
        return (None, None);
    }
    let mut op = first.to_ascii_uppercase();
    let mut ctes: Vec<String> = Vec::new();
    if op == "WITH" {
        // Skip the CTE definitions: the main statement is the first keyword
        // at the WITH's own depth after them.
        let mut depth = 0i32;
        let mut j = i + 1;
        let mut expect_name = true;
        let mut found = None;
        while j < toks.len() {
            let t = toks[j];
            let text = &sql[t.start..t.end];
            match t.kind {
                Kind::Punct if text == "(" => depth += 1,
                Kind::Punct if text == ")" => depth -= 1,
                Kind::Punct if text == "," && depth == 0 => expect_name = true,
                Kind::Word | Kind::QuotedIdent if depth == 0 => {
                    if t.kind == Kind::Word
                        && ["select", "insert", "update", "delete", "merge"]
                            .iter()
                            .any(|k| text.eq_ignore_ascii_case(k))
                        && st.complete(j)
                    {
                        found = Some(j);
                        break;
                    }
                    if expect_name && !text.eq_ignore_ascii_case("recursive") {
                        ctes.push(st.ident(j));
                        expect_name = false;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        let Some(main) = found else {
            return (None, None);
        };
        i = main;
        op = sql[toks[i].start..toks[i].end].to_ascii_uppercase();
    }
    let collection = collection_of(&st, &op, i + 1).filter(|c| !ctes.iter().any(|cte| cte == c));
    (Some(op), collection)
}

fn collection_of(st: &Stmt<'_>, op: &str, i: usize) -> Option<String> {
    // A following `,` or join means several tables: not obvious.
    let single = |found: Option<(String, usize)>, extra_stops: &[&str]| -> Option<String> {
        let (name, mut j) = found?;
        // Optional alias.
        if st.is_word(j, "as") {
            j += 1;
        }
        if st.toks.get(j).is_some_and(|t| t.kind == Kind::Word || t.kind == Kind::QuotedIdent)
            && st.text(j).is_some_and(|w| !is_reserved(w) && !extra_stops.iter().any(|s| w.eq_ignore_ascii_case(s)))
        {
            j += 1;
        }
        if st.is_punct(j, ",") || st.text(j).is_some_and(is_join_word) || st.is_word(j, "using") {
            return None;
        }
        Some(name)
    };
    match op {
        "INSERT" | "REPLACE" => {
            let j = st.skip_words(i, &["low_priority", "delayed", "high_priority", "ignore", "into"]);
            st.name_with(j, true).map(|(n, _)| n)
        }
        "UPDATE" => {
            let j = st.skip_words(i, &["low_priority", "ignore", "only"]);
            single(st.name(j), &["set"])
        }
        "DELETE" => {
            let j = st.skip_words(i, &["low_priority", "quick", "ignore"]);
            if !st.is_word(j, "from") {
                // MySQL multi-table `DELETE t1, t2 FROM ...`.
                return None;
            }
            let j = st.skip_words(j + 1, &["only"]);
            single(st.name(j), &["where"])
        }
        "MERGE" => {
            let j = st.skip_words(i, &["into"]);
            st.name(j).map(|(n, _)| n)
        }
        "TRUNCATE" => {
            let j = st.skip_words(i, &["table", "only"]);
            single(st.name(j), &[])
        }
        "TABLE" | "COPY" => {
            let j = st.skip_words(i, &["only"]);
            st.name_with(j, op == "COPY").map(|(n, _)| n)
        }
        "CREATE" | "DROP" | "ALTER" => {
            let j = st.skip_words(i, &["or", "replace", "temp", "temporary", "unlogged", "global", "local"]);
            if !st.is_word(j, "table") {
                return None;
            }
            let j = st.skip_words(j + 1, &["if", "not", "exists", "only"]);
            single(st.name_with(j, true), &[])
        }
        "SELECT" => select_collection(st, i),
        _ => None,
    }
}

/// The single table referenced by a SELECT's top-level FROM clauses.
fn select_collection(st: &Stmt<'_>, from: usize) -> Option<String> {
    let mut depth = 0i32;
    let mut table: Option<String> = None;
    let mut in_from = false;
    let mut closed = false;
    let mut i = from;
    while i < st.toks.len() {
        let t = st.toks[i];
        let text = st.text(i).unwrap_or("");
        match t.kind {
            Kind::Punct if text == "(" => depth += 1,
            Kind::Punct if text == ")" => {
                depth -= 1;
                if depth < 0 {
                    // The end of a parenthesised leading SELECT.
                    closed = true;
                    break;
                }
            }
            _ if depth != 0 => {}
            Kind::Punct if text == "," && in_from => return None,
            Kind::Word if text.eq_ignore_ascii_case("from") => {
                let j = st.skip_words(i + 1, &["only"]);
                let (name, next) = st.name(j)?;
                if table.as_ref().is_some_and(|t| *t != name) {
                    return None;
                }
                table = Some(name);
                in_from = true;
                i = next;
                continue;
            }
            Kind::Word if is_join_word(text) => return None,
            Kind::Word if ends_from_clause(text) => {
                if in_from {
                    closed = true;
                }
                in_from = false;
            }
            _ => {}
        }
        i += 1;
    }
    if st.truncated && !closed && in_from {
        // Cut inside the FROM clause: a join may have followed.
        return None;
    }
    table
}

/// A database error, already reduced to what is safe to export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbError {
    /// `db.response.status_code` (and `error.type`).
    pub code: String,
    /// Span status description: codes only, never the server's message text
    /// (messages often echo the offending values).
    pub description: String,
}

/// How a DB exchange ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub returned_rows: Option<u64>,
    pub affected_rows: Option<u64>,
    pub error: Option<DbError>,
    /// Part of the response was not captured: status and row counts may be
    /// missing (never wrong).
    pub response_truncated: bool,
}

/// Everything a DB span is made of.
pub struct DbSpan<'a> {
    pub kind: SpanKind,
    pub system: &'static str,
    pub namespace: Option<&'a str>,
    pub query: Option<&'a QueryInfo>,
    /// Operation known from elsewhere than the text (e.g. PostgreSQL's
    /// CommandComplete tag) when there is no text.
    pub operation_hint: Option<&'a str>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub tid: u32,
    pub outcome: Outcome,
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl DbSpan<'_> {
    pub fn build(self) -> ParsedSpan {
        let mut attributes: Vec<Attribute> = Vec::with_capacity(12);
        attributes.push(("db.system.name", AttrValue::from(self.system)));
        if let Some(ns) = self.namespace.filter(|ns| !ns.is_empty()) {
            attributes.push(("db.namespace", AttrValue::from(ns)));
        }
        let mut operation = self.query.and_then(|q| q.operation.clone());
        if operation.is_none() && self.query.is_none_or(|q| q.text.is_empty()) {
            operation = self.operation_hint.map(str::to_owned);
        }
        if let Some(op) = &operation {
            attributes.push(("db.operation.name", AttrValue::from(op.as_str())));
        }
        let mut summary = None;
        if let Some(q) = self.query {
            if let Some(c) = &q.collection {
                attributes.push(("db.collection.name", AttrValue::from(c.as_str())));
            }
            if !q.text.is_empty() {
                attributes.push(("db.query.text", AttrValue::from(q.text.as_str())));
            }
            if q.truncated {
                attributes.push(("waggle.db.query.truncated", AttrValue::Bool(true)));
            }
            if q.statements > 1 {
                attributes.push(("db.operation.batch.size", AttrValue::Int(clamp_i64(q.statements as u64))));
            }
            summary = q.summary.clone();
        }
        if let Some(s) = &summary {
            attributes.push(("db.query.summary", AttrValue::from(s.as_str())));
        }
        let out = self.outcome;
        if let Some(n) = out.returned_rows {
            attributes.push(("db.response.returned_rows", AttrValue::Int(clamp_i64(n))));
        }
        if let Some(n) = out.affected_rows {
            attributes.push(("waggle.db.response.affected_rows", AttrValue::Int(clamp_i64(n))));
        }
        if out.response_truncated {
            attributes.push(("waggle.db.response.truncated", AttrValue::Bool(true)));
        }
        let status = match out.error {
            Some(err) => {
                attributes.push(("db.response.status_code", AttrValue::from(err.code.as_str())));
                attributes.push(("error.type", AttrValue::Str(err.code)));
                SpanStatus::Error { description: err.description }
            }
            None => SpanStatus::Unset,
        };
        let name = summary.or(operation).unwrap_or_else(|| self.system.to_owned());
        ParsedSpan {
            kind: self.kind,
            name,
            start_ns: self.start_ns,
            end_ns: self.end_ns.max(self.start_ns),
            status,
            attributes,
            incoming_context: None,
            incoming_tracestate: None,
            tid: self.tid,
        }
    }
}

// ---------------------------------------------------------------------------
// Framing

/// When and by whom a message was moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub enter_ns: u64,
    pub exit_ns: u64,
    pub tid: u32,
}

impl Timing {
    pub fn of(chunk: &Chunk<'_>) -> Timing {
        Timing { enter_ns: chunk.enter_ns, exit_ns: chunk.exit_ns, tid: chunk.tid }
    }
}

/// Most header bytes any framing uses.
const MAX_HEADER: usize = 16;

/// A wire protocol's message framing.
pub trait Framing {
    type Head: Copy;
    /// Header length of a message whose first byte is `first`.
    fn header_len(&self, first: u8) -> usize;
    /// Parses a header: (head, body length, body bytes worth keeping), or why
    /// the bytes cannot be a header.
    fn parse_header(&mut self, header: &[u8]) -> Result<(Self::Head, u64, usize), &'static str>;
}

/// One framed message. `body` holds the captured, kept prefix of the body.
#[derive(Clone, Debug)]
pub struct Frame<H> {
    pub head: H,
    pub body: Vec<u8>,
    pub body_len: u64,
    /// Chunk that carried the header.
    pub start: Timing,
    /// Exit time of the chunk that carried the last byte.
    pub end_ns: u64,
}

impl<H> Frame<H> {
    /// The whole body is in `body`.
    pub fn complete(&self) -> bool {
        self.body.len() as u64 == self.body_len
    }
}

#[derive(Debug)]
pub enum Framed<H> {
    Frame(Frame<H>),
    /// Framing is lost (a header fell into uncaptured bytes, or was garbage);
    /// the framer ignores input until [`Framer::resync`].
    Lost(&'static str),
}

struct Current<H> {
    head: H,
    body: Vec<u8>,
    body_len: u64,
    consumed: u64,
    keep: usize,
    start: Timing,
}

/// Splits one direction of a connection into messages, tracking lengths
/// across chunks and skipping uncaptured bytes by count.
pub struct Framer<F: Framing> {
    pub rules: F,
    header: [u8; MAX_HEADER],
    header_have: usize,
    header_start: Timing,
    current: Option<Current<F::Head>>,
    lost: bool,
}

impl<F: Framing> Framer<F> {
    pub fn new(rules: F) -> Self {
        Framer {
            rules,
            header: [0; MAX_HEADER],
            header_have: 0,
            header_start: Timing::default(),
            current: None,
            lost: false,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Next input starts at a message boundary.
    pub fn resync(&mut self) {
        self.header_have = 0;
        self.current = None;
        self.lost = false;
    }

    /// Nothing half-read.
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.header_have == 0 && self.current.is_none()
    }

    fn lose(&mut self, reason: &'static str, out: &mut Vec<Framed<F::Head>>) {
        self.lost = true;
        self.header_have = 0;
        self.current = None;
        out.push(Framed::Lost(reason));
    }

    fn finish(&mut self, end_ns: u64, out: &mut Vec<Framed<F::Head>>) {
        if let Some(cur) = self.current.take() {
            out.push(Framed::Frame(Frame {
                head: cur.head,
                body: cur.body,
                body_len: cur.body_len,
                start: cur.start,
                end_ns,
            }));
        }
    }

    /// Feeds one chunk; completed messages (and at most one `Lost`) go to `out`.
    pub fn push(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Framed<F::Head>>) {
        if self.lost {
            return;
        }
        let timing = Timing::of(chunk);
        let mut data = chunk.bytes;
        while !data.is_empty() {
            if let Some(cur) = &mut self.current {
                let remaining = cur.body_len - cur.consumed;
                let take = remaining.min(data.len() as u64) as usize;
                let room = cur.keep.saturating_sub(cur.body.len()).min(take);
                if room > 0 && cur.body.len() as u64 == cur.consumed {
                    cur.body.extend_from_slice(&data[..room]);
                }
                cur.consumed += take as u64;
                data = &data[take..];
                if cur.consumed == cur.body_len {
                    self.finish(chunk.exit_ns, out);
                }
                continue;
            }
            if self.header_have == 0 {
                self.header_start = timing;
            }
            let need =
                self.rules.header_len(if self.header_have > 0 { self.header[0] } else { data[0] }).clamp(1, MAX_HEADER);
            let take = (need - self.header_have).min(data.len());
            self.header[self.header_have..self.header_have + take].copy_from_slice(&data[..take]);
            self.header_have += take;
            data = &data[take..];
            if self.header_have < need {
                break;
            }
            self.header_have = 0;
            match self.rules.parse_header(&self.header[..need]) {
                Ok((head, body_len, keep)) => {
                    let keep = keep.min(usize::try_from(body_len).unwrap_or(usize::MAX));
                    self.current = Some(Current {
                        head,
                        body: Vec::with_capacity(keep.min(data.len())),
                        body_len,
                        consumed: 0,
                        keep,
                        start: self.header_start,
                    });
                    if body_len == 0 {
                        self.finish(chunk.exit_ns, out);
                    }
                }
                Err(reason) => {
                    self.lose(reason, out);
                    return;
                }
            }
        }
        let mut gap = chunk.total_len.saturating_sub(chunk.bytes.len() as u64);
        if gap == 0 {
            return;
        }
        if self.header_have > 0 {
            self.lose("message header not captured", out);
            return;
        }
        if let Some(cur) = &mut self.current {
            let skip = (cur.body_len - cur.consumed).min(gap);
            cur.consumed += skip;
            gap -= skip;
            if cur.consumed == cur.body_len {
                self.finish(chunk.exit_ns, out);
            }
        }
        if gap > 0 {
            self.lose("message boundary not captured", out);
        }
    }
}

// ---------------------------------------------------------------------------
// Bounded cache

/// A map with an entry limit and a weight budget; the oldest insertions are
/// evicted first. Eviction scans (O(n)), which is fine at these sizes and
/// only happens when full.
pub struct BoundedMap<K, V> {
    map: HashMap<K, (u64, usize, V)>,
    max_entries: usize,
    max_weight: usize,
    weight: usize,
    seq: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    pub fn new(max_entries: usize, max_weight: usize) -> Self {
        BoundedMap { map: HashMap::new(), max_entries, max_weight, weight: 0, seq: 0 }
    }

    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        self.remove(&key);
        if weight > self.max_weight || self.max_entries == 0 {
            return;
        }
        while self.map.len() >= self.max_entries || self.weight + weight > self.max_weight {
            let Some(oldest) = self.map.iter().min_by_key(|(_, (seq, ..))| *seq).map(|(k, _)| k.clone()) else {
                break;
            };
            self.remove(&oldest);
        }
        self.seq += 1;
        self.weight += weight;
        self.map.insert(key, (self.seq, weight, value));
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(_, _, v)| v)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (_, w, v) = self.map.remove(key)?;
        self.weight -= w;
        Some(v)
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.weight = 0;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Shared statement text, kept per connection by name or id.
pub type SharedQuery = Arc<QueryInfo>;

/// The NUL-terminated string at `body[*pos..]`; advances past the NUL.
/// None when no NUL is in the (kept) body.
pub fn cstr<'b>(body: &'b [u8], pos: &mut usize) -> Option<&'b [u8]> {
    let rest = body.get(*pos..)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    *pos += nul + 1;
    Some(&rest[..nul])
}

/// Text that looks like SQL/identifiers: printable ASCII, whitespace, or
/// UTF-8 (>= 0x80).
pub fn looks_textual(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b >= 0x20 && b != 0x7f || b == b'\t' || b == b'\n' || b == b'\r')
}

/// First byte of something that can start a SQL statement.
pub fn plausible_sql_start(bytes: &[u8]) -> bool {
    let trimmed = bytes.iter().position(|b| !b.is_ascii_whitespace()).map(|p| &bytes[p..]).unwrap_or(&[]);
    match trimmed.first() {
        Some(b) => b.is_ascii_alphabetic() || matches!(b, b'(' | b'/' | b'-' | b'#' | b'{'),
        None => false,
    }
}

/// Drives a SQL parser with a fuzzer-chosen [`super::script`]: every role is
/// run (the Unknown one with raw SQL text, so both text paths are fuzzed),
/// and every span is checked by [`check_db_span`] and `check`. Returns the
/// spans emitted.
#[cfg(any(test, feature = "fuzz"))]
pub fn fuzz_script(data: &[u8], detector: &dyn super::ProtocolDetector, check: fn(&ParsedSpan)) -> usize {
    use waggle_common::Role;

    use super::ParserConfig;

    let new_parser = |role| detector.new_parser(role, &ParserConfig { raw_sql: role == Role::Unknown });
    super::script::run(data, detector, new_parser, |span, role, _| {
        check_db_span(span, role);
        check(span);
    })
}

/// Invariants of every DB span, whatever the input.
#[cfg(any(test, feature = "fuzz"))]
pub fn check_db_span(span: &ParsedSpan, role: waggle_common::Role) {
    assert!(span.end_ns >= span.start_ns, "span ends before it starts: {span:?}");
    assert!(!span.name.is_empty());
    if role != waggle_common::Role::Unknown {
        let expected = if role == waggle_common::Role::Server { SpanKind::Server } else { SpanKind::Client };
        assert_eq!(span.kind, expected);
    }
    match span.attr("db.system.name") {
        Some(AttrValue::Str(s)) => assert!(["postgresql", "mysql", "mariadb"].contains(&s.as_str()), "{s}"),
        other => panic!("db.system.name is {other:?}"),
    }
    if let Some(AttrValue::Str(text)) = span.attr("db.query.text") {
        assert!(text.len() <= MAX_QUERY_TEXT + 3 * 16 + 8, "query text of {} bytes", text.len());
    }
    if let Some(AttrValue::Str(summary)) = span.attr("db.query.summary") {
        assert!(summary.len() <= 2 * MAX_OPERATION + MAX_COLLECTION + 8);
    }
    let error = matches!(span.status, SpanStatus::Error { .. });
    assert_eq!(error, span.attr("error.type").is_some());
    assert_eq!(error, span.attr("db.response.status_code").is_some());
    for key in ["db.response.returned_rows", "waggle.db.response.affected_rows"] {
        if let Some(v) = span.attr(key) {
            assert!(matches!(v, AttrValue::Int(n) if *n >= 0), "{key}: {v:?}");
        }
    }
}

/// Replays captured traffic through parsers in tests.
///
/// Capture files (`testdata/*/*.bin`) were recorded by a TCP proxy between
/// real clients and servers: one record per `recv()`, as a direction byte
/// (`>` client to server, `<` server to client), a big-endian u32 length and
/// the bytes.
#[cfg(test)]
pub(crate) mod replay {
    use waggle_common::{Direction, Role};

    use super::super::{Chunk, Feed, ProtocolParser};
    use crate::model::ParsedSpan;

    /// (from the client?, bytes) per record.
    pub fn records(bin: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 5 <= bin.len() {
            let len = u32::from_be_bytes([bin[i + 1], bin[i + 2], bin[i + 3], bin[i + 4]]) as usize;
            out.push((bin[i] == b'>', bin[i + 5..i + 5 + len].to_vec()));
            i += 5 + len;
        }
        assert_eq!(i, bin.len(), "malformed capture file");
        out
    }

    pub fn direction(from_client: bool, role: Role) -> Direction {
        match (from_client, role == Role::Server) {
            (true, false) | (false, true) => Direction::Egress,
            _ => Direction::Ingress,
        }
    }

    /// Record `k` becomes a syscall at t = 1000k..1000k+500 whose first
    /// `capture` bytes were captured.
    pub fn chunk(k: usize, from_client: bool, bytes: &[u8], capture: usize, role: Role) -> Chunk<'_> {
        Chunk {
            direction: direction(from_client, role),
            bytes: &bytes[..bytes.len().min(capture)],
            total_len: bytes.len() as u64,
            enter_ns: 1000 * k as u64,
            exit_ns: 1000 * k as u64 + 500,
            tid: 7,
        }
    }

    pub struct Replayed {
        pub spans: Vec<ParsedSpan>,
        /// Every non-Continue feed result, with the record index.
        pub feeds: Vec<(usize, Feed)>,
    }

    pub fn replay(parser: &mut dyn ProtocolParser, recs: &[(bool, Vec<u8>)], capture: usize, role: Role) -> Replayed {
        let mut spans = Vec::new();
        let mut feeds = Vec::new();
        for (k, (from_client, bytes)) in recs.iter().enumerate() {
            let feed = parser.on_data(&chunk(k, *from_client, bytes, capture, role), &mut spans);
            if feed != Feed::Continue {
                feeds.push((k, feed));
            }
        }
        Replayed { spans, feeds }
    }

    pub fn names(spans: &[ParsedSpan]) -> Vec<&str> {
        spans.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn attr_str<'a>(span: &'a ParsedSpan, key: &str) -> Option<&'a str> {
        match span.attr(key) {
            Some(crate::model::AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn attr_int(span: &ParsedSpan, key: &str) -> Option<i64> {
        match span.attr(key) {
            Some(crate::model::AttrValue::Int(n)) => Some(*n),
            _ => None,
        }
    }

    /// No attribute value of any span contains `needle`.
    pub fn assert_absent(spans: &[ParsedSpan], needle: &str) {
        for span in spans {
            assert!(!span.name.contains(needle), "{needle} leaked into name {}", span.name);
            for (k, v) in &span.attributes {
                if let crate::model::AttrValue::Str(s) = v {
                    assert!(!s.contains(needle), "{needle} leaked into {k}={s}");
                }
            }
        }
    }

    /// A tiny deterministic PRNG for robustness tests.
    pub struct Lcg(pub u64);
    impl Lcg {
        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        pub fn below(&mut self, n: u64) -> u64 {
            if n == 0 {
                0
            } else {
                self.next() % n
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(s: &str) -> String {
        sanitize(s, Dialect::Postgres)
    }
    fn my(s: &str) -> String {
        sanitize(s, Dialect::MySql)
    }
    fn info(s: &str) -> QueryInfo {
        analyze_query(s.as_bytes(), false, Dialect::Postgres, false)
    }
    fn op_coll(s: &str) -> (Option<String>, Option<String>) {
        let i = info(s);
        (i.operation, i.collection)
    }
    fn oc(op: &str, coll: Option<&str>) -> (Option<String>, Option<String>) {
        (Some(op.to_owned()), coll.map(str::to_owned))
    }

    #[test]
    fn sanitizes_string_and_number_literals() {
        assert_eq!(
            pg("SELECT * FROM users WHERE name = 'O''Brien' AND id = 42"),
            "SELECT * FROM users WHERE name = ? AND id = ?"
        );
        assert_eq!(pg("select 1.5, .5, 1e10, 2.5E-3, 0x1F, 0b101"), "select ?, ?, ?, ?, ?, ?");
        assert_eq!(pg("SELECT -5"), "SELECT -?");
        assert_eq!(pg("SELECT E'it\\'s secret'"), "SELECT ?");
        assert_eq!(pg("SELECT e'a\\\\', 'b'"), "SELECT ?, ?");
        assert_eq!(pg("SELECT B'0101', X'1F', N'nat', U&'d\\0061t'"), "SELECT ?, ?, ?, ?");
        // Standard-conforming strings: a backslash is an ordinary character.
        assert_eq!(pg("SELECT 'C:\\', 'x'"), "SELECT ?, ?");
    }

    #[test]
    fn sanitizes_dollar_quotes_and_keeps_placeholders() {
        assert_eq!(
            pg("SELECT $$secret ' stuff$$, $tag$a$$b$tag$ FROM t WHERE a = $1 AND b = $12"),
            "SELECT ?, ? FROM t WHERE a = $1 AND b = $12"
        );
        assert_eq!(pg("SELECT $body$ unterminated secret"), "SELECT ?");
        assert_eq!(my("SELECT * FROM t WHERE a = ? AND b = :name"), "SELECT * FROM t WHERE a = ? AND b = :name");
        assert_eq!(pg("SELECT x::int, y::text FROM t"), "SELECT x::int, y::text FROM t");
    }

    #[test]
    fn keeps_identifiers_keywords_and_quoted_names() {
        assert_eq!(
            pg("SELECT t1.col_2 FROM \"My Table\" t1 WHERE flag = TRUE AND x IS NULL"),
            "SELECT t1.col_2 FROM \"My Table\" t1 WHERE flag = TRUE AND x IS NULL"
        );
        assert_eq!(my("SELECT `col1` FROM `db`.`t2` WHERE c = \"secret\""), "SELECT `col1` FROM `db`.`t2` WHERE c = ?");
        assert_eq!(my("SELECT 1st_col FROM t"), "SELECT 1st_col FROM t");
        assert_eq!(pg("SELECT \"a\"\"b\" FROM t"), "SELECT \"a\"\"b\" FROM t");
        assert_eq!(pg("SELECT café FROM t WHERE ü = 'ö'"), "SELECT café FROM t WHERE ü = ?");
    }

    #[test]
    fn mysql_string_escapes_and_introducers() {
        assert_eq!(my("SELECT 'it\\'s', 'a''b', _utf8mb4'x' FROM t"), "SELECT ?, ?, ? FROM t");
        assert_eq!(my("INSERT INTO t VALUES (X'ABCD', 0xFF, b'01')"), "INSERT INTO t VALUES (?, ?, ?)");
    }

    #[test]
    fn removes_comments_and_collapses_space() {
        assert_eq!(pg("SELECT /* password=hunter2 */ a -- secret\nFROM t"), "SELECT a FROM t");
        assert_eq!(pg("SELECT a /* outer /* nested */ still */ FROM t"), "SELECT a FROM t");
        assert_eq!(my("SELECT a # note\nFROM t"), "SELECT a FROM t");
        assert_eq!(pg("SELECT/*x*/1"), "SELECT ?");
        assert_eq!(pg("  SELECT\n\t a\r\n FROM   t  "), "SELECT a FROM t");
        assert_eq!(pg("SELECT 1 /* unterminated secret"), "SELECT ?");
        // `#` is an operator in PostgreSQL.
        assert_eq!(pg("SELECT 5 # 3"), "SELECT ? # ?");
    }

    #[test]
    fn unterminated_literals_are_hidden_to_the_end() {
        assert_eq!(pg("SELECT * FROM t WHERE a = 'secret and more"), "SELECT * FROM t WHERE a = ?");
        assert_eq!(my("SELECT * FROM t WHERE a = \"secret"), "SELECT * FROM t WHERE a = ?");
        assert_eq!(my("SELECT 'abc\\"), "SELECT ?");
        assert_eq!(pg("SELECT \"unterminated ident"), "SELECT \"unterminated ident");
    }

    #[test]
    fn collapses_in_lists_of_literals() {
        assert_eq!(
            pg("SELECT * FROM t WHERE id IN (1, 2, 3) AND s in ('a','b')"),
            "SELECT * FROM t WHERE id IN (?) AND s in (?)"
        );
        assert_eq!(my("SELECT * FROM t WHERE id IN (?, ?, ?)"), "SELECT * FROM t WHERE id IN (?)");
        assert_eq!(pg("SELECT * FROM t WHERE id IN ($1, $2)"), "SELECT * FROM t WHERE id IN ($1, $2)");
        assert_eq!(
            pg("SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = 1)"),
            "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = ?)"
        );
        assert_eq!(pg("SELECT * FROM t WHERE id IN (1, a)"), "SELECT * FROM t WHERE id IN (?, a)");
    }

    #[test]
    fn operation_and_collection() {
        assert_eq!(op_coll("SELECT * FROM items WHERE id = 1"), oc("SELECT", Some("items")));
        assert_eq!(op_coll("select a from public.items i where i.x = 1"), oc("SELECT", Some("public.items")));
        assert_eq!(op_coll("SELECT a FROM \"public\".\"Items\""), oc("SELECT", Some("public.Items")));
        assert_eq!(op_coll("SELECT * FROM a JOIN b ON a.id = b.id"), oc("SELECT", None));
        assert_eq!(op_coll("SELECT * FROM a LEFT OUTER JOIN b USING (id)"), oc("SELECT", None));
        assert_eq!(op_coll("SELECT * FROM a, b"), oc("SELECT", None));
        assert_eq!(op_coll("SELECT * FROM a x, b y"), oc("SELECT", None));
        assert_eq!(op_coll("SELECT * FROM (SELECT 1) s"), oc("SELECT", None));
        assert_eq!(op_coll("SELECT * FROM generate_series(1, 10)"), oc("SELECT", None));
        assert_eq!(op_coll("SELECT 1"), oc("SELECT", None));
        assert_eq!(op_coll("SELECT * FROM t WHERE id IN (SELECT id FROM u)"), oc("SELECT", Some("t")));
        assert_eq!(op_coll("SELECT a FROM t UNION SELECT a FROM u"), oc("SELECT", None));
        assert_eq!(op_coll("SELECT a FROM t UNION ALL SELECT b FROM t"), oc("SELECT", Some("t")));
        assert_eq!(op_coll("(SELECT a FROM t) ORDER BY a"), oc("SELECT", Some("t")));
        assert_eq!(op_coll("INSERT INTO orders (a, b) VALUES (1, 2)"), oc("INSERT", Some("orders")));
        assert_eq!(op_coll("insert into orders select * from staging"), oc("INSERT", Some("orders")));
        assert_eq!(
            op_coll("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 5"),
            oc("UPDATE", Some("pgbench_accounts"))
        );
        assert_eq!(op_coll("UPDATE ONLY t SET a = 1"), oc("UPDATE", Some("t")));
        assert_eq!(op_coll("UPDATE a, b SET a.x = b.x"), oc("UPDATE", None));
        assert_eq!(op_coll("DELETE FROM sessions WHERE expires < now()"), oc("DELETE", Some("sessions")));
        assert_eq!(op_coll("DELETE FROM a USING b WHERE a.id = b.id"), oc("DELETE", None));
        assert_eq!(op_coll("DELETE t1, t2 FROM t1 JOIN t2"), oc("DELETE", None));
        assert_eq!(op_coll("TRUNCATE TABLE logs"), oc("TRUNCATE", Some("logs")));
        assert_eq!(op_coll("TRUNCATE a, b"), oc("TRUNCATE", None));
        assert_eq!(op_coll("TABLE items"), oc("TABLE", Some("items")));
        assert_eq!(op_coll("COPY items FROM STDIN"), oc("COPY", Some("items")));
        assert_eq!(op_coll("COPY (SELECT 1) TO STDOUT"), oc("COPY", None));
        assert_eq!(op_coll("CREATE TABLE IF NOT EXISTS t2 (id int)"), oc("CREATE", Some("t2")));
        assert_eq!(op_coll("CREATE UNLOGGED TABLE t3 (id int)"), oc("CREATE", Some("t3")));
        assert_eq!(op_coll("CREATE INDEX i ON t (a)"), oc("CREATE", None));
        assert_eq!(op_coll("DROP TABLE IF EXISTS t"), oc("DROP", Some("t")));
        assert_eq!(op_coll("ALTER TABLE t ADD COLUMN c int"), oc("ALTER", Some("t")));
        assert_eq!(op_coll("begin"), oc("BEGIN", None));
        assert_eq!(op_coll("  -- comment\n COMMIT"), oc("COMMIT", None));
        assert_eq!(op_coll("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE"), oc("MERGE", Some("t")));
        assert_eq!(op_coll("REPLACE INTO kv VALUES (1, 2)"), oc("REPLACE", Some("kv")));
        assert_eq!(op_coll("SELECT * FROM `shop`.`items`"), oc("SELECT", Some("shop.items")));
    }

    #[test]
    fn with_clauses_give_the_main_statement() {
        assert_eq!(op_coll("WITH x AS (SELECT * FROM a) SELECT * FROM items"), oc("SELECT", Some("items")));
        assert_eq!(
            op_coll("WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n+1 FROM r) SELECT * FROM r"),
            oc("SELECT", None)
        );
        assert_eq!(
            op_coll("WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved"),
            oc("INSERT", Some("b"))
        );
        assert_eq!(op_coll("WITH a AS (SELECT 1), b AS (SELECT 2) UPDATE t SET x = 1"), oc("UPDATE", Some("t")));
        assert_eq!(op_coll("WITH x AS (SELECT 1"), (None, None));
    }

    #[test]
    fn batches() {
        let i = info("BEGIN; UPDATE t SET a = 1; COMMIT;");
        assert_eq!(i.operation.as_deref(), Some("BATCH"));
        assert_eq!(i.collection, None);
        assert_eq!(i.statements, 3);
        let i = info("INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)");
        assert_eq!(i.operation.as_deref(), Some("BATCH INSERT"));
        assert_eq!(i.summary.as_deref(), Some("BATCH INSERT"));
        let i = info("SELECT 1;");
        assert_eq!(i.operation.as_deref(), Some("SELECT"));
        assert_eq!(i.statements, 1);
        let i = info("SELECT ';' FROM t");
        assert_eq!(i.statements, 1);
        assert_eq!(i.collection.as_deref(), Some("t"));
    }

    #[test]
    fn truncated_text_is_not_overinterpreted() {
        let t = |s: &str| {
            let i = analyze_query(s.as_bytes(), true, Dialect::Postgres, false);
            (i.operation, i.collection, i.truncated)
        };
        assert_eq!(t("SELECT * FROM items WHERE"), (Some("SELECT".into()), Some("items".into()), true));
        assert_eq!(t("SELECT * FROM items"), (Some("SELECT".into()), None, true));
        assert_eq!(t("SELECT * FROM items i"), (Some("SELECT".into()), None, true));
        assert_eq!(t("INSERT INTO ord"), (Some("INSERT".into()), None, true));
        assert_eq!(t("INSERT INTO orders (a"), (Some("INSERT".into()), Some("orders".into()), true));
        assert_eq!(t("SEL"), (None, None, true));
        let long = format!("SELECT '{}' FROM t", "x".repeat(MAX_QUERY_TEXT));
        let i = analyze_query(long.as_bytes(), false, Dialect::Postgres, false);
        assert!(i.truncated);
        assert_eq!(i.text, "SELECT ?");
    }

    #[test]
    fn raw_mode_keeps_literals_but_still_analyzes() {
        let i = analyze_query(b"SELECT * FROM t WHERE a = 'x'  AND b = 1", false, Dialect::Postgres, true);
        assert_eq!(i.text, "SELECT * FROM t WHERE a = 'x' AND b = 1");
        assert_eq!(i.summary.as_deref(), Some("SELECT t"));
    }

    #[test]
    fn sanitizer_never_panics_on_odd_input() {
        let cases: &[&[u8]] = &[
            b"",
            b"'",
            b"\"",
            b"`",
            b"$",
            b"$$",
            b"$a",
            b"$1",
            b"0x",
            b"0b",
            b"1e",
            b"1e+",
            b".",
            b"--",
            b"/*",
            b"/*/",
            b"E'",
            b"U&'",
            b"U&",
            b"\xff\xfe'",
            b"SELECT \xe2\x82",
            b"x'",
            b"_'",
            b"IN (",
            b"IN (1,",
            b"IN (1",
        ];
        for case in cases {
            for d in [Dialect::Postgres, Dialect::MySql] {
                let a = analyze_query(case, true, d, false);
                assert!(a.text.len() <= case.len() * 3 + 8);
                let _ = analyze_query(case, false, d, true);
            }
        }
        // Every byte value, every prefix of a tricky query.
        let all: Vec<u8> = (0..=255u8).collect();
        let _ = analyze_query(&all, false, Dialect::Postgres, false);
        let q = "WITH a AS (SELECT 'x''y', $t$z$t$) SELECT * FROM \"s\".\"t\" WHERE b IN (1, 2) -- c";
        for cut in 0..=q.len() {
            let _ = analyze_query(&q.as_bytes()[..cut], true, Dialect::Postgres, false);
            let _ = analyze_query(&q.as_bytes()[..cut], true, Dialect::MySql, false);
        }
    }

    #[test]
    fn no_literal_survives_sanitizing() {
        let secrets = [
            "SELECT * FROM u WHERE pw = 'hunter2'",
            "SELECT * FROM u WHERE pw = E'hunter2\\' OR 1'",
            "SELECT $q$hunter2$q$",
            "SELECT * FROM u WHERE x = 'a' || 'hunter2'",
            "UPDATE u SET pw = 'hunter2' /* hunter2 */ WHERE id = 1 -- hunter2",
        ];
        for s in secrets {
            assert!(!pg(s).contains("hunter2"), "{s} -> {}", pg(s));
        }
        for s in ["SELECT * FROM u WHERE pw = \"hunter2\"", "SELECT 'hunter2\\' and more'", "SELECT 1 # hunter2"] {
            assert!(!my(s).contains("hunter2"), "{s} -> {}", my(s));
        }
    }

    #[test]
    fn span_building_follows_semconv_names() {
        let q = info("SELECT * FROM items WHERE id = 7");
        let span = DbSpan {
            kind: SpanKind::Client,
            system: "postgresql",
            namespace: Some("shop"),
            query: Some(&q),
            operation_hint: None,
            start_ns: 10,
            end_ns: 20,
            tid: 3,
            outcome: Outcome { returned_rows: Some(1), ..Default::default() },
        }
        .build();
        assert_eq!(span.name, "SELECT items");
        assert_eq!(span.attr("db.system.name"), Some(&AttrValue::from("postgresql")));
        assert_eq!(span.attr("db.namespace"), Some(&AttrValue::from("shop")));
        assert_eq!(span.attr("db.query.text"), Some(&AttrValue::from("SELECT * FROM items WHERE id = ?")));
        assert_eq!(span.attr("db.response.returned_rows"), Some(&AttrValue::Int(1)));
        assert_eq!(span.status, SpanStatus::Unset);
        let err = DbSpan {
            kind: SpanKind::Client,
            system: "mysql",
            namespace: None,
            query: None,
            operation_hint: Some("UPDATE"),
            start_ns: 30,
            end_ns: 20,
            tid: 3,
            outcome: Outcome {
                error: Some(DbError { code: "1146".into(), description: "d".into() }),
                ..Default::default()
            },
        }
        .build();
        assert_eq!(err.name, "UPDATE");
        assert_eq!(err.end_ns, 30);
        assert_eq!(err.attr("error.type"), Some(&AttrValue::from("1146")));
        assert_eq!(err.attr("db.query.text"), None);
        assert!(matches!(err.status, SpanStatus::Error { .. }));
    }

    #[test]
    fn bounded_map_evicts_oldest_within_budget() {
        let mut m = BoundedMap::new(3, 100);
        m.insert("a", 1, 10);
        m.insert("b", 2, 10);
        m.insert("c", 3, 10);
        m.insert("d", 4, 10);
        assert_eq!(m.get(&"a"), None);
        assert_eq!(m.get(&"d"), Some(&4));
        m.insert("e", 5, 85);
        assert_eq!(m.len(), 2, "weight budget evicts the oldest until e fits");
        assert_eq!(m.get(&"c"), None);
        assert_eq!(m.get(&"d"), Some(&4));
        m.insert("huge", 6, 101);
        assert_eq!(m.get(&"huge"), None);
        assert_eq!(m.remove(&"e"), Some(5));
        assert_eq!(m.remove(&"d"), Some(4));
        assert!(m.is_empty());
    }

    struct TestFraming;
    impl Framing for TestFraming {
        type Head = u8;
        fn header_len(&self, _first: u8) -> usize {
            2
        }
        fn parse_header(&mut self, h: &[u8]) -> Result<(u8, u64, usize), &'static str> {
            if h[0] == 0xff {
                return Err("bad");
            }
            Ok((h[0], u64::from(h[1]), 3))
        }
    }

    fn chunk(bytes: &[u8], total: u64) -> Chunk<'_> {
        Chunk { direction: waggle_common::Direction::Egress, bytes, total_len: total, enter_ns: 1, exit_ns: 2, tid: 1 }
    }

    fn frames(out: Vec<Framed<u8>>) -> Vec<(u8, Vec<u8>, u64)> {
        out.into_iter()
            .map(|f| match f {
                Framed::Frame(f) => (f.head, f.body, f.body_len),
                Framed::Lost(_) => (0, b"LOST".to_vec(), 0),
            })
            .collect()
    }

    #[test]
    fn framer_tracks_lengths_across_chunks_and_gaps() {
        let mut f = Framer::new(TestFraming);
        let mut out = Vec::new();
        // Two messages, the second split across chunks, header split too.
        f.push(&chunk(&[1, 2, b'a', b'b', 2], 5), &mut out);
        f.push(&chunk(&[5, b'c', b'd', b'e', b'f', b'g', 3, 0], 8), &mut out);
        assert_eq!(
            frames(std::mem::take(&mut out)),
            vec![(1, b"ab".to_vec(), 2), (2, b"cde".to_vec(), 5), (3, vec![], 0)]
        );
        assert!(f.at_boundary());
        // A body partly captured: the rest is skipped by count.
        f.push(&chunk(&[4, 10, b'x'], 12), &mut out);
        f.push(&chunk(&[7, 1, b'y'], 3), &mut out);
        assert_eq!(frames(std::mem::take(&mut out)), vec![(4, b"x".to_vec(), 10), (7, b"y".to_vec(), 1)]);
        // A boundary inside uncaptured bytes loses framing until resync.
        f.push(&chunk(&[4, 1, b'x'], 10), &mut out);
        assert_eq!(frames(std::mem::take(&mut out)), vec![(4, b"x".to_vec(), 1), (0, b"LOST".to_vec(), 0)]);
        f.push(&chunk(&[4, 0], 2), &mut out);
        assert!(out.is_empty());
        f.resync();
        f.push(&chunk(&[0xff, 0], 2), &mut out);
        assert_eq!(frames(std::mem::take(&mut out)), vec![(0, b"LOST".to_vec(), 0)]);
    }

    #[test]
    fn helpers() {
        let mut pos = 0;
        assert_eq!(cstr(b"ab\0cd\0e", &mut pos), Some(&b"ab"[..]));
        assert_eq!(cstr(b"ab\0cd\0e", &mut pos), Some(&b"cd"[..]));
        assert_eq!(cstr(b"ab\0cd\0e", &mut pos), None);
        assert!(looks_textual("SELECT 1\n\té".as_bytes()));
        assert!(!looks_textual(b"SELECT\x01"));
        assert!(plausible_sql_start(b"  select"));
        assert!(!plausible_sql_start(b"\x03abc"));
    }
}

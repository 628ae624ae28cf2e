//! What a query text is about: `db.operation.name`, `db.collection.name`,
//! `db.query.summary` and the batch size, from the sanitizer's tokens.
//!
//! # Rules
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
use std::sync::Arc;

use super::sanitize::{render, tokenize, Backslash, Dialect, Kind, Token, MAX_QUERY_TEXT};

/// Longest collection name reported (longer ones are not "obvious").
pub(super) const MAX_COLLECTION: usize = 128;
/// Longest operation keyword accepted.
pub(super) const MAX_OPERATION: usize = 32;

/// A statement as the parsers remember and report it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct QueryInfo {
    /// Sanitized text (raw with `raw_sql`), at most [`MAX_QUERY_TEXT`] bytes of input.
    /// Shared with every span of the statement (a prepared statement runs
    /// many times), as are the names below.
    pub text: Arc<str>,
    /// The text is a prefix of the real query.
    pub truncated: bool,
    pub operation: Option<Arc<str>>,
    pub collection: Option<Arc<str>>,
    pub summary: Option<Arc<str>>,
    /// Statements in the text (more than one: a batch).
    pub statements: usize,
}

impl QueryInfo {
    /// Bytes this entry keeps alive (for cache budgets).
    pub fn weight(&self) -> usize {
        self.text.len() + 64
    }
}

/// Shared statement text, kept per connection by name or id.
pub type SharedQuery = Arc<QueryInfo>;

/// Builds the reportable form of a query text captured from the wire.
/// `truncated` says the bytes are only a prefix of the query.
pub fn analyze_query(
    raw: &[u8],
    mut truncated: bool,
    dialect: Dialect,
    backslash: Backslash,
    raw_sql: bool,
) -> QueryInfo {
    let raw = if raw.len() > MAX_QUERY_TEXT {
        truncated = true;
        &raw[..MAX_QUERY_TEXT]
    } else {
        raw
    };
    let sql = String::from_utf8_lossy(raw);
    let tokens = tokenize(&sql, dialect, backslash);
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
    QueryInfo {
        text: Arc::from(text),
        truncated,
        operation: operation.map(Arc::from),
        collection: collection.map(Arc::from),
        summary: summary.map(Arc::from),
        statements: count,
    }
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

/// Clause keywords that end a FROM clause (and cannot be table names).
const CLAUSE_ENDS: &[&str] = &[
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
];

/// Words that cannot be table names (clause keywords).
fn is_reserved(word: &str) -> bool {
    const OTHERS: &[&str] = &[
        "select",
        "from",
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
        "lateral",
        "only",
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
    CLAUSE_ENDS.iter().chain(OTHERS).any(|r| word.eq_ignore_ascii_case(r))
}

/// Words ending a FROM clause.
fn ends_from_clause(word: &str) -> bool {
    const OTHERS: &[&str] = &["lock", "procedure"];
    CLAUSE_ENDS.iter().chain(OTHERS).any(|r| word.eq_ignore_ascii_case(r))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(s: &str) -> QueryInfo {
        analyze_query(s.as_bytes(), false, Dialect::Postgres, Backslash::Unknown, false)
    }
    fn op_coll(s: &str) -> (Option<String>, Option<String>) {
        let i = info(s);
        (i.operation.as_deref().map(str::to_owned), i.collection.as_deref().map(str::to_owned))
    }
    fn oc(op: &str, coll: Option<&str>) -> (Option<String>, Option<String>) {
        (Some(op.to_owned()), coll.map(str::to_owned))
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
            let i = analyze_query(s.as_bytes(), true, Dialect::Postgres, Backslash::Unknown, false);
            (i.operation, i.collection, i.truncated)
        };
        assert_eq!(t("SELECT * FROM items WHERE"), (Some("SELECT".into()), Some("items".into()), true));
        assert_eq!(t("SELECT * FROM items"), (Some("SELECT".into()), None, true));
        assert_eq!(t("SELECT * FROM items i"), (Some("SELECT".into()), None, true));
        assert_eq!(t("INSERT INTO ord"), (Some("INSERT".into()), None, true));
        assert_eq!(t("INSERT INTO orders (a"), (Some("INSERT".into()), Some("orders".into()), true));
        assert_eq!(t("SEL"), (None, None, true));
        let long = format!("SELECT '{}' FROM t", "x".repeat(MAX_QUERY_TEXT));
        let i = analyze_query(long.as_bytes(), false, Dialect::Postgres, Backslash::Unknown, false);
        assert!(i.truncated);
        assert_eq!(&*i.text, "SELECT ?");
    }

    #[test]
    fn raw_mode_keeps_literals_but_still_analyzes() {
        let i = analyze_query(
            b"SELECT * FROM t WHERE a = 'x'  AND b = 1",
            false,
            Dialect::Postgres,
            Backslash::Unknown,
            true,
        );
        assert_eq!(&*i.text, "SELECT * FROM t WHERE a = 'x' AND b = 1");
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
                let a = analyze_query(case, true, d, Backslash::Unknown, false);
                assert!(a.text.len() <= case.len() * 3 + 8);
                let _ = analyze_query(case, false, d, Backslash::Unknown, true);
            }
        }
        // Every byte value, every prefix of a tricky query.
        let all: Vec<u8> = (0..=255u8).collect();
        let _ = analyze_query(&all, false, Dialect::Postgres, Backslash::Unknown, false);
        let q = "WITH a AS (SELECT 'x''y', $t$z$t$) SELECT * FROM \"s\".\"t\" WHERE b IN (1, 2) -- c";
        for cut in 0..=q.len() {
            let _ = analyze_query(&q.as_bytes()[..cut], true, Dialect::Postgres, Backslash::Unknown, false);
            let _ = analyze_query(&q.as_bytes()[..cut], true, Dialect::MySql, Backslash::Unknown, false);
        }
    }
}

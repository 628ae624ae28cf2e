//! The query-text sanitizer: a tokenizer for the PostgreSQL and MySQL
//! dialects, and rendering that hides literals.
//!
//! # Rules
//! * String literals become `?`: `'...'` (`''` escapes; backslash escapes too
//!   in MySQL, which is its default), `E'...'` (backslash escapes), `B'..'`,
//!   `X'..'`, `N'..'`, `U&'..'`, MySQL `_charset'..'` introducers, PostgreSQL
//!   dollar quotes `$tag$...$tag$`, and MySQL `"..."` (a string there unless
//!   ANSI_QUOTES is on, so treating it as a literal is the safe reading).
//! * Whether a backslash escapes a quote depends on server settings the
//!   agent cannot see (PostgreSQL `standard_conforming_strings`, MySQL
//!   `NO_BACKSLASH_ESCAPES`). A quoted literal whose end differs between the
//!   two readings hides everything from its start to the end of the text:
//!   `'it\'s', 'secret'` must not leave `secret` visible under either one.
//! * Numeric literals become `?`: integers, decimals, exponents, `0x..` hex,
//!   `0o..` octal, `0b..` bits, PostgreSQL 16 digit separators (`1_000`). A
//!   sign stays an operator (`-5` gives `-?`).
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

/// Query text bytes kept per statement; longer text is cut and marked with
/// `waggle.db.query.truncated`.
pub const MAX_QUERY_TEXT: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

/// What a backslash in a plain quoted literal does on this connection, as
/// far as the parser has seen the server say (PostgreSQL's
/// `standard_conforming_strings` parameter status, MySQL's
/// `SERVER_STATUS_NO_BACKSLASH_ESCAPES` flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backslash {
    /// Not seen (a connection joined mid-stream): either reading may hold.
    #[default]
    Unknown,
    Escapes,
    Plain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
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
pub(super) struct Token {
    pub(super) kind: Kind,
    pub(super) start: usize,
    pub(super) end: usize,
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

/// Index just past a quoted literal opened at `i`. When the connection has
/// not shown whether backslashes escape and the two readings disagree, the
/// end of the text (see the module docs).
fn scan_literal(s: &[u8], i: usize, quote: u8, backslash: Backslash) -> usize {
    match backslash {
        Backslash::Escapes => scan_quoted(s, i, quote, true),
        Backslash::Plain => scan_quoted(s, i, quote, false),
        Backslash::Unknown => {
            let plain = scan_quoted(s, i, quote, false);
            if plain == scan_quoted(s, i, quote, true) {
                plain
            } else {
                s.len()
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from >= haystack.len() {
        return None;
    }
    haystack[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Splits SQL into tokens. Token boundaries only fall next to ASCII bytes or
/// at the ends, so slicing the `&str` at them is always valid.
pub(super) fn tokenize(sql: &str, dialect: Dialect, backslash: Backslash) -> Vec<Token> {
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
            i = scan_literal(s, i, b'\'', backslash).min(n);
            kind = Kind::Literal;
        } else if c == b'"' {
            if dialect == Dialect::MySql {
                i = scan_literal(s, i, b'"', backslash).min(n);
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
            i = scan_number(s, i, dialect);
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
                // PostgreSQL's E'..' always takes backslash escapes.
                i = if dialect == Dialect::Postgres && word.eq_ignore_ascii_case(b"e") {
                    scan_quoted(s, i, b'\'', true)
                } else {
                    scan_literal(s, i, b'\'', backslash)
                }
                .min(n);
                kind = Kind::Literal;
            } else if next == Some(b'&') && s.get(i + 1) == Some(&b'\'') && word.eq_ignore_ascii_case(b"u") {
                i = scan_literal(s, i + 1, b'\'', backslash).min(n);
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

/// Index past the digits (`ok`) from `i`; in PostgreSQL an underscore
/// between two digits belongs to the number (`1_000`, PostgreSQL 16). In
/// MySQL `1_000` is an identifier, which the caller's word rule takes.
fn scan_digits(s: &[u8], mut i: usize, ok: fn(&u8) -> bool, dialect: Dialect) -> usize {
    let n = s.len();
    while i < n {
        if ok(&s[i]) {
            i += 1;
        } else if dialect == Dialect::Postgres && s[i] == b'_' && i > 0 && ok(&s[i - 1]) && s.get(i + 1).is_some_and(ok)
        {
            i += 2;
        } else {
            break;
        }
    }
    i
}

fn scan_number(s: &[u8], mut i: usize, dialect: Dialect) -> usize {
    let n = s.len();
    if s[i] == b'0' {
        let radix = s.get(i + 1).map(u8::to_ascii_lowercase);
        let digit_ok: Option<fn(&u8) -> bool> = match radix {
            Some(b'x') => Some(u8::is_ascii_hexdigit),
            Some(b'o') if dialect == Dialect::Postgres => Some(|b: &u8| (b'0'..=b'7').contains(b)),
            Some(b'b') => Some(|b: &u8| *b == b'0' || *b == b'1'),
            _ => None,
        };
        if let Some(ok) = digit_ok {
            // PostgreSQL 16 also takes `0x_FF`.
            let first = if dialect == Dialect::Postgres && s.get(i + 2) == Some(&b'_') { i + 3 } else { i + 2 };
            if s.get(first).is_some_and(ok) {
                return scan_digits(s, first, ok, dialect);
            }
        }
    }
    i = scan_digits(s, i, u8::is_ascii_digit, dialect);
    if i < n && s[i] == b'.' {
        i = scan_digits(s, i + 1, u8::is_ascii_digit, dialect);
    }
    if i < n && (s[i] == b'e' || s[i] == b'E') {
        let mut j = i + 1;
        if j < n && (s[j] == b'+' || s[j] == b'-') {
            j += 1;
        }
        if j < n && s[j].is_ascii_digit() {
            i = scan_digits(s, j, u8::is_ascii_digit, dialect);
        }
    }
    i
}

pub(super) fn is_hidden(t: &Token) -> bool {
    matches!(t.kind, Kind::Literal | Kind::Number)
}

/// Replaces literals with `?` and drops comments; see the module docs.
pub fn sanitize(sql: &str, dialect: Dialect, backslash: Backslash) -> String {
    let tokens = tokenize(sql, dialect, backslash);
    render(sql, &tokens, true)
}

/// Renders tokens back to text, collapsing whitespace; with `hide`, literals
/// become `?` and `IN` lists of them collapse.
pub(super) fn render(sql: &str, tokens: &[Token], hide: bool) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(s: &str) -> String {
        sanitize(s, Dialect::Postgres, Backslash::Unknown)
    }
    fn my(s: &str) -> String {
        sanitize(s, Dialect::MySql, Backslash::Unknown)
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
        // A backslash before a quote: an ordinary character with
        // standard-conforming strings, an escape without; the rest is hidden.
        assert_eq!(pg("SELECT 'C:\\', 'x'"), "SELECT ?");
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
        // A backslashed quote reads differently under NO_BACKSLASH_ESCAPES:
        // everything from there on is hidden.
        assert_eq!(my("SELECT 'it\\'s', 'a''b', _utf8mb4'x' FROM t"), "SELECT ?");
        assert_eq!(my("SELECT 'a\\\\b', 'a''b', _utf8mb4'x' FROM t"), "SELECT ?, ?, ? FROM t");
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
    fn backslashes_hide_whatever_either_server_setting_would_make_a_literal() {
        // standard_conforming_strings on: 'a\' ends at the second quote and
        // 'secret' is a literal; off: the first literal runs on and secret
        // would be a bare word. Neither reading may show it.
        for sql in [
            "SELECT * FROM u WHERE a = 'a\\' AND pw = 'secret1'",
            "SELECT * FROM u WHERE a = 'it\\'s' AND pw = secret2",
            "SELECT N'x\\', 'secret3'",
            "SELECT U&'x\\', 'secret4'",
        ] {
            for out in [pg(sql), my(sql)] {
                assert!(!out.contains("secret"), "{sql} -> {out}");
            }
        }
        // MySQL with NO_BACKSLASH_ESCAPES: "it\" is a whole string.
        let sql = "SELECT * FROM u WHERE a = \"it\\\" AND pw = \"secret5\"";
        assert!(!my(sql).contains("secret"), "{sql} -> {}", my(sql));
        // Unambiguous backslashes keep the rest of the statement readable.
        assert_eq!(pg("SELECT 'C:\\\\tmp' FROM t WHERE a = 1"), "SELECT ? FROM t WHERE a = ?");
        assert_eq!(pg("SELECT E'it\\'s' FROM t"), "SELECT ? FROM t");
    }

    #[test]
    fn a_known_backslash_mode_reads_literals_exactly() {
        let sql = "INSERT INTO t VALUES ('O\\'Brien', 'x\\\\', 5) RETURNING id";
        assert_eq!(sanitize(sql, Dialect::MySql, Backslash::Escapes), "INSERT INTO t VALUES (?, ?, ?) RETURNING id");
        let sql = "SELECT 'C:\\', 'x' FROM t";
        assert_eq!(sanitize(sql, Dialect::Postgres, Backslash::Plain), "SELECT ?, ? FROM t");
        assert_eq!(sanitize(sql, Dialect::MySql, Backslash::Plain), "SELECT ?, ? FROM t");
        // PostgreSQL's E'' strings take escapes whatever the setting.
        assert_eq!(sanitize("SELECT E'a\\'b', 1", Dialect::Postgres, Backslash::Plain), "SELECT ?, ?");
    }

    #[test]
    fn postgres_16_digit_separators_and_octal_are_numbers() {
        assert_eq!(
            pg("SELECT 4111_1111_1111_1111, 1_000.000_5, 0x_FF_FF, 0o7_7, 0b1_0, 1_5e1_0"),
            "SELECT ?, ?, ?, ?, ?, ?"
        );
        assert_eq!(pg("SELECT 1_ FROM t"), "SELECT ?_ FROM t");
        // In MySQL `1_000` is an identifier (they may start with digits).
        assert_eq!(my("SELECT 1_000 FROM t"), "SELECT 1_000 FROM t");
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
}

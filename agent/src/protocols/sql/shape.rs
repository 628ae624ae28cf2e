//! Shape checks detectors use on bytes that should be SQL text.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textual_and_sql_starts() {
        assert!(looks_textual("SELECT 1\n\té".as_bytes()));
        assert!(!looks_textual(b"SELECT\x01"));
        assert!(plausible_sql_start(b"  select"));
        assert!(!plausible_sql_start(b"\x03abc"));
    }
}

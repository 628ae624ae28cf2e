//! Text for attribute values: bounded strings, and ids in hex.

/// `s` cut to at most `max` bytes on a character boundary: attribute values
/// from captured traffic and /proc are bounded before they are stored.
pub fn truncate_utf8(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Lowercase hex, two digits per byte: how trace and span ids are written.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().flat_map(|b| waggle_common::http::hex_byte(*b)).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }

    #[test]
    fn hex_is_two_lowercase_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff, 0x4b]), "000fa0ff4b");
        assert_eq!(hex(&[]), "");
    }
}

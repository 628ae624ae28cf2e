//! Text for attribute values: shared or static where the value repeats,
//! bounded strings, and ids in hex.
use std::{fmt, ops::Deref, sync::Arc};

/// An attribute's text. Values from a fixed vocabulary (methods, versions,
/// `tcp`) are `Static` and values that repeat across spans (peer addresses)
/// are `Shared`, so a span allocates only for what is its own (a path, a
/// statement). Compared, hashed and printed as the text it holds.
#[derive(Clone)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
            Text::Owned(s) => s,
        }
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}
impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text::Static(s)
    }
}
impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::Owned(s)
    }
}
impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Text {
        Text::Shared(s)
    }
}

/// `s` cut to at most `max` bytes on a character boundary: attribute values
/// from captured traffic and /proc are bounded before they are stored.
pub fn truncate_utf8(s: &str, max: usize) -> String {
    cut_utf8(s, max).to_owned()
}

/// [`truncate_utf8`] without the copy: for a value that is looked up (or
/// shared) before anything is allocated for it.
pub fn cut_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Lowercase hex, two digits per byte: how trace and span ids are written.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().flat_map(|b| waggle_common::http::hex_byte(*b)).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_compares_as_its_content_whatever_holds_it() {
        let shared: Arc<str> = Arc::from("127.0.0.1");
        assert_eq!(Text::from("127.0.0.1"), Text::from(shared));
        assert_eq!(Text::from("127.0.0.1".to_owned()), "127.0.0.1");
        assert_eq!(format!("{:?} {}", Text::from("a\"b"), Text::from("c")), "\"a\\\"b\" c");
    }

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

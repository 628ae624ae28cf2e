//! Secrets in request paths. Query strings are never exported; paths are
//! (`url.path`, and the route built from them), so a segment that looks like
//! a credential or personal data is replaced by `REDACTED` before either is
//! made: bearer tokens (JWT), long random tokens, long hex keys, e-mail
//! addresses. Numbers, dates, UUIDs and words stay: they are what an
//! operator reads a path for. Paths whose secrets look like words
//! (`/reset/sunflower-apple-horse`) are named by the operator with
//! `--redact-url-paths /reset/*`: each `*` segment of a matching path is
//! redacted.
use std::borrow::Cow;

/// What a redacted segment becomes (the OpenTelemetry semantic conventions'
/// word for scrubbed URL parts).
pub const REDACTED: &str = "REDACTED";
/// Random tokens shorter than this are left alone (short codes, slugs).
const MIN_TOKEN_LEN: usize = 24;
/// Hex runs this long are keys or digests, not words.
const MIN_HEX_KEY_LEN: usize = 32;
/// Digit/letter alternations that make a long segment a random token.
const MIN_SWITCHES: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Any,
    Word(String),
}

/// The built-in rules alone.
pub static BUILT_IN_REDACTION: PathRedaction = PathRedaction { templates: Vec::new() };

/// The operator's path templates (`--redact-url-paths`); the built-in
/// rules apply with or without them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathRedaction {
    templates: Vec<Vec<Segment>>,
}

impl PathRedaction {
    /// Parses `/reset/*,/invite/*/accept`: comma-separated templates, each
    /// an absolute path whose `*` segments match (and redact) any one
    /// segment; a template matches a path that starts with its segments.
    pub fn parse(list: &str) -> Result<PathRedaction, String> {
        let mut templates = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !raw.starts_with('/') {
                return Err(format!("path template {raw:?} must start with /"));
            }
            let segments: Vec<Segment> = raw
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| if s == "*" { Segment::Any } else { Segment::Word(s.to_owned()) })
                .collect();
            if !segments.contains(&Segment::Any) {
                return Err(format!("path template {raw:?} has no * segment to redact"));
            }
            templates.push(segments);
        }
        if templates.is_empty() {
            return Err("no path template given".to_owned());
        }
        Ok(PathRedaction { templates })
    }

    pub fn templates(&self) -> usize {
        self.templates.len()
    }

    /// `path` with every secret segment replaced; borrowed when none is.
    pub fn apply<'p>(&self, path: &'p str) -> Cow<'p, str> {
        let named = self.templates.iter().find(|t| matches(t, path));
        let secret = |index: usize, segment: &str| {
            looks_like_secret(segment) || named.is_some_and(|t| t.get(index) == Some(&Segment::Any))
        };
        if !path.split('/').filter(|s| !s.is_empty()).enumerate().any(|(i, s)| secret(i, s)) {
            return Cow::Borrowed(path);
        }
        let mut out = String::with_capacity(path.len());
        let mut index = 0;
        for (n, segment) in path.split('/').enumerate() {
            if n > 0 {
                out.push('/');
            }
            if segment.is_empty() {
                continue;
            }
            out.push_str(if secret(index, segment) { REDACTED } else { segment });
            index += 1;
        }
        Cow::Owned(out)
    }
}

fn matches(template: &[Segment], path: &str) -> bool {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    template.iter().all(|t| match (t, segments.next()) {
        (Segment::Any, Some(_)) => true,
        (Segment::Word(w), Some(s)) => w == s,
        (_, None) => false,
    })
}

/// A path segment that is a credential or personal data rather than a name
/// or an id.
pub fn looks_like_secret(segment: &str) -> bool {
    let b = segment.as_bytes();
    // JWTs: base64url of '{"', three dot-separated parts.
    if b.len() >= 16 && segment.starts_with("eyJ") {
        return true;
    }
    // E-mail addresses (also percent-encoded).
    if segment.contains('@') || segment.contains("%40") {
        return true;
    }
    if b.len() >= MIN_HEX_KEY_LEN && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    if b.len() < MIN_TOKEN_LEN || is_uuid(b) {
        return false;
    }
    let token_chars = b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'~' | b'='));
    // Random tokens switch between digits and letters all the time (a
    // 24-character base64 token about six times); slugs and dated names
    // ("install-nginx-on-debian-12") hardly ever.
    let switches = b
        .windows(2)
        .filter(|w| w[0].is_ascii_alphanumeric() && w[1].is_ascii_alphanumeric())
        .filter(|w| w[0].is_ascii_digit() != w[1].is_ascii_digit())
        .count();
    token_chars && switches >= MIN_SWITCHES
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_rules_hide_tokens_keys_and_addresses_and_keep_ids() {
        let none = PathRedaction::default();
        for (path, want) in [
            ("/users/42/orders/2024-01-15", "/users/42/orders/2024-01-15"),
            ("/items/3f2a9c1e-8b7d-4e6f-a1b2-c3d4e5f60718", "/items/3f2a9c1e-8b7d-4e6f-a1b2-c3d4e5f60718"),
            ("/static/app.3f2a9c1e8b7d4e6f.js", "/static/app.3f2a9c1e8b7d4e6f.js"),
            ("/api/v1/very-long-readable-route-name", "/api/v1/very-long-readable-route-name"),
            ("/blog/install-nginx-on-debian-12-in-2024", "/blog/install-nginx-on-debian-12-in-2024"),
            ("/reset/Zx81kLq0pW3nB7vR2tY9uE5aS4dF", "/reset/REDACTED"),
            ("/auth/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig/x", "/auth/REDACTED/x"),
            ("/keys/0123456789abcdef0123456789abcdef/", "/keys/REDACTED/"),
            ("/users/jane.doe@example.com/profile", "/users/REDACTED/profile"),
            ("/users/jane.doe%40example.com", "/users/REDACTED"),
        ] {
            assert_eq!(none.apply(path), want, "{path}");
        }
        assert!(matches!(none.apply("/users/42"), Cow::Borrowed(_)), "no copy when nothing is hidden");
    }

    #[test]
    fn operator_templates_hide_word_like_secrets() {
        let r = PathRedaction::parse("/reset/*, /invite/*/accept").unwrap();
        assert_eq!(r.templates(), 2);
        assert_eq!(r.apply("/reset/sunflower-apple-horse"), "/reset/REDACTED");
        assert_eq!(r.apply("/reset/sunflower/confirm"), "/reset/REDACTED/confirm");
        assert_eq!(r.apply("/invite/blue-fox/accept"), "/invite/REDACTED/accept");
        assert_eq!(r.apply("/invite/blue-fox/decline"), "/invite/blue-fox/decline");
        assert_eq!(r.apply("/reset"), "/reset");
        assert_eq!(r.apply("/other/sunflower"), "/other/sunflower");
        assert!(PathRedaction::parse("reset/*").unwrap_err().contains("must start with /"));
        assert!(PathRedaction::parse("/reset").unwrap_err().contains("no * segment"));
        assert!(PathRedaction::parse(" , ").unwrap_err().contains("no path template"));
    }
}

//! Low-cardinality `http.route` inference from raw request paths.
//!
//! The agent never sees the application's router, so it guesses a template:
//! path segments that look like identifiers (numbers, UUIDs, hashes, random
//! tokens) become `{id}`. A route is a metric/grouping key in every backend,
//! so erring towards `{id}` is cheaper than exploding cardinality, but common
//! words (`v1`, `app.js`, `items`) must survive so routes stay readable.

/// Segments kept before the rest of the path collapses into `/...`.
const MAX_SEGMENTS: usize = 8;
/// A segment longer than this is treated as data, not as a route word.
const MAX_SEGMENT_LEN: usize = 64;
/// Placeholder for an identifier-like segment.
const ID: &str = "{id}";

/// Turns a raw request path (query string allowed) into a route template.
///
/// `/users/123?x=1` → `/users/{id}`; an empty path → `/`.
pub fn infer_route(path: &str) -> String {
    let path = strip_query(path);
    if path == "*" {
        // `OPTIONS * HTTP/1.1`: the whole server, not a resource.
        return "*".to_owned();
    }
    let path = strip_scheme_and_authority(path);
    let trailing_slash = path.len() > 1 && path.ends_with('/');
    let mut route = String::with_capacity(path.len().min(256) + 8);
    let mut truncated = false;
    for (kept, segment) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        if kept == MAX_SEGMENTS {
            truncated = true;
            break;
        }
        route.push('/');
        if looks_like_id(segment) {
            route.push_str(ID);
        } else {
            route.push_str(segment);
        }
    }
    if truncated {
        route.push_str("/...");
    } else if route.is_empty() || trailing_slash {
        route.push('/');
    }
    route
}

fn strip_query(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(i) => &path[..i],
        None => path,
    }
}

/// Absolute-form targets (`GET http://host/x HTTP/1.1`, sent to proxies)
/// carry the authority; the route is only the path part.
fn strip_scheme_and_authority(path: &str) -> &str {
    let lower_starts = |p: &str| path.len() >= p.len() && path.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    let rest = if lower_starts("http://") {
        &path[7..]
    } else if lower_starts("https://") {
        &path[8..]
    } else {
        return path;
    };
    match rest.find('/') {
        Some(i) => &rest[i..],
        None => "",
    }
}

/// Whether a single path segment is an identifier rather than a route word.
pub(crate) fn looks_like_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.len() > MAX_SEGMENT_LEN {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    // 123, 2024-01-15, 1.2.3, 12:30
    if digits > 0
        && b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.' | b',' | b':'))
    {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    // Hex hashes and ids. Long all-letter hex words are rare in English
    // ("deadbeefcafe" is an id), short ones ("facade", "added") are words.
    if b.iter().all(u8::is_ascii_hexdigit) && ((b.len() >= 8 && digits > 0) || b.len() >= 12) {
        return true;
    }
    // Random tokens / base64(url) ids: long, mixing letters and digits.
    let token_chars = b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'=' | b'~'));
    if token_chars && b.len() >= 16 && digits > 0 && letters > 0 {
        return true;
    }
    // JWT-like bearer tokens put in paths (base64 JSON header "{\"...").
    if b.len() >= 16 && seg.starts_with("eyJ") {
        return true;
    }
    // E-mail addresses as path keys: personal data, and unbounded cardinality.
    if b.contains(&b'@') {
        return true;
    }
    false
}

fn is_uuid(b: &[u8]) -> bool {
    if b.len() != 36 {
        return false;
    }
    b.iter().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_from_the_contract() {
        assert_eq!(infer_route("/users/123"), "/users/{id}");
        assert_eq!(infer_route("/orders/3f2504e0-4f89-11d3-9a0c-0305e82c3301/items"), "/orders/{id}/items");
        assert_eq!(infer_route("/static/app.js"), "/static/app.js");
        assert_eq!(infer_route("/api/v1/items"), "/api/v1/items");
        assert_eq!(infer_route("/a/deadbeefcafe"), "/a/{id}");
    }

    #[test]
    fn query_and_fragment_are_stripped() {
        assert_eq!(infer_route("/search?q=secret&page=2"), "/search");
        assert_eq!(infer_route("/users/42?token=abc"), "/users/{id}");
        assert_eq!(infer_route("/doc#section"), "/doc");
        assert_eq!(infer_route("?x=1"), "/");
    }

    #[test]
    fn empty_and_root() {
        assert_eq!(infer_route(""), "/");
        assert_eq!(infer_route("/"), "/");
        assert_eq!(infer_route("//"), "/");
        assert_eq!(infer_route("*"), "*");
    }

    #[test]
    fn trailing_slash_and_duplicate_slashes() {
        assert_eq!(infer_route("/users/"), "/users/");
        assert_eq!(infer_route("/users//7/"), "/users/{id}/");
    }

    #[test]
    fn identifiers_are_templated() {
        assert_eq!(infer_route("/commits/a1b2c3d4"), "/commits/{id}");
        assert_eq!(infer_route("/blobs/da39a3ee5e6b4b0d3255bfef95601890afd80709"), "/blobs/{id}");
        assert_eq!(infer_route("/s/Xk9fQ2LmP0aZ7bYc"), "/s/{id}");
        assert_eq!(infer_route("/s/abc_DEF-123_ghi-456"), "/s/{id}");
        assert_eq!(infer_route("/days/2024-01-15"), "/days/{id}");
        assert_eq!(infer_route("/u/alice@example.com/x"), "/u/{id}/x");
        assert_eq!(infer_route("/t/eyJhbGciOiJIUzI1NiJ9"), "/t/{id}");
        let long = "x".repeat(65);
        assert_eq!(infer_route(&format!("/p/{long}")), "/p/{id}");
    }

    #[test]
    fn words_survive() {
        for path in [
            "/api/v2beta1/items",
            "/health",
            "/facade",
            "/decade/added",
            "/static/jquery-3.6.0.min.js",
            "/oauth2/callback",
            "/users/me/profile-settings",
        ] {
            assert_eq!(infer_route(path), path, "{path} must not be templated");
        }
        // Short hex-looking words are words unless they contain a digit.
        assert_eq!(infer_route("/cafebabe"), "/cafebabe");
        assert_eq!(infer_route("/cafe1abe"), "/{id}");
    }

    #[test]
    fn depth_is_bounded() {
        assert_eq!(infer_route("/a/b/c/d/e/f/g/h"), "/a/b/c/d/e/f/g/h");
        assert_eq!(infer_route("/a/b/c/d/e/f/g/h/i/j/k"), "/a/b/c/d/e/f/g/h/...");
    }

    #[test]
    fn absolute_form_targets_use_the_path() {
        assert_eq!(infer_route("http://example.com/users/9?x"), "/users/{id}");
        assert_eq!(infer_route("HTTP://example.com"), "/");
    }

    #[test]
    fn non_ascii_is_handled() {
        assert_eq!(infer_route("/café/ünïcode"), "/café/ünïcode");
        assert_eq!(infer_route("/%E2%82%AC/12"), "/%E2%82%AC/{id}");
    }
}

//! The HTTP span's repeating strings, shared instead of allocated per request.
//!
//! A service answers the same few paths, hosts and user agents over and over,
//! and each request's path, route, span name and server address used to be a
//! fresh `String` allocated on the event loop and freed on the export thread:
//! about half of the agent's per-span allocator and page-fault time. Here each
//! distinct value is allocated once and handed out as an `Arc<str>`; the route
//! and span names derived from a path are computed once per path too.
//!
//! The tables live in a thread-local: parsers run on the pipeline's one task,
//! so there is exactly one table set in practice, with no locking. They are
//! bounded in entries and bytes; when a limit is reached they are emptied
//! whole (O(1) amortised, no per-entry bookkeeping on the hot path), which the
//! `http_strings_forgotten` counter reports (published by the pipeline's tick). Forgetting only costs the next
//! request of each value one allocation, as before this cache existed.
use std::{
    cell::RefCell,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use super::{redact::PathRedaction, route::infer_route};
use crate::model::Text;

/// Distinct strings kept (paths count once more for their route and names).
const MAX_ENTRIES: usize = 4096;
/// Bytes of text kept across all tables: paths may be up to 2 KiB each.
const MAX_BYTES: usize = 1 << 20;

/// Times the tables were emptied because a limit was reached.
static FORGOTTEN: AtomicU64 = AtomicU64::new(0);

/// How many times the tables were emptied (the `http_strings_forgotten`
/// counter).
pub fn forgotten() -> u64 {
    FORGOTTEN.load(Ordering::Relaxed)
}

/// What a path becomes in a span, for one redaction.
struct PathInfo {
    /// Identity of the redaction these were computed with (its address).
    redaction: usize,
    path: Text,
    route: Arc<str>,
    /// `"<METHOD> <route>"` per method seen with this path.
    names: Vec<(&'static str, Arc<str>)>,
}

#[derive(Default)]
struct Tables {
    strings: foldhash::HashSet<Arc<str>>,
    paths: foldhash::HashMap<Arc<str>, PathInfo>,
    bytes: usize,
}

impl Tables {
    /// Room for `len` more bytes and one more entry, emptying the tables if
    /// either limit would be passed.
    fn make_room(&mut self, len: usize) {
        if self.bytes + len > MAX_BYTES || self.strings.len() + self.paths.len() >= MAX_ENTRIES {
            self.strings.clear();
            self.paths.clear();
            self.bytes = 0;
            FORGOTTEN.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes += len;
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        self.make_room(s.len());
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
    }
}

thread_local! {
    static TABLES: RefCell<Tables> = RefCell::new(Tables::default());
}

/// `s` as a shared string: the same allocation for every equal value while
/// it stays in the table.
pub(super) fn intern(s: &str) -> Arc<str> {
    TABLES.with(|t| t.borrow_mut().intern(s))
}

/// The span's `url.path` (redacted), `http.route` and name for a request's
/// path and method; `name_method` is the method word the name starts with.
/// One table lookup for a path seen before: the raw path is not interned on
/// its own (the path table's key is its only copy).
pub(super) fn path_strings(raw: &str, redaction: &PathRedaction, name_method: &'static str) -> PathStrings {
    let id = std::ptr::from_ref(redaction) as usize;
    TABLES.with(|t| {
        let mut t = t.borrow_mut();
        if t.paths.get(raw).is_none_or(|info| info.redaction != id) {
            let key: Arc<str> = Arc::from(raw);
            let path = match redaction.apply(raw) {
                std::borrow::Cow::Borrowed(_) => Text::Shared(Arc::clone(&key)),
                std::borrow::Cow::Owned(hidden) => Text::Shared(Arc::from(hidden)),
            };
            let route: Arc<str> = if &*path == "*" { Arc::from("*") } else { Arc::from(infer_route(&path)) };
            t.make_room(raw.len() + path.len() + route.len());
            t.paths.insert(key, PathInfo { redaction: id, path, route, names: Vec::new() });
        }
        let Some(info) = t.paths.get_mut(raw) else {
            // Just inserted: unreachable, but a fresh computation is correct.
            let path = Text::Owned(redaction.apply(raw).into_owned());
            let route: Arc<str> = Arc::from(infer_route(&path));
            let name = Arc::from(format!("{name_method} {route}"));
            return PathStrings { path, route, name };
        };
        let name = match info.names.iter().find(|(m, _)| *m == name_method) {
            Some((_, name)) => Arc::clone(name),
            None => {
                let name: Arc<str> = Arc::from(format!("{name_method} {}", info.route));
                info.names.push((name_method, Arc::clone(&name)));
                name
            }
        };
        PathStrings { path: info.path.clone(), route: Arc::clone(&info.route), name }
    })
}

/// A request path as the span shows it.
#[derive(Debug)]
pub(super) struct PathStrings {
    /// `url.path`, redacted.
    pub(super) path: Text,
    /// `http.route`.
    pub(super) route: Arc<str>,
    /// The span's name, `"<METHOD> <route>"`.
    pub(super) name: Arc<str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_allocation() {
        let a = intern("shop.internal");
        let b = intern("shop.internal");
        assert!(Arc::ptr_eq(&a, &b));
        let raw = "/users/42";
        let PathStrings { path, route, name } = path_strings(raw, &super::super::redact::BUILT_IN_REDACTION, "GET");
        assert_eq!((&*path, &*route, &*name), ("/users/42", "/users/{id}", "GET /users/{id}"));
        let again = path_strings(raw, &super::super::redact::BUILT_IN_REDACTION, "GET");
        assert!(Arc::ptr_eq(&route, &again.route) && Arc::ptr_eq(&name, &again.name));
        let post = path_strings(raw, &super::super::redact::BUILT_IN_REDACTION, "POST");
        assert_eq!(&*post.name, "POST /users/{id}");
    }

    #[test]
    fn tables_are_bounded_and_say_when_they_forget() {
        let before = FORGOTTEN.load(Ordering::Relaxed);
        for i in 0..MAX_ENTRIES + 10 {
            intern(&format!("/unique/{i}"));
        }
        assert!(FORGOTTEN.load(Ordering::Relaxed) > before);
        TABLES.with(|t| assert!(t.borrow().strings.len() < MAX_ENTRIES));
    }
}

//! The FastCGI parser's fuzz entry point.
use waggle_common::Role;

use super::detect::FastCgiDetector;
use crate::model::{AttrValue, SpanKind, SpanStatus};
use crate::protocols::{script, ParserConfig, ProtocolDetector};

/// Fuzzing entry point (`fuzz/fuzz_targets/fastcgi.rs`), also run by the
/// unit tests: runs `data` as a [`crate::protocols::script`] in every role.
/// Every span must have a method, the role's kind, a route-shaped name, a
/// plausible status and error attributes exactly when it failed. Panics on
/// a broken invariant; returns how many spans were emitted.
pub fn fuzz_script(data: &[u8]) -> usize {
    let new_parser = |role| FastCgiDetector.new_parser(role, &ParserConfig::default());
    script::run(data, &FastCgiDetector, new_parser, |span, role, _| {
        if role != Role::Unknown {
            let expected = if role == Role::Server { SpanKind::Server } else { SpanKind::Client };
            assert_eq!(span.kind, expected);
        }
        let Some(AttrValue::Str(method)) = span.attr("http.request.method") else {
            panic!("no method: {span:?}");
        };
        assert!(span.name.starts_with(if method.as_str() == "_OTHER" { "HTTP" } else { method.as_str() }));
        if let Some(AttrValue::Str(route)) = span.attr("http.route") {
            assert!(route.starts_with('/') || route.as_str() == "*", "{route}");
        }
        if let Some(AttrValue::Int(code)) = span.attr("http.response.status_code") {
            assert!((100..=999).contains(code), "status {code}");
        }
        assert_eq!(span.attr("network.protocol.name"), Some(&AttrValue::from("fastcgi")));
        assert_eq!(matches!(span.status, SpanStatus::Error { .. }), span.attr("error.type").is_some());
    })
}

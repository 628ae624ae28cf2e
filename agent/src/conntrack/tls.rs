//! TLS connections: their payload is plaintext the kernel read at the TLS
//! library (`DataEvent::flags` has `DATA_TLS`), parsed like any other
//! connection's bytes; the spans say the exchange was encrypted.
use waggle_common::{tls::DATA_TLS, DataEvent};

use crate::model::{AttrValue, ParsedSpan};

/// What a data record does to a connection, by whether it and the
/// connection are TLS plaintext.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Parse it as usual.
    Feed,
    /// The connection's first plaintext record: what its ciphertext did
    /// (the handshake's bytes were being detected, or were declared unknown
    /// and muted) is void; it starts over as a fresh connection.
    Restart,
    /// Ciphertext queued before the kernel knew the connection was TLS but
    /// read after its plaintext: not parsed (counted).
    Ignore,
}

pub(super) fn step(conn_is_tls: bool, header: &DataEvent) -> Step {
    match (conn_is_tls, header.flags & DATA_TLS != 0) {
        (false, true) => Step::Restart,
        (true, false) => Step::Ignore,
        _ => Step::Feed,
    }
}

/// HTTP spans of a TLS connection are `https`; every span carries
/// `tls.protocol.name`. `tls.protocol.version` is not known: the kernel
/// would have to read it from OpenSSL's private structs.
pub(super) fn mark_spans(spans: &mut [ParsedSpan]) {
    for span in spans {
        for (key, value) in span.attributes.iter_mut() {
            if *key == "url.scheme" {
                *value = AttrValue::from("https");
            }
        }
        span.attributes.push(("tls.protocol.name", AttrValue::from("tls")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SpanKind, SpanStatus};

    #[test]
    fn plaintext_restarts_a_connection_once_and_ciphertext_after_it_is_ignored() {
        let plain = DataEvent { flags: DATA_TLS, ..DataEvent::default() };
        let cipher = DataEvent::default();
        assert_eq!(step(false, &plain), Step::Restart);
        assert_eq!(step(true, &plain), Step::Feed);
        assert_eq!(step(true, &cipher), Step::Ignore);
        assert_eq!(step(false, &cipher), Step::Feed);
    }

    #[test]
    fn http_spans_become_https_and_every_span_says_tls() {
        let span = |attributes| ParsedSpan {
            kind: SpanKind::Client,
            name: "GET /".into(),
            start_ns: 1,
            end_ns: 2,
            status: SpanStatus::Unset,
            attributes,
            incoming_context: None,
            incoming_tracestate: None,
            tid: 1,
        };
        let mut spans = vec![
            span(vec![("url.scheme", AttrValue::from("http")), ("http.route", AttrValue::from("/"))]),
            span(vec![("db.system.name", AttrValue::from("postgresql"))]),
        ];
        mark_spans(&mut spans);
        assert_eq!(spans[0].attr("url.scheme"), Some(&AttrValue::from("https")));
        assert_eq!(spans[0].attr("http.route"), Some(&AttrValue::from("/")));
        assert!(spans.iter().all(|s| s.attr("tls.protocol.name") == Some(&AttrValue::from("tls"))));
        assert_eq!(spans[1].attr("url.scheme"), None, "no scheme where there was none");
    }
}

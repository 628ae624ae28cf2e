//! The wire form of one trace between the agent's `/traces/<id>` endpoint
//! and `waggle trace <id>`: a JSON object with the fields a waterfall
//! shows (a subset of `--print json`'s, with the same names).
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::TraceSpan;
use crate::{
    export::stdout::kind_str,
    model::{hex, AttrValue, ProcessResource, SpanKind, Text},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("{0:?} is not a trace id (32 hex digits, not all zero)")]
    BadTraceId(String),
    #[error("decoding the agent's answer: {0}")]
    Decode(String),
}

#[derive(Serialize, Deserialize)]
struct WireTrace {
    trace_id: String,
    spans: Vec<WireSpan>,
}

#[derive(Serialize, Deserialize)]
struct WireSpan {
    service: String,
    pid: u32,
    kind: String,
    name: String,
    span_id: String,
    parent_span_id: Option<String>,
    start_unix_nano: u64,
    end_unix_nano: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status_code: Option<String>,
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status_message: Option<String>,
}

/// 32 hex digits (either case), not all zero, as W3C trace context has it.
pub fn parse_trace_id(raw: &str) -> Result<[u8; 16], LookupError> {
    parse_hex(raw.trim()).filter(|id| *id != [0; 16]).ok_or_else(|| LookupError::BadTraceId(raw.to_owned()))
}

/// Exactly `2 * N` hex digits (either case).
fn parse_hex<const N: usize>(raw: &str) -> Option<[u8; N]> {
    // from_str_radix alone would take a sign ("+f").
    if raw.len() != 2 * N || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(raw.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

pub fn encode_trace(trace_id: &[u8; 16], spans: &[TraceSpan]) -> String {
    let wire = WireTrace {
        trace_id: hex(trace_id),
        spans: spans
            .iter()
            .map(|s| WireSpan {
                service: s.resource.service_name.clone(),
                pid: s.resource.pid,
                kind: kind_str(s.kind).to_owned(),
                name: s.name.clone(),
                span_id: hex(&s.span_id),
                parent_span_id: s.parent_span_id.as_ref().map(|p| hex(p)),
                start_unix_nano: unix_nanos(s.start),
                end_unix_nano: unix_nanos(s.end),
                status_code: match &s.code {
                    Some(AttrValue::Int(code)) => Some(code.to_string()),
                    Some(AttrValue::Str(code)) => Some(code.to_string()),
                    Some(AttrValue::Bool(_)) | None => None,
                },
                status: if s.error.is_some() { "ERROR" } else { "UNSET" }.to_owned(),
                status_message: s.error.clone().filter(|m| !m.is_empty()),
            })
            .collect(),
    };
    // Serialising plain strings and numbers cannot fail.
    serde_json::to_string(&wire).unwrap_or_default()
}

/// The spans of an encoded trace. One process's spans share a resource.
pub fn decode_trace(body: &str) -> Result<Vec<TraceSpan>, LookupError> {
    let wire: WireTrace = serde_json::from_str(body).map_err(|e| LookupError::Decode(e.to_string()))?;
    let trace_id = parse_trace_id(&wire.trace_id).map_err(|e| LookupError::Decode(e.to_string()))?;
    let mut resources: Vec<Arc<ProcessResource>> = Vec::new();
    let mut spans = Vec::with_capacity(wire.spans.len());
    for s in wire.spans {
        let span_id =
            parse_hex(&s.span_id).ok_or_else(|| LookupError::Decode(format!("bad span id {:?}", s.span_id)))?;
        let resource = match resources.iter().find(|r| r.pid == s.pid && r.service_name == s.service) {
            Some(r) => r.clone(),
            None => {
                let r = Arc::new(ProcessResource {
                    service_name: s.service,
                    pid: s.pid,
                    executable_name: String::new(),
                    attributes: Vec::new(),
                });
                resources.push(r.clone());
                r
            }
        };
        spans.push(TraceSpan {
            resource,
            trace_id,
            span_id,
            parent_span_id: s.parent_span_id.as_deref().and_then(parse_hex),
            kind: if s.kind == "CLIENT" { SpanKind::Client } else { SpanKind::Server },
            name: s.name,
            code: s.status_code.map(|c| AttrValue::Str(Text::Owned(c))),
            error: (s.status == "ERROR").then(|| s.status_message.unwrap_or_default()),
            start: UNIX_EPOCH + Duration::from_nanos(s.start_unix_nano),
            end: UNIX_EPOCH + Duration::from_nanos(s.end_unix_nano),
        });
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{tests::span, waterfall::TraceSpan};
    use crate::model::SpanStatus;

    #[test]
    fn a_trace_survives_the_wire() {
        let mut server = span("GET /users/{id}");
        server.parent_span_id = Some([7; 8]);
        let mut client = span("SELECT users");
        client.kind = SpanKind::Client;
        client.span_id = [9; 8];
        client.status = SpanStatus::Error { description: "duplicate key".into() };
        client.attributes = vec![("db.response.status_code", AttrValue::Str("23505".into()))];
        let spans = vec![TraceSpan::of(&server), TraceSpan::of(&client)];
        let body = encode_trace(&server.trace_id, &spans);
        let back = decode_trace(&body).unwrap();
        assert_eq!(back.len(), 2);
        for (a, b) in spans.iter().zip(&back) {
            assert_eq!(
                (a.trace_id, a.span_id, a.parent_span_id, a.kind),
                (b.trace_id, b.span_id, b.parent_span_id, b.kind)
            );
            assert_eq!((&a.name, a.start, a.end, &a.error), (&b.name, b.start, b.end, &b.error));
            assert_eq!(a.resource.service_name, b.resource.service_name);
            assert_eq!(a.code.as_ref().map(|c| format!("{c:?}")).is_some(), b.code.is_some());
        }
        assert_eq!(back[1].code, Some(AttrValue::Str("23505".into())));
        assert_eq!(back[0].code, Some(AttrValue::Str("200".into())));
        assert!(Arc::ptr_eq(&back[0].resource, &back[1].resource), "one process, one resource");
    }

    #[test]
    fn trace_ids_are_32_hex_digits_not_all_zero() {
        assert_eq!(parse_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736").unwrap()[0], 0x4b);
        assert_eq!(parse_trace_id(" 4bf92f3577b34da6a3ce929d0e0e4736\n").unwrap()[15], 0x36);
        for bad in [
            "",
            "4bf92f",
            "0".repeat(32).as_str(),
            "zz".repeat(16).as_str(),
            "é".repeat(16).as_str(),
            "+f".repeat(16).as_str(),
        ] {
            assert!(parse_trace_id(bad).is_err(), "{bad:?}");
        }
        assert!(decode_trace("{\"trace_id\":\"x\",\"spans\":[]}").is_err());
        assert!(decode_trace("not json").is_err());
    }
}

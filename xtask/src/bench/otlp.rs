//! Counting the spans in an OTLP/HTTP protobuf body without decoding it:
//! the sink only needs how many spans each tracer delivered (for agent CPU
//! per span, and to see whether an SDK dropped spans), so a walk over the
//! protobuf wire format replaces generated types and their allocations.
//!
//! `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }`,
//! `ResourceSpans { repeated ScopeSpans scope_spans = 2; }`,
//! `ScopeSpans { repeated Span spans = 2; }`.

const WIRE_VARINT: u64 = 0;
const WIRE_I64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_I32: u64 = 5;

/// Spans in a serialized `ExportTraceServiceRequest`; None when the bytes
/// are not a well-formed protobuf message.
pub fn count_spans(body: &[u8]) -> Option<u64> {
    let mut spans = 0u64;
    let mut err = false;
    let ok = each_len_field(body, 1, |resource_spans| {
        let ok = each_len_field(resource_spans, 2, |scope_spans| {
            let ok = each_len_field(scope_spans, 2, |_span| spans += 1);
            err |= !ok;
        });
        err |= !ok;
    });
    (ok && !err).then_some(spans)
}

/// Calls `f` with the payload of every length-delimited field numbered
/// `field` in `msg`, skipping all other fields; false when `msg` is malformed.
fn each_len_field(mut msg: &[u8], field: u64, mut f: impl FnMut(&[u8])) -> bool {
    while !msg.is_empty() {
        let Some(key) = varint(&mut msg) else { return false };
        let skip = match key & 7 {
            WIRE_VARINT => {
                if varint(&mut msg).is_none() {
                    return false;
                }
                0
            }
            WIRE_I64 => 8,
            WIRE_I32 => 4,
            WIRE_LEN => {
                let Some(len) = varint(&mut msg).and_then(|l| usize::try_from(l).ok()) else { return false };
                if len > msg.len() {
                    return false;
                }
                if key >> 3 == field {
                    f(&msg[..len]);
                }
                len
            }
            // Groups (3, 4) are not used by OTLP; anything else is not protobuf.
            _ => return false,
        };
        if skip > msg.len() {
            return false;
        }
        msg = &msg[skip..];
    }
    true
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn len_field(out: &mut Vec<u8>, field: u64, payload: &[u8]) {
        put_varint(out, (field << 3) | WIRE_LEN);
        put_varint(out, payload.len() as u64);
        out.extend_from_slice(payload);
    }

    /// A request with one ResourceSpans per entry of `per_resource`, each
    /// holding one ScopeSpans per inner entry with that many spans, plus the
    /// resource, scope and span fields a real exporter writes around them.
    pub fn request(per_resource: &[&[usize]]) -> Vec<u8> {
        let mut req = Vec::new();
        for scopes in per_resource {
            let mut rs = Vec::new();
            len_field(&mut rs, 1, b"\x0a\x0cservice.name"); // resource
            for &spans in scopes.iter() {
                let mut ss = Vec::new();
                len_field(&mut ss, 1, b"\x0a\x04waggle"); // scope
                for i in 0..spans {
                    let mut span = Vec::new();
                    len_field(&mut span, 1, &[0xab; 16]); // trace_id
                    put_varint(&mut span, (6 << 3) | WIRE_VARINT); // kind
                    put_varint(&mut span, 2);
                    put_varint(&mut span, (7 << 3) | WIRE_I64); // start_time_unix_nano (fixed64)
                    span.extend_from_slice(&(1_700_000_000_000_000_000u64 + i as u64).to_le_bytes());
                    len_field(&mut ss, 2, &span);
                }
                len_field(&mut ss, 3, b"https://opentelemetry.io/schemas/1.26.0"); // schema_url
                len_field(&mut rs, 2, &ss);
            }
            len_field(&mut req, 1, &rs);
        }
        req
    }

    #[test]
    fn spans_are_counted_across_resources_and_scopes() {
        assert_eq!(count_spans(&request(&[&[3, 2], &[5]])), Some(10));
        assert_eq!(count_spans(&request(&[&[0]])), Some(0));
        assert_eq!(count_spans(&[]), Some(0));
        // A span count past one byte of varint length.
        assert_eq!(count_spans(&request(&[&[300]])), Some(300));
    }

    #[test]
    fn malformed_bodies_are_not_counted() {
        let req = request(&[&[4]]);
        assert_eq!(count_spans(&req[..req.len() - 3]), None, "truncated");
        assert_eq!(count_spans(b"{\"resourceSpans\":[]}"), None, "OTLP/JSON");
        assert_eq!(count_spans(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), None);
    }
}

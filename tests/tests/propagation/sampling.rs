//! The sampling test's client and the SDK rule it checks the kernel
//! against.

/// The OpenTelemetry SDKs' TraceIdRatioBased rule, written out here so the
/// test checks the kernel against the spec, not against itself.
pub fn sdk_samples(trace_hex: &str, ratio: f64) -> bool {
    let low = u64::from_str_radix(&trace_hex[16..32], 16).unwrap_or_else(|e| panic!("trace id {trace_hex}: {e}"));
    ((low >> 1) as f64) < ratio * (1u64 << 63) as f64
}

/// `00-<trace>-<span>-<flags>` split.
pub fn split_tp(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

/// GETs /checkout on A (argv[1]) argv[2] times, a new connection each,
/// printing each reply; then once more with a sampled caller context
/// (trace argv[3]).
pub const SAMPLING_CLIENT: &str = r#"
import http.client, sys
port, n, fence = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for i in range(n + 1):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    headers = {"traceparent": "00-%s-00f067aa0ba902b7-01" % fence} if i == n else {}
    c.request("GET", "/checkout", headers=headers)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body)
    print(body.decode(), flush=True)
    c.close()
"#;

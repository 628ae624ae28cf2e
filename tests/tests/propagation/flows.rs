//! The spans of one `curl -> A -> (B, PostgreSQL)` request, matched by
//! kernel time, and the In/Through/Out assertions on them.
use waggle_e2e::{curl, describe, ClientRun, OtlpReceiver, Span, SPAN_TIMEOUT};

use crate::services::{Service, SERVICE_A, SERVICE_B};

/// `inner` started while `outer` was running (kernel times, one clock).
pub fn starts_within(inner: &Span, outer: &Span) -> bool {
    outer.start_ns <= inner.start_ns && inner.start_ns <= outer.end_ns
}

pub fn is_sql(s: &Span) -> bool {
    s.is_client() && s.attr("db.system.name").is_some()
}

pub fn is_http_to(s: &Span, kind_client: bool, path: &str) -> bool {
    s.is_client() == kind_client && s.is_server() != kind_client && s.attr_str("url.path") == Some(path)
}

/// One `curl -> A -> (B, PostgreSQL)` request as exported.
pub struct Flow {
    pub curl: Span,
    pub a_server: Span,
    pub a_http: Span,
    pub a_sql: Vec<Span>,
    pub b_server: Span,
}

impl Flow {
    pub fn render(&self) -> String {
        let mut all = vec![self.curl.clone(), self.a_server.clone(), self.a_http.clone()];
        all.extend(self.a_sql.iter().cloned());
        all.push(self.b_server.clone());
        describe(&all)
    }
}

/// The processes of one test, for picking spans.
pub struct Pids {
    pub a: u32,
    pub b: u32,
}

/// Exactly one element of `v`, or a panic naming `what`.
#[track_caller]
pub fn one(v: Vec<Span>, what: &str, context: &[Span]) -> Span {
    assert_eq!(
        v.len(),
        1,
        "expected exactly one {what}, got {}:\n{}\nspans of the test's processes:\n{}",
        v.len(),
        describe(&v),
        describe(context)
    );
    v.into_iter().next().unwrap()
}

/// Waits for the spans of the requests curl runs `curls` made, then
/// matches each into a [`Flow`].
#[track_caller]
pub fn flows(receiver: &OtlpReceiver, pids: &Pids, curls: &[&ClientRun]) -> Vec<Flow> {
    let curl_pids: Vec<u32> = curls.iter().map(|c| c.pid).collect();
    let mut focus = vec![pids.a, pids.b];
    focus.extend(&curl_pids);
    receiver.focus(&focus);
    let n = curls.len();
    let count = |spans: &[Span], pid: u32, f: &dyn Fn(&Span) -> bool| {
        spans.iter().filter(|s| s.pid() == Some(pid) && f(s)).count()
    };
    // A's server span ends after its client calls and after B answered, so
    // once it is in, everything of that request has been exported.
    let spans = receiver.expect_spans(&format!("{n} request(s) curl -> A -> (B, PostgreSQL)"), SPAN_TIMEOUT, |spans| {
        curl_pids.iter().all(|p| count(spans, *p, &|s| is_http_to(s, true, "/checkout")) == 1)
            && count(spans, pids.a, &|s| is_http_to(s, false, "/checkout")) >= n
            && count(spans, pids.a, &|s| is_http_to(s, true, "/inventory")) >= n
            && count(spans, pids.a, &|s| is_sql(s) && s.attr_str("db.operation.name") == Some("SELECT")) >= n
            && count(spans, pids.b, &|s| is_http_to(s, false, "/inventory")) >= n
    });
    let ours: Vec<Span> = spans.iter().filter(|s| s.pid().is_some_and(|p| focus.contains(&p))).cloned().collect();
    let of = |pid: u32, f: &dyn Fn(&Span) -> bool| -> Vec<Span> {
        ours.iter().filter(|s| s.pid() == Some(pid) && f(s)).cloned().collect()
    };
    curls
        .iter()
        .map(|c| {
            let curl_span = one(of(c.pid, &|s| is_http_to(s, true, "/checkout")), "CLIENT span of curl", &ours);
            let a_server = one(
                of(pids.a, &|s| is_http_to(s, false, "/checkout") && starts_within(s, &curl_span)),
                "SERVER span of A inside curl's request",
                &ours,
            );
            let a_http = one(
                of(pids.a, &|s| is_http_to(s, true, "/inventory") && starts_within(s, &a_server)),
                "HTTP CLIENT span of A inside its server span",
                &ours,
            );
            let a_sql = of(pids.a, &|s| is_sql(s) && starts_within(s, &a_server));
            let b_server = one(
                of(pids.b, &|s| is_http_to(s, false, "/inventory") && starts_within(s, &a_http)),
                "SERVER span of B inside A's HTTP client span",
                &ours,
            );
            Flow { curl: curl_span, a_server, a_http, a_sql, b_server }
        })
        .collect()
}

/// B's reply as relayed by A: (traceparent values B received, count).
#[track_caller]
pub fn b_saw(run: &ClientRun) -> Vec<String> {
    run.assert_success();
    let v: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("A's reply is not JSON ({e}): {:?}", run.stdout));
    assert_eq!(v["item"], "answer", "A's query result in its reply: {v}");
    assert_eq!(v["b"]["path"], "/inventory", "B's reply: {v}");
    let seen: Vec<String> = v["b"]["traceparents"]
        .as_array()
        .unwrap_or_else(|| panic!("B's reply lacks traceparents: {v}"))
        .iter()
        .map(|t| t.as_str().unwrap_or_else(|| panic!("non-string traceparent in {v}")).to_owned())
        .collect();
    assert_eq!(v["b"]["count"].as_u64(), Some(seen.len() as u64), "B's count vs its list: {v}");
    seen
}

/// Through: A's HTTP and SQL client spans are children of A's server span,
/// in its trace; the SELECT is among the SQL spans.
#[track_caller]
pub fn assert_children_of_a(f: &Flow) {
    let ctx = f.render();
    assert_eq!(f.a_server.service_name, SERVICE_A, "service.name of A's server span\n{ctx}");
    assert_eq!(f.b_server.service_name, SERVICE_B, "service.name of B's server span\n{ctx}");
    assert_eq!(f.a_http.trace_id, f.a_server.trace_id, "A's HTTP client span is in A's trace\n{ctx}");
    assert_eq!(
        f.a_http.parent_span_id, f.a_server.span_id,
        "A's HTTP client span is a child of A's server span\n{ctx}"
    );
    assert!(
        f.a_sql.iter().any(|s| {
            s.attr_str("db.system.name") == Some("postgresql")
                && s.attr_str("db.operation.name") == Some("SELECT")
                && s.attr_str("db.collection.name") == Some("items")
        }),
        "no postgresql SELECT items span among A's SQL spans\n{ctx}"
    );
    for s in &f.a_sql {
        assert_eq!(s.attr_str("db.system.name"), Some("postgresql"), "{s}");
        assert_eq!(s.trace_id, f.a_server.trace_id, "A's SQL span is in A's trace: {s}\n{ctx}");
        assert_eq!(s.parent_span_id, f.a_server.span_id, "A's SQL span is a child of A's server span: {s}\n{ctx}");
    }
    let mut ids: Vec<&str> = vec![&f.curl.span_id, &f.a_server.span_id, &f.a_http.span_id, &f.b_server.span_id];
    ids.extend(f.a_sql.iter().map(|s| s.span_id.as_str()));
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "span ids are not unique\n{ctx}");
}

/// Out: B's server span is a child of A's HTTP client span, and B received
/// exactly the header the kernel wrote for that span.
#[track_caller]
pub fn assert_injected_into_b(f: &Flow, seen: &[String]) {
    let ctx = f.render();
    assert_eq!(
        seen,
        [format!("00-{}-{}-01", f.a_server.trace_id, f.a_http.span_id)],
        "B must receive exactly one traceparent: A's trace, A's HTTP client span\n{ctx}"
    );
    assert_eq!(f.b_server.trace_id, f.a_server.trace_id, "B's server span is in A's trace\n{ctx}");
    assert_eq!(
        f.b_server.parent_span_id, f.a_http.span_id,
        "B's server span is a child of A's HTTP client span\n{ctx}"
    );
}

/// Every span of the test's processes belongs to trace `trace`: one request,
/// one trace.
#[track_caller]
pub fn assert_one_trace(receiver: &OtlpReceiver, pids: &[u32], trace: &str) {
    let spans: Vec<Span> =
        receiver.spans().into_iter().filter(|s| s.pid().is_some_and(|p| pids.contains(&p))).collect();
    let stray: Vec<Span> = spans.iter().filter(|s| s.trace_id != trace).cloned().collect();
    assert!(stray.is_empty(), "spans outside trace {trace}:\n{}\nall:\n{}", describe(&stray), describe(&spans));
}

pub fn curl_checkout(a: &Service, headers: &[&str]) -> ClientRun {
    curl_with_headers(&[], headers, &a.url("/checkout"))
}

/// curl `options`, a `-H` per header, then `url`.
pub fn curl_with_headers(options: &[&str], headers: &[&str], url: &str) -> ClientRun {
    let mut args: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
    for h in headers {
        args.extend(["-H".to_owned(), (*h).to_owned()]);
    }
    args.push(url.to_owned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&refs)
}

#[track_caller]
pub fn assert_served(run: &ClientRun, a: &Service, b: &Service) {
    assert!(run.status.success(), "curl -> A failed: {run:?}\nA stderr:\n{}\nB stderr:\n{}", a.stderr(), b.stderr());
}

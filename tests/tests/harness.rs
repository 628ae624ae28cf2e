//! Self-tests of the e2e harness that need neither root nor the agent: the
//! OTLP receiver against a real opentelemetry-otlp exporter (both transports)
//! and hand-made gzip bodies, and the servers/clients against each other.
//! Only the nginx test is ignored by plain `cargo test` (`cargo xtask test`
//! installs nginx and runs it).
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value, AnyValue, KeyValue as PbKeyValue},
    resource::v1::Resource as PbResource,
    trace::v1::{ResourceSpans, ScopeSpans, Span as PbSpan},
};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanExporter, SpanLinks},
    Resource,
};
use prost::Message;
use waggle_e2e::{
    curl, curl_on_one_connection,
    env::{child_pids, poll_until},
    python_script, run_client, Kind, OtlpReceiver, Server, StatusCode,
};

const TRACE_ID: u128 = 0x0af7651916cd43dd8448eb211c80319c;
const SPAN_ID: u64 = 0xb7ad6b7169203331;
const PARENT_ID: u64 = 0x00f067aa0ba902b7;
/// How long a killed process group may take to disappear from /proc.
const PROCESS_GONE_TIMEOUT: Duration = Duration::from_secs(5);

fn span_data() -> SpanData {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(TRACE_ID),
            SpanId::from(SPAN_ID),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from(PARENT_ID),
        parent_span_is_remote: true,
        span_kind: SpanKind::Server,
        name: "GET /users/{id}".into(),
        start_time: start,
        end_time: start + Duration::from_millis(250),
        attributes: vec![KeyValue::new("url.path", "/users/42"), KeyValue::new("http.response.status_code", 503_i64)],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::error("server error"),
        instrumentation_scope: InstrumentationScope::builder("selftest").build(),
    }
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_service_name("selftest-svc")
        .with_attribute(KeyValue::new("process.pid", 4242_i64))
        .build()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

#[track_caller]
fn assert_selftest_span(receiver: &OtlpReceiver) {
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "{}", waggle_e2e::describe(&spans));
    let s = &spans[0];
    assert_eq!(s.service_name, "selftest-svc");
    assert_eq!(s.pid(), Some(4242));
    assert_eq!(s.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(s.span_id, "b7ad6b7169203331");
    assert_eq!(s.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(s.name, "GET /users/{id}");
    assert_eq!(s.kind, Kind::Server);
    assert_eq!(s.duration(), Duration::from_millis(250));
    assert_eq!(s.start_ns, 1_700_000_000 * 1_000_000_000);
    assert_eq!(s.status_code, StatusCode::Error);
    assert_eq!(s.status_message, "server error");
    assert_eq!(s.attr_str("url.path"), Some("/users/42"));
    assert_eq!(s.attr_int("http.response.status_code"), Some(503));
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
}

#[test]
fn receiver_takes_a_grpc_export_from_opentelemetry_otlp() {
    let receiver = OtlpReceiver::start();
    let rt = runtime();
    rt.block_on(async {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(receiver.grpc_endpoint())
            .build()
            .unwrap();
        exporter.set_resource(&resource());
        exporter.export(vec![span_data()]).await.unwrap();
    });
    assert_eq!(receiver.grpc_requests(), 1);
    assert_eq!(receiver.http_requests(), 0);
    assert_selftest_span(&receiver);
}

#[test]
fn receiver_takes_an_http_protobuf_export_from_opentelemetry_otlp() {
    let receiver = OtlpReceiver::start();
    let rt = runtime();
    rt.block_on(async {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(receiver.http_traces_url())
            .build()
            .unwrap();
        exporter.set_resource(&resource());
        exporter.export(vec![span_data()]).await.unwrap();
    });
    assert_eq!(receiver.http_requests(), 1);
    assert_eq!(receiver.http_paths(), vec!["/v1/traces".to_owned()]);
    assert_selftest_span(&receiver);
}

fn pb_request(path: &str) -> ExportTraceServiceRequest {
    let kv = |k: &str, v: any_value::Value| PbKeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(PbResource {
                attributes: vec![kv("service.name", any_value::Value::StringValue("gz".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![PbSpan {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: "POST /upload".into(),
                    kind: 3,
                    start_time_unix_nano: 10,
                    end_time_unix_nano: 30,
                    attributes: vec![
                        kv("url.path", any_value::Value::StringValue(path.into())),
                        kv("http.request.body.size", any_value::Value::IntValue(20000)),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One raw HTTP/1.1 POST; returns the status line.
fn raw_post(addr: std::net::SocketAddr, headers: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.lines().next().unwrap_or("").to_owned()
}

#[test]
fn receiver_takes_gzip_http_protobuf_and_rejects_junk() {
    let receiver = OtlpReceiver::start();
    let body = pb_request("/upload").encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let gz = gz.finish().unwrap();
    let status =
        raw_post(receiver.http_addr(), "Content-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\n", &gz);
    assert!(status.contains(" 200 "), "{status}");
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].service_name, "gz");
    assert_eq!(spans[0].kind, Kind::Client);
    assert_eq!(spans[0].attr_int("http.request.body.size"), Some(20000));
    assert_eq!(spans[0].trace_id, "01".repeat(16));
    assert!(receiver.raw_dump().contains("POST /upload"));

    let status =
        raw_post(receiver.http_addr(), "Content-Type: application/x-protobuf\r\n", b"\xff\xff\xff not protobuf");
    assert!(status.contains(" 400 "), "{status}");
    let status = raw_post(receiver.http_addr(), "Content-Type: application/json\r\n", b"{}");
    assert!(status.contains(" 400 "), "{status}");
    assert_eq!(receiver.rejected().len(), 2, "{:?}", receiver.rejected());
    assert_eq!(receiver.spans().len(), 1);
}

#[test]
fn receiver_wait_for_times_out_and_succeeds() {
    let receiver = OtlpReceiver::start();
    let t = Instant::now();
    assert!(receiver.wait_for(Duration::from_millis(200), |s| !s.is_empty()).is_err());
    assert!(t.elapsed() >= Duration::from_millis(200));
    let body = pb_request("/x").encode_to_vec();
    let addr = receiver.http_addr();
    let poster = std::thread::spawn(move || {
        // Kept: the export must arrive while wait_for is already polling,
        // which is what this test is about.
        std::thread::sleep(Duration::from_millis(300));
        raw_post(addr, "Content-Type: application/x-protobuf\r\n", &body)
    });
    let spans = receiver.wait_for(Duration::from_secs(5), |s| s.iter().any(|s| s.attr_str("url.path") == Some("/x")));
    assert!(spans.is_ok());
    assert!(poster.join().unwrap().contains(" 200 "));
}

#[test]
fn app_serves_every_route() {
    let app = Server::app();
    let r = curl(&[&app.url("/users/42")]);
    r.assert_success();
    assert_eq!(r.stdout, r#"{"id": "42", "name": "user-42"}"#);

    let t = Instant::now();
    curl(&[&app.url("/slow")]).assert_success();
    assert!(t.elapsed() >= Duration::from_millis(300));

    for (path, code) in [("/error", "500"), ("/missing", "404"), ("/nope", "404"), ("/", "200")] {
        let r = curl(&["-o", "/dev/null", "-w", "%{http_code}", &app.url(path)]);
        assert_eq!(r.stdout, code, "{path}");
    }

    let t = Instant::now();
    let r = curl(&["-D", "-", &app.url("/chunked")]);
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(r.stdout.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{}", r.stdout);
    assert!(r.stdout.ends_with("chunk-0\nchunk-1\nchunk-2\n"), "{}", r.stdout);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, vec![b'z'; 20000]).unwrap();
    let r =
        curl(&["-X", "POST", "-H", "Expect:", "--data-binary", &format!("@{}", file.display()), &app.url("/upload")]);
    assert_eq!(r.stdout, r#"{"received": 20000}"#);

    // Keep-alive: one connection for three transfers.
    curl_on_one_connection(&[], &[&app.url("/users/1"), &app.url("/users/2"), &app.url("/users/3")]);
}

#[test]
fn python_clients_work_against_the_app() {
    let app = Server::app();
    let port = app.port().to_string();
    let r = run_client(
        "pipeline",
        python_script("pipeline_client.py").args([&port, "/users/1", "/users/2", "/missing"]),
        Duration::from_secs(20),
    );
    r.assert_success();
    assert_eq!(r.stdout.trim(), "200 200 404");

    let r = run_client(
        "urllib",
        python_script("urllib_client.py").args([app.url("/users/5"), app.url("/missing")]),
        Duration::from_secs(20),
    );
    r.assert_success();
    assert_eq!(r.stdout, format!("200 {}\n404 {}\n", app.url("/users/5"), app.url("/missing")));

    let r = run_client(
        "bad_input",
        python_script("bad_input.py").args([&port, "/users/77", "/users/88"]),
        Duration::from_secs(30),
    );
    r.assert_success();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{}", r.stdout);
    // Python answers junk with a 400, sometimes HTTP/0.9-style (no status
    // line); either way it is no 2xx.
    for (line, case) in lines.iter().zip(["garbage", "tls", "h2", "ssh", "truncated"]) {
        assert!(line.starts_with(&format!("{case} ")) && !line.contains(" 200 "), "{}", r.stdout);
    }
    assert_eq!(lines[5], "bigheader HTTP/1.1 200 OK", "{}", r.stdout);
    assert_eq!(lines[6], "onebyte HTTP/1.1 200 OK", "{}", r.stdout);
    // Still serving.
    assert_eq!(curl(&[&app.url("/users/1")]).stdout, r#"{"id": "1", "name": "user-1"}"#);
}

#[test]
fn keepalive_pause_client_reuses_its_connection() {
    use std::io::BufRead;
    let app = Server::app();
    let mut child = python_script("keepalive_pause_client.py")
        .args([&app.port().to_string(), "/users/1", "/users/2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("sockname "), "{line}");
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first 200\n");
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "second 200\n");
    assert!(child.wait().unwrap().success());
}

#[test]
#[ignore = "needs nginx: cargo xtask test installs it and runs this"]
fn python_http_server_and_nginx_serve() {
    let py = Server::python_http_server();
    assert_eq!(curl(&[&py.url("/")]).stdout, "hello\n");
    assert_eq!(curl(&[&py.url("/data.txt")]).stdout.len(), 1000);

    let nginx = Server::nginx();
    assert_eq!(curl(&[&nginx.url("/")]).stdout, "ok\n");
    let r = curl(&["-o", "/dev/null", "-w", "%{http_code}", &nginx.url("/missing")]);
    assert_eq!(r.stdout, "404");
    let workers = child_pids(nginx.pid());
    assert_eq!(workers.len(), 1, "nginx should have one worker: {workers:?}");
    assert_eq!(nginx.pids().len(), 2);
    let master = nginx.pid();
    drop(nginx);
    // Gone, or a zombie waiting for a reaper that is not ours.
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')).unwrap_or(false))
            .unwrap_or(false)
    };
    // The whole process group goes, the worker too: SIGKILL is delivered
    // to the group at once, the worker's exit follows asynchronously.
    poll_until(PROCESS_GONE_TIMEOUT, || !alive(master) && !alive(workers[0]));
    assert!(!alive(master), "nginx master {master} still running {PROCESS_GONE_TIMEOUT:?} after drop");
    assert!(!alive(workers[0]), "nginx worker {} still running {PROCESS_GONE_TIMEOUT:?} after drop", workers[0]);
}

/// A stand-in agent: a shell script that behaves as `body` says.
fn fake_agent(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-waggle");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn panic_message(r: std::thread::Result<waggle_e2e::Agent>) -> String {
    match r {
        Ok(_) => panic!("expected Agent::start to fail"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    }
}

#[test]
fn agent_harness_waits_for_ready_and_checks_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    // The stand-in takes 0.3 s to get ready, so a harness that returned
    // before the ready line would show; then it idles until SIGTERM.
    let good = fake_agent(
        dir.path(),
        r#"trap 'echo bye; exit 0' TERM
echo "args: $*"
echo "otel=${OTEL_EXPORTER_OTLP_ENDPOINT:-none} rust_log=$RUST_LOG x=$X" >&2
sleep 0.3
echo "INFO waggle ready" >&2
while true; do sleep 0.05; done"#,
    );
    let t = Instant::now();
    let agent = waggle_e2e::Agent::start_bin(&good, &["--print", "json"], &[("X", "1")]);
    assert!(t.elapsed() >= Duration::from_millis(300), "returned before the ready line");
    assert!(agent.stderr().contains("otel=none rust_log=info x=1"), "{}", agent.stderr());
    let out = agent.stop();
    assert_eq!(out.stdout, "args: --print json\nbye\n");

    let dies = fake_agent(dir.path(), "echo 'error: no probes' >&2; exit 3");
    let msg = panic_message(std::panic::catch_unwind(|| waggle_e2e::Agent::start_bin(&dies, &[] as &[&str], &[])));
    assert!(msg.contains("before logging") && msg.contains("error: no probes"), "{msg}");

    let stubborn = fake_agent(dir.path(), "trap '' TERM; echo 'waggle ready' >&2; while true; do sleep 0.05; done");
    let agent = waggle_e2e::Agent::start_bin(&stubborn, &[] as &[&str], &[]);
    let pid = agent.pid();
    let msg = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| agent.stop_within(Duration::from_secs(1))))
    {
        Ok(_) => panic!("stop should fail for an agent ignoring SIGTERM"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(msg.contains("did not exit within"), "{msg}");
    // The unwound Agent was dropped: killed.
    let state = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    poll_until(PROCESS_GONE_TIMEOUT, || state().is_empty() || state().contains(") Z"));
    let state = state();
    assert!(state.is_empty() || state.contains(") Z"), "{state}");
}

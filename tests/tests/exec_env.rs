//! A process's OTEL_SERVICE_NAME as it was exec'd with: the kernel reads it
//! from the new image's environment at sched_process_exec, so servers that
//! write their process title over their environment (nginx; any process
//! writing into that memory) keep their name although
//! /proc/<pid>/environ no longer shows it. Each test proves the /proc read
//! would have named them otherwise.
use waggle_e2e::{curl, describe, e2e_setup, server_spans, Agent, OtlpReceiver, Protocol, Server, Span, SPAN_TIMEOUT};

/// The OTEL_SERVICE_NAME that /proc/<pid>/environ shows now, if any.
fn proc_service_name(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    environ
        .split(|b| *b == 0)
        .find_map(|e| e.strip_prefix(b"OTEL_SERVICE_NAME="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn servers_keep_the_service_name_they_were_exec_d_with() {
    let _guard = e2e_setup("servers_keep_the_service_name_they_were_exec_d_with");
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);
    // Both started after the agent: their execs are seen.
    let nginx = Server::nginx_with_env(&[("OTEL_SERVICE_NAME", "edge-proxy")]);
    let python = Server::python_env_rewriter("exec-time-name", "rewritten-name");
    // What the /proc read would find: nginx's title is written over the
    // environment of the master and of the (forked) worker; the python
    // server wrote another name over its own.
    let nginx_pids = nginx.pids();
    assert!(nginx_pids.len() >= 2, "nginx master and worker: {nginx_pids:?}");
    for &pid in &nginx_pids {
        assert_eq!(proc_service_name(pid), None, "/proc/{pid}/environ of nginx still shows OTEL_SERVICE_NAME");
    }
    assert_eq!(proc_service_name(python.pid()).as_deref(), Some("rewritten-name"));

    for _ in 0..3 {
        curl(&[&nginx.url("/")]).assert_success();
    }
    for _ in 0..2 {
        curl(&[&python.url("/")]).assert_success();
    }
    let mut pids = nginx_pids.clone();
    pids.push(python.pid());
    receiver.focus(&pids);
    let nginx_server =
        |spans: &[Span]| -> Vec<Span> { nginx_pids.iter().flat_map(|&p| server_spans(spans, p)).collect() };
    let spans = receiver.expect_spans("3 nginx and 2 python SERVER spans", SPAN_TIMEOUT, |spans| {
        nginx_server(spans).len() >= 3 && server_spans(spans, python.pid()).len() >= 2
    });
    let ours = nginx_server(&spans);
    assert_eq!(ours.len(), 3, "one SERVER span per request:\n{}", describe(&ours));
    for span in &ours {
        assert_eq!(span.service_name, "edge-proxy", "nginx's exec-time name:\n{}", describe(&ours));
        assert_eq!(span.attr_str("url.path"), Some("/"), "{span}");
        assert_eq!(span.attr_int("http.response.status_code"), Some(200), "{span}");
    }
    let py = server_spans(&spans, python.pid());
    assert_eq!(py.len(), 2, "{}", describe(&py));
    for span in &py {
        assert_eq!(span.service_name, "exec-time-name", "the name python was exec'd with:\n{}", describe(&py));
    }
    drop(nginx);
    drop(python);
    let out = agent.stop();
    assert!(out.counter("exec_env_with_otel") >= 2, "execs with OTEL_* counted:\n{}", out.stderr);
    assert_eq!(out.counter("kernel_exec_env_cut"), 0);
}

//! Processes that reuse descriptor numbers (issue 15): a traced connection's
//! number taken over by a file through dup2, close_range or an exec that
//! closes O_CLOEXEC sockets, none of which calls close(). The file then
//! carries HTTP-looking bytes; no span may come of them, and no file byte
//! may be captured. Pipes are the baseline (never tracked). A request sent
//! with splice(2), whose bytes the agent does not read, is counted.
use waggle_e2e::{
    client_spans, curl, describe, e2e_setup,
    env::{free_port, run_client_sampling},
    figure, python_script, run_client,
    scrape::{sample, scrape},
    with_path, Agent, OtlpReceiver, Protocol, Server, SPAN_TIMEOUT,
};

const MODES: [&str; 5] = ["dup2", "close_range", "exec", "pipe", "splice"];

#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn a_descriptor_reused_for_a_file_never_yields_spans_or_file_bytes() {
    let _guard = e2e_setup("a_descriptor_reused_for_a_file_never_yields_spans_or_file_bytes");
    let nginx = Server::nginx();
    let receiver = OtlpReceiver::start();
    let mut args = receiver.agent_args(Protocol::HttpProtobuf);
    args.extend(["--print".to_owned(), "json".to_owned()]);
    let agent = Agent::start(&args, &[]);

    let mut pids = Vec::new();
    for mode in MODES {
        let mut cmd = python_script("fd_reuse.py");
        cmd.args(["127.0.0.1", &nginx.port().to_string(), mode]);
        let run = run_client("fd_reuse", &mut cmd, SPAN_TIMEOUT);
        run.assert_success();
        assert!(["reused", "pipe used", "spliced"].iter().any(|w| run.stdout.contains(w)), "{mode}: {run:?}");
        pids.push((mode, run.pid));
    }
    // The real request before each reuse is traced: the connection was
    // tracked, so a leak would have had state to come from.
    receiver.focus(&pids.iter().map(|(_, p)| *p).collect::<Vec<_>>());
    receiver.expect_spans("the real request of each process", SPAN_TIMEOUT, |s| {
        pids.iter()
            .filter(|(m, _)| *m != "pipe")
            .all(|(m, p)| client_spans(s, *p).iter().any(|x| x.attr_str("url.path") == Some(&format!("/before-{m}"))))
    });
    let out = agent.stop();
    let spans = receiver.spans();
    let mut leaks = Vec::new();
    for (mode, _) in &pids {
        let path = format!("/from-{mode}");
        let leaked = with_path(&spans, &path);
        if !leaked.is_empty() || out.stdout.contains(&path) {
            leaks.push(format!("{mode}: file bytes became spans:\n{}", describe(&leaked)));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    let unseen = out.counter("kernel_unseen_io");
    assert!(unseen >= 1, "the spliced request is not counted: kernel_unseen_io={unseen}\n{}", out.stderr);
    figure(&format!(
        "descriptor reuse (dup2, close_range, exec; a pipe as baseline): a file on a traced connection's number \
         after each, 0 spans and 0 file bytes captured; a request sent with splice(2) counted \
         (kernel_unseen_io={unseen})"
    ));
}

#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn thousands_of_short_lived_children_leave_no_state_behind() {
    let _guard = e2e_setup("thousands_of_short_lived_children_leave_no_state_behind");
    const CHILDREN: u32 = 2000;
    let nginx = Server::nginx();
    let receiver = OtlpReceiver::start();
    let metrics = free_port();
    let mut args = receiver.agent_args(Protocol::HttpProtobuf);
    args.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{metrics}")]);
    let agent = Agent::start(&args, &[]);
    let tracked_before = sample(&scrape(metrics), "waggle_connections_tracked").unwrap_or(0);

    let mut cmd = python_script("fork_storm.py");
    cmd.args(["127.0.0.1", &nginx.port().to_string(), &CHILDREN.to_string()]);
    // Each child inherits the connection; if their copies outlived them the
    // table would grow by one per child.
    let mut tracked_peak = 0;
    let every = std::time::Duration::from_millis(200);
    let run = run_client_sampling("fork_storm", cmd, std::time::Duration::from_secs(120), every, || {
        tracked_peak = tracked_peak.max(sample(&scrape(metrics), "waggle_connections_tracked").unwrap_or(0));
    });
    run.assert_success();
    assert!(run.stdout.contains("200 OK /after-forks"), "{run:?}");
    receiver.focus(&[run.pid]);
    let spans = receiver.expect_spans("both requests of the forking process", SPAN_TIMEOUT, |s| {
        let paths: Vec<_> =
            client_spans(s, run.pid).iter().filter_map(|x| x.attr_str("url.path").map(str::to_owned)).collect();
        paths.iter().any(|p| p == "/before-forks") && paths.iter().any(|p| p == "/after-forks")
    });
    let out = agent.stop();
    // The parent's connection on both ends, a child's copy at a time, and
    // slack for the 1 s gauge catching a moment in between.
    assert!(
        tracked_peak <= tracked_before + 8,
        "{tracked_peak} connections tracked during {CHILDREN} forks (before: {tracked_before}): children's copies outlive them"
    );
    let client = client_spans(&spans, run.pid);
    assert_eq!(client.len(), 2, "two requests, two spans:\n{}", describe(&client));
    let forks = run.stdout.lines().find(|l| l.starts_with("forked")).unwrap_or("").to_owned();
    figure(&format!(
        "fork storm: a process with a traced connection {forks} (each child exits at once): at most \
         {tracked_peak} connections tracked meanwhile (before: {tracked_before}), both requests traced, {} \
         exchanges dropped",
        out.counter("exchanges_dropped")
    ));
}

/// Accept-then-fork (inetd style, busybox httpd, Perl Net::Server, Python's
/// ForkingMixIn): the parent accepts and forks, the child reads the request
/// at once, usually before the agent has read the fork record. The kernel
/// copies the connection to the child as it is created, so each request
/// gives the child's SERVER span, joined to curl's CLIENT span through the
/// traceparent the kernel read at the child's first read.
#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn an_accept_then_fork_servers_child_is_traced_from_its_first_read() {
    let _guard = e2e_setup("an_accept_then_fork_servers_child_is_traced_from_its_first_read");
    const REQUESTS: usize = 5;
    let server = Server::python_forking_ok_server();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::HttpProtobuf), &[]);
    let mut curls = Vec::new();
    for i in 0..REQUESTS {
        let run = curl(&[&server.url(&format!("/forked/{i}"))]);
        run.assert_success();
        curls.push(run.pid);
    }
    receiver.focus(&curls);
    let paths: Vec<String> = (0..REQUESTS).map(|i| format!("/forked/{i}")).collect();
    let spans = receiver.expect_spans("a SERVER span per request from the forked children", SPAN_TIMEOUT, |s| {
        paths.iter().all(|p| with_path(s, p).iter().any(|x| x.is_server()))
    });
    let out = agent.stop();
    for (i, path) in paths.iter().enumerate() {
        let on_path = with_path(&spans, path);
        let servers: Vec<_> = on_path.iter().filter(|s| s.is_server()).collect();
        assert_eq!(servers.len(), 1, "one SERVER span for {path}:\n{}", describe(&on_path));
        let child = servers[0];
        assert_ne!(child.pid(), Some(server.pid()), "served by a forked child, not the parent:\n{child}");
        assert_eq!(child.attr_int("http.response.status_code"), Some(200), "{child}");
        assert_eq!(child.attr_str("http.request.method"), Some("GET"), "{child}");
        let client = client_spans(&on_path, curls[i]);
        assert_eq!(client.len(), 1, "curl's CLIENT span for {path}:\n{}", describe(&on_path));
        assert_eq!(child.trace_id, client[0].trace_id, "the child's span joins curl's trace:\n{}", describe(&on_path));
        assert_eq!(child.parent_span_id, client[0].span_id, "{}", describe(&on_path));
    }
    let inherited = out.counter("kernel_conns_inherited");
    assert!(inherited >= REQUESTS as u64, "the kernel copied each accepted connection to its child: {inherited}");
}

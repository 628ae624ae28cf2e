//! Processes that reuse descriptor numbers (issue 15): a traced connection's
//! number taken over by a file through dup2, close_range or an exec that
//! closes O_CLOEXEC sockets, none of which calls close(). The file then
//! carries HTTP-looking bytes; no span may come of them, and no file byte
//! may be captured. Pipes are the baseline (never tracked).
use waggle_e2e::{
    client_spans, describe, e2e_setup, figure, python_script, run_client, with_path, Agent, OtlpReceiver, Protocol,
    Server, SPAN_TIMEOUT,
};

const MODES: [&str; 4] = ["dup2", "close_range", "exec", "pipe"];

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
        assert!(run.stdout.contains("reused") || run.stdout.contains("pipe used"), "{mode}: {run:?}");
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
    figure(&format!(
        "descriptor reuse ({}): a file on a traced connection's number after each, 0 spans and 0 file bytes \
         captured",
        MODES.join(", ")
    ));
}

//! The health endpoints the DaemonSet's probes use, on the real agent: the
//! paths and port come from the kustomize base's DaemonSet, the agent
//! answers 200 on both once its probes are attached, and readiness turns
//! 503 ("draining stalled") when the loop that drains the ring buffer stops
//! while the rest of the agent (the HTTP server on its own thread) runs on,
//! then 200 again when it resumes. The loop is stopped the way a wedged loop
//! would look from outside: its thread alone (the main thread, which runs
//! the pipeline) is held in a ptrace stop.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_yaml_ng::Value;
use waggle_e2e::{
    curl, e2e_setup,
    env::{free_port, workspace_root},
    k8s::documents,
    Agent, OtlpReceiver, Protocol, Server,
};

/// Readiness gives up on a drain after 5 s (agent/src/health.rs); a probe
/// sees it within a poll or two after that.
const STALL_SEEN_WITHIN: Duration = Duration::from_secs(15);

/// The (liveness, readiness) paths of the base DaemonSet's probes.
fn manifest_probe_paths() -> (String, String) {
    let text = std::fs::read_to_string(workspace_root().join("deploy/kubernetes/base/daemonset.yaml")).unwrap();
    let ds = documents(&text).into_iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let path = |probe: &str| {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["port"], Value::from("metrics"), "{probe} asks the metrics port");
        get["path"].as_str().unwrap_or_else(|| panic!("{probe} has an httpGet path")).to_owned()
    };
    (path("livenessProbe"), path("readinessProbe"))
}

/// One GET; (status code, body). It carries its own unsampled traceparent
/// so the agent never injects into it (the test process is traced too).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connecting to {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// GETs `path` until `ok` holds; the last answer.
fn get_until(port: u16, path: &str, within: Duration, ok: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get(port, path);
        if ok(status, &body) || Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Holds one thread of another process in a ptrace stop; resumes it when
/// dropped (also when an assertion fails; if the test dies, the kernel
/// detaches it).
struct Frozen(libc::pid_t);

impl Frozen {
    fn thread(tid: u32) -> Frozen {
        let tid = tid as libc::pid_t;
        // SAFETY: plain ptrace requests on a thread id; no memory is passed.
        let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
        assert_eq!(rc, 0, "PTRACE_SEIZE {tid}: {}", std::io::Error::last_os_error());
        // SAFETY: as above.
        let rc = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        assert_eq!(rc, 0, "PTRACE_INTERRUPT {tid}: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waits for that one traced thread; status is a valid out pointer.
        let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert_eq!(rc, tid, "waitpid {tid}: {}", std::io::Error::last_os_error());
        assert!(libc::WIFSTOPPED(status), "thread {tid} did not stop: status {status:#x}");
        Frozen(tid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: detaching a thread this process traces, which is stopped.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn the_manifests_probes_see_a_ready_agent_and_readiness_reports_a_stalled_drain() {
    let _guard = e2e_setup("the_manifests_probes_see_a_ready_agent_and_readiness_reports_a_stalled_drain");
    let (liveness, readiness) = manifest_probe_paths();
    let port = free_port();
    let receiver = OtlpReceiver::start();
    let mut args = receiver.agent_args(Protocol::Grpc);
    args.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{port}")]);
    let agent = Agent::start(&args, &[]);

    // Ready as soon as it says so, and records are being drained.
    let (status, body) = get(port, &readiness);
    assert_eq!(status, 200, "{readiness} once the agent is ready: {body}");
    assert!(body.starts_with("probes attached, ring buffer drained "), "{body}");
    let server = Server::python_http_server();
    curl(&[&server.url("/")]).assert_success();
    let drained = |body: &str| -> u64 {
        let count = body.rsplit_once('(').and_then(|(_, c)| c.split_whitespace().next()).and_then(|n| n.parse().ok());
        count.unwrap_or_else(|| panic!("no record count in {body:?}"))
    };
    let (_, body) = get_until(port, &readiness, Duration::from_secs(10), |s, b| s == 200 && drained(b) > 0);
    assert!(drained(&body) > 0, "curl's traffic was drained: {body}");
    let (status, body) = get(port, &liveness);
    assert_eq!(status, 200, "{liveness}: {body}");
    assert!(body.starts_with("event loop turned "), "{body}");

    // The pipeline's thread stops; the server keeps answering.
    let stalled_at = Instant::now();
    let frozen = Frozen::thread(agent.pid());
    let (status, body) = get_until(port, &readiness, STALL_SEEN_WITHIN, |s, _| s == 503);
    assert_eq!(status, 503, "{readiness} while the drain loop is stopped: {body}");
    assert!(body.starts_with("draining stalled: the ring buffer was last drained "), "{body}");
    let seen_after = stalled_at.elapsed();
    // The last drain may precede the stop by a poll interval, never by a second.
    assert!(seen_after >= Duration::from_secs(4), "reported after {seen_after:?}, before the 5 s threshold");
    // Not yet a restart: the loop threshold is 30 s.
    let (status, body) = get(port, &liveness);
    assert_eq!(status, 200, "{liveness} during a short stall: {body}");

    drop(frozen);
    let (status, body) = get_until(port, &readiness, Duration::from_secs(10), |s, _| s == 200);
    assert_eq!(status, 200, "{readiness} after the loop resumed: {body}");
    let out = agent.stop();
    assert!(out.stderr.contains("waggle stopped"), "the agent shut down cleanly:\n{}", out.stderr);
    waggle_e2e::figure(&format!(
        "health: readiness reported a stopped drain loop after {:.1}s (threshold 5 s)",
        seen_after.as_secs_f64()
    ));
}

//! Who a span is from on a Kubernetes node: processes started in real
//! cgroups shaped like each container runtime's layout get that
//! container's `container.id` and their pod's `k8s.pod.uid`, and a process
//! cannot claim another container or host through its own
//! `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! The cgroups are made in this machine's cgroup v2 hierarchy under a
//! `waggle-e2e-<pid>` parent (kubelet's `--cgroup-root` nests the same way)
//! and removed at the end; no runtime or kubelet is involved, only the paths
//! they create.
use std::path::{Path, PathBuf};

use waggle_e2e::{curl, describe, e2e_setup, server_spans, Agent, OtlpReceiver, Protocol, Server, Span, SPAN_TIMEOUT};

const POD_UID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-90a1b2c3d4e5";

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on a pure
/// v2 host, `/sys/fs/cgroup/unified` on a hybrid one).
#[track_caller]
fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .unwrap_or_else(|| panic!("no cgroup2 mount in /proc/self/mountinfo:\n{mountinfo}"))
}

/// A cgroup path made for the test, removed (deepest first) on drop.
struct Cgroups {
    base: PathBuf,
}

impl Cgroups {
    #[track_caller]
    fn new() -> Cgroups {
        let base = cgroup2_root().join(format!("waggle-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("creating {}: {e}", base.display()));
        Cgroups { base }
    }

    /// Creates `relative` under the test's parent; returns its cgroup.procs.
    #[track_caller]
    fn make(&self, relative: &str) -> PathBuf {
        let dir = self.base.join(relative);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dir.join("cgroup.procs")
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&entry.path());
                    }
                }
            }
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("removing cgroup {}: {e}", dir.display());
            }
        }
        remove(&self.base);
    }
}

fn container_id(n: u8) -> String {
    format!("{:02x}", n + 0xa0).repeat(32)
}

#[test]
#[ignore = "needs root, cgroup v2 and the agent binary: cargo xtask test runs it"]
fn processes_in_runtime_shaped_cgroups_get_their_container_and_pod() {
    let _guard = e2e_setup("processes_in_runtime_shaped_cgroups_get_their_container_and_pod");
    let systemd_uid = POD_UID.replace('-', "_");
    // (runtime and cgroup driver, path, container.id, k8s.pod.uid)
    let layouts = [
        (
            "containerd, systemd driver",
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-{}.scope",
                container_id(1)
            ),
            container_id(1),
            Some(POD_UID),
        ),
        (
            "CRI-O, systemd driver",
            format!("kubepods.slice/kubepods-pod{systemd_uid}.slice/crio-{}.scope", container_id(2)),
            container_id(2),
            Some(POD_UID),
        ),
        (
            "containerd, cgroupfs driver",
            format!("kubepods/besteffort/pod{POD_UID}/{}", container_id(3)),
            container_id(3),
            Some(POD_UID),
        ),
        ("docker", format!("system.slice/docker-{}.scope", container_id(4)), container_id(4), None),
    ];
    let cgroups = Cgroups::new();
    let receiver = OtlpReceiver::start();
    let agent = Agent::start(&receiver.agent_args(Protocol::Grpc), &[]);
    // The docker one also claims another container, pod and host.
    let forged = [("OTEL_RESOURCE_ATTRIBUTES", "container.id=forged,k8s.pod.uid=forged,host.name=forged,team=web")];
    let servers: Vec<Server> = layouts
        .iter()
        .enumerate()
        .map(|(i, (_, path, _, _))| {
            let env: &[(&str, &str)] = if i == 3 { &forged } else { &[] };
            Server::python_http_server_in_cgroup(&cgroups.make(path), env)
        })
        .collect();
    for server in &servers {
        curl(&[&server.url("/")]).assert_success();
    }
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    receiver.focus(&pids);
    let spans = receiver.expect_spans("a SERVER span from each server", SPAN_TIMEOUT, |spans| {
        pids.iter().all(|&p| !server_spans(spans, p).is_empty())
    });
    for ((what, path, container, pod), server) in layouts.iter().zip(&servers) {
        let ours: Vec<Span> = server_spans(&spans, server.pid());
        let span = &ours[0];
        let ctx = format!("{what} ({path})\n{}", describe(&ours));
        // The process is where the test put it: the assertion is on the agent.
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid())).unwrap_or_default();
        assert!(cgroup.contains(path.as_str()), "{ctx}\n/proc/<pid>/cgroup:\n{cgroup}");
        assert_eq!(span.resource_str("container.id"), Some(container.as_str()), "container.id, {ctx}");
        assert_eq!(span.resource_str("k8s.pod.uid"), *pod, "k8s.pod.uid, {ctx}");
    }
    let docker = &server_spans(&spans, servers[3].pid())[0];
    assert_eq!(docker.resource_str("team"), Some("web"), "the process's own attributes still count");
    assert_ne!(docker.resource_str("host.name"), Some("forged"), "but not over the node's host.name");
    drop(servers);
    agent.stop();
}

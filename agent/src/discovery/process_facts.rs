//! Everything read from /proc/<pid> to build one process's resource: start
//! time, task name, executable, argv, container id and OTEL_* variables.
use std::{fs, io::Read};

use procfs::process::Process;

use super::{
    environ::otel_env,
    proc::{open_process, DiscoveryError},
};

/// Bytes of /proc/<pid>/environ scanned: environments can be huge (Kubernetes
/// injects variables for every service in a namespace).
const ENVIRON_READ_CAP: u64 = 256 * 1024;
/// Bytes of /proc/<pid>/cmdline read: enough for long Java class paths.
const CMDLINE_READ_CAP: u64 = 128 * 1024;
const CGROUP_READ_CAP: u64 = 64 * 1024;

/// Everything read from /proc/<pid> for one resource.
#[derive(Debug, Default)]
pub(super) struct ProcessFacts {
    pub(super) start_time: Option<u64>,
    pub(super) ppid: Option<u32>,
    pub(super) comm: String,
    pub(super) exe_path: Option<String>,
    pub(super) argv: Vec<String>,
    pub(super) container_id: Option<String>,
    pub(super) pod_uid: Option<String>,
    pub(super) service_name: Option<String>,
    pub(super) resource_attributes: Option<String>,
}

impl ProcessFacts {
    /// All reads go through one open /proc/<pid> directory: if the pid is
    /// reused meanwhile they fail instead of mixing two processes.
    pub(super) fn read(pid: u32) -> Result<ProcessFacts, DiscoveryError> {
        let process = open_process(pid)?;
        let stat = process.stat().map_err(|source| DiscoveryError::ReadProc { pid, file: "stat", source })?;
        let mut facts = ProcessFacts {
            start_time: Some(stat.starttime),
            ppid: u32::try_from(stat.ppid).ok(),
            comm: stat.comm,
            ..Default::default()
        };
        match process.exe() {
            Ok(path) => {
                let path = path.to_string_lossy();
                let path = path.strip_suffix(" (deleted)").unwrap_or(&path);
                facts.exe_path = Some(path.to_owned());
            }
            // Kernel threads have no executable; other processes may deny it.
            Err(e) => tracing::trace!(pid, error = %e, "no /proc/<pid>/exe"),
        }
        match read_capped(&process, pid, "cmdline", CMDLINE_READ_CAP) {
            Ok((bytes, truncated)) => facts.argv = parse_cmdline(&bytes, truncated),
            Err(e) => tracing::trace!(pid, error = %e, "no command line"),
        }
        match read_capped(&process, pid, "cgroup", CGROUP_READ_CAP) {
            Ok((bytes, _)) => {
                let cgroup = String::from_utf8_lossy(&bytes);
                facts.container_id = container_id_from_cgroup(&cgroup);
                facts.pod_uid = pod_uid_from_cgroup(&cgroup);
            }
            Err(e) => tracing::trace!(pid, error = %e, "no cgroup"),
        }
        match process.open_relative("environ") {
            Ok(file) => match otel_env(file, ENVIRON_READ_CAP) {
                Ok(env) => {
                    facts.service_name = env.service_name;
                    facts.resource_attributes = env.resource_attributes;
                }
                Err(e) => tracing::trace!(pid, error = %e, "environ unreadable"),
            },
            Err(e) => tracing::trace!(pid, error = %e, "environ unreadable"),
        }
        Ok(facts)
    }
}

pub(super) fn read_start_time(pid: u32) -> Option<u64> {
    open_process(pid).ok()?.stat().ok().map(|s| s.starttime)
}

/// Reads at most `cap` bytes; the flag says whether the file was longer.
fn read_capped(process: &Process, pid: u32, file: &'static str, cap: u64) -> Result<(Vec<u8>, bool), DiscoveryError> {
    let f = process.open_relative(file).map_err(|source| DiscoveryError::ReadProc { pid, file, source })?;
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf).map_err(|source| DiscoveryError::ReadProcIo { pid, file, source })?;
    let truncated = buf.len() as u64 > cap;
    buf.truncate(cap as usize);
    Ok((buf, truncated))
}

pub(super) fn read_host_name() -> String {
    if let Ok(name) = fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    // What gethostname(2) returns: the UTS namespace's node name.
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// Splits /proc/<pid>/cmdline. When the read was cut short the last argument
/// is incomplete and dropped.
fn parse_cmdline(bytes: &[u8], truncated: bool) -> Vec<String> {
    let mut parts: Vec<&[u8]> = bytes.split(|&b| b == 0).collect();
    if truncated && parts.len() > 1 {
        parts.pop();
    }
    parts.into_iter().filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect()
}

/// The container id in /proc/<pid>/cgroup, for the layouts of docker
/// (`/docker/<id>`, `docker-<id>.scope`), containerd (`cri-containerd-<id>.scope`,
/// `...slice:cri-containerd:<id>`, `/kubepods/.../pod<uid>/<id>`), cri-o
/// (`crio-<id>.scope`) and podman (`libpod-<id>.scope`). An id is 64 hex
/// digits; cri-o's `crio-conmon-<id>` is the monitor, not the container.
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        // hierarchy-id:controllers:path; the path may itself contain ':'.
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (fields.next(), fields.next(), fields.next()) else { continue };
        for segment in path.rsplit('/') {
            if segment.contains("conmon") {
                continue;
            }
            let segment = segment.strip_suffix(".scope").unwrap_or(segment);
            let candidate = segment.rsplit([':', '-']).next().unwrap_or(segment);
            if candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(candidate.to_ascii_lowercase());
            }
        }
    }
    None
}

/// The Kubernetes pod uid in /proc/<pid>/cgroup: kubelet names the pod's
/// cgroup `pod<uid>` (cgroupfs driver: `/kubepods/burstable/pod<uid>/...`)
/// or `kubepods-<qos>-pod<uid with _ for ->.slice` (systemd driver, used by
/// containerd and CRI-O alike). A uid is a 36-character UUID.
pub fn pod_uid_from_cgroup(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if !path.contains("kubepods") {
            continue;
        }
        for segment in path.split('/') {
            let segment = segment.strip_suffix(".slice").unwrap_or(segment);
            let Some(at) = segment.rfind("pod") else { continue };
            let uid = segment[at + 3..].replace('_', "-");
            let shaped = uid.len() == 36
                && uid.bytes().enumerate().all(|(i, b)| match i {
                    8 | 13 | 18 | 23 => b == b'-',
                    _ => b.is_ascii_hexdigit(),
                });
            if shaped {
                return Some(uid.to_ascii_lowercase());
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Derived service names

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cmdline_parsing_drops_cut_arguments() {
        assert_eq!(parse_cmdline(b"python3\0-m\0http.server\0", false), args(&["python3", "-m", "http.server"]));
        assert_eq!(parse_cmdline(b"java\0-cp\0/very/long/cla", true), args(&["java", "-cp"]));
        assert_eq!(parse_cmdline(b"nginx: worker process", false), args(&["nginx: worker process"]));
        assert!(parse_cmdline(b"", false).is_empty());
    }

    #[test]
    fn container_ids_from_cgroup_layouts() {
        let id = "3f4a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
        let cases = [
            format!("0::/system.slice/docker-{id}.scope"),
            format!("12:memory:/docker/{id}\n11:cpu:/docker/{id}"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{id}.scope"),
            format!("0::/kubepods/besteffort/pod0a1b2c3d-aaaa-bbbb-cccc-000000000000/{id}"),
            format!("0::/kubepods-besteffort-pod12.slice:cri-containerd:{id}"),
            format!("0::/machine.slice/libpod-{id}.scope/container"),
            format!("1:name=systemd:/crio-{}.scope\n0::/crio-{id}.scope", "a".repeat(64).replace('a', "b")),
        ];
        for (i, cgroup) in cases.iter().enumerate() {
            let got = container_id_from_cgroup(cgroup);
            let want = if i == 6 { "b".repeat(64) } else { id.to_owned() };
            assert_eq!(got.as_deref(), Some(want.as_str()), "{cgroup}");
        }
        for none in [
            "0::/",
            "0::/user.slice/user-0.slice/session-1.scope",
            "4:memory:/process_api/38ae6f483a83b11e55cdfbb2f3e1d17f",
        ] {
            assert_eq!(container_id_from_cgroup(none), None, "{none}");
        }
        assert_eq!(container_id_from_cgroup(&format!("0::/system.slice/crio-conmon-{id}.scope")), None);
    }

    #[test]
    fn pod_uids_from_kubelet_cgroup_layouts() {
        let uid = "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d";
        let systemd = uid.replace('-', "_");
        let id = "3f4a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
        for cgroup in [
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd}.slice/cri-containerd-{id}.scope"),
            format!("0::/kubepods.slice/kubepods-pod{systemd}.slice/crio-{id}.scope"),
            format!("0::/kubepods/besteffort/pod{uid}/{id}"),
            format!("11:memory:/kubepods/pod{}/{id}\n0::/", uid.to_ascii_uppercase()),
        ] {
            assert_eq!(pod_uid_from_cgroup(&cgroup).as_deref(), Some(uid), "{cgroup}");
        }
        for none in [
            format!("0::/system.slice/docker-{id}.scope"),
            "0::/kubepods.slice/kubepods-burstable.slice".to_owned(),
            "0::/kubepods/besteffort/pod1234/x".to_owned(),
            format!("0::/user.slice/pod{uid}.slice"),
        ] {
            assert_eq!(pod_uid_from_cgroup(&none), None, "{none}");
        }
    }
}

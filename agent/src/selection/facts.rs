//! What the rules need to know about a process, read from /proc (on the
//! selection worker, never on the event loop): its executable, the
//! container and pod its cgroup names, and the ports it listens on.
use std::{
    collections::{HashMap, HashSet},
    fs,
};

use crate::discovery::{container_id_from_cgroup, pod_uid_from_cgroup};

/// One process's facts; everything but the ports stays the same until the
/// process execs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcFacts {
    pub exe: String,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

/// /proc/<pid>/cgroup is a few lines; a bigger file is not read whole.
const CGROUP_READ_CAP: usize = 64 * 1024;

/// None when the process is gone or is a kernel thread (no executable:
/// it makes no syscalls the programs follow, so it needs no verdict).
pub fn read_facts(pid: u32) -> Option<ProcFacts> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let exe = exe.to_string_lossy();
    // A binary replaced on disk since the process started.
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_owned();
    let cgroup = fs::read(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cgroup = String::from_utf8_lossy(&cgroup[..cgroup.len().min(CGROUP_READ_CAP)]);
    Some(ProcFacts { exe, container_id: container_id_from_cgroup(&cgroup), pod_uid: pod_uid_from_cgroup(&cgroup) })
}

/// Every process id in /proc now.
pub fn live_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect()
}

/// Listening TCP sockets (inode -> port) of one network namespace, read
/// through a process in it.
fn listening_inodes(pid: u32, out: &mut HashMap<u64, u16>) {
    for file in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        out.extend(text.lines().skip(1).filter_map(parse_listen_line));
    }
}

/// One line of /proc/net/tcp{,6}: (inode, port) when its state is LISTEN.
pub fn parse_listen_line(line: &str) -> Option<(u64, u16)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
    if fields.get(3) != Some(&"0A") {
        return None;
    }
    let port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some((inode, port))
}

/// Listening sockets (inode -> port) of every network namespace `pids`
/// live in, each namespace's tables read once.
pub fn listen_table(pids: &[u32]) -> HashMap<u64, u16> {
    let mut seen_ns = HashSet::new();
    let mut inodes = HashMap::new();
    for &pid in pids {
        let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if seen_ns.insert(ns) {
            listening_inodes(pid, &mut inodes);
        }
    }
    inodes
}

/// Ports each of `pids` listens on, from their descriptors (pids listening
/// on nothing are left out).
pub fn ports_of(pids: &[u32], table: &HashMap<u64, u16>) -> HashMap<u32, Vec<u16>> {
    let mut out: HashMap<u32, Vec<u16>> = HashMap::new();
    if table.is_empty() {
        return out;
    }
    for &pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link.to_str().and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok());
            if let Some(port) = inode.and_then(|i| table.get(&i)) {
                let ports = out.entry(pid).or_default();
                if !ports.contains(port) {
                    ports.push(*port);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_lines_give_inode_and_port_and_other_states_nothing() {
        let listen = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listen_line(listen), Some((123456, 8080)));
        let established =
            "   1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 123457 1";
        assert_eq!(parse_listen_line(established), None);
        let v6 = "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1";
        assert_eq!(parse_listen_line(v6), Some((999, 80)));
    }

    #[test]
    fn this_process_is_read_and_its_listener_found() {
        let me = std::process::id();
        let facts = read_facts(me).unwrap();
        assert!(facts.exe.starts_with('/'), "{facts:?}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(ports_of(&[me], &listen_table(&[me])).get(&me).is_some_and(|p| p.contains(&port)));
        assert!(live_pids().contains(&me));
        // pid 0 never exists in /proc.
        assert_eq!(read_facts(0), None);
    }
}

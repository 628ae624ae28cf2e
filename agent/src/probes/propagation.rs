//! Attaching propagation: sk_msg on INJECT_SOCKS, the sockmap mode this
//! kernel's FIONREAD behaviour allows, sockops on the cgroup-v2 root, and
//! the trusted peer networks whose incoming traceparent is followed.
use std::{
    fs,
    net::IpAddr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, SockHash},
    programs::{CgroupAttachMode, SkMsg, SockOps, TracePoint},
    Ebpf,
};
use waggle_common::{maps, runtime, sockmap_mode, FCGI_PARAMS_PROGRAM};

use super::{
    error::{AttachError, ProbeError},
    maps::take_map,
    sockmap::{check_fionread, FionreadCheck},
};

/// Propagation programs (waggle-ebpf sock.rs).
pub(super) const SK_MSG_PROGRAM: &str = "waggle_sk_msg";
pub(super) const SOCKOPS_PROGRAM: &str = "waggle_sockops";
/// statfs f_type of a cgroup-v2 mount.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// net.ipv4.tcp_notsent_lowat of the agent's network namespace (the kernel
/// default, "no limit", when unreadable).
pub(super) fn notsent_lowat_default() -> u32 {
    fs::read_to_string("/proc/sys/net/ipv4/tcp_notsent_lowat")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(u32::MAX)
}

/// Attaches the FastCGI params program to sys_exit_read, after the data
/// exit there (programs on one tracepoint run in attach order): it walks
/// the reads the data exit asks it to. Without it a FastCGI responder's
/// context does not take an incoming HTTP_TRACEPARENT (said once by the
/// caller).
pub(super) fn attach_fastcgi_params(ebpf: &mut Ebpf) -> Result<(), AttachError> {
    let program: &mut TracePoint = ebpf.program_mut(FCGI_PARAMS_PROGRAM).ok_or(AttachError::NotInObject)?.try_into()?;
    program.load()?;
    program.attach("syscalls", "sys_exit_read")?;
    Ok(())
}

/// TRUSTED_NETS holds IPv6 prefixes; IPv4 networks are stored mapped into
/// ::ffff:0:0/96, as the kernel looks peers up.
fn trusted_key(addr: IpAddr, prefix: u8) -> Key<[u8; 16]> {
    match addr {
        IpAddr::V4(v4) => Key::new(96 + u32::from(prefix.min(32)), v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => Key::new(u32::from(prefix.min(128)), v6.octets()),
    }
}

pub(super) fn fill_trusted_networks(ebpf: &mut Ebpf, nets: &[(IpAddr, u8)]) -> Result<(), ProbeError> {
    let map = ebpf.map_mut(maps::TRUSTED_NETS).ok_or(ProbeError::MissingMap { name: maps::TRUSTED_NETS })?;
    let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> =
        LpmTrie::try_from(map).map_err(|source| ProbeError::OpenMap { name: maps::TRUSTED_NETS, source })?;
    for &(addr, prefix) in nets {
        trie.insert(&trusted_key(addr, prefix), 1, 0).map_err(|e| ProbeError::Other {
            operation: "adding a trusted network",
            message: format!("{addr}/{prefix}: {e}"),
        })?;
    }
    Ok(())
}

/// What `attach_propagation` leaves: INJECT_SOCKS and the sockmap mode
/// (UNSET when not attached), and the FIONREAD check's result.
type Attached = (Option<SockHash<MapData, u64>>, u64, Option<Result<FionreadCheck, String>>);

/// Attaches sk_msg to INJECT_SOCKS, checks how this kernel answers FIONREAD
/// for sockets in it, sets the sockmap mode, then attaches sockops to the
/// cgroup-v2 root (in that order: a socket takes the map's programs when it
/// is added, so sockets added before sk_msg is attached would never see it,
/// and none is added before the mode is set). Failures are skipped with
/// their reason: propagation then degrades to linking spans within a
/// process. Returns the map and the mode when both are attached, and what
/// the FIONREAD check found (None when it did not run).
pub(super) fn attach_propagation(
    ebpf: &mut Ebpf,
    runtime: &mut Array<MapData, u64>,
    enabled: bool,
    unsafe_keepalive: bool,
    attached: &mut Vec<&'static str>,
    skipped: &mut Vec<(&'static str, String)>,
) -> Attached {
    if !enabled {
        tracing::info!(
            "propagation off: no traceparent is inserted into outgoing requests (sockops/sk_msg not attached)"
        );
        return (None, sockmap_mode::UNSET, None);
    }
    let mut skip = |program: &'static str, reason: String| {
        tracing::warn!(
            program,
            reason = %reason,
            "propagation probe skipped: outgoing requests carry no traceparent, spans are linked within processes only"
        );
        skipped.push((program, reason));
    };
    // A socket takes the sk_msg program of the first socket map it enters:
    // sockets another program already claimed are refused by ours and left
    // alone (propagation_sockmap_refused).
    let others = other_sk_msg_programs();
    if !others.is_empty() {
        tracing::warn!(
            programs = ?others,
            "other sk_msg programs are loaded (another waggle, a CNI or a mesh): sockets they own are left alone and get no traceparent"
        );
    }
    let mut socks = match attach_sk_msg(ebpf) {
        Ok(socks) => socks,
        Err(e) => {
            skip(SK_MSG_PROGRAM, e.describe());
            skip(SOCKOPS_PROGRAM, format!("not attached without {SK_MSG_PROGRAM}"));
            return (None, sockmap_mode::UNSET, None);
        }
    };
    attached.push(SK_MSG_PROGRAM);
    // Sockets leave the map at their first packet unless asked otherwise:
    // for as long as a socket sits in a sockmap, the kernel's tcp_bpf code
    // serves its receive path too, which misreports FIONREAD on current
    // kernels and was seen here to miss a peer's FIN after an early
    // response (the application waits for EOF forever). FIONREAD is checked
    // either way, for the log.
    let fionread = check_fionread(&mut socks);
    let mode = if unsafe_keepalive {
        match &fionread {
            Ok(FionreadCheck::Correct) => tracing::warn!(
                "--propagation unsafe-keepalive: client sockets stay in the sockmap for their lifetime (their receive path runs through the kernel's tcp_bpf code)"
            ),
            Ok(FionreadCheck::Misreports { reported }) => tracing::warn!(
                reported,
                expected = 1000,
                "--propagation unsafe-keepalive: client sockets stay in the sockmap for their lifetime, and this kernel misreports FIONREAD for them"
            ),
            Err(e) => tracing::warn!(reason = %e, "--propagation unsafe-keepalive: FIONREAD on sockmap sockets could not be checked"),
        }
        sockmap_mode::KEEP
    } else {
        if let Ok(FionreadCheck::Misreports { reported }) = &fionread {
            tracing::info!(
                reported,
                expected = 1000,
                "this kernel misreports FIONREAD for sockets in a sockmap; client sockets leave it at their first packet, before anything they receive can wait unread"
            );
        }
        sockmap_mode::LEAVE_AT_FIRST_TRANSMIT
    };
    if let Err(e) = runtime.set(runtime::SOCKMAP_MODE, mode, 0) {
        skip(SOCKOPS_PROGRAM, format!("setting the sockmap mode: {e}"));
        return (None, sockmap_mode::UNSET, Some(fionread));
    }
    match attach_sockops(ebpf) {
        Ok(root) => {
            attached.push(SOCKOPS_PROGRAM);
            let keep = mode == sockmap_mode::KEEP;
            tracing::info!(
                cgroup = %root.display(),
                sockets = if keep { "for their lifetime" } else { "until their first packet" },
                requests = if keep { "every request" } else { "the first request of each connection" },
                "propagation on: traceparent inserted into outgoing HTTP/1.x requests of traced processes"
            );
            (Some(socks), mode, Some(fionread))
        }
        Err(e) => {
            let reason = e.describe();
            if reason.contains("bpf_get_current_pid_tgid") {
                // Before Linux 6.10 sockops programs may not ask which task
                // is connecting: injection could not be kept to traced
                // processes, so there is none.
                skip(
                    SOCKOPS_PROGRAM,
                    "propagation off: this kernel does not let sockops programs see the connecting process (Linux 6.10+), so injection could not be limited to traced processes".to_owned(),
                );
            } else {
                skip(SOCKOPS_PROGRAM, reason);
            }
            (None, sockmap_mode::UNSET, Some(fionread))
        }
    }
}

/// (id, name) of loaded sk_msg programs other than this agent's own (call
/// before loading ours).
pub fn other_sk_msg_programs() -> Vec<(u32, String)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        // bpf_prog_type is not re-exported by aya: compare by name.
        .filter(|p| format!("{:?}", p.program_type()) == "BPF_PROG_TYPE_SK_MSG")
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_owned()))
        .collect()
}

/// Ids of loaded sk_msg programs named like ours: other waggle agents.
pub fn other_injectors() -> Vec<u32> {
    other_sk_msg_programs().into_iter().filter(|(_, name)| name == SK_MSG_PROGRAM).map(|(id, _)| id).collect()
}

fn attach_sk_msg(ebpf: &mut Ebpf) -> Result<SockHash<MapData, u64>, AttachError> {
    let map = take_map(ebpf, maps::INJECT_SOCKS).map_err(|e| AttachError::Other(e.to_string()))?;
    let socks: SockHash<MapData, u64> =
        SockHash::try_from(map).map_err(|e| AttachError::Other(format!("opening INJECT_SOCKS: {e}")))?;
    let fd = socks
        .fd()
        .try_clone()
        .map_err(|e| AttachError::Other(format!("duplicating the INJECT_SOCKS descriptor: {e}")))?;
    let program: &mut SkMsg = ebpf.program_mut(SK_MSG_PROGRAM).ok_or(AttachError::NotInObject)?.try_into()?;
    program.load()?;
    program.attach(&fd)?;
    Ok(socks)
}

fn attach_sockops(ebpf: &mut Ebpf) -> Result<PathBuf, AttachError> {
    let root = cgroup2_root().map_err(AttachError::Other)?;
    let cgroup = fs::File::open(&root).map_err(|e| AttachError::Other(format!("opening {}: {e}", root.display())))?;
    let program: &mut SockOps = ebpf.program_mut(SOCKOPS_PROGRAM).ok_or(AttachError::NotInObject)?.try_into()?;
    program.load()?;
    // Single is the flag-less mode: on kernels with BPF links (5.7+) aya
    // attaches through one, and cgroup links always coexist with other
    // programs on the cgroup (a CNI's, another agent's); BPF_F_ALLOW_MULTI
    // is refused for links.
    program.attach(cgroup, CgroupAttachMode::Single)?;
    Ok(root)
}

/// The cgroup-v2 hierarchy: /sys/fs/cgroup on unified systems,
/// /sys/fs/cgroup/unified on hybrid ones, else wherever /proc/mounts says.
/// sockops only sees sockets of processes at or below it.
fn cgroup2_root() -> Result<PathBuf, String> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let candidates = cgroup2_mounts(&mounts);
    let fallback = [PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/sys/fs/cgroup/unified")];
    for path in candidates.iter().chain(fallback.iter()) {
        if is_cgroup2(path) {
            return Ok(path.clone());
        }
    }
    Err("no cgroup-v2 hierarchy is mounted (looked in /proc/self/mounts, /sys/fs/cgroup, /sys/fs/cgroup/unified)"
        .to_owned())
}

/// cgroup2 mount points in a /proc/mounts text, shortest (outermost) first.
fn cgroup2_mounts(mounts: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            // Mount points escape spaces as \040; cgroup roots never have any.
            (fstype == "cgroup2" && !dir.contains('\\')).then(|| PathBuf::from(dir))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a
    // NUL-terminated string that outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let magic = st.f_type as i64;
    rc == 0 && magic == CGROUP2_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
            cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mounts(hybrid), vec![PathBuf::from("/sys/fs/cgroup/unified")]);
        let unified = "cgroup2 /sys/fs/cgroup/x cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mounts(unified), vec![PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/sys/fs/cgroup/x")]);
        assert!(cgroup2_mounts("proc /proc proc rw 0 0\n").is_empty());
        assert!(!is_cgroup2(Path::new("/proc")));
    }
}

//! Discovery through /proc (procfs crate): the resource (service name and
//! attributes) of every traced process, and the TCP sockets that existed
//! before the agent started or that a process inherited.
//!
//! Everything here reads other processes that may exit at any moment, so no
//! public function fails: an unreadable entry degrades to a safe fallback
//! (`pid-<pid>` names, `None`, fewer sockets) and is logged at debug level.
//!
//! Resource attribute precedence, lowest to highest:
//! 1. what the agent derives (`host.name`, `process.executable.path`,
//!    `process.command`, `process.runtime.name`, `container.id`);
//! 2. the agent-wide `extra_attributes` (the agent's own
//!    OTEL_RESOURCE_ATTRIBUTES / config), so an operator can e.g. replace
//!    `host.name` with the Kubernetes node name;
//! 3. the process's own OTEL_RESOURCE_ATTRIBUTES: the application describes
//!    itself better than a node-wide agent does, so it wins conflicts.
//!
//! `service.name` never appears in `attributes`; it is
//! [`ProcessResource::service_name`]: the process's OTEL_SERVICE_NAME, else
//! `service.name` from its OTEL_RESOURCE_ATTRIBUTES, else a derived name (see
//! [`derive_service_name`]). A `service.name` in the agent-wide attributes is
//! ignored: one name for every process on a node would merge unrelated
//! services.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    io::{self, BufRead, BufReader, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::MetadataExt,
    },
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use procfs::process::Process;

use crate::model::{truncate_utf8, ProcessResource};

/// Resources cached at most; the oldest (least recently revalidated) entry is
/// evicted beyond this.
pub const RESOURCE_CACHE_CAPACITY: usize = 4096;
/// How often a cached resource is checked against the process's start time.
/// Exit events remove entries promptly (`forget`); this catches a pid reused
/// after a missed exit without reading /proc on every span.
const REVALIDATE_AFTER: Duration = Duration::from_secs(1);
/// A process caught in the middle of execve already shows its new executable
/// but not yet its argv or environment (the kernel fills them in at the end
/// of exec; the parent of a vfork/posix_spawn is already running by then).
/// Such a resource is provisional: resolved again after this delay, at most
/// `INCOMPLETE_RETRIES` times (a process may legitimately have an empty argv).
const INCOMPLETE_RETRY_AFTER: Duration = Duration::from_millis(5);
const INCOMPLETE_RETRIES: u8 = 20;
/// Bytes of /proc/<pid>/environ scanned: environments can be huge (Kubernetes
/// injects variables for every service in a namespace).
const ENVIRON_READ_CAP: u64 = 256 * 1024;
/// Bytes of /proc/<pid>/cmdline read: enough for long Java class paths.
const CMDLINE_READ_CAP: u64 = 128 * 1024;
const CGROUP_READ_CAP: u64 = 64 * 1024;
/// Attributes taken from one process's OTEL_RESOURCE_ATTRIBUTES.
const MAX_PROCESS_ATTRIBUTES: usize = 64;
/// Longest service name / attribute value kept (bytes, cut on a char boundary).
const MAX_VALUE_LEN: usize = 1024;
const MAX_SERVICE_NAME_LEN: usize = 256;

pub const ATTR_HOST_NAME: &str = "host.name";
pub const ATTR_EXECUTABLE_PATH: &str = "process.executable.path";
pub const ATTR_COMMAND: &str = "process.command";
pub const ATTR_RUNTIME_NAME: &str = "process.runtime.name";
pub const ATTR_CONTAINER_ID: &str = "container.id";
const ATTR_SERVICE_NAME: &str = "service.name";

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("opening /proc/{pid}: {source}")]
    OpenProcess { pid: u32, source: procfs::ProcError },
    #[error("reading /proc/{pid}/{file}: {source}")]
    ReadProc { pid: u32, file: &'static str, source: procfs::ProcError },
    #[error("reading /proc/{pid}/{file}: {source}")]
    ReadProcIo { pid: u32, file: &'static str, source: io::Error },
    #[error("{operation} for pid {pid} fd {fd}: {source}")]
    Syscall { operation: &'static str, pid: u32, fd: u32, source: io::Error },
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedState {
    Listen,
    Established,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedSocket {
    pub pid: u32,
    pub fd: u32,
    pub state: SeedState,
    /// Addresses are canonical: an IPv4 peer on a dual-stack IPv6 socket
    /// (`::ffff:a.b.c.d`) is reported as plain IPv4.
    pub local: SocketAddr,
    /// Unspecified address, port 0, for listening sockets.
    pub peer: SocketAddr,
    /// For established sockets: true when the local port is one the same
    /// network namespace listens on (the process is the server side).
    pub is_server: bool,
}

/// Coarse TCP state of a socket, from the kernel's `tcp_states.h` numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketState {
    Listen,
    /// SYN_SENT / SYN_RECV: a connect in progress (non-blocking connect
    /// returned EINPROGRESS).
    Connecting,
    Established,
    /// FIN_WAIT*, CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT: shutting down,
    /// possibly still carrying the last response.
    Closing,
    /// Not connected (fresh, or connect failed).
    Closed,
}

impl SocketState {
    fn from_kernel(state: u8) -> SocketState {
        match state {
            1 => SocketState::Established,
            2 | 3 | 12 => SocketState::Connecting,
            10 => SocketState::Listen,
            7 => SocketState::Closed,
            _ => SocketState::Closing,
        }
    }
}

/// What a descriptor is, when it is a TCP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub local: SocketAddr,
    /// Unspecified address, port 0, when the socket has no peer (listening).
    pub peer: SocketAddr,
    pub state: SocketState,
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn unspecified_like(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// The TCP sockets of one network namespace, from /proc/<pid>/net/tcp{,6}.
#[derive(Debug, Default)]
struct TcpTable {
    by_inode: HashMap<u64, SocketInfo>,
    /// Listening port -> local addresses listening on it.
    listeners: HashMap<u16, Vec<IpAddr>>,
}

impl TcpTable {
    fn read(pid: u32) -> Result<TcpTable, DiscoveryError> {
        let process = open_process(pid)?;
        let mut table = TcpTable::default();
        let v4 = process.tcp().map_err(|source| DiscoveryError::ReadProc { pid, file: "net/tcp", source })?;
        // A kernel without IPv6 has no tcp6 table; that is not an error.
        let v6 = match process.tcp6() {
            Ok(entries) => entries,
            Err(e) => {
                tracing::trace!(pid, error = %e, "no /proc/<pid>/net/tcp6");
                Vec::new()
            }
        };
        for entry in v4.into_iter().chain(v6) {
            // TIME_WAIT and request sockets have no inode: nobody owns them.
            if entry.inode == 0 {
                continue;
            }
            let local = canonical(entry.local_address);
            let state = SocketState::from_kernel(entry.state.to_u8());
            let peer =
                if state == SocketState::Listen { unspecified_like(&local) } else { canonical(entry.remote_address) };
            if state == SocketState::Listen {
                table.listeners.entry(local.port()).or_default().push(local.ip());
            }
            table.by_inode.insert(entry.inode, SocketInfo { local, peer, state });
        }
        Ok(table)
    }

    /// True when `local` is an address some socket in this namespace listens
    /// on: then a connection on it was accepted, and its owner is the server.
    /// The address is compared too, so a client whose ephemeral port happens
    /// to equal a port listened on by another IP is not mistaken for a server.
    fn is_listening_on(&self, local: &SocketAddr) -> bool {
        self.listeners
            .get(&local.port())
            .is_some_and(|ips| ips.iter().any(|ip| ip.is_unspecified() || *ip == local.ip()))
    }
}

fn open_process(pid: u32) -> Result<Process, DiscoveryError> {
    let raw = i32::try_from(pid)
        .map_err(|_| DiscoveryError::OpenProcess { pid, source: procfs::ProcError::NotFound(None) })?;
    Process::new(raw).map_err(|source| DiscoveryError::OpenProcess { pid, source })
}

/// Every numeric entry of /proc: the thread-group ids (threads are hidden from
/// the listing).
fn list_pids() -> Vec<u32> {
    let entries = match fs::read_dir("/proc") {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list /proc; no processes discovered");
            return Vec::new();
        }
    };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect()
}

fn netns_inode(pid: u32) -> Result<u64, DiscoveryError> {
    fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()).map_err(|source| DiscoveryError::ReadProcIo {
        pid,
        file: "ns/net",
        source,
    })
}

/// Parses the target of a /proc/<pid>/fd/<n> link: `socket:[12345]`.
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// (fd, socket inode) of every socket descriptor of `pid`. One readlink per
/// descriptor (procfs's iterator costs three syscalls per fd, which adds up
/// on nodes with 100k descriptors).
fn socket_fds(pid: u32) -> Result<Vec<(u32, u64)>, DiscoveryError> {
    let dir = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&dir).map_err(|source| DiscoveryError::ReadProcIo { pid, file: "fd", source })?;
    let mut out = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        // A descriptor closed since the listing is simply gone.
        let Ok(link) = fs::read_link(entry.path()) else { continue };
        if let Some(inode) = socket_inode(&link) {
            out.push((fd, inode));
        }
    }
    Ok(out)
}

/// Every TCP socket descriptor of `pid` found in `table`, in any state.
fn tcp_fds(pid: u32, table: &TcpTable) -> Result<Vec<(u32, SocketInfo)>, DiscoveryError> {
    Ok(socket_fds(pid)?
        .into_iter()
        .filter_map(|(fd, inode)| table.by_inode.get(&inode).map(|info| (fd, *info)))
        .collect())
}

fn push_seeds(pid: u32, table: &TcpTable, out: &mut Vec<SeedSocket>) {
    let fds = match tcp_fds(pid, table) {
        Ok(fds) => fds,
        Err(e) => {
            tracing::debug!(pid, error = %e, "skipping process in socket scan");
            return;
        }
    };
    for (fd, info) in fds {
        let (state, is_server) = match info.state {
            SocketState::Listen => (SeedState::Listen, false),
            SocketState::Established => (SeedState::Established, table.is_listening_on(&info.local)),
            _ => continue,
        };
        out.push(SeedSocket { pid, fd, state, local: info.local, peer: info.peer, is_server });
    }
}

/// Every (pid, fd) on this host that is a listening or established TCP socket,
/// except the agent's own. Processes are grouped by network namespace so each
/// namespace's tables are read once, through any of its members.
pub fn scan_inet_sockets(agent_tgid: u32) -> Vec<SeedSocket> {
    let mut by_netns: HashMap<u64, Vec<u32>> = HashMap::new();
    for pid in list_pids() {
        if pid == agent_tgid {
            continue;
        }
        match netns_inode(pid) {
            Ok(ns) => by_netns.entry(ns).or_default().push(pid),
            Err(e) => tracing::debug!(pid, error = %e, "skipping process in socket scan"),
        }
    }
    let namespaces = by_netns.len();
    let mut out = Vec::new();
    for (netns, pids) in by_netns {
        // Any member shows the namespace's tables; the first may have exited.
        let Some(table) = pids.iter().find_map(|&pid| match TcpTable::read(pid) {
            Ok(table) => Some(table),
            Err(e) => {
                tracing::debug!(pid, netns, error = %e, "cannot read TCP table through this process");
                None
            }
        }) else {
            continue;
        };
        for pid in pids {
            push_seeds(pid, &table, &mut out);
        }
    }
    out.sort_by_key(|s| (s.pid, s.fd));
    tracing::debug!(namespaces, sockets = out.len(), "scanned /proc for TCP sockets");
    out
}

/// The listening and established TCP sockets of one process (for a fork: the
/// child inherited its parent's descriptors).
pub fn scan_process_sockets(pid: u32) -> Vec<SeedSocket> {
    let table = match TcpTable::read(pid) {
        Ok(table) => table,
        Err(e) => {
            tracing::debug!(pid, error = %e, "cannot scan process sockets");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    push_seeds(pid, &table, &mut out);
    out.sort_by_key(|s| s.fd);
    out
}

/// Local addresses of every TCP socket this process (the agent) holds, in
/// any state (an export connection may still be connecting). A collector on
/// this node sees these as the peer addresses of the agent's export traffic,
/// which must never be traced.
///
/// Asked of the sockets themselves (getsockname on our own descriptors):
/// this runs whenever a loopback connection opens, and a /proc/net/tcp walk
/// costs a scan of every socket on the node each time.
pub fn own_tcp_addrs() -> HashSet<SocketAddr> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(|fd| {
            // SAFETY: fd is one of this process's open descriptors (it may
            // have been closed since the listing: then the calls below fail
            // with EBADF and we skip it); it is borrowed only for these calls.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            if !is_tcp_socket(fd) {
                return None;
            }
            socket_name(fd, libc::getsockname).filter(|a| a.port() != 0)
        })
        .collect()
}

/// Addresses of the network interfaces in the agent's network namespace
/// (getifaddrs). Only a peer with one of these addresses can be the agent.
pub fn local_interface_ips() -> HashSet<IpAddr> {
    let mut ips = HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list and stores its head in `head`; on
    // failure it returns -1 and we read nothing.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "listing local interface addresses");
        return ips;
    }
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor is a node of the list getifaddrs returned, alive
        // until freeifaddrs below.
        let ifa = unsafe { &*cursor };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family tells its
            // real type; we only read the matching sockaddr_in/sockaddr_in6.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family is AF_INET, so this is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                ips.insert(IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            } else if family == libc::AF_INET6 {
                // SAFETY: family is AF_INET6, so this is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                ips.insert(IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cursor = ifa.ifa_next;
    }
    // SAFETY: head came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    ips
}

/// Is descriptor `fd` of process `pid` a TCP socket, and what are its
/// addresses?
///
/// Fast path: `pidfd_getfd` duplicates the descriptor into the agent and the
/// socket is asked directly (about ten syscalls, no table parsing). The
/// duplicate holds a reference to the socket for a few microseconds; if the
/// process closes its descriptor in that window the FIN (or RST) goes out that
/// much later and, if the process used epoll without EPOLL_CTL_DEL, one stale
/// readiness event could be reported for the old descriptor number. Both are
/// bounded by the microseconds between dup and close, far below network
/// jitter, which is why this is acceptable for a tracing agent. The duplicate
/// never appears in the target's descriptor table.
///
/// Fallback (pidfd_getfd refused: EPERM under Yama/LSM policies, ENOSYS on
/// kernels before 5.6): the socket inode from /proc/<pid>/fd and the
/// namespace's /proc TCP tables.
pub fn socket_info(pid: u32, fd: u32) -> Option<SocketInfo> {
    match socket_info_pidfd(pid, fd) {
        Ok(info) => info,
        Err(PidfdFailure::Gone) => None,
        Err(PidfdFailure::Unsupported(e)) => {
            tracing::trace!(pid, fd, error = %e, "pidfd_getfd unavailable; using /proc tables");
            socket_info_proc(pid, fd)
        }
    }
}

enum PidfdFailure {
    /// The process or the descriptor no longer exists: nothing to look up.
    Gone,
    /// The mechanism is not available: /proc may still answer.
    Unsupported(DiscoveryError),
}

fn syscall_error(operation: &'static str, pid: u32, fd: u32) -> DiscoveryError {
    DiscoveryError::Syscall { operation, pid, fd, source: io::Error::last_os_error() }
}

fn classify(err: DiscoveryError) -> PidfdFailure {
    let gone = matches!(&err, DiscoveryError::Syscall { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ESRCH) | Some(libc::EBADF)));
    if gone {
        PidfdFailure::Gone
    } else {
        PidfdFailure::Unsupported(err)
    }
}

fn duplicate_fd(pid: u32, fd: u32) -> Result<OwnedFd, PidfdFailure> {
    let target_fd = libc::c_int::try_from(fd).map_err(|_| PidfdFailure::Gone)?;
    let target_pid = libc::pid_t::try_from(pid).map_err(|_| PidfdFailure::Gone)?;
    // SAFETY: pidfd_open(pid_t, unsigned int) takes no pointers; it returns a
    // new descriptor or -1 with errno set.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, target_pid, 0 as libc::c_uint) };
    if pidfd < 0 {
        return Err(classify(syscall_error("pidfd_open", pid, fd)));
    }
    // SAFETY: pidfd_open just returned this descriptor and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd(int pidfd, int targetfd, unsigned int flags) takes
    // no pointers; it returns a new close-on-exec descriptor or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0 as libc::c_uint) };
    if dup < 0 {
        return Err(classify(syscall_error("pidfd_getfd", pid, fd)));
    }
    // SAFETY: pidfd_getfd just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

fn socket_info_pidfd(pid: u32, fd: u32) -> Result<Option<SocketInfo>, PidfdFailure> {
    let dup = duplicate_fd(pid, fd)?;
    // `dup` is closed when it goes out of scope, right after these queries.
    let sock = dup.as_fd();
    if !is_tcp_socket(sock) {
        // Not a socket (ENOTSOCK), or not TCP.
        return Ok(None);
    }
    let Some(local) = socket_name(sock, libc::getsockname) else { return Ok(None) };
    let state = tcp_state(sock).unwrap_or(SocketState::Closed);
    let peer = match state {
        SocketState::Listen | SocketState::Closed => unspecified_like(&local),
        _ => match socket_name(sock, libc::getpeername) {
            Some(peer) => peer,
            // getpeername refuses during SYN_SENT although the kernel knows
            // the destination; /proc/net/tcp shows it.
            None => peer_from_proc(pid, sock).unwrap_or_else(|| unspecified_like(&local)),
        },
    };
    Ok(Some(SocketInfo { local, peer, state }))
}

/// An AF_INET/AF_INET6 stream socket speaking TCP.
fn is_tcp_socket(sock: BorrowedFd<'_>) -> bool {
    sockopt_int(sock, libc::SOL_SOCKET, libc::SO_DOMAIN).is_ok_and(|d| d == libc::AF_INET || d == libc::AF_INET6)
        && sockopt_int(sock, libc::SOL_SOCKET, libc::SO_TYPE).is_ok_and(|t| t == libc::SOCK_STREAM)
        && sockopt_int(sock, libc::SOL_SOCKET, libc::SO_PROTOCOL).is_ok_and(|p| p == libc::IPPROTO_TCP)
}

fn sockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value/len point to a live c_int and its size; the kernel writes
    // at most len bytes and updates len.
    let rc =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut value as *mut libc::c_int).cast(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The socket's TCP state: the first byte of `struct tcp_info` (the kernel
/// copies only as many bytes as asked for).
fn tcp_state(fd: BorrowedFd<'_>) -> Option<SocketState> {
    let mut buf = [0u8; 8];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf/len describe a live 8-byte buffer; the kernel writes at most
    // len bytes and updates len.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, buf.as_mut_ptr().cast(), &mut len)
    };
    (rc == 0 && len >= 1).then(|| SocketState::from_kernel(buf[0]))
}

type NameFn = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn socket_name(fd: BorrowedFd<'_>, get: NameFn) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len describe a live sockaddr_storage, large enough for
    // any address; the kernel writes at most len bytes and updates len.
    let rc = unsafe { get(fd.as_raw_fd(), (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) };
    if rc < 0 {
        return None;
    }
    sockaddr_to_std(&storage, len as usize).map(canonical)
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage, len: usize) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says sockaddr_in, len covers it, and
            // sockaddr_storage is aligned for every sockaddr type.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Peer of a duplicated socket from the /proc tables, keyed by its inode
/// (fstat of a socket descriptor reports the socket inode).
fn peer_from_proc(pid: u32, sock: BorrowedFd<'_>) -> Option<SocketAddr> {
    // SAFETY: libc::stat is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a live, writable stat buffer; fstat only writes it.
    if unsafe { libc::fstat(sock.as_raw_fd(), &mut st) } < 0 {
        return None;
    }
    let table = TcpTable::read(pid).ok()?;
    let info = table.by_inode.get(&st.st_ino)?;
    (!info.peer.ip().is_unspecified()).then_some(info.peer)
}

/// `socket_info` without pidfd_getfd: /proc/<pid>/fd/<fd> -> socket inode ->
/// the namespace's TCP tables.
fn socket_info_proc(pid: u32, fd: u32) -> Option<SocketInfo> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode = socket_inode(&link)?;
    match TcpTable::read(pid) {
        Ok(table) => table.by_inode.get(&inode).copied(),
        Err(e) => {
            tracing::debug!(pid, fd, error = %e, "cannot read TCP tables");
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------

struct CacheEntry {
    resource: Arc<ProcessResource>,
    /// Process start time (clock ticks since boot); None when unreadable.
    start_time: Option<u64>,
    checked: Instant,
    /// Key in `ResourceResolver::order`.
    seq: u64,
    /// Re-resolutions left while the process looked mid-exec; 0 = final.
    incomplete_retries: u8,
}

struct Resolved {
    resource: Arc<ProcessResource>,
    start_time: Option<u64>,
    incomplete: bool,
}

/// Builds and caches the resource of each traced process.
pub struct ResourceResolver {
    pub host_name: String,
    pub extra_attributes: Vec<(String, String)>,
    agent_tgid: u32,
    capacity: usize,
    cache: HashMap<u32, CacheEntry>,
    /// seq -> pid, oldest first: the eviction order.
    order: BTreeMap<u64, u32>,
    next_seq: u64,
    /// Kernel-reported task names of processes seen opening connections, for
    /// when /proc is gone before the resource is built (bounded like the cache).
    comm_hints: HashMap<u32, String>,
}

impl ResourceResolver {
    /// `extra_attributes`: the agent-wide resource attributes (lower
    /// precedence than the process's own; see the module docs).
    /// `agent_tgid`: the agent's own resource is named `waggle` whatever its
    /// command line.
    pub fn new(extra_attributes: Vec<(String, String)>, agent_tgid: u32) -> ResourceResolver {
        Self::with_capacity(extra_attributes, agent_tgid, RESOURCE_CACHE_CAPACITY)
    }

    pub fn with_capacity(
        extra_attributes: Vec<(String, String)>,
        agent_tgid: u32,
        capacity: usize,
    ) -> ResourceResolver {
        ResourceResolver {
            host_name: read_host_name(),
            extra_attributes,
            agent_tgid,
            capacity: capacity.max(1),
            cache: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            comm_hints: HashMap::new(),
        }
    }

    /// The resource of `pid`, from the cache when the cached entry still
    /// belongs to the same process (start time checked at most once per
    /// second). Never fails: an unreadable process gets `pid-<pid>`.
    pub fn resource(&mut self, pid: u32) -> Arc<ProcessResource> {
        let now = Instant::now();
        let mut retries = INCOMPLETE_RETRIES;
        if let Some(entry) = self.cache.get(&pid) {
            let age = now.duration_since(entry.checked);
            if entry.incomplete_retries > 0 {
                if age < INCOMPLETE_RETRY_AFTER {
                    return Arc::clone(&entry.resource);
                }
                retries = entry.incomplete_retries - 1;
            } else if age < REVALIDATE_AFTER {
                return Arc::clone(&entry.resource);
            } else {
                match read_start_time(pid) {
                    // Same process, or the process is gone (late events of an
                    // exited process still belong to it): keep the entry.
                    current if current.is_none() || current == entry.start_time => {
                        let resource = Arc::clone(&entry.resource);
                        self.touch(pid, now);
                        return resource;
                    }
                    _ => tracing::debug!(pid, "pid reused by a new process; resolving its resource again"),
                }
            }
        }
        let resolved = self.resolve(pid);
        if resolved.start_time.is_none() {
            // Gone before a provisional entry could be completed: what was
            // read mid-exec (the executable) beats a bare `pid-<pid>`.
            if let Some(entry) = self.cache.get_mut(&pid).filter(|e| e.incomplete_retries > 0) {
                entry.incomplete_retries = 0;
                entry.checked = now;
                return Arc::clone(&entry.resource);
            }
        }
        let retries = if resolved.incomplete { retries } else { 0 };
        self.insert(pid, Arc::clone(&resolved.resource), resolved.start_time, now, retries);
        resolved.resource
    }

    pub fn forget(&mut self, pid: u32) {
        if let Some(entry) = self.cache.remove(&pid) {
            self.order.remove(&entry.seq);
        }
        self.comm_hints.remove(&pid);
    }

    /// A process was seen opening a connection: resolve it now, while it is
    /// alive (a short-lived client may be gone by the time its span is
    /// built). `comm` (the kernel's task name) names it if /proc already is.
    pub fn observe(&mut self, pid: u32, comm: &[u8]) {
        let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
        let comm = String::from_utf8_lossy(&comm[..end]).into_owned();
        if !comm.is_empty() {
            if self.comm_hints.len() >= self.capacity && !self.comm_hints.contains_key(&pid) {
                self.comm_hints.clear();
            }
            self.comm_hints.insert(pid, comm);
        }
        let _ = self.resource(pid);
    }

    /// Number of cached resources.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn touch(&mut self, pid: u32, now: Instant) {
        let seq = self.next_seq;
        if let Some(entry) = self.cache.get_mut(&pid) {
            self.order.remove(&entry.seq);
            entry.seq = seq;
            entry.checked = now;
            self.order.insert(seq, pid);
            self.next_seq += 1;
        }
    }

    fn insert(
        &mut self,
        pid: u32,
        resource: Arc<ProcessResource>,
        start_time: Option<u64>,
        now: Instant,
        incomplete_retries: u8,
    ) {
        self.forget(pid);
        while self.cache.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.cache.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, pid);
        self.cache.insert(pid, CacheEntry { resource, start_time, checked: now, seq, incomplete_retries });
    }

    fn resolve(&self, pid: u32) -> Resolved {
        let mut facts = match ProcessFacts::read(pid) {
            Ok(facts) => facts,
            Err(e) => {
                tracing::debug!(pid, error = %e, "process unreadable; using a pid-based resource");
                ProcessFacts::default()
            }
        };
        if facts.comm.is_empty() {
            if let Some(comm) = self.comm_hints.get(&pid) {
                facts.comm = comm.clone();
            }
        }
        // Kernel threads have neither exe nor argv; a user process with an
        // executable but no argv is most likely still inside execve.
        let incomplete = facts.exe_path.is_some() && facts.argv.is_empty();
        let start_time = facts.start_time;
        Resolved { resource: Arc::new(self.build(pid, facts)), start_time, incomplete }
    }

    fn build(&self, pid: u32, facts: ProcessFacts) -> ProcessResource {
        let exe_path = facts.exe_path.as_deref().unwrap_or("");
        let exe_name = basename(exe_path);
        let executable_name = if !exe_name.is_empty() {
            exe_name.to_owned()
        } else if let Some(argv0) = facts.argv.first().map(|a| basename(command_of(a))).filter(|n| !n.is_empty()) {
            argv0.to_owned()
        } else if !facts.comm.is_empty() {
            facts.comm.clone()
        } else {
            format!("pid-{pid}")
        };

        let mut attrs: BTreeMap<String, String> = BTreeMap::new();
        if !self.host_name.is_empty() {
            attrs.insert(ATTR_HOST_NAME.into(), self.host_name.clone());
        }
        if !exe_path.is_empty() {
            attrs.insert(ATTR_EXECUTABLE_PATH.into(), truncate_utf8(exe_path, MAX_VALUE_LEN));
        }
        if let Some(argv0) = facts.argv.first() {
            let command = command_of(argv0);
            if !command.is_empty() {
                attrs.insert(ATTR_COMMAND.into(), truncate_utf8(command, MAX_VALUE_LEN));
            }
        }
        let argv0_name = facts.argv.first().map(|a| basename(command_of(a))).unwrap_or("");
        if let Some(runtime) = Runtime::detect(exe_name, argv0_name) {
            attrs.insert(ATTR_RUNTIME_NAME.into(), runtime.runtime_name(exe_name, argv0_name).into());
        }
        if let Some(id) = facts.container_id {
            attrs.insert(ATTR_CONTAINER_ID.into(), id);
        }
        for (k, v) in &self.extra_attributes {
            attrs.insert(k.clone(), v.clone());
        }
        let own = facts.resource_attributes.as_deref().map(parse_resource_attributes).unwrap_or_default();
        let mut own_service_name = None;
        for (k, v) in own.into_iter().take(MAX_PROCESS_ATTRIBUTES) {
            if k == ATTR_SERVICE_NAME {
                own_service_name = Some(v);
            } else {
                attrs.insert(k, truncate_utf8(&v, MAX_VALUE_LEN));
            }
        }
        attrs.remove(ATTR_SERVICE_NAME);

        let service_name = if pid == self.agent_tgid && pid != 0 {
            "waggle".to_owned()
        } else {
            let derived = || {
                let name = derive_service_name(exe_name, &facts.argv);
                if !name.is_empty() {
                    name
                } else if !facts.comm.is_empty() {
                    facts.comm.clone()
                } else {
                    format!("pid-{pid}")
                }
            };
            facts
                .service_name
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_owned())
                .or(own_service_name.filter(|s| !s.is_empty()))
                .unwrap_or_else(derived)
        };

        ProcessResource {
            service_name: truncate_utf8(&service_name, MAX_SERVICE_NAME_LEN),
            pid,
            executable_name: truncate_utf8(&executable_name, MAX_SERVICE_NAME_LEN),
            attributes: attrs.into_iter().collect(),
        }
    }
}

/// Everything read from /proc/<pid> for one resource.
#[derive(Debug, Default)]
struct ProcessFacts {
    start_time: Option<u64>,
    comm: String,
    exe_path: Option<String>,
    argv: Vec<String>,
    container_id: Option<String>,
    service_name: Option<String>,
    resource_attributes: Option<String>,
}

impl ProcessFacts {
    /// All reads go through one open /proc/<pid> directory: if the pid is
    /// reused meanwhile they fail instead of mixing two processes.
    fn read(pid: u32) -> Result<ProcessFacts, DiscoveryError> {
        let process = open_process(pid)?;
        let stat = process.stat().map_err(|source| DiscoveryError::ReadProc { pid, file: "stat", source })?;
        let mut facts = ProcessFacts { start_time: Some(stat.starttime), comm: stat.comm, ..Default::default() };
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
            Ok((bytes, _)) => facts.container_id = container_id_from_cgroup(&String::from_utf8_lossy(&bytes)),
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

fn read_start_time(pid: u32) -> Option<u64> {
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

fn read_host_name() -> String {
    if let Ok(name) = fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: buf is a live, writable buffer of the given length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        return String::from_utf8_lossy(&buf[..end]).into_owned();
    }
    String::new()
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

/// `process.command`: argv[0] only. Processes that rewrite their title
/// (`php-fpm: pool www`, `redis-server *:6379`, `postgres: user db ...`)
/// leave one string that may carry arbitrary text, so keep its first word
/// (an executable path with a space in it is cut too: rare, and harmless).
fn command_of(argv0: &str) -> &str {
    let cut = argv0.find(": ").map(|i| &argv0[..i]).unwrap_or(argv0);
    cut.split_whitespace().next().unwrap_or("")
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[derive(Debug, Default, PartialEq, Eq)]
struct OtelEnv {
    service_name: Option<String>,
    resource_attributes: Option<String>,
}

/// The OTEL_* variables a process's resource depends on, from its environ,
/// scanning at most `cap` bytes. An entry cut by the cap is ignored (every
/// complete entry ends with NUL). Like getenv, the first occurrence wins.
fn otel_env(reader: impl Read, cap: u64) -> io::Result<OtelEnv> {
    let mut reader = BufReader::new(reader.take(cap));
    let mut env = OtelEnv::default();
    let mut entry = Vec::new();
    loop {
        entry.clear();
        if reader.read_until(0, &mut entry)? == 0 {
            break;
        }
        let Some(complete) = entry.strip_suffix(&[0]) else { break };
        if let Some(v) = complete.strip_prefix(b"OTEL_SERVICE_NAME=") {
            env.service_name.get_or_insert_with(|| String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = complete.strip_prefix(b"OTEL_RESOURCE_ATTRIBUTES=") {
            env.resource_attributes.get_or_insert_with(|| String::from_utf8_lossy(v).into_owned());
        }
    }
    Ok(env)
}

/// Parses OTEL_RESOURCE_ATTRIBUTES (`k=v,k2=v%20x`): comma-separated pairs,
/// whitespace around keys and values trimmed, both percent-decoded. A pair
/// without `=`, with an empty key, or with bad percent-encoding is skipped
/// (not the whole list). Later duplicates win, as in the OTel SDKs.
pub fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in s.split(',') {
        let Some((k, v)) = pair.split_once('=') else { continue };
        let (Some(k), Some(v)) = (percent_decode(k.trim()), percent_decode(v.trim())) else {
            tracing::debug!(pair, "skipping malformed resource attribute");
            continue;
        };
        if k.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(ek, _)| *ek == k) {
            Some(existing) => existing.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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

// ---------------------------------------------------------------------------
// Derived service names
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runtime {
    Python,
    Java,
    Node,
    Ruby,
    Php,
    PhpFpm,
    Perl,
    Bun,
    Deno,
    Dotnet,
}

impl Runtime {
    /// From an executable name with its version suffix removed
    /// (`python3.11` -> python, `php-fpm8.2` -> php-fpm, `nodejs` -> node).
    fn from_name(name: &str) -> Option<Runtime> {
        let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        Some(match stem {
            "python" | "pypy" => Runtime::Python,
            "java" => Runtime::Java,
            "node" | "nodejs" => Runtime::Node,
            "ruby" => Runtime::Ruby,
            "php" | "php-cgi" | "php-cli" => Runtime::Php,
            "php-fpm" => Runtime::PhpFpm,
            "perl" => Runtime::Perl,
            "bun" => Runtime::Bun,
            "deno" => Runtime::Deno,
            "dotnet" => Runtime::Dotnet,
            _ => return None,
        })
    }

    /// The executable decides; argv[0] only when the executable is unknown
    /// or not an interpreter (a shim whose exe link was unreadable).
    fn detect(exe_name: &str, argv0_name: &str) -> Option<Runtime> {
        Runtime::from_name(exe_name).or_else(|| Runtime::from_name(argv0_name))
    }

    /// `process.runtime.name`, following what the OTel SDKs of each language
    /// report where that is knowable from outside.
    fn runtime_name(self, exe_name: &str, argv0_name: &str) -> &'static str {
        match self {
            Runtime::Python if exe_name.starts_with("pypy") || argv0_name.starts_with("pypy") => "pypy",
            Runtime::Python => "cpython",
            Runtime::Java => "java",
            Runtime::Node => "nodejs",
            Runtime::Ruby => "ruby",
            Runtime::Php | Runtime::PhpFpm => "php",
            Runtime::Perl => "perl",
            Runtime::Bun => "bun",
            Runtime::Deno => "deno",
            Runtime::Dotnet => "dotnet",
        }
    }
}

/// A service name from the executable and command line alone.
///
/// For interpreters, the program they run:
/// - Python: the script (`app.py` -> `app`; `__main__.py` -> its directory),
///   the `-m` module (`http.server`); for app-server launchers (gunicorn,
///   uvicorn, hypercorn, daphne, granian) the application's package: the
///   first part of the module path that is not a generic name
///   (`myapp.wsgi:application` -> `myapp`, `src.billing.main:app` ->
///   `billing`, `app.main:app` -> `app`), for celery the `-A` app; a rewritten title
///   with the app in brackets (`gunicorn: worker [myapp.wsgi:application]`)
///   counts too.
/// - Java: the `-jar` file without version (`shop-1.2.jar` -> `shop`), else
///   the main class's simple name.
/// - Node, Bun, Deno: the script; for generic entry files (index, server,
///   app, main) the nearest meaningful directory (`/srv/api/server.js` -> `api`).
/// - Ruby, PHP, Perl: the script; .NET: the `.dll`; php-fpm: `php-fpm`.
///
/// Otherwise (and for `python -c ...`), the executable name (argv[0]'s for
/// busybox applets). Empty only when nothing at all is known.
pub fn derive_service_name(exe_name: &str, argv: &[String]) -> String {
    let argv0_name = argv.first().map(|a| basename(command_of(a))).unwrap_or("");
    if let Some(runtime) = Runtime::detect(exe_name, argv0_name) {
        if let Some(name) = interpreter_program(runtime, argv).filter(|n| !n.is_empty()) {
            return name;
        }
    }
    if !exe_name.is_empty() && exe_name != "busybox" {
        return exe_name.to_owned();
    }
    argv0_name.to_owned()
}

fn interpreter_program(runtime: Runtime, argv: &[String]) -> Option<String> {
    // A single argument with spaces is a rewritten process title; read its
    // words as arguments.
    let title_words: Vec<String>;
    let args: &[String] = match argv {
        [only] if only.contains(char::is_whitespace) => {
            if matches!(runtime, Runtime::Python | Runtime::Ruby) {
                if let Some(inner) = bracketed(only) {
                    return Some(app_module_name(inner));
                }
            }
            title_words = only.split_whitespace().skip(1).map(str::to_owned).collect();
            &title_words
        }
        [_, rest @ ..] => rest,
        [] => &[],
    };
    match runtime {
        Runtime::Python => python_program(args),
        Runtime::Java => java_program(args),
        Runtime::Node => script_after_options(
            args,
            &[
                "-r",
                "--require",
                "--import",
                "--loader",
                "--experimental-loader",
                "--title",
                "-C",
                "--conditions",
                "--input-type",
            ],
            &["-e", "--eval", "-p", "--print"],
            &[],
        )
        .map(|s| js_entry_name(&s)),
        Runtime::Bun => script_after_options(
            args,
            &["--cwd", "-c", "--config", "--env-file", "-r", "--preload"],
            &["-e", "--eval", "-p", "--print"],
            &["run"],
        )
        .map(|s| js_entry_name(&s)),
        Runtime::Deno => script_after_options(
            args,
            &["-c", "--config", "--import-map", "--location", "--cert", "--env-file"],
            &["eval"],
            &["run", "serve"],
        )
        .map(|s| js_entry_name(&s)),
        Runtime::Ruby => script_after_options(args, &["-I", "-r", "-C", "-E", "-x"], &["-e"], &[])
            .map(|s| strip_ext(basename(&s), &[".rb"]).to_owned()),
        Runtime::Php => {
            if let Some(i) = args.iter().position(|a| a == "-f") {
                return args.get(i + 1).map(|s| strip_ext(basename(s), &[".php"]).to_owned());
            }
            script_after_options(args, &["-c", "-d", "-z", "-t", "-S"], &["-r", "-a"], &[])
                .map(|s| strip_ext(basename(&s), &[".php"]).to_owned())
        }
        Runtime::PhpFpm => Some("php-fpm".to_owned()),
        Runtime::Perl => script_after_options(args, &["-I"], &["-e", "-E"], &[])
            .map(|s| strip_ext(basename(&s), &[".pl", ".pm"]).to_owned()),
        Runtime::Dotnet => script_after_options(
            args,
            &[
                "--roll-forward",
                "--additionalprobingpath",
                "--additional-deps",
                "--depsfile",
                "--runtimeconfig",
                "--fx-version",
            ],
            &[],
            &["exec"],
        )
        .filter(|s| s.ends_with(".dll"))
        .map(|s| strip_ext(basename(&s), &[".dll"]).to_owned()),
    }
}

fn bracketed(title: &str) -> Option<&str> {
    let start = title.rfind('[')?;
    let end = start + title[start..].find(']')?;
    let inner = title[start + 1..end].trim();
    (!inner.is_empty()).then_some(inner)
}

fn strip_ext<'a>(name: &'a str, exts: &[&str]) -> &'a str {
    exts.iter().find_map(|e| name.strip_suffix(e)).filter(|s| !s.is_empty()).unwrap_or(name)
}

/// The first non-option argument, skipping `value_opts` with their value and
/// leading `subcommands`; None when an option in `no_script` (eval) comes
/// first.
fn script_after_options(
    args: &[String],
    value_opts: &[&str],
    no_script: &[&str],
    subcommands: &[&str],
) -> Option<String> {
    let mut i = 0;
    let mut seen_positional = false;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            return args.get(i + 1).cloned();
        }
        if no_script.contains(&a) {
            return None;
        }
        if value_opts.contains(&a) {
            i += 2;
            continue;
        }
        if a.starts_with('-') || a.starts_with('@') {
            i += 1;
            continue;
        }
        if !seen_positional && subcommands.contains(&a) {
            seen_positional = true;
            i += 1;
            continue;
        }
        return Some(a.to_owned());
    }
    None
}

const PY_LAUNCHERS: &[&str] = &["gunicorn", "uvicorn", "hypercorn", "daphne", "granian", "waitress-serve"];

fn python_program(args: &[String]) -> Option<String> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--check-hash-based-pycs" {
            i += 2;
            continue;
        }
        if a == "-" {
            return None;
        }
        if a == "--" {
            return args.get(i + 1).map(|s| python_script(s, &args[i + 2..]));
        }
        if a.starts_with("--") {
            i += 1;
            continue;
        }
        if let Some(flags) = a.strip_prefix('-') {
            // Clustered flags (`-u`, `-OO`, `-um mod`, `-Wignore`): c, m, W and
            // X take the rest of the cluster or the next argument.
            let mut consumed_next = false;
            for (pos, c) in flags.char_indices() {
                if matches!(c, 'c' | 'm' | 'W' | 'X') {
                    let rest = &flags[pos + 1..];
                    let (value, value_idx) = if rest.is_empty() {
                        consumed_next = true;
                        (args.get(i + 1).map(String::as_str), i + 1)
                    } else {
                        (Some(rest), i)
                    };
                    match c {
                        'c' => return None,
                        'm' => return value.map(|m| python_module(m, &args[(value_idx + 1).min(args.len())..])),
                        _ => break,
                    }
                }
            }
            i += if consumed_next { 2 } else { 1 };
            continue;
        }
        return Some(python_script(a, &args[i + 1..]));
    }
    None
}

fn python_module(module: &str, rest: &[String]) -> String {
    let top = module.split('.').next().unwrap_or(module);
    if PY_LAUNCHERS.contains(&top) || top == "celery" {
        return python_launcher_app(top, rest);
    }
    module.to_owned()
}

fn python_script(path: &str, rest: &[String]) -> String {
    let base = basename(path);
    let stem = strip_ext(base, &[".py", ".pyc", ".pyz"]);
    if stem == "__main__" {
        let dir = parent_dirs(path).next();
        if let Some(dir) = dir {
            return dir.to_owned();
        }
    }
    if PY_LAUNCHERS.contains(&stem) || stem == "celery" {
        return python_launcher_app(stem, rest);
    }
    stem.to_owned()
}

/// The application an app server runs, else the launcher's own name.
fn python_launcher_app(launcher: &str, args: &[String]) -> String {
    if launcher == "celery" {
        for (i, a) in args.iter().enumerate() {
            let app = if a == "-A" || a == "--app" {
                args.get(i + 1).map(String::as_str)
            } else if let Some(v) = a.strip_prefix("--app=") {
                Some(v)
            } else {
                a.strip_prefix("-A").filter(|v| !v.is_empty())
            };
            if let Some(app) = app {
                let root = app.split(['.', ':']).next().unwrap_or(app);
                if !root.is_empty() {
                    return root.to_owned();
                }
            }
        }
        return launcher.to_owned();
    }
    // Options of gunicorn/uvicorn/hypercorn/daphne that take a separate value.
    const VALUE_OPTS: &[&str] = &[
        "-c",
        "--config",
        "-b",
        "--bind",
        "-w",
        "--workers",
        "-k",
        "--worker-class",
        "--chdir",
        "--pythonpath",
        "-u",
        "--user",
        "-g",
        "--group",
        "--log-level",
        "--access-logfile",
        "--error-logfile",
        "--log-config",
        "-p",
        "--pid",
        "--host",
        "--port",
        "--app-dir",
        "--env-file",
        "--uds",
        "--threads",
        "-t",
        "--timeout",
        "-e",
        "--env",
        "--name",
        "-n",
    ];
    let mut positionals = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if VALUE_OPTS.contains(&a) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            positionals.push(a);
        }
        i += 1;
    }
    // `module:callable` is unambiguous; addresses (`0.0.0.0:8000`,
    // `localhost:8000`, `unix:/x`) fail the identifier checks.
    if let Some(spec) = positionals.iter().find(|a| is_app_spec(a)) {
        return app_module_name(spec);
    }
    // gunicorn also accepts a bare module (`myapp.wsgi`), last on the line.
    if let Some(spec) = positionals.iter().rev().find(|a| is_dotted_identifier(a)) {
        return app_module_name(spec);
    }
    launcher.to_owned()
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_') && chars.all(|c| c.is_alphanumeric() || c == '_')
}

fn is_dotted_identifier(s: &str) -> bool {
    s.split('.').all(is_identifier)
}

fn is_app_spec(s: &str) -> bool {
    match s.split_once(':') {
        Some((module, callable)) => {
            is_dotted_identifier(module) && callable.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
        }
        None => false,
    }
}

/// `myapp.wsgi:application` -> `myapp`: the first part of the module path
/// that is not a name every project uses (the project's package, usually);
/// when all are generic (`app.main`), the first part.
fn app_module_name(spec: &str) -> String {
    const GENERIC: &[&str] = &["wsgi", "asgi", "app", "application", "main", "server", "__main__", "src"];
    let module = spec.split(':').next().unwrap_or(spec);
    let parts: Vec<&str> = module.split('.').filter(|p| !p.is_empty()).collect();
    let meaningful = parts.iter().find(|p| !GENERIC.contains(p));
    match (meaningful, parts.first()) {
        (Some(name), _) => (*name).to_owned(),
        (None, Some(first)) => (*first).to_owned(),
        (None, None) => module.to_owned(),
    }
}

fn java_program(args: &[String]) -> Option<String> {
    const VALUE_OPTS: &[&str] = &[
        "-cp",
        "-classpath",
        "--class-path",
        "-p",
        "--module-path",
        "--upgrade-module-path",
        "--add-modules",
        "--limit-modules",
        "--add-reads",
        "--add-exports",
        "--add-opens",
        "--patch-module",
        "--enable-native-access",
        "--source",
    ];
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "-jar" {
            return args.get(i + 1).map(|jar| jar_name(jar));
        }
        if a == "-m" || a == "--module" {
            return args.get(i + 1).map(|m| java_module_main(m));
        }
        if let Some(m) = a.strip_prefix("--module=") {
            return Some(java_module_main(m));
        }
        if VALUE_OPTS.contains(&a) {
            i += 2;
            continue;
        }
        if a.starts_with('-') || a.starts_with('@') {
            i += 1;
            continue;
        }
        // Source-file mode (`java Hello.java`) or a main class.
        if let Some(stem) = basename(a).strip_suffix(".java") {
            return Some(stem.to_owned());
        }
        return Some(a.rsplit('.').next().unwrap_or(a).to_owned());
    }
    None
}

fn java_module_main(spec: &str) -> String {
    match spec.split_once('/') {
        Some((_, class)) => class.rsplit('.').next().unwrap_or(class).to_owned(),
        None => spec.rsplit('.').next().unwrap_or(spec).to_owned(),
    }
}

/// `/opt/shop-1.2.3-SNAPSHOT.jar` -> `shop`: the version is not part of the
/// service's identity.
fn jar_name(path: &str) -> String {
    let stem = strip_ext(basename(path), &[".jar", ".war"]);
    let mut kept: Vec<&str> = Vec::new();
    for part in stem.split('-') {
        if !kept.is_empty() && part.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            break;
        }
        kept.push(part);
    }
    kept.join("-")
}

fn parent_dirs(path: &str) -> impl Iterator<Item = &str> {
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    parts.pop();
    parts.into_iter().rev()
}

fn js_entry_name(path: &str) -> String {
    const GENERIC_FILES: &[&str] = &["index", "server", "app", "main", "mod"];
    const GENERIC_DIRS: &[&str] =
        &["src", "dist", "build", "lib", "bin", "out", "server", "app", "..", "srv", "opt", "usr", "home"];
    let stem = strip_ext(basename(path), &[".js", ".mjs", ".cjs", ".ts", ".mts", ".cts", ".jsx", ".tsx"]);
    if GENERIC_FILES.contains(&stem) {
        if let Some(dir) = parent_dirs(path).find(|d| !GENERIC_DIRS.contains(d)) {
            return dir.to_owned();
        }
    }
    stem.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{BufRead, BufReader as StdBufReader},
        net::{TcpListener, TcpStream, UdpSocket},
        os::unix::net::UnixStream,
        process::{Child, Command, Stdio},
        sync::OnceLock,
    };

    /// Kills its process (and any extra pids it learned) on drop, so a failed
    /// assertion never leaves a process behind.
    struct Guard {
        child: Child,
        extra: Vec<u32>,
    }

    impl Guard {
        fn pid(&self) -> u32 {
            self.child.id()
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            for &pid in &self.extra {
                if let Ok(pid) = libc::pid_t::try_from(pid) {
                    // SAFETY: kill takes no pointers; the pid is a process this test forked.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The real interpreter, not a pyenv shim: the shim execs python later,
    /// so /proc would briefly show bash.
    fn python() -> &'static str {
        static PY: OnceLock<String> = OnceLock::new();
        PY.get_or_init(|| {
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .expect("python3 must be installed for discovery tests");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
    }

    fn spawn_python(args: &[&str], env: &[(&str, &str)]) -> Guard {
        let mut cmd = Command::new(python());
        cmd.args(args)
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Guard { child: cmd.spawn().unwrap(), extra: Vec::new() }
    }

    /// spawn() returns while the child's execve is still filling in argv
    /// (see INCOMPLETE_RETRY_AFTER); tests that want a settled process wait.
    fn wait_exec_done(guard: &Guard) {
        wait_for("execve to finish", || {
            fs::read(format!("/proc/{}/cmdline", guard.pid())).ok().filter(|c| !c.is_empty())
        });
    }

    fn read_line(guard: &mut Guard) -> String {
        let stdout = guard.child.stdout.as_mut().unwrap();
        let mut line = String::new();
        StdBufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "child printed nothing");
        line
    }

    fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const SOCKET_SCRIPT: &str = r#"
import os, socket, sys, time
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
l = socket.socket(family)
l.bind(("::" if family == socket.AF_INET6 else "127.0.0.1", 0))
l.listen()
port = l.getsockname()[1]
c = socket.create_connection(("127.0.0.1", port))
a, _ = l.accept()
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(l.fileno(), c.fileno(), a.fileno(), port, c.getsockname()[1], child, flush=True)
time.sleep(60)
"#;

    struct SocketChild {
        guard: Guard,
        listen_fd: u32,
        client_fd: u32,
        accepted_fd: u32,
        port: u16,
        client_port: u16,
        forked: u32,
    }

    fn socket_child(family: &str) -> SocketChild {
        let mut guard = spawn_python(&["-c", SOCKET_SCRIPT, family], &[]);
        let line = read_line(&mut guard);
        let v: Vec<u32> = line.split_whitespace().map(|s| s.parse().unwrap()).collect();
        guard.extra.push(v[5]);
        SocketChild {
            guard,
            listen_fd: v[0],
            client_fd: v[1],
            accepted_fd: v[2],
            port: v[3] as u16,
            client_port: v[4] as u16,
            forked: v[5],
        }
    }

    fn assert_three_sockets(seeds: &[SeedSocket], pid: u32, c: &SocketChild) {
        let mine: Vec<&SeedSocket> = seeds.iter().filter(|s| s.pid == pid).collect();
        assert_eq!(mine.len(), 3, "{mine:#?}");
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let listen = mine.iter().find(|s| s.fd == c.listen_fd).unwrap();
        assert_eq!(listen.state, SeedState::Listen);
        assert_eq!(listen.local.port(), c.port);
        assert!(listen.peer.ip().is_unspecified() && listen.peer.port() == 0);
        let accepted = mine.iter().find(|s| s.fd == c.accepted_fd).unwrap();
        assert_eq!(accepted.state, SeedState::Established);
        assert_eq!(accepted.local, SocketAddr::new(lo, c.port));
        assert_eq!(accepted.peer, SocketAddr::new(lo, c.client_port));
        assert!(accepted.is_server);
        let client = mine.iter().find(|s| s.fd == c.client_fd).unwrap();
        assert_eq!(client.state, SeedState::Established);
        assert_eq!(client.local, SocketAddr::new(lo, c.client_port));
        assert_eq!(client.peer, SocketAddr::new(lo, c.port));
        assert!(!client.is_server);
    }

    #[test]
    fn scan_finds_listener_and_both_ends_v4() {
        let c = socket_child("4");
        let seeds = scan_inet_sockets(std::process::id());
        assert_three_sockets(&seeds, c.guard.pid(), &c);
        // The forked child inherited the same descriptors.
        assert_three_sockets(&seeds, c.forked, &c);
        assert_three_sockets(&scan_process_sockets(c.forked), c.forked, &c);
        assert_three_sockets(&scan_process_sockets(c.guard.pid()), c.guard.pid(), &c);
    }

    #[test]
    fn scan_canonicalises_dual_stack_sockets() {
        // Listener on [::], IPv4 client: the kernel shows ::ffff:127.0.0.1.
        let c = socket_child("6");
        let seeds = scan_process_sockets(c.guard.pid());
        let listen = seeds.iter().find(|s| s.fd == c.listen_fd).unwrap();
        assert_eq!(listen.local, SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), c.port));
        assert_three_sockets(&seeds, c.guard.pid(), &c);
    }

    #[test]
    fn scan_sees_http_server_and_excludes_agent() {
        let mut server = spawn_python(&["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"], &[]);
        let line = read_line(&mut server);
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port: u16 = line.split(" port ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client_addr = client.local_addr().unwrap();
        let me = std::process::id();

        let seeds = wait_for("the server to accept", || {
            let seeds = scan_inet_sockets(me);
            seeds.iter().any(|s| s.pid == server.pid() && s.state == SeedState::Established).then_some(seeds)
        });
        assert!(seeds.iter().all(|s| s.pid != me), "the agent's own sockets must be skipped");
        let listen: Vec<_> = seeds.iter().filter(|s| s.pid == server.pid() && s.state == SeedState::Listen).collect();
        assert_eq!(listen.len(), 1);
        assert_eq!(listen[0].local.port(), port);
        let conn = seeds.iter().find(|s| s.pid == server.pid() && s.state == SeedState::Established).unwrap();
        assert_eq!(conn.peer, client_addr);
        assert_eq!(conn.local.port(), port);
        assert!(conn.is_server);

        // Without an agent pid to skip, our client end shows up, as a client.
        let all = scan_inet_sockets(0);
        let ours = all.iter().find(|s| s.pid == me && s.local == client_addr).unwrap();
        assert_eq!(ours.fd, client.as_raw_fd() as u32);
        assert!(!ours.is_server);
        assert_eq!(ours.peer, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }

    #[test]
    fn socket_info_answers_for_tcp_and_only_tcp() {
        let c = socket_child("4");
        let pid = c.guard.pid();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let accepted = SocketInfo {
            local: SocketAddr::new(lo, c.port),
            peer: SocketAddr::new(lo, c.client_port),
            state: SocketState::Established,
        };
        let listening = SocketInfo {
            local: SocketAddr::new(lo, c.port),
            peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            state: SocketState::Listen,
        };
        // Both paths: pidfd_getfd, and the /proc fallback.
        assert!(matches!(socket_info_pidfd(pid, c.accepted_fd), Ok(Some(_))), "pidfd path must work as root");
        assert_eq!(socket_info(pid, c.accepted_fd), Some(accepted));
        assert_eq!(socket_info_proc(pid, c.accepted_fd), Some(accepted));
        assert_eq!(socket_info(pid, c.listen_fd), Some(listening));
        assert_eq!(socket_info_proc(pid, c.listen_fd), Some(listening));
        assert_eq!(socket_info(pid, c.client_fd).map(|i| i.peer.port()), Some(c.port));
        // Descriptors that do not exist.
        assert_eq!(socket_info(pid, 999), None);
        assert_eq!(socket_info_proc(pid, 999), None);

        // Not TCP: pipe, unix socket, UDP socket, a regular file.
        let me = std::process::id();
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds is a live array of two ints for pipe() to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe() returned two descriptors we now own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (u1, _u2) = UnixStream::pair().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let file = fs::File::open("/proc/self/stat").unwrap();
        for fd in [r.as_raw_fd(), w.as_raw_fd(), u1.as_raw_fd(), udp.as_raw_fd(), file.as_raw_fd()] {
            assert_eq!(socket_info(me, fd as u32), None, "fd {fd}");
            assert_eq!(socket_info_proc(me, fd as u32), None, "fd {fd}");
        }
        // A process that does not exist.
        assert_eq!(socket_info(u32::MAX - 1, 0), None);
    }

    #[test]
    fn socket_info_reports_connecting_peer() {
        // A listener with a full accept queue drops SYNs, so a second client
        // stays in SYN_SENT. getpeername refuses then; the /proc table knows.
        // SAFETY: socket() takes no pointers; it returns a new descriptor or -1.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(raw >= 0);
        // SAFETY: socket() just returned this descriptor.
        let listener = unsafe { OwnedFd::from_raw_fd(raw) };
        let any_port = sockaddr_in("127.0.0.1:0".parse().unwrap());
        // SAFETY: any_port is a live sockaddr_in and the length matches it.
        let rc = unsafe {
            libc::bind(
                listener.as_raw_fd(),
                (&any_port as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: plain syscall on a descriptor we own.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let addr = socket_name(listener.as_fd(), libc::getsockname).unwrap();
        let _queued = TcpStream::connect(addr).unwrap();
        let pending = nonblocking_connect(addr);
        let info = wait_for("the SYN to be sent", || {
            socket_info(std::process::id(), pending.as_raw_fd() as u32).filter(|i| i.state == SocketState::Connecting)
        });
        assert_eq!(info.peer, addr);
        assert_ne!(info.local.port(), 0);
    }

    fn sockaddr_in(addr: SocketAddr) -> libc::sockaddr_in {
        let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        }
    }

    fn nonblocking_connect(addr: SocketAddr) -> OwnedFd {
        // SAFETY: socket() takes no pointers; it returns a new descriptor or -1.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
        assert!(fd >= 0);
        // SAFETY: socket() just returned this descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sin = sockaddr_in(addr);
        // SAFETY: sin is a live sockaddr_in and the length matches it.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert!(rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS));
        fd
    }

    #[test]
    fn own_tcp_addrs_lists_listeners_and_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let addrs = own_tcp_addrs();
        assert!(addrs.contains(&listener.local_addr().unwrap()), "{addrs:?}");
        assert!(addrs.contains(&client.local_addr().unwrap()), "{addrs:?}");
        assert!(addrs.iter().all(|a| a.port() != 0));
    }

    #[test]
    fn local_interface_ips_include_loopback() {
        let ips = local_interface_ips();
        assert!(ips.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{ips:?}");
    }

    fn attr<'a>(r: &'a ProcessResource, key: &str) -> Option<&'a str> {
        r.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn spawn_http_server(env: &[(&str, &str)]) -> Guard {
        let guard = spawn_python(&["-m", "http.server", "0", "--bind", "127.0.0.1"], env);
        wait_exec_done(&guard);
        guard
    }

    #[test]
    fn resource_resolved_mid_exec_is_provisional() {
        let mut provisional_seen = 0;
        for _ in 0..10 {
            // Resolve the instant spawn() returns: often before argv exists.
            let child =
                spawn_python(&["-m", "http.server", "0", "--bind", "127.0.0.1"], &[("OTEL_SERVICE_NAME", "early")]);
            let mut resolver = ResourceResolver::new(Vec::new(), 0);
            if resolver.resource(child.pid()).service_name != "early" {
                provisional_seen += 1;
            }
            wait_exec_done(&child);
            std::thread::sleep(INCOMPLETE_RETRY_AFTER * 2);
            let r = resolver.resource(child.pid());
            assert_eq!(r.service_name, "early");
            assert_eq!(resolver.cache[&child.pid()].incomplete_retries, 0, "final once argv is known");
        }
        eprintln!("provisional resources seen: {provisional_seen}/10");
    }

    #[test]
    fn resource_of_python_module() {
        let server = spawn_http_server(&[]);
        let mut resolver = ResourceResolver::new(Vec::new(), std::process::id());
        let r = resolver.resource(server.pid());
        assert_eq!(r.service_name, "http.server");
        assert_eq!(r.pid, server.pid());
        assert!(r.executable_name.starts_with("python"), "{r:?}");
        assert_eq!(attr(&r, ATTR_RUNTIME_NAME), Some("cpython"));
        assert_eq!(attr(&r, ATTR_COMMAND), Some(python()), "argv[0] only");
        assert!(attr(&r, ATTR_EXECUTABLE_PATH).unwrap().ends_with(&r.executable_name));
        assert_eq!(attr(&r, ATTR_HOST_NAME), Some(resolver.host_name.as_str()));
        assert!(!resolver.host_name.is_empty());
        assert!(r.attributes.iter().all(|(_, v)| !v.contains("http.server")), "no argv beyond argv[0]");
        assert!(r.attributes.windows(2).all(|w| w[0].0 < w[1].0), "sorted by key: {:?}", r.attributes);
        assert!(attr(&r, "service.name").is_none());

        // Cached: the same Arc until forgotten.
        let again = resolver.resource(server.pid());
        assert!(Arc::ptr_eq(&r, &again));
        resolver.forget(server.pid());
        let fresh = resolver.resource(server.pid());
        assert!(!Arc::ptr_eq(&r, &fresh));
        assert_eq!(*r, *fresh);
    }

    #[test]
    fn resource_honours_process_otel_env() {
        let named = spawn_http_server(&[("OTEL_SERVICE_NAME", "foo")]);
        let attributed = spawn_http_server(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=bar, deployment.environment=prod%20eu,team=own,broken=%zz",
        )]);
        let both = spawn_http_server(&[("OTEL_SERVICE_NAME", "foo"), ("OTEL_RESOURCE_ATTRIBUTES", "service.name=bar")]);
        let extra = vec![
            ("team".to_owned(), "agent".to_owned()),
            ("k8s.cluster.name".to_owned(), "c1".to_owned()),
            ("service.name".to_owned(), "ignored".to_owned()),
        ];
        let mut resolver = ResourceResolver::new(extra, 0);

        assert_eq!(resolver.resource(named.pid()).service_name, "foo");
        let r = resolver.resource(attributed.pid());
        assert_eq!(r.service_name, "bar");
        assert_eq!(attr(&r, "deployment.environment"), Some("prod eu"));
        assert_eq!(attr(&r, "team"), Some("own"), "the process's own attributes win");
        assert_eq!(attr(&r, "k8s.cluster.name"), Some("c1"));
        assert_eq!(attr(&r, "broken"), None);
        assert_eq!(attr(&r, "service.name"), None);
        assert_eq!(resolver.resource(both.pid()).service_name, "foo");
        // The agent-wide service.name never names a process.
        let plain = spawn_http_server(&[]);
        assert_eq!(resolver.resource(plain.pid()).service_name, "http.server");
    }

    #[test]
    fn resource_of_vanished_process_falls_back() {
        let mut child = spawn_http_server(&[]);
        let pid = child.pid();
        child.child.kill().unwrap();
        child.child.wait().unwrap();
        let mut resolver = ResourceResolver::new(vec![("a".into(), "b".into())], 0);
        let r = resolver.resource(pid);
        assert_eq!(r.service_name, format!("pid-{pid}"));
        assert_eq!(r.executable_name, format!("pid-{pid}"));
        assert_eq!(attr(&r, "a"), Some("b"));
    }

    #[test]
    fn resource_cache_detects_pid_reuse_and_is_bounded() {
        let me = std::process::id();
        let mut resolver = ResourceResolver::with_capacity(Vec::new(), 0, 2);
        let first = resolver.resource(me);
        assert_eq!(resolver.cache[&me].incomplete_retries, 0);
        // Pretend the cached entry belongs to an older process with this pid.
        let entry = resolver.cache.get_mut(&me).unwrap();
        entry.start_time = entry.start_time.map(|t| t + 1);
        entry.checked = Instant::now() - REVALIDATE_AFTER * 2;
        let second = resolver.resource(me);
        assert!(!Arc::ptr_eq(&first, &second), "a changed start time must resolve again");
        // Same start time after the interval: kept.
        resolver.cache.get_mut(&me).unwrap().checked = Instant::now() - REVALIDATE_AFTER * 2;
        assert!(Arc::ptr_eq(&second, &resolver.resource(me)));

        let parent = std::os::unix::process::parent_id();
        resolver.resource(parent);
        resolver.resource(1);
        assert_eq!(resolver.cached(), 2);
        assert_eq!(resolver.order.len(), 2);
        assert!(!resolver.cache.contains_key(&me), "the oldest entry is evicted");
        assert!(resolver.cache.contains_key(&parent) && resolver.cache.contains_key(&1));
    }

    #[test]
    fn agent_resource_is_named_waggle() {
        let me = std::process::id();
        let mut resolver = ResourceResolver::new(Vec::new(), me);
        assert_eq!(resolver.resource(me).service_name, "waggle");
    }

    #[test]
    fn derived_service_names() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("python3.11", &["python3", "app.py"], "app"),
            ("python3.11", &["python3", "-m", "http.server", "8000"], "http.server"),
            ("python3.11", &["python3", "-u", "/srv/x/manage.py", "runserver"], "manage"),
            ("python3.11", &["python3", "-um", "http.server"], "http.server"),
            ("python3.11", &["python3", "-W", "ignore", "-X", "dev", "svc.py"], "svc"),
            ("python3.11", &["python3", "/srv/tool/__main__.py"], "tool"),
            ("python3.11", &["python3", "-c", "print(1)"], "python3.11"),
            (
                "python3.11",
                &["/usr/bin/python3", "/usr/local/bin/gunicorn", "-w", "2", "myapp.wsgi:application"],
                "myapp",
            ),
            (
                "python3.11",
                &["python3", "/venv/bin/gunicorn", "-b", "0.0.0.0:8000", "-k", "gevent", "shop.wsgi"],
                "shop",
            ),
            ("python3.11", &["python3", "/venv/bin/uvicorn", "app.main:app", "--port", "8000"], "app"),
            ("python3.11", &["python3", "-m", "uvicorn", "orders.api:app"], "orders"),
            ("python3.11", &["python3", "/venv/bin/uvicorn", "src.billing.main:app"], "billing"),
            ("python3.11", &["python3", "/venv/bin/gunicorn", "-c", "conf.py"], "gunicorn"),
            ("python3.11", &["python3", "/venv/bin/celery", "-A", "proj", "worker"], "proj"),
            ("python3.11", &["gunicorn: worker [myapp.wsgi:application]"], "myapp"),
            ("pypy3", &["pypy3", "bench.py"], "bench"),
            ("java", &["java", "-Xmx1g", "-jar", "/opt/shop.jar"], "shop"),
            ("java", &["java", "-jar", "petclinic-3.1.0-SNAPSHOT.jar"], "petclinic"),
            ("java", &["java", "-cp", "/a.jar:/b.jar", "-Dx=y", "com.acme.OrderService"], "OrderService"),
            ("java", &["java", "-m", "com.acme/com.acme.Main"], "Main"),
            ("java", &["java", "Hello.java"], "Hello"),
            ("node", &["node", "/srv/api/server.js"], "api"),
            ("node", &["node", "/srv/api/src/index.js"], "api"),
            ("node", &["node", "--require", "dotenv/config", "worker.mjs"], "worker"),
            ("node", &["node", "-e", "1"], "node"),
            ("ruby3.1", &["ruby", "-I", "lib", "bin/sidekiq"], "sidekiq"),
            ("ruby", &["puma 6.4.0 (tcp://0.0.0.0:9292) [storefront]"], "storefront"),
            ("php8.2", &["php", "-d", "x=1", "artisan", "serve"], "artisan"),
            ("php-fpm8.2", &["php-fpm: pool www"], "php-fpm"),
            ("php-fpm8.2", &["php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)"], "php-fpm"),
            ("perl", &["perl", "-w", "/usr/bin/report.pl"], "report"),
            ("bun", &["bun", "run", "/srv/chat/index.ts"], "chat"),
            ("deno", &["deno", "run", "--allow-net", "https://example.com/file_server.ts"], "file_server"),
            ("dotnet", &["dotnet", "exec", "Orders.Api.dll"], "Orders.Api"),
            ("dotnet", &["dotnet", "build"], "dotnet"),
            ("nginx", &["nginx: worker process"], "nginx"),
            ("curl", &["curl", "-u", "user:secret", "http://x"], "curl"),
            ("busybox", &["wget", "http://x"], "wget"),
            ("", &["/usr/bin/python3", "job.py"], "job"),
            ("", &[], ""),
        ];
        for (exe, argv, want) in cases {
            assert_eq!(derive_service_name(exe, &args(argv)), *want, "exe {exe:?} argv {argv:?}");
        }
    }

    #[test]
    fn command_is_argv0_without_title_text() {
        assert_eq!(command_of("/usr/bin/python3"), "/usr/bin/python3");
        assert_eq!(command_of("php-fpm: pool www"), "php-fpm");
        assert_eq!(command_of("postgres: alice shop 10.0.0.1(5123) idle"), "postgres");
        assert_eq!(command_of("redis-server *:6379"), "redis-server");
    }

    #[test]
    fn cmdline_parsing_drops_cut_arguments() {
        assert_eq!(parse_cmdline(b"python3\0-m\0http.server\0", false), args(&["python3", "-m", "http.server"]));
        assert_eq!(parse_cmdline(b"java\0-cp\0/very/long/cla", true), args(&["java", "-cp"]));
        assert_eq!(parse_cmdline(b"nginx: worker process", false), args(&["nginx: worker process"]));
        assert!(parse_cmdline(b"", false).is_empty());
    }

    #[test]
    fn resource_attributes_parsing() {
        let parsed =
            parse_resource_attributes(" k=v , k2=v%20x,noequals,=empty,k3=a=b,bad=%4,k=last,emoji=%F0%9F%90%9D");
        assert_eq!(
            parsed,
            vec![
                ("k".to_owned(), "last".to_owned()),
                ("k2".to_owned(), "v x".to_owned()),
                ("k3".to_owned(), "a=b".to_owned()),
                ("emoji".to_owned(), "🐝".to_owned()),
            ]
        );
        assert!(parse_resource_attributes("").is_empty());
        assert_eq!(percent_decode("%2C%3d"), Some(",=".to_owned()));
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }

    #[test]
    fn environ_reading_is_capped_and_takes_first_occurrence() {
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME=svc\0OTEL_SERVICE_NAME=second\0OTEL_RESOURCE_ATTRIBUTES=a=b\0";
        assert_eq!(
            otel_env(&env[..], 1 << 20).unwrap(),
            OtelEnv { service_name: Some("svc".into()), resource_attributes: Some("a=b".into()) }
        );
        // A huge variable before ours: the cap stops the scan, the cut entry
        // is not taken.
        let mut big = b"JUNK=".to_vec();
        big.extend(std::iter::repeat_n(b'x', 10_000));
        big.extend_from_slice(b"\0OTEL_SERVICE_NAME=late\0");
        assert_eq!(otel_env(&big[..], 4096).unwrap(), OtelEnv::default());
        assert_eq!(otel_env(&big[..], 1 << 20).unwrap().service_name.as_deref(), Some("late"));
        // Cut in the middle of our own variable: ignored rather than truncated.
        let cut = b"OTEL_SERVICE_NAME=longname\0";
        assert_eq!(otel_env(&cut[..], 22).unwrap(), OtelEnv::default());
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
    fn socket_inode_parsing() {
        assert_eq!(socket_inode(Path::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(Path::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[test]
    fn listener_matching_respects_addresses() {
        let mut t = TcpTable::default();
        t.listeners.insert(8080, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        t.listeners.insert(9090, vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]);
        assert!(t.is_listening_on(&"127.0.0.1:8080".parse().unwrap()));
        assert!(!t.is_listening_on(&"10.0.0.5:8080".parse().unwrap()));
        assert!(t.is_listening_on(&"10.0.0.5:9090".parse().unwrap()));
        assert!(!t.is_listening_on(&"127.0.0.1:9091".parse().unwrap()));
    }
}

/// A thread blocked in a read-family syscall on one of a process's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockedRead {
    pub tid: u32,
    pub fd: u32,
    pub syscall: waggle_common::SyscallId,
    /// Buffer / iovec / msghdr pointer and length / iovec count, as the
    /// syscall received them.
    pub ptr: u64,
    pub len: u64,
}

/// Linux syscall numbers of the read family, per architecture.
#[cfg(target_arch = "x86_64")]
const READ_SYSCALLS: [(u64, waggle_common::SyscallId); 4] = [
    (0, waggle_common::SyscallId::Read),
    (19, waggle_common::SyscallId::Readv),
    (45, waggle_common::SyscallId::Recvfrom),
    (47, waggle_common::SyscallId::Recvmsg),
];
#[cfg(target_arch = "aarch64")]
const READ_SYSCALLS: [(u64, waggle_common::SyscallId); 4] = [
    (63, waggle_common::SyscallId::Read),
    (65, waggle_common::SyscallId::Readv),
    (207, waggle_common::SyscallId::Recvfrom),
    (212, waggle_common::SyscallId::Recvmsg),
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const READ_SYSCALLS: [(u64, waggle_common::SyscallId); 0] = [];

/// Parses `/proc/<pid>/task/<tid>/syscall` of a blocked task:
/// `nr arg0 arg1 arg2 ...` (hex arguments). `running` or `-1 ...` (not in
/// a syscall) give None, as does any syscall outside the read family.
pub fn parse_blocked_read(tid: u32, text: &str) -> Option<BlockedRead> {
    let mut fields = text.split_whitespace();
    let nr: u64 = fields.next()?.parse().ok()?;
    let syscall = READ_SYSCALLS.iter().find(|(n, _)| *n == nr)?.1;
    let mut arg = || u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok();
    let fd = u32::try_from(arg()?).ok()?;
    let ptr = arg()?;
    let len = arg()?;
    Some(BlockedRead { tid, fd, syscall, ptr, len })
}

/// Threads of `pid` currently blocked in a read on one of `fds`.
pub fn blocked_reads(pid: u32, fds: &HashSet<u32>) -> Vec<BlockedRead> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let text = fs::read_to_string(task.path().join("syscall")).ok()?;
            parse_blocked_read(tid, &text).filter(|b| fds.contains(&b.fd))
        })
        .collect()
}

/// Whether thread `read.tid` of `pid` is still inside that same read.
pub fn still_blocked(pid: u32, read: &BlockedRead) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{}/syscall", read.tid))
        .ok()
        .and_then(|text| parse_blocked_read(read.tid, &text))
        .is_some_and(|now| now == *read)
}

#[cfg(test)]
mod blocked_read_tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn parses_proc_syscall_lines() {
        let b = parse_blocked_read(7, "45 0x5 0x7f1c2a3b4000 0x10000 0x0 0x0 0x0 0x7ffd5e8 0x7f1c2f\n").unwrap();
        assert_eq!(
            (b.tid, b.fd, b.syscall, b.ptr, b.len),
            (7, 5, waggle_common::SyscallId::Recvfrom, 0x7f1c2a3b4000, 0x10000)
        );
        assert_eq!(
            parse_blocked_read(7, "0 0x3 0x1000 0x20 0x0 0x0 0x0 0x1 0x2").unwrap().syscall,
            waggle_common::SyscallId::Read
        );
        assert!(parse_blocked_read(7, "running").is_none());
        assert!(parse_blocked_read(7, "-1 0x7ffd 0x7f").is_none());
        assert!(
            parse_blocked_read(7, "232 0x4 0x7f 0x10 0xffffffff 0x0 0x0 0x1 0x2").is_none(),
            "epoll_wait is not a read"
        );
    }

    #[test]
    fn finds_a_thread_blocked_in_recv_on_a_socket() {
        use std::{
            io::Read,
            net::{TcpListener, TcpStream},
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        let fd = accepted.as_raw_fd() as u32;
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            let _ = accepted.read(&mut buf);
        });
        let pid = std::process::id();
        let fds: HashSet<u32> = [fd].into();
        let mut found = Vec::new();
        for _ in 0..100 {
            found = blocked_reads(pid, &fds);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(found.len(), 1, "the reader thread is blocked in a read on fd {fd}");
        assert_eq!(found[0].len, 16);
        assert!(still_blocked(pid, &found[0]));
        drop(_client);
        reader.join().unwrap();
        assert!(!still_blocked(pid, &found[0]));
    }
}

//! Threads that were already blocked in a read on a socket, or in an
//! accept on a listener, when the probes attached (from
//! /proc/<pid>/task/<tid>/syscall): their call has no enter record, so the
//! pipeline writes one for them. Without it a server's first request after
//! the agent starts is lost (a prefork or thread-per-connection server
//! waits in accept() most of its life).
use std::{collections::HashSet, fs};

/// A thread blocked in a read-family syscall or an accept on one of a
/// process's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockedCall {
    pub tid: u32,
    pub fd: u32,
    pub syscall: waggle_common::SyscallId,
    /// Buffer / iovec / msghdr / peer sockaddr pointer and length / iovec
    /// count / addrlen pointer, as the syscall received them.
    pub ptr: u64,
    pub len: u64,
}

/// Linux syscall numbers of the read family and of accept, per architecture.
#[cfg(target_arch = "x86_64")]
const ADOPTED_SYSCALLS: [(u64, waggle_common::SyscallId); 6] = [
    (0, waggle_common::SyscallId::Read),
    (19, waggle_common::SyscallId::Readv),
    (45, waggle_common::SyscallId::Recvfrom),
    (47, waggle_common::SyscallId::Recvmsg),
    (43, waggle_common::SyscallId::Accept),
    (288, waggle_common::SyscallId::Accept4),
];
#[cfg(target_arch = "aarch64")]
const ADOPTED_SYSCALLS: [(u64, waggle_common::SyscallId); 6] = [
    (63, waggle_common::SyscallId::Read),
    (65, waggle_common::SyscallId::Readv),
    (207, waggle_common::SyscallId::Recvfrom),
    (212, waggle_common::SyscallId::Recvmsg),
    (202, waggle_common::SyscallId::Accept),
    (242, waggle_common::SyscallId::Accept4),
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ADOPTED_SYSCALLS: [(u64, waggle_common::SyscallId); 0] = [];

/// Parses `/proc/<pid>/task/<tid>/syscall` of a blocked task:
/// `nr arg0 arg1 arg2 ...` (hex arguments). `running` or `-1 ...` (not in
/// a syscall) give None, as does any syscall outside the read family and
/// accept.
pub fn parse_blocked_call(tid: u32, text: &str) -> Option<BlockedCall> {
    let mut fields = text.split_whitespace();
    let nr: u64 = fields.next()?.parse().ok()?;
    let syscall = ADOPTED_SYSCALLS.iter().find(|(n, _)| *n == nr)?.1;
    let mut arg = || u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok();
    let fd = u32::try_from(arg()?).ok()?;
    let ptr = arg()?;
    let len = arg()?;
    Some(BlockedCall { tid, fd, syscall, ptr, len })
}

/// Threads of `pid` currently blocked in a read on one of `connections`, or
/// in an accept on one of `listeners`.
pub fn blocked_calls(pid: u32, connections: &HashSet<u32>, listeners: &HashSet<u32>) -> Vec<BlockedCall> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let text = fs::read_to_string(task.path().join("syscall")).ok()?;
            parse_blocked_call(tid, &text).filter(|b| {
                let fds = if b.is_accept() { listeners } else { connections };
                fds.contains(&b.fd)
            })
        })
        .collect()
}

/// Whether thread `call.tid` of `pid` is still inside that same call.
pub fn still_blocked(pid: u32, call: &BlockedCall) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{}/syscall", call.tid))
        .ok()
        .and_then(|text| parse_blocked_call(call.tid, &text))
        .is_some_and(|now| now == *call)
}

impl BlockedCall {
    pub fn is_accept(&self) -> bool {
        matches!(self.syscall, waggle_common::SyscallId::Accept | waggle_common::SyscallId::Accept4)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn parses_proc_syscall_lines() {
        let b = parse_blocked_call(7, "45 0x5 0x7f1c2a3b4000 0x10000 0x0 0x0 0x0 0x7ffd5e8 0x7f1c2f\n").unwrap();
        assert_eq!(
            (b.tid, b.fd, b.syscall, b.ptr, b.len),
            (7, 5, waggle_common::SyscallId::Recvfrom, 0x7f1c2a3b4000, 0x10000)
        );
        assert_eq!(
            parse_blocked_call(7, "0 0x3 0x1000 0x20 0x0 0x0 0x0 0x1 0x2").unwrap().syscall,
            waggle_common::SyscallId::Read
        );
        assert!(parse_blocked_call(7, "running").is_none());
        assert!(parse_blocked_call(7, "-1 0x7ffd 0x7f").is_none());
        assert!(
            parse_blocked_call(7, "232 0x4 0x7f 0x10 0xffffffff 0x0 0x0 0x1 0x2").is_none(),
            "epoll_wait is not a read"
        );
        let a = parse_blocked_call(7, "288 0x3 0x7ffd1000 0x7ffd0ffc 0x80000 0x0 0x0 0x1 0x2").unwrap();
        assert_eq!((a.fd, a.syscall, a.ptr), (3, waggle_common::SyscallId::Accept4, 0x7ffd1000));
        assert!(a.is_accept());
        assert_eq!(
            parse_blocked_call(7, "43 0x3 0x0 0x0 0x0 0x0 0x0 0x1 0x2").unwrap().syscall,
            waggle_common::SyscallId::Accept
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
            found = blocked_calls(pid, &fds, &HashSet::new());
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

    #[test]
    fn finds_a_thread_blocked_in_accept_on_a_listener_only() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = listener.as_raw_fd() as u32;
        let acceptor = std::thread::spawn(move || listener.accept().map(|_| ()));
        let pid = std::process::id();
        let fds: HashSet<u32> = [fd].into();
        let mut found = Vec::new();
        for _ in 0..100 {
            found = blocked_calls(pid, &HashSet::new(), &fds);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(found.len(), 1, "the acceptor thread is blocked in accept on fd {fd}");
        assert!(found[0].is_accept());
        assert_eq!(found[0].fd, fd);
        assert!(blocked_calls(pid, &fds, &HashSet::new()).is_empty(), "an accept is not a read on a connection");
        let _client = TcpStream::connect(addr).unwrap();
        acceptor.join().unwrap().unwrap();
        assert!(!still_blocked(pid, &found[0]));
    }
}

//! How the running kernel treats sockets in a sockmap, checked at start-up
//! on a loopback connection of the agent's own.
//!
//! Kernels 6.6.128+, 6.12.75+ and 6.18.14+ answer `ioctl(FIONREAD)` on a TCP
//! socket that sits in a sockmap/sockhash with the length of the socket
//! map's own ingress queue (0 for sockets that only have an sk_msg program)
//! instead of the bytes waiting. Runtimes size reads with FIONREAD, so on
//! such kernels no application socket may stay in INJECT_SOCKS while it has
//! received data: they leave it at their first transmitted packet
//! (`sockmap_mode::LEAVE_AT_FIRST_TRANSMIT`).
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use aya::maps::{MapData, SockHash};

/// Bytes the check sends; any count shows the bug.
const PROBE_BYTES: usize = 1000;

/// What FIONREAD said with `PROBE_BYTES` waiting on a socket in `socks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FionreadCheck {
    Correct,
    Misreports { reported: i32 },
}

/// Puts a fresh loopback client socket into `socks` (which must already
/// have the sk_msg program attached, as for application sockets), lets
/// `PROBE_BYTES` arrive on it and compares FIONREAD with them. The socket is
/// taken out of the map again before returning.
pub fn check_fionread(socks: &mut SockHash<MapData, u64>) -> Result<FionreadCheck, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a loopback listener: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("listener address: {e}"))?;
    let mut client = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut server, _) = listener.accept().map_err(|e| format!("accepting on {addr}: {e}"))?;
    let cookie = socket_cookie(&client)?;
    socks.insert(cookie, client.as_fd().as_raw_fd(), 0).map_err(|e| format!("adding a socket to INJECT_SOCKS: {e}"))?;
    let result = (|| {
        // A send through the sk_msg path, as application sockets do.
        client.write_all(b"x").map_err(|e| format!("sending: {e}"))?;
        let mut one = [0u8; 1];
        server.read_exact(&mut one).map_err(|e| format!("receiving: {e}"))?;
        server.write_all(&[b'y'; PROBE_BYTES]).map_err(|e| format!("sending: {e}"))?;
        wait_readable(&client, Duration::from_secs(2))?;
        let mut waiting: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into `waiting`, which outlives the call.
        let rc = unsafe { libc::ioctl(client.as_raw_fd(), libc::FIONREAD, &mut waiting) };
        if rc != 0 {
            return Err(format!("ioctl(FIONREAD): {}", std::io::Error::last_os_error()));
        }
        Ok(if waiting as usize == PROBE_BYTES {
            FionreadCheck::Correct
        } else {
            FionreadCheck::Misreports { reported: waiting }
        })
    })();
    let removed = socks.remove(&cookie);
    let check = result?;
    removed.map_err(|e| format!("removing the check's socket from INJECT_SOCKS: {e}"))?;
    Ok(check)
}

fn socket_cookie(sock: &TcpStream) -> Result<u64, String> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 into `cookie`; `len` says its size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!("getsockopt(SO_COOKIE): {}", std::io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// Waits until all `PROBE_BYTES` have arrived (loopback delivers them in
/// one segment, but not necessarily before `poll` first returns).
fn wait_readable(sock: &TcpStream, timeout: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, 100) };
        if rc > 0 {
            let mut buf = [0u8; PROBE_BYTES];
            // SAFETY: MSG_PEEK|MSG_DONTWAIT into a buffer we own; nothing is consumed.
            let peeked = unsafe {
                libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT)
            };
            if peeked >= 0 && peeked as usize == PROBE_BYTES {
                return Ok(());
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{PROBE_BYTES} bytes did not arrive on a loopback socket within {timeout:?}"));
        }
    }
}

//! waggle's kernel programs.
//!
//! Syscall tracepoints follow the TCP connections of unmodified processes
//! (socket/accept/connect/close) and copy a bounded prefix of every payload
//! read or written on them into one ring buffer; two task tracepoints report
//! forks and exits of processes that own tracked connections.
//!
//! Trace context (W3C traceparent) rides on the same tracepoints (trace.rs):
//! a server request start gives its thread a context, client requests that
//! thread sends become its children. A sockops program puts client sockets
//! into a SockHash whose sk_msg program inserts the traceparent header into
//! the request bytes on their way out (sock.rs).
//!
//! Rules every program follows:
//! - the agent's own syscalls are dropped first, or its output would feed back
//!   into capture;
//! - the data-path enter handlers do one hash lookup and leave: they run for
//!   every read/write on the machine, and CONNS is what keeps file, pipe and
//!   tty I/O out;
//! - anything larger than a few dozen bytes lives in per-CPU maps (the BPF
//!   stack is 512 bytes), loops are bounded, and every drop bumps a counter.
//!
//! This file holds only the program entry points; the work is in `conn.rs`
//! (connection lifecycle), `data.rs` (payload capture), `trace.rs` (trace
//! context), `sock.rs` (sockops + sk_msg), `process.rs` (forks, exits),
//! `tls.rs` (uprobes on the TLS library: plaintext of TLS connections;
//! `tls_conn.rs` holds their maps and the data path's check) and
//! `user_copy.rs` (reads of user buffers),
//! over `maps.rs` (every other map and global) and `helpers.rs`.
#![no_std]
#![no_main]

mod conn;
mod data;
mod exec_env;
mod fastcgi;
mod helpers;
mod maps;
mod own;
mod process;
mod response;
mod scan;
mod sock;
mod socket_facts;
mod tls;
mod tls_conn;
mod trace;
mod user_copy;
mod verdict;

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    macros::{sk_msg, sock_ops, tracepoint},
    programs::{SkMsgContext, SockOpsContext, TracePointContext},
};
use waggle_common::{Direction, SyscallId};

// ---- programs ----
//
// Function names are the program names the loader looks up; each is named
// after the tracepoint it attaches to.

macro_rules! data_programs {
    ($($enter:ident, $exit:ident, $id:ident, $dir:ident;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            data::enter::<true>(&ctx, SyscallId::$id);
            0
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            data::exit::<true>(&ctx, SyscallId::$id, Direction::$dir);
            0
        }
    )*};
}

// The reduced mode, for kernels without bpf_loop (before 5.17): the same
// code with bounded loops (helpers::repeat), attached by the agent in place
// of the program without the suffix. Only the programs that loop have one.
macro_rules! reduced_programs {
    ($($name:ident => $($call:ident)::+ ($($arg:expr),*);)*) => {$(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = $($call)::+::<false>(&ctx $(, $arg)*);
            0
        }
    )*};
}

data_programs! {
    sys_enter_read, sys_exit_read, Read, Ingress;
    sys_enter_write, sys_exit_write, Write, Egress;
    sys_enter_recvfrom, sys_exit_recvfrom, Recvfrom, Ingress;
    sys_enter_sendto, sys_exit_sendto, Sendto, Egress;
    sys_enter_readv, sys_exit_readv, Readv, Ingress;
    sys_enter_writev, sys_exit_writev, Writev, Egress;
    sys_enter_recvmsg, sys_exit_recvmsg, Recvmsg, Ingress;
    sys_enter_sendmsg, sys_exit_sendmsg, Sendmsg, Egress;
    sys_enter_sendfile64, sys_exit_sendfile64, Sendfile, Egress;
}

reduced_programs! {
    sys_exit_read_noloop => data::exit(SyscallId::Read, Direction::Ingress);
    sys_exit_recvfrom_noloop => data::exit(SyscallId::Recvfrom, Direction::Ingress);
    sys_exit_readv_noloop => data::exit(SyscallId::Readv, Direction::Ingress);
    sys_exit_recvmsg_noloop => data::exit(SyscallId::Recvmsg, Direction::Ingress);
    sys_enter_write_noloop => data::enter(SyscallId::Write);
    sys_enter_sendto_noloop => data::enter(SyscallId::Sendto);
    sys_enter_writev_noloop => data::enter(SyscallId::Writev);
    sys_enter_sendmsg_noloop => data::enter(SyscallId::Sendmsg);
    sys_enter_close_range_noloop => conn::close_range_enter();
    sched_process_exec_noloop => conn::exec();
    task_newtask_noloop => process::task_newtask();
}

/// Attached to sys_exit_read after `sys_exit_read`: walks a FastCGI
/// responder's params when the data exit asked (fastcgi.rs).
#[tracepoint]
pub fn fastcgi_params(_ctx: TracePointContext) -> u32 {
    let _ = fastcgi::params();
    0
}

/// The benchmark's floor (`waggle floor`): no work at all. It returns 0
/// like every program here: a non-zero return sends the record on into the
/// perf-event path, which costs a CPU with a perf event on the tracepoint
/// (the one aya and bpftrace open) about half a microsecond per hit.
#[tracepoint]
pub fn waggle_floor(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let _ = conn::socket_enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    let _ = conn::socket_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    let _ = conn::accept_enter(&ctx, SyscallId::Accept);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = conn::accept_exit(&ctx, SyscallId::Accept);
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    let _ = conn::accept_enter(&ctx, SyscallId::Accept4);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = conn::accept_exit(&ctx, SyscallId::Accept4);
    0
}

#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    let _ = conn::dup_enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    let _ = conn::dup_enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
    let _ = conn::close_range_enter::<true>(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_splice(ctx: TracePointContext) -> u32 {
    // splice(fd_in, off_in, fd_out, ...)
    let _ = conn::unseen_io_enter(&ctx, &[0, 2]);
    0
}

#[tracepoint]
pub fn sys_enter_recvmmsg(ctx: TracePointContext) -> u32 {
    let _ = conn::unseen_io_enter(&ctx, &[0]);
    0
}

#[tracepoint]
pub fn sys_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    let _ = conn::unseen_io_enter(&ctx, &[0]);
    0
}

#[tracepoint]
pub fn sys_enter_io_uring_setup(ctx: TracePointContext) -> u32 {
    let _ = conn::io_uring_setup_enter(&ctx);
    0
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = conn::exec::<true>(&ctx);
    0
}

/// Attached to sched_process_exec when the kernel's BTF names the
/// environment's bounds: the OTEL_* variables of the new image (exec_env.rs).
#[tracepoint]
pub fn waggle_exec_env(_ctx: TracePointContext) -> u32 {
    let _ = exec_env::exec();
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = conn::connect_enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = conn::connect_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let _ = conn::close_enter(&ctx);
    0
}

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let _ = process::task_newtask::<true>(&ctx);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = process::sched_process_exit(&ctx);
    0
}

/// Not called `sockops`: that symbol would clash with the section name.
#[sock_ops]
pub fn waggle_sockops(ctx: SockOpsContext) -> u32 {
    sock::sockops(&ctx);
    1
}

#[sk_msg]
pub fn waggle_sk_msg(ctx: SkMsgContext) -> u32 {
    match sock::inject(&ctx) {
        Some(verdict) => verdict,
        None => SK_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path may panic (the verifier would reject the loop below); this
    // only satisfies no_std.
    loop {}
}

// bpf_probe_read_user and the ring-buffer helpers are GPL-only; the kernel
// accepts "Dual MIT/GPL" as GPL-compatible.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

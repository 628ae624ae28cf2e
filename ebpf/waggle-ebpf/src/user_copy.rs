//! Copies from the user buffers a syscall was given into this CPU's
//! scratch: the data path's payload capture and the header scan of a
//! client request start both read through here.
use core::{ffi::c_void, hint::black_box};

use aya_ebpf::helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as bpf_probe_read_user_raw};
use waggle_common::{Counter, SyscallId, CAPTURE_MASK, MAX_IOVECS};

use crate::helpers::count;

const MASK: u64 = CAPTURE_MASK as u64;

/// Layout of the user buffer argument.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// (fd, buf, len)
    Flat,
    /// (fd, const struct iovec *, iovcnt)
    Iovec,
    /// (fd, struct user_msghdr *, flags)
    Msghdr,
    /// sendfile(out_fd, in_fd, offset, count): nothing to copy.
    NoBuffer,
}

#[inline(always)]
pub(crate) fn shape(id: SyscallId) -> Shape {
    match id {
        SyscallId::Readv | SyscallId::Writev => Shape::Iovec,
        SyscallId::Recvmsg | SyscallId::Sendmsg => Shape::Msghdr,
        SyscallId::Sendfile => Shape::NoBuffer,
        _ => Shape::Flat,
    }
}

/// Copies up to `budget` (1..=MAX_CAPTURE) bytes of the syscall's buffer
/// (`ptr`, `len` as its arguments gave them) to `dst`; returns how many.
#[inline(always)]
pub(crate) fn copy_user(dst: *mut u8, shape: Shape, ptr: u64, len: u64, budget: u64) -> u64 {
    match shape {
        Shape::Flat => {
            if read_into(dst, 0, budget, ptr) {
                budget
            } else {
                0
            }
        }
        Shape::Iovec => copy_iovecs(dst, ptr, len, budget),
        Shape::NoBuffer => 0,
        Shape::Msghdr => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
            // SAFETY: reads user memory through the fault-tolerant helper.
            match unsafe { bpf_probe_read_user((ptr + 16) as *const [u64; 2]) } {
                Ok([iov, iovlen]) => copy_iovecs(dst, iov, iovlen, budget),
                Err(_) => {
                    count(Counter::ReadFailed);
                    0
                }
            }
        }
    }
}

/// Copies `len` (1..=MAX_CAPTURE) user bytes from `src` to `dst + off`
/// (off < MAX_CAPTURE). The masks are semantically no-ops; black_box keeps
/// LLVM from dropping them after proving the ranges itself, so the verifier
/// sees the bounds on the registers it checks.
#[inline(always)]
fn read_into(dst: *mut u8, off: u64, len: u64, src: u64) -> bool {
    let off = black_box(off) & MASK;
    let len = ((black_box(len) - 1) & MASK) + 1;
    // SAFETY: dst + off + len <= dst + 2 * MAX_CAPTURE - 1, inside the
    // payload area; the helper tolerates bad user pointers and returns < 0.
    let rc =
        unsafe { bpf_probe_read_user_raw(dst.add(off as usize).cast::<c_void>(), len as u32, src as *const c_void) };
    if rc < 0 {
        count(Counter::ReadFailed);
        return false;
    }
    true
}

/// Copies sequentially from up to MAX_IOVECS iovecs until `budget` (1..=
/// MAX_CAPTURE) bytes are in; returns the bytes copied.
#[inline(always)]
fn copy_iovecs(dst: *mut u8, iov: u64, iovcnt: u64, budget: u64) -> u64 {
    let mut off: u64 = 0;
    for i in 0..MAX_IOVECS as u64 {
        if i >= iovcnt || off >= budget {
            break;
        }
        // struct iovec { void *iov_base; size_t iov_len; }
        // SAFETY: reads user memory through the fault-tolerant helper.
        let Ok([base, len]) = (unsafe { bpf_probe_read_user((iov + i * 16) as *const [u64; 2]) }) else {
            count(Counter::ReadFailed);
            break;
        };
        let want = budget - off;
        let n = if len < want { len } else { want };
        if n == 0 {
            continue;
        }
        if !read_into(dst, off, n, base) {
            break;
        }
        off += n;
    }
    off
}

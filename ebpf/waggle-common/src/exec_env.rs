//! A process's OTEL_* environment as it was at exec time.
//!
//! Servers such as nginx and php-fpm write their process title over the
//! memory that holds their environment strings, so `/proc/<pid>/environ`
//! no longer shows the `OTEL_SERVICE_NAME` they were started with. At
//! `sched_process_exec` the new image's strings are still intact: a
//! program of its own (`waggle_exec_env`) walks them (from
//! `mm->env_start` to `mm->env_end`, offsets from the kernel's BTF in
//! [`maps::EXEC_ENV_WALK`]) and sends one [`ExecEnvEvent`] per exec: the
//! values it found, or just the header when it found none (so the agent
//! knows the process exec'd, and does not let it inherit its parent's).
use bytemuck::{Pod, Zeroable};

/// Map names.
pub mod maps {
    /// Array of one [`super::ExecEnvOffsets`], set by the agent before it
    /// attaches the program.
    pub const EXEC_ENV_WALK: &str = "EXEC_ENV_WALK";
}

/// The program, attached to `sched:sched_process_exec`.
pub const PROGRAM: &str = "waggle_exec_env";

/// Bytes kept of each value: at most `VALUE_CAP - 1` (the kernel's string
/// copy ends every copy with a NUL).
pub const VALUE_CAP: usize = 256;
/// Environment strings (or 511-byte pieces of longer ones) walked per exec
/// at most; what lies past them is not seen (flag `SCAN_CUT`).
pub const MAX_ENV_STEPS: u32 = 1024;
/// Bytes read per step.
pub const PIECE: usize = 512;

pub const SERVICE_NAME_PREFIX: &[u8] = b"OTEL_SERVICE_NAME=";
pub const RESOURCE_ATTRIBUTES_PREFIX: &[u8] = b"OTEL_RESOURCE_ATTRIBUTES=";

/// [`ExecEnvHeader::flags`].
pub mod flags {
    /// `service_name` holds OTEL_SERVICE_NAME's value.
    pub const SERVICE_NAME: u8 = 1;
    /// `resource_attributes` holds OTEL_RESOURCE_ATTRIBUTES's value.
    pub const RESOURCE_ATTRIBUTES: u8 = 2;
    /// A value was longer than `VALUE_CAP - 1` bytes and was cut.
    pub const CUT: u8 = 4;
    /// The environment was longer than the walk: later variables unseen.
    pub const SCAN_CUT: u8 = 8;
    /// Reading the environment failed part way.
    pub const UNREADABLE: u8 = 16;
}

/// How to get from the current task to its environment strings on this
/// kernel (`enabled` 0: unknown, and the program does nothing).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ExecEnvOffsets {
    pub enabled: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.env_start`, `mm_struct.env_end`.
    pub mm_env_start: u32,
    pub mm_env_end: u32,
}

/// What every exec sends (the whole record when a value was found).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ExecEnvHeader {
    /// `EventKind::ExecEnv`.
    pub kind: u8,
    pub flags: u8,
    /// Bytes of each value (without NUL).
    pub service_name_len: u8,
    pub resource_attributes_len: u8,
    pub tgid: u32,
    /// CLOCK_BOOTTIME of the exec: the clock of a process's start time in
    /// /proc/<pid>/stat, so the agent can tell a reused pid.
    pub boot_ns: u64,
}

/// The header and both values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ExecEnvEvent {
    pub header: ExecEnvHeader,
    pub service_name: [u8; VALUE_CAP],
    pub resource_attributes: [u8; VALUE_CAP],
}

/// Which variable an environment string (NUL-terminated, or cut) sets, and
/// where its value starts; exactly the prefixes, compared as the kernel
/// does.
pub fn otel_variable(entry: &[u8]) -> Option<(u8, usize)> {
    if entry.starts_with(SERVICE_NAME_PREFIX) {
        Some((flags::SERVICE_NAME, SERVICE_NAME_PREFIX.len()))
    } else if entry.starts_with(RESOURCE_ATTRIBUTES_PREFIX) {
        Some((flags::RESOURCE_ATTRIBUTES, RESOURCE_ATTRIBUTES_PREFIX.len()))
    } else {
        None
    }
}

//! What can go wrong loading the probes (`ProbeError`, public) and
//! attaching one program (`AttachError`, turned into a logged reason).
use std::io;

use aya::maps::MapError;
use aya::programs::ProgramError;
use aya::EbpfError;

/// Lines of verifier output kept in a skipped program's warning; the end of
/// the log is where the verifier says what it refused.
const VERIFIER_TAIL_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this waggle binary was built without its eBPF object; build it with `cargo xtask build`")]
    NotBuilt,
    #[error("waggle needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to load eBPF programs")]
    NotPrivileged,
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<EbpfError>),
    /// One line: each program's verifier log is already in its own warning.
    #[error(
        "no data-path probe attached (read/write/recvfrom/sendto) on Linux {kernel}, nothing can be traced: {why}"
    )]
    NoDataPath { kernel: String, why: String },
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("opening map {name}: {source}")]
    OpenMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{operation} (tgid {tgid}, fd {fd}): {source}")]
    MapUpdate {
        operation: &'static str,
        tgid: u32,
        fd: u32,
        #[source]
        source: MapError,
    },
    #[error("{operation}: {message}")]
    Other { operation: &'static str, message: String },
}

#[derive(Debug, thiserror::Error)]
pub(super) enum AttachError {
    #[error("program not found in the eBPF object")]
    NotInObject,
    #[error("tracepoint {category}:{name} is not available: {reason}")]
    Format { category: &'static str, name: &'static str, reason: String },
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("{0}")]
    Other(String),
}

impl AttachError {
    /// One-line-ish reason; verifier logs are cut to their informative tail.
    pub(super) fn describe(&self) -> String {
        match self {
            AttachError::Program(ProgramError::LoadError { io_error, verifier_log }) => {
                let log = format!("{verifier_log}");
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(VERIFIER_TAIL_LINES)..].join("\n");
                format!("BPF_PROG_LOAD failed: {io_error}; verifier log (tail):\n{tail}")
            }
            other => {
                // ProgramError::SyscallError's message omits the errno.
                let mut text = other.to_string();
                let mut source = std::error::Error::source(other);
                while let Some(e) = source {
                    text.push_str(": ");
                    text.push_str(&e.to_string());
                    source = e.source();
                }
                text
            }
        }
    }
}

pub(super) fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

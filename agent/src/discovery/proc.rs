//! The one error type of discovery, and opening a /proc/<pid> directory.
use std::io;

use procfs::process::Process;

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

pub(super) fn open_process(pid: u32) -> Result<Process, DiscoveryError> {
    let raw = i32::try_from(pid)
        .map_err(|_| DiscoveryError::OpenProcess { pid, source: procfs::ProcError::NotFound(None) })?;
    Process::new(raw).map_err(|source| DiscoveryError::OpenProcess { pid, source })
}

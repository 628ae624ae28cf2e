//! What the TLS probes are attached to: a library or executable file, by
//! identity (device and inode), and which TLS API it carries. Shared by the
//! library search (`tls_libs.rs`) and the executable search (`tls_exe.rs`).
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Which TLS library a file is: the functions to probe differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsKind {
    OpenSsl,
    GnuTls,
    /// An executable with OpenSSL linked in and exported (node): its TLS
    /// runs over memory BIOs, so its SSL objects are bound to their
    /// connection at the handshake write (the kernel's bind return probe).
    OpenSslStatic,
}

impl TlsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsKind::OpenSsl => "openssl",
            TlsKind::GnuTls => "gnutls",
            TlsKind::OpenSslStatic => "openssl-static",
        }
    }
}

/// One library file to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsLibrary {
    pub kind: TlsKind,
    /// Where the agent opens it (the host path when it is the same file,
    /// else through the process's root).
    pub path: PathBuf,
    /// The path as the process sees it, for logs.
    pub shown: String,
    pub dev: u64,
    pub ino: u64,
}

/// A regular file's (device, inode).
pub(super) fn identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| (m.dev(), m.ino()))
}

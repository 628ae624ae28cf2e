//! The TLS library probes (kernel side: `ebpf/waggle-ebpf/src/tls.rs`):
//! loaded (verified) with the other programs, attached once per library
//! file (device + inode) for every process that maps it, now or later.
//!
//! Nothing is attached per process: a uprobe on a file fires in every
//! process that maps it. Which files to probe comes from
//! `discovery::tls_libs` (well-known paths and the maps of processes).
use std::{collections::HashSet, path::Path};

use aya::{
    programs::{
        uprobe::{UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf,
};
use waggle_common::tls::{programs, BINDING_FUNCTIONS, PROBED_FUNCTIONS};

use crate::discovery::{TlsKind, TlsLibrary};

/// GnuTLS's record functions have `SSL_read`/`SSL_write`'s shape: (session,
/// buffer, size) in, the byte count (or a negative error) out; the size is
/// a `size_t` and the result an `ssize_t`, which the entry and return
/// programs read the same way for counts below 2 GiB (the kernel skips a
/// call reporting more than it was given room for).
const GNUTLS_FUNCTIONS: [(&str, &str); 2] =
    [("gnutls_record_recv", programs::SSL_READ), ("gnutls_record_send", programs::SSL_WRITE)];

/// Every program of the TLS probe set.
const PROGRAMS: [&str; 7] = [
    programs::SSL_READ,
    programs::SSL_WRITE,
    programs::SSL_READ_EX,
    programs::SSL_WRITE_EX,
    programs::SSL_RETURN,
    programs::SSL_RETURN_BIND,
    programs::SSL_SET_FD,
];

/// The probe set once its programs verified, and the files it has dealt
/// with (attached or not: each is logged once).
#[derive(Debug, Default)]
pub struct TlsProbes {
    seen: HashSet<(u64, u64)>,
    attached: usize,
}

/// Loads the TLS programs; Err says why TLS stays off on this kernel.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<TlsProbes, String> {
    for name in PROGRAMS {
        let program: &mut UProbe = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} is not in the object"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        program.load().map_err(|e| format!("{name} refused: {e}"))?;
    }
    Ok(TlsProbes::default())
}

impl TlsProbes {
    /// Library files the probes are attached to.
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// True when `lib` (by device and inode) was dealt with already.
    pub fn knows(&self, lib: &TlsLibrary) -> bool {
        self.seen.contains(&(lib.dev, lib.ino))
    }

    /// Attaches the probe set to `lib` unless done before; logs once per
    /// file what was attached, or why nothing was.
    pub(super) fn attach(&mut self, ebpf: &mut Ebpf, lib: &TlsLibrary) {
        if !self.seen.insert((lib.dev, lib.ino)) {
            return;
        }
        match attach_file(ebpf, lib) {
            Ok(functions) => {
                self.attached += 1;
                tracing::info!(
                    library = %lib.shown,
                    kind = lib.kind.as_str(),
                    functions = %functions.join(","),
                    "TLS library: plaintext read at its SSL calls"
                );
            }
            Err(reason) => {
                tracing::warn!(library = %lib.shown, reason = %reason, "TLS library left alone: its connections stay muted");
            }
        }
    }
}

/// Attaches every probed function the file exports; the read and the write
/// are required (SSL_read and SSL_write: OpenSSL 1.1.0 has no `_ex`
/// variants, programs using only the plain ones are fully covered; both of
/// GnuTLS's). Half a set would capture one direction only: then what did
/// attach is detached again.
fn attach_file(ebpf: &mut Ebpf, lib: &TlsLibrary) -> Result<Vec<&'static str>, String> {
    let path = lib.path.as_path();
    let (functions, required): (&[(&'static str, &str)], [&str; 2]) = match lib.kind {
        TlsKind::OpenSsl | TlsKind::OpenSslStatic => (&PROBED_FUNCTIONS, ["SSL_read", "SSL_write"]),
        TlsKind::GnuTls => (&GNUTLS_FUNCTIONS, ["gnutls_record_recv", "gnutls_record_send"]),
    };
    // Memory BIOs (node): no syscall inside the calls names the connection.
    let ret_program = if lib.kind == TlsKind::OpenSslStatic { programs::SSL_RETURN_BIND } else { programs::SSL_RETURN };
    let mut done = Vec::new();
    let mut links = Vec::new();
    let mut missing = Vec::new();
    for &(symbol, entry) in functions {
        // The return probe first: an entry without its return would leave
        // a call record behind on every call.
        let ret = match attach_one(ebpf, ret_program, symbol, path) {
            Ok(link) => link,
            Err(e) => {
                missing.push(format!("{symbol}: {e}"));
                continue;
            }
        };
        links.push((ret_program, ret));
        match attach_one(ebpf, entry, symbol, path) {
            Ok(link) => {
                links.push((entry, link));
                done.push(symbol);
            }
            Err(e) => missing.push(format!("{symbol}: {e}")),
        }
    }
    if required.iter().all(|r| done.contains(r)) {
        if lib.kind != TlsKind::GnuTls {
            // Optional: without it a call that does no syscall of its own
            // is bound only by the object's later calls.
            for &(symbol, entry) in &BINDING_FUNCTIONS {
                if attach_one(ebpf, entry, symbol, path).is_ok() {
                    done.push(symbol);
                }
            }
        }
        return Ok(done);
    }
    for (program, link) in links {
        if let Some(Ok(program)) = ebpf.program_mut(program).map(<&mut UProbe>::try_from) {
            let _ = program.detach(link);
        }
    }
    Err(format!("not a {} library with {} ({})", lib.kind.as_str(), required.join(" and "), missing.join("; ")))
}

fn attach_one(ebpf: &mut Ebpf, program: &str, symbol: &str, path: &Path) -> Result<UProbeLinkId, String> {
    let program: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} is not in the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    program.attach(symbol, path, UProbeScope::AllProcesses).map_err(|e| e.to_string())
}

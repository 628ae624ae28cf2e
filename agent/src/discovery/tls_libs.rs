//! Which TLS library files to probe: OpenSSL's `libssl.so.*` and GnuTLS's
//! `libgnutls.so.*` in the well-known library directories and in the memory maps of processes
//! (a container's copy through `/proc/<pid>/root`), and executables that
//! link OpenSSL statically and export it (node; `tls_exe.rs`), found from
//! `/proc/<pid>/exe`.
//!
//! All of it runs on a worker thread ([`TlsScanner`]): the event loop only
//! hands it the pid of a process it sees open its first connection and
//! receives the files not seen before; attaching (once per file) is the
//! loop's, since it owns the probes.
use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    sync::{
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc,
    },
};

pub use super::tls_files::{TlsKind, TlsLibrary};
use super::{
    tls_exe::{installed_executables, static_openssl_of},
    tls_files::identity,
};
use crate::metrics::Metrics;

/// Directories a distribution installs its OpenSSL into.
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
    "/usr/local/lib",
];

/// Pids waiting for the worker; past that, pids are dropped (counted).
const SCAN_QUEUE: usize = 1024;
/// Pids remembered as scanned; past that the memory starts over.
const MAX_SCANNED_PIDS: usize = 65536;

/// OpenSSL's TLS library (`libssl.so`, `libssl.so.3`, `libssl.so.1.1`) or
/// GnuTLS's (`libgnutls.so.30`; not `libgnutls-dane`, `libgnutlsxx`), also
/// under the name a Python wheel gives the copy it brings
/// (`psycopg_binary.libs/libssl-6a9b88ec.so.3`: auditwheel adds a hash).
pub fn tls_kind(path: &str) -> Option<TlsKind> {
    let name = path.rsplit('/').next()?;
    if is_library(name, "libssl") {
        Some(TlsKind::OpenSsl)
    } else if is_library(name, "libgnutls") {
        Some(TlsKind::GnuTls)
    } else {
        None
    }
}

/// `{stem}.so…`, or `{stem}-{8 hex digits}.so…` (a wheel's vendored copy).
fn is_library(name: &str, stem: &str) -> bool {
    let Some(rest) = name.strip_prefix(stem) else {
        return false;
    };
    if rest.starts_with(".so") {
        return true;
    }
    rest.strip_prefix('-').is_some_and(|tagged| {
        tagged.len() > 8 && tagged.as_bytes()[..8].iter().all(u8::is_ascii_hexdigit) && tagged[8..].starts_with(".so")
    })
}

pub fn is_tls_library(path: &str) -> bool {
    tls_kind(path).is_some()
}

/// Paths of the TLS libraries a `/proc/<pid>/maps` text names (each once;
/// files deleted since they were mapped are left out: they cannot be
/// opened by path).
pub fn tls_paths_in_maps(maps: &str) -> Vec<&str> {
    let mut paths: Vec<&str> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let Some(path) = line.split_whitespace().nth(5) else { continue };
        if line.ends_with("(deleted)") || !path.starts_with('/') || !is_tls_library(path) {
            continue;
        }
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

/// The TLS libraries process `pid` maps.
pub fn tls_libraries_of(pid: u32) -> Vec<TlsLibrary> {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    tls_paths_in_maps(&maps)
        .into_iter()
        .filter_map(|shown| {
            let kind = tls_kind(shown)?;
            let inside = PathBuf::from(format!("/proc/{pid}/root{shown}"));
            let (dev, ino) = identity(&inside)?;
            // The host's own path outlives the process.
            let path = if identity(Path::new(shown)) == Some((dev, ino)) { PathBuf::from(shown) } else { inside };
            Some(TlsLibrary { kind, path, shown: shown.to_owned(), dev, ino })
        })
        .collect()
}

/// The TLS libraries installed in the well-known directories, and the
/// known executables that link OpenSSL statically (node): probed at
/// start-up before the agent says it is ready (a few directory reads and
/// one dynamic symbol table), so processes started later that load them are
/// covered from their first call.
pub fn installed_tls_libraries() -> Vec<TlsLibrary> {
    let mut found = Vec::new();
    for dir in LIBRARY_DIRS {
        let Ok(entries) = fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some((shown, kind)) = path.to_str().and_then(|p| Some((p.to_owned(), tls_kind(p)?))) else { continue };
            if let Some((dev, ino)) = identity(&path) {
                found.push(TlsLibrary { kind, path, shown, dev, ino });
            }
        }
    }
    found.extend(installed_executables());
    found
}

/// The event loop's handle on the scanning thread.
pub struct TlsScanner {
    pids: Option<SyncSender<u32>>,
    scanned: HashSet<u32>,
    metrics: Arc<Metrics>,
}

impl TlsScanner {
    /// Starts the worker; it first reports the libraries of every running
    /// process but `agent_pid`, then those of each pid
    /// [`TlsScanner::observe`] hands it. Files come back once each (the
    /// installed ones too, if a process maps them: the prober knows them).
    pub fn spawn(
        agent_pid: u32,
        metrics: Arc<Metrics>,
    ) -> (TlsScanner, tokio::sync::mpsc::UnboundedReceiver<TlsLibrary>) {
        let (pid_tx, pid_rx) = sync_channel(SCAN_QUEUE);
        let (lib_tx, lib_rx) = tokio::sync::mpsc::unbounded_channel();
        let spawned =
            std::thread::Builder::new().name("waggle-tls-scan".into()).spawn(move || scan(agent_pid, &pid_rx, &lib_tx));
        let pids = match spawned {
            Ok(_) => Some(pid_tx),
            Err(e) => {
                tracing::warn!(error = %e, "TLS library scan thread not started: only libraries found now are probed");
                None
            }
        };
        (TlsScanner { pids, scanned: HashSet::new(), metrics }, lib_rx)
    }

    /// A process opened a connection: scan its maps once (off the loop).
    pub fn observe(&mut self, pid: u32) {
        let Some(pids) = &self.pids else { return };
        if self.scanned.len() >= MAX_SCANNED_PIDS {
            self.scanned.clear();
        }
        if !self.scanned.insert(pid) {
            return;
        }
        match pids.try_send(pid) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.scanned.remove(&pid);
                Metrics::inc(&self.metrics.tls_scans_dropped);
            }
        }
    }

    /// The process exited: a later one with its pid is scanned again.
    pub fn forget(&mut self, pid: u32) {
        self.scanned.remove(&pid);
    }
}

fn scan(agent_pid: u32, pids: &Receiver<u32>, out: &tokio::sync::mpsc::UnboundedSender<TlsLibrary>) {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    // Executables whose symbols were read (whether they qualified or not).
    let mut checked: HashSet<(u64, u64)> = HashSet::new();
    let mut report = |pid: u32| -> bool {
        let mut libs = tls_libraries_of(pid);
        libs.extend(static_openssl_of(pid, &mut checked));
        for lib in libs {
            if seen.insert((lib.dev, lib.ino)) && out.send(lib).is_err() {
                return false;
            }
        }
        true
    };
    let running: Vec<u32> = fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for pid in running.into_iter().filter(|p| *p != agent_pid) {
        if !report(pid) {
            return;
        }
    }
    while let Ok(pid) = pids.recv() {
        if !report(pid) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_openssl_in_maps_once_and_skips_deleted_files() {
        let maps = "\
7f1c2a000000-7f1c2a020000 r--p 00000000 08:01 1311 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2a020000-7f1c2a080000 r-xp 00020000 08:01 1311 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2b000000-7f1c2b100000 r-xp 00000000 08:01 1312 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f1c2c000000-7f1c2c100000 r-xp 00000000 08:01 1313 /opt/app/lib/libssl.so.1.1 (deleted)
7f1c2d000000-7f1c2d100000 r-xp 00000000 00:00 0 [heap]
7f1c2e000000-7f1c2e100000 r-xp 00000000 08:01 1314 /srv/libssl.so
7f1c2f000000-7f1c2f100000 r-xp 00000000 08:01 1315 /usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3
7f1c30000000-7f1c30100000 r-xp 00000000 08:01 1316 /usr/lib/x86_64-linux-gnu/libgnutls-dane.so.0
";
        assert_eq!(
            tls_paths_in_maps(maps),
            [
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/srv/libssl.so",
                "/usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3"
            ]
        );
        assert_eq!(tls_kind("/srv/libssl.so"), Some(TlsKind::OpenSsl));
        assert_eq!(tls_kind("/usr/lib/libgnutls.so.30"), Some(TlsKind::GnuTls));
        assert_eq!(tls_kind("/usr/lib/libgnutlsxx.so.30"), None);
        assert_eq!(
            tls_kind("/venv/site-packages/psycopg_binary.libs/libssl-6a9b88ec.so.3"),
            Some(TlsKind::OpenSsl),
            "a wheel's vendored libssl"
        );
        assert_eq!(tls_kind("/venv/x.libs/libgnutls-0123abcd.so.30"), Some(TlsKind::GnuTls));
        assert_eq!(tls_kind("/usr/lib/libgnutls-dane.so.0"), None);
        assert_eq!(tls_kind("/usr/lib/libssl-12345678x.so.3"), None);
        assert_eq!(tls_kind("/venv/x.libs/libcrypto-3a0647ea.so.3"), None);
        assert!(is_tls_library("libssl.so.3"));
        assert!(!is_tls_library("/usr/lib/libssl3.so"), "NSS's libssl3 is not OpenSSL");
        assert!(!is_tls_library("/usr/lib/libcrypto.so.3"));
    }

    #[test]
    fn own_process_libraries_are_reported_with_their_identity() {
        // The test binary may or may not map libssl; what it maps must be
        // reported with the identity of the file it opens.
        for lib in tls_libraries_of(std::process::id()) {
            assert_eq!(identity(&lib.path), Some((lib.dev, lib.ino)));
        }
    }
}

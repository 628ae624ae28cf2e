//! Executables that link OpenSSL statically and export its API in their
//! dynamic symbol table (Node.js official builds: `nm -D node` lists
//! `SSL_read`, `SSL_write`...): probed like a `libssl.so`, once per file.
//!
//! Only the ELF header, the section headers, `.dynsym` and `.dynstr` are
//! read (node is ~100 MB; its dynamic symbols are ~7 MB), once per file
//! identity, on the TLS scan worker.
use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use object::{
    elf,
    read::{
        elf::{FileHeader, Sym},
        ReadCache,
    },
    Endianness,
};

use super::tls_files::{identity, TlsKind, TlsLibrary};

/// Programs known to link OpenSSL statically, looked for at start-up in
/// the usual binary directories so that processes started later are
/// covered from their first connection.
const KNOWN_NAMES: &[&str] = &["node", "nodejs"];
const BIN_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// Executables remembered as checked; past that the memory starts over.
const MAX_CHECKED: usize = 16384;

/// The functions an executable must define (not import) to be probed.
const REQUIRED: [&[u8]; 2] = [b"SSL_read", b"SSL_write"];

/// True when the 64-bit ELF file at `path` defines both `SSL_read` and
/// `SSL_write` in its dynamic symbol table (a program importing them from
/// libssl has them undefined there: its library is probed instead).
pub fn exports_openssl(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else { return false };
    let cache = ReadCache::new(file);
    defines_all(&cache, &REQUIRED).unwrap_or(false)
}

fn defines_all(data: &ReadCache<fs::File>, names: &[&[u8]]) -> object::read::Result<bool> {
    let header = elf::FileHeader64::<Endianness>::parse(data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    let symbols = sections.symbols(endian, data, elf::SHT_DYNSYM)?;
    let mut found = vec![false; names.len()];
    for symbol in symbols.iter() {
        if symbol.st_shndx(endian) == elf::SHN_UNDEF || !symbol.is_definition(endian, symbols.strings()) {
            continue;
        }
        let Ok(name) = symbol.name(endian, symbols.strings()) else { continue };
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i] = true;
        }
    }
    Ok(found.iter().all(|f| *f))
}

fn executable(path: &Path, shown: String, dev: u64, ino: u64) -> TlsLibrary {
    TlsLibrary { kind: TlsKind::OpenSslStatic, path: path.to_path_buf(), shown, dev, ino }
}

/// The executable of process `pid` when it links OpenSSL statically and
/// was not checked before (`checked`: file identities already looked at).
pub fn static_openssl_of(pid: u32, checked: &mut HashSet<(u64, u64)>) -> Option<TlsLibrary> {
    let shown = fs::read_link(format!("/proc/{pid}/exe")).ok()?.to_str()?.to_owned();
    if shown.ends_with(" (deleted)") || !shown.starts_with('/') {
        return None;
    }
    let inside = PathBuf::from(format!("/proc/{pid}/root{shown}"));
    let (dev, ino) = identity(&inside)?;
    if checked.len() >= MAX_CHECKED {
        checked.clear();
    }
    if !checked.insert((dev, ino)) || !exports_openssl(&inside) {
        return None;
    }
    // The host's own path outlives the process.
    let path = if identity(Path::new(&shown)) == Some((dev, ino)) { PathBuf::from(&shown) } else { inside };
    Some(executable(&path, shown, dev, ino))
}

/// The known statically linked programs installed in the usual binary
/// directories (each file once).
pub fn installed_executables() -> Vec<TlsLibrary> {
    let mut found: Vec<TlsLibrary> = Vec::new();
    for dir in BIN_DIRS {
        for name in KNOWN_NAMES {
            let path = Path::new(dir).join(name);
            let Some((dev, ino)) = identity(&path) else { continue };
            if found.iter().any(|f| (f.dev, f.ino) == (dev, ino)) || !exports_openssl(&path) {
                continue;
            }
            let shown = path.display().to_string();
            found.push(executable(&path, shown, dev, ino));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_importing_nothing_from_openssl_is_not_probed() {
        // This test binary links no OpenSSL statically.
        let me = std::env::current_exe().unwrap();
        assert!(!exports_openssl(&me));
        assert!(!exports_openssl(Path::new("/nonexistent/node")));
        assert!(!exports_openssl(Path::new("/proc/self/status")), "not an ELF file");
        let mut checked = HashSet::new();
        assert_eq!(static_openssl_of(std::process::id(), &mut checked), None);
        assert_eq!(checked.len(), 1, "checked once");
        assert_eq!(static_openssl_of(std::process::id(), &mut checked), None);
    }

    #[test]
    fn a_library_exporting_the_functions_is_recognised_from_its_dynamic_symbols() {
        // libssl defines SSL_read/SSL_write in .dynsym exactly as node
        // does; the reader does not care whether the file is a library.
        let Some(lib) = ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/lib/x86_64-linux-gnu/libssl.so.3"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            panic!("libssl.so.3 is not installed (it is a dependency of the e2e tests)");
        };
        assert!(exports_openssl(lib));
    }
}

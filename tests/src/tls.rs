//! Certificates for the TLS tests, made by the `openssl` command line.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A fresh self-signed certificate and its key for 127.0.0.1 (CN and
/// subjectAltName IP, so clients that verify can trust `cert.pem` as a CA)
/// written to `dir` as `cert.pem` and `key.pem` (key mode 0600).
#[track_caller]
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("running openssl req (apt-get install openssl): {e}"));
    assert!(out.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
    // PostgreSQL refuses a key others may read.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", key.display()));
    (cert, key)
}

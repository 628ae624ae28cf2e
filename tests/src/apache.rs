//! Apache httpd 2.4 from Debian's `apache2` package with the prefork MPM
//! (the MPM mod_php requires), run from a private config in a temp dir on a
//! fresh loopback port: `apache2 -f <dir>/httpd.conf -DFOREGROUND`, so the
//! process we start is the parent and its workers are its children, in its
//! process group, killed with it on drop.
//!
//! A [`Site`] says what the server runs: PHP through mod_php
//! ([`Site::php`]) or CGI scripts through mod_cgi ([`Site::cgi`]), the files
//! of its document root and the variables its scripts get (`SetEnv`).
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

use crate::{db::require_debian, env::child_pids, servers::Server};

pub const APACHE_BIN: &str = "/usr/sbin/apache2";
pub const MODULES_DIR: &str = "/usr/lib/apache2/modules";
/// mod_php of Debian 12's `libapache2-mod-php` (PHP 8.2).
pub const PHP_MODULE: &str = "libphp8.2.so";
/// Prefork workers, started up front and kept: a test that picks spans by
/// the workers' pids finds them all at its end.
pub const WORKERS: usize = 2;
/// The OS user the workers run as: Apache refuses to serve as root.
const WORKER_USER: &str = "www-data";
/// mod_php loads every extension of Debian's PHP, mysqli included, before
/// the port opens; under a loaded machine that can take a while.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What one Apache instance serves.
pub struct Site {
    modules: Vec<(&'static str, &'static str)>,
    handlers: String,
    files: Vec<(String, Vec<u8>, u32)>,
    env: Vec<(String, String)>,
    config: Vec<String>,
}

impl Site {
    fn new(modules: Vec<(&'static str, &'static str)>, handlers: &str) -> Site {
        Site { modules, handlers: handlers.to_owned(), files: Vec::new(), env: Vec::new(), config: Vec::new() }
    }

    /// mod_php: `*.php` files run in the prefork worker that accepted the
    /// request (Debian's `libapache2-mod-php`, and `php-mysql` for mysqli).
    #[track_caller]
    pub fn php() -> Site {
        require_debian(&format!("{MODULES_DIR}/{PHP_MODULE}"), "libapache2-mod-php");
        require_debian("/etc/php/8.2/mods-available/mysqli.ini", "php-mysql");
        Site::new(
            vec![("php_module", PHP_MODULE)],
            "<FilesMatch \"\\.php$\">\n    SetHandler application/x-httpd-php\n</FilesMatch>",
        )
    }

    /// mod_cgi: `*.cgi` files run as a process the worker forks per request.
    pub fn cgi() -> Site {
        Site::new(
            vec![("cgi_module", "mod_cgi.so")],
            "<FilesMatch \"\\.cgi$\">\n    SetHandler cgi-script\n    Options +ExecCGI\n</FilesMatch>",
        )
    }

    /// A file of the document root (`executable`: mode 0755, else 0644).
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>, executable: bool) -> Site {
        self.files.push((name.to_owned(), contents.into(), if executable { 0o755 } else { 0o644 }));
        self
    }

    /// `SetEnv key value`: in PHP's `$_SERVER`, in a CGI script's environment.
    pub fn env(mut self, key: &str, value: impl ToString) -> Site {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// A config line, after the rest; `{docroot}` stands for the document
    /// root's path (`AliasMatch "^/items/[0-9]+$" "{docroot}/item.php"`).
    pub fn config(mut self, line: &str) -> Site {
        self.config.push(line.to_owned());
        self
    }
}

impl Server {
    /// Apache (service name `apache2`) serving `site` with [`WORKERS`]
    /// prefork workers. Its error log is the server's log ([`Server::log`]).
    #[track_caller]
    pub fn apache(site: &Site) -> Server {
        require_debian(APACHE_BIN, "apache2");
        let dir = tempfile::Builder::new()
            .prefix("waggle-apache-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        // The workers (www-data) must reach the document root.
        set_mode(dir.path(), 0o755);
        let docroot = dir.path().join("htdocs");
        std::fs::create_dir(&docroot).unwrap_or_else(|e| panic!("creating {}: {e}", docroot.display()));
        set_mode(&docroot, 0o755);
        for (name, contents, mode) in &site.files {
            let path = docroot.join(name);
            std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            set_mode(&path, *mode);
        }
        let server = Server::launch_within("apache2", dir, READY_TIMEOUT, |port, dir| {
            let conf = dir.join("httpd.conf");
            std::fs::write(&conf, httpd_conf(site, dir, port))
                .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
            let mut cmd = Command::new(APACHE_BIN);
            cmd.arg("-f").arg(&conf).arg("-DFOREGROUND");
            cmd
        });
        // The port accepts once the parent listens; its workers are forked
        // right after. Tests pick spans by the workers' pids.
        let started = crate::env::poll_until(READY_TIMEOUT, || child_pids(server.pid()).len() >= WORKERS);
        assert!(started, "apache did not start {WORKERS} workers; log:\n{}", server.log());
        server
    }
}

fn httpd_conf(site: &Site, dir: &Path, port: u16) -> String {
    let d = dir.display();
    let mut modules = vec![
        ("mpm_prefork_module", "mod_mpm_prefork.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("mime_module", "mod_mime.so"),
        ("alias_module", "mod_alias.so"),
        ("env_module", "mod_env.so"),
    ];
    modules.extend(site.modules.iter().copied());
    let mut conf = String::new();
    for (name, file) in modules {
        conf.push_str(&format!("LoadModule {name} {MODULES_DIR}/{file}\n"));
    }
    // ServerRoot and DefaultRuntimeDir in the temp dir: nothing of the
    // system's /etc/apache2 or /run/apache2 is read or written. The error
    // log goes to the server log the harness made our stderr.
    conf.push_str(&format!(
        r#"ServerRoot "{d}"
DefaultRuntimeDir "{d}"
PidFile "{d}/apache2.pid"
Mutex file:{d} default
ErrorLog "/proc/self/fd/2"
LogLevel warn
TypesConfig /etc/mime.types
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
User {WORKER_USER}
Group {WORKER_USER}
StartServers {WORKERS}
MinSpareServers {WORKERS}
MaxSpareServers {WORKERS}
MaxRequestWorkers {WORKERS}
DocumentRoot "{d}/htdocs"
<Directory "{d}/htdocs">
    Require all granted
</Directory>
{}
"#,
        site.handlers
    ));
    for (key, value) in &site.env {
        conf.push_str(&format!("SetEnv {key} \"{value}\"\n"));
    }
    let docroot = format!("{d}/htdocs");
    for line in &site.config {
        conf.push_str(&line.replace("{docroot}", &docroot));
        conf.push('\n');
    }
    conf
}

#[track_caller]
fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

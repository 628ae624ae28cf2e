//! Database servers and clients for the SQL e2e tests: PostgreSQL 15 and
//! MariaDB from Debian's packages, each on a fresh 127.0.0.1 port with its
//! data in a temp dir, killed by pid (with its process group) on drop; and a
//! Python venv holding the client libraries (psycopg 3, MySQL
//! Connector/Python).
//!
//! Both servers are set up the same way: database [`DB_NAME`] with table
//! `items(id int primary key, name text, price numeric)` holding
//! [`SEED_ITEMS`]. Setup queries run before any agent starts, so they never
//! show up in a test's spans.
//!
//! MariaDB runs with its grant tables (not `--skip-grant-tables`): an
//! `--init-file` creates [`MARIADB_USER`]`@127.0.0.1` with a password, so
//! clients go through the real authentication handshake over TCP.
use std::{
    fs::File,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use crate::env::{can_connect, fixture, free_port, poll_until, python, tail, workspace_root, Proc};

/// Database created on both servers.
pub const DB_NAME: &str = "shop";
/// Rows of `items` on both servers: (id, name, price).
pub const SEED_ITEMS: &[(i32, &str, &str)] = &[(1, "apple", "1.50"), (2, "pear", "2.25"), (42, "answer", "42.00")];

/// Where Debian's postgresql-15 / postgresql-client-15 put the binaries.
/// The real binaries, not /usr/bin's pg_wrapper (a Perl script that execs
/// them), so the pid and executable of a client are what the test spawned.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// OS user the PostgreSQL server runs as (initdb refuses root); also the
/// database superuser clients log in as (trust authentication on loopback).
pub const PG_USER: &str = "postgres";

pub const MARIADBD: &str = "/usr/sbin/mariadbd";
pub const MARIADB_INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
pub const MARIADB_CLIENT: &str = "/usr/bin/mariadb";
pub const MARIADB_USER: &str = "waggle";
/// Sent only in the handshake's scrambled auth response, never in a query.
pub const MARIADB_PASSWORD: &str = "waggle-e2e-pw";

/// pip requirements of the fixture scripts under `tests/fixtures/sql/` and
/// `tests/fixtures/cache/` (redis-py).
pub const PIP_PACKAGES: &[&str] = &[
    "psycopg[binary]>=3.1,<4",
    "mysql-connector-python>=8.0",
    "redis>=5,<9",
    // deploy.rs: OpenAPI validation of the rendered manifests; the version
    // fixes which Kubernetes schemas are bundled (k8s::SCHEMA_VERSIONS).
    "kubernetes-validate==1.37.0",
];
/// Modules that must import for [`PIP_PACKAGES`] to count as installed.
const PIP_IMPORT_CHECK: &str = "import psycopg, mysql.connector, redis, kubernetes_validate";

const START_TIMEOUT: Duration = Duration::from_secs(60);
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Panics with the Debian package to install when `path` is missing.
#[track_caller]
pub fn require_debian(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} not found: install Debian package {package} (apt-get install -y {package}; `cargo xtask test` installs the e2e dependencies)"
    );
}

/// `<PG_BIN_DIR>/<name>`.
pub fn pg_bin(name: &str) -> PathBuf {
    Path::new(PG_BIN_DIR).join(name)
}

#[track_caller]
fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"))
}

/// uid and gid of OS user `name`, from /etc/passwd (the Debian packages
/// create their users there).
#[track_caller]
fn os_user(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_else(|e| panic!("reading /etc/passwd: {e}"));
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            if let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse()) {
                return (uid, gid);
            }
        }
    }
    panic!("OS user {name:?} not found in /etc/passwd: install Debian package postgresql-15, which creates it");
}

/// Runs a setup command to completion (output to `log`), panicking with the
/// log's tail when it fails or hangs.
#[track_caller]
fn run_setup(what: &str, cmd: &mut Command, log: &Path) {
    let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let err = out.try_clone().unwrap_or_else(|e| panic!("dup {}: {e}", log.display()));
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut proc = Proc::spawn(what, cmd);
    match proc.wait_timeout(SETUP_TIMEOUT) {
        Some(st) if st.success() => {}
        Some(st) => panic!("{what} failed with {st}: {cmd:?}\n{}", tail(log, 40)),
        None => panic!("{what} did not finish within {SETUP_TIMEOUT:?}: {cmd:?}\n{}", tail(log, 40)),
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// A PostgreSQL 15 server (trust authentication, loopback only) holding
/// database [`DB_NAME`]. Dropping it kills the postmaster's process group
/// (its backends are in it).
pub struct Postgres {
    proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// initdb into a temp dir, start `postgres`, create [`DB_NAME`] and
    /// `items`.
    #[track_caller]
    pub fn start() -> Postgres {
        Postgres::launch(false)
    }

    /// [`start`](Self::start) with `ssl=on` and a self-signed certificate
    /// (`crate::tls::self_signed_cert`): clients may then ask for TLS
    /// (`PGSSLMODE=require`).
    #[track_caller]
    pub fn start_with_ssl() -> Postgres {
        Postgres::launch(true)
    }

    #[track_caller]
    fn launch(ssl: bool) -> Postgres {
        for (bin, package) in
            [("initdb", "postgresql-15"), ("postgres", "postgresql-15"), ("psql", "postgresql-client-15")]
        {
            require_debian(&pg_bin(bin).to_string_lossy(), package);
        }
        let (uid, gid) = os_user(PG_USER);
        let dir = temp_dir("waggle-pg-");
        // initdb and the server run as postgres: they need the dir.
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to {PG_USER}: {e}", dir.path().display()));
        let data = dir.path().join("data");
        let mut initdb = Command::new(pg_bin("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "--username", PG_USER, "--encoding=UTF8", "--locale=C", "--no-sync"])
            .uid(uid)
            .gid(gid)
            .env("HOME", dir.path());
        run_setup("initdb", &mut initdb, &dir.path().join("initdb.log"));
        let mut ssl_settings: Vec<String> = Vec::new();
        if ssl {
            let (cert, key) = crate::tls::self_signed_cert(dir.path());
            for file in [&cert, &key] {
                std::os::unix::fs::chown(file, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to {PG_USER}: {e}", file.display()));
            }
            ssl_settings = ["ssl=on".to_owned(), format!("ssl_cert_file={}", cert.display())]
                .into_iter()
                .chain([format!("ssl_key_file={}", key.display())])
                .flat_map(|setting| ["-c".to_owned(), setting])
                .collect();
        }

        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = dir.path().join("server.log");
            let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
            let err = out.try_clone().unwrap_or_else(|e| panic!("dup server log: {e}"));
            let mut cmd = Command::new(pg_bin("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(dir.path())
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                // A throwaway cluster: durability only costs time here.
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
                .args(&ssl_settings)
                .uid(uid)
                .gid(gid)
                .env("HOME", dir.path())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let mut proc = Proc::spawn("postgres", &mut cmd);
            let pid_file = data.join("postmaster.pid");
            let mut exited = None;
            // The listening socket accepts before recovery finishes (logins
            // then fail with "starting up"); line 8 of postmaster.pid turns
            // "ready" once connections are served.
            let ready = poll_until(START_TIMEOUT, || {
                let status_ready = std::fs::read_to_string(&pid_file)
                    .map(|s| s.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
                    .unwrap_or(false);
                if status_ready && can_connect(SocketAddr::from(([127, 0, 0, 1], port))) {
                    return true;
                }
                exited = proc.try_wait();
                exited.is_some()
            });
            if ready && exited.is_none() {
                let pg = Postgres { proc, port, dir };
                pg.setup();
                return pg;
            }
            last_err = match exited {
                Some(st) => format!("postgres exited with {st}; log:\n{}", tail(&log, 30)),
                None => {
                    format!("postgres was not ready on port {port} within {START_TIMEOUT:?}; log:\n{}", tail(&log, 30))
                }
            };
        }
        panic!("starting postgres: {last_err}");
    }

    #[track_caller]
    fn setup(&self) {
        let log = self.dir.path().join("setup.log");
        let mut create = self.psql_as("postgres");
        create.args(["-c", &format!("CREATE DATABASE {DB_NAME}")]);
        run_setup("psql CREATE DATABASE", &mut create, &log);
        let rows: Vec<String> =
            SEED_ITEMS.iter().map(|(id, name, price)| format!("({id}, '{name}', {price})")).collect();
        let mut table = self.psql();
        table.args([
            "-c",
            "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)",
            "-c",
            &format!("INSERT INTO items VALUES {}", rows.join(", ")),
        ]);
        run_setup("psql CREATE TABLE items", &mut table, &log);
    }

    /// `psql` connected to [`DB_NAME`] over TCP: no psqlrc (-X), stops at
    /// the first error. Add `-c SQL` and run it.
    pub fn psql(&self) -> Command {
        self.psql_as(DB_NAME)
    }

    fn psql_as(&self, db: &str) -> Command {
        let mut cmd = Command::new(pg_bin("psql"));
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            PG_USER,
            "-d",
            db,
        ]);
        cmd.env_remove("PGPASSWORD").env_remove("PGSERVICE").env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    /// `pgbench` against [`DB_NAME`] over TCP (the real binary, not the
    /// wrapper). Add the mode flags.
    pub fn pgbench(&self) -> Command {
        let mut cmd = Command::new(pg_bin("pgbench"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", PG_USER]);
        cmd.env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    /// `pgbench -i` (scale 1): creates and fills pgbench's tables. Run it
    /// before the agent starts; its COPY traffic is not what tests look at.
    #[track_caller]
    pub fn pgbench_init(&self) {
        require_debian(&pg_bin("pgbench").to_string_lossy(), "postgresql-15");
        let mut cmd = self.pgbench();
        cmd.args(["-i", "-q", "-s", "1", DB_NAME]);
        run_setup("pgbench -i", &mut cmd, &self.dir.path().join("pgbench-init.log"));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid (backends are its children).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log (startup errors, failed statements).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// MariaDB
// ---------------------------------------------------------------------------

/// A MariaDB server (loopback only, grant tables on) holding database
/// [`DB_NAME`], reachable as [`MARIADB_USER`] / [`MARIADB_PASSWORD`].
pub struct MariaDb {
    proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl MariaDb {
    /// mariadb-install-db into a temp dir, then `mariadbd` with an init file
    /// creating the user, [`DB_NAME`] and `items`.
    #[track_caller]
    pub fn start() -> MariaDb {
        MariaDb::launch(false)
    }

    /// [`start`](Self::start) with TLS: a self-signed certificate
    /// (`crate::tls::self_signed_cert`) as `--ssl-cert`/`--ssl-key`; clients
    /// ask for TLS with `--ssl`.
    #[track_caller]
    pub fn start_with_ssl() -> MariaDb {
        MariaDb::launch(true)
    }

    #[track_caller]
    fn launch(ssl: bool) -> MariaDb {
        require_debian(MARIADBD, "mariadb-server");
        require_debian(MARIADB_INSTALL_DB, "mariadb-server");
        let dir = temp_dir("waggle-mariadb-");
        let data = dir.path().join("data");
        let mut install = Command::new(MARIADB_INSTALL_DB);
        // --no-defaults: /etc/mysql's config (datadir, socket, log paths)
        // belongs to the system's server, not to this one.
        install.arg("--no-defaults").arg(format!("--datadir={}", data.display())).args([
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ]);
        run_setup("mariadb-install-db", &mut install, &dir.path().join("install.log"));

        let rows: Vec<String> =
            SEED_ITEMS.iter().map(|(id, name, price)| format!("({id}, '{name}', {price})")).collect();
        let init = format!(
            "CREATE DATABASE IF NOT EXISTS {DB_NAME};\n\
             CREATE TABLE IF NOT EXISTS {DB_NAME}.items (id INT PRIMARY KEY, name TEXT, price DECIMAL(10,2));\n\
             INSERT IGNORE INTO {DB_NAME}.items VALUES {};\n\
             CREATE USER IF NOT EXISTS '{MARIADB_USER}'@'127.0.0.1' IDENTIFIED BY '{MARIADB_PASSWORD}';\n\
             GRANT ALL ON {DB_NAME}.* TO '{MARIADB_USER}'@'127.0.0.1';\n",
            rows.join(", ")
        );
        let init_path = dir.path().join("init.sql");
        std::fs::write(&init_path, init).unwrap_or_else(|e| panic!("writing {}: {e}", init_path.display()));
        let mut ssl_settings: Vec<String> = Vec::new();
        if ssl {
            let (cert, key) = crate::tls::self_signed_cert(dir.path());
            ssl_settings = vec![format!("--ssl-cert={}", cert.display()), format!("--ssl-key={}", key.display())];
        }

        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = dir.path().join("server.log");
            let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
            let err = out.try_clone().unwrap_or_else(|e| panic!("dup server log: {e}"));
            let d = dir.path().display();
            let mut cmd = Command::new(MARIADBD);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={d}/mariadb.sock"))
                .arg(format!("--pid-file={d}/mariadb.pid"))
                .arg(format!("--init-file={}", init_path.display()))
                .arg(format!("--port={port}"))
                .args(["--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve"])
                // A throwaway server: small and without durability costs.
                .args(["--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin"])
                .args(&ssl_settings)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let mut proc = Proc::spawn("mariadbd", &mut cmd);
            let mut exited = None;
            // The init file runs before this line is logged.
            let ready = poll_until(START_TIMEOUT, || {
                if std::fs::read_to_string(&log).is_ok_and(|s| s.contains("ready for connections"))
                    && can_connect(SocketAddr::from(([127, 0, 0, 1], port)))
                {
                    return true;
                }
                exited = proc.try_wait();
                exited.is_some()
            });
            if ready && exited.is_none() {
                return MariaDb { proc, port, dir };
            }
            last_err = match exited {
                Some(st) => format!("mariadbd exited with {st}; log:\n{}", tail(&log, 30)),
                None => {
                    format!("mariadbd was not ready on port {port} within {START_TIMEOUT:?}; log:\n{}", tail(&log, 30))
                }
            };
        }
        panic!("starting mariadbd: {last_err}");
    }

    /// The `mariadb` CLI connected over TCP to [`DB_NAME`] as
    /// [`MARIADB_USER`]. Add `-e SQL` and run it.
    #[track_caller]
    pub fn client(&self) -> Command {
        require_debian(MARIADB_CLIENT, "mariadb-client");
        let mut cmd = Command::new(MARIADB_CLIENT);
        cmd.arg("--no-defaults")
            .args(["--protocol=TCP", "-h", "127.0.0.1", "-P", &self.port.to_string(), "-u", MARIADB_USER])
            .arg(format!("--password={MARIADB_PASSWORD}"))
            .args(["--connect-timeout=10", "--batch", DB_NAME]);
        cmd
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// Python clients
// ---------------------------------------------------------------------------

/// The venv the SQL fixture scripts run in: `$WAGGLE_E2E_VENV`, else
/// `<workspace>/target/e2e-venv`.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("WAGGLE_E2E_VENV") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/e2e-venv"),
    }
}

/// The venv's interpreter, with [`PIP_PACKAGES`] installed: creates the venv
/// (from the system interpreter, [`python`]) and pip-installs into it when
/// needed, once per test binary.
#[track_caller]
pub fn venv_python() -> PathBuf {
    static VENV_PYTHON: OnceLock<PathBuf> = OnceLock::new();
    VENV_PYTHON.get_or_init(ensure_venv).clone()
}

#[track_caller]
fn ensure_venv() -> PathBuf {
    let dir = venv_dir();
    let py = dir.join("bin/python");
    if !py.is_file() {
        let out = Command::new(python())
            .args(["-m", "venv"])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("running {} -m venv: {e}", python().display()));
        assert!(
            out.status.success(),
            "{} -m venv {} failed (install Debian package python3-venv): {}",
            python().display(),
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let imports_ok = || {
        Command::new(&py)
            .args(["-c", PIP_IMPORT_CHECK])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !imports_ok() {
        let out = Command::new(&py)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet"])
            .args(PIP_PACKAGES)
            .output()
            .unwrap_or_else(|e| panic!("running pip in {}: {e}", dir.display()));
        assert!(
            out.status.success(),
            "pip install {PIP_PACKAGES:?} into {} failed:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(imports_ok(), "`{PIP_IMPORT_CHECK}` still fails in {} after pip install", dir.display());
    }
    py
}

/// A `Command` running `tests/fixtures/sql/<script>` with the venv's
/// interpreter, unbuffered.
#[track_caller]
pub fn sql_script(script: &str) -> Command {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-u").arg(fixture("sql").join(script));
    cmd
}

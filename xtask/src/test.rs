//! `cargo xtask test`: end-to-end dependencies, then every test of the
//! workspace against the freshly built agent, with a one-line summary
//! (`N passed, N failed, N skipped`) CI can read.
//!
//! Tests that need root, the eBPF object, the agent binary or an end-to-end
//! dependency are `#[ignore = "needs ..."]`: plain `cargo test` reports them
//! as ignored, and this runs them (`--include-ignored`), where a missing
//! precondition fails the test. Whatever libtest still reports as ignored is
//! counted as skipped, and under CI (`CI=true`) a skipped test fails the
//! run: nothing may silently not run there.
use std::{ffi::OsString, path::Path};

use anyhow::{bail, Result};

use crate::{
    build::{Built, OBJECT_ENV},
    cmd::{self, Cmd},
    setup::{self, Apt},
};

/// The crate holding the end-to-end tests (skipped by `--unit-only`).
pub const E2E_PACKAGE: &str = "waggle-e2e";
/// Variable the end-to-end tests read the agent's path from.
pub const BIN_ENV: &str = "WAGGLE_BIN";

/// Something the end-to-end tests run. Satisfied when any of `packages` is
/// installed (dpkg) or `command` is found; `packages[0]` is what gets
/// installed.
#[derive(Clone, Copy, Debug)]
pub struct Dep {
    pub packages: &'static [&'static str],
    pub command: Option<&'static str>,
}

/// Everything the end-to-end tests need from the system: extend this list
/// when a test needs a new server or client.
pub const E2E_DEPS: &[Dep] = &[
    Dep { packages: &["nginx-light", "nginx", "nginx-core", "nginx-full"], command: Some("nginx") },
    Dep { packages: &["curl"], command: Some("curl") },
    Dep { packages: &["python3"], command: Some("python3") },
    // TLS tests (tests/tests/tls.rs) generate their certificates.
    Dep { packages: &["openssl"], command: Some("openssl") },
    // A GnuTLS client for the TLS tests (Debian's wget links libgnutls.so.30).
    Dep { packages: &["wget"], command: Some("wget") },
    Dep { packages: &["procps"], command: Some("pgrep") },
    Dep { packages: &["iproute2"], command: Some("ss") },
    // SQL tests (tests/src/db.rs): Debian's PostgreSQL 15 and MariaDB, and a
    // venv for the Python client libraries.
    Dep { packages: &["postgresql-15"], command: Some("/usr/lib/postgresql/15/bin/postgres") },
    Dep { packages: &["postgresql-client-15"], command: Some("/usr/lib/postgresql/15/bin/psql") },
    Dep { packages: &["mariadb-server"], command: Some("/usr/sbin/mariadbd") },
    Dep { packages: &["mariadb-client"], command: Some("/usr/bin/mariadb") },
    Dep { packages: &["python3-venv", "python3.11-venv"], command: None },
    // Cache tests (tests/src/cache.rs): Redis and memcached (redis-py goes
    // into the same venv).
    Dep { packages: &["redis-server"], command: Some("/usr/bin/redis-server") },
    Dep { packages: &["redis-tools"], command: Some("/usr/bin/redis-cli") },
    Dep { packages: &["memcached"], command: Some("/usr/bin/memcached") },
    // The nginx + php-fpm stack (tests/tests/php.rs): php-fpm over TCP
    // FastCGI with PDO MySQL and php-redis.
    Dep { packages: &["php-fpm"], command: Some("/usr/sbin/php-fpm8.2") },
    Dep { packages: &["php-mysql"], command: None },
    Dep { packages: &["php-redis"], command: None },
    // Propagation tests (tests/tests/propagation.rs): service B is node.js;
    // the CLI edge test drops privileges with setpriv (util-linux).
    Dep { packages: &["nodejs"], command: Some("node") },
    Dep { packages: &["util-linux"], command: Some("setpriv") },
    // Connection churn (tests/tests/floods.rs).
    Dep { packages: &["wrk"], command: Some("wrk") },
    // Traffic-integrity suite (tests/tests/integrity.rs): Go and Java
    // clients built at test time (node, curl and nginx are above).
    Dep { packages: &["golang-go"], command: Some("go") },
    Dep { packages: &["default-jdk-headless", "openjdk-17-jdk-headless"], command: Some("javac") },
    // Application-server stacks (tests/tests/jvm_ruby.rs): Tomcat 10 with
    // Debian's JDBC drivers (javac is above), and puma with rack and pg.
    Dep { packages: &["tomcat10"], command: Some("/usr/share/tomcat10/bin/catalina.sh") },
    Dep { packages: &["libpostgresql-jdbc-java"], command: None },
    Dep { packages: &["libmariadb-java"], command: None },
    Dep { packages: &["puma"], command: Some("/usr/bin/puma") },
    Dep { packages: &["ruby-rack"], command: None },
    Dep { packages: &["ruby-pg"], command: None },
    // Application metrics (tests/tests/metrics.rs, deploy.rs): a real
    // Prometheus scrapes the agent and checks the dashboards' queries.
    Dep { packages: &["prometheus"], command: Some("/usr/bin/prometheus") },
    // Manifest tests (tests/tests/deploy.rs): kubectl and helm come from an
    // npm package (tests/src/k8s.rs).
    Dep { packages: &["npm"], command: Some("npm") },
    // Application stacks (tests/tests/stacks.rs): Apache 2.4 with the
    // prefork MPM, mod_php and mysqli; Starman running a PSGI app with
    // DBI/DBD::Pg.
    Dep { packages: &["apache2"], command: Some("/usr/sbin/apache2") },
    Dep { packages: &["libapache2-mod-php"], command: None },
    Dep { packages: &["php-mysql"], command: None },
    Dep { packages: &["starman"], command: Some("/usr/bin/starman") },
    Dep { packages: &["libplack-perl"], command: None },
    Dep { packages: &["libdbd-pg-perl"], command: None },
];

/// Packages to install for the deps that are not satisfied.
pub fn missing_packages(
    deps: &[Dep],
    installed: impl Fn(&str) -> bool,
    has_command: impl Fn(&str) -> bool,
) -> Vec<&'static str> {
    deps.iter()
        .filter(|dep| !dep.packages.iter().any(|p| installed(p)) && !dep.command.is_some_and(&has_command))
        .filter_map(|dep| dep.packages.first().copied())
        .collect()
}

pub fn ensure_e2e_deps(apt: &mut Apt) -> Result<()> {
    let names: Vec<&str> = E2E_DEPS.iter().flat_map(|d| d.packages.iter().copied()).collect();
    let installed = setup::installed_packages(&names);
    let missing = missing_packages(E2E_DEPS, |p| installed.contains(p), |c| cmd::find_program(c).is_some());
    if missing.is_empty() {
        eprintln!("xtask: end-to-end dependencies: all present");
        return Ok(());
    }
    let can_install = cmd::is_root() && cmd::find_program("apt-get").is_some();
    if can_install {
        return apt.install(&missing);
    }
    // Not fatal: the unit tests still run, and each end-to-end test reports
    // what it lacks.
    eprintln!(
        "xtask: warning: end-to-end test dependencies are missing: {}. Install them with:\n    \
         sudo apt-get install -y {}",
        missing.join(" "),
        missing.join(" ")
    );
    Ok(())
}

/// Counts from libtest's `test result:` lines (`ignored` is reported as
/// skipped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Tally {
    /// Adds the counts of one `test result: ok. 3 passed; 1 failed; ...` line.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim_start().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }

    /// The summary line, e.g. `12 passed, 0 failed, 1 skipped`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed, {} skipped", self.passed, self.failed, self.ignored)
    }

    /// Why the run failed, if it did: failed tests, or skipped ones when
    /// `skipped_fails` (under CI).
    pub fn verdict(&self, skipped_fails: bool) -> Result<()> {
        if self.failed > 0 {
            bail!("{} test(s) failed", self.failed);
        }
        if skipped_fails && self.ignored > 0 {
            bail!("{} test(s) skipped, which fails a CI run: nothing may silently not run", self.ignored);
        }
        Ok(())
    }
}

/// Whether this is a CI run (`CI=true`, as CI services set it).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The arguments for the test binaries: `--include-ignored` (unless the
/// caller chose `--ignored`/`--include-ignored` already) and then the
/// caller's.
pub fn harness_args(unit_only: bool, test_args: &[OsString]) -> Vec<OsString> {
    let chosen = test_args.iter().any(|a| a == "--ignored" || a == "--include-ignored");
    // --unit-only is the no-root run: a unit test that is ignored because it
    // needs root stays ignored there, and is reported as skipped.
    let mut args: Vec<OsString> =
        if unit_only || chosen { Vec::new() } else { vec![OsString::from("--include-ignored")] };
    args.extend(test_args.iter().cloned());
    args
}

/// `tally` starts with the counts of checks run before (the kernel matrix).
pub fn run_tests(root: &Path, built: &Built, unit_only: bool, test_args: &[OsString], mut tally: Tally) -> Result<()> {
    if !unit_only && !cmd::is_root() {
        eprintln!("xtask: warning: not root: the end-to-end and live tests load eBPF programs and will fail");
    }
    // Same profile and WAGGLE_EBPF_OBJECT as `build`, so the agent is not
    // rebuilt with a different embedded object.
    let mut cargo = Cmd::new("cargo")
        .cwd(root)
        .env(OBJECT_ENV, &built.ebpf_object)
        .env(BIN_ENV, &built.agent_bin)
        .args(["test", "--workspace", "--release", "--no-fail-fast"]);
    if unit_only {
        // Libraries' and binaries' own tests only: integration tests (any
        // crate's tests/ directory) may load eBPF programs and need root.
        cargo = cargo.args(["--lib", "--bins", "--exclude", E2E_PACKAGE]);
    }
    let harness = harness_args(unit_only, test_args);
    if !harness.is_empty() {
        cargo = cargo.arg("--").args(harness);
    }
    let status = cargo.run_lines(|line| {
        cmd::out(line);
        tally.add_line(line);
    })?;
    cmd::out(&tally.summary());
    tally.verdict(in_ci())?;
    cmd::check(&cargo, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_sums_ok_and_failed_result_lines() {
        let output = "running 3 tests\n\
            test a ... ok\n\
            test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            test result: FAILED. 10 passed; 2 failed; 0 ignored; 0 measured; 5 filtered out; finished in 1.50s\n\
            some line mentioning 4 passed\n\
            test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n";
        let mut tally = Tally::default();
        output.lines().for_each(|l| tally.add_line(l));
        assert_eq!(tally, Tally { passed: 13, failed: 2, ignored: 1 });
        assert_eq!(tally.summary(), "13 passed, 2 failed, 1 skipped");
    }

    #[test]
    fn skipped_tests_fail_only_a_ci_run() {
        let skipped = Tally { passed: 3, failed: 0, ignored: 1 };
        assert!(skipped.verdict(false).is_ok());
        let err = skipped.verdict(true).unwrap_err().to_string();
        assert!(err.contains("1 test(s) skipped"), "{err}");
        assert!(Tally { passed: 3, failed: 0, ignored: 0 }.verdict(true).is_ok());
        let err = Tally { passed: 3, failed: 1, ignored: 0 }.verdict(false).unwrap_err().to_string();
        assert!(err.contains("1 test(s) failed"), "{err}");
    }

    #[test]
    fn ignored_tests_run_except_in_the_unit_only_run() {
        let os = |args: &[&str]| args.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(harness_args(false, &[]), os(&["--include-ignored"]));
        assert_eq!(harness_args(false, &os(&["integrity"])), os(&["--include-ignored", "integrity"]));
        assert_eq!(harness_args(false, &os(&["--ignored"])), os(&["--ignored"]));
        assert_eq!(harness_args(true, &os(&["parse"])), os(&["parse"]));
        assert!(harness_args(true, &[]).is_empty());
    }

    #[test]
    fn deps_satisfied_by_package_alternative_or_command() {
        let deps = &[
            Dep { packages: &["nginx-light", "nginx"], command: Some("nginx") },
            Dep { packages: &["curl"], command: Some("curl") },
            Dep { packages: &["postgresql"], command: None },
        ];
        // nginx via the alternative package, curl via its command.
        let missing = missing_packages(deps, |p| p == "nginx", |c| c == "curl");
        assert_eq!(missing, ["postgresql"]);
        // Nothing present: the first package of each dep is installed.
        let missing = missing_packages(deps, |_| false, |_| false);
        assert_eq!(missing, ["nginx-light", "curl", "postgresql"]);
    }

    #[test]
    fn every_dep_names_a_package() {
        assert!(E2E_DEPS.iter().all(|d| !d.packages.is_empty()));
    }
}

//! Cache servers for the Redis/memcached e2e tests: `redis-server` and
//! `memcached` from Debian's packages, each on a fresh 127.0.0.1 port,
//! without persistence, killed by pid (with its process group) on drop.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    db::{require_debian, venv_python},
    env::fixture,
    servers::Server,
};

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
pub const REDIS_CLI: &str = "/usr/bin/redis-cli";
pub const MEMCACHED: &str = "/usr/bin/memcached";

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A cache server process listening on 127.0.0.1.
pub struct CacheServer {
    server: Server,
}

impl CacheServer {
    /// `redis-server` with no persistence, its working dir in a temp dir.
    #[track_caller]
    pub fn redis() -> CacheServer {
        require_debian(REDIS_SERVER, "redis-server");
        require_debian(REDIS_CLI, "redis-tools");
        CacheServer::launch("redis-server", |port, dir| {
            let mut cmd = Command::new(REDIS_SERVER);
            cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--protected-mode", "no"])
                .arg("--dir")
                .arg(dir);
            cmd
        })
    }

    /// `memcached` on TCP only (no UDP), running as root's `-u root`.
    #[track_caller]
    pub fn memcached() -> CacheServer {
        require_debian(MEMCACHED, "memcached");
        CacheServer::launch("memcached", |port, _| {
            let mut cmd = Command::new(MEMCACHED);
            cmd.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0", "-u", "root", "-m", "64"]);
            cmd
        })
    }

    #[track_caller]
    fn launch(name: &'static str, build: impl Fn(u16, &Path) -> Command) -> CacheServer {
        let dir = tempfile::Builder::new()
            .prefix("waggle-cache-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        CacheServer { server: Server::launch_within(name, dir, START_TIMEOUT, build) }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// `redis-cli -h 127.0.0.1 -p PORT`.
    pub fn redis_cli(&self) -> Command {
        let mut cmd = Command::new(REDIS_CLI);
        cmd.args(["-h", "127.0.0.1", "-p", &self.port().to_string()]);
        cmd
    }
}

/// `tests/fixtures/cache/<script>`.
pub fn cache_fixture(script: &str) -> PathBuf {
    fixture("cache").join(script)
}

/// A `Command` running `tests/fixtures/cache/<script>` with the venv's
/// interpreter (redis-py is there), unbuffered.
#[track_caller]
pub fn cache_script(script: &str) -> Command {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-u").arg(cache_fixture(script));
    cmd
}

//! Perl's PSGI server Starman (Debian's `starman`, with `libplack-perl`)
//! running an application file on a fresh loopback port: a master process
//! (the one we start, `/usr/bin/starman` is a perl script) and prefork
//! workers, its children, killed with its process group on drop.
use std::{path::Path, process::Command, time::Duration};

use crate::{
    db::require_debian,
    env::{child_pids, poll_until},
    servers::Server,
};

pub const STARMAN_BIN: &str = "/usr/bin/starman";
/// Prefork workers: a test that picks spans by the workers' pids finds them
/// all at its end (Starman keeps exactly this many).
pub const STARMAN_WORKERS: usize = 2;
/// Plack, DBI and DBD::Pg load before the port opens.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Server {
    /// Starman serving the PSGI application `psgi` with
    /// [`STARMAN_WORKERS`] workers, `env` added to its environment; the
    /// application's output (warnings, errors) is the server's log.
    #[track_caller]
    pub fn starman(psgi: &Path, env: &[(&str, String)]) -> Server {
        require_debian(STARMAN_BIN, "starman");
        require_debian("/usr/share/perl5/Plack.pm", "libplack-perl");
        let dir = tempfile::Builder::new()
            .prefix("waggle-starman-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        let server = Server::launch_within("starman", dir, READY_TIMEOUT, |port, _| {
            let mut cmd = Command::new(STARMAN_BIN);
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .args(["--workers", &STARMAN_WORKERS.to_string()])
                // Without it Plack::Runner wraps the app in its development
                // middleware (access log, lint, stack traces).
                .args(["--env", "deployment"])
                .arg(psgi)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            cmd
        });
        let started = poll_until(READY_TIMEOUT, || child_pids(server.pid()).len() >= STARMAN_WORKERS);
        assert!(started, "starman did not start {STARMAN_WORKERS} workers; log:\n{}", server.log());
        server
    }
}

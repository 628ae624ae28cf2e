//! Puma from Debian's packages (`puma`, with `ruby-rack` and `ruby-pg`)
//! serving the fixture Rack app (`tests/fixtures/puma/config.ru`) in single
//! mode (one process, a pool of threads) on a fresh loopback port.
use std::{path::Path, process::Command, time::Duration};

use crate::{
    db::{require_debian, Postgres, DB_NAME, PG_USER},
    env::fixture,
    servers::Server,
};

pub const PUMA_BIN: &str = "/usr/bin/puma";
/// The tag puma puts in brackets in its process title
/// (`puma 5.6.5 (tcp://127.0.0.1:PORT) [storefront]`), where the agent
/// reads the service name from.
pub const PUMA_TAG: &str = "storefront";
/// Puma's thread pool: all started up front (min = max).
pub const PUMA_THREADS: u32 = 4;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running puma serving `GET /shop/items/<id>` (see `config.ru`).
pub struct Puma {
    server: Server,
}

impl Puma {
    /// `downstream`: base URL the app calls (`<downstream>/stock/<id>`);
    /// `secret`: a string it binds as a query parameter (never to be
    /// exported).
    #[track_caller]
    ///
    /// `queue_requests`: puma's setting of that name. On (puma's default),
    /// a request whose bytes have not arrived when a pool thread first
    /// looks is read by puma's reactor thread and then handed to a pool
    /// thread, which runs the app; off, the pool thread that took the
    /// connection reads the request itself and runs the app.
    pub fn start(pg: &Postgres, downstream: &str, secret: &str, queue_requests: bool) -> Puma {
        require_debian(PUMA_BIN, "puma");
        require_debian("/usr/bin/ruby", "ruby");
        let gems = Command::new("/usr/bin/ruby")
            .args(["-e", "require 'rack'; require 'pg'"])
            .output()
            .unwrap_or_else(|e| panic!("running ruby: {e}"));
        assert!(
            gems.status.success(),
            "ruby cannot load rack and pg: install Debian packages ruby-rack and ruby-pg\n{}",
            String::from_utf8_lossy(&gems.stderr)
        );
        let dir = tempfile::Builder::new()
            .prefix("waggle-puma-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        let rackup = fixture("puma").join("config.ru");
        let (downstream, secret, pg_port) = (downstream.to_owned(), secret.to_owned(), pg.port());
        let server = Server::launch_within("puma", dir, START_TIMEOUT, |port, dir: &Path| {
            let threads = format!("{PUMA_THREADS}:{PUMA_THREADS}");
            let config = dir.join("puma.rb");
            std::fs::write(&config, format!("queue_requests {queue_requests}\n"))
                .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
            let mut cmd = Command::new(PUMA_BIN);
            cmd.arg("-C")
                .arg(&config)
                .args(["-e", "production", "-t", &threads, "--tag", PUMA_TAG])
                .arg("-b")
                .arg(format!("tcp://127.0.0.1:{port}"))
                .arg(&rackup)
                .current_dir(dir)
                .env("SHOP_PG_PORT", pg_port.to_string())
                .env("SHOP_PG_DB", DB_NAME)
                .env("SHOP_PG_USER", PG_USER)
                .env("SHOP_DOWNSTREAM", &downstream)
                .env("SHOP_SECRET", &secret)
                // The gems come from Debian; a user's gem environment must
                // not shadow them.
                .env_remove("GEM_HOME")
                .env_remove("GEM_PATH")
                .env_remove("RUBYOPT");
            cmd
        });
        Puma { server }
    }
}

/// Port, pid, url and log are the [`Server`]'s.
impl std::ops::Deref for Puma {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

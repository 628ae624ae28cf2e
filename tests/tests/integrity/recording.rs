//! The recording server (server.py), which stores every byte each
//! connection brought, and the recordings it leaves.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use waggle_e2e::{
    env::{poll_until, tail, wait_for_port_line},
    fixture, python, Proc,
};

pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Recordings are final once the peer closed; high-level clients close when
/// they exit.
pub const RECORDING_TIMEOUT: Duration = Duration::from_secs(20);

/// server.py: prints `port N`, records each connection into its dir.
pub struct RecServer {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    pub name: &'static str,
}

impl RecServer {
    #[track_caller]
    pub fn start(name: &'static str, work: &Path) -> RecServer {
        let dir = work.join(format!("rec-{name}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let out_path = work.join(format!("server-{name}.out"));
        let err_path = work.join(format!("server-{name}.err"));
        let mut cmd = Command::new(python());
        cmd.arg("-u").arg(fixture("integrity/server.py")).arg(&dir);
        let mut proc = spawn_logged(name, cmd, &out_path, &err_path);
        match wait_for_port_line(&mut proc, &out_path, START_TIMEOUT) {
            Ok(port) => RecServer { proc, port, dir, name },
            Err(Some(st)) => panic!("recording server {name} exited with {st}; stderr:\n{}", tail(&err_path, 30)),
            Err(None) => panic!(
                "recording server {name} printed no port within {START_TIMEOUT:?}; stderr:\n{}",
                tail(&err_path, 30)
            ),
        }
    }

    /// Waits until every recorded connection was closed by its peer.
    #[track_caller]
    pub fn recordings(&mut self) -> Vec<Recording> {
        let open = |dir: &Path| -> Vec<String> {
            fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".part"))
                        .collect()
                })
                .unwrap_or_default()
        };
        let done = poll_until(RECORDING_TIMEOUT, || open(&self.dir).is_empty());
        assert!(
            done,
            "{}: connections still open {RECORDING_TIMEOUT:?} after the client finished: {:?}",
            self.name,
            open(&self.dir)
        );
        assert!(self.proc.try_wait().is_none(), "recording server {} died", self.name);
        let mut recs: Vec<Recording> = fs::read_dir(&self.dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.dir.display()))
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".bin")?;
                let (seq, port) = stem.split_once('-')?;
                Some(Recording { seq: seq.parse().ok()?, port: port.parse().ok()?, path: e.path() })
            })
            .collect();
        recs.sort_by_key(|r| r.seq);
        recs
    }
}

pub struct Recording {
    pub seq: u64,
    pub port: u16,
    pub path: PathBuf,
}

impl Recording {
    pub fn bytes(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap_or_else(|e| panic!("reading {}: {e}", self.path.display()))
    }
}

#[track_caller]
pub fn spawn_logged(name: &str, mut cmd: Command, out: &Path, err: &Path) -> Proc {
    let o = fs::File::create(out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
    let e = fs::File::create(err).unwrap_or_else(|e| panic!("creating {}: {e}", err.display()));
    cmd.stdin(Stdio::null()).stdout(o).stderr(e);
    Proc::spawn(name, &mut cmd)
}

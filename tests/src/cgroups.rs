//! Real cgroups shaped like container runtimes' layouts, for tests of
//! container identity and container-level selection: made in this
//! machine's cgroup v2 hierarchy under a `waggle-e2e-<pid>` parent
//! (kubelet's `--cgroup-root` nests the same way) and removed at the end;
//! no runtime or kubelet is involved, only the paths they create.
use std::path::{Path, PathBuf};

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on a pure
/// v2 host, `/sys/fs/cgroup/unified` on a hybrid one).
#[track_caller]
fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .unwrap_or_else(|| panic!("no cgroup2 mount in /proc/self/mountinfo:\n{mountinfo}"))
}

/// A cgroup path made for the test, removed (deepest first) on drop.
pub struct Cgroups {
    base: PathBuf,
}

impl Cgroups {
    // No Default: making one creates a directory in the cgroup hierarchy.
    #[allow(clippy::new_without_default)]
    #[track_caller]
    pub fn new() -> Cgroups {
        let base = cgroup2_root().join(format!("waggle-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("creating {}: {e}", base.display()));
        Cgroups { base }
    }

    /// Creates `relative` under the test's parent; returns its cgroup.procs.
    #[track_caller]
    pub fn make(&self, relative: &str) -> PathBuf {
        let dir = self.base.join(relative);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dir.join("cgroup.procs")
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&entry.path());
                    }
                }
            }
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("removing cgroup {}: {e}", dir.display());
            }
        }
        remove(&self.base);
    }
}

/// A 64-hex-digit container id, distinct per `n`.
pub fn container_id(n: u8) -> String {
    format!("{:02x}", n + 0xa0).repeat(32)
}

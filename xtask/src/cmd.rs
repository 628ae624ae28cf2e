//! Running external commands: every command is echoed as a copy-pasteable
//! shell line (`$ KEY=VAL prog args`) before it runs, and a failure names the
//! command and its exit status.
//!
//! While a child runs, xtask stays alive through Ctrl-C so that it can report
//! and forward the child's exit status: a terminal's Ctrl-C already reaches
//! the child (same process group), and a signal another process sent to xtask
//! alone (`kill`, `timeout`) is relayed to the child, as sudo does.
use std::{
    ffi::{OsStr, OsString},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{bail, Context, Result};

/// pid of the child being waited for, 0 when none: read by the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers;
        // null is checked anyway.
        let from_kernel = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
        // Terminal-generated signals (SI_KERNEL) went to the whole foreground
        // process group, child included: relaying them would deliver twice.
        if !from_kernel {
            // SAFETY: kill(2) is async-signal-safe; pid is a child we spawned.
            unsafe { libc::kill(pid, sig) };
        }
    } else {
        // No child: behave as if no handler was installed.
        // SAFETY: signal(2) and raise(3) are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Installs the handlers described in the module docs. A handler (not
/// SIG_IGN) is used on purpose: handlers reset to the default on exec, so
/// children start with normal signal behaviour.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the sigaction struct is zero-initialised then filled in
        // full; on_signal only touches an atomic and async-signal-safe
        // functions and lives for the whole program.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Exit code a shell would report for `status` (128 + signal when killed).
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    /// Directories put in front of the inherited PATH.
    path_prepend: Vec<PathBuf>,
    cwd: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            path_prepend: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Puts `dir` in front of the inherited PATH (shown as `PATH=dir:$PATH`).
    pub fn path_prepend(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.path_prepend.push(dir.as_ref().to_owned());
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// The command as a shell line, e.g. `(cd dir && K=V prog 'a b')`.
    pub fn display(&self) -> String {
        let mut words: Vec<String> =
            self.envs.iter().map(|(k, v)| format!("{}={}", k.to_string_lossy(), quote(&v.to_string_lossy()))).collect();
        if !self.path_prepend.is_empty() {
            let dirs: Vec<String> = self.path_prepend.iter().map(|d| quote(&d.to_string_lossy())).collect();
            words.push(format!("PATH={}:$PATH", dirs.join(":")));
        }
        words.push(quote(&self.program.to_string_lossy()));
        words.extend(self.args.iter().map(|a| quote(&a.to_string_lossy())));
        let line = words.join(" ");
        match &self.cwd {
            Some(dir) => format!("(cd {} && {line})", quote(&dir.to_string_lossy())),
            None => line,
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        if !self.path_prepend.is_empty() {
            let inherited = std::env::var_os("PATH").unwrap_or_default();
            let dirs = self.path_prepend.iter().cloned().chain(std::env::split_paths(&inherited));
            // Unjoinable only if a directory contains ':'; the inherited PATH
            // is then the better fallback.
            if let Ok(path) = std::env::join_paths(dirs) {
                command.env("PATH", path);
            }
        }
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        command
    }

    fn announce(&self) {
        eprintln!("$ {}", self.display());
    }

    fn wait(&self, mut command: Command) -> Result<ExitStatus> {
        let mut child = command.spawn().with_context(|| format!("starting `{}`", self.display()))?;
        CHILD.store(i32::try_from(child.id()).unwrap_or(0), Ordering::SeqCst);
        let status = child.wait();
        CHILD.store(0, Ordering::SeqCst);
        status.with_context(|| format!("waiting for `{}`", self.display()))
    }

    /// Echoes and runs the command with inherited stdio; returns its status.
    pub fn status(&self) -> Result<ExitStatus> {
        self.announce();
        self.wait(self.command())
    }

    /// Like [`Cmd::status`] but a non-zero exit is an error.
    pub fn run(&self) -> Result<()> {
        let status = self.status()?;
        check(self, status)
    }

    /// Echoes and runs the command; stderr is inherited, each stdout line
    /// goes to `on_line` (without its newline). Returns the exit status.
    pub fn run_lines(&self, mut on_line: impl FnMut(&str)) -> Result<ExitStatus> {
        self.announce();
        let mut command = self.command();
        command.stdout(Stdio::piped());
        let mut child = command.spawn().with_context(|| format!("starting `{}`", self.display()))?;
        CHILD.store(i32::try_from(child.id()).unwrap_or(0), Ordering::SeqCst);
        let read = child.stdout.take().map(|stdout| {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        on_line(line.trim_end_matches(['\n', '\r']));
                    }
                    Err(e) => break Err(e),
                }
            }
        });
        let status = child.wait();
        CHILD.store(0, Ordering::SeqCst);
        if let Some(read) = read {
            read.with_context(|| format!("reading the output of `{}`", self.display()))?;
        }
        status.with_context(|| format!("waiting for `{}`", self.display()))
    }

    /// Runs a read-only probe quietly: its trimmed stdout when it starts and
    /// exits 0, None otherwise (missing program, failure).
    pub fn probe(&self) -> Option<String> {
        let mut command = self.command();
        command.stdin(Stdio::null()).stderr(Stdio::null());
        let output = command.output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Echoes the command and returns its stdout whatever its exit status
    /// (None when it cannot start).
    pub fn stdout_lenient(&self) -> Option<String> {
        self.announce();
        let mut command = self.command();
        command.stdin(Stdio::null()).stderr(Stdio::null());
        let output = command.output().ok()?;
        Some(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Like [`Cmd::probe`] but echoed first, for probes worth showing.
    pub fn probe_loud(&self) -> Option<String> {
        self.announce();
        self.probe()
    }
}

/// Writes a line to stdout; a closed stdout (`| head`) is not an error.
pub fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Turns a non-zero status into an error naming the command.
pub fn check(cmd: &Cmd, status: ExitStatus) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    bail!("`{}` failed: {}", cmd.display(), status)
}

/// Quotes `word` for a POSIX shell when it needs it.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=+,@%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Where `program` would be found: PATH, then the sbin directories a
/// non-root PATH often lacks (nginx lives in /usr/sbin).
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_and_protects_the_rest() {
        assert_eq!(quote("build-std=core"), "build-std=core");
        assert_eq!(quote("/usr/lib/llvm-22/bin:$PATH"), "'/usr/lib/llvm-22/bin:$PATH'");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn display_shows_env_and_directory() {
        let cmd = Cmd::new("cargo").args(["build", "--release"]).env("RUSTC_BOOTSTRAP", "1").cwd("/repo/ebpf dir");
        assert_eq!(cmd.display(), "(cd '/repo/ebpf dir' && RUSTC_BOOTSTRAP=1 cargo build --release)");
    }

    #[test]
    fn path_prepend_reaches_the_child_and_shows_symbolically() {
        let cmd = Cmd::new("sh").args(["-c", "echo \"$PATH\""]).path_prepend("/opt/xtask-a");
        assert_eq!(cmd.display(), "PATH=/opt/xtask-a:$PATH sh -c 'echo \"$PATH\"'");
        let path = cmd.probe().unwrap();
        assert!(path.starts_with("/opt/xtask-a:"), "{path}");
        assert!(path.len() > "/opt/xtask-a:".len(), "inherited PATH kept: {path}");
    }

    #[test]
    fn failure_names_command_and_status() {
        let cmd = Cmd::new("sh").args(["-c", "exit 3"]);
        let err = cmd.run().unwrap_err().to_string();
        assert!(err.contains("`sh -c 'exit 3'` failed"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
    }

    #[test]
    fn exit_codes_follow_shell_conventions() {
        let status = Cmd::new("sh").args(["-c", "exit 7"]).status().unwrap();
        assert_eq!(exit_code(status), 7);
        let status = Cmd::new("sh").args(["-c", "kill -TERM $$"]).status().unwrap();
        assert_eq!(exit_code(status), 128 + libc::SIGTERM);
    }

    #[test]
    fn run_lines_sees_every_stdout_line_and_env() {
        let mut lines = Vec::new();
        let status = Cmd::new("sh")
            .args(["-c", "echo one; printf 'two: %s\\n' \"$X\"; printf 'no newline'"])
            .env("X", "x value")
            .run_lines(|l| lines.push(l.to_owned()))
            .unwrap();
        assert!(status.success());
        assert_eq!(lines, ["one", "two: x value", "no newline"]);
    }

    #[test]
    fn probe_is_none_for_missing_programs_and_failures() {
        assert_eq!(Cmd::new("/nonexistent/program").probe(), None);
        assert_eq!(Cmd::new("sh").args(["-c", "echo out; exit 1"]).probe(), None);
        assert_eq!(Cmd::new("sh").args(["-c", "echo ' out '"]).probe().as_deref(), Some("out"));
    }

    #[test]
    fn find_program_checks_executability() {
        assert!(find_program("sh").is_some());
        let plain = std::env::temp_dir().join(format!("xtask-notexec-{}", std::process::id()));
        std::fs::write(&plain, "data").unwrap();
        assert_eq!(find_program(&plain.to_string_lossy()), None);
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(find_program("surely-not-a-program-xyz"), None);
    }
}

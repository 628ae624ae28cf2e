//! The guest side: an initramfs holding busybox, the agent, this xtask
//! binary (the HTTP server) and the libraries they load; the /init script
//! that runs the agent and prints what happened between markers; booting a
//! kernel with it under qemu (TCG: KVM is not available everywhere).
use std::{
    collections::BTreeSet,
    fs,
    io::{Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::python::{self, APP};
use crate::cmd::{self, Cmd};

/// Lines the guest prints start with this, so the host can pick them out of
/// whatever else reaches the serial console.
pub const MARK: &str = "@@wk ";
/// The path the client requests; the query must not reach any span.
pub const PATH: &str = "/matrix/hello";
const PORT: u16 = 8080;
/// The Python service's port.
const PY_PORT: u16 = 8081;
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "mount", "ip", "sleep", "grep", "cat", "kill", "wget", "poweroff", "uname", "echo", "mkdir", "cut", "test",
    "tr",
];
/// curl in the guest, for the response-header check's `curl -D`.
const CURL: &str = "/usr/bin/curl";

/// How a guest differs from a plain boot: a host feature the agent must do
/// without, taken away by /init (`wk.variant=` on the kernel command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Plain,
    /// /sys/kernel/btf hidden under an empty tmpfs.
    NoBtf,
    /// A cgroup-v1 hierarchy at /sys/fs/cgroup and no cgroup2 mount.
    CgroupV1,
}

impl Variant {
    fn flag(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::NoBtf => "nobtf",
            Variant::CgroupV1 => "cgroup1",
        }
    }

    /// Shown after the kernel release in the table.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Plain => "",
            Variant::NoBtf => ", BTF hidden",
            Variant::CgroupV1 => ", cgroup v1 only",
        }
    }
}

/// /init: mounts what the agent needs, starts it, waits for "waggle ready",
/// starts the server, makes one request, stops the agent with SIGINT and
/// prints its spans (stdout) and logs (stderr) between markers.
fn init_script() -> String {
    format!(
        r#"#!/bin/sh
export PATH=/bin
m() {{ mount -t "$1" "$1" "$2" || echo "{MARK}mount-failed $1 $2"; }}
m proc /proc
m sysfs /sys
m devtmpfs /dev
m tmpfs /tmp
m tracefs /sys/kernel/tracing
m debugfs /sys/kernel/debug
m bpf /sys/fs/bpf
variant=plain
# curl -D of one response: a marked line with curl's exit code, the
# traceresponse and X-Trace-Id lines it got, the first of them (name:value,
# lowercase) and whether the body is $3.
fetch() {{
  curl -sS -D /tmp/head -o /tmp/body "$2"
  rc=$?
  n=$(grep -ci '^traceresponse:' /tmp/head)
  x=$(grep -ci '^x-trace-id:' /tmp/head)
  v=$(grep -i -e '^traceresponse:' -e '^x-trace-id:' /tmp/head | head -n 1 | tr -d ' \r' | tr 'A-Z' 'a-z')
  same=differs
  [ "$(cat /tmp/body)" = "$3" ] && same=same
  echo "{MARK}curl-resp $1 $rc $n $x ${{v:--}} $same"
}}
for word in $(cat /proc/cmdline); do
  case "$word" in wk.variant=*) variant="${{word#wk.variant=}}";; esac
done
if [ "$variant" = cgroup1 ]; then
  # What a cgroup-v1 host has: v1 hierarchies under a tmpfs, no cgroup2.
  mount -t tmpfs tmpfs /sys/fs/cgroup
  mkdir /sys/fs/cgroup/systemd
  mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd || echo "{MARK}mount-failed cgroup1"
else
  m cgroup2 /sys/fs/cgroup
fi
if [ "$variant" = nobtf ]; then
  mount -t tmpfs tmpfs /sys/kernel/btf || echo "{MARK}mount-failed nobtf"
fi
echo "{MARK}variant $variant"
ip link set lo up
echo "{MARK}kernel $(uname -r)"
echo "{MARK}booted $(cut -d' ' -f1 /proc/uptime)"
# --trace-response-header is on where sockops attaches and the FIONREAD
# check passes; elsewhere its one log line says why it is off. Globally
# traceresponse; an include rule gives the xtask server X-Trace-Id (the
# mode rides in each process's verdict).
waggle --print json --trace-response-header traceresponse \
  --trace-include 'exe=*/xtask&trace_response_header=x-trace-id;exe=*' >/tmp/spans 2>/tmp/log &
agent=$!
ready=no
i=0
while [ $i -lt 900 ]; do
  if grep -q "waggle ready" /tmp/log; then ready=yes; break; fi
  kill -0 $agent 2>/dev/null || break
  sleep 0.1
  i=$((i+1))
done
echo "{MARK}ready $ready $(cut -d' ' -f1 /proc/uptime)"
# An agent still loading after the budget is stopped, so its log shows how far it got.
[ $ready = yes ] || kill -KILL $agent 2>/dev/null
if [ $ready = yes ]; then
  xtask guest-http-server {PORT} /tmp/listening &
  server=$!
  i=0
  while [ ! -e /tmp/listening ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  wget -q -O /tmp/body "http://127.0.0.1:{PORT}{PATH}?secret=1"
  echo "{MARK}wget-exit $? $(cat /tmp/body)"
  # --trace-response-header: one keep-alive connection of hostile-but-legal
  # responses; bytes checked, inserted lines reported (responses.rs).
  xtask guest-http-check {PORT}
  echo "{MARK}check-exit $?"
  # And what a user would run: curl -D, against this server and a Python
  # service (python.rs), each request on a connection of its own.
  fetch "xtask-fixed" "http://127.0.0.1:{PORT}/r/fixed" fixed
  /usr/bin/python3.11 -I -S /{APP} {PY_PORT} /tmp/py-listening &
  py=$!
  i=0
  while [ ! -e /tmp/py-listening ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  fetch "py-fixed" "http://127.0.0.1:{PY_PORT}/py/fixed" python
  fetch "py-own" "http://127.0.0.1:{PY_PORT}/py/own" python
  kill $py
  # Give the agent a drain tick before stopping it (it flushes anyway).
  sleep 1
  kill -INT $agent
  kill $server
fi
wait $agent
echo "{MARK}agent-exit $?"
echo "{MARK}spans-begin"
cat /tmp/spans
echo "{MARK}spans-end"
echo "{MARK}log-begin"
cat /tmp/log
echo "{MARK}log-end"
poweroff -f
"#
    )
}

/// A `newc` cpio archive, which the kernel unpacks as its initramfs.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let name_len = path.len() + 1;
        let fields = [self.ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name_len as u32, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// `path` (no leading slash) and every directory above it.
    pub fn dir(&mut self, path: &str) {
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if self.dirs.insert(at.clone()) {
                let name = at.clone();
                self.entry(&name, 0o040755, &[]);
            }
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    pub fn file(&mut self, path: &str, data: &[u8], perm: u32) {
        self.parent(path);
        self.entry(path, 0o100000 | perm, data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(path, 0o120777, target.as_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// Shared libraries (and the loader) `ldd` lists for `bin`.
pub fn ldd_paths(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

/// A stripped copy of `bin` (debug info would triple the image), or the
/// binary itself when strip is missing or fails.
fn stripped(bin: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let copy = scratch.join(bin.file_name().context("binary without a name")?);
    fs::copy(bin, &copy).with_context(|| format!("copying {}", bin.display()))?;
    if cmd::find_program("strip").is_some() && Cmd::new("strip").arg(&copy).probe().is_some() {
        return Ok(fs::read(&copy)?);
    }
    Ok(fs::read(bin)?)
}

fn ldd(bin: &Path) -> Result<String> {
    Cmd::new("ldd").arg(bin).probe().with_context(|| format!("`ldd {}` failed", bin.display()))
}

/// Writes the initramfs to `dir/initramfs.cpio` and returns its path.
pub fn initramfs(dir: &Path, agent: &Path, xtask: &Path) -> Result<PathBuf> {
    let scratch = dir.join("scratch");
    fs::create_dir_all(&scratch)?;
    let mut cpio = Cpio::default();
    for d in ["proc", "sys", "dev", "tmp"] {
        cpio.dir(d);
    }
    cpio.file("init", init_script().as_bytes(), 0o755);
    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX} (package busybox-static)"))?;
    cpio.file("bin/busybox", &busybox, 0o755);
    for applet in APPLETS {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    let mut libs = BTreeSet::new();
    for (name, bin) in [("waggle", agent), ("xtask", xtask), ("curl", Path::new(CURL))] {
        cpio.file(&format!("bin/{name}"), &stripped(bin, &scratch)?, 0o755);
        libs.extend(ldd_paths(&ldd(bin)?));
    }
    // The Python service: the interpreter where it finds its library, the
    // bytecode of the modules it imports, and the app.
    let interpreter = Path::new(python::PYTHON);
    cpio.file(python::PYTHON.trim_start_matches('/'), &stripped(interpreter, &scratch)?, 0o755);
    libs.extend(ldd_paths(&ldd(interpreter)?));
    for (guest, host) in python::library_files(&scratch)? {
        let data = fs::read(&host).with_context(|| format!("reading {host}"))?;
        cpio.file(&guest, &data, 0o644);
        if host.ends_with(".so") {
            libs.extend(ldd_paths(&ldd(Path::new(&host))?));
        }
    }
    cpio.file(APP, python::app().as_bytes(), 0o644);
    for lib in &libs {
        let data = fs::read(lib).with_context(|| format!("reading {lib}"))?;
        cpio.file(lib.trim_start_matches('/'), &data, 0o755);
    }
    let _ = fs::remove_dir_all(&scratch);
    let path = dir.join("initramfs.cpio");
    fs::write(&path, cpio.finish())?;
    Ok(path)
}

/// What a boot printed on its serial console, and how long it took.
pub struct Boot {
    pub console: String,
    pub seconds: f64,
    pub timed_out: bool,
}

/// Boots `vmlinuz` with `initramfs` and returns its console output; the
/// guest powers itself off, `timeout` ends a hung one.
pub fn boot(vmlinuz: &Path, initramfs: &Path, variant: Variant, log: &Path, timeout: Duration) -> Result<Boot> {
    let args = qemu_args(vmlinuz, initramfs, variant);
    let shown: Vec<String> = args.iter().map(|a| cmd::quote(&a.to_string_lossy())).collect();
    eprintln!("$ qemu-system-x86_64 {}", shown.join(" "));
    let started = Instant::now();
    let out = fs::File::create(log)?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let seconds = started.elapsed().as_secs_f64();
    let console = String::from_utf8_lossy(&fs::read(log)?).into_owned();
    Ok(Boot { console, seconds, timed_out })
}

/// TCG (KVM hangs at boot on some hosts), one CPU, 1 GiB; the kernel's
/// console on the serial port, which -nographic puts on stdout.
fn qemu_args(vmlinuz: &Path, initramfs: &Path, variant: Variant) -> Vec<std::ffi::OsString> {
    let fixed = ["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1", "-nographic", "-no-reboot", "-kernel"];
    let mut args: Vec<std::ffi::OsString> = fixed.iter().map(Into::into).collect();
    args.push(vmlinuz.into());
    args.push("-initrd".into());
    args.push(initramfs.into());
    args.push("-append".into());
    args.push(format!("console=ttyS0 panic=-1 rdinit=/init quiet loglevel=1 wk.variant={}", variant.flag()).into());
    args
}

/// The guest's HTTP server (`xtask guest-http-server PORT READY_FILE`): one
/// thread, no fork. The response-header check's paths get their answers
/// (`responses::answer`) on a keep-alive connection; anything else gets 200
/// with a short body and the connection is closed. Creates READY_FILE once
/// listening. Not busybox httpd: it accepts, then forks, and its child
/// reads the request before the agent has copied the parent's connection
/// to the child (userspace does that on the fork event), so its SERVER
/// spans are lost on every kernel; that gap is not what this matrix
/// measures.
pub fn http_server(port: u16, ready: &Path) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("binding port {port}"))?;
    fs::write(ready, b"")?;
    for stream in listener.incoming() {
        serve(stream?)?;
    }
    bail!("the listener stopped accepting")
}

fn serve(mut stream: std::net::TcpStream) -> Result<()> {
    let mut pending = Vec::new();
    loop {
        let mut buf = [0u8; 1024];
        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
            continue;
        };
        let request = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end + 4);
        let mut words = request.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if let Some(writes) = super::responses::answer(method, path) {
            for w in writes {
                stream.write_all(&w)?;
            }
            continue;
        }
        let body = "hello\n";
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes())?;
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_loader() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f66)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f66)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f66)\n";
        assert_eq!(
            ldd_paths(ldd),
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
        );
    }

    #[test]
    fn cpio_entries_are_aligned_and_parents_come_first() {
        let mut cpio = Cpio::default();
        cpio.file("lib/x86_64-linux-gnu/libc.so.6", b"abc", 0o755);
        cpio.symlink("bin/sh", "busybox");
        let out = cpio.finish();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let names: Vec<&str> = ["lib\0", "lib/x86_64-linux-gnu\0", "lib/x86_64-linux-gnu/libc.so.6\0", "bin\0"]
            .into_iter()
            .filter(|n| text.contains(n))
            .collect();
        assert_eq!(names.len(), 4, "{text}");
        assert!(text.find("lib\0").unwrap() < text.find("libc.so.6\0").unwrap());
        assert!(text.contains("TRAILER!!!\0"));
        // Every header starts with the newc magic.
        assert!(out.starts_with(b"070701"));
    }

    #[test]
    fn init_script_marks_every_report() {
        let script = init_script();
        for what in ["kernel", "variant", "ready", "agent-exit", "spans-begin", "spans-end", "log-begin", "log-end"] {
            assert!(script.contains(&format!("{MARK}{what}")), "{what}");
        }
        assert!(script.contains("poweroff -f"));
    }
}

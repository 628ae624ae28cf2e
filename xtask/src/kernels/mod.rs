//! `cargo xtask kernels`: the kernel matrix. Boots each kernel of
//! [`KERNELS`] from Debian's archive under qemu (TCG) with an initramfs
//! holding the agent; the guest runs the agent, makes one HTTP request and
//! prints the agent's spans and logs on the serial console; the host checks
//! each kernel against its [`Expect`]ation, so a change in behaviour on any
//! kernel fails the run. Kernel packages and images are cached under
//! target/kernels/. `--update-readme` rewrites the README's support table
//! from the run.
mod fetch;
pub mod guest;
mod python;
pub mod responses;
mod verdict;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use self::verdict::{judge, observe, parse_console, Observed, Report};
pub use self::{guest::Variant, verdict::Expect};
use crate::{
    build::Built,
    cmd,
    setup::{self, Apt},
    test::{missing_packages, Dep},
};

/// A kernel of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Short name (`--only`), also the name of its console log.
    pub name: &'static str,
    /// The image's cache directory: variants share their kernel's image.
    pub image: &'static str,
    /// How the guest differs from a plain boot.
    pub variant: Variant,
    /// Debian suite whose archive (with its -security) holds it.
    pub suite: &'static str,
    /// Meta-package naming the current image package.
    pub meta: &'static str,
    pub expect: Expect,
}

/// The matrix. Expectations are what the agent does on each kernel today:
/// update them (and the README, `--update-readme`) when that changes.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        image: "5.10",
        variant: Variant::Plain,
        suite: "bullseye",
        meta: "linux-image-cloud-amd64",
        // No bpf_loop (5.17+): the reduced mode's programs (bounded loops)
        // run; nothing is injected, and FastCGI params are not walked.
        expect: Expect::Spans {
            skipped: &["fastcgi_params", "waggle_exec_env", "waggle_sk_msg", "waggle_sockops"],
            linked: false,
            reduced: true,
            response_header: false,
        },
    },
    Kernel {
        name: "6.1",
        image: "6.1",
        variant: Variant::Plain,
        suite: "bookworm",
        meta: "linux-image-cloud-amd64",
        // sockops cannot tell which process connects before 6.10: no
        // traceparent is injected, the two spans are separate traces.
        expect: Expect::Spans { skipped: &["waggle_sockops"], linked: false, reduced: false, response_header: false },
    },
    Kernel {
        name: "6.12",
        image: "6.12",
        variant: Variant::Plain,
        suite: "bookworm",
        meta: "linux-image-6.12-cloud-amd64",
        // 6.12.117 answers FIONREAD right for sockets in a sockmap: the
        // response header is on (6.18.14+ and 6.12.75+ with the tcp_bpf
        // change misreport it; the agent checks, not the version).
        expect: Expect::Spans { skipped: &[], linked: true, reduced: false, response_header: true },
    },
    // Without the kernel's BTF the socket field offsets are unknown: the
    // agent looks addresses up itself and propagation turns itself off; the
    // environment's bounds are unknown too, so OTEL_* comes from /proc only.
    Kernel {
        name: "6.12-no-btf",
        image: "6.12",
        variant: Variant::NoBtf,
        suite: "bookworm",
        meta: "linux-image-6.12-cloud-amd64",
        expect: Expect::Spans {
            skipped: &["waggle_exec_env", "waggle_sk_msg", "waggle_sockops"],
            linked: false,
            reduced: false,
            response_header: false,
        },
    },
    // A cgroup-v1 host: sockops has no cgroup-v2 hierarchy to attach to.
    Kernel {
        name: "6.12-cgroup1",
        image: "6.12",
        variant: Variant::CgroupV1,
        suite: "bookworm",
        meta: "linux-image-6.12-cloud-amd64",
        expect: Expect::Spans { skipped: &["waggle_sockops"], linked: false, reduced: false, response_header: false },
    },
];

/// What the matrix needs from the host besides apt and dpkg-deb.
pub const KERNEL_DEPS: &[Dep] = &[
    Dep { packages: &["qemu-system-x86"], command: Some("qemu-system-x86_64") },
    // Static: it runs in the guest, which has no libraries of its own.
    Dep { packages: &["busybox-static"], command: None },
    Dep { packages: &["binutils"], command: Some("strip") },
    // Copied into the guest with its libraries (the response-header check).
    Dep { packages: &["curl"], command: Some("curl") },
    // Debian's interpreter and compiled standard library (python.rs).
    Dep { packages: &["python3.11"], command: Some("python3.11") },
];

/// A hung guest is killed after this long (a boot takes ~15 s under TCG).
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const README_BEGIN: &str = "<!-- kernels:begin (cargo xtask kernels --update-readme) -->";
const README_END: &str = "<!-- kernels:end -->";

#[derive(Clone, Debug, Default, clap::Args)]
pub struct KernelsArgs {
    /// Only these kernels (by name, e.g. `--only 6.1`); repeatable.
    #[arg(long)]
    pub only: Vec<String>,
    /// Rewrite the README's "Kernel support" table from this run.
    #[arg(long)]
    pub update_readme: bool,
}

/// One kernel's result.
#[derive(Debug)]
pub struct Outcome {
    pub kernel: Kernel,
    pub deb: String,
    pub report: Report,
    pub seen: Observed,
    pub seconds: f64,
    pub verdict: Result<(), String>,
}

pub fn ensure_deps(apt: &mut Apt) -> Result<()> {
    let names: Vec<&str> = KERNEL_DEPS.iter().flat_map(|d| d.packages.iter().copied()).collect();
    let installed = setup::installed_packages(&names);
    let missing = missing_packages(KERNEL_DEPS, |p| installed.contains(p), |c| cmd::find_program(c).is_some());
    if missing.is_empty() {
        return Ok(());
    }
    if !(cmd::is_root() && cmd::find_program("apt-get").is_some()) {
        bail!("the kernel matrix needs {}: sudo apt-get install -y {}", missing.join(" "), missing.join(" "));
    }
    apt.install(&missing)
}

/// Runs the matrix; Err only when it could not run at all (a failing
/// kernel is an `Outcome` with an Err verdict).
pub fn run(root: &Path, built: &Built, apt: &mut Apt, args: &KernelsArgs) -> Result<Vec<Outcome>> {
    ensure_deps(apt)?;
    let kernels: Vec<Kernel> =
        KERNELS.iter().filter(|k| args.only.is_empty() || args.only.iter().any(|o| o == k.name)).copied().collect();
    if kernels.is_empty() {
        let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        bail!("no kernel named {:?}; the matrix has {}", args.only, names.join(", "));
    }
    let dir = cache_dir(root);
    fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let initramfs = guest::initramfs(&dir, &built.agent_bin, &xtask)?;
    let mut outcomes = Vec::new();
    for kernel in kernels {
        let image = fetch::image(&dir, kernel.image, kernel.suite, kernel.meta)
            .with_context(|| format!("fetching kernel {}", kernel.name))?;
        let log_dir = dir.join("logs");
        fs::create_dir_all(&log_dir)?;
        let log = log_dir.join(format!("{}.console.log", kernel.name));
        let boot = guest::boot(&image.vmlinuz, &initramfs, kernel.variant, &log, BOOT_TIMEOUT)?;
        let report = parse_console(&boot.console);
        let seen = observe(&report);
        let verdict = if boot.timed_out {
            Err(format!("timed out after {} s (console: {})", BOOT_TIMEOUT.as_secs(), log.display()))
        } else {
            judge(kernel.expect, &report, &seen)
        };
        let outcome = Outcome { kernel, deb: image.deb, report, seen, seconds: boot.seconds, verdict };
        cmd::out(&one_line(&outcome));
        if outcome.verdict.is_err() {
            eprintln!("xtask: kernel {}: console in {}", kernel.name, log.display());
        }
        outcomes.push(outcome);
    }
    let table = table(&outcomes);
    fs::write(dir.join("support.md"), &table)?;
    let passed = outcomes.iter().filter(|o| o.verdict.is_ok()).count();
    cmd::out(&format!(
        "kernels: {passed} of {} as expected in {:.0} s (table: {})",
        outcomes.len(),
        started.elapsed().as_secs_f64(),
        dir.join("support.md").display()
    ));
    if args.update_readme {
        update_readme(&root.join("README.md"), &table)?;
    }
    Ok(outcomes)
}

/// Fails when any kernel did not do what it is expected to.
pub fn check(outcomes: &[Outcome]) -> Result<()> {
    let failed: Vec<&str> = outcomes.iter().filter(|o| o.verdict.is_err()).map(|o| o.kernel.name).collect();
    if !failed.is_empty() {
        bail!("kernel matrix: unexpected behaviour on {}", failed.join(", "));
    }
    Ok(())
}

fn one_line(o: &Outcome) -> String {
    let release = o.report.release.as_deref().unwrap_or("?");
    let what = match (&o.kernel.expect, &o.seen.refusal) {
        (_, Some(refusal)) if !o.report.ready => format!("refused: {refusal}"),
        _ => format!(
            "{} attached, {} skipped, spans {}",
            o.seen.attached.len(),
            o.seen.skipped.len(),
            if o.seen.server_span && o.seen.client_span { "ok" } else { "missing" }
        ),
    };
    match &o.verdict {
        Ok(()) => format!("kernel {} ({release}): ok: {what} ({:.1} s)", o.kernel.name, o.seconds),
        Err(e) => format!("kernel {} ({release}): FAILED: {e}; {what} ({:.1} s)", o.kernel.name, o.seconds),
    }
}

/// The README's support table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut text = String::from(
        "| kernel | Debian package | agent | attached | skipped (why) | HTTP spans | response header | boot + run under TCG |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for o in outcomes {
        let release = format!("{}{}", o.report.release.as_deref().unwrap_or("?"), o.kernel.variant.label());
        let total = o.seen.attached.len() + o.seen.skipped.len();
        let response_header = if o.seen.response_header_on {
            "on: inserted as expected, every response byte-identical otherwise".to_owned()
        } else {
            match &o.seen.response_header_off {
                Some(why) => format!("off: {}", why.split(';').next().unwrap_or(why)),
                None => "-".to_owned(),
            }
        };
        let (agent, attached, skipped, spans) = match (&o.seen.refusal, o.report.ready) {
            (Some(refusal), false) => {
                let why = refusal.rsplit(": ").next().unwrap_or(refusal);
                (format!("refuses to start: {why}"), "-".to_owned(), "-".to_owned(), "-".to_owned())
            }
            _ => {
                let skipped = if o.seen.skipped.is_empty() { "none".to_owned() } else { skipped_cell(&o.seen.skipped) };
                let spans = match (o.seen.server_span, o.seen.client_span) {
                    (true, true) if o.seen.linked => "SERVER + CLIENT ok, one trace (traceparent injected)",
                    (true, true) => "SERVER + CLIENT ok, separate traces (no injection)",
                    (true, false) => "SERVER only",
                    (false, true) => "CLIENT only",
                    (false, false) => "none",
                };
                let agent = if o.seen.reduced { "loads, reduced mode (no bpf_loop)" } else { "loads" };
                (agent.to_owned(), format!("{} of {total}", o.seen.attached.len()), skipped, spans.to_owned())
            }
        };
        let deb = o.deb.trim_end_matches("_amd64.deb");
        text.push_str(&format!(
            "| {release} | `{deb}` | {agent} | {attached} | {skipped} | {spans} | {response_header} | {:.0} s |\n",
            o.seconds
        ));
    }
    text
}

/// Skipped programs with their reasons, programs skipped for the same
/// reason named together.
fn skipped_cell(skipped: &[(String, String)]) -> String {
    let mut groups: Vec<(Vec<&str>, &str)> = Vec::new();
    for (program, why) in skipped {
        match groups.iter_mut().find(|(_, w)| *w == why) {
            Some((programs, _)) => programs.push(program),
            None => groups.push((vec![program], why)),
        }
    }
    let cells: Vec<String> = groups
        .iter()
        .map(|(programs, why)| {
            let names: Vec<String> = programs.iter().map(|p| format!("`{p}`")).collect();
            format!("{}: {why}", names.join(", "))
        })
        .collect();
    cells.join("; ")
}

fn update_readme(readme: &Path, table: &str) -> Result<()> {
    let text = fs::read_to_string(readme)?;
    let (Some(begin), Some(end)) = (text.find(README_BEGIN), text.find(README_END)) else {
        bail!("{} has no {README_BEGIN} ... {README_END} block", readme.display());
    };
    let updated = format!("{}{README_BEGIN}\n{table}{}", &text[..begin], &text[end..]);
    fs::write(readme, updated)?;
    eprintln!("xtask: updated the kernel support table in {}", readme.display());
    Ok(())
}

/// Where the matrix keeps its files.
pub fn cache_dir(root: &Path) -> PathBuf {
    root.join("target").join("kernels")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_skipped_for_one_reason_share_a_cell() {
        let skipped = [("a", "no BTF"), ("b", "no BTF"), ("c", "6.10+")].map(|(p, w)| (p.to_owned(), w.to_owned()));
        assert_eq!(skipped_cell(&skipped), "`a`, `b`: no BTF; `c`: 6.10+");
    }

    #[test]
    fn kernel_names_are_unique_and_every_dep_names_a_package() {
        let mut names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KERNELS.len());
        assert!(KERNEL_DEPS.iter().all(|d| !d.packages.is_empty()));
    }
}

//! The profile: saturated nginx with waggle, per-program kernel time from
//! bpf_stats (programs found by id via /proc/PID/fdinfo and bpftool) and a
//! perf profile of the agent's userspace.
use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use super::{
    ctx::Ctx,
    load,
    procs::Proc,
    scenarios::{Nginx, NGINX_WRK_CONNECTIONS, NGINX_WRK_THREADS},
};

#[derive(Clone, Debug, Default)]
pub struct BpfProgStat {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub seconds: f64,
    pub rps: f64,
    /// Kernel side: per waggle program, over the window (bpf_stats_enabled).
    pub bpf: Vec<BpfProgStat>,
    /// Userspace side: `perf report` top symbols of the agent (percent, symbol).
    pub perf_top: Vec<(f64, String)>,
    /// The agent's own functions by inclusive time (percent, function),
    /// from DWARF call graphs: which stage the self time above belongs to.
    pub perf_inclusive: Vec<(f64, String)>,
    pub agent_millicores: f64,
    pub notes: Vec<String>,
}

/// Turns kernel.bpf_stats_enabled on and restores it on drop.
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let previous = fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats { previous: previous.trim().to_owned() })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.previous);
    }
}

/// `bpftool -j prog show`: every loaded program.
fn bpf_progs() -> Result<String> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool prog show failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Ids of the eBPF programs a process holds open, from
/// /proc/PID/fdinfo (`prog_id:` lines): exact even when other agents load
/// programs with the same names at the same time.
fn prog_ids_of(pid: u32) -> Result<Vec<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))?.flatten() {
        if let Ok(info) = fs::read_to_string(entry.path()) {
            ids.extend(parse_fdinfo_prog_id(&info));
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

pub fn parse_fdinfo_prog_id(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
}

/// The programs with these ids in bpftool's JSON, with their run stats.
pub fn parse_bpftool_progs(json: &str, ids: &[u64]) -> Result<Vec<BpfProgStat>> {
    let progs: serde_json::Value = serde_json::from_str(json).context("parsing bpftool's JSON")?;
    let list = progs.as_array().ok_or_else(|| anyhow!("bpftool's JSON is not a list"))?;
    Ok(list
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|p| BpfProgStat {
            name: p["name"].as_str().unwrap_or("?").to_owned(),
            run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// The agent's own functions among inclusive-time rows, once each (inlined
/// copies merged), hottest first.
pub fn waggle_frames(rows: &[(f64, String)], limit: usize) -> Vec<(f64, String)> {
    let mut out: Vec<(f64, String)> = Vec::new();
    for (pct, sym) in rows {
        let name = sym.trim_end_matches(" (inlined)").to_owned();
        let ours = name.starts_with("waggle::") || name.starts_with("<waggle::");
        if ours && !out.iter().any(|(_, n)| *n == name) {
            out.push((*pct, name));
        }
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.truncate(limit);
    out
}

/// `perf report --stdio` lines like `    12.34%  waggle  [.] symbol`.
pub fn parse_perf_report(text: &str, limit: usize) -> Vec<(f64, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (pct, rest) = line.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let symbol = rest.split_once("] ").map(|(_, s)| s).unwrap_or(rest).trim();
            // Wide symbol columns are padded and followed by `-  -` fillers.
            let symbol = symbol.split("  ").next().unwrap_or(symbol).trim();
            (!symbol.is_empty()).then(|| (pct, symbol.to_owned()))
        })
        .take(limit)
        .collect()
}

/// Saturated nginx with waggle, profiled: per-program kernel time from
/// bpf_stats, and a perf profile of the agent's userspace.
pub fn profile(ctx: &mut Ctx) -> Result<Profile> {
    let mut server = Nginx::start(ctx)?;
    let url = server.url();
    let script = ctx.bench_dir().join("wrk_report.lua");
    let mut profile = Profile { seconds: ctx.seconds, ..Default::default() };
    let stats = match BpfStats::enable() {
        Ok(s) => Some(s),
        Err(e) => {
            profile.notes.push(format!("no kernel-side stats: {e:#}"));
            None
        }
    };
    let mut a = ctx.start_agent("profile")?;
    let pid = a.pid();
    let ids = prog_ids_of(pid).unwrap_or_default();
    if ids.is_empty() {
        profile.notes.push(format!("no eBPF program ids in /proc/{pid}/fdinfo"));
    }
    let agent_progs = || bpf_progs().and_then(|j| parse_bpftool_progs(&j, &ids));
    let before = if stats.is_some() { agent_progs().unwrap_or_default() } else { Vec::new() };
    let perf_data = ctx.raw_dir.join("perf-agent.data");
    let perf = if crate::cmd::find_program("perf").is_some() {
        let mut command = Command::new("perf");
        command
            // DWARF unwinding: the release build has no frame pointers,
            // and without them allocator time cannot be attributed.
            .args(["record", "-F", "199", "--call-graph", "dwarf,16384", "-o"])
            .arg(&perf_data)
            .args(["-p", &pid.to_string(), "--", "sleep"])
            .arg(format!("{}", ctx.seconds.max(1.0)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Some(Proc::spawn("perf record", command, libc::SIGINT, None)?)
    } else {
        profile.notes.push("perf not installed: no userspace profile".into());
        None
    };
    let t0 = Instant::now();
    a.begin()?;
    let r = load::Wrk {
        url: &url,
        threads: NGINX_WRK_THREADS,
        connections: NGINX_WRK_CONNECTIONS,
        seconds: ctx.seconds,
        script: &script,
        headers: &[],
    }
    .run()?;
    a.end()?;
    let window = t0.elapsed().as_secs_f64();
    profile.rps = r.rps();
    if stats.is_some() {
        let after = agent_progs().unwrap_or_default();
        profile.bpf = after
            .into_iter()
            .map(|p| {
                let prev = before.iter().find(|b| b.name == p.name);
                BpfProgStat {
                    run_cnt: p.run_cnt.saturating_sub(prev.map_or(0, |b| b.run_cnt)),
                    run_time_ns: p.run_time_ns.saturating_sub(prev.map_or(0, |b| b.run_time_ns)),
                    name: p.name,
                }
            })
            .filter(|p| p.run_cnt > 0)
            .collect();
        profile.bpf.sort_by_key(|p| std::cmp::Reverse(p.run_time_ns));
        profile.seconds = window;
        if profile.bpf.is_empty() {
            profile.notes.push("bpftool listed no run counts for the agent's programs".into());
        }
    }
    drop(stats);
    if let Some(mut perf) = perf {
        if perf.wait_timeout(Duration::from_secs(30)).is_none() {
            perf.stop()?;
        }
        let report = |children: bool| -> Result<String, String> {
            let out = Command::new("perf")
                .args(["report", "--stdio", if children { "--children" } else { "--no-children" }])
                .args(["--sort", "symbol", "-g", "none", "--percent-limit", "1", "-i"])
                .arg(&perf_data)
                .stderr(Stdio::null())
                .output()
                .map_err(|e| format!("perf report: {e}"))?;
            if !out.status.success() {
                return Err(format!("perf report failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        match report(false) {
            Ok(text) => profile.perf_top = parse_perf_report(&text, 15),
            Err(e) => profile.notes.push(e),
        }
        match report(true) {
            Ok(text) => profile.perf_inclusive = waggle_frames(&parse_perf_report(&text, usize::MAX), 15),
            Err(e) => profile.notes.push(e),
        }
    }
    let run = a.stop()?;
    profile.agent_millicores = run.millicores();
    server.check_alive()?;
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_programs_are_picked_by_id() {
        let json = r#"[
            {"id":5,"type":"tracepoint","name":"sys_enter_read","run_time_ns":1,"run_cnt":1},
            {"id":9,"type":"tracepoint","name":"sys_exit_sendfi","run_time_ns":700,"run_cnt":7},
            {"id":10,"type":"tracepoint","name":"sys_enter_read","run_time_ns":300,"run_cnt":3},
            {"id":11,"type":"kprobe","name":"nostats"}
        ]"#;
        let progs = parse_bpftool_progs(json, &[9, 10, 11]).unwrap();
        let got: Vec<(&str, u64, u64)> = progs.iter().map(|p| (p.name.as_str(), p.run_cnt, p.run_time_ns)).collect();
        assert_eq!(got, [("sys_exit_sendfi", 7, 700), ("sys_enter_read", 3, 300), ("nostats", 0, 0)]);
        assert!(parse_bpftool_progs("{}", &[1]).is_err());

        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_jited:\t1\nprog_id:\t1446\nrun_cnt:\t0\n";
        assert_eq!(parse_fdinfo_prog_id(fdinfo), Some(1446));
        assert_eq!(parse_fdinfo_prog_id("pos:\t0\nflags:\t02\nmap_id:\t3\n"), None);
    }

    #[test]
    fn inclusive_rows_keep_the_agents_functions_once() {
        let text = "    82.45%     0.00%  [.] tokio::runtime::park::CachedParkThread::block_on\n\
                    \x20   70.74%     1.60%  [.] waggle::pipeline::Stages::handle_record\n\
                    \x20   44.68%     3.19%  [.] waggle::conntrack::ConnTracker::on_data (inlined)\n\
                    \x20   40.00%     3.19%  [.] waggle::conntrack::ConnTracker::on_data\n\
                    \x20   38.30%     3.19%  [.] <waggle::protocols::http1::Http1Parser as waggle::protocols::ProtocolParser>::on_data\n\
                    \x20    3.19%     3.19%  [.] malloc\n";
        let rows = parse_perf_report(text, usize::MAX);
        assert_eq!(rows.len(), 6);
        let ours = waggle_frames(&rows, 10);
        let names: Vec<&str> = ours.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "waggle::pipeline::Stages::handle_record",
                "waggle::conntrack::ConnTracker::on_data",
                "<waggle::protocols::http1::Http1Parser as waggle::protocols::ProtocolParser>::on_data"
            ]
        );
        assert_eq!(ours[1].0, 44.68);
    }

    #[test]
    fn perf_report_top_symbols() {
        let text = "# Samples: 1K of event 'cpu-clock'\n#\n    21.50%  [k] _raw_spin_unlock_irqrestore\n\
                    \x20    9.10%  [.] waggle::conntrack::ConnTracker::on_data                    -      -\n\n";
        let top = parse_perf_report(text, 10);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0], (21.5, "_raw_spin_unlock_irqrestore".to_owned()));
        assert_eq!(top[1].1, "waggle::conntrack::ConnTracker::on_data");
    }
}

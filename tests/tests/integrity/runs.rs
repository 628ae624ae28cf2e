//! One client's run against a fresh recording server, and its check.
use std::{fs, path::Path, process::Command, time::Duration};

use waggle_e2e::{
    env::{poll_until, tail},
    fixture, python, run_client,
    servers::NGINX_BIN,
    ClientRun,
};

use crate::{
    check_hl::check_hl,
    check_raw::{check_raw, read_logs},
    hl_plan::{curl_args, HlReq},
    raw_plan::{write_plan, Conn},
    recording::{spawn_logged, RecServer, START_TIMEOUT},
    tally::{short, Tally},
    tools::nginx_conf,
};

pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// One client's run and its check.
pub struct Outcome {
    pub client: String,
    pub tally: Tally,
    pub note: String,
}

/// Plays `conns` with raw_client.py against a fresh recording server.
pub fn run_raw(client: &'static str, conns: &[Conn], work: &Path, extra: &[&str]) -> Outcome {
    let mut server = RecServer::start(client, work);
    let plan = work.join(format!("{client}.plan"));
    let log = work.join(format!("{client}.log"));
    write_plan(&plan, conns);
    let mut cmd = Command::new(python());
    cmd.arg("-u").arg(fixture("integrity/raw_client.py")).arg(&plan).arg(&log).arg(server.port.to_string()).args(extra);
    let run = run_client(client, &mut cmd, CLIENT_TIMEOUT);
    let mut tally = Tally::default();
    if !run.status.success() {
        tally.fail("client", format!("[{client}] exited with {}: {}", run.status, run.stderr));
    }
    let recs = server.recordings();
    if log.is_file() {
        check_raw(client, conns, &read_logs(&log), recs, &mut tally);
    }
    let note = run.stdout.lines().find(|l| l.starts_with("summary ")).unwrap_or("").to_owned();
    Outcome { client: client.to_owned(), tally, note }
}

/// Sends `plan` with a high-level client run by `run(port)` against a fresh
/// recording server.
pub fn run_hl(client: &'static str, work: &Path, plan: &[HlReq], run: impl FnOnce(u16) -> ClientRun) -> Outcome {
    let mut server = RecServer::start(client, work);
    let r = run(server.port);
    let mut tally = Tally::default();
    check_client_run(client, &r, plan, &mut tally);
    check_hl(client, plan, server.recordings(), &mut tally);
    Outcome { client: client.to_owned(), tally, note: String::new() }
}

/// The client got an answer 200 for every request (curl: one status line
/// per request; the others: `done ok=N failed=0`).
pub fn check_client_run(client: &str, run: &ClientRun, plan: &[HlReq], tally: &mut Tally) {
    let n = plan.len();
    let ok = if client == "curl" || client == "nginx" {
        let codes: Vec<&str> = run.stdout.lines().map(str::trim).collect();
        for (r, code) in plan.iter().zip(&codes) {
            if *code != "200" {
                tally.fail(r.label, format!("[{client}] request {} {} was answered {code}", r.method, short(&r.path)));
            }
        }
        codes.len() == n
    } else {
        run.stdout.lines().any(|l| l.trim() == format!("done ok={n} failed=0"))
    };
    if !run.status.success() || !ok {
        tally.fail(
            "client",
            format!(
                "[{client}] the client did not get {n} answers 200 (exit {}): stdout {:?}, stderr {}",
                run.status,
                short(&run.stdout.replace('\n', " ")),
                run.stderr
            ),
        );
    }
}

pub fn curl_run(plan: &[HlReq], plan_dir: &Path, base: &str) -> ClientRun {
    let mut cmd = Command::new("curl");
    cmd.args(curl_args(plan, plan_dir, base));
    run_client("curl", &mut cmd, CLIENT_TIMEOUT)
}

/// nginx on a fresh port proxying to `upstream`, driven by curl; stopped
/// (with its upstream connections) before the recordings are read.
pub fn run_nginx(work: &Path, upstream: u16, plan: &[HlReq], plan_dir: &Path) -> ClientRun {
    let dir = work.join("nginx");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let mut last = String::new();
    for _ in 0..3 {
        let port = waggle_e2e::env::free_port();
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(&dir, port, upstream))
            .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let mut cmd = Command::new(NGINX_BIN);
        cmd.arg("-p").arg(&dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(&conf);
        let mut proc = spawn_logged("nginx", cmd, &dir.join("out"), &dir.join("err"));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut exited = None;
        let ready = poll_until(START_TIMEOUT, || {
            if waggle_e2e::env::can_connect(addr) {
                return true;
            }
            exited = proc.try_wait();
            exited.is_some()
        });
        if ready && exited.is_none() {
            let run = curl_run(plan, plan_dir, &format!("http://127.0.0.1:{port}"));
            // Dropping the process kills nginx's group: its keep-alive
            // connections to the recording server close.
            drop(proc);
            return run;
        }
        last = format!("exited {exited:?}; error.log:\n{}", tail(&dir.join("error.log"), 20));
    }
    panic!("nginx did not start: {last}");
}

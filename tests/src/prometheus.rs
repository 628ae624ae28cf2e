//! A real Prometheus (Debian's `prometheus` package) on a free 127.0.0.1
//! port with its data in a temp dir, scraping given targets every second
//! with exemplar storage on; killed by pid (with its process group) on
//! drop. Queried over its HTTP API.
use std::{
    fs::File,
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::{
    db::require_debian,
    env::{free_port, poll_until, tail, Proc},
};

pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrapes are every second; a value the agent has shows up within a few.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Prometheus {
    proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`)
    /// and waits until it is ready.
    #[track_caller]
    pub fn start(targets: &[String]) -> Prometheus {
        require_debian(PROMETHEUS_BIN, "prometheus");
        let dir = tempfile::Builder::new()
            .prefix("waggle-prometheus-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for prometheus: {e}"));
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: waggle\n    \
             scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = dir.path().join("prometheus.log");
            let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
            let err = out.try_clone().unwrap_or_else(|e| panic!("dup prometheus log: {e}"));
            let mut cmd = Command::new(PROMETHEUS_BIN);
            cmd.arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--enable-feature=exemplar-storage")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let mut proc = Proc::spawn("prometheus", &mut cmd);
            let mut exited = None;
            let ready = poll_until(READY_TIMEOUT, || {
                if get(port, "/-/ready").is_ok_and(|(status, _)| status == 200) {
                    return true;
                }
                exited = proc.try_wait();
                exited.is_some()
            });
            if ready && exited.is_none() {
                return Prometheus { proc, port, dir };
            }
            last_err = format!("exited: {exited:?}; log:\n{}", tail(&log, 30));
        }
        panic!("starting prometheus: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        tail(&self.dir.path().join("prometheus.log"), 40)
    }

    /// `GET /api/v1/<path>?<params>`: the `data` of a successful answer, or
    /// the error Prometheus gave.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", url_encode(v))).collect();
        let (status, body) = get(self.port, &format!("/api/v1/{path}?{}", query.join("&")))?;
        let json: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if json["status"] != "success" {
            return Err(format!("HTTP {status}: {} {}", json["errorType"], json["error"]));
        }
        Ok(json["data"].clone())
    }

    /// An instant query: each series' labels and value.
    #[track_caller]
    pub fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let data = self.api("query", &[("query", promql)]).unwrap_or_else(|e| panic!("query {promql}: {e}"));
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {promql}: no result array in {data}"))
            .iter()
            .map(|r| {
                let v = r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
                (r["metric"].clone(), v.unwrap_or_else(|| panic!("query {promql}: value of {r}")))
            })
            .collect()
    }

    /// The one value of a query whose result is one series (`sum(...)`),
    /// None while it has none.
    #[track_caller]
    pub fn scalar(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        assert!(result.len() <= 1, "query {promql} gave {} series: {result:?}", result.len());
        result.first().map(|(_, v)| *v)
    }

    /// Polls `promql` until its value is `want`; panics with the last value
    /// after [`QUERY_TIMEOUT`].
    #[track_caller]
    pub fn expect_value(&self, promql: &str, want: f64) {
        let deadline = Instant::now() + QUERY_TIMEOUT;
        loop {
            let got = self.scalar(promql);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: {promql} = {got:?}, want {want} (after {QUERY_TIMEOUT:?}); prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Exemplars of `promql`'s series over the last ten minutes: each with
    /// its labels (`trace_id`, `span_id`) and value.
    #[track_caller]
    pub fn exemplars(&self, promql: &str) -> Vec<(Value, f64)> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (start, end) = ((now - 600).to_string(), (now + 60).to_string());
        let data = self
            .api("query_exemplars", &[("query", promql), ("start", &start), ("end", &end)])
            .unwrap_or_else(|e| panic!("query_exemplars {promql}: {e}"));
        let mut out = Vec::new();
        for series in data.as_array().into_iter().flatten() {
            for e in series["exemplars"].as_array().into_iter().flatten() {
                let v = e["value"].as_str().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
                out.push((e["labels"].clone(), v));
            }
        }
        out
    }
}

/// Percent-encodes everything but unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One HTTP/1.0 GET (no chunked answer to decode): status and body.
fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connecting to prometheus: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("sending to prometheus: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| format!("reading prometheus' answer: {e}"))?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP head in {resp:?}"))?;
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status {head}"))?;
    Ok((status, body.to_owned()))
}

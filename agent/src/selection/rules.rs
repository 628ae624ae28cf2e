//! The trace-selection rules: parsing and matching, pure (no /proc, no
//! kernel), so every precedence rule is unit-tested.
//!
//! A rule is one or more conditions joined by `&`, all of which must hold:
//! `exe=GLOB`, `port=80,8000-8999`, `namespace=GLOB`, `container=GLOB`,
//! `label:KEY=GLOB`, `annotation:KEY=GLOB`. A list of rules (flag or
//! environment variable) separates rules with `;`. A process is traced when
//! it matches no exclude rule (the defaults included) and either there is
//! no include rule or it matches one; a pod annotated
//! `waggle.io/trace: "false"` is never traced, whatever includes it.
//!
//! An include rule may also carry `trace_response_header=MODE`: the
//! `--trace-response-header` setting of the processes it includes (the
//! first matching include rule's, else the global one), so only edge
//! services get a trace id in their responses.
use std::fmt;

use crate::model::PodFacts;

/// The per-pod opt-out annotation and the value that opts out.
pub const OPT_OUT_ANNOTATION: &str = "waggle.io/trace";
pub const OPT_OUT_VALUE: &str = "false";

/// What the default excludes leave out: the node's own daemons (by
/// executable path) and the `kube-system` namespace. The agent itself is
/// never traced (the kernel skips its tgid whatever the rules say).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "namespace=kube-system",
    "exe=*/kubelet",
    "exe=*/containerd",
    "exe=*/containerd-shim*",
    "exe=*/dockerd",
    "exe=*/docker-proxy",
    "exe=*/crio",
    "exe=*/runc",
    "exe=*/crun",
    "exe=*/conmon",
    "exe=*/systemd*",
    "exe=*/journald",
];

/// One condition of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    Exe(String),
    /// Inclusive port ranges; a process matches when it listens on any port
    /// in any range.
    Ports(Vec<(u16, u16)>),
    Namespace(String),
    Container(String),
    Label {
        key: String,
        value: String,
    },
    Annotation {
        key: String,
        value: String,
    },
}

/// `--trace-response-header`: which line (if any) goes into HTTP/1.x
/// responses of traced servers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResponseHeader {
    #[default]
    Off,
    /// `traceresponse: 00-<trace-id>-<span-id>-<flags>`.
    TraceResponse,
    /// `X-Trace-Id: <trace-id>`.
    XTraceId,
}

impl ResponseHeader {
    pub fn parse(raw: &str) -> Result<ResponseHeader, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "traceresponse" => Ok(ResponseHeader::TraceResponse),
            "x-trace-id" => Ok(ResponseHeader::XTraceId),
            "off" | "none" | "false" => Ok(ResponseHeader::Off),
            _ => Err(format!("expected traceresponse, x-trace-id or off, got {raw:?}")),
        }
    }

    /// The kernel's value (`waggle_common::http::response::mode`).
    pub fn kernel_mode(self) -> u8 {
        use waggle_common::http::response::mode;
        match self {
            ResponseHeader::Off => mode::OFF,
            ResponseHeader::TraceResponse => mode::TRACERESPONSE,
            ResponseHeader::XTraceId => mode::X_TRACE_ID,
        }
    }
}

impl fmt::Display for ResponseHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResponseHeader::Off => "off",
            ResponseHeader::TraceResponse => "traceresponse",
            ResponseHeader::XTraceId => "x-trace-id",
        })
    }
}

/// Conditions that must all hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub conditions: Vec<Condition>,
    /// `trace_response_header=MODE` of an include rule: overrides the
    /// global setting for the processes it includes.
    pub response_header: Option<ResponseHeader>,
    /// The text it was parsed from, for logs.
    pub text: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The include and exclude lists the agent runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub include: Vec<Rule>,
    pub exclude: Vec<Rule>,
}

/// What the rules know about one process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessView<'a> {
    /// `/proc/<pid>/exe`; empty when unreadable (no exe condition matches).
    pub exe: &'a str,
    /// Ports the process listens on now.
    pub ports: &'a [u16],
    /// The container id its cgroup names, if any.
    pub container_id: Option<&'a str>,
    /// Its pod, when the metadata watch knows it.
    pub pod: Option<&'a PodFacts>,
}

impl Rules {
    /// No rule at all: the kernel filter can stay off.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether the rules use listening ports (the agent then watches them).
    pub fn uses_ports(&self) -> bool {
        self.include.iter().chain(&self.exclude).flat_map(|r| &r.conditions).any(|c| matches!(c, Condition::Ports(_)))
    }

    /// True: trace the process.
    pub fn traced(&self, p: &ProcessView<'_>) -> bool {
        if let Some(pod) = p.pod {
            if pod.annotations.get(OPT_OUT_ANNOTATION).is_some_and(|v| v.trim().eq_ignore_ascii_case(OPT_OUT_VALUE)) {
                return false;
            }
        }
        if self.exclude.iter().any(|r| r.matches(p)) {
            return false;
        }
        self.include.is_empty() || self.include.iter().any(|r| r.matches(p))
    }

    /// The `--trace-response-header` setting of a traced process: that of
    /// the first include rule it matches that has one, else `global`.
    pub fn response_header(&self, p: &ProcessView<'_>, global: ResponseHeader) -> ResponseHeader {
        self.include
            .iter()
            .find(|r| r.response_header.is_some() && r.matches(p))
            .and_then(|r| r.response_header)
            .unwrap_or(global)
    }

    /// Some process may get a response header (the global setting or a rule
    /// turns it on).
    pub fn response_header_wanted(&self, global: ResponseHeader) -> bool {
        global != ResponseHeader::Off
            || self.include.iter().any(|r| r.response_header.is_some_and(|h| h != ResponseHeader::Off))
    }
}

impl Rule {
    pub fn matches(&self, p: &ProcessView<'_>) -> bool {
        self.conditions.iter().all(|c| c.matches(p))
    }
}

impl Condition {
    fn matches(&self, p: &ProcessView<'_>) -> bool {
        match self {
            Condition::Exe(g) => !p.exe.is_empty() && glob(g, p.exe),
            Condition::Ports(ranges) => {
                p.ports.iter().any(|port| ranges.iter().any(|(lo, hi)| lo <= port && port <= hi))
            }
            Condition::Namespace(g) => p.pod.is_some_and(|pod| glob(g, &pod.namespace)),
            Condition::Container(g) => match (p.pod, p.container_id) {
                (Some(pod), Some(id)) => pod.containers.get(id).is_some_and(|name| glob(g, name)),
                _ => false,
            },
            Condition::Label { key, value } => {
                p.pod.and_then(|pod| pod.labels.get(key)).is_some_and(|v| glob(value, v))
            }
            Condition::Annotation { key, value } => {
                p.pod.and_then(|pod| pod.annotations.get(key)).is_some_and(|v| glob(value, v))
            }
        }
    }
}

/// Shell-style glob: `*` matches any run of characters (`/` included, so
/// `*/nginx` matches every nginx binary), `?` exactly one.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and the text position it now stands for.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// `80,8000-8999`.
pub fn parse_ports(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let port = |v: &str| v.trim().parse::<u16>().map_err(|_| format!("invalid port {v:?} in {s:?}"));
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => (port(part)?, port(part)?),
        };
        if lo > hi {
            return Err(format!("port range {part:?} runs backwards"));
        }
        out.push((lo, hi));
    }
    Ok(out)
}

/// One rule: `cond&cond...`.
pub fn parse_rule(s: &str) -> Result<Rule, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty rule".to_owned());
    }
    let mut conditions = Vec::new();
    let mut response_header = None;
    for cond in text.split('&').map(str::trim) {
        let (key, value) = cond.split_once('=').ok_or_else(|| {
            format!("condition {cond:?} has no '=' (expected e.g. exe=/usr/sbin/nginx, port=8000-8999)")
        })?;
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            return Err(format!("condition {cond:?} has no value"));
        }
        let c = match key {
            "trace_response_header" => {
                if response_header.is_some() {
                    return Err(format!("rule {text:?} sets trace_response_header twice"));
                }
                response_header = Some(ResponseHeader::parse(value)?);
                continue;
            }
            "exe" => Condition::Exe(value.to_owned()),
            "port" | "ports" => Condition::Ports(parse_ports(value)?),
            "namespace" => Condition::Namespace(value.to_owned()),
            "container" => Condition::Container(value.to_owned()),
            _ => match key.split_once(':') {
                Some(("label", k)) if !k.is_empty() => Condition::Label { key: k.to_owned(), value: value.to_owned() },
                Some(("annotation", k)) if !k.is_empty() => {
                    Condition::Annotation { key: k.to_owned(), value: value.to_owned() }
                }
                _ => {
                    return Err(format!(
                    "unknown condition {key:?} (expected exe, port, namespace, container, label:KEY or annotation:KEY)"
                ))
                }
            },
        };
        conditions.push(c);
    }
    if conditions.is_empty() {
        return Err(format!(
            "rule {text:?} has no condition (trace_response_header=... goes with one, e.g. exe=*/nginx)"
        ));
    }
    Ok(Rule { conditions, response_header, text: text.to_owned() })
}

/// `rule;rule;...` (a flag or environment variable); empty parts are skipped.
pub fn parse_rule_list(s: &str) -> Result<Vec<Rule>, String> {
    s.split(';').filter(|r| !r.trim().is_empty()).map(parse_rule).collect()
}

/// The default excludes, parsed.
pub fn default_excludes() -> Vec<Rule> {
    DEFAULT_EXCLUDES.iter().filter_map(|r| parse_rule(r).ok()).collect()
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;

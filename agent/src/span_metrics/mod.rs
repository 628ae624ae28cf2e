//! Application metrics computed from finished spans: RED histograms with
//! the OpenTelemetry semantic conventions, Tempo-compatible span metrics
//! and a service graph, every histogram bucket with an exemplar pointing
//! at a recent span in it.
//!
//! The exporter hands each batch to [`SpanMetrics::record`], which takes
//! the one lock once per batch. Label values are looked up borrowed from
//! the span and copied only when a new series is created; each metric has
//! a series limit past which observations go to one overflow series
//! (`otel.metric.overflow="true"`), counted in
//! `waggle_metric_series_overflow_total`.
//!
//! Read out as Prometheus/OpenMetrics by [`SpanMetrics::collector`] (on
//! the agent's `/metrics`) and as OTLP by [`SpanMetrics::visit`].
mod graph;
mod otlp;
mod series;

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Instant, SystemTime},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
    registry::Unit,
};

use graph::{Edge, Link, Lost, Pairing, Side};
pub use graph::{PAIRING_CAPACITY, PAIRING_TTL};
pub use otlp::export_request;
pub use series::{Exemplar, Hist, Key, SeriesLabels, TraceRef, Val, ValRef, OVERFLOW_KEY};
use series::{SeriesTable, Slot};

use crate::{
    metrics::Metrics,
    model::{AttrValue, FinishedSpan, SpanKind, SpanStatus},
};

/// Series per metric unless configured otherwise (OTel's SDK default
/// cardinality limit).
pub const DEFAULT_MAX_SERIES: usize = 2000;

/// OTel semconv's recommended boundaries for `http.*.request.duration`.
pub const HTTP_DURATION_BOUNDS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
/// OTel semconv's recommended boundaries for `db.client.operation.duration`.
pub const DB_DURATION_BOUNDS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// Body sizes in bytes (semconv recommends none): powers of four from 0.
pub const BODY_SIZE_BOUNDS: &[f64] =
    &[0.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0];
/// Tempo's metrics-generator defaults, so its queries and dashboards fit.
pub const SPANMETRICS_BOUNDS: &[f64] =
    &[0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.02, 2.05, 4.10];
pub const SERVICE_GRAPH_BOUNDS: &[f64] = &[0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8];

const fn key(prom: &'static str, otel: &'static str) -> Key {
    Key { prom, otel }
}

/// Resource labels first in every semconv metric (absent ones are no label).
const RESOURCE_KEYS: usize = 3;

const HTTP_SERVER_KEYS: &[Key] = &[
    key("service_name", "service.name"),
    key("service_namespace", "service.namespace"),
    key("k8s_namespace_name", "k8s.namespace.name"),
    key("http_request_method", "http.request.method"),
    key("http_route", "http.route"),
    key("http_response_status_code", "http.response.status_code"),
    key("error_type", "error.type"),
    key("url_scheme", "url.scheme"),
    key("network_protocol_version", "network.protocol.version"),
];
const HTTP_CLIENT_KEYS: &[Key] = &[
    key("service_name", "service.name"),
    key("service_namespace", "service.namespace"),
    key("k8s_namespace_name", "k8s.namespace.name"),
    key("http_request_method", "http.request.method"),
    key("http_response_status_code", "http.response.status_code"),
    key("error_type", "error.type"),
    key("server_address", "server.address"),
    key("server_port", "server.port"),
    key("url_scheme", "url.scheme"),
    key("network_protocol_version", "network.protocol.version"),
];
const DB_CLIENT_KEYS: &[Key] = &[
    key("service_name", "service.name"),
    key("service_namespace", "service.namespace"),
    key("k8s_namespace_name", "k8s.namespace.name"),
    key("db_system_name", "db.system.name"),
    key("db_operation_name", "db.operation.name"),
    key("db_collection_name", "db.collection.name"),
    key("db_namespace", "db.namespace"),
    key("db_response_status_code", "db.response.status_code"),
    key("error_type", "error.type"),
    key("server_address", "server.address"),
    key("server_port", "server.port"),
];
/// Tempo's span-metrics labels (`service`, not `service_name`).
const SPANMETRICS_KEYS: &[Key] = &[
    key("service", "service.name"),
    key("span_name", "span.name"),
    key("span_kind", "span.kind"),
    key("status_code", "status.code"),
];
const SERVICE_GRAPH_KEYS: &[Key] =
    &[key("client", "client"), key("server", "server"), key("connection_type", "connection_type")];

/// Longest label list of any metric (stack space for a lookup).
const MAX_KEYS: usize = 11;

/// What a metric is, for both expositions.
#[derive(Clone, Copy, Debug)]
pub struct Describe {
    /// OTel instrument name (OTLP).
    pub otel: &'static str,
    /// Prometheus name without the unit or `_total` suffix the encoder adds.
    pub prom: &'static str,
    pub help: &'static str,
    /// UCUM unit (OTLP); Prometheus gets the matching suffix.
    pub unit: &'static str,
}

impl Describe {
    fn prom_unit(&self) -> Option<Unit> {
        match (self.unit, self.prom) {
            // Tempo's names carry no unit suffix.
            (_, p) if p.starts_with("traces_spanmetrics") => None,
            ("s", _) => Some(Unit::Seconds),
            ("By", _) => Some(Unit::Bytes),
            _ => None,
        }
    }
}

/// The metrics that share one key list share one series table, so a span
/// looks its labels up once per group instead of once per metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    HttpServer,
    HttpClient,
    Db,
    SpanMetrics,
    ServiceGraph,
}

const GROUP_KEYS: [&[Key]; 5] =
    [HTTP_SERVER_KEYS, HTTP_CLIENT_KEYS, DB_CLIENT_KEYS, SPANMETRICS_KEYS, SERVICE_GRAPH_KEYS];

/// Histograms and counters per series at most (a group's metrics each
/// take one slot).
const HIST_SLOTS: usize = 3;
const COUNTER_SLOTS: usize = 2;

/// What one label set has seen, for every metric of its group. A slot
/// stays empty until its metric observes something, so a series appears
/// in a metric only once that metric has a value for it.
#[derive(Default)]
pub struct Instruments {
    hists: [Option<Hist>; HIST_SLOTS],
    counts: [Option<u64>; COUNTER_SLOTS],
}

impl Instruments {
    fn observe(&mut self, family: &HistFamily, value: f64, trace: TraceRef, time: SystemTime) {
        self.hists[family.slot].get_or_insert_with(|| Hist::new(family.bounds)).observe(value, trace, time);
    }

    fn add(&mut self, family: &CounterFamily, n: u64) {
        *self.counts[family.slot].get_or_insert(0) += n;
    }
}

/// A histogram metric: where its values live (group and slot) and how it
/// is described.
pub struct HistFamily {
    pub describe: Describe,
    group: Group,
    slot: usize,
    bounds: &'static [f64],
}

pub struct CounterFamily {
    pub describe: Describe,
    group: Group,
    slot: usize,
}

const fn describe(otel: &'static str, prom: &'static str, help: &'static str, unit: &'static str) -> Describe {
    Describe { otel, prom, help, unit }
}

const HTTP_SERVER_DURATION: HistFamily = HistFamily {
    describe: describe(
        "http.server.request.duration",
        "http_server_request_duration",
        "Duration of HTTP server requests.",
        "s",
    ),
    group: Group::HttpServer,
    slot: 0,
    bounds: HTTP_DURATION_BOUNDS,
};
const HTTP_SERVER_REQUEST_SIZE: HistFamily = HistFamily {
    describe: describe(
        "http.server.request.body.size",
        "http_server_request_body_size",
        "Size of HTTP server request bodies.",
        "By",
    ),
    group: Group::HttpServer,
    slot: 1,
    bounds: BODY_SIZE_BOUNDS,
};
const HTTP_SERVER_RESPONSE_SIZE: HistFamily = HistFamily {
    describe: describe(
        "http.server.response.body.size",
        "http_server_response_body_size",
        "Size of HTTP server response bodies.",
        "By",
    ),
    group: Group::HttpServer,
    slot: 2,
    bounds: BODY_SIZE_BOUNDS,
};
const HTTP_CLIENT_DURATION: HistFamily = HistFamily {
    describe: describe(
        "http.client.request.duration",
        "http_client_request_duration",
        "Duration of HTTP client requests.",
        "s",
    ),
    group: Group::HttpClient,
    slot: 0,
    bounds: HTTP_DURATION_BOUNDS,
};
const HTTP_CLIENT_REQUEST_SIZE: HistFamily = HistFamily {
    describe: describe(
        "http.client.request.body.size",
        "http_client_request_body_size",
        "Size of HTTP client request bodies.",
        "By",
    ),
    group: Group::HttpClient,
    slot: 1,
    bounds: BODY_SIZE_BOUNDS,
};
const HTTP_CLIENT_RESPONSE_SIZE: HistFamily = HistFamily {
    describe: describe(
        "http.client.response.body.size",
        "http_client_response_body_size",
        "Size of HTTP client response bodies.",
        "By",
    ),
    group: Group::HttpClient,
    slot: 2,
    bounds: BODY_SIZE_BOUNDS,
};
const DB_CLIENT_DURATION: HistFamily = HistFamily {
    describe: describe(
        "db.client.operation.duration",
        "db_client_operation_duration",
        "Duration of database client operations.",
        "s",
    ),
    group: Group::Db,
    slot: 0,
    bounds: DB_DURATION_BOUNDS,
};
const SPANMETRICS_LATENCY: HistFamily = HistFamily {
    describe: describe(
        "traces.span.metrics.duration",
        "traces_spanmetrics_latency",
        "Span durations in seconds (Tempo span metrics).",
        "s",
    ),
    group: Group::SpanMetrics,
    slot: 0,
    bounds: SPANMETRICS_BOUNDS,
};
const GRAPH_SERVER_SECONDS: HistFamily = HistFamily {
    describe: describe(
        "traces.service.graph.request.server",
        "traces_service_graph_request_server",
        "Request durations as the server saw them.",
        "s",
    ),
    group: Group::ServiceGraph,
    slot: 0,
    bounds: SERVICE_GRAPH_BOUNDS,
};
const GRAPH_CLIENT_SECONDS: HistFamily = HistFamily {
    describe: describe(
        "traces.service.graph.request.client",
        "traces_service_graph_request_client",
        "Request durations as the client saw them.",
        "s",
    ),
    group: Group::ServiceGraph,
    slot: 1,
    bounds: SERVICE_GRAPH_BOUNDS,
};
const SPANMETRICS_CALLS: CounterFamily = CounterFamily {
    describe: describe(
        "traces.span.metrics.calls",
        "traces_spanmetrics_calls",
        "Spans by service, name, kind and status (Tempo span metrics).",
        "1",
    ),
    group: Group::SpanMetrics,
    slot: 0,
};
const GRAPH_REQUESTS: CounterFamily = CounterFamily {
    describe: describe(
        "traces.service.graph.request",
        "traces_service_graph_request",
        "Requests between two services, or a service and a database.",
        "1",
    ),
    group: Group::ServiceGraph,
    slot: 0,
};
const GRAPH_FAILED: CounterFamily = CounterFamily {
    describe: describe(
        "traces.service.graph.request.failed",
        "traces_service_graph_request_failed",
        "Failed requests between two services, or a service and a database.",
        "1",
    ),
    group: Group::ServiceGraph,
    slot: 1,
};

/// Every histogram, in exposition order.
static HISTOGRAMS: [HistFamily; 10] = [
    HTTP_SERVER_DURATION,
    HTTP_SERVER_REQUEST_SIZE,
    HTTP_SERVER_RESPONSE_SIZE,
    HTTP_CLIENT_DURATION,
    HTTP_CLIENT_REQUEST_SIZE,
    HTTP_CLIENT_RESPONSE_SIZE,
    DB_CLIENT_DURATION,
    SPANMETRICS_LATENCY,
    GRAPH_SERVER_SECONDS,
    GRAPH_CLIENT_SECONDS,
];
/// Every counter, in exposition order.
static COUNTERS: [CounterFamily; 3] = [SPANMETRICS_CALLS, GRAPH_REQUESTS, GRAPH_FAILED];

/// Every metric's series, under the one lock.
pub struct Families {
    groups: [SeriesTable<Instruments>; GROUP_KEYS.len()],
}

impl Families {
    fn new(limit: usize) -> Families {
        Families { groups: GROUP_KEYS.map(|keys| SeriesTable::new(keys, limit)) }
    }

    /// Histograms first, then counters, in a fixed order.
    pub fn histograms(&self) -> &'static [HistFamily] {
        &HISTOGRAMS
    }

    pub fn counters(&self) -> &'static [CounterFamily] {
        &COUNTERS
    }

    /// The instruments of `vals` in `group` (one lookup for all of the
    /// group's metrics), and whether that is the overflow series.
    fn series(&mut self, group: Group, vals: &[Option<ValRef<'_>>]) -> (&mut Instruments, bool) {
        match self.groups[group as usize].slot(vals, Instruments::default) {
            Slot::Series(i) => (i, false),
            Slot::Overflow(i) => (i, true),
        }
    }

    /// The series of one histogram that have observed something.
    pub fn hist_series(&self, family: &HistFamily) -> impl Iterator<Item = (SeriesLabels<'_>, &Hist)> {
        let slot = family.slot;
        self.groups[family.group as usize].iter().filter_map(move |(labels, i)| Some((labels, i.hists[slot].as_ref()?)))
    }

    /// The series of one counter that have been added to.
    pub fn counter_series(&self, family: &CounterFamily) -> impl Iterator<Item = (SeriesLabels<'_>, u64)> {
        let slot = family.slot;
        self.groups[family.group as usize].iter().filter_map(move |(labels, i)| Some((labels, i.counts[slot]?)))
    }
}

struct State {
    families: Families,
    pairing: Pairing,
}

/// Application metrics from spans; shared by the exporter (which records)
/// and the readers (scrapes, OTLP export).
pub struct SpanMetrics {
    state: Mutex<State>,
    counters: Arc<Metrics>,
    /// Start of the cumulative series (OTLP `start_time_unix_nano`).
    pub start: SystemTime,
}

impl std::fmt::Debug for SpanMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanMetrics").field("start", &self.start).finish_non_exhaustive()
    }
}

/// Overflow observations, per batch, for the counter.
#[derive(Default)]
struct Tally {
    overflow: u64,
}

impl Tally {
    fn note(&mut self, overflowed: bool) {
        self.overflow += u64::from(overflowed);
    }
}

fn str_of(v: &AttrValue) -> Option<ValRef<'_>> {
    match v {
        AttrValue::Str(s) => Some(ValRef::Str(s.as_str())),
        AttrValue::Int(i) => Some(ValRef::Int(*i)),
        AttrValue::Bool(_) => None,
    }
}

/// Fills `out` (one slot per key) from the span's resource and attributes
/// in one pass over each.
fn fill<'a>(span: &'a FinishedSpan, keys: &[Key], out: &mut [Option<ValRef<'a>>]) {
    out[0] = Some(ValRef::Str(span.resource.service_name.as_str()));
    for (k, v) in &span.resource.attributes {
        if let Some(i) = keys[1..RESOURCE_KEYS].iter().position(|key| key.otel == k) {
            out[i + 1] = Some(ValRef::Str(v.as_str()));
        }
    }
    for (k, v) in &span.attributes {
        if let Some(i) = keys[RESOURCE_KEYS..].iter().position(|key| key.otel == *k) {
            out[i + RESOURCE_KEYS] = str_of(v);
        }
    }
}

fn int_attr(span: &FinishedSpan, key: &str) -> Option<f64> {
    match span.attr(key) {
        Some(AttrValue::Int(i)) => Some(*i as f64),
        _ => None,
    }
}

impl SpanMetrics {
    pub fn new(max_series: usize, counters: Arc<Metrics>) -> SpanMetrics {
        SpanMetrics {
            state: Mutex::new(State {
                families: Families::new(max_series),
                pairing: Pairing::new(PAIRING_TTL, PAIRING_CAPACITY),
            }),
            counters,
            start: SystemTime::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-update leaves counts that are still counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts every span of a batch.
    pub fn record(&self, batch: &[FinishedSpan]) {
        self.record_at(batch, Instant::now());
    }

    fn record_at(&self, batch: &[FinishedSpan], now: Instant) {
        let mut tally = Tally::default();
        let mut lost = Lost::default();
        {
            let mut state = self.lock();
            let State { families, pairing } = &mut *state;
            for span in batch {
                record_span(families, pairing, span, now, &mut tally, &mut lost);
            }
            pairing.expire(now, &mut lost);
        }
        self.count(&tally, &lost);
    }

    fn count(&self, tally: &Tally, lost: &Lost) {
        Metrics::add(&self.counters.metric_series_overflow, tally.overflow);
        Metrics::add(&self.counters.service_graph_unpaired, lost.unpaired);
        Metrics::add(&self.counters.service_graph_dropped_full, lost.dropped_full);
    }

    /// Expires what waited too long for its other side (a reader calls
    /// this, so unpaired sides are counted even when no spans arrive).
    pub fn expire(&self) {
        let mut lost = Lost::default();
        self.lock().pairing.expire(Instant::now(), &mut lost);
        self.count(&Tally::default(), &lost);
    }

    /// Calls `f` with every metric, under the lock.
    pub fn visit<R>(&self, f: impl FnOnce(&Families) -> R) -> R {
        f(&self.lock().families)
    }

    /// The Prometheus collector for the agent's `/metrics`.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(PromCollector(Arc::clone(self)))
    }
}

fn record_span(
    families: &mut Families,
    pairing: &mut Pairing,
    span: &FinishedSpan,
    now: Instant,
    tally: &mut Tally,
    lost: &mut Lost,
) {
    let seconds = span.duration().as_secs_f64();
    let trace = TraceRef { trace_id: span.trace_id, span_id: span.span_id };
    let time = span.end;
    let failed = matches!(span.status, SpanStatus::Error { .. });
    let mut vals: [Option<ValRef<'_>>; MAX_KEYS] = [None; MAX_KEYS];
    let mut db_system = None;
    let mut is_http = false;
    for (k, v) in &span.attributes {
        match *k {
            "db.system.name" => db_system = str_of(v),
            "http.request.method" => is_http = true,
            _ => {}
        }
    }

    // OTel semantic-convention metrics: one lookup per span for the
    // duration and both body sizes.
    let http =
        |families: &mut Families, group, keys: &[Key], sizes: [&HistFamily; 3], vals: &mut [_], tally: &mut Tally| {
            let vals = &mut vals[..keys.len()];
            fill(span, keys, vals);
            let (series, overflowed) = families.series(group, vals);
            series.observe(sizes[0], seconds, trace, time);
            tally.note(overflowed);
            for (family, attr) in [(sizes[1], "http.request.body.size"), (sizes[2], "http.response.body.size")] {
                if let Some(size) = int_attr(span, attr) {
                    series.observe(family, size, trace, time);
                    tally.note(overflowed);
                }
            }
        };
    match (span.kind, db_system) {
        (SpanKind::Client, Some(_)) => {
            let v = &mut vals[..DB_CLIENT_KEYS.len()];
            fill(span, DB_CLIENT_KEYS, v);
            let (series, overflowed) = families.series(Group::Db, v);
            series.observe(&DB_CLIENT_DURATION, seconds, trace, time);
            tally.note(overflowed);
        }
        (SpanKind::Server, _) if is_http => http(
            families,
            Group::HttpServer,
            HTTP_SERVER_KEYS,
            [&HTTP_SERVER_DURATION, &HTTP_SERVER_REQUEST_SIZE, &HTTP_SERVER_RESPONSE_SIZE],
            &mut vals,
            tally,
        ),
        (SpanKind::Client, None) if is_http => http(
            families,
            Group::HttpClient,
            HTTP_CLIENT_KEYS,
            [&HTTP_CLIENT_DURATION, &HTTP_CLIENT_REQUEST_SIZE, &HTTP_CLIENT_RESPONSE_SIZE],
            &mut vals,
            tally,
        ),
        _ => {}
    }

    // Tempo span metrics.
    let service = span.resource.service_name.as_str();
    let kind = match span.kind {
        SpanKind::Server => "SPAN_KIND_SERVER",
        SpanKind::Client => "SPAN_KIND_CLIENT",
    };
    let status = if failed { "STATUS_CODE_ERROR" } else { "STATUS_CODE_UNSET" };
    let sm = [
        Some(ValRef::Str(service)),
        Some(ValRef::Str(span.name.as_str())),
        Some(ValRef::Str(kind)),
        Some(ValRef::Str(status)),
    ];
    let (series, overflowed) = families.series(Group::SpanMetrics, &sm);
    series.add(&SPANMETRICS_CALLS, 1);
    series.observe(&SPANMETRICS_LATENCY, seconds, trace, time);
    tally.overflow += 2 * u64::from(overflowed);

    // Service graph.
    let mut edge = |families: &mut Families, client: &str, server: &str, kind: Option<&str>, c: &Side, s: &Side| {
        let labels = [Some(ValRef::Str(client)), Some(ValRef::Str(server)), kind.map(ValRef::Str)];
        let (series, overflowed) = families.series(Group::ServiceGraph, &labels);
        series.add(&GRAPH_REQUESTS, 1);
        tally.note(overflowed);
        if c.failed || s.failed {
            series.add(&GRAPH_FAILED, 1);
            tally.note(overflowed);
        }
        series.observe(&GRAPH_CLIENT_SECONDS, c.seconds, c.trace, c.end);
        series.observe(&GRAPH_SERVER_SECONDS, s.seconds, s.trace, s.end);
        tally.overflow += 2 * u64::from(overflowed);
    };
    // A CLIENT span met its SERVER child: the edge between their services.
    let paired = |e: Edge<'_>| {
        edge(families, &e.client.resource.service_name, &e.server.resource.service_name, None, e.client, e.server)
    };
    let side = || Side { resource: Arc::clone(&span.resource), seconds, failed, trace, end: time };
    match (span.kind, db_system) {
        // A database does not report its side: the client's span stands for both.
        (SpanKind::Client, Some(ValRef::Str(system))) => {
            let s = side();
            edge(families, service, system, Some("database"), &s, &s);
        }
        (SpanKind::Client, _) => {
            pairing.offer(Link::client(&span.trace_id, &span.span_id), side(), now, lost, paired);
        }
        (SpanKind::Server, _) => {
            // A root server span has no caller we could see.
            if let Some(parent) = &span.parent_span_id {
                pairing.offer(Link::server(&span.trace_id, parent), side(), now, lost, paired);
            }
        }
    }
}

#[derive(Debug)]
struct PromCollector(Arc<SpanMetrics>);

impl Collector for PromCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.expire();
        self.0.visit(|families| {
            for family in families.histograms() {
                if families.hist_series(family).next().is_none() {
                    continue;
                }
                let d = family.describe;
                let unit = d.prom_unit();
                let mut metric = encoder.encode_descriptor(d.prom, d.help, unit.as_ref(), MetricType::Histogram)?;
                for (labels, hist) in families.hist_series(family) {
                    hist.prom().encode(metric.encode_family(&labels)?)?;
                }
            }
            for family in families.counters() {
                if families.counter_series(family).next().is_none() {
                    continue;
                }
                let d = family.describe;
                let mut metric = encoder.encode_descriptor(d.prom, d.help, None, MetricType::Counter)?;
                for (labels, value) in families.counter_series(family) {
                    ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;

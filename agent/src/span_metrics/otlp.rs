//! The metrics as one OTLP `ExportMetricsServiceRequest`: cumulative
//! histograms and sums, one `ResourceMetrics` per service (the resource
//! labels of each series), every bucket's exemplar carried along.
use std::{collections::BTreeMap, time::SystemTime};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        exemplar, metric, number_data_point, AggregationTemporality, Exemplar as OtlpExemplar, Histogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};

use super::{Describe, Families, SeriesLabels, ValRef};

/// Series labels that describe who (the resource), not what.
const RESOURCE_ATTRIBUTES: &[&str] = &["service.name", "service.namespace", "k8s.namespace.name"];
/// Resource of series that have no service of their own (the service
/// graph's edges belong to two).
const AGENT_SERVICE: &str = "waggle";
const SCOPE: &str = "waggle.span_metrics";

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

fn value(v: ValRef<'_>) -> AnyValue {
    AnyValue {
        value: Some(match v {
            ValRef::Str(s) => any_value::Value::StringValue(s.to_owned()),
            ValRef::Int(i) => any_value::Value::IntValue(i),
        }),
    }
}

fn kv(key: &str, v: ValRef<'_>) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(value(v)), ..Default::default() }
}

type ResourceKey = Vec<(&'static str, String)>;

/// Splits a series' labels into its resource and its point attributes.
fn split(labels: &SeriesLabels<'_>) -> (ResourceKey, Vec<KeyValue>) {
    let mut resource = Vec::new();
    let mut attributes = Vec::new();
    for (key, v) in labels.otel_pairs() {
        match (RESOURCE_ATTRIBUTES.iter().find(|r| **r == key), v) {
            (Some(r), ValRef::Str(s)) => resource.push((*r, s.to_owned())),
            _ => attributes.push(kv(key, v)),
        }
    }
    if !resource.iter().any(|(k, _)| *k == "service.name") {
        resource.insert(0, ("service.name", AGENT_SERVICE.to_owned()));
    }
    (resource, attributes)
}

fn metric(d: &Describe, data: metric::Data) -> Metric {
    Metric {
        name: d.otel.to_owned(),
        description: d.help.to_owned(),
        unit: d.unit.to_owned(),
        data: Some(data),
        ..Default::default()
    }
}

/// Builds the request from every series with at least one observation.
pub fn export_request(families: &Families, start: SystemTime, now: SystemTime) -> ExportMetricsServiceRequest {
    let (start, now) = (nanos(start), nanos(now));
    let cumulative = AggregationTemporality::Cumulative as i32;
    // Per resource: the metrics in family order.
    let mut by_resource: BTreeMap<ResourceKey, Vec<Metric>> = BTreeMap::new();
    for family in families.histograms() {
        let mut points: BTreeMap<ResourceKey, Vec<HistogramDataPoint>> = BTreeMap::new();
        for (labels, hist) in families.hist_series(family) {
            let (resource, attributes) = split(&labels);
            let exemplars = hist
                .exemplars
                .iter()
                .flatten()
                .map(|e| OtlpExemplar {
                    time_unix_nano: nanos(e.time),
                    trace_id: e.trace.trace_id.to_vec(),
                    span_id: e.trace.span_id.to_vec(),
                    value: Some(exemplar::Value::AsDouble(e.value)),
                    ..Default::default()
                })
                .collect();
            points.entry(resource).or_default().push(HistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: hist.count,
                sum: Some(hist.sum),
                bucket_counts: hist.counts.to_vec(),
                explicit_bounds: hist.bounds.to_vec(),
                exemplars,
                min: (hist.count > 0).then_some(hist.min),
                max: (hist.count > 0).then_some(hist.max),
                ..Default::default()
            });
        }
        for (resource, data_points) in points {
            let data = metric::Data::Histogram(Histogram { data_points, aggregation_temporality: cumulative });
            by_resource.entry(resource).or_default().push(metric(&family.describe, data));
        }
    }
    for family in families.counters() {
        let mut points: BTreeMap<ResourceKey, Vec<NumberDataPoint>> = BTreeMap::new();
        for (labels, count) in families.counter_series(family) {
            let (resource, attributes) = split(&labels);
            points.entry(resource).or_default().push(NumberDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsInt(i64::try_from(count).unwrap_or(i64::MAX))),
                ..Default::default()
            });
        }
        for (resource, data_points) in points {
            let data = metric::Data::Sum(Sum { data_points, aggregation_temporality: cumulative, is_monotonic: true });
            by_resource.entry(resource).or_default().push(metric(&family.describe, data));
        }
    }
    let resource_metrics = by_resource
        .into_iter()
        .map(|(resource, metrics)| ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.iter().map(|(k, v)| kv(k, ValRef::Str(v))).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

//! One metric's series: label values interned once per series, looked up
//! without allocating, capped with an overflow series; and the histogram
//! and counter each series holds.
use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder},
    metrics::exemplar::HistogramWithExemplars,
};

/// A label value as a span lends it (no allocation to look a series up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValRef<'a> {
    Str(&'a str),
    Int(i64),
}

/// A label value a series owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    Str(Arc<str>),
    Int(i64),
}

impl Val {
    fn matches(&self, other: &ValRef<'_>) -> bool {
        match (self, other) {
            (Val::Str(a), ValRef::Str(b)) => **a == **b,
            (Val::Int(a), ValRef::Int(b)) => a == b,
            _ => false,
        }
    }

    pub fn as_ref(&self) -> ValRef<'_> {
        match self {
            Val::Str(s) => ValRef::Str(s),
            Val::Int(i) => ValRef::Int(*i),
        }
    }
}

impl From<ValRef<'_>> for Val {
    fn from(v: ValRef<'_>) -> Val {
        match v {
            ValRef::Str(s) => Val::Str(Arc::from(s)),
            ValRef::Int(i) => Val::Int(i),
        }
    }
}

impl EncodeLabelValue for ValRef<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            ValRef::Str(s) => EncodeLabelValue::encode(s, encoder),
            ValRef::Int(i) => EncodeLabelValue::encode(i, encoder),
        }
    }
}

/// The attribute OTel puts alone on a metric's overflow series.
pub const OVERFLOW_KEY: &str = "otel.metric.overflow";

/// The labels of one series: the metric's keys with the series' values
/// (an absent value is no label), or the overflow marker.
pub struct SeriesLabels<'a> {
    pub keys: &'static [Key],
    pub vals: Option<&'a [Option<Val>]>,
}

/// A label: its Prometheus name and its OTel attribute key.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub prom: &'static str,
    pub otel: &'static str,
}

impl SeriesLabels<'_> {
    /// (OTel key, value) of every label present, or the overflow marker.
    pub fn otel_pairs(&self) -> impl Iterator<Item = (&'static str, ValRef<'_>)> {
        let overflow = self.vals.is_none().then_some((OVERFLOW_KEY, ValRef::Str("true")));
        let present = self.vals.into_iter().flat_map(|vals| {
            self.keys.iter().zip(vals.iter()).filter_map(|(k, v)| v.as_ref().map(|v| (k.otel, v.as_ref())))
        });
        overflow.into_iter().chain(present)
    }
}

impl EncodeLabelSet for SeriesLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let Some(vals) = self.vals else {
            return ("otel_metric_overflow", "true").encode(encoder.encode_label());
        };
        for (key, val) in self.keys.iter().zip(vals.iter()) {
            if let Some(val) = val {
                (key.prom, val.as_ref()).encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

use prometheus_client::encoding::EncodeLabel as _;

/// The series of one metric, at most `limit` of them; what does not fit
/// goes to one overflow series (OTel's cardinality limit), counted.
pub struct SeriesTable<V> {
    pub keys: &'static [Key],
    limit: usize,
    hasher: foldhash::fast::FixedState,
    /// Hash of the label values → indexes into `series` with that hash.
    index: HashMap<u64, Vec<u32>, foldhash::fast::FixedState>,
    series: Vec<(Box<[Option<Val>]>, V)>,
    overflow: Option<V>,
}

/// Where an observation went.
pub enum Slot<'a, V> {
    Series(&'a mut V),
    /// The metric is at its series limit and this label set is new.
    Overflow(&'a mut V),
}

impl<V> SeriesTable<V> {
    pub fn new(keys: &'static [Key], limit: usize) -> SeriesTable<V> {
        SeriesTable {
            keys,
            limit: limit.max(1),
            hasher: foldhash::fast::FixedState::default(),
            index: HashMap::default(),
            series: Vec::new(),
            overflow: None,
        }
    }

    /// The series for `vals` (one per key, in key order), created with
    /// `make` if new and there is room; else the overflow series.
    pub fn slot(&mut self, vals: &[Option<ValRef<'_>>], make: impl Fn() -> V) -> Slot<'_, V> {
        debug_assert_eq!(vals.len(), self.keys.len());
        let hash = self.hash(vals);
        let found = self.index.get(&hash).and_then(|candidates| {
            candidates.iter().copied().find(|&i| {
                let (owned, _) = &self.series[i as usize];
                owned.len() == vals.len()
                    && owned.iter().zip(vals).all(|(o, v)| match (o, v) {
                        (None, None) => true,
                        (Some(o), Some(v)) => o.matches(v),
                        _ => false,
                    })
            })
        });
        if let Some(i) = found {
            return Slot::Series(&mut self.series[i as usize].1);
        }
        if self.series.len() >= self.limit {
            return Slot::Overflow(self.overflow.get_or_insert_with(make));
        }
        let i = self.series.len() as u32;
        self.index.entry(hash).or_default().push(i);
        let owned: Box<[Option<Val>]> = vals.iter().map(|v| v.map(Val::from)).collect();
        self.series.push((owned, make()));
        Slot::Series(&mut self.series[i as usize].1)
    }

    /// One hasher write per value (the derived `Hash` makes three: both
    /// enum tags and the string); equality is checked on lookup anyway.
    fn hash(&self, vals: &[Option<ValRef<'_>>]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for v in vals {
            match v {
                None => h.write_u8(0),
                Some(ValRef::Str(s)) => h.write(s.as_bytes()),
                Some(ValRef::Int(i)) => h.write_i64(*i),
            }
        }
        h.finish()
    }

    /// Every series with its labels, the overflow series last.
    pub fn iter(&self) -> impl Iterator<Item = (SeriesLabels<'_>, &V)> {
        let keys = self.keys;
        self.series
            .iter()
            .map(move |(vals, v)| (SeriesLabels { keys, vals: Some(vals) }, v))
            .chain(self.overflow.iter().map(move |v| (SeriesLabels { keys, vals: None }, v)))
    }
}

/// Trace and span id of the span an exemplar points to; written as hex
/// labels only when scraped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceRef {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

struct Hex<'a>(&'a [u8]);

impl EncodeLabelValue for Hex<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        let mut buf = [0u8; 32];
        for (i, b) in self.0.iter().take(16).enumerate() {
            let [hi, lo] = waggle_common::http::hex_byte(*b);
            buf[2 * i] = hi;
            buf[2 * i + 1] = lo;
        }
        let n = self.0.len().min(16) * 2;
        // hex_byte yields ASCII digits: always valid UTF-8.
        encoder.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| std::fmt::Error)?)
    }
}

impl EncodeLabelSet for TraceRef {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("trace_id", Hex(&self.trace_id)).encode(encoder.encode_label())?;
        ("span_id", Hex(&self.span_id)).encode(encoder.encode_label())
    }
}

/// The latest span that fell in a bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exemplar {
    pub trace: TraceRef,
    pub value: f64,
    pub time: SystemTime,
}

/// A histogram kept twice: prometheus-client's (which encodes its
/// exemplars for `/metrics`, and whose counts it does not let us read) and
/// plain counts for OTLP. Both see every observation, under the one lock
/// the batch holds.
pub struct Hist {
    pub bounds: &'static [f64],
    prom: HistogramWithExemplars<TraceRef>,
    /// One per bound plus the +Inf bucket; not cumulative (OTLP's form).
    pub counts: Box<[u64]>,
    pub sum: f64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub exemplars: Box<[Option<Exemplar>]>,
    /// Per bucket, the second (of span end time) in which prometheus-client
    /// last got an exemplar: it keeps them in a SipHash map, and replacing
    /// one on every observation cost more than the rest of the histogram,
    /// so `/metrics` shows at most one new exemplar per bucket per second.
    prom_exemplar_second: Box<[u64]>,
}

impl Hist {
    pub fn new(bounds: &'static [f64]) -> Hist {
        Hist {
            bounds,
            prom: HistogramWithExemplars::new(bounds.iter().copied()),
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            exemplars: vec![None; bounds.len() + 1].into_boxed_slice(),
            prom_exemplar_second: vec![u64::MAX; bounds.len() + 1].into_boxed_slice(),
        }
    }

    pub fn observe(&mut self, value: f64, trace: TraceRef, time: SystemTime) {
        // The first bound at or above the value (Prometheus' `le`).
        let bucket = self.bounds.partition_point(|b| *b < value);
        let second = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.prom_exemplar_second[bucket] != second {
            self.prom_exemplar_second[bucket] = second;
            self.prom.observe(value, Some(trace), Some(time));
        } else {
            self.prom.observe(value, None, None);
        }
        self.counts[bucket] += 1;
        self.exemplars[bucket] = Some(Exemplar { trace, value, time });
        self.sum += value;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn prom(&self) -> &HistogramWithExemplars<TraceRef> {
        &self.prom
    }
}

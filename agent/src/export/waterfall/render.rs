//! One trace as an indented tree with a time bar per span:
//!
//! ```text
//! trace 4bf92f3577b34da6a3ce929d0e0e4736 · 4 spans · 23.4ms · 16:07:17.123
//! curl CLIENT GET 200                          │████████████████████████████████████████│  23.4ms
//!   service-a SERVER GET /checkout 200         │ ██████████████████████████████████████ │  22.1ms
//!     service-a CLIENT SELECT items            │  ██                                    │  1.20ms
//!     service-a CLIENT GET /inventory 200      │     ███████████████                    │  10.3ms
//! ```
//!
//! A bar covers the cells its span overlaps on the trace's time line
//! (first start to last end), at least one, so a parent's bar shows where its
//! children's are not: the gaps.
use std::{collections::HashMap, fmt::Write as _, time::SystemTime};

use super::TraceSpan;
use crate::{
    export::stdout::{format_duration, kind_str, time_of_day, Clean},
    model::{hex, AttrValue},
};

/// Indentation stops growing here, so a deep chain keeps its bars readable.
const MAX_INDENT_DEPTH: usize = 12;
const BAR: char = '█';
const EDGE: char = '│';

#[derive(Clone, Copy, Debug)]
pub struct RenderOptions {
    /// ANSI colours (a terminal); plain text otherwise.
    pub colour: bool,
    /// Characters of the label column (indent, service, kind, name, status).
    pub label_width: usize,
    /// Cells of the time bar.
    pub bar_width: usize,
    /// Span lines before the rest is cut to one "… N more spans" line.
    pub max_lines: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions { colour: false, label_width: 56, bar_width: 40, max_lines: 60 }
    }
}

/// Colours on stdout: a terminal, unless NO_COLOR (https://no-color.org) is set.
pub fn colour_stdout() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Appends the trace's tree to `out`. `not_kept` spans of the trace were
/// seen but not held (a trace past the printer's per-trace limit); they are
/// named in the "more" line.
pub fn render_trace(spans: &[TraceSpan], not_kept: usize, opts: &RenderOptions, out: &mut String) {
    let Some(first) = spans.first() else { return };
    let t0 = spans.iter().map(|s| s.start).min().unwrap_or(first.start);
    let t1 = spans.iter().map(|s| s.end).max().unwrap_or(first.end).max(t0);
    let total_ns = nanos_between(t0, t1).max(1);
    let (h, m, s, ms) = time_of_day(t0);
    let header = format!(
        "trace {} · {} span{} · {} · {h:02}:{m:02}:{s:02}.{ms:03}",
        hex(&first.trace_id),
        spans.len() + not_kept,
        if spans.len() + not_kept == 1 { "" } else { "s" },
        format_duration(std::time::Duration::from_nanos(total_ns)),
    );
    let _ = writeln!(out, "{}", paint(opts.colour, "1", &header));

    let order = tree_order(spans);
    let shown = if order.len() > opts.max_lines { opts.max_lines.saturating_sub(1) } else { order.len() };
    for &(index, depth) in &order[..shown] {
        let span = &spans[index];
        let label = label(span, depth, opts.label_width);
        let (from, to) =
            bar_cells(nanos_between(t0, span.start), nanos_between(span.start, span.end), total_ns, opts.bar_width);
        let mut bar = String::with_capacity(opts.bar_width * 3);
        bar.extend(std::iter::repeat_n(' ', from));
        let cells: String = std::iter::repeat_n(BAR, to - from).collect();
        let colour = match (&span.error, span.kind) {
            (Some(_), _) => "31",
            (None, crate::model::SpanKind::Server) => "36",
            (None, crate::model::SpanKind::Client) => "33",
        };
        bar.push_str(&paint(opts.colour, colour, &cells));
        bar.extend(std::iter::repeat_n(' ', opts.bar_width - to));
        let _ = writeln!(out, "{label}{EDGE}{bar}{EDGE} {:>8}", format_duration(span.duration()));
    }
    let more = order.len() - shown + not_kept;
    if more > 0 {
        let _ = writeln!(out, "… {more} more span{}", if more == 1 { "" } else { "s" });
    }
}

/// The label column: indent, service, kind, name, status; cut or padded to
/// exactly `width` characters.
fn label(span: &TraceSpan, depth: usize, width: usize) -> String {
    let mut text = " ".repeat(2 * depth.min(MAX_INDENT_DEPTH));
    let _ = write!(text, "{} {} {}", Clean(&span.resource.service_name), kind_str(span.kind), Clean(&span.name));
    match &span.code {
        Some(AttrValue::Int(code)) => {
            let _ = write!(text, " {code}");
        }
        Some(AttrValue::Str(code)) => {
            let _ = write!(text, " {}", Clean(code.as_str()));
        }
        Some(AttrValue::Bool(_)) | None => {}
    }
    if span.error.is_some() {
        text.push_str(" ERROR");
    }
    let chars = text.chars().count();
    if chars > width {
        let mut cut: String = text.chars().take(width.saturating_sub(2)).collect();
        cut.push_str("… ");
        cut
    } else {
        text.extend(std::iter::repeat_n(' ', width - chars));
        text
    }
}

/// The cells `[from, to)` of a `width`-cell bar that a span starting
/// `offset_ns` into a trace of `total_ns` and lasting `duration_ns` overlaps:
/// at least one cell, never past the end.
pub fn bar_cells(offset_ns: u64, duration_ns: u64, total_ns: u64, width: usize) -> (usize, usize) {
    if width == 0 {
        return (0, 0);
    }
    let total = u128::from(total_ns.max(1));
    let cells = width as u128;
    let end_ns = u128::from(offset_ns) + u128::from(duration_ns);
    let from = ((u128::from(offset_ns) * cells / total) as usize).min(width - 1);
    let to = (end_ns * cells).div_ceil(total) as usize;
    (from, to.clamp(from + 1, width))
}

/// Spans in display order with their depth: each root (a span whose parent
/// is not in the trace here) by start time, its children under it by start
/// time. Spans on a parent cycle (ids forged by a client) are shown as roots
/// rather than lost.
fn tree_order(spans: &[TraceSpan]) -> Vec<(usize, usize)> {
    let by_id: HashMap<[u8; 8], usize> = spans.iter().enumerate().rev().map(|(i, s)| (s.span_id, i)).collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        match span.parent_span_id.and_then(|p| by_id.get(&p)).copied() {
            Some(parent) if parent != i => children[parent].push(i),
            _ => roots.push(i),
        }
    }
    let by_start = |a: &usize, b: &usize| {
        let (a, b) = (&spans[*a], &spans[*b]);
        a.start.cmp(&b.start).then(b.end.cmp(&a.end))
    };
    roots.sort_by(by_start);
    for list in &mut children {
        list.sort_by(by_start);
    }
    let mut order = Vec::with_capacity(spans.len());
    let mut seen = vec![false; spans.len()];
    let visit = |root: usize, order: &mut Vec<(usize, usize)>, seen: &mut Vec<bool>| {
        let mut stack = vec![(root, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            order.push((i, depth));
            stack.extend(children[i].iter().rev().map(|&c| (c, depth + 1)));
        }
    };
    for &root in &roots {
        visit(root, &mut order, &mut seen);
    }
    // What no root reaches sits on a cycle: start each at its earliest span.
    let mut rest: Vec<usize> = (0..spans.len()).filter(|&i| !seen[i]).collect();
    rest.sort_by(by_start);
    for i in rest {
        visit(i, &mut order, &mut seen);
    }
    order
}

fn nanos_between(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

fn paint(colour: bool, code: &str, text: &str) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, UNIX_EPOCH},
    };

    use super::*;
    use crate::model::{ProcessResource, SpanKind};

    fn span(
        service: &str,
        kind: SpanKind,
        name: &str,
        id: u8,
        parent: Option<u8>,
        start_ms: u64,
        end_ms: u64,
    ) -> TraceSpan {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        TraceSpan {
            resource: Arc::new(ProcessResource {
                service_name: service.into(),
                pid: 1,
                executable_name: String::new(),
                attributes: Vec::new(),
            }),
            trace_id: [0xab; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            kind,
            name: name.into(),
            code: Some(AttrValue::Int(200)),
            error: None,
            start: t0 + Duration::from_millis(start_ms),
            end: t0 + Duration::from_millis(end_ms),
        }
    }

    fn chain() -> Vec<TraceSpan> {
        // Arrival order: children end (and are exported) first.
        vec![
            span("service-b", SpanKind::Server, "GET /inventory", 4, Some(3), 30, 70),
            span("service-a", SpanKind::Client, "SELECT items", 5, Some(2), 12, 20),
            span("service-a", SpanKind::Client, "GET /inventory", 3, Some(2), 25, 75),
            span("service-a", SpanKind::Server, "GET /checkout", 2, Some(1), 5, 95),
            span("curl", SpanKind::Client, "GET", 1, None, 0, 100),
        ]
    }

    fn plain(spans: &[TraceSpan], opts: RenderOptions) -> Vec<String> {
        let mut out = String::new();
        render_trace(spans, 0, &opts, &mut out);
        out.lines().map(str::to_owned).collect()
    }

    /// The bar's first and one-past-last filled cell.
    fn bar_of(line: &str) -> (usize, usize) {
        let bar: Vec<char> = line.split(EDGE).nth(1).unwrap().chars().collect();
        let from = bar.iter().position(|&c| c == BAR).unwrap();
        let to = bar.iter().rposition(|&c| c == BAR).unwrap() + 1;
        (from, to)
    }

    #[test]
    fn chain_prints_as_a_tree_in_start_order_with_proportional_bars() {
        let lines = plain(&chain(), RenderOptions::default());
        assert!(lines[0].starts_with("trace abababababababababababababababab · 5 spans · 100.0ms · "), "{lines:?}");
        let labels: Vec<&str> = lines[1..].iter().map(|l| l.split(EDGE).next().unwrap().trim_end()).collect();
        assert_eq!(
            labels,
            [
                "curl CLIENT GET 200",
                "  service-a SERVER GET /checkout 200",
                "    service-a CLIENT SELECT items 200",
                "    service-a CLIENT GET /inventory 200",
                "      service-b SERVER GET /inventory 200",
            ]
        );
        // 40 cells for 100 ms: 2.5 ms a cell.
        let bars: Vec<(usize, usize)> = lines[1..].iter().map(|l| bar_of(l)).collect();
        assert_eq!(bars, [(0, 40), (2, 38), (4, 8), (10, 30), (12, 28)]);
        assert!(lines[1].ends_with(" 100.0ms"), "{}", lines[1]);
        assert!(lines[3].ends_with("  8.00ms"), "{}", lines[3]);
        // Every line is the same width: the bars line up.
        let widths: Vec<usize> = lines[1..].iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|&w| w == widths[0]), "{widths:?}");
    }

    #[test]
    fn bar_cells_cover_what_the_span_overlaps_and_at_least_one() {
        assert_eq!(bar_cells(0, 100, 100, 10), (0, 10));
        assert_eq!(bar_cells(0, 0, 100, 10), (0, 1));
        assert_eq!(bar_cells(100, 0, 100, 10), (9, 10));
        assert_eq!(bar_cells(15, 10, 100, 10), (1, 3));
        assert_eq!(bar_cells(u64::MAX, u64::MAX, 1, 10), (9, 10));
        assert_eq!(bar_cells(5, 5, 0, 0), (0, 0));
    }

    #[test]
    fn long_traces_are_cut_with_a_more_line_and_errors_are_marked() {
        let mut spans = vec![span("a", SpanKind::Server, "GET /", 1, None, 0, 100)];
        for i in 0..30u8 {
            let mut s = span("a", SpanKind::Client, "SELECT", 10 + i, Some(1), u64::from(i), u64::from(i) + 1);
            if i == 0 {
                s.error = Some("boom".into());
                s.code = Some(AttrValue::Str("23505".into()));
            }
            spans.push(s);
        }
        let opts = RenderOptions { max_lines: 10, ..RenderOptions::default() };
        let mut out = String::new();
        render_trace(&spans, 5, &opts, &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1 + 9 + 1, "{out}");
        assert!(lines[0].contains(" 36 spans "), "{}", lines[0]);
        assert_eq!(lines[10], "… 27 more spans");
        assert!(lines[2].starts_with("  a CLIENT SELECT 23505 ERROR "), "{}", lines[2]);
        assert!(!out.contains('\x1b'), "plain output has no escapes");
        let mut coloured = String::new();
        render_trace(&spans, 0, &RenderOptions { colour: true, ..opts }, &mut coloured);
        assert!(coloured.contains("\x1b[31m"), "error bars are red");
    }

    #[test]
    fn orphans_and_cycles_become_roots_and_nothing_is_lost() {
        let mut spans = chain();
        // A parent that was never exported here, and a two-span cycle.
        spans.push(span("x", SpanKind::Server, "orphan", 7, Some(99), 1, 2));
        spans.push(span("y", SpanKind::Server, "loop-a", 8, Some(9), 3, 4));
        spans.push(span("y", SpanKind::Server, "loop-b", 9, Some(8), 5, 6));
        let lines = plain(&spans, RenderOptions::default());
        assert_eq!(lines.len(), 1 + spans.len(), "{lines:#?}");
        assert!(lines.iter().any(|l| l.starts_with("x SERVER orphan ")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.starts_with("y SERVER loop-a ")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.starts_with("  y SERVER loop-b ")), "{lines:#?}");
    }

    #[test]
    fn labels_are_cut_to_the_column_and_control_characters_escaped() {
        let mut s = span("svc", SpanKind::Server, &format!("GET /{}\x1b[2J", "x".repeat(200)), 1, None, 0, 1);
        s.code = None;
        let lines = plain(&[s], RenderOptions::default());
        let label = lines[1].split(EDGE).next().unwrap();
        assert_eq!(label.chars().count(), 56);
        assert!(label.ends_with("… "), "{label:?}");
        assert!(!lines[1].contains('\x1b'));
    }
}

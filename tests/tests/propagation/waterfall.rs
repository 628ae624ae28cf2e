//! The waterfall one trace should print as, worked out from the exported
//! spans alone, and the agent's printed tree read back.
use std::collections::HashMap;

use waggle_e2e::Span;

/// Cells of the agent's time bar and characters of its label column.
pub const BAR_CELLS: u64 = 40;
pub const LABEL_CHARS: usize = 56;

/// One span line as expected: indented label start and the bar's cells.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub label: String,
    pub cells: (u64, u64),
}

/// The printed block of `trace` (header to blank line) in `stdout`, if
/// printed; panics if it was printed more than once (one trace, one tree).
#[track_caller]
pub fn printed_tree(stdout: &str, trace: &str) -> Option<String> {
    let header = format!("trace {trace} ·");
    let blocks: Vec<String> = stdout
        .split("\n\n")
        .filter(|b| b.trim_start_matches('\n').starts_with(&header))
        .map(|b| b.trim_start_matches('\n').to_owned())
        .collect();
    assert!(blocks.len() <= 1, "trace {trace} printed {} times:\n{stdout}", blocks.len());
    blocks.into_iter().next()
}

/// The span lines of a printed tree: label (trailing blanks trimmed) and
/// the first and one-past-last filled cell of the bar.
#[track_caller]
pub fn read_lines(tree: &str) -> Vec<Line> {
    tree.lines()
        .skip(1)
        .map(|line| {
            let mut parts = line.split('│');
            let label = parts.next().unwrap_or_default();
            assert_eq!(label.chars().count(), LABEL_CHARS, "label column width in {line:?}");
            let bar: Vec<char> = parts.next().unwrap_or_else(|| panic!("no bar in {line:?}")).chars().collect();
            assert_eq!(bar.len() as u64, BAR_CELLS, "bar width in {line:?}");
            let from = bar.iter().position(|&c| c == '█').unwrap_or_else(|| panic!("empty bar in {line:?}"));
            let to = bar.iter().rposition(|&c| c == '█').map_or(0, |i| i + 1);
            assert!(bar[from..to].iter().all(|&c| c == '█'), "one unbroken bar in {line:?}");
            Line { label: label.trim_end().to_owned(), cells: (from as u64, to as u64) }
        })
        .collect()
}

/// The lines `spans` (one trace) should print as: each root by start time
/// with its children under it by start time, two spaces of indent per
/// level, and bars from the span times on the trace's time line.
pub fn expected_lines(spans: &[Span]) -> Vec<Line> {
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let total = spans.iter().map(|s| s.end_ns).max().unwrap_or(0).saturating_sub(t0).max(1);
    let ids: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id.as_str(), i)).collect();
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].start_ns, std::cmp::Reverse(spans[i].end_ns)));
    let children = |parent: Option<usize>| -> Vec<usize> {
        order.iter().copied().filter(|&i| ids.get(spans[i].parent_span_id.as_str()).copied() == parent).collect()
    };
    let mut out = Vec::new();
    let mut stack: Vec<(usize, usize)> = children(None).into_iter().rev().map(|i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        let s = &spans[i];
        let kind = if s.is_server() { "SERVER" } else { "CLIENT" };
        let code = s
            .attr_int("http.response.status_code")
            .map(|c| format!(" {c}"))
            .or_else(|| s.attr_str("db.response.status_code").map(|c| format!(" {c}")))
            .unwrap_or_default();
        let label = format!("{}{} {kind} {}{code}", "  ".repeat(depth), s.service_name, s.name);
        let from = ((s.start_ns - t0) * BAR_CELLS / total).min(BAR_CELLS - 1);
        let to = ((s.end_ns - t0) * BAR_CELLS).div_ceil(total).clamp(from + 1, BAR_CELLS);
        out.push(Line { label, cells: (from, to) });
        stack.extend(children(Some(i)).into_iter().rev().map(|c| (c, depth + 1)));
    }
    out
}

//! Import circles between source files of one crate.
//!
//! rustc accepts modules that use each other, so nothing stops a stage from
//! reaching back up the pipeline. This check builds the file-level graph of
//! `crate::`, `super::`, `self::` and child-module paths and reports every
//! strongly connected group of more than one file.
//!
//! Two kinds of reference are not edges: a `mod` declaration, and a `pub use`
//! by a module of items from its own descendants (a folder's `mod.rs`
//! re-exporting what its files define). Everything else is, test modules
//! included: a test that reaches up the pipeline is a circle too.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use super::files::walk_files;

/// One file of a crate, by module path (`["protocols", "http1"]`).
struct SourceFile {
    path: PathBuf,
    module: Vec<String>,
    text: String,
}

/// A reference from one file to another, with the line it is on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: PathBuf,
    pub to: PathBuf,
    pub line: usize,
}

/// Every group of files that import each other, each as the edges inside it.
pub fn circles(crate_root: &Path) -> Result<Vec<Vec<Edge>>> {
    let files = collect(crate_root)?;
    let by_module: BTreeMap<&[String], usize> = files.iter().enumerate().map(|(i, f)| (&f.module[..], i)).collect();
    let mut edges: Vec<(usize, usize, usize)> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        for reference in references(&file.text) {
            let Some(target) = resolve(&file.module, &reference, &by_module, &files[i]) else {
                continue;
            };
            if target == i {
                continue;
            }
            let descendant = files[target].module.starts_with(&file.module);
            if reference.reexport && descendant {
                continue;
            }
            edges.push((i, target, reference.line));
        }
    }
    let groups = strongly_connected(files.len(), &edges);
    let mut out = Vec::new();
    for group in groups.into_iter().filter(|g| g.len() > 1) {
        let members: BTreeSet<usize> = group.into_iter().collect();
        let mut inside: Vec<Edge> = edges
            .iter()
            .filter(|(a, b, _)| members.contains(a) && members.contains(b))
            .map(|&(a, b, line)| Edge { from: files[a].path.clone(), to: files[b].path.clone(), line })
            .collect();
        inside.sort();
        inside.dedup_by(|x, y| x.from == y.from && x.to == y.to);
        out.push(inside);
    }
    Ok(out)
}

fn collect(crate_root: &Path) -> Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    for path in walk_files(crate_root)? {
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(crate_root).unwrap_or(&path);
        let mut module: Vec<String> =
            relative.with_extension("").iter().map(|c| c.to_string_lossy().into_owned()).collect();
        if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            module.pop();
        }
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        files.push(SourceFile { path, module, text: blank_comments_and_strings(&text) });
    }
    Ok(files)
}

/// A path written in a file: its segments, the inline modules it sits in,
/// and whether it is a re-export.
#[derive(Debug)]
struct Reference {
    segments: Vec<String>,
    inline: Vec<String>,
    reexport: bool,
    line: usize,
}

fn resolve(
    module: &[String],
    reference: &Reference,
    by_module: &BTreeMap<&[String], usize>,
    file: &SourceFile,
) -> Option<usize> {
    let mut here: Vec<String> = module.iter().chain(&reference.inline).cloned().collect();
    let mut segments = reference.segments.iter().peekable();
    match segments.peek().map(|s| s.as_str()) {
        Some("crate") => {
            here.clear();
            segments.next();
        }
        Some("super") => {
            while segments.peek().is_some_and(|s| *s == "super") {
                here.pop()?;
                segments.next();
            }
        }
        Some("self") => {
            segments.next();
        }
        // A bare first segment is a path only when it names a child module
        // of this file (`http1::Http1Detector` in protocols).
        Some(first) => {
            let mut child = module.to_vec();
            child.push(first.to_owned());
            if !by_module.contains_key(&child[..]) || !declares_child(&file.text, first) {
                return None;
            }
        }
        None => return None,
    }
    let mut path = here;
    path.extend(segments.cloned());
    (0..=path.len()).rev().find_map(|n| by_module.get(&path[..n]).copied())
}

fn declares_child(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        let l = l.strip_prefix("pub ").or_else(|| l.strip_prefix("pub(crate) ")).unwrap_or(l);
        l.strip_prefix("mod ").is_some_and(|rest| rest.trim_end_matches(';').trim() == name)
    })
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every module path in `text` (already stripped of comments and strings).
fn references(text: &str) -> Vec<Reference> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut depth = 0usize;
    // Inline modules open at a brace depth: (name, depth inside).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut i = 0;
    let word_at = |i: usize| -> Option<(String, usize)> {
        if i > 0 && is_ident_char(chars[i - 1]) {
            return None;
        }
        let end = (i..chars.len()).find(|&j| !is_ident_char(chars[j])).unwrap_or(chars.len());
        (end > i).then(|| (chars[i..end].iter().collect(), end))
    };
    while i < chars.len() {
        match chars[i] {
            '\n' => line += 1,
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        let Some((word, end)) = word_at(i) else {
            i += 1;
            continue;
        };
        let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
        if word == "mod" {
            // `mod name {` opens an inline module; `mod name;` declares a file.
            let rest: String = chars[end..].iter().take_while(|c| **c != ';' && **c != '{').collect();
            let name = rest.trim().to_owned();
            let after = end + rest.chars().count();
            if chars.get(after) == Some(&'{') && name.chars().all(is_ident_char) {
                inline.push((name, depth + 1));
            }
            i = after;
            continue;
        }
        if word == "use" {
            let stop = (end..chars.len()).find(|&j| chars[j] == ';').unwrap_or(chars.len());
            let tree: String = chars[end..stop].iter().collect();
            let before: String = chars[i.saturating_sub(16)..i].iter().collect();
            let reexport = before.trim_end().ends_with("pub") || before.trim_end().ends_with(')');
            for segments in expand_use_tree(&tree) {
                out.push(Reference { segments, inline: names.clone(), reexport, line });
            }
            line += tree.matches('\n').count();
            i = stop;
            continue;
        }
        // A path in an expression or type: ident(::ident)*.
        let mut segments = vec![word];
        let mut j = end;
        while j + 2 < chars.len() && chars[j] == ':' && chars[j + 1] == ':' {
            let Some((next, next_end)) = word_at(j + 2) else { break };
            segments.push(next);
            j = next_end;
        }
        let preceded_by_path = i >= 2 && chars[i - 1] == ':' && chars[i - 2] == ':';
        if segments.len() > 1 && !preceded_by_path {
            out.push(Reference { segments, inline: names, reexport: false, line });
        }
        i = j;
    }
    out
}

/// `a::{b, c::{d, self}, e as f, *}` → [a,b], [a,c,d], [a,c], [a,e], [a].
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    fn walk(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim().trim_start_matches("::");
        if let Some(open) = tree.find('{') {
            let head: Vec<String> = split_path(&tree[..open]);
            let mut base = prefix.to_vec();
            base.extend(head);
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            for item in split_top_level(inner) {
                walk(&base, item, out);
            }
            return;
        }
        let path = tree.split(" as ").next().unwrap_or("").trim();
        let mut full = prefix.to_vec();
        for segment in split_path(path) {
            if segment != "self" && segment != "*" {
                full.push(segment);
            }
        }
        if !full.is_empty() {
            out.push(full);
        }
    }
    let mut out = Vec::new();
    walk(&[], tree, &mut out);
    out
}

fn split_path(path: &str) -> Vec<String> {
    path.split("::").map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn split_top_level(inner: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// Comments and string/char literals become spaces (newlines kept, so line
/// numbers stay right), so paths inside them are not read as imports.
fn blank_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && (i == 0 || !is_ident_char(chars[i - 1])) {
            // Raw string r#"..."#: find the closing quote + the same hashes.
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let body_start = i + 2 + hashes;
            let rest: String = chars[body_start..].iter().collect();
            let body_len = rest.find(&close).map_or(rest.chars().count(), |b| rest[..b].chars().count());
            let end = (body_start + body_len + close.chars().count()).min(chars.len());
            out.extend(chars[i..end].iter().map(|c| blank(*c)));
            i = end;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\'', '\u{1F600}'), or a lifetime/label
            // ('a), which has no closing quote.
            let end = if next == Some('\\') {
                (i + 3..chars.len().min(i + 12)).find(|&j| chars[j] == '\'')
            } else {
                (chars.get(i + 2) == Some(&'\'')).then_some(i + 2)
            };
            match end {
                Some(j) => {
                    out.extend(std::iter::repeat_n(' ', j + 1 - i));
                    i = j + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Tarjan's strongly connected components over `edges` (from, to, _).
fn strongly_connected(nodes: usize, edges: &[(usize, usize, usize)]) -> Vec<Vec<usize>> {
    struct State {
        adjacency: Vec<Vec<usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        groups: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for w in s.adjacency[v].clone() {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                group.push(w);
                if w == v {
                    break;
                }
            }
            s.groups.push(group);
        }
    }
    let mut adjacency = vec![Vec::new(); nodes];
    for &(a, b, _) in edges {
        adjacency[a].push(b);
    }
    let mut s = State {
        adjacency,
        index: vec![None; nodes],
        low: vec![0; nodes],
        on_stack: vec![false; nodes],
        stack: Vec::new(),
        next: 0,
        groups: Vec::new(),
    };
    for v in 0..nodes {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for (path, text) in files {
            let full = dir.0.join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, text).unwrap();
        }
        dir
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
                let p = std::env::temp_dir().join(format!("xtask-imports-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn names(circles: &[Vec<Edge>], root: &Path) -> Vec<Vec<String>> {
        circles
            .iter()
            .map(|c| {
                c.iter()
                    .map(|e| {
                        format!(
                            "{}->{}",
                            e.from.strip_prefix(root).unwrap().display(),
                            e.to.strip_prefix(root).unwrap().display()
                        )
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn finds_a_circle_through_use_and_expression_paths() {
        let d = tree(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "use crate::b::Thing;\n"),
            ("b.rs", "fn f() { crate::c::g() }\n"),
            ("c.rs", "use crate::{model, a::{self, X as Y}};\n"),
        ]);
        assert_eq!(names(&circles(&d.0).unwrap(), &d.0), vec![vec!["a.rs->b.rs", "b.rs->c.rs", "c.rs->a.rs"]]);
    }

    #[test]
    fn reexports_mod_declarations_comments_strings_and_tests_are_not_circles() {
        let d = tree(&[
            ("lib.rs", "pub mod p;\n"),
            ("p/mod.rs", "mod child;\npub use child::{Chunk, Feed};\n// crate::p::child::x\n"),
            (
                "p/child.rs",
                "use super::Chunk;\nconst S: &str = \"crate::p::x\";\nconst C: char = '\"';\n\
                 #[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
            ),
        ]);
        assert!(circles(&d.0).unwrap().is_empty());
    }

    #[test]
    fn a_parent_that_calls_its_child_which_uses_the_parent_is_a_circle() {
        let d = tree(&[
            ("lib.rs", "pub mod p;\n"),
            ("p/mod.rs", "mod child;\npub struct Chunk;\nfn f() { child::g() }\n"),
            ("p/child.rs", "use super::Chunk;\npub fn g() {}\n"),
        ]);
        assert_eq!(names(&circles(&d.0).unwrap(), &d.0), vec![vec!["p/child.rs->p/mod.rs", "p/mod.rs->p/child.rs"]]);
    }
}

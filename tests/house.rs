//! The shape of `host/src`, held against `ARCHITECTURE.md`: a newcomer's map
//! that stays true because this test reads both.
//!
//! - every module opens with a `//!` paragraph;
//! - no file over 800 lines, no function over 80 (the code is rustfmt'd, so a
//!   function ends at the first `}` at its own indentation);
//! - every path `ARCHITECTURE.md` names under `host/src` exists, and every
//!   module is named there (tests aside);
//! - the top-level modules import only modules of their own layer or below,
//!   as the `layers` block of `ARCHITECTURE.md` orders them, and no two
//!   import each other, directly or around a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 80;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

fn src() -> PathBuf {
    root().join("host/src")
}

/// Every `.rs` file under `host/src`, relative to it, sorted.
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path.strip_prefix(base).expect("under base").to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &src(), &mut out);
    out.sort();
    assert!(out.len() > 10, "host/src has its modules");
    out
}

fn read(rel: &Path) -> String {
    let path = src().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The top-level module a file belongs to: `broker/call.rs` -> `broker`.
fn top_module(rel: &Path) -> String {
    let first = rel.components().next().expect("a file has a path");
    let first = first.as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn every_module_opens_with_a_paragraph_saying_what_it_owns() {
    let missing: Vec<_> = sources()
        .into_iter()
        .filter(|rel| !read(rel).trim_start().starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a `//!` paragraph: {missing:?}"
    );
}

#[test]
fn no_file_is_over_800_lines() {
    let long: Vec<_> = sources()
        .into_iter()
        .map(|rel| (read(&rel).lines().count(), rel))
        .filter(|(lines, _)| *lines > MAX_FILE_LINES)
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines: {long:?}"
    );
}

/// The functions of a rustfmt'd file longer than the limit, as
/// `(name, first line, lines)`.
fn long_functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        let indent = line.len() - line.trim_start().len();
        // A declaration without a body (in a trait) ends at its `;`.
        let body = lines[start..]
            .iter()
            .position(|l| l.trim_end().ends_with('{') || l.trim_end().ends_with(';'))
            .map(|at| lines[start + at].trim_end().ends_with('{'));
        if body != Some(true) {
            continue;
        }
        let end = lines[start + 1..]
            .iter()
            .position(|l| {
                l.len() - l.trim_start().len() == indent && l.trim_start().starts_with('}')
            })
            .map(|at| start + 1 + at);
        // A one-line function (`fn a() {}`) has no closing line of its own.
        let Some(end) = end else { continue };
        let count = end - start + 1;
        if count > MAX_FN_LINES {
            long.push((name, start + 1, count));
        }
    }
    long
}

/// The name of the function a line declares, if it declares one.
fn fn_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().peekable();
    while let Some(word) = words.next() {
        match word {
            "pub" | "async" | "unsafe" | "const" | "extern" | "\"C\"" | "default" => continue,
            w if w.starts_with("pub(") => continue,
            "fn" => {
                let name = words.next()?;
                let end = name
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(name.len());
                return Some(name[..end].to_string());
            }
            _ => return None,
        }
    }
    None
}

#[test]
fn the_function_scanner_measures_functions() {
    let text = "fn short() {\n    1;\n}\n\n    pub async fn long(\n        a: u8,\n    ) -> u8 {\n"
        .to_string()
        + &"        a;\n".repeat(MAX_FN_LINES)
        + "    }\ntrait T {\n    fn decl(&self);\n}\n";
    assert_eq!(
        long_functions(&text),
        vec![("long".to_string(), 5, MAX_FN_LINES + 4)]
    );
}

#[test]
fn no_function_is_over_80_lines() {
    let long: Vec<_> = sources()
        .into_iter()
        .flat_map(|rel| {
            long_functions(&read(&rel))
                .into_iter()
                .map(move |(name, line, count)| {
                    format!("{}:{line} {name} ({count} lines)", rel.display())
                })
        })
        .collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

fn architecture() -> String {
    let path = root().join("ARCHITECTURE.md");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The spans of `text` between backticks.
fn quoted(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

#[test]
fn the_architecture_page_names_what_exists_and_everything_that_does() {
    let page = architecture();
    let named: BTreeSet<&str> = quoted(&page)
        .filter(|q| q.ends_with(".rs") || q.ends_with('/'))
        .filter(|q| !q.contains(' ') && !q.starts_with('.'))
        .collect();
    let mut ghosts = Vec::new();
    for name in &named {
        let path = if name.starts_with("host/") || name.contains("/src") {
            root().join(name)
        } else {
            src().join(name)
        };
        let in_repo = root().join(name);
        if !path.exists() && !in_repo.exists() {
            ghosts.push(*name);
        }
    }
    assert!(
        ghosts.is_empty(),
        "ARCHITECTURE.md names files that do not exist: {ghosts:?}"
    );
    let tops: BTreeSet<String> = sources().iter().map(|rel| top_module(rel)).collect();
    let unnamed: Vec<_> = tops
        .iter()
        .filter(|m| !["lib", "main"].contains(&m.as_str()))
        .filter(|m| {
            let file = format!("{m}.rs");
            let dir = format!("{m}/");
            !named
                .iter()
                .any(|n| *n == file || *n == dir || n.ends_with(&format!("/{file}")))
        })
        .collect();
    assert!(
        unnamed.is_empty(),
        "top-level modules ARCHITECTURE.md does not name: {unnamed:?}"
    );
    // Inside the folders too, every room is on the map (tests aside; a
    // folder's `mod.rs` is the folder).
    let unmapped: Vec<String> = sources()
        .iter()
        .filter(|rel| rel.components().count() > 1)
        .filter(|rel| !rel.iter().any(|part| part == "tests" || part == "tests.rs"))
        .map(|rel| rel.display().to_string())
        .filter(|rel| match rel.strip_suffix("mod.rs") {
            Some(folder) => !named.contains(folder),
            None => !named.contains(rel.as_str()),
        })
        .collect();
    assert!(
        unmapped.is_empty(),
        "files in host/src's folders that ARCHITECTURE.md does not name: {unmapped:?}"
    );
}

/// The `layers` block of ARCHITECTURE.md: top layer first, each a line of
/// module names (words after a `:` or `#` are commentary).
fn layers() -> Vec<Vec<String>> {
    let page = architecture();
    let block = page
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    block
        .lines()
        .map(|line| line.split(['#', ':']).next().unwrap_or(""))
        .map(|line| {
            line.split(|c: char| c.is_whitespace() || c == ',')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|layer| !layer.is_empty())
        .collect()
}

/// Which top-level modules each top-level module imports (`crate::x`).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rel in sources() {
        let from = top_module(&rel);
        // Comments name modules without importing them (doc links).
        let text: String = read(&rel)
            .lines()
            .map(|line| line.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let entry = graph.entry(from.clone()).or_default();
        for piece in text.split("crate::").skip(1) {
            let to: String = piece
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !to.is_empty() && to != from {
                entry.insert(to);
            }
        }
        // `use crate::{a, b::c}`: the names right inside the braces.
        for group in text.split("crate::{").skip(1) {
            let inside = group.split('}').next().unwrap_or("");
            for item in inside.split(',') {
                let to: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !to.is_empty() && to != from && to != "self" {
                    entry.insert(to);
                }
            }
        }
    }
    graph.remove("lib");
    graph.remove("main");
    graph
}

#[test]
fn modules_import_only_their_own_layer_or_below() {
    let layers = layers();
    let level: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| layer.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let graph = imports();
    let unplaced: Vec<_> = graph
        .keys()
        .filter(|m| !level.contains_key(m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from ARCHITECTURE.md's layers block: {unplaced:?}"
    );
    let mut upward = Vec::new();
    for (from, tos) in &graph {
        for to in tos {
            // `crate::x` where x is not a module (a macro, a re-export) is not an arrow.
            let (Some(&a), Some(&b)) = (level.get(from.as_str()), level.get(to.as_str())) else {
                continue;
            };
            if b < a {
                upward.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports running up the layering of ARCHITECTURE.md: {upward:?}"
    );
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = imports();
    let known: BTreeSet<&String> = graph.keys().collect();
    // Depth-first search for a back edge.
    fn visit<'a>(
        node: &'a String,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        known: &BTreeSet<&String>,
        path: &mut Vec<&'a String>,
        done: &mut BTreeSet<&'a String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut circle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            circle.push(node.clone());
            return Some(circle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if known.contains(next)
                && let Some(circle) = visit(next, graph, known, path, done)
            {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(circle) = visit(node, &graph, &known, &mut Vec::new(), &mut done) {
            panic!("an import circle: {}", circle.join(" -> "));
        }
    }
}

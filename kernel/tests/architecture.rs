//! The shape of the kernel, checked: no import cycle between the top-level modules of
//! `kernel/src`, the layering between the product and its test rigs, and a README whose layout
//! table names every module and folder. It reads the source as text (`crate::` paths, `use
//! crate::{…}` groups and the exported macros), so it needs no compiler and runs on the host.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Where each `#[macro_export]` macro is defined: using one is an import of its module.
const MACROS: &[(&str, &str)] = &[
    ("print", "console"),
    ("println", "console"),
    ("eprintln", "console"),
    ("ktest", "ktest"),
    ("kassert", "ktest"),
    ("kassert_eq", "ktest"),
    ("kskip", "ktest"),
    ("symbol_addr", "arch"),
];

/// The product, bottom to top: none of these may import the test side or the root.
const PRODUCT: &[&str] = &[
    "sync", "time", "trace", "board", "mm", "arch", "drivers", "console", "rt", "iommu", "ktest",
];
/// The test side (rigs, workloads, benchmarks, suites) and the composition root.
const ABOVE_PRODUCT: &[&str] = &["rig", "workload", "bench", "suites", "kmain"];
/// The hardware-independent and hardware-facing cores never reach the runtime.
const BELOW_RUNTIME: &[&str] = &["arch", "mm", "iommu", "drivers"];

fn kernel_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One `crate::` reference: the module that makes it, the one it names, and where.
struct Edge {
    from: String,
    to: String,
    at: String,
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules: every folder and every root file except `lib.rs` and `main.rs`.
fn top_level_modules() -> BTreeSet<String> {
    fs::read_dir(kernel_src())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_owned();
            (p.is_dir() || p.extension().is_some_and(|e| e == "rs")).then_some(stem)
        })
        .filter(|m| m != "lib" && m != "main")
        .collect()
}

/// The source with comments and string/char literals blanked out (newlines kept, so line
/// numbers stay right). The kernel has no raw strings, so they are not handled.
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                let skip = if b[i] == '\\' { 2 } else { 1 };
                for k in 0..skip {
                    if let Some(&ch) = b.get(i + k) {
                        out.push(blank(ch));
                    }
                }
                i += skip;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && (next == Some('\\') || b.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n', '\''); a lone quote is a lifetime.
            let end = (i + 2..b.len()).find(|&k| b[k] == '\'' && (k > i + 2 || next != Some('\\')));
            let end = end.unwrap_or(i);
            for _ in i..=end {
                out.push(' ');
            }
            i = end + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The names a `crate::` path starts with: one, or one per item of a `{…}` group.
fn heads(code: &[char], mut i: usize) -> Vec<String> {
    while code.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    if code.get(i) != Some(&'{') {
        let name: String = code[i..].iter().take_while(|c| is_ident(**c)).collect();
        return vec![name];
    }
    let mut names = Vec::new();
    let (mut depth, mut at_item_start) = (0, true);
    for (k, &c) in code.iter().enumerate().skip(i) {
        match c {
            '{' => {
                depth += 1;
                at_item_start = depth == 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => at_item_start = true,
            c if at_item_start && depth == 1 && is_ident(c) => {
                names.push(code[k..].iter().take_while(|c| is_ident(**c)).collect());
                at_item_start = false;
            }
            _ => {}
        }
    }
    names
}

/// Every `crate::` reference between two different top-level modules.
fn edges() -> Vec<Edge> {
    let src = kernel_src();
    let modules = top_level_modules();
    let macros: BTreeMap<&str, &str> = MACROS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let from = first.strip_suffix(".rs").unwrap_or(first).to_owned();
        if from == "lib" || from == "main" {
            continue;
        }
        let code: Vec<char> = code_only(&fs::read_to_string(&file).unwrap())
            .chars()
            .collect();
        let needle: Vec<char> = "crate::".chars().collect();
        let mut line = 1;
        for i in 0..code.len() {
            if code[i] == '\n' {
                line += 1;
            }
            if !code[i..].starts_with(&needle) || (i > 0 && is_ident(code[i - 1])) {
                continue;
            }
            for head in heads(&code, i + needle.len()) {
                let to = match macros.get(head.as_str()) {
                    Some(m) => (*m).to_owned(),
                    None if modules.contains(&head) => head,
                    None => continue,
                };
                let at = format!("{}:{line}", rel.display());
                let seen = edges
                    .last()
                    .is_some_and(|e: &Edge| e.to == to && e.at == at);
                if to != from && !seen {
                    edges.push(Edge {
                        from: from.clone(),
                        to,
                        at,
                    });
                }
            }
        }
    }
    edges
}

/// Tarjan's strongly connected components of the module graph.
fn components(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let edges = edges();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in &edges {
        graph
            .entry(e.from.clone())
            .or_default()
            .insert(e.to.clone());
        graph.entry(e.to.clone()).or_default();
    }
    let mut report = String::new();
    for component in components(&graph).into_iter().filter(|c| c.len() > 1) {
        report += &format!("cycle between {component:?}:\n");
        for e in edges
            .iter()
            .filter(|e| component.contains(&e.from) && component.contains(&e.to))
        {
            report += &format!("  {} -> {} at {}\n", e.from, e.to, e.at);
        }
    }
    assert!(
        report.is_empty(),
        "top-level modules import each other:\n{report}"
    );
}

#[test]
fn product_never_imports_the_test_side_or_the_root() {
    let mut report = String::new();
    for e in edges() {
        let upward = PRODUCT.contains(&e.from.as_str()) && ABOVE_PRODUCT.contains(&e.to.as_str());
        let into_runtime = BELOW_RUNTIME.contains(&e.from.as_str()) && e.to == "rt";
        if upward || into_runtime || e.to == "kmain" {
            report += &format!("  {} -> {} at {}\n", e.from, e.to, e.at);
        }
    }
    assert!(report.is_empty(), "imports against the layering:\n{report}");
}

#[test]
fn every_module_is_placed_in_a_layer() {
    let placed: BTreeSet<&str> = PRODUCT.iter().chain(ABOVE_PRODUCT).copied().collect();
    let unplaced: Vec<String> = top_level_modules()
        .into_iter()
        .filter(|m| !placed.contains(m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "put {unplaced:?} in PRODUCT or ABOVE_PRODUCT"
    );
}

/// The first column of the README's `## Layout` table: every name written in backticks.
fn readme_layout_names(readme: &str) -> BTreeSet<String> {
    let table = readme
        .split("\n## Layout")
        .nth(1)
        .expect("README has a `## Layout` section");
    let table = table.split("\n## ").next().unwrap();
    let mut names = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with('|')) {
        let first = row.split('|').nth(1).unwrap_or("");
        for (k, part) in first.split('`').enumerate() {
            if k % 2 == 1 {
                let name = part.trim_end_matches('/');
                names.insert(name.strip_suffix(".rs").unwrap_or(name).to_owned());
            }
        }
    }
    names
}

#[test]
fn readme_layout_lists_every_module_and_folder() {
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md is {lines} lines: it is a map, move detail to docs/"
    );
    let names = readme_layout_names(&readme);
    let mut wanted: Vec<String> = fs::read_dir(repo_root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .filter(|d| ![".git", "target", "build"].contains(&d.as_str()))
        .collect();
    wanted.extend(["Cargo.toml", "Makefile", "linker.ld"].map(String::from));
    wanted.extend(
        top_level_modules()
            .into_iter()
            .map(|m| format!("kernel/src/{m}")),
    );
    let missing: Vec<&String> = wanted.iter().filter(|w| !names.contains(*w)).collect();
    assert!(
        missing.is_empty(),
        "README's layout table lacks {missing:?}"
    );
}

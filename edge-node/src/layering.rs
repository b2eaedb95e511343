//! The crate's modules depend downward only (the layers in `lib.rs`): a test that reads
//! the sources and fails on an import cycle between top-level modules, naming it. Test
//! modules are left out (a test may reach anywhere); comments too.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level modules under `src` and the `.rs` files of each.
fn modules(src: &Path) -> BTreeMap<String, Vec<std::path::PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(src).expect("src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        collect(&path, &mut files);
        if !files.is_empty() {
            out.insert(name, files);
        }
    }
    out
}

fn collect(path: &Path, files: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).expect("dir") {
            collect(&entry.expect("entry").path(), files);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        files.push(path.to_path_buf());
    }
}

/// The source without its `#[cfg(test)] mod tests` (by convention the file's end) and
/// without comments.
fn code(text: &str) -> String {
    let text = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i]);
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first names of the paths after each `crate::`: `crate::a::b` gives `a`,
/// `crate::{a::b, c}` gives `a` and `c`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Names at the group's own depth, each the start of one path.
            let mut depth = 1;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => start = true,
                    c if depth == 1 && start && (c.is_ascii_alphabetic() || c == '_') => {
                        out.insert(ident(&group[j..]));
                        start = false;
                    }
                    c if !c.is_whitespace() => start = false,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn graph(src: &Path) -> Graph {
    let modules = modules(src);
    modules
        .iter()
        .map(|(name, files)| {
            let used = files
                .iter()
                .flat_map(|f| crate_paths(&code(&fs::read_to_string(f).expect("read"))))
                .filter(|m| m != name && modules.contains_key(m))
                .collect();
            (name.clone(), used)
        })
        .collect()
}

/// A cycle through `from`, if there is one: the modules on it, `from` first.
fn cycle(graph: &Graph, from: &str) -> Option<Vec<String>> {
    // Depth-first, remembering how each module was reached.
    let mut reached: BTreeMap<&str, &str> = BTreeMap::new();
    let mut stack = vec![from];
    while let Some(m) = stack.pop() {
        for next in &graph[m] {
            if next == from {
                let mut path = vec![m.to_string()];
                let mut at = m;
                while at != from {
                    at = reached[at];
                    path.push(at.to_string());
                }
                path.reverse();
                return Some(path);
            }
            if !reached.contains_key(next.as_str()) {
                reached.insert(next, m);
                stack.push(next);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let graph = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() > 10, "the sources were found: {graph:?}");
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles (each ends where it began):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn paths_are_read_with_their_groups() {
    let code = "use crate::{a::x, b::{c, d}, e};\nfn f() { crate::g::h(); }";
    let got: Vec<String> = crate_paths(code).into_iter().collect();
    assert_eq!(got, ["a", "b", "e", "g"]);
    let mut g = Graph::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["a".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    assert_eq!(cycle(&g, "a"), Some(vec!["a".to_string(), "b".to_string()]));
    assert_eq!(cycle(&g, "c"), None);
}

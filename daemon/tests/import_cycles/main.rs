//! No import circles between the library's modules: at every level of the module tree, the
//! dependencies between sibling modules (`sink` and `engine`, `daemon::intake` and
//! `daemon::shared`) go one way, so each module can be read, tested and changed knowing only
//! the ones below it.
//!
//! The check reads the sources itself: it walks the module tree from `src/lib.rs` along the
//! `mod NAME;` declarations (`#[path]` honoured), and takes every path that starts with
//! `crate::`, `super::` or `self::` — in `use` trees and in code — as a dependency of the module
//! that writes it on the module it names. A path from `a::x` to `b::y` is an edge `a -> b`
//! among the children of the crate; one from `daemon::intake` to `daemon::shared::Shared` an
//! edge `intake -> shared` among the children of `daemon`. Paths to a module's own parent or
//! children are no edges. Comments, strings and test code (`#[cfg(test)]` items and the modules
//! they declare) do not count: a test may use whatever it needs. The binary (`main.rs`,
//! `cli/`) is a crate of its own and not checked.
//!
//! [`lex`] turns a file into tokens, [`scan`] reads one file's declarations and paths; this file
//! walks the tree, builds the graph and finds the cycles. Run it alone with
//! `cargo nextest run -p narpush --test import_cycles`.

mod lex;
mod scan;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use scan::scan;

/// A module's path from the crate root (`["daemon", "intake"]`); the root is empty.
type ModPath = Vec<String>;

/// Where one dependency was seen, for the failure message.
#[derive(Clone, Debug)]
struct Evidence {
    file: PathBuf,
    line: usize,
    path: String,
}

/// The edges among the children of each module: parent -> (from -> (to -> first evidence)).
type Graph = BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, Evidence>>>;

/// Walks the module tree from `lib.rs` with `read` (a path relative to `src/` to its text) and
/// returns the edges among siblings at every level.
fn module_graph(read: &dyn Fn(&Path) -> Option<String>) -> Graph {
    let mut modules: BTreeSet<ModPath> = BTreeSet::from([Vec::new()]);
    let mut uses = Vec::new();
    let mut pending = vec![(PathBuf::from("lib.rs"), ModPath::new())];
    while let Some((file, module)) = pending.pop() {
        let source = read(&file).unwrap_or_else(|| panic!("cannot read {}", file.display()));
        let facts = scan(&module, &source);
        let here = file.parent().unwrap_or(Path::new("")).to_path_buf();
        let own_dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "mod.rs") => here.clone(),
            _ => file.with_extension(""),
        };
        for (name, path_attr) in facts.children {
            let child_file = match path_attr {
                Some(path) => here.join(path),
                None => {
                    let flat = own_dir.join(format!("{name}.rs"));
                    if read(&flat).is_some() {
                        flat
                    } else {
                        own_dir.join(&name).join("mod.rs")
                    }
                }
            };
            let mut child = module.clone();
            child.push(name);
            modules.insert(child.clone());
            pending.push((child_file, child));
        }
        modules.extend(facts.inline);
        uses.extend(
            facts
                .uses
                .into_iter()
                .map(|(from, to, line)| (file.clone(), from, to, line)),
        );
    }
    let mut graph = Graph::new();
    for (file, from, to, line) in uses {
        let shared = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if shared >= from.len() || shared >= to.len() || !modules.contains(&to[..=shared]) {
            continue;
        }
        let evidence = Evidence {
            file: file.clone(),
            line,
            path: to.join("::"),
        };
        graph
            .entry(from[..shared].to_vec())
            .or_default()
            .entry(from[shared].clone())
            .or_default()
            .entry(to[shared].clone())
            .or_insert(evidence);
    }
    graph
}

/// One cycle per group of siblings that reach each other, each edge with where it was seen.
fn cycles(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for (parent, edges) in graph {
        let reach = |from: &str| -> BTreeMap<String, String> {
            // Breadth-first, remembering each module's predecessor.
            let mut before = BTreeMap::new();
            let mut queue = VecDeque::from([from.to_owned()]);
            while let Some(node) = queue.pop_front() {
                for next in edges.get(&node).into_iter().flat_map(|e| e.keys()) {
                    if !before.contains_key(next) {
                        before.insert(next.clone(), node.clone());
                        queue.push_back(next.clone());
                    }
                }
            }
            before
        };
        let mut reported: BTreeSet<String> = BTreeSet::new();
        for start in edges.keys() {
            if reported.contains(start) {
                continue;
            }
            let before = reach(start);
            if !before.contains_key(start) {
                continue;
            }
            // Back from `start` along the predecessors: start, its predecessor, …, its successor.
            let mut cycle = vec![start.clone()];
            let mut node = before[start].clone();
            while node != *start {
                cycle.push(node.clone());
                node = before[&node].clone();
            }
            cycle[1..].reverse();
            let name = if parent.is_empty() {
                "crate".to_owned()
            } else {
                parent.join("::")
            };
            let mut text = format!("import cycle among the children of `{name}`:");
            for (k, from) in cycle.iter().enumerate() {
                let to = &cycle[(k + 1) % cycle.len()];
                let seen = &edges[from][to];
                text.push_str(&format!(
                    "\n  {from} -> {to}: src/{}:{} names `{}`",
                    seen.file.display(),
                    seen.line,
                    seen.path
                ));
            }
            reported.extend(cycle);
            found.push(text);
        }
    }
    found
}

#[test]
fn the_library_has_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&|file: &Path| std::fs::read_to_string(src.join(file)).ok());
    // Dependencies known to exist, so that a scan that silently sees nothing fails.
    let edge = |parent: &[&str], from: &str, to: &str| {
        let parent: ModPath = parent.iter().map(|s| (*s).to_owned()).collect();
        graph
            .get(&parent)
            .and_then(|e| e.get(from))
            .is_some_and(|e| e.contains_key(to))
    };
    assert!(
        edge(&[], "engine", "sink"),
        "the scan missed `engine -> sink`"
    );
    assert!(
        edge(&["daemon"], "shared", "intake"),
        "the scan missed `daemon: shared -> intake`"
    );
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "{}\n(move what both need into the lower module, or into a small module of its own)",
        found.join("\n")
    );
}

fn graph_of(files: &[(&str, &str)]) -> Graph {
    let files: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(p, s)| (PathBuf::from(p), (*s).to_owned()))
        .collect();
    module_graph(&|file: &Path| files.get(file).cloned())
}

#[test]
fn a_cycle_between_top_level_modules_is_found_with_where_it_is() {
    let found = cycles(&graph_of(&[
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        ("a.rs", "use crate::b::{B, other::{C}};\npub struct A;\n"),
        ("b.rs", "pub mod other;\n\npub fn f(_: crate::a::A) {}\n"),
        ("b/other.rs", "pub struct C;"),
    ]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("children of `crate`"), "{}", found[0]);
    assert!(
        found[0].contains("a -> b: src/a.rs:1 names `b::B`"),
        "{}",
        found[0]
    );
    assert!(
        found[0].contains("b -> a: src/b.rs:3 names `a::A`"),
        "{}",
        found[0]
    );
}

#[test]
fn a_cycle_between_siblings_inside_a_module_is_found() {
    let found = cycles(&graph_of(&[
        ("lib.rs", "pub mod d;\n"),
        (
            "d/mod.rs",
            "mod x;\n#[path = \"why.rs\"]\nmod y;\npub struct Z;\n",
        ),
        ("d/x.rs", "use super::{y::Y, Z};\npub struct X;\n"),
        ("d/why.rs", "pub struct Y(super::super::d::x::X);\n"),
    ]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("children of `d`"), "{}", found[0]);
}

#[test]
fn parents_children_comments_strings_and_test_code_are_no_edges() {
    let graph = graph_of(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub fn root() {}\n"),
        ("a.rs", "use crate::b::B;\npub fn f() { crate::root(); }\n"),
        (
            "b.rs",
            "// crate::a::f\n/* crate::a::f /* nested */ crate::a::f */\n\
                 const S: &str = \"crate::a::f\";\nconst R: &str = r#\"crate::a\"#;\n\
                 const C: char = '\"'; fn l<'a>(x: &'a str) -> &'a str { x }\n\
                 #[cfg(test)]\nmod tests;\n#[cfg(test)]\nfn t() { crate::a::f(); }\n\
                 #[cfg(test)]\nmod inline { use crate::a::f; }\npub struct B;\n",
        ),
        ("b/tests.rs", "use crate::a::f;\n"),
    ]);
    assert!(cycles(&graph).is_empty(), "{:?}", cycles(&graph));
    let crate_edges = &graph[&ModPath::new()];
    assert!(crate_edges["a"].contains_key("b"));
    assert!(!crate_edges.contains_key("b"), "{crate_edges:?}");
}

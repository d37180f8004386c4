//! NAR listings (`format::listing`): the `.ls` JSON written from a store tree, whose names and
//! symlink targets are whatever bytes a build left behind. For any tree the listing is valid
//! JSON that says exactly what the tree holds (names and targets as lossy UTF-8).
#![no_main]

use libfuzzer_sys::{arbitrary, fuzz_target};
use narpush::format::listing::ListingWriter;
use serde_json::{json, Map, Value};

#[derive(arbitrary::Arbitrary, Debug)]
enum Node {
    Regular {
        size: u64,
        executable: bool,
        nar_offset: u64,
    },
    Symlink(Vec<u8>),
    Directory(Vec<(Vec<u8>, Node)>),
}

/// Deeper trees than this exceed serde_json's recursion limit (two objects per level).
const MAX_DEPTH: usize = 50;

fuzz_target!(|root: Node| {
    if depth(&root) > MAX_DEPTH {
        return;
    }
    let mut writer = ListingWriter::new();
    write(&mut writer, &root);
    let bytes = writer.finish();
    let parsed: Value = serde_json::from_slice(&bytes).expect("a listing is valid JSON");
    assert_eq!(parsed, json!({"version": 1, "root": expected(&root)}));
});

fn depth(node: &Node) -> usize {
    match node {
        Node::Directory(entries) => 1 + entries.iter().map(|(_, n)| depth(n)).max().unwrap_or(0),
        _ => 1,
    }
}

fn write(writer: &mut ListingWriter, node: &Node) {
    match node {
        Node::Regular {
            size,
            executable,
            nar_offset,
        } => writer.regular(*size, *executable, *nar_offset),
        Node::Symlink(target) => writer.symlink(target),
        Node::Directory(entries) => {
            writer.start_directory();
            for (name, child) in entries {
                writer.entry(name);
                write(writer, child);
            }
            writer.end_directory();
        }
    }
}

fn expected(node: &Node) -> Value {
    match node {
        Node::Regular {
            size,
            executable,
            nar_offset,
        } => {
            let mut fields = Map::new();
            fields.insert("type".into(), json!("regular"));
            fields.insert("size".into(), json!(size));
            if *executable {
                fields.insert("executable".into(), json!(true));
            }
            if *nar_offset != 0 {
                fields.insert("narOffset".into(), json!(nar_offset));
            }
            Value::Object(fields)
        }
        Node::Symlink(target) => {
            json!({"type": "symlink", "target": String::from_utf8_lossy(target)})
        }
        Node::Directory(entries) => {
            // A JSON reader keeps the last of two equal keys, and so does a map.
            let mut map = Map::new();
            for (name, child) in entries {
                map.insert(String::from_utf8_lossy(name).into_owned(), expected(child));
            }
            json!({"type": "directory", "entries": map})
        }
    }
}

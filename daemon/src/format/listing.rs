//! The `.ls` NAR listing: the JSON document Nix's binary cache writer puts beside a narinfo
//! (`write-nar-listing=true`), written while the NAR is serialized, so the tree is read once.
//!
//! # Format (Nix 2.8 `listNar` through its `JSONWriter`, compact, no whitespace)
//!
//! ```text
//! {"version":1,"root":NODE}
//! NODE ::= {"type":"regular","size":N[,"executable":true],"narOffset":OFFSET}
//!        | {"type":"symlink","target":STRING}
//!        | {"type":"directory","entries":{NAME:NODE,…}}
//! ```
//!
//! `narOffset` is the position of the file's contents in the uncompressed NAR (after the
//! `contents` token and the size), as Nix's lazy NAR accessor reads them. Entries come in the
//! NAR's order (raw bytes ascending), which is also the order Nix writes them in.
//!
//! # Strings
//!
//! Nix escapes `"` and `\` with a backslash, newline, carriage return and tab as `\n`, `\r`,
//! `\t`, every other byte below 0x20 as `\u00xx` (lowercase hex), and copies every other byte
//! raw. For UTF-8 names and targets this writer produces the same bytes. Nix copies invalid
//! UTF-8 raw too, which makes the document invalid JSON; here each maximal invalid sequence
//! becomes U+FFFD (`String::from_utf8_lossy`), so the listing stays valid JSON. Two names of
//! one directory that differ only in their invalid bytes then share a key; JSON readers keep
//! the last of them.
//!
//! Memory: the document grows with the number of entries (about 50 bytes plus the name per
//! entry), independent of file sizes.

use std::fmt::Write as _;

/// Builds a listing from the events of one NAR serialization, in NAR order.
#[derive(Debug)]
pub struct ListingWriter {
    json: String,
    /// Per open directory: whether an entry was written yet (for commas).
    open_directories: Vec<bool>,
}

impl Default for ListingWriter {
    fn default() -> Self {
        ListingWriter::new()
    }
}

impl ListingWriter {
    pub fn new() -> ListingWriter {
        ListingWriter {
            json: String::from(r#"{"version":1,"root":"#),
            open_directories: Vec::new(),
        }
    }

    /// A regular file of `size` bytes whose contents start at `nar_offset` in the NAR.
    pub fn regular(&mut self, size: u64, executable: bool, nar_offset: u64) {
        let _ = write!(self.json, r#"{{"type":"regular","size":{size}"#);
        if executable {
            self.json.push_str(r#","executable":true"#);
        }
        // Nix leaves out an offset of 0, which no file's contents can have.
        if nar_offset != 0 {
            let _ = write!(self.json, r#","narOffset":{nar_offset}"#);
        }
        self.json.push('}');
    }

    /// A symlink to `target` (raw bytes of `readlink`).
    pub fn symlink(&mut self, target: &[u8]) {
        self.json.push_str(r#"{"type":"symlink","target":"#);
        push_json_string(&mut self.json, target);
        self.json.push('}');
    }

    /// Opens a directory; its entries follow, then [`ListingWriter::end_directory`].
    pub fn start_directory(&mut self) {
        self.json.push_str(r#"{"type":"directory","entries":{"#);
        self.open_directories.push(false);
    }

    /// Names the next node of the innermost open directory.
    pub fn entry(&mut self, name: &[u8]) {
        if let Some(has_entries) = self.open_directories.last_mut() {
            if *has_entries {
                self.json.push(',');
            }
            *has_entries = true;
        }
        push_json_string(&mut self.json, name);
        self.json.push(':');
    }

    pub fn end_directory(&mut self) {
        self.open_directories.pop();
        self.json.push_str("}}");
    }

    /// The finished document. Only meaningful once the root node is complete.
    pub fn finish(mut self) -> Vec<u8> {
        debug_assert!(self.open_directories.is_empty());
        self.json.push('}');
        self.json.into_bytes()
    }
}

/// Appends `bytes` as a JSON string, escaped as Nix escapes (see the module doc).
fn push_json_string(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(bytes: &[u8]) -> String {
        let mut out = String::new();
        push_json_string(&mut out, bytes);
        out
    }

    #[test]
    fn strings_are_escaped_as_nix_escapes_them() {
        assert_eq!(string(b"plain"), r#""plain""#);
        assert_eq!(string(b"q\"b\\"), r#""q\"b\\""#);
        assert_eq!(string(b"\n\r\t"), r#""\n\r\t""#);
        // Nix has no short forms for backspace and form feed, unlike most JSON writers.
        assert_eq!(string(b"\x08\x0c\x01\x1f"), r#""\u0008\u000c\u0001\u001f""#);
        // DEL and non-ASCII UTF-8 are copied raw.
        assert_eq!(string("\x7fé→😀".as_bytes()), "\"\x7fé→😀\"");
        assert_eq!(string(b""), r#""""#);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters_and_stays_valid_json() {
        let escaped = string(b"a\xffb\xc3");
        assert_eq!(escaped, "\"a\u{fffd}b\u{fffd}\"");
        let parsed: String = serde_json::from_str(&escaped).unwrap();
        assert_eq!(parsed, "a\u{fffd}b\u{fffd}");
    }

    #[test]
    fn every_control_character_round_trips_through_a_json_parser() {
        let all: Vec<u8> = (0u8..0x80).collect();
        let parsed: String = serde_json::from_str(&string(&all)).unwrap();
        assert_eq!(parsed.as_bytes(), &all[..]);
    }

    #[test]
    fn a_tree_is_written_in_nix_key_order_without_whitespace() {
        let mut listing = ListingWriter::new();
        listing.start_directory();
        listing.entry(b"bin");
        listing.start_directory();
        listing.entry(b"hello");
        listing.regular(18, true, 400);
        listing.end_directory();
        listing.entry(b"empty");
        listing.start_directory();
        listing.end_directory();
        listing.entry(b"link");
        listing.symlink(b"ref");
        listing.entry(b"ref");
        listing.regular(51, false, 832);
        listing.end_directory();
        let json = String::from_utf8(listing.finish()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"version":1,"root":{"type":"directory","entries":{"#,
                r#""bin":{"type":"directory","entries":{"hello":{"type":"regular","size":18,"executable":true,"narOffset":400}}},"#,
                r#""empty":{"type":"directory","entries":{}},"#,
                r#""link":{"type":"symlink","target":"ref"},"#,
                r#""ref":{"type":"regular","size":51,"narOffset":832}}}}"#
            )
        );
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }

    #[test]
    fn a_lone_file_or_symlink_is_the_root() {
        let mut file = ListingWriter::new();
        file.regular(0, false, 96);
        assert_eq!(
            file.finish(),
            br#"{"version":1,"root":{"type":"regular","size":0,"narOffset":96}}"#
        );
        let mut link = ListingWriter::new();
        link.symlink(b"/nix/store/x");
        assert_eq!(
            link.finish(),
            br#"{"version":1,"root":{"type":"symlink","target":"/nix/store/x"}}"#
        );
    }
}

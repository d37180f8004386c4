//! The output paths of a derivation, read from its `.drv` file.
//!
//! Nix 2.8.0 runs the post-build-hook with an empty `OUT_PATHS` (NixOS/nix#6446), so the
//! daemon learns what was built from `DRV_PATH`. A `.drv` is an ATerm that starts with its
//! outputs: `Derive([("out","/nix/store/…-name","",""),("dev","/nix/store/…-name-dev","","")],…`
//! Reading that list directly costs microseconds, where `nix-store -q --outputs` costs a
//! process; the daemon does it while the hook waits for its acknowledgement.
//!
//! The input derivations come next (`[("/nix/store/…-dep.drv",["out"]),…]`): a floating
//! content-addressed derivation names no output paths (`("out","","r:sha256","")`), so its
//! outputs and those of its inputs are found through their realisations, by derivation.
//!
//! Invariant: only these two lists are parsed, strictly (any deviation is an error naming the
//! file), and every path returned is a validated [`StorePath`].

use super::store_path::{StorePath, StorePathError};

#[derive(Debug, thiserror::Error)]
pub enum DerivationError {
    #[error("not a derivation: it does not start with 'Derive([' ")]
    NotDerivation,
    #[error("malformed outputs list at byte {offset}: expected {expected}")]
    Malformed {
        offset: usize,
        expected: &'static str,
    },
    #[error("output '{name}' has an invalid path")]
    BadPath {
        name: String,
        #[source]
        source: StorePathError,
    },
}

/// The start of a derivation: its outputs (with a path unless floating content-addressed) and
/// its input derivations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DerivationHead {
    pub outputs: Vec<(String, Option<StorePath>)>,
    pub input_derivations: Vec<StorePath>,
}

impl DerivationHead {
    /// Whether some output's path is only known once built (a floating CA derivation).
    pub fn has_floating_outputs(&self) -> bool {
        self.outputs.iter().any(|(_, path)| path.is_none())
    }
}

/// The `(output name, path)` pairs of a derivation's outputs that have a path.
pub fn output_paths(drv_text: &str) -> Result<Vec<(String, StorePath)>, DerivationError> {
    let head = parse_head(drv_text)?;
    Ok(head
        .outputs
        .into_iter()
        .filter_map(|(name, path)| Some((name, path?)))
        .collect())
}

/// Parses the outputs and input derivations of a `.drv`.
pub fn parse_head(drv_text: &str) -> Result<DerivationHead, DerivationError> {
    let mut reader = Reader {
        text: drv_text.as_bytes(),
        at: 0,
    };
    if !drv_text.starts_with("Derive([") {
        return Err(DerivationError::NotDerivation);
    }
    reader.at = "Derive([".len();
    let outputs = read_outputs(&mut reader)?;
    reader.expect(b',', "','")?;
    reader.expect(b'[', "'['")?;
    let mut input_derivations = Vec::new();
    if reader.peek() == Some(b']') {
        reader.next();
    } else {
        loop {
            reader.expect(b'(', "'('")?;
            let path = reader.string()?;
            let parsed = StorePath::from_absolute_path(&path).map_err(|source| {
                DerivationError::BadPath {
                    name: path.clone(),
                    source,
                }
            })?;
            input_derivations.push(parsed);
            reader.expect(b',', "','")?;
            reader.expect(b'[', "'['")?;
            if reader.peek() == Some(b']') {
                reader.next();
            } else {
                loop {
                    reader.string()?;
                    if !reader.list_continues()? {
                        break;
                    }
                }
            }
            reader.expect(b')', "')'")?;
            if !reader.list_continues()? {
                break;
            }
        }
    }
    Ok(DerivationHead {
        outputs,
        input_derivations,
    })
}

fn read_outputs(reader: &mut Reader) -> Result<Vec<(String, Option<StorePath>)>, DerivationError> {
    let mut outputs = Vec::new();
    if reader.peek() == Some(b']') {
        reader.next();
        return Ok(outputs);
    }
    loop {
        reader.expect(b'(', "'('")?;
        let name = reader.string()?;
        reader.expect(b',', "','")?;
        let path = reader.string()?;
        for _ in 0..2 {
            reader.expect(b',', "','")?;
            reader.string()?;
        }
        reader.expect(b')', "')'")?;
        let parsed = if path.is_empty() {
            None
        } else {
            Some(StorePath::from_absolute_path(&path).map_err(|source| {
                DerivationError::BadPath {
                    name: name.clone(),
                    source,
                }
            })?)
        };
        outputs.push((name, parsed));
        if !reader.list_continues()? {
            return Ok(outputs);
        }
    }
}

struct Reader<'a> {
    text: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    /// After a list element: `,` (another follows) or `]` (the list ended).
    fn list_continues(&mut self) -> Result<bool, DerivationError> {
        match self.next() {
            Some(b',') => Ok(true),
            Some(b']') => Ok(false),
            _ => Err(DerivationError::Malformed {
                offset: self.at,
                expected: "',' or ']'",
            }),
        }
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), DerivationError> {
        match self.next() {
            Some(b) if b == byte => Ok(()),
            _ => Err(DerivationError::Malformed {
                offset: self.at,
                expected,
            }),
        }
    }

    /// A double-quoted ATerm string with backslash escapes.
    fn string(&mut self) -> Result<String, DerivationError> {
        self.expect(b'"', "a string")?;
        let mut bytes = Vec::new();
        loop {
            match self.next() {
                Some(b'"') => break,
                Some(b'\\') => match self.next() {
                    Some(b'n') => bytes.push(b'\n'),
                    Some(b'r') => bytes.push(b'\r'),
                    Some(b't') => bytes.push(b'\t'),
                    Some(other) => bytes.push(other),
                    None => break,
                },
                Some(other) => bytes.push(other),
                None => {
                    return Err(DerivationError::Malformed {
                        offset: self.at,
                        expected: "the end of a string",
                    })
                }
            }
        }
        String::from_utf8(bytes).map_err(|_| DerivationError::Malformed {
            offset: self.at,
            expected: "UTF-8 text",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of a real Nix 2.8 `.drv` with two outputs.
    const TWO_OUTPUTS: &str = r#"Derive([("dev","/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-x-dev","",""),("out","/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-x","","")],[],["/nix/store/abc-src"],"x86_64-linux","/bin/sh",["-c","echo \"hi\" > $out"],[("name","x")])"#;

    #[test]
    fn every_output_path_is_read_in_order() {
        let outputs = output_paths(TWO_OUTPUTS).unwrap();
        let names: Vec<_> = outputs
            .iter()
            .map(|(n, p)| (n.as_str(), p.name()))
            .collect();
        assert_eq!(names, vec![("dev", "x-dev"), ("out", "x")]);
    }

    #[test]
    fn content_addressed_outputs_without_a_path_are_skipped() {
        let floating = r#"Derive([("out","","r:sha256","")],[],[],"x","/bin/sh",[],[])"#;
        assert!(output_paths(floating).unwrap().is_empty());
    }

    #[test]
    fn a_floating_derivation_names_its_input_derivations() {
        // The start of a real Nix 2.8 `.drv` of a CA derivation depending on another.
        let text = r#"Derive([("out","","r:sha256","")],[("/nix/store/y16pz9xp69g8gywiv27wyzvf6baw3d5p-ca-a.drv",["out"]),("/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-x.drv",["dev","out"])],[],"x86_64-linux","/bin/sh",["-c","mkdir $out"],[("name","ca-b")])"#;
        let head = parse_head(text).unwrap();
        assert!(head.has_floating_outputs());
        assert_eq!(head.outputs, vec![("out".to_owned(), None)]);
        let inputs: Vec<_> = head.input_derivations.iter().map(|p| p.name()).collect();
        assert_eq!(inputs, vec!["ca-a.drv", "x.drv"]);
        let fixed = parse_head(TWO_OUTPUTS).unwrap();
        assert!(!fixed.has_floating_outputs());
        assert!(fixed.input_derivations.is_empty());
    }

    #[test]
    fn garbage_and_bad_paths_are_errors() {
        assert!(matches!(
            output_paths("{}"),
            Err(DerivationError::NotDerivation)
        ));
        let bad_path = r#"Derive([("out","/nix/store/x","","")],[],[])"#;
        assert!(matches!(
            output_paths(bad_path),
            Err(DerivationError::BadPath { .. })
        ));
        let unclosed = r#"Derive([("out","/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-x","",""}"#;
        assert!(matches!(
            output_paths(unclosed),
            Err(DerivationError::Malformed { .. })
        ));
    }
}

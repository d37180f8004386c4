//! The output paths of a derivation, read from its `.drv` file.
//!
//! Nix 2.8.0 runs the post-build-hook with an empty `OUT_PATHS` (NixOS/nix#6446), so the
//! daemon learns what was built from `DRV_PATH`. A `.drv` is an ATerm that starts with its
//! outputs: `Derive([("out","/nix/store/…-name","",""),("dev","/nix/store/…-name-dev","","")],…`
//! Reading that list directly costs microseconds, where `nix-store -q --outputs` costs a
//! process; the daemon does it while the hook waits for its acknowledgement.
//!
//! Invariant: only the outputs list is parsed, strictly (any deviation is an error naming the
//! file), and every path it returns is a validated [`StorePath`]. Outputs without a path
//! (content-addressed derivations) are skipped: their paths are only known after the build.

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

/// The `(output name, path)` pairs of a derivation's outputs that have a path.
pub fn output_paths(drv_text: &str) -> Result<Vec<(String, StorePath)>, DerivationError> {
    let mut reader = Reader {
        text: drv_text.as_bytes(),
        at: 0,
    };
    if !drv_text.starts_with("Derive([") {
        return Err(DerivationError::NotDerivation);
    }
    reader.at = "Derive([".len();
    let mut outputs = Vec::new();
    if reader.peek() == Some(b']') {
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
        if !path.is_empty() {
            let parsed = StorePath::from_absolute_path(&path).map_err(|source| {
                DerivationError::BadPath {
                    name: name.clone(),
                    source,
                }
            })?;
            outputs.push((name, parsed));
        }
        match reader.next() {
            Some(b',') => continue,
            Some(b']') => return Ok(outputs),
            _ => {
                return Err(DerivationError::Malformed {
                    offset: reader.at,
                    expected: "',' or ']'",
                })
            }
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

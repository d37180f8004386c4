//! SHA-256 digests as Nix writes and reads them, and a writer that hashes what it forwards.
//!
//! A digest is held as its 32 raw bytes ([`Sha256`]); text appears only at the edges.
//!
//! **Reading** ([`Sha256::parse`]) is as lenient as Nix's `Hash::parseAnyPrefixed`, plus the
//! bare forms narpush meets in Nix's database and daemon protocol:
//!
//! | input | example | where it occurs |
//! |---|---|---|
//! | `sha256:` + 52 nix32 chars | `sha256:1b4s…ys0` | narinfo, fingerprint, `nix-store -q --hash` |
//! | `sha256:` + 64 hex digits | `sha256:407b…aac` | `db.sqlite` `ValidPaths.hash` |
//! | `sha256:` + 44 base64 chars | `sha256:QHvN…qw=` | accepted by Nix, rarely written |
//! | `sha256-` + 44 base64 chars (SRI) | `sha256-QHvN…qw=` | `nix path-info --json` |
//! | bare 64 hex digits / 52 nix32 chars | `407b…aac` | daemon protocol `QueryPathInfo` |
//!
//! The encoding after `sha256:` is told apart by length, as Nix does; any other algorithm
//! prefix is [`HashError::UnsupportedAlgorithm`], because only sha256 appears in narinfos.
//!
//! **Writing** has one canonical form: [`Sha256`]'s `Display` is `sha256:<nix32>`, the only
//! form Nix writes into narinfos and fingerprints (a signature made over any other rendering
//! would not verify).
//!
//! [`HashingWriter`] computes a digest and a byte count of exactly the bytes its inner writer
//! accepted, so NarHash/NarSize (or FileHash/FileSize) come out of the same pass that
//! produces the data.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::Digest as _;
use thiserror::Error;

use super::nixbase32;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Sha256(pub [u8; 32]);

/// A string that is not a sha256 hash in any encoding Nix accepts.
#[derive(Debug, Error)]
pub enum HashError {
    /// A prefix naming another algorithm (`sha1:`, `sha512-`, …) or no recognizable form.
    #[error("'{input}' is not a sha256 hash (expected 'sha256:…', 'sha256-…', or bare hex/nix32)")]
    UnsupportedAlgorithm { input: String },
    /// The text after `sha256:` has a length no sha256 encoding has.
    #[error(
        "hash '{input}' has {len} characters after 'sha256:'; \
         expected 64 (base16), 52 (nix32) or 44 (base64)"
    )]
    BadLength { input: String, len: usize },
    /// 64 characters that are not all hex digits.
    #[error("hash '{input}' is not valid base16")]
    InvalidBase16 { input: String },
    /// 52 characters that are not valid nix32.
    #[error("hash '{input}' is not valid nix32")]
    InvalidNix32 {
        input: String,
        #[source]
        source: nixbase32::DecodeError,
    },
    /// Base64 (after `sha256:` or in SRI form) that does not decode.
    #[error("hash '{input}' is not valid base64")]
    InvalidBase64 {
        input: String,
        #[source]
        source: base64::DecodeError,
    },
    /// Base64 that decodes to something other than 32 bytes.
    #[error("hash '{input}' decodes to {len} bytes, not the 32 of a sha256")]
    WrongDigestLength { input: String, len: usize },
}

impl Sha256 {
    /// The digest of `bytes`.
    pub fn digest(bytes: impl AsRef<[u8]>) -> Sha256 {
        Sha256(sha2::Sha256::digest(bytes.as_ref()).into())
    }

    /// Parses any form listed in the module documentation.
    pub fn parse(s: &str) -> Result<Sha256, HashError> {
        if let Some(rest) = s.strip_prefix("sha256:") {
            return match rest.len() {
                64 => parse_base16(s, rest),
                52 => parse_nix32(s, rest),
                44 => parse_base64(s, rest),
                len => Err(HashError::BadLength {
                    input: s.to_owned(),
                    len,
                }),
            };
        }
        if let Some(rest) = s.strip_prefix("sha256-") {
            return parse_base64(s, rest);
        }
        match s.len() {
            64 if !s.contains(':') => parse_base16(s, s),
            52 if !s.contains(':') => parse_nix32(s, s),
            _ => Err(HashError::UnsupportedAlgorithm {
                input: s.to_owned(),
            }),
        }
    }

    /// The 52-character nix32 form, without prefix (as in NAR file names).
    pub fn to_nix32(&self) -> String {
        nixbase32::encode(&self.0)
    }

    /// The 64-character lowercase hex form, without prefix.
    pub fn to_base16(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        out
    }

    /// The 44-character standard base64 form, without prefix.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// The SRI form `sha256-<base64>` (as `nix path-info --json` prints it).
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", self.to_base64())
    }
}

/// `sha256:<nix32>`, the form narinfos and fingerprints use.
impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl FromStr for Sha256 {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Sha256::parse(s)
    }
}

fn parse_base16(input: &str, digits: &str) -> Result<Sha256, HashError> {
    let invalid = || HashError::InvalidBase16 {
        input: input.to_owned(),
    };
    let bytes = digits.as_bytes();
    if bytes.len() != 64 {
        return Err(invalid());
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = hex_value(pair[0]).ok_or_else(invalid)?;
        let lo = hex_value(pair[1]).ok_or_else(invalid)?;
        *slot = hi << 4 | lo;
    }
    Ok(Sha256(out))
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_nix32(input: &str, digits: &str) -> Result<Sha256, HashError> {
    let bytes = nixbase32::decode(digits).map_err(|source| HashError::InvalidNix32 {
        input: input.to_owned(),
        source,
    })?;
    to_digest(input, bytes)
}

fn parse_base64(input: &str, text: &str) -> Result<Sha256, HashError> {
    let bytes = BASE64
        .decode(text)
        .map_err(|source| HashError::InvalidBase64 {
            input: input.to_owned(),
            source,
        })?;
    to_digest(input, bytes)
}

fn to_digest(input: &str, bytes: Vec<u8>) -> Result<Sha256, HashError> {
    let len = bytes.len();
    let array: [u8; 32] = bytes.try_into().map_err(|_| HashError::WrongDigestLength {
        input: input.to_owned(),
        len,
    })?;
    Ok(Sha256(array))
}

/// Forwards writes to `W` and hashes (and counts) exactly the bytes `W` accepted.
///
/// Writing through [`HashingWriter::get_mut`] bypasses the hash; it exists for inner
/// writers that need configuring mid-stream, not for data.
pub struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: sha2::Sha256::new(),
            written: 0,
        }
    }

    /// Bytes accepted so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Returns the inner writer, the digest and the byte count. Does not flush `W`.
    pub fn finish(self) -> (W, Sha256, u64) {
        (
            self.inner,
            Sha256(self.hasher.finalize().into()),
            self.written,
        )
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // A conforming writer never reports more than it was given; `get` keeps a buggy
        // one from making us panic.
        let accepted = buf.get(..n).unwrap_or(buf);
        self.hasher.update(accepted);
        self.written += accepted.len() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIX32: &str = "1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0";
    const HEX: &str = "407bcd9b608b7a78f9885930c2ce1fcafae0977d31ccd43fc1e998cb475a9aac";
    const B64: &str = "QHvNm2CLenj5iFkwws4fyvrgl30xzNQ/wemYy0damqw=";

    fn reference() -> Sha256 {
        parse_base16(HEX, HEX).unwrap()
    }

    /// Checks that an error is the expected variant.
    type IsExpected = fn(&HashError) -> bool;

    #[test]
    fn every_accepted_encoding_parses_to_the_same_digest() {
        let inputs = [
            format!("sha256:{NIX32}"),
            format!("sha256:{HEX}"),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha256:{B64}"),
            format!("sha256-{B64}"),
            NIX32.to_owned(),
            HEX.to_owned(),
        ];
        for input in inputs {
            assert_eq!(Sha256::parse(&input).unwrap(), reference(), "{input}");
        }
    }

    #[test]
    fn display_is_the_prefixed_nix32_form() {
        let h = reference();
        assert_eq!(h.to_string(), format!("sha256:{NIX32}"));
        assert_eq!(h.to_nix32(), NIX32);
        assert_eq!(h.to_base16(), HEX);
        assert_eq!(h.to_sri(), format!("sha256-{B64}"));
        assert_eq!(h.to_string().parse::<Sha256>().unwrap(), h);
    }

    #[test]
    fn digest_of_the_hello_nar_matches_the_reference() {
        // The 120-byte NAR of a file containing "hello\n" (§1.3); its bytes are checked in nar.rs.
        let h =
            Sha256::parse("sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw").unwrap();
        assert_eq!(
            h.to_base16(),
            "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
        );
        assert_eq!(
            h.to_sri(),
            "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="
        );
    }

    #[test]
    fn malformed_hashes_name_the_input_and_the_problem() {
        let not_hex = format!("sha256:{}", "z".repeat(64));
        let cases: [(&str, IsExpected); 7] = [
            ("md5:abc", |e| {
                matches!(e, HashError::UnsupportedAlgorithm { .. })
            }),
            ("sha512-abc", |e| {
                matches!(e, HashError::UnsupportedAlgorithm { .. })
            }),
            ("sha256:abc", |e| {
                matches!(e, HashError::BadLength { len: 3, .. })
            }),
            (&not_hex, |e| matches!(e, HashError::InvalidBase16 { .. })),
            (
                "sha256:eb4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0",
                |e| matches!(e, HashError::InvalidNix32 { .. }),
            ),
            ("sha256-!!!!", |e| {
                matches!(e, HashError::InvalidBase64 { .. })
            }),
            ("sha256-AAAA", |e| {
                matches!(e, HashError::WrongDigestLength { len: 3, .. })
            }),
        ];
        for (input, expected) in cases {
            let err = Sha256::parse(input).unwrap_err();
            assert!(expected(&err), "{input}: {err:?}");
            assert!(err.to_string().contains(input), "{err} lacks {input}");
        }
    }

    #[test]
    fn hashing_writer_hashes_and_counts_what_it_forwards() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hel").unwrap();
        w.write_all(b"lo\n").unwrap();
        assert_eq!(w.bytes_written(), 6);
        assert_eq!(w.get_ref().len(), 6);
        let (inner, digest, count) = w.finish();
        assert_eq!(inner, b"hello\n");
        assert_eq!(digest, Sha256::digest(b"hello\n"));
        assert_eq!(count, 6);
    }

    #[test]
    fn hashing_writer_hashes_only_what_a_short_writer_accepted() {
        struct TwoAtATime(Vec<u8>);
        impl Write for TwoAtATime {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(2);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = HashingWriter::new(TwoAtATime(Vec::new()));
        assert_eq!(w.write(b"abcdef").unwrap(), 2);
        w.write_all(b"cdef").unwrap();
        let (inner, digest, count) = w.finish();
        assert_eq!(inner.0, b"abcdef");
        assert_eq!((digest, count), (Sha256::digest(b"abcdef"), 6));
    }
}

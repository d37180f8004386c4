//! Nix's base-32 encoding ("nix32"), used for store-path hash parts and `sha256:` hashes.
//!
//! This is not RFC 4648 base32, which is why a generic crate will not do:
//!
//! - the alphabet is `0123456789abcdfghijklmnpqrsvwxyz` (no `e`, `o`, `u`, `t`);
//! - the input is read as one *little-endian* integer and its base-32 digits are printed
//!   most-significant first, so the bit order is reversed compared with RFC 4648;
//! - there is no padding: `n` bytes always take [`encoded_len`]`(n)` = `(8n - 1) / 5 + 1`
//!   characters (20 bytes → 32 chars, 32 bytes → 52 chars).
//!
//! Because `5 * encoded_len(n)` may exceed `8n`, the leading digit can carry bits that fall
//! outside the decoded bytes. Nix rejects such strings ("invalid base-32 hash"), and so does
//! [`decode`] ([`DecodeError::NonZeroOverflow`]); characters outside the alphabet are
//! [`DecodeError::InvalidChar`]. Together these make `decode` the exact inverse of [`encode`]:
//! every string it accepts is the encoding of the bytes it returns.

use thiserror::Error;

/// The 32 digits, indexed by value.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A string that is not the nix32 encoding of any byte string.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A character outside the nix32 alphabet (which has no `e`, `o`, `u` or `t`).
    #[error("invalid character '{ch}' at offset {offset} of nix32 string '{input}'")]
    InvalidChar {
        input: String,
        ch: char,
        offset: usize,
    },
    /// The leading digit sets bits beyond the last decoded byte.
    #[error("nix32 string '{input}' sets bits beyond its {decoded_len} decoded bytes")]
    NonZeroOverflow { input: String, decoded_len: usize },
}

/// Number of nix32 characters that encode `nbytes` bytes.
pub fn encoded_len(nbytes: usize) -> usize {
    if nbytes == 0 {
        0
    } else {
        (nbytes * 8 - 1) / 5 + 1
    }
}

/// Number of bytes that `nchars` nix32 characters decode to (the remainder bits are the
/// overflow bits that must be zero).
pub fn decoded_len(nchars: usize) -> usize {
    nchars * 5 / 8
}

/// Whether `c` is one of the 32 nix32 digits.
pub fn is_valid_char(c: char) -> bool {
    digit_value(c).is_some()
}

fn digit_value(c: char) -> Option<u8> {
    let b = u8::try_from(c).ok()?;
    ALPHABET.iter().position(|&a| a == b).map(|p| p as u8)
}

/// Encodes `bytes` as nix32, most-significant digit first.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        // `i < bytes.len()` always: the highest digit starts at bit 5*(len-1) <= 8*nbytes - 1.
        let low = u16::from(bytes[i]) >> j;
        let high = bytes.get(i + 1).map_or(0, |&b| u16::from(b) << (8 - j));
        out.push(char::from(ALPHABET[usize::from((low | high) & 0x1f)]));
    }
    out
}

/// Decodes a nix32 string into `decoded_len(s.len())` bytes.
pub fn decode(s: &str) -> Result<Vec<u8>, DecodeError> {
    // Validate every character first, so the error names the first bad one from the left
    // and the loop below can index bytes (all ASCII from here on).
    let mut digits = Vec::with_capacity(s.len());
    for (offset, ch) in s.char_indices() {
        match digit_value(ch) {
            Some(d) => digits.push(d),
            None => {
                return Err(DecodeError::InvalidChar {
                    input: s.to_owned(),
                    ch,
                    offset,
                })
            }
        }
    }

    let out_len = decoded_len(digits.len());
    let mut out = vec![0u8; out_len];
    for (n, &digit) in digits.iter().rev().enumerate() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let shifted = u16::from(digit) << j;
        for (index, part) in [(i, shifted & 0xff), (i + 1, shifted >> 8)] {
            match out.get_mut(index) {
                Some(byte) => *byte |= part as u8,
                None if part != 0 => {
                    return Err(DecodeError::NonZeroOverflow {
                        input: s.to_owned(),
                        decoded_len: out_len,
                    })
                }
                None => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const SHA256_NIX32: &str = "1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0";
    const SHA256_HEX: &str = "407bcd9b608b7a78f9885930c2ce1fcafae0977d31ccd43fc1e998cb475a9aac";

    #[test]
    fn single_bytes_match_the_reference_vectors() {
        assert_eq!(encode(&[0x01]), "01");
        assert_eq!(encode(&[0xff]), "7z");
        assert_eq!(decode("01").unwrap(), vec![0x01]);
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
    }

    #[test]
    fn sha256_vector_encodes_and_decodes_both_ways() {
        assert_eq!(encode(&hex(SHA256_HEX)), SHA256_NIX32);
        assert_eq!(decode(SHA256_NIX32).unwrap(), hex(SHA256_HEX));
    }

    #[test]
    fn empty_input_is_the_empty_string() {
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn lengths_match_store_path_and_sha256_sizes() {
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(decoded_len(32), 20);
        assert_eq!(decoded_len(52), 32);
        for n in 0..100 {
            assert_eq!(decoded_len(encoded_len(n)), n, "length {n}");
        }
    }

    #[test]
    fn every_length_round_trips() {
        for n in 0..70usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8 ^ 0xa5).collect();
            let encoded = encode(&bytes);
            assert_eq!(encoded.len(), encoded_len(n));
            assert_eq!(decode(&encoded).unwrap(), bytes);
        }
    }

    #[test]
    fn sha256_encodings_start_with_zero_or_one() {
        assert!(encode(&[0xff; 32]).starts_with('1'));
        assert!(encode(&[0x00; 32]).starts_with('0'));
    }

    #[test]
    fn letters_missing_from_the_alphabet_are_rejected() {
        for bad in ['e', 'o', 'u', 't', 'A', '-', 'é'] {
            let input = format!("0{bad}");
            match decode(&input) {
                Err(DecodeError::InvalidChar { ch, offset, .. }) => {
                    assert_eq!((ch, offset), (bad, 1));
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn overflow_bits_in_the_leading_digit_are_rejected() {
        // Two digits decode to one byte; "8z" would need a ninth bit.
        let err = decode("8z").unwrap_err();
        assert_eq!(
            err,
            DecodeError::NonZeroOverflow {
                input: "8z".into(),
                decoded_len: 1
            }
        );
        // A single digit decodes to zero bytes, so only "0" is valid.
        assert_eq!(decode("0").unwrap(), Vec::<u8>::new());
        assert!(decode("1").is_err());
        // A 52-char sha256 may only start with 0 or 1.
        let bad = format!("2{}", &SHA256_NIX32[1..]);
        assert!(matches!(
            decode(&bad),
            Err(DecodeError::NonZeroOverflow { .. })
        ));
    }

    #[test]
    fn error_messages_quote_the_input() {
        let err = decode("0e").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid character 'e' at offset 1 of nix32 string '0e'"
        );
    }
}

//! Hashing a NAR as stored, in bounded memory (`narpush verify --nar-hash`): the compressed
//! bytes give FileHash and FileSize, the decompressed ones NarHash and NarSize.
//!
//! Invariant: at most [`IN_FLIGHT_CHUNKS`] chunks of one NAR are held at once, whatever its
//! size. The object is read on the async side and its chunks handed over a bounded channel
//! to a blocking thread that decompresses and hashes them, so the runtime never waits on a
//! decompressor.

use std::io::Write;

use bytes::Bytes;

use super::VerifyError;
use crate::coexist::Reader;
use crate::format::hash::{HashingWriter, Sha256};
use crate::sink::Sink;

/// Chunks of one NAR queued for the hashing thread at most.
pub const IN_FLIGHT_CHUNKS: usize = 4;

/// What a NAR's bytes hash to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hashed {
    pub file_hash: Sha256,
    pub file_size: u64,
    pub nar_hash: Sha256,
    pub nar_size: u64,
}

/// What hashing a NAR gave.
pub enum Outcome {
    Hashed(Hashed),
    /// Gone since the listing.
    Gone,
    /// The bytes do not decompress with the narinfo's `Compression` (or it names none we know).
    Undecodable(String),
}

/// Streams the NAR at `key`, compressed with `compression` (a narinfo's `Compression`).
pub async fn hash(sink: &Sink, key: &str, compression: &str) -> Result<Outcome, VerifyError> {
    let decoder = match Decoder::new(compression) {
        Ok(decoder) => decoder,
        Err(reason) => return Ok(Outcome::Undecodable(reason)),
    };
    let Some(mut body) = sink.open_body(key).await?.for_reader(Reader::Verify)? else {
        return Ok(Outcome::Gone);
    };
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(IN_FLIGHT_CHUNKS);
    let hashing = tokio::task::spawn_blocking(move || {
        let mut decoder = decoder;
        let mut file = HashingWriter::new(std::io::sink());
        while let Some(chunk) = receiver.blocking_recv() {
            file.write_all(&chunk).map_err(|e| e.to_string())?;
            decoder.write_all(&chunk).map_err(|e| e.to_string())?;
        }
        let (_, file_hash, file_size) = file.finish();
        let (nar_hash, nar_size) = decoder.finish()?;
        Ok::<_, String>(Hashed {
            file_hash,
            file_size,
            nar_hash,
            nar_size,
        })
    });
    let mut read_error = None;
    loop {
        match body.chunk().await {
            Ok(Some(chunk)) => {
                // The hashing thread stopped early (bad data): its error is the answer.
                if sender.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    drop(sender);
    let hashed = hashing
        .await
        .map_err(|e| VerifyError::Task(e.to_string()))?;
    if let Some(error) = read_error {
        return Err(error.into());
    }
    Ok(match hashed {
        Ok(hashed) => Outcome::Hashed(hashed),
        Err(reason) => Outcome::Undecodable(reason),
    })
}

/// A push decompressor that hashes what it writes out.
enum Decoder {
    None(HashingWriter<std::io::Sink>),
    Zstd(Box<zstd::stream::write::Decoder<'static, HashingWriter<std::io::Sink>>>),
    Xz(Box<liblzma::write::XzDecoder<HashingWriter<std::io::Sink>>>),
    Bzip2(Box<bzip2::write::BzDecoder<HashingWriter<std::io::Sink>>>),
}

impl Decoder {
    fn new(compression: &str) -> Result<Decoder, String> {
        let out = HashingWriter::new(std::io::sink());
        Ok(match compression {
            "none" => Decoder::None(out),
            "zstd" => Decoder::Zstd(Box::new(
                zstd::stream::write::Decoder::new(out).map_err(|e| e.to_string())?,
            )),
            "xz" => Decoder::Xz(Box::new(liblzma::write::XzDecoder::new(out))),
            "bzip2" => Decoder::Bzip2(Box::new(bzip2::write::BzDecoder::new(out))),
            other => return Err(format!("unknown compression '{other}'")),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Decoder::None(w) => w.write_all(bytes),
            Decoder::Zstd(w) => w.write_all(bytes),
            Decoder::Xz(w) => w.write_all(bytes),
            Decoder::Bzip2(w) => w.write_all(bytes),
        }
    }

    /// The hash and size of everything decompressed; an error if the stream is cut short.
    fn finish(self) -> Result<(Sha256, u64), String> {
        let out = match self {
            Decoder::None(w) => w,
            Decoder::Zstd(mut w) => {
                w.flush().map_err(|e| e.to_string())?;
                w.into_inner()
            }
            Decoder::Xz(w) => w.finish().map_err(|e| e.to_string())?,
            Decoder::Bzip2(mut w) => w.finish().map_err(|e| e.to_string())?,
        };
        let (_, hash, size) = out.finish();
        Ok((hash, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(compression: &str, compressed: &[u8]) -> Result<(Sha256, u64), String> {
        let mut decoder = Decoder::new(compression)?;
        for piece in compressed.chunks(7) {
            decoder.write_all(piece).map_err(|e| e.to_string())?;
        }
        decoder.finish()
    }

    #[test]
    fn every_compression_hashes_the_decompressed_bytes() {
        let nar: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let expected = (Sha256::digest(&nar), nar.len() as u64);
        let zstd = zstd::encode_all(&nar[..], 3).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&nar).unwrap();
        let xz = xz.finish().unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&nar).unwrap();
        let bz = bz.finish().unwrap();
        assert_eq!(decode("none", &nar).unwrap(), expected);
        assert_eq!(decode("zstd", &zstd).unwrap(), expected);
        assert_eq!(decode("xz", &xz).unwrap(), expected);
        assert_eq!(decode("bzip2", &bz).unwrap(), expected);
        assert!(decode("xz", &xz[..xz.len() / 2]).is_err());
        assert!(decode("zstd", b"not zstd").is_err());
        assert!(decode("gzip", &nar).is_err());
    }
}

//! Compression of NAR streams: a streaming encoder over any `Write` for each method narpush
//! writes.
//!
//! zstd can compress one stream on threads of its own (zstd's multithreaded mode: the stream is
//! cut into jobs compressed in parallel, and the output is still one ordinary frame that every
//! zstd decoder, Nix's included, reads). [`Encoder::new`] takes the number of worker threads;
//! the caller gives workers only to NARs big enough to fill a few jobs. xz stays on the
//! caller's thread: its multithreaded encoder needs hundreds of MiB at the levels people
//! choose xz for.
//!
//! Memory: both encoders are sized to the input when its size is known. An xz encoder holds
//! its dictionary and match finder (about eleven times the dictionary at levels 7-9, 64 MiB of
//! dictionary at level 9) whatever the input, so its dictionary is cut to the input rounded up
//! to a power of two ([`xz_dict_size`]): a small NAR costs about as much to compress as it is
//! big, and the small-NAR budget bounds them all together. The output is the same (a
//! dictionary larger than the input is never used), and any xz decoder reads it.
//!
//! The methods, their narinfo names and object extensions are [`crate::format::compression`]'s.

use std::io::{self, Write};

pub use crate::format::compression::{Compression, UnknownCompression};

/// A compressing writer; [`Encoder::finish`] writes the trailer and returns the inner writer.
pub enum Encoder<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(liblzma::write::XzEncoder<W>),
    None(W),
}

/// The input zstd hands to each of its worker threads at a time, compressed without reloading
/// the end of the previous job (zstd's `overlapLog` 1: no overlap; by default it re-reads an
/// eighth of the window, 256 KiB, for every job). Measured uploading a 514 MiB NAR of shared
/// libraries to a directory with two workers (two runs each): 1 MiB jobs with the default
/// overlap 1.48–1.61 s, 39 MiB peak RSS, 171.44 MB stored; 2 MiB jobs 1.48–1.57 s, 47 MiB,
/// 170.77 MB; 2 MiB jobs without overlap 1.37–1.39 s, 44–45 MiB, 171.76 MB (0.2% more than
/// the first). Larger jobs add memory (zstd keeps several jobs' input and output per stream)
/// and saved no more time (3 MiB: 1.37 s, 53 MiB).
const ZSTD_JOB_SIZE: u32 = 2 << 20;
/// zstd's `overlapLog` 1: every job starts without the previous job's data.
const ZSTD_NO_OVERLAP: u32 = 1;

impl<W: Write> Encoder<W> {
    /// An encoder for `method` at `level`. With `workers` > 0 (zstd only), compression runs on
    /// that many threads of zstd's own, in jobs, while the caller's thread goes on producing
    /// input; with 0 it runs on the caller's thread. `size`, when known, is exactly how many
    /// bytes will be written: zstd then sizes its tables to the input (a tiny NAR needs a few
    /// KiB instead of a MiB allocated and cleared) and refuses any other amount.
    pub fn new(
        method: Compression,
        level: i32,
        workers: u32,
        size: Option<u64>,
        inner: W,
    ) -> io::Result<Self> {
        Ok(match method {
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(inner, level)?;
                encoder.set_pledged_src_size(size)?;
                if workers > 0 {
                    encoder.multithread(workers)?;
                    encoder.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_SIZE))?;
                    encoder.set_parameter(zstd::zstd_safe::CParameter::OverlapSizeLog(
                        ZSTD_NO_OVERLAP,
                    ))?;
                }
                Encoder::Zstd(encoder)
            }
            Compression::Xz => {
                let preset = u32::try_from(level).unwrap_or(6);
                Encoder::Xz(liblzma::write::XzEncoder::new_stream(
                    inner,
                    xz_stream(preset, size)?,
                ))
            }
            Compression::None => Encoder::None(inner),
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Xz(e) => e.finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

/// The smallest dictionary liblzma accepts (`LZMA_DICT_SIZE_MIN`).
const XZ_MIN_DICT: u32 = 4096;

/// The dictionary of xz `preset` (0-9), as `xz --list` shows them.
fn xz_preset_dict_size(preset: u32) -> u32 {
    const MIB: u32 = 1 << 20;
    match preset {
        0 => MIB / 4,
        1 => MIB,
        2 => 2 * MIB,
        3 | 4 => 4 * MIB,
        5 | 6 => 8 * MIB,
        7 => 16 * MIB,
        8 => 32 * MIB,
        _ => 64 * MIB,
    }
}

/// The dictionary for `size` input bytes at `preset`: the preset's, or the input rounded up to
/// a power of two when that is smaller.
pub fn xz_dict_size(preset: u32, size: Option<u64>) -> u32 {
    let preset_dict = xz_preset_dict_size(preset);
    size.and_then(|size| u32::try_from(size.max(u64::from(XZ_MIN_DICT))).ok())
        .and_then(u32::checked_next_power_of_two)
        .map_or(preset_dict, |fitted| fitted.min(preset_dict))
}

/// About what an encoder for `size` input bytes holds besides its output, for the small-NAR
/// budget: for xz, its match finder (at most about twelve times the dictionary) and its fixed
/// state (half a MiB); zstd sizes its tables to the pledged input, and none holds nothing.
pub fn encoder_memory(method: Compression, level: i32, size: u64) -> u64 {
    match method {
        Compression::Xz => {
            let preset = u32::try_from(level).unwrap_or(6);
            12 * u64::from(xz_dict_size(preset, Some(size))) + (512 << 10)
        }
        Compression::Zstd | Compression::None => 0,
    }
}

/// An xz stream encoder (CRC64, as `xz` writes) at `preset`, its dictionary fitted to `size`.
fn xz_stream(preset: u32, size: Option<u64>) -> io::Result<liblzma::stream::Stream> {
    use liblzma::stream::{Check, Filters, LzmaOptions, Stream};
    let mut options = LzmaOptions::new_preset(preset).map_err(io::Error::other)?;
    options.dict_size(xz_dict_size(preset, size));
    let mut filters = Filters::new();
    filters.lzma2(&options);
    Stream::new_stream_encoder(&filters, Check::Crc64).map_err(io::Error::other)
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn round_trip(method: Compression) -> Vec<u8> {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut encoder = Encoder::new(
            method,
            method.default_level(),
            0,
            Some(data.len() as u64),
            Vec::new(),
        )
        .unwrap();
        encoder.write_all(&data).unwrap();
        let compressed = encoder.finish().unwrap();
        let mut decoded = Vec::new();
        match method {
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(&compressed[..])
                    .unwrap()
                    .read_to_end(&mut decoded)
                    .unwrap();
            }
            Compression::Xz => {
                liblzma::read::XzDecoder::new(&compressed[..])
                    .read_to_end(&mut decoded)
                    .unwrap();
            }
            Compression::None => decoded = compressed,
        }
        assert_eq!(decoded, data);
        decoded
    }

    #[test]
    fn every_method_decodes_to_the_original_bytes() {
        for method in [Compression::Zstd, Compression::Xz, Compression::None] {
            round_trip(method);
        }
    }

    /// Compresses `data` with xz at `level`, then decodes it within `memlimit` bytes.
    fn xz_within(data: &[u8], level: i32, memlimit: u64) -> Result<Vec<u8>, String> {
        let mut encoder = Encoder::new(
            Compression::Xz,
            level,
            0,
            Some(data.len() as u64),
            Vec::new(),
        )
        .unwrap();
        encoder.write_all(data).unwrap();
        let compressed = encoder.finish().unwrap();
        let stream = liblzma::stream::Stream::new_stream_decoder(memlimit, 0).unwrap();
        let mut decoded = Vec::new();
        liblzma::read::XzDecoder::new_stream(&compressed[..], stream)
            .read_to_end(&mut decoded)
            .map_err(|e| e.to_string())?;
        Ok(decoded)
    }

    #[test]
    fn a_small_input_is_compressed_with_a_dictionary_its_own_size() {
        // The dictionary the stream declares is what its decoder (and, about eleven times
        // over, its encoder) allocates: at level 9, 64 MiB for a 1 KiB NAR.
        let data = vec![7u8; 1024];
        assert_eq!(xz_within(&data, 9, 1 << 20), Ok(data.clone()));
        assert_eq!(xz_dict_size(9, Some(1024)), 4096);
        assert_eq!(xz_dict_size(9, Some(700_000)), 1 << 20);
        assert_eq!(
            xz_dict_size(6, Some(1 << 30)),
            8 << 20,
            "never above the preset's"
        );
        assert_eq!(xz_dict_size(9, None), 64 << 20);
        // A big input keeps the preset's dictionary (level 0: 256 KiB).
        let big: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
        assert!(xz_within(&big, 0, 400 << 10).is_ok());
        assert!(xz_within(&big, 1, 400 << 10).is_err(), "level 1 uses 1 MiB");
    }

    #[test]
    fn an_xz_encoder_counts_its_dictionary_against_the_small_nar_budget() {
        assert_eq!(encoder_memory(Compression::Zstd, 19, 1 << 20), 0);
        // 200 KB at level 9: a 256 KiB dictionary, not 64 MiB.
        assert_eq!(
            encoder_memory(Compression::Xz, 9, 200_000),
            12 * (256 << 10) + (512 << 10)
        );
    }

    #[test]
    fn multithreaded_zstd_is_one_stream_any_decoder_reads() {
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 1000).to_le_bytes())
            .collect();
        let mut encoder = Encoder::new(Compression::Zstd, 3, 2, None, Vec::new()).unwrap();
        encoder.write_all(&data).unwrap();
        let compressed = encoder.finish().unwrap();
        let mut decoded = Vec::new();
        zstd::stream::read::Decoder::new(&compressed[..])
            .unwrap()
            .single_frame()
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, data, "one frame holds the whole stream");
    }

    #[test]
    fn names_and_extensions_match_what_nix_writes() {
        assert_eq!(
            "zstd".parse::<Compression>().unwrap().nar_extension(),
            ".nar.zst"
        );
        assert_eq!(
            "xz".parse::<Compression>().unwrap().nar_extension(),
            ".nar.xz"
        );
        assert_eq!(
            "none".parse::<Compression>().unwrap().nar_extension(),
            ".nar"
        );
        assert_eq!(
            "gzip".parse::<Compression>().unwrap_err().to_string(),
            "unknown compression 'gzip' (use zstd, xz or none)"
        );
    }
}

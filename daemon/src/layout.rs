//! The layout of a binary cache: the key of every object narpush writes, and the content type
//! it is written with, as stock Nix looks for them. Every other module asks here.
//!
//! | object | key | written |
//! |---|---|---|
//! | cache description | `nix-cache-info` | when missing or out of date |
//! | path metadata | `<hash part>.narinfo` | last, after its NAR and its references |
//! | NAR | `nar/<nix32 NarHash>-<8 chars writer id>-<16 random nix32 chars><ext>` | one PUT, or multipart when streamed in parts; a daemon aborts its own unfinished multipart uploads (its writer id) when it starts |
//! | NAR listing | `<hash part>.ls` | when asked for (`write_nar_listing`), after its NAR, before its narinfo; `Content-Encoding` names its compression (`ls-compression`, S3 only) |
//! | build log | `log/<drv basename>` | best effort, after its outputs |
//! | realisation | `realisations/sha256:<base16>!<output>.doi` | after its output's narinfo and the realisations it depends on |
//! | build trace entry (Nix 2.35 realisation) | `build-trace-v2/<resolved drv basename>/<output>.doi` | right after the realisation it restates ([`crate::format::build_trace`]), so after its output's narinfo too |
//! | pin | `pins/<name>` | by `narpush pin`, only for a closure whole in the cache ([`crate::pins`]) |
//!
//! # The NAR naming rule: a NAR object is never overwritten with different bytes
//!
//! The compressed bytes of a NAR depend on settings (method, level, threads) and on the
//! compressor's version, so a name derived from the NAR alone could be written twice with
//! different bytes, under a narinfo that already published the first FileHash and FileSize.
//! narpush never does that:
//! every NAR, written with one PUT or streamed in parts, gets a name with 80 random bits that
//! no other upload uses. (Nix, and narpush before 2026-12 for a NAR of one PUT, name a NAR by
//! its FileHash, [`nar_key_by_file_hash`]: writing it again writes the same bytes, but the
//! object is shared by every writer of those bytes, and a collection may be deleting it while
//! one writes it again: rule U6 of [`crate::coexist`].)
//!
//! Two writers of one path therefore each publish a consistent narinfo/NAR pair, whatever their
//! settings; the NAR of the narinfo that lost the race is unreferenced and harmless.

use crate::format::build_trace::BuildTraceKey;
use crate::format::compression::Compression;
use crate::format::hash::Sha256;
use crate::format::nixbase32;
use crate::format::realisation::DrvOutputId;
use crate::format::store_path::{StorePath, STORE_DIR};

/// Content types Nix itself sets on the objects it uploads.
pub mod content_type {
    pub const NIX_CACHE_INFO: &str = "text/x-nix-cache-info";
    pub const NARINFO: &str = "text/x-nix-narinfo";
    pub const NAR: &str = "application/x-nix-nar";
    pub const LOG: &str = "text/plain; charset=utf-8";
    pub const LISTING: &str = "application/json";
    pub const REALISATION: &str = "application/json";
}

/// The `Cache-Control` header of each object (S3 only: a CDN in front of the bucket, such as
/// an R2 custom domain, caches by it). Objects whose bytes never change under their key (NARs,
/// listings) may be cached for good; the others change (a narinfo is refreshed, resigned,
/// collected) and are kept short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheControl {
    /// NARs and `.ls` listings.
    pub immutable: String,
    /// narinfos, `nix-cache-info`, realisations, logs, pins.
    pub mutable: String,
}

/// A year, never revalidated: a NAR's or listing's key names its bytes.
pub const DEFAULT_IMMUTABLE_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";
/// Five minutes: a new signature or a collection shows within that.
pub const DEFAULT_MUTABLE_CACHE_CONTROL: &str = "public, max-age=300";

impl Default for CacheControl {
    fn default() -> CacheControl {
        CacheControl {
            immutable: DEFAULT_IMMUTABLE_CACHE_CONTROL.to_owned(),
            mutable: DEFAULT_MUTABLE_CACHE_CONTROL.to_owned(),
        }
    }
}

impl CacheControl {
    /// The header for `key`; `None` when configured empty.
    pub fn for_key(&self, key: &str) -> Option<&str> {
        let value = match kind_of(key) {
            ObjectKind::Nar | ObjectKind::Listing { .. } => &self.immutable,
            ObjectKind::CacheInfo
            | ObjectKind::NarInfo { .. }
            | ObjectKind::Log { .. }
            | ObjectKind::Realisation
            | ObjectKind::Pin { .. }
            | ObjectKind::Other => &self.mutable,
        };
        (!value.is_empty()).then_some(value.as_str())
    }
}

/// The key of a path's NAR listing (Nix's `write-nar-listing`).
pub fn listing_key(path: &StorePath) -> String {
    format!("{}.ls", path.hash_part())
}

/// The `Content-Encoding` of a listing compressed with `compression`, as Nix sets it
/// (`None` when uncompressed).
pub fn listing_content_encoding(compression: Compression) -> Option<&'static str> {
    match compression {
        Compression::None => None,
        other => Some(other.narinfo_name()),
    }
}

/// The key of the cache description.
pub const NIX_CACHE_INFO: &str = "nix-cache-info";

/// Below cache.nixos.org (40): clients ask it first for what it has.
pub const DEFAULT_PRIORITY: u32 = 41;

/// What `nix-cache-info` announces besides the store directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheInfo {
    /// Among substituters, lower wins; cache.nixos.org announces 40.
    pub priority: u32,
    /// Whether clients may ask for many paths at once.
    pub want_mass_query: bool,
}

/// The text of `nix-cache-info`.
pub fn nix_cache_info(info: CacheInfo) -> String {
    format!(
        "StoreDir: {STORE_DIR}\nWantMassQuery: {}\nPriority: {}\n",
        u8::from(info.want_mass_query),
        info.priority
    )
}

/// Whether the `nix-cache-info` text `current` announces what `wanted` does (the same
/// `key: value` lines, in any order, whitespace aside).
pub fn same_cache_info(current: &[u8], wanted: &str) -> bool {
    let fields = |text: &str| {
        let mut lines: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        lines.sort();
        lines
    };
    std::str::from_utf8(current).is_ok_and(|current| fields(current) == fields(wanted))
}

/// The key of a realisation, where Nix looks for it by derivation output.
pub fn realisation_key(id: &DrvOutputId) -> String {
    format!("realisations/{id}.doi")
}

/// The key of a build trace entry, where Nix 2.35 looks for it by resolved derivation output.
pub fn build_trace_key(key: &BuildTraceKey) -> String {
    key.object_key()
}

/// The key of a path's narinfo.
pub fn narinfo_key(path: &StorePath) -> String {
    format!("{}.narinfo", path.hash_part())
}

/// The key Nix gives a NAR: the hash of its bytes (narpush reads such keys, writes none).
pub fn nar_key_by_file_hash(file_hash: &Sha256, compression: Compression) -> String {
    format!(
        "nar/{}{}",
        file_hash.to_nix32(),
        compression.nar_extension()
    )
}

/// Who streamed a NAR: 40 random bits, 8 nix32 characters in the NAR's name. A daemon keeps
/// its own for good (in its state directory), so that on start it can tell its own unfinished
/// multipart uploads from those of other writers of the bucket; other runs draw one each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterId([u8; 5]);

impl WriterId {
    pub fn random() -> WriterId {
        let mut id = [0; 5];
        crate::random::fill("writer id", &[], &mut id);
        WriterId(id)
    }

    /// The 8 characters [`WriterId`]'s `Display` writes; `None` for anything else.
    pub fn parse(text: &str) -> Option<WriterId> {
        if text.len() != 8 {
            return None;
        }
        let bytes = nixbase32::decode(text).ok()?;
        Some(WriterId(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for WriterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&nixbase32::encode(&self.0))
    }
}

/// A key no other upload uses, for a NAR written by `writer` (with one PUT or in parts).
pub fn nar_key_unique(nar_hash: &Sha256, compression: Compression, writer: WriterId) -> String {
    let mut nonce = [0; 10];
    let context = [nar_hash.0.as_slice(), &writer.0].concat();
    crate::random::fill("nar name", &context, &mut nonce);
    format!(
        "nar/{}-{writer}-{}{}",
        nar_hash.to_nix32(),
        nixbase32::encode(&nonce),
        compression.nar_extension()
    )
}

/// Whether the NAR `key` is named by its FileHash ([`nar_key_by_file_hash`], as Nix names
/// NARs), so that other uploads may write it too; a key of [`nar_key_unique`] is not.
pub fn is_named_by_file_hash(key: &str) -> bool {
    is_nar_key(key) && !key.contains('-')
}

/// Whether `key` (a narinfo's `URL`) names an object under `nar/` of this cache: a relative
/// key with no empty, `.` or `..` segment, so that looking it up never leaves the cache.
pub fn is_nar_key(key: &str) -> bool {
    key.strip_prefix(NAR_PREFIX).is_some_and(|rest| {
        rest.split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."))
    })
}

/// Where streamed NARs live: the prefix narpush lists to find its own unfinished uploads.
pub const NAR_PREFIX: &str = "nar/";

/// Whether `key` has the shape of a streamed NAR's name: [`nar_key_unique`]'s, or the one of
/// narpush before writer ids (`nar/<NarHash>-<16 characters><ext>`).
pub fn is_streamed_nar_key(key: &str) -> bool {
    streamed_nar_parts(key).is_some()
}

/// Whether `key` is the name of a NAR streamed by `writer`, so an unfinished multipart upload
/// under it is certainly `writer`'s own. Names without a writer id are no one's for certain.
pub fn is_streamed_by(key: &str, writer: WriterId) -> bool {
    streamed_nar_parts(key).is_some_and(|found| found == Some(writer))
}

/// The writer id of a streamed NAR's name (`None` in names from before writer ids), or `None`
/// when `key` is not such a name.
fn streamed_nar_parts(key: &str) -> Option<Option<WriterId>> {
    let name = key.strip_prefix(NAR_PREFIX)?;
    let stem = [Compression::Zstd, Compression::Xz, Compression::None]
        .iter()
        .find_map(|c| name.strip_suffix(c.nar_extension()))?;
    let is_nix32 = |s: &str| s.chars().all(nixbase32::is_valid_char);
    let (hash, rest) = stem.split_once('-')?;
    if hash.len() != 52 || !is_nix32(hash) {
        return None;
    }
    let (writer, nonce) = match rest.split_once('-') {
        Some((writer, nonce)) => (Some(WriterId::parse(writer)?), nonce),
        None => (None, rest),
    };
    (nonce.len() == 16 && is_nix32(nonce)).then_some(writer)
}

/// The key of a derivation's build log, where `nix log` looks for it.
pub fn log_key(drv: &StorePath) -> String {
    log_key_of_basename(drv.basename())
}

/// The key of the build log of the derivation named `basename` (a narinfo's `Deriver`).
pub fn log_key_of_basename(basename: &str) -> String {
    format!("log/{basename}")
}

/// Where pins live ([`crate::pins`]).
pub const PIN_PREFIX: &str = "pins/";

/// The longest pin name.
pub const MAX_PIN_NAME_LEN: usize = 100;

/// Whether `name` may name a pin: 1 to [`MAX_PIN_NAME_LEN`] characters of
/// `A-Z a-z 0-9 . _ + -`, not starting with `.`.
pub fn is_pin_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._+-".contains(c);
    !name.is_empty()
        && name.len() <= MAX_PIN_NAME_LEN
        && !name.starts_with('.')
        && name.chars().all(allowed)
}

/// The name of the pin stored under `key`, when `key` is one: a valid pin name right under
/// `pins/`. Other keys there (a console's zero-byte `pins/` "folder") are not pins.
pub fn pin_name_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(PIN_PREFIX)
        .filter(|name| is_pin_name(name))
}

/// What an object of a cache is, by its key: what retention GC needs to know of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectKind<'a> {
    CacheInfo,
    /// `<hash part>.narinfo`.
    NarInfo {
        hash: &'a str,
    },
    /// `<hash part>.ls`, a NAR listing.
    Listing {
        hash: &'a str,
    },
    /// Anything under `nar/`.
    Nar,
    /// `log/<drv basename>`.
    Log {
        drv: &'a str,
    },
    /// `realisations/<drv hash>!<output>.doi`, or a build trace entry
    /// `build-trace-v2/<drv>/<output>.doi` (the same fact for Nix 2.35): both belong to their
    /// output's narinfo ([`crate::format::build_trace::output_of_object`] for the latter).
    Realisation,
    /// `pins/<name>`, a root that `narpush gc` keeps (see [`crate::pins`]).
    Pin {
        name: &'a str,
    },
    /// Not written by narpush or Nix: never touched.
    Other,
}

/// Classifies a key of the cache.
pub fn kind_of(key: &str) -> ObjectKind<'_> {
    let is_hash = |s: &str| s.len() == 32 && s.bytes().all(|b| nixbase32::ALPHABET.contains(&b));
    if key == NIX_CACHE_INFO {
        ObjectKind::CacheInfo
    } else if let Some(hash) = key.strip_suffix(".narinfo").filter(|h| is_hash(h)) {
        ObjectKind::NarInfo { hash }
    } else if let Some(hash) = key.strip_suffix(".ls").filter(|h| is_hash(h)) {
        ObjectKind::Listing { hash }
    } else if key.starts_with("nar/") {
        ObjectKind::Nar
    } else if let Some(drv) = key.strip_prefix("log/").filter(|d| !d.contains('/')) {
        ObjectKind::Log { drv }
    } else if key.starts_with("realisations/") && key.ends_with(".doi")
        || BuildTraceKey::from_object_key(key).is_ok()
    {
        ObjectKind::Realisation
    } else if let Some(name) = pin_name_of_key(key) {
        ObjectKind::Pin { name }
    } else {
        ObjectKind::Other
    }
}

#[cfg(test)]
#[path = "layout/tests.rs"]
mod tests;

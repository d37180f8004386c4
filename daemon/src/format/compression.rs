//! The compression methods of NAR objects: their narinfo names (`Compression:`), object key
//! extensions and levels.
//!
//! Only methods that every Nix from 2.8 to today decodes by the label alone are offered
//! (`zstd`, `xz`, `none`): Nix ≥ 2.22 applies only the filter the narinfo names, so the label
//! and the bytes must agree, and [`Compression::narinfo_name`] is the one source of both.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Xz,
    None,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown compression '{0}' (use zstd, xz or none)")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "xz" => Ok(Compression::Xz),
            "none" => Ok(Compression::None),
            other => Err(UnknownCompression(other.to_owned())),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.narinfo_name())
    }
}

impl Compression {
    /// The value of the narinfo `Compression:` line.
    pub fn narinfo_name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::None => "none",
        }
    }

    /// The NAR object's key suffix, as Nix names them.
    pub fn nar_extension(self) -> &'static str {
        match self {
            Compression::Zstd => ".nar.zst",
            Compression::Xz => ".nar.xz",
            Compression::None => ".nar",
        }
    }

    /// The level used when the configuration names none.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Zstd => 3,
            Compression::Xz => 6,
            Compression::None => 0,
        }
    }

    /// The levels the method accepts.
    pub fn level_range(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Compression::Zstd => 1..=19,
            Compression::Xz => 0..=9,
            Compression::None => 0..=0,
        }
    }
}

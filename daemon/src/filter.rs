//! Push filters: which store paths are never uploaded (config `exclude`, `exclude_outputs`,
//! `max_nar_bytes`; flags `--exclude`, `--exclude-output`, `--max-nar-bytes`), and why.
//!
//! A path is *excluded* when
//! - its name (the part of its basename after `<hash>-`) matches one of the `exclude`
//!   regular expressions, unanchored (`-doc$` anchors by hand);
//! - it is the output of its deriver named in `exclude_outputs`: the name is the one the
//!   deriver's `.drv` records for this path, never guessed from the path's name. A path
//!   whose deriver is unknown, whose `.drv` is not in the store (garbage-collected, or the
//!   path was substituted) or does not parse, or which is a floating content-addressed output
//!   (the `.drv` names no path for it) has no known output name and is *not* excluded by
//!   `exclude_outputs`: uploading it loses nothing, skipping it on a guess could;
//! - its NAR is bigger than `max_nar_bytes`.
//!
//! The rules are checked name, size, then output (the `.drv` is read only when the first two
//! let the path through), and the first that applies is the reason. What an
//! exclusion means for the paths that need the excluded one is the engine's rule (see
//! `engine::graph`): a path is never published while a reference is neither in the cache nor
//! served upstream, so its referrers are skipped too, with a [`SkipReason::NeedsSkipped`].
//!
//! Invariant: a [`PushFilter`] holds only checked values: every pattern compiled, every
//! output name a valid one, `max_nar_bytes` at least 1; [`FilterError`] names the value it
//! refuses.

use std::collections::HashMap;
use std::fmt;

use regex::Regex;

use crate::format::derivation;
use crate::format::store_path::{StorePath, STORE_DIR};
use crate::store::PathInfo;

/// The checked filters; the default excludes nothing.
#[derive(Clone, Default)]
pub struct PushFilter {
    exclude: Vec<Regex>,
    exclude_outputs: Vec<String>,
    max_nar_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("'{pattern}' is not a regular expression: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("'{name}' is not an output name (letters, digits and +-._?= only)")]
    BadOutputName { name: String },
    #[error("must be at least 1")]
    ZeroMaxNarBytes,
}

/// Why a path is not uploaded. The first three are the path's own; the last is a referrer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Its name matches this `exclude` pattern.
    Excluded { pattern: String },
    /// Its deriver records it as this output, which `exclude_outputs` names.
    ExcludedOutput { output: String },
    /// Its NAR is bigger than `max_nar_bytes`.
    TooBig { nar_size: u64, max_nar_bytes: u64 },
    /// Its closure holds `reference`, skipped for `because` (one of the reasons above) and
    /// served neither by the cache nor upstream: publishing it would break the closure
    /// invariant.
    NeedsSkipped {
        reference: StorePath,
        because: Box<SkipReason>,
    },
}

/// The kinds of [`SkipReason`], as `status --json` and the metrics name them.
pub const SKIP_KINDS: [&str; 4] = ["excluded", "excluded_output", "too_big", "needs_skipped"];

impl SkipReason {
    /// The kind, one of [`SKIP_KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            SkipReason::Excluded { .. } => SKIP_KINDS[0],
            SkipReason::ExcludedOutput { .. } => SKIP_KINDS[1],
            SkipReason::TooBig { .. } => SKIP_KINDS[2],
            SkipReason::NeedsSkipped { .. } => SKIP_KINDS[3],
        }
    }

    /// The reason the referrers of a path skipped for `self` are skipped: they need that
    /// path (or, when it was skipped for a reference itself, that reference).
    pub fn for_referrers_of(&self, path: &StorePath) -> SkipReason {
        match self {
            SkipReason::NeedsSkipped { .. } => self.clone(),
            own => SkipReason::NeedsSkipped {
                reference: path.clone(),
                because: Box::new(own.clone()),
            },
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Excluded { pattern } => {
                write!(f, "its name matches exclude pattern '{pattern}'")
            }
            SkipReason::ExcludedOutput { output } => {
                write!(
                    f,
                    "it is output '{output}' of its derivation (exclude_outputs)"
                )
            }
            SkipReason::TooBig {
                nar_size,
                max_nar_bytes,
            } => write!(
                f,
                "its NAR is {nar_size} bytes, more than max_nar_bytes ({max_nar_bytes})"
            ),
            SkipReason::NeedsSkipped { reference, because } => write!(
                f,
                "it needs {reference}, which is skipped ({because}) and served by no upstream \
                 cache"
            ),
        }
    }
}

impl PushFilter {
    /// Checks the configured (or flag) values.
    pub fn new(
        exclude: &[String],
        exclude_outputs: &[String],
        max_nar_bytes: Option<u64>,
    ) -> Result<PushFilter, FilterError> {
        let mut filter = PushFilter::default();
        for pattern in exclude {
            filter.add_exclude(pattern)?;
        }
        for name in exclude_outputs {
            filter.add_exclude_output(name)?;
        }
        if let Some(max) = max_nar_bytes {
            filter.set_max_nar_bytes(max)?;
        }
        Ok(filter)
    }

    /// Also excludes paths whose name matches `pattern` (unanchored).
    pub fn add_exclude(&mut self, pattern: &str) -> Result<(), FilterError> {
        let regex = Regex::new(pattern).map_err(|e| FilterError::BadPattern {
            pattern: pattern.to_owned(),
            reason: e.to_string(),
        })?;
        if !self.patterns().any(|p| p == pattern) {
            self.exclude.push(regex);
        }
        Ok(())
    }

    /// Also excludes the outputs named `name` (`doc`, `debug`, …).
    pub fn add_exclude_output(&mut self, name: &str) -> Result<(), FilterError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
        if !valid {
            return Err(FilterError::BadOutputName {
                name: name.to_owned(),
            });
        }
        if !self.exclude_outputs.iter().any(|n| n == name) {
            self.exclude_outputs.push(name.to_owned());
        }
        Ok(())
    }

    /// Excludes NARs bigger than `max` bytes (replacing any limit set before).
    pub fn set_max_nar_bytes(&mut self, max: u64) -> Result<(), FilterError> {
        if max == 0 {
            return Err(FilterError::ZeroMaxNarBytes);
        }
        self.max_nar_bytes = Some(max);
        Ok(())
    }

    /// Whether it excludes nothing.
    pub fn is_off(&self) -> bool {
        self.exclude.is_empty() && self.exclude_outputs.is_empty() && self.max_nar_bytes.is_none()
    }

    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.exclude.iter().map(Regex::as_str)
    }

    pub fn exclude_outputs(&self) -> &[String] {
        &self.exclude_outputs
    }

    pub fn max_nar_bytes(&self) -> Option<u64> {
        self.max_nar_bytes
    }

    /// The paths of `infos` that this filter excludes, each with its reason; derivers are
    /// read from the store (once each) only when `exclude_outputs` is set.
    pub fn excluded(&self, infos: &[PathInfo]) -> HashMap<StorePath, SkipReason> {
        let mut outputs = DerivationOutputs::default();
        infos
            .iter()
            .filter_map(|info| {
                let reason = self.reason(info, |drv| outputs.of(drv, read_store_drv))?;
                Some((info.path.clone(), reason))
            })
            .collect()
    }

    /// Why `info` is excluded, if it is; `outputs_of` gives a deriver's `(output, path)`
    /// pairs, or `None` when they cannot be known.
    pub fn reason<'a>(
        &self,
        info: &PathInfo,
        outputs_of: impl FnOnce(&StorePath) -> Option<&'a [(String, StorePath)]>,
    ) -> Option<SkipReason> {
        let name = info.path.name();
        if let Some(regex) = self.exclude.iter().find(|r| r.is_match(name)) {
            return Some(SkipReason::Excluded {
                pattern: regex.as_str().to_owned(),
            });
        }
        if let Some(max) = self.max_nar_bytes.filter(|max| info.nar_size > *max) {
            return Some(SkipReason::TooBig {
                nar_size: info.nar_size,
                max_nar_bytes: max,
            });
        }
        if self.exclude_outputs.is_empty() {
            return None;
        }
        let outputs = outputs_of(info.deriver.as_ref()?)?;
        let (output, _) = outputs.iter().find(|(_, path)| *path == info.path)?;
        self.exclude_outputs
            .contains(output)
            .then(|| SkipReason::ExcludedOutput {
                output: output.clone(),
            })
    }
}

/// The outputs of each deriver read so far (`None`: unknown).
#[derive(Default)]
struct DerivationOutputs {
    read: HashMap<StorePath, Option<Vec<(String, StorePath)>>>,
}

impl DerivationOutputs {
    fn of(
        &mut self,
        drv: &StorePath,
        read: impl FnOnce(&StorePath) -> Option<Vec<(String, StorePath)>>,
    ) -> Option<&[(String, StorePath)]> {
        self.read
            .entry(drv.clone())
            .or_insert_with(|| read(drv))
            .as_deref()
    }
}

/// A `.drv`'s outputs with a path, from the store (the simulated one when it is installed:
/// feature `sim`); `None` when it is not there or does not parse (said in the log: the output name is then unknown, and the path not excluded by it).
fn read_store_drv(drv: &StorePath) -> Option<Vec<(String, StorePath)>> {
    let file = format!("{STORE_DIR}/{}", drv.basename());
    #[cfg(feature = "sim")]
    let simulated = crate::store::simulated::derivation(&file);
    #[cfg(not(feature = "sim"))]
    let simulated: Option<Option<String>> = None;
    let read = match simulated {
        Some(text) => text.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)),
        None => std::fs::read_to_string(&file),
    };
    let text = match read {
        Ok(text) => text,
        Err(e) => {
            tracing::debug!(
                "cannot read deriver {file} ({e}): its outputs are not excluded by name"
            );
            return None;
        }
    };
    match derivation::output_paths(&text) {
        Ok(outputs) => Some(outputs),
        Err(e) => {
            tracing::warn!(
                "deriver {file} does not parse ({e}): its outputs are not excluded by name"
            );
            None
        }
    }
}

impl PartialEq for PushFilter {
    fn eq(&self, other: &PushFilter) -> bool {
        self.patterns().eq(other.patterns())
            && self.exclude_outputs == other.exclude_outputs
            && self.max_nar_bytes == other.max_nar_bytes
    }
}

impl Eq for PushFilter {}

impl fmt::Debug for PushFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushFilter")
            .field("exclude", &self.patterns().collect::<Vec<_>>())
            .field("exclude_outputs", &self.exclude_outputs)
            .field("max_nar_bytes", &self.max_nar_bytes)
            .finish()
    }
}

#[cfg(test)]
#[path = "filter/tests.rs"]
mod tests;

//! What the push filters' rules say of each path of the world, worked out by the model from
//! the rules as docs/configuration.md states them (not by the engine's code), and the checks
//! of every uploader against it:
//!
//! - a path is *excluded* when its name matches an `exclude` pattern, else when its NAR is
//!   bigger than `max_nar_bytes`, else when its deriver's `.drv` (in the store) records it as
//!   an output `exclude_outputs` names; the first rule that applies is the kind;
//! - it must be *skipped* when it is excluded and the upstream cache does not serve it, or,
//!   as `needs_skipped`, when its closure holds such a path; otherwise it must end done. A
//!   path that is both may be skipped for either reason (whichever lookup ends first).
//!
//! Checks: an excluded path never has a narinfo in the bucket, nor a NAR of its own (a NAR no
//! path that is not excluded has); no narinfo is written whose closure needs a path to be
//! skipped; every report of done or skipped, and every queue entry at the end, agrees with the
//! rules, kind included; no entry fails for a filter's reason. With filters off nothing is
//! excluded, so a skip is a violation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use narpush::filter::SkipReason;
use narpush::format::hash::Sha256;
use narpush::format::store_path::StorePath;
use narpush::queue::{Entry, State};
use narpush::sink::memory::Stored;
use narpush::store::PathInfo;
use regex::Regex;

use crate::checker::Checker;
use crate::filters::FilterSet;

/// Words of the texts of `SkipReason`s: a failure that says one fails for a filter's reason.
const FILTER_REASONS: [&str; 4] = [
    "exclude pattern",
    "(exclude_outputs)",
    "more than max_nar_bytes",
    "which is skipped",
];

/// The verdicts the world writes and the checker reads.
pub type Shared = Arc<Mutex<Verdicts>>;

pub fn lock(verdicts: &Shared) -> MutexGuard<'_, Verdicts> {
    verdicts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the world knows of a new path.
pub struct Facts {
    pub info: PathInfo,
    /// Its output name, when the store can tell (its deriver's `.drv` is there and names it).
    pub output: Option<String>,
    /// The upstream cache serves it (its trusted narinfo and its NAR).
    pub served: bool,
}

struct Verdict {
    path: StorePath,
    /// The kind of the rule that excludes the path itself.
    own: Option<&'static str>,
    /// The kind of skip the rules require, if any (`needs_skipped` is always accepted too
    /// when `needs` is set).
    skip: Option<&'static str>,
    /// The excluded path the skip is for (itself, or one of its closure).
    because: Option<StorePath>,
    /// Its closure holds a path to be skipped, other than itself.
    needs: bool,
}

impl Verdict {
    /// Whether a skip of this `kind` agrees with the rules.
    fn accepts(&self, kind: &str) -> bool {
        self.skip == Some(kind) || (self.needs && kind == "needs_skipped")
    }
}

#[derive(Default)]
pub struct Verdicts {
    pub set: FilterSet,
    patterns: Vec<Regex>,
    /// By hash part.
    paths: BTreeMap<String, Verdict>,
    /// Hash parts of the paths of each NarHash.
    by_nar: BTreeMap<[u8; 32], Vec<String>>,
    /// Skips reported by the uploaders (tops and others).
    pub skips_reported: u64,
}

impl Verdicts {
    pub fn new(set: FilterSet) -> Verdicts {
        Verdicts {
            patterns: set
                .exclude
                .iter()
                .map(|p| Regex::new(p).expect("a valid pattern"))
                .collect(),
            set,
            ..Verdicts::default()
        }
    }

    /// Judges a new path (its references are judged already).
    pub fn learn(&mut self, facts: Facts) {
        let info = &facts.info;
        let own = if self.patterns.iter().any(|r| r.is_match(info.path.name())) {
            Some("excluded")
        } else if self
            .set
            .max_nar_bytes
            .is_some_and(|max| info.nar_size > max)
        {
            Some("too_big")
        } else if facts
            .output
            .as_ref()
            .is_some_and(|o| self.set.exclude_outputs.contains(o))
        {
            Some("excluded_output")
        } else {
            None
        };
        let needed = info
            .references
            .iter()
            .filter(|r| **r != info.path)
            .filter_map(|r| self.paths.get(r.hash_part()))
            .find_map(|v| v.skip.and(v.because.clone()));
        let needs = !facts.served && needed.is_some();
        let (skip, because) = match (facts.served, own, needed) {
            (true, _, _) => (None, None),
            (false, Some(kind), _) => (Some(kind), Some(info.path.clone())),
            (false, None, Some(reference)) => (Some("needs_skipped"), Some(reference)),
            (false, None, None) => (None, None),
        };
        let hash = info.path.hash_part().to_owned();
        self.by_nar
            .entry(info.nar_hash.0)
            .or_default()
            .push(hash.clone());
        self.paths.insert(
            hash,
            Verdict {
                path: info.path.clone(),
                own,
                skip,
                because,
                needs,
            },
        );
    }

    /// What the rules require of the path of `hash`: the kind of skip, and what for; and
    /// whether a skip of `kind` agrees.
    fn expected(
        &self,
        hash: &str,
        kind: Option<&str>,
    ) -> (Option<&'static str>, Option<&StorePath>, bool) {
        self.paths.get(hash).map_or((None, None, false), |v| {
            (
                v.skip,
                v.because.as_ref(),
                kind.is_some_and(|k| v.accepts(k)),
            )
        })
    }

    /// An entry of a queue at the end, against the rules; the problem if any.
    pub fn judge_entry(&self, entry: &Entry) -> Option<String> {
        let path = &entry.path;
        let kind = entry.skipped.as_ref().map(|r| r.kind.as_str());
        let (expected, because, agrees) = self.expected(path.hash_part(), kind);
        let because = because.map_or(String::new(), |b| format!(" (because of {b})"));
        match entry.state {
            State::Done => expected.map(|kind| {
                format!("filters: {path} ended done, but the rules skip it as {kind}{because}")
            }),
            State::Skipped => {
                let kind = kind.unwrap_or("no kind");
                match expected {
                    Some(_) if agrees => None,
                    Some(wanted) => Some(format!(
                        "filters: {path} ended skipped as {kind}, the rules say {wanted}{because}"
                    )),
                    None => Some(format!(
                        "filters: {path} ended skipped as {kind}, but the rules do not skip it"
                    )),
                }
            }
            State::Failed => entry
                .last_error
                .as_deref()
                .filter(|e| FILTER_REASONS.iter().any(|w| e.contains(w)))
                .map(|e| format!("filters: {path} failed for a filter's reason: {e}")),
            _ => None,
        }
    }

    /// Figures for the run's summary.
    pub fn summary(&self) -> String {
        let count = |f: &dyn Fn(&Verdict) -> bool| self.paths.values().filter(|v| f(v)).count();
        format!(
            "filters {:?}: {} paths excluded ({} by name, {} too big, {} by output), {} to be \
             skipped, {} skips reported",
            self.set,
            count(&|v| v.own.is_some()),
            count(&|v| v.own == Some("excluded")),
            count(&|v| v.own == Some("too_big")),
            count(&|v| v.own == Some("excluded_output")),
            count(&|v| v.skip.is_some()),
            self.skips_reported
        )
    }
}

/// A narinfo was written: never one of an excluded path, nor one whose closure needs a path
/// the rules skip.
pub fn narinfo_written(checker: &mut Checker, key: &str) {
    let hash = key.trim_end_matches(".narinfo");
    let problem = {
        let verdicts = lock(&checker.verdicts);
        verdicts
            .paths
            .get(hash)
            .and_then(|v| match (v.own, &v.because) {
                (Some(kind), _) => Some(format!(
                    "filters: {key} was written, but {} is excluded ({kind})",
                    v.path
                )),
                (None, Some(because)) => Some(format!(
                    "filters: {key} was written, but its closure needs {because}, which the rules \
                 skip"
                )),
                (None, None) => None,
            })
    };
    if let Some(problem) = problem {
        checker.violate(problem);
    }
}

/// A NAR was written: never one only excluded paths have.
pub fn nar_written(checker: &mut Checker, key: &str, objects: &BTreeMap<String, Stored>) {
    let problem = {
        let verdicts = lock(&checker.verdicts);
        if verdicts.paths.is_empty() {
            return;
        }
        let Some(nar) = objects
            .get(key)
            .and_then(|o| zstd::decode_all(&o.body[..]).ok())
        else {
            return;
        };
        let owners = verdicts
            .by_nar
            .get(&Sha256::digest(&nar).0)
            .cloned()
            .unwrap_or_default();
        let excluded: Vec<&Verdict> = owners
            .iter()
            .filter_map(|h| verdicts.paths.get(h))
            .filter(|v| v.own.is_some())
            .collect();
        (!owners.is_empty() && excluded.len() == owners.len()).then(|| {
            let names: Vec<String> = excluded.iter().map(|v| v.path.to_string()).collect();
            format!(
                "filters: {key} was written, the NAR of {} only, excluded",
                names.join(", ")
            )
        })
    };
    if let Some(problem) = problem {
        checker.violate(problem);
    }
}

/// An uploader reported the path of `hash` done (`skip` is `None`) or skipped: as the rules
/// say?
pub fn reported(checker: &mut Checker, who: &str, hash: &str, skip: Option<&SkipReason>) {
    let problem = {
        let mut verdicts = lock(&checker.verdicts);
        if skip.is_some() {
            verdicts.skips_reported += 1;
        }
        let path = verdicts
            .paths
            .get(hash)
            .map_or_else(|| hash.to_owned(), |v| v.path.to_string());
        let (expected, because, agrees) = verdicts.expected(hash, skip.map(SkipReason::kind));
        let because = because.map_or(String::new(), |b| format!(" (because of {b})"));
        match (skip, expected) {
            (None, None) => None,
            (None, Some(kind)) => Some(format!(
                "filters: {who} reported {path} done, but the rules skip it as {kind}{because}"
            )),
            (Some(reason), None) => Some(format!(
                "filters: {who} skipped {path} ({reason}), but the rules do not skip it"
            )),
            (Some(reason), Some(kind)) if !agrees => Some(format!(
                "filters: {who} skipped {path} ({reason}), the rules say {kind}{because}"
            )),
            (Some(_), Some(_)) => None,
        }
    };
    if let Some(reason) = skip {
        checker.note(format!("{who} skips {hash}: {}", reason.kind()));
    }
    if let Some(problem) = problem {
        checker.violate(problem);
    }
}

/// A report of a skip, as a daemon or a one-shot upload hears it (every path skipped, top or
/// not, is reported once as [`narpush::engine::Report::Skipped`]).
pub fn on_report(checker: &mut Checker, who: &str, report: &narpush::engine::Report) {
    if let narpush::engine::Report::Skipped { path, reason } = report {
        reported(checker, who, path.hash_part(), Some(reason));
    }
}

//! What `narpush verify` found, per kind of problem with counts and examples, and how it is
//! shown: as text, or as the JSON document docs/verify.md specifies (field names are a
//! contract).
//!
//! Invariant: a problem is counted once, under one kind, either as a problem or, when an
//! object it involves is younger than the grace period, as in flight; [`Report::whole`] is
//! true exactly when no problem was counted (unchecked references and in-flight objects
//! allowed).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Examples kept per kind.
pub const EXAMPLES: usize = 5;

/// The kinds of problem, in the order they are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    UnparseableNarinfos,
    UnverifiedSignatures,
    MissingNars,
    NarSizeMismatches,
    NarHashMismatches,
    MissingReferences,
    ListingsWithoutPath,
    LogsWithoutPath,
    RealisationsWithoutPath,
    OrphanNars,
    BrokenPins,
    CacheInfo,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::CacheInfo,
        Kind::UnparseableNarinfos,
        Kind::UnverifiedSignatures,
        Kind::MissingNars,
        Kind::NarSizeMismatches,
        Kind::NarHashMismatches,
        Kind::MissingReferences,
        Kind::ListingsWithoutPath,
        Kind::LogsWithoutPath,
        Kind::RealisationsWithoutPath,
        Kind::OrphanNars,
        Kind::BrokenPins,
    ];

    /// How the text report names it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::UnparseableNarinfos => "narinfos that do not parse",
            Kind::UnverifiedSignatures => "narinfos without a signature that verifies",
            Kind::MissingNars => "NARs missing",
            Kind::NarSizeMismatches => "NARs of another size than FileSize",
            Kind::NarHashMismatches => "NARs of another FileHash/NarHash",
            Kind::MissingReferences => "references with no narinfo here",
            Kind::ListingsWithoutPath => ".ls listings without their path",
            Kind::LogsWithoutPath => "build logs without their path",
            Kind::RealisationsWithoutPath => "realisations without their path",
            Kind::OrphanNars => "orphan NARs (no narinfo names them)",
            Kind::BrokenPins => "pins unreadable or not whole",
            Kind::CacheInfo => "nix-cache-info missing or not for /nix/store",
        }
    }
}

/// One instance of a finding: the key it is about and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Example {
    pub key: String,
    pub detail: String,
}

/// How many of a kind, and the first few.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub count: u64,
    pub examples: Vec<Example>,
}

impl Finding {
    pub fn add(&mut self, key: &str, detail: String) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(Example {
                key: key.to_owned(),
                detail,
            });
        }
    }
}

/// The problems, one field per [`Kind`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct Problems {
    pub unparseable_narinfos: Finding,
    pub unverified_signatures: Finding,
    pub missing_nars: Finding,
    pub nar_size_mismatches: Finding,
    pub nar_hash_mismatches: Finding,
    pub missing_references: Finding,
    pub listings_without_path: Finding,
    pub logs_without_path: Finding,
    pub realisations_without_path: Finding,
    pub orphan_nars: Finding,
    pub broken_pins: Finding,
    pub cache_info: Finding,
}

impl Problems {
    pub fn of(&self, kind: Kind) -> &Finding {
        match kind {
            Kind::UnparseableNarinfos => &self.unparseable_narinfos,
            Kind::UnverifiedSignatures => &self.unverified_signatures,
            Kind::MissingNars => &self.missing_nars,
            Kind::NarSizeMismatches => &self.nar_size_mismatches,
            Kind::NarHashMismatches => &self.nar_hash_mismatches,
            Kind::MissingReferences => &self.missing_references,
            Kind::ListingsWithoutPath => &self.listings_without_path,
            Kind::LogsWithoutPath => &self.logs_without_path,
            Kind::RealisationsWithoutPath => &self.realisations_without_path,
            Kind::OrphanNars => &self.orphan_nars,
            Kind::BrokenPins => &self.broken_pins,
            Kind::CacheInfo => &self.cache_info,
        }
    }

    fn of_mut(&mut self, kind: Kind) -> &mut Finding {
        match kind {
            Kind::UnparseableNarinfos => &mut self.unparseable_narinfos,
            Kind::UnverifiedSignatures => &mut self.unverified_signatures,
            Kind::MissingNars => &mut self.missing_nars,
            Kind::NarSizeMismatches => &mut self.nar_size_mismatches,
            Kind::NarHashMismatches => &mut self.nar_hash_mismatches,
            Kind::MissingReferences => &mut self.missing_references,
            Kind::ListingsWithoutPath => &mut self.listings_without_path,
            Kind::LogsWithoutPath => &mut self.logs_without_path,
            Kind::RealisationsWithoutPath => &mut self.realisations_without_path,
            Kind::OrphanNars => &mut self.orphan_nars,
            Kind::BrokenPins => &mut self.broken_pins,
            Kind::CacheInfo => &mut self.cache_info,
        }
    }
}

/// Signature key names seen on the narinfos, and the keys signatures were checked with.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Keys {
    /// Names of the public keys signatures were verified with.
    pub trusted: Vec<String>,
    /// Each key name found on a `Sig` line, with the number of narinfos carrying it.
    pub seen: BTreeMap<String, u64>,
}

/// A pin of the cache and whether its closure is whole here.
#[derive(Clone, Debug, Serialize)]
pub struct PinReport {
    pub name: String,
    /// `None` when the pin cannot be read.
    pub path: Option<String>,
    pub whole: bool,
}

/// The result of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub target: String,
    pub grace_secs: u64,
    /// Whether NARs were read and hashed (`--nar-hash`).
    pub nar_hash_checked: bool,
    pub objects: u64,
    pub narinfos: u64,
    pub nars: u64,
    pub nar_bytes: u64,
    pub keys: Keys,
    pub problems: Problems,
    /// Problems counted, over every kind.
    pub problem_count: u64,
    /// The bytes of the orphan NARs counted as problems.
    pub orphan_nar_bytes: u64,
    /// What would be problems but involves an object younger than the grace period.
    pub in_flight: Finding,
    /// Distinct references with no narinfo here that an upstream cache serves.
    pub upstream_references: Finding,
    /// Distinct references with no narinfo here, not asked of any upstream cache.
    pub unchecked_references: Finding,
    pub pins: Vec<PinReport>,
    pub whole: bool,
    /// Every key counted as a problem, with its kinds (not only the examples): what
    /// `narpush verify --repair` works from. Not part of the JSON document.
    #[serde(skip)]
    pub damaged: BTreeMap<String, Vec<Kind>>,
    /// Every path counted under [`Kind::MissingReferences`], by hash part. Not part of the
    /// JSON document.
    #[serde(skip)]
    pub missing_paths: BTreeMap<String, crate::format::store_path::StorePath>,
    /// Every path counted under `unchecked_references`, by hash part. Not part of the JSON
    /// document.
    #[serde(skip)]
    pub unchecked_paths: BTreeMap<String, crate::format::store_path::StorePath>,
}

impl Report {
    /// Counts a problem of `kind` about `key`, or sets it aside as in flight when `young`.
    pub fn problem(&mut self, kind: Kind, young: bool, key: &str, detail: String) {
        if young {
            self.in_flight
                .add(key, format!("{}: {detail}", kind.label()));
        } else {
            self.problems.of_mut(kind).add(key, detail);
            self.damaged.entry(key.to_owned()).or_default().push(kind);
            self.problem_count += 1;
            self.whole = false;
        }
    }

    /// The exit status the issue fixes: 0 whole, 1 problems found.
    pub fn exit_code(&self) -> u8 {
        if self.whole {
            0
        } else {
            1
        }
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} object(s), {} narinfo(s), {} NAR(s) ({} bytes)",
            self.target, self.objects, self.narinfos, self.nars, self.nar_bytes
        );
        let trusted = if self.keys.trusted.is_empty() {
            "none".to_owned()
        } else {
            self.keys.trusted.join(", ")
        };
        let _ = writeln!(out, "trusted keys: {trusted}");
        for (name, count) in &self.keys.seen {
            let mark = if self.keys.trusted.contains(name) {
                "trusted"
            } else {
                "NOT trusted"
            };
            let _ = writeln!(out, "  signed by {name}: {count} narinfo(s), {mark}");
        }
        if !self.nar_hash_checked {
            let _ = writeln!(out, "NAR hashes not checked (pass --nar-hash)");
        }
        for kind in Kind::ALL {
            let finding = self.problems.of(kind);
            if finding.count == 0 {
                continue;
            }
            let _ = writeln!(out, "PROBLEM {}: {}", kind.label(), finding.count);
            if kind == Kind::OrphanNars {
                let _ = writeln!(out, "  {} bytes", self.orphan_nar_bytes);
            }
            write_examples(&mut out, finding);
        }
        let sections = [
            ("references served upstream", &self.upstream_references),
            (
                "references unchecked (no upstream cache given)",
                &self.unchecked_references,
            ),
            (
                "in flight (younger than --grace, or deleted since the listing)",
                &self.in_flight,
            ),
        ];
        for (label, finding) in sections {
            if finding.count > 0 {
                let _ = writeln!(out, "{label}: {}", finding.count);
                write_examples(&mut out, finding);
            }
        }
        for pin in &self.pins {
            let _ = writeln!(
                out,
                "pin {}: {} ({})",
                pin.name,
                pin.path.as_deref().unwrap_or("unreadable"),
                if pin.whole { "whole" } else { "NOT whole" }
            );
        }
        let verdict = if self.whole {
            "whole".to_owned()
        } else {
            format!("NOT whole: {} problem(s)", self.problem_count)
        };
        let _ = writeln!(out, "{verdict}");
        out
    }
}

fn write_examples(out: &mut String, finding: &Finding) {
    for example in &finding.examples {
        let _ = writeln!(out, "  {}: {}", example.key, example.detail);
    }
    let more = finding.count.saturating_sub(finding.examples.len() as u64);
    if more > 0 {
        let _ = writeln!(out, "  ... and {more} more");
    }
}

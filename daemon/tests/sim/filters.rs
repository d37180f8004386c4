//! The push filters of a seed (with `--filters on`): one filter set, drawn per seed, that every
//! engine of the run applies (daemons and one-shot uploads alike, as one config file would),
//! and what the simulated store must then know for it to bite:
//!
//! - **names**: a path is named `p<n>`, and with filters some get a suffix (`p12-doc`,
//!   `p13-tests`), so that the `exclude` patterns match a fraction of them (and sometimes a
//!   base path, which the upstream cache may serve);
//! - **NAR sizes**: `max_nar_bytes` is drawn within the range of the generated NARs;
//! - **output names**: each build is one derivation; its paths are its outputs (`out`, `doc`,
//!   `dev`, …). As in a real store, the output name is known only from the deriver's `.drv`:
//!   some paths have no deriver, some a deriver whose `.drv` is not in the store, some are
//!   floating content-addressed outputs the `.drv` names no path for. The `.drv` text goes
//!   into `store::simulated`, where the engine's filter reads it as it reads `/nix/store`.
//!
//! Everything here is drawn from a generator of its own, so that a seed's run with
//! `--filters off` is the run it was before filters were simulated. What the rules say of each
//! path is [`crate::verdicts`]'s.

use narpush::filter::PushFilter;
use narpush::format::store_path::StorePath;

use crate::rng::Rng;
use crate::verdicts::{Facts, Shared};

/// `exclude` patterns drawn from: suffixes some names get, and numbers some names have.
const PATTERNS: [&str; 6] = [
    "-doc$",
    "-tests$",
    "-man",
    // Two of the four base paths (every build may depend on them; the upstream may serve them).
    r"^p[02]\b",
    // About one path in ten, whatever its suffix.
    r"^p\d*7\b",
    "static",
];
/// Suffixes of path names (most get none).
const SUFFIXES: [&str; 9] = ["", "", "", "", "", "-doc", "-tests", "-man", "-static"];
/// Output names of the simulated derivations.
const OUTPUTS: [&str; 7] = ["out", "dev", "doc", "man", "debug", "bin", "lib"];
/// `exclude_outputs` names drawn from.
const EXCLUDED_OUTPUTS: [&str; 4] = ["doc", "man", "debug", "dev"];
const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// The filter set of a seed, as a config file would state it.
#[derive(Clone, Debug, Default)]
pub struct FilterSet {
    pub exclude: Vec<String>,
    pub exclude_outputs: Vec<String>,
    pub max_nar_bytes: Option<u64>,
}

/// Whether the seed runs with push filters (`fixed` by `--filters`, else drawn for half the
/// seeds) and which; drawn from `rng` whatever `fixed` says, so that the draw is the same.
pub fn draw(fixed: Option<bool>, rng: &mut Rng) -> Option<FilterSet> {
    let drawn = rng.chance(50);
    let mut set = FilterSet::default();
    // Each rule in most seeds, at least one in every seed.
    let rules = loop {
        let rules = [rng.chance(70), rng.chance(50), rng.chance(60)];
        if rules.iter().any(|on| *on) {
            break rules;
        }
    };
    if rules[0] {
        for _ in 0..rng.between(1, 2) {
            let pattern = rng.pick(&PATTERNS).to_string();
            if !set.exclude.contains(&pattern) {
                set.exclude.push(pattern);
            }
        }
    }
    if rules[1] {
        // Generated NARs are about 130 to 1620 bytes: this excludes a tenth to a half of them.
        set.max_nar_bytes = Some(rng.between(800, 1500));
    }
    if rules[2] {
        for _ in 0..rng.between(1, 2) {
            let name = rng.pick(&EXCLUDED_OUTPUTS).to_string();
            if !set.exclude_outputs.contains(&name) {
                set.exclude_outputs.push(name);
            }
        }
    }
    fixed.unwrap_or(drawn).then_some(set)
}

impl FilterSet {
    /// The engine's filter for this set (every engine of the seed gets one).
    pub fn push_filter(&self) -> PushFilter {
        PushFilter::new(&self.exclude, &self.exclude_outputs, self.max_nar_bytes)
            .expect("the simulation's filters are valid")
    }
}

/// Where a build's paths say they come from.
enum Deriver {
    /// No deriver recorded.
    Unknown,
    /// A deriver whose `.drv` is not in the store (collected, or the paths were substituted).
    Absent(StorePath),
    /// A deriver whose `.drv` is in the store; per output, whether it is floating
    /// content-addressed (the `.drv` names no path for it).
    Present(StorePath, Vec<bool>),
}

/// The names and derivation of one build, drawn before its paths are made.
pub struct BuildPlan {
    names: Vec<String>,
    outputs: Vec<String>,
    deriver: Deriver,
}

impl BuildPlan {
    /// The name of the build's `i`-th path.
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The deriver the build's paths record.
    pub fn deriver(&self) -> Option<StorePath> {
        match &self.deriver {
            Deriver::Unknown => None,
            Deriver::Absent(drv) | Deriver::Present(drv, _) => Some(drv.clone()),
        }
    }
}

/// The world's side of the filters: draws each build's names and derivation, writes its
/// `.drv` into the store, and tells [`crate::verdicts`] what each new path is.
pub struct Filtering {
    rng: Rng,
    pub verdicts: Shared,
}

impl Filtering {
    /// Draws from `seed`; tells `verdicts` (which holds the seed's filter set) of each path.
    pub fn new(seed: u64, verdicts: Shared) -> Filtering {
        Filtering {
            rng: Rng::new(seed),
            verdicts,
        }
    }

    /// Names and a derivation for a build of `count` paths, the first numbered `first`.
    pub fn plan(&mut self, first: usize, count: usize) -> BuildPlan {
        let rng = &mut self.rng;
        let names = (first..first + count)
            .map(|n| format!("p{n}{}", rng.pick(&SUFFIXES)))
            .collect();
        let mut outputs: Vec<String> = Vec::new();
        while outputs.len() < count {
            // The top (the last path) is mostly `out`, as in nixpkgs.
            let name = if outputs.len() + 1 == count && rng.chance(60) {
                "out"
            } else {
                rng.pick(&OUTPUTS)
            };
            if !outputs.iter().any(|o| o == name) {
                outputs.push(name.to_owned());
            }
        }
        let deriver = match self.rng.below(100) {
            0..=19 => Deriver::Unknown,
            20..=34 => Deriver::Absent(drv_path(&mut self.rng, first)),
            _ => {
                let drv = drv_path(&mut self.rng, first);
                Deriver::Present(drv, (0..count).map(|_| self.rng.chance(10)).collect())
            }
        };
        BuildPlan {
            names,
            outputs,
            deriver,
        }
    }

    /// After the build of `plan` made `made` (in order, references first): its `.drv` in the
    /// store, and what each path is for the rules.
    pub fn built(
        &mut self,
        plan: BuildPlan,
        made: &[StorePath],
        store: &narpush::store::simulated::SimStore,
        served: impl Fn(&StorePath) -> bool,
    ) {
        if let Deriver::Present(drv, floating) = &plan.deriver {
            store.add_derivation(drv, drv_text(&plan.outputs, made, floating));
        }
        let mut verdicts = crate::verdicts::lock(&self.verdicts);
        for (i, path) in made.iter().enumerate() {
            let info = store.info(path).expect("a path just made");
            let output = match &plan.deriver {
                Deriver::Present(_, floating) if !floating[i] => Some(plan.outputs[i].clone()),
                _ => None,
            };
            verdicts.learn(Facts {
                info,
                output,
                served: served(path),
            });
        }
    }
}

/// A `.drv`'s store path, for the build whose first path is numbered `first`.
fn drv_path(rng: &mut Rng, first: usize) -> StorePath {
    let hash: String = (0..32)
        .map(|_| NIX32[rng.below(32) as usize] as char)
        .collect();
    StorePath::from_basename(&format!("{hash}-p{first}.drv")).expect("a valid .drv path")
}

/// A `.drv` whose outputs are `made`, named `outputs` (ATerm, as Nix writes it; a floating
/// output has an empty path and a hash algorithm).
fn drv_text(outputs: &[String], made: &[StorePath], floating: &[bool]) -> String {
    let outputs: Vec<String> = outputs
        .iter()
        .zip(made)
        .zip(floating)
        .map(|((name, path), floating)| {
            if *floating {
                format!(r#"("{name}","","r:sha256","")"#)
            } else {
                format!(r#"("{name}","{}","","")"#, path.to_absolute())
            }
        })
        .collect();
    format!(
        r#"Derive([{}],[],[],"x86_64-linux","/bin/sh",["-c","true"],[("name","sim")])"#,
        outputs.join(",")
    )
}

//! The realisations the local store holds for a derivation: where the outputs of a floating
//! content-addressed derivation went, which its `.drv` cannot say.
//!
//! They come from `nix realisation info --json <drv>…` (Nix 2.4+, `ca-derivations`), one
//! process for the derivation and, only when its realisations depend on others, one for its
//! input derivations. Nix registers a derivation's realisations before it runs the
//! post-build-hook, so a hook request can be answered at once.
//!
//! A realisation of a derivation without input derivations (a resolved one) carries that
//! derivation ([`Realisation::drv`]): it keys the realisation's Nix 2.35 build trace entry.
//!
//! Invariant: [`realisations_of`] returns every realisation of the derivation's outputs (none
//! missing: a floating output without one is an error naming it), plus those of its inputs
//! that the first depend on and that the store knows; a dependency it cannot find is left to
//! the upload engine, which does not publish a realisation before its dependencies.

use std::io::Read;
use std::path::Path;

use super::{run_nix, StoreError};
use crate::format::derivation::{self, DerivationError, DerivationHead};
use crate::format::realisation::{Realisation, RealisationError};
use crate::format::store_path::StorePath;

#[derive(Debug, thiserror::Error)]
pub enum RealisationQueryError {
    #[error("cannot read derivation {drv}")]
    Read {
        drv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the outputs of {drv}")]
    Parse {
        drv: String,
        #[source]
        source: DerivationError,
    },
    #[error("cannot ask Nix for the realisations of {drv}")]
    Store {
        drv: String,
        #[source]
        source: StoreError,
    },
    #[error("unexpected output from `nix realisation info --json` for {drv}")]
    Json {
        drv: String,
        #[source]
        source: RealisationError,
    },
    #[error(
        "output '{output}' of {drv} has no realisation in the store \
         (was it built with `experimental-features = ca-derivations`?)"
    )]
    Unrealised { drv: String, output: String },
}

/// How much of a `.drv` is read: its outputs and inputs lists come first, and the rest (the
/// environment, which any user's derivation can make huge) is never needed.
const DRV_PREFIX: u64 = 1 << 20;

/// Reads the outputs and input derivations of `drv`.
pub fn derivation_head(drv: &StorePath) -> Result<DerivationHead, RealisationQueryError> {
    let file = drv.to_absolute();
    let mut bytes = Vec::new();
    std::fs::File::open(Path::new(&file))
        .and_then(|f| f.take(DRV_PREFIX).read_to_end(&mut bytes))
        .map_err(|source| RealisationQueryError::Read {
            drv: file.clone(),
            source,
        })?;
    // Environment strings may hold any bytes; the lists read are ASCII, and a replaced
    // invalid sequence never contains the quotes or commas the parser looks for.
    let text = String::from_utf8_lossy(&bytes);
    derivation::parse_head(&text)
        .map_err(|source| RealisationQueryError::Parse { drv: file, source })
}

/// The realisations of a derivation's outputs, and those of its inputs they depend on.
#[derive(Clone, Debug, Default)]
pub struct DerivationRealisations {
    pub own: Vec<Realisation>,
    pub inputs: Vec<Realisation>,
}

impl DerivationRealisations {
    /// All of them, the inputs' first.
    pub fn all(&self) -> Vec<Realisation> {
        self.inputs.iter().chain(&self.own).cloned().collect()
    }
}

/// The realisations of `drv`'s outputs (see the module doc).
pub async fn realisations_of(
    drv: &StorePath,
    head: &DerivationHead,
) -> Result<DerivationRealisations, RealisationQueryError> {
    let mut own = query(std::slice::from_ref(drv)).await?;
    // A derivation with no input derivations is resolved: it keys its own build trace
    // entries (Nix 2.35 `Derivation::shouldResolve`). One with inputs is resolved to another
    // `.drv`, which Nix 2.8 builds (and runs the hook for) under its own name.
    if head.input_derivations.is_empty() {
        for realisation in &mut own {
            realisation.drv = Some(drv.clone());
        }
    }
    for (output, _) in &head.outputs {
        if !own.iter().any(|r| &r.id.output == output) {
            return Err(RealisationQueryError::Unrealised {
                drv: drv.to_absolute(),
                output: output.clone(),
            });
        }
    }
    let mut inputs = Vec::new();
    let needs_inputs = own
        .iter()
        .flat_map(|r| r.dependent_realisations.keys())
        .any(|dep| !own.iter().any(|r| &r.id == dep));
    if needs_inputs && !head.input_derivations.is_empty() {
        // An input built without ca-derivations has no realisation and fails the whole query;
        // its dependents then wait in the engine for the realisation to appear in the cache.
        match query(&head.input_derivations).await {
            Ok(found) => {
                inputs = found
                    .into_iter()
                    .filter(|input| !own.iter().any(|r| r.id == input.id))
                    .collect();
            }
            Err(error) => tracing::warn!(
                "cannot read the realisations of the inputs of {drv}: {}",
                crate::error_chain(&error)
            ),
        }
    }
    Ok(DerivationRealisations { own, inputs })
}

async fn query(drvs: &[StorePath]) -> Result<Vec<Realisation>, RealisationQueryError> {
    let name = drvs.first().map(StorePath::to_absolute).unwrap_or_default();
    let mut args: Vec<String> = [
        "--extra-experimental-features",
        "nix-command ca-derivations",
        "realisation",
        "info",
        "--json",
        // Only what the local store knows: never a substituter's answer.
        "--option",
        "substitute",
        "false",
        "--",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(drvs.iter().map(StorePath::to_absolute));
    let stdout = run_nix("nix", &args)
        .await
        .map_err(|source| RealisationQueryError::Store {
            drv: name.clone(),
            source,
        })?;
    Realisation::list_from_json(&stdout)
        .map_err(|source| RealisationQueryError::Json { drv: name, source })
}

/// For `narpush upload`: each floating content-addressed `.drv` among `paths` is replaced by
/// its output paths; returns the paths and the realisations to publish with them. Any other
/// path (a `.drv` with known output paths too) stays as given.
pub async fn expand_derivations(
    paths: Vec<StorePath>,
) -> Result<(Vec<StorePath>, Vec<Realisation>), RealisationQueryError> {
    let mut expanded = Vec::with_capacity(paths.len());
    let mut realisations = Vec::new();
    for path in paths {
        if !path.name().ends_with(".drv") {
            expanded.push(path);
            continue;
        }
        let head = derivation_head(&path)?;
        if !head.has_floating_outputs() {
            expanded.push(path);
            continue;
        }
        let found = realisations_of(&path, &head).await?;
        expanded.extend(found.own.iter().map(|r| r.out_path.clone()));
        realisations.extend(found.all());
    }
    Ok((expanded, realisations))
}

/// For `narpush upload`: the realisations of the content-addressed outputs among `infos`,
/// found through their derivers (one `nix` process per such deriver). An output whose deriver
/// is gone from the store or not floating gets none; one whose deriver has no realisation of
/// it gets none either (said in a warning).
pub async fn realisations_of_outputs(infos: &[super::PathInfo]) -> Vec<Realisation> {
    let mut found = Vec::new();
    let mut asked = std::collections::HashSet::new();
    for info in infos {
        let (Some(_), Some(drv)) = (&info.ca, &info.deriver) else {
            continue;
        };
        if !asked.insert(drv.clone()) || !Path::new(&drv.to_absolute()).exists() {
            continue;
        }
        let Ok(head) = derivation_head(drv) else {
            continue;
        };
        if !head.has_floating_outputs() {
            continue;
        }
        match realisations_of(drv, &head).await {
            Ok(of_drv) => {
                if of_drv.own.iter().any(|r| r.out_path == info.path) {
                    found.extend(of_drv.all());
                }
            }
            Err(error) => tracing::warn!(
                "uploading {} without its realisation: {}",
                info.path,
                crate::error_chain(&error)
            ),
        }
    }
    found
}

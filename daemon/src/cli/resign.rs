//! `narpush resign`: adds or replaces signatures on the narinfos and realisations of a cache,
//! for a key rotation (the rules are in the library's `resign` module).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::progress::Spinner;
use super::Outcome;
use narpush::config::Config;
use narpush::format::signing::SigningKey;
use narpush::resign::{self, Counts, Options, Summary};
use narpush::sink::{Sink, TargetUrl};

/// Sign the narinfos and realisations already in the cache with another key; NARs are not
/// touched.
///
/// Only objects that are ours are signed: one of their signatures must verify with the public
/// half of a --key or with a key of `own_public_keys` in the config (put the old key's public
/// key there). Others are counted and left alone. A signature by a --key replaces any older one
/// under the same key name; --remove-signature drops a key name's signatures. Safe beside
/// uploaders and `narpush gc`: each object is written back within 2 s of the read it
/// rewrites, as a refresh is. A rewritten narinfo counts as new for `narpush gc
/// --older-than`, so leave what gc will collect alone with --skip-older-than (the same
/// duration as gc's --older-than). Resumable: what already carries the wanted signatures is
/// not written again.
///
/// A key rotation (docs/operations.md, "Rotating the signing key"):
///   narpush keygen cache.example.org-2 > new-key
///   # clients trust both keys; own_public_keys = ["cache.example.org-1:…"] in the config
///   narpush resign --key new-key --skip-older-than 30d
///   # switch the writers to new-key, then:
///   narpush resign --key new-key --remove-signature cache.example.org-1 --skip-older-than 30d
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ResignArgs {
    /// Secret key file to sign with (Nix format); repeatable.
    #[arg(long = "key", value_name = "FILE", required = true)]
    keys: Vec<PathBuf>,

    /// Remove the signatures of this key name (as in `name:base64`); repeatable.
    #[arg(long, value_name = "KEYNAME")]
    remove_signature: Vec<String>,

    /// Leave objects last written longer ago than this alone: `30d`, `2w`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    skip_older_than: Option<Duration>,

    /// Count what would be rewritten, write nothing.
    #[arg(long)]
    dry_run: bool,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,

    /// The cache: s3://BUCKET?endpoint=URL&region=R or file:///DIR. Default: `target` from the
    /// config file, else the daemon's default cache, file://<state_dir>/cache.
    #[arg(long, value_name = "TARGET")]
    to: Option<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    target: String,
    #[serde(flatten)]
    summary: &'a Summary,
}

pub fn run(args: &ResignArgs, config_path: Option<&Path>) -> anyhow::Result<Outcome> {
    let config = Config::load(config_path)?;
    let target = match &args.to {
        Some(url) => TargetUrl::parse(url)?,
        None => config.target_or_default(),
    };
    let keys = args
        .keys
        .iter()
        .map(|file| SigningKey::load(file))
        .collect::<Result<Vec<_>, _>>()?;
    let options = Options {
        keys,
        remove: args.remove_signature.clone(),
        own_public_keys: config.own_public_keys.clone(),
        skip_older_than: args.skip_older_than,
        dry_run: args.dry_run,
    };
    let summary = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(async {
            let mut sink = Sink::open(&target, config.request_timeout)
                .await
                .with_context(|| format!("cannot use target {target}"))?;
            sink.set_cache_control(config.cache_control.clone());
            let spinner = Spinner::on_terminal();
            let progress = |what: &str| spinner.say(what);
            let summary = resign::resign(&sink, &options, &progress).await;
            spinner.finish();
            anyhow::Ok(summary?)
        })?;
    if args.json {
        let report = Report {
            target: target.to_string(),
            summary: &summary,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let verb = if summary.dry_run {
            "would rewrite"
        } else {
            "rewrote"
        };
        let line = |what: &str, c: &Counts| {
            println!(
                "{what}: {verb} {}, {} already signed, {} older than --skip-older-than, {} not \
                 ours (left alone), {} unreadable, {} gone meanwhile, {} failed",
                c.rewritten, c.unchanged, c.skipped_old, c.not_ours, c.unreadable, c.gone, c.failed
            );
        };
        println!("{target}");
        line("narinfos", &summary.narinfos);
        line("realisations", &summary.realisations);
        let names: Vec<String> = summary
            .key_names
            .iter()
            .map(|(name, count)| format!("{name} ({count})"))
            .collect();
        println!("signatures found by key name: {}", names.join(", "));
    }
    for error in &summary.errors {
        eprintln!("error: {error}");
    }
    if summary.realisations_withdrawn > 0 {
        eprintln!(
            "note: {} realisation(s) whose output a collection deleted meanwhile were deleted \
             again",
            summary.realisations_withdrawn
        );
    }
    for name in &args.remove_signature {
        if !summary.key_names.contains_key(name) {
            eprintln!(
                "warning: no object read carries a signature by the key name '{name}' (give the \
                 name alone, as before the ':' of a public key)"
            );
        }
    }
    let not_ours = summary.narinfos.not_ours + summary.realisations.not_ours;
    if not_ours > 0 && !args.json {
        eprintln!(
            "note: {not_ours} object(s) carry no signature of a --key or of own_public_keys and \
             were left alone"
        );
    }
    if summary.narinfos.failed + summary.realisations.failed > 0 {
        eprintln!("some objects were not resigned; run resign again to finish");
        return Ok(Outcome::PartialFailure);
    }
    Ok(Outcome::Success)
}

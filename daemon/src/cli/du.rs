//! `narpush du`: what a cache holds, by kind, its orphans, its largest closures and paths, and
//! what each pin keeps (the library's `du` module measures; this file prints).

use std::path::Path;

use anyhow::Context;
use indicatif::HumanBytes;
use serde::Serialize;

use super::progress::Spinner;
use super::Outcome;
use narpush::config::Config;
use narpush::du::{self, Usage};
use narpush::gc::Tally;
use narpush::sink::{Sink, TargetUrl};

/// Show what a cache holds: objects and bytes by kind, orphans, the largest closures and
/// paths, and per pin its closure's bytes and the bytes only it keeps alive.
///
/// Reads only: one listing, then every narinfo, realisation and pin. A path's size is its
/// narinfo and its NAR as listed; a closure's bytes count each NAR once. Orphans are NARs no
/// narinfo names, listings and realisations whose path has no narinfo, and logs no narinfo
/// names as its deriver's. A pin's "only" bytes are those of its closure in no other pin's
/// closure: what `narpush pin --remove NAME` and a `narpush gc` could free, ages aside.
///
/// Examples:
///   narpush du
///   narpush du --to 's3://cache?endpoint=https://ACCOUNT.r2.cloudflarestorage.com' --top 3
///   narpush du --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DuArgs {
    /// How many of the largest closures and paths to show.
    #[arg(long, value_name = "N", default_value_t = du::DEFAULT_TOP)]
    top: usize,

    /// Print the result as JSON (docs/operations.md, "narpush du") instead of text.
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
    usage: &'a Usage,
}

pub fn run(args: &DuArgs, config_path: Option<&Path>) -> anyhow::Result<Outcome> {
    let config = Config::load(config_path)?;
    let target = match &args.to {
        Some(url) => TargetUrl::parse(url)?,
        None => config.target_or_default(),
    };
    let usage = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(async {
            let sink = Sink::open_for_reading(&target, config.request_timeout)
                .await
                .with_context(|| format!("cannot use target {target}"))?;
            let spinner = Spinner::on_terminal();
            let progress = |what: &str| spinner.say(what);
            let usage = du::measure(&sink, args.top, &progress).await;
            spinner.finish();
            anyhow::Ok(usage?)
        })?;
    if args.json {
        let report = Report {
            target: target.to_string(),
            usage: &usage,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&target, &usage);
    }
    Ok(Outcome::Success)
}

fn print_text(target: &TargetUrl, usage: &Usage) {
    let tally = |t: &Tally| format!("{:>8} {:>12}", t.objects, HumanBytes(t.bytes).to_string());
    let kinds = &usage.by_kind;
    println!(
        "{target}: {} object(s), {} ({} bytes), {} path(s)",
        usage.total.objects,
        HumanBytes(usage.total.bytes),
        usage.total.bytes,
        usage.paths
    );
    println!("  narinfos      {}", tally(&kinds.narinfos));
    println!("  NARs          {}", tally(&kinds.nars));
    println!("  listings      {}", tally(&kinds.listings));
    println!("  logs          {}", tally(&kinds.logs));
    println!("  realisations  {}", tally(&kinds.realisations));
    println!("  other         {}", tally(&usage.other));
    let orphans = &usage.orphans_by_kind;
    println!(
        "  orphans       {}  ({} NAR(s), {} listing(s), {} log(s), {} realisation(s))",
        tally(&usage.orphans),
        orphans.nars.objects,
        orphans.listings.objects,
        orphans.logs.objects,
        orphans.realisations.objects
    );
    if usage.unreadable_narinfos > 0 {
        println!(
            "  {} narinfo(s) could not be parsed: their NARs and logs count as orphans",
            usage.unreadable_narinfos
        );
    }
    if !usage.top_closures.is_empty() {
        println!("largest closures (of paths nothing else in the cache references):");
        for closure in &usage.top_closures {
            println!(
                "  {:>12} {:>6} path(s)  {}",
                HumanBytes(closure.closure_bytes).to_string(),
                closure.closure_paths,
                closure.path
            );
        }
    }
    if !usage.top_paths.is_empty() {
        println!("largest paths:");
        for path in &usage.top_paths {
            println!(
                "  {:>12}  {}",
                HumanBytes(path.bytes).to_string(),
                path.path
            );
        }
    }
    if !usage.pins.is_empty() {
        println!("pins:");
        for pin in &usage.pins {
            let missing = if pin.present {
                ""
            } else {
                " (no narinfo in the cache)"
            };
            println!(
                "  {}  {}{missing}: closure {} in {} path(s), only it keeps {}",
                pin.name,
                pin.path,
                HumanBytes(pin.closure_bytes),
                pin.closure_paths,
                HumanBytes(pin.exclusive_bytes)
            );
        }
    }
}

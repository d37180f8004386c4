//! `narpush gc`: retention GC of a cache, deleting what no recent path needs while every
//! closure that stays remains whole (the rules are in the library's `gc` module).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use indicatif::HumanBytes;
use serde::Serialize;

use super::progress::Spinner;
use super::Outcome;
use narpush::config::Config;
use narpush::gc::{self, Plan, Policy, Tally};
use narpush::sink::{Sink, TargetUrl};
use narpush::store;

/// Delete what no recent path of the cache needs, keeping every closure whole.
///
/// Roots are the narinfos written within --older-than, and the paths given with --keep. Every
/// path in their closures stays, with its NAR, listing, build log and realisations; everything
/// else is deleted, narinfos first, so clients never find a narinfo whose NAR or references are
/// gone. Safe while uploaders write to the same cache: nothing younger than --grace is deleted,
/// a path that an uploader finds in the cache has its narinfo rewritten once it is older than
/// `refresh_after` (config, default 1d), which is why --older-than must be at least
/// refresh_after + grace + 1m, and every object is looked at again just before its delete
/// (docs/protocol.md, "Retention GC and uploaders"). A read the store refuses (403) stops the
/// run before anything more is deleted; the exit status is then non-zero.
///
/// Examples:
///   narpush gc --older-than 30d --dry-run
///   narpush gc --older-than 2w --keep /nix/store/...-system --to file:///srv/cache
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct GcArgs {
    /// narinfos written less than this long ago are roots: `30d`, `12h`, `2w`, `1month`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    older_than: Duration,

    /// Nothing younger than this is deleted (uploads in progress); at least 15m. Choose it above
    /// the longest upload of one path.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "1h")]
    grace: Duration,

    /// Keep this path's closure whatever its age (a store path, or a symlink to one like
    /// ./result; the path need not be in the local store). Repeatable.
    #[arg(long, value_name = "PATH")]
    keep: Vec<String>,

    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,

    /// Print the result as JSON (with every deleted key) instead of text.
    #[arg(long)]
    json: bool,

    /// The cache: s3://BUCKET?endpoint=URL&region=R or file:///DIR. Default: `target` from the
    /// config file, else the daemon's default cache, file://<state_dir>/cache.
    #[arg(long, value_name = "TARGET")]
    to: Option<String>,
}

/// The JSON document of a run.
#[derive(Serialize)]
struct Report<'a> {
    target: String,
    older_than_secs: u64,
    grace_secs: u64,
    #[serde(flatten)]
    summary: &'a gc::Summary,
    deleted_keys: Vec<&'a str>,
}

pub fn run(args: GcArgs, config_path: Option<&Path>) -> anyhow::Result<Outcome> {
    let config = Config::load(config_path)?;
    let target = match &args.to {
        Some(url) => TargetUrl::parse(url)?,
        None => config.target_or_default(),
    };
    let keep = args
        .keep
        .iter()
        .map(|arg| store::resolve_store_path_arg(arg))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = Policy {
        older_than: args.older_than,
        grace: args.grace,
        keep,
    };
    gc::check_policy(&policy, config.refresh_after)?;
    let mut plan = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(async {
            let sink = Sink::open(&target, config.request_timeout)
                .await
                .with_context(|| format!("cannot use target {target}"))?;
            let spinner = Spinner::on_terminal();
            let progress = |what: &str| spinner.say(what);
            let plan = gc::collect(&sink, &policy, args.dry_run, &progress).await;
            spinner.finish();
            anyhow::Ok(plan?)
        })?;
    // The whole process is this run: the tally holds its requests alone.
    plan.summary.requests = narpush::sink::requests::tally().counts(&config.request_prices);
    if args.json {
        let report = Report {
            target: target.to_string(),
            older_than_secs: args.older_than.as_secs(),
            grace_secs: args.grace.as_secs(),
            summary: &plan.summary,
            deleted_keys: plan.delete.iter().map(|o| o.key.as_str()).collect(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&target, &plan);
    }
    Ok(Outcome::Success)
}

fn print_text(target: &TargetUrl, plan: &Plan) {
    let summary = &plan.summary;
    let by_kind = &summary.deleted_by_kind;
    let verb = if summary.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let tally = |t: &Tally| format!("{} ({})", t.objects, HumanBytes(t.bytes));
    println!("{target}: {} path(s) live", summary.live_paths);
    println!(
        "{verb} {}: {} narinfo(s), {} NAR(s), {} listing(s), {} log(s), {} realisation(s)",
        tally(&summary.deleted),
        by_kind.narinfos.objects,
        tally(&by_kind.nars),
        by_kind.listings.objects,
        by_kind.logs.objects,
        by_kind.realisations.objects
    );
    println!("kept {}", tally(&summary.kept));
    println!("{}", summary.requests);
}

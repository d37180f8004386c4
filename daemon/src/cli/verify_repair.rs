//! `narpush verify --repair`: the command-line side of the library's `repair` module: the
//! signing keys (refused clearly without one), the upload engine configured as
//! `narpush upload` configures it, and the output (text, or the verify JSON document with a
//! `repair` object).

use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use super::progress::Spinner;
use super::verify::VerifyArgs;
use super::Outcome;
use narpush::config::Config;
use narpush::engine::EngineConfig;
use narpush::format::signing::SigningKey;
use narpush::keys::configured_keys;
use narpush::repair::{self, Repaired, Summary};
use narpush::sink::requests::RequestCounts;
use narpush::sink::{Sink, TargetUrl};
use narpush::upstream::{Upstream, UpstreamCache};
use narpush::verify::{Options, Report};

/// The keys what is uploaded again is signed with: --key, else the configured ones.
pub fn signing_keys(args: &VerifyArgs, config: &Config) -> anyhow::Result<Vec<SigningKey>> {
    match configured_keys(&args.keys, &config.secret_key_files)? {
        Some((keys, _)) => Ok(keys),
        None => anyhow::bail!(
            "--repair signs what it uploads again and has no signing key: pass --key FILE, \
             set `secret_key_files` in the config file, or put the key text in ${}",
            narpush_protocol::env::SIGNING_KEY
        ),
    }
}

/// A repair to run.
pub struct Repair<'a> {
    pub args: &'a VerifyArgs,
    pub config: &'a Config,
    pub target: &'a TargetUrl,
    pub keys: Vec<SigningKey>,
    pub upstream_caches: &'a [UpstreamCache],
}

/// The JSON document: the report after the repair, and what the repair did.
#[derive(Serialize)]
struct Document<'a> {
    #[serde(flatten)]
    report: &'a Report,
    repair: &'a Summary,
    requests: &'a RequestCounts,
}

impl Repair<'_> {
    pub fn run(self, options: &mut Options) -> anyhow::Result<Outcome> {
        let mut config = self.config.clone();
        config.apply_target_params(self.target.params());
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        let target = self.target;
        let repaired: Repaired = runtime.block_on(async {
            let mut sink = Sink::open(target, config.request_timeout)
                .await
                .with_context(|| format!("cannot use target {target}"))?;
            sink.set_cache_control(config.cache_control.clone());
            let sink = Arc::new(sink);
            // As `narpush upload` trusts upstream caches: by `upstream_public_keys` only. The
            // keys `verify` trusts (ours among them) sign what local paths substituted from this
            // very cache carry; taken as upstream keys, such a path would be skipped as served
            // upstream instead of being looked up here and uploaded when missing.
            let upstream_keys = config.upstream_public_keys.clone();
            let engine = EngineConfig::new(
                sink.clone(),
                target.to_string(),
                Arc::new(self.keys),
                config.stream_settings(config.compression, config.compression_level),
                config.jobs,
                config.parallel_requests,
                true,
            )
            .with_upstream(Upstream::new(self.upstream_caches.to_vec(), upstream_keys))
            .with_refresh_after(config.refresh_after)
            .with_own_public_keys(&config.own_public_keys)
            .with_filter(config.filter.clone())
            .with_cache_info(config.cache_info());
            let spinner = Spinner::on_terminal();
            let progress = |what: &str| spinner.say(what);
            let what = repair::Options {
                delete_broken: self.args.delete_broken,
                dry_run: self.args.dry_run,
            };
            let repaired =
                repair::repair(&sink, &target.to_string(), options, what, engine, &progress).await;
            spinner.finish();
            repaired.with_context(|| format!("cannot repair {target}"))
        })?;
        let Repaired { report, summary } = &repaired;
        // The whole process is this run: the tally holds its requests alone (the reads, the
        // uploads and the deletes).
        let requests = narpush::sink::requests::tally().counts(&config.request_prices);
        if self.args.json {
            let document = Document {
                report,
                repair: summary,
                requests: &requests,
            };
            println!("{}", serde_json::to_string_pretty(&document)?);
        } else {
            print!("{}", summary_text(summary));
            if summary.dry_run {
                println!("dry run: nothing was changed; the cache as read:");
            } else {
                println!("the cache after the repair:");
            }
            print!("{}", report.to_text());
            println!("{requests}");
        }
        Ok(Outcome::Code(report.exit_code()))
    }
}

/// What the repair did, for people.
fn summary_text(summary: &Summary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let (upload, delete) = if summary.dry_run {
        ("would upload again", "would delete")
    } else {
        ("uploaded again", "deleted")
    };
    let _ = writeln!(
        out,
        "repair: {} problem(s) found; {upload} {} path(s) ({} written afresh over a broken \
         narinfo){}; {delete} {} object(s)",
        summary.problems_before,
        summary.repaired.len(),
        summary.forced.len(),
        match summary.uploaded_with_them.len() {
            0 => String::new(),
            n => format!(", with {n} more of their closures"),
        },
        summary.deleted.len()
    );
    for path in &summary.repaired {
        let _ = writeln!(out, "  {upload}: {path}");
    }
    for failed in &summary.failed {
        let _ = writeln!(out, "  FAILED: {}: {}", failed.path, failed.error);
    }
    for (key, why) in &summary.unfixable {
        let _ = writeln!(out, "  cannot be made whole: {key}: {why}");
    }
    for key in &summary.deleted {
        let _ = writeln!(out, "  {delete}: {key}");
    }
    for (key, why) in &summary.kept {
        let _ = writeln!(out, "  kept: {key}: {why}");
    }
    out
}

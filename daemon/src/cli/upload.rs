//! `narpush upload`: a one-shot, in-process upload of store paths and their closures, with no
//! daemon involved (CI scripts, filling a new cache).
//!
//! Everything that can be checked before the first byte is sent is checked first, in this
//! order: paths (in the store, valid), signing keys, config, target (reachable, credentials
//! accepted). A failure there exits 2 having written nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::HumanBytes;
use tokio_util::sync::CancellationToken;

use super::filter_args::FilterArgs;
use super::progress::{rate, Display};
use super::Outcome;
use narpush::config::{check_concurrency, check_level, Config};
use narpush::daemon::status::{SkippedByFilters, SkippedPath};
use narpush::engine::compress::Compression;
use narpush::engine::stream::StreamSettings;
use narpush::engine::{Engine, EngineConfig, Report};
use narpush::filter::{PushFilter, SkipReason, SKIP_KINDS};
use narpush::format::signing::{SigningKey, VerifyingKey};
use narpush::format::store_path::StorePath;
use narpush::keys::configured_keys;
use narpush::layout::{CacheControl, CacheInfo};
use narpush::sink::requests::{RequestCounts, RequestPrices};
use narpush::sink::{Sink, TargetUrl};
use narpush::store;
use narpush::upstream::{Upstream, UpstreamUrl};

/// Upload store paths (and their closures) to a binary cache, then exit.
///
/// Paths already in the cache are skipped, and so are paths an upstream cache serves (by
/// default, those the store holds with a valid cache.nixos.org signature). Paths the push
/// filters exclude (--exclude, --exclude-output, --max-nar-bytes, or the config's `exclude`,
/// `exclude_outputs`, `max_nar_bytes`) are never uploaded, even when named, nor are the paths
/// that need one of them and that no upstream cache serves; they are listed as skipped, with
/// the reason, and are not failures (the exit status does not change). Each narinfo is
/// written only after its NAR and the narinfos of all its references, so the cache is
/// consistent at every moment. Settings come from the config file; flags win.
///
/// Examples:
///   narpush upload --key ./signing-key \
///     --to 's3://nix-cache?endpoint=https://ACCOUNT.r2.cloudflarestorage.com&region=auto' \
///     ./result
///   narpush upload --key ./signing-key --to file:///var/cache/nix ./result
///
/// On S3, a NAR up to `single_put_max_bytes` (1 GiB) is compressed whole, beyond 8 MiB into
/// an unnamed temporary file in $TMPDIR (default /tmp), and sent with one PUT; add
/// &multipart-upload=true to the target to stream every NAR in parts instead.
///
/// Content-addressed derivations (ca-derivations): pass the `.drv` of a floating one to
/// upload its outputs with their realisations; content-addressed paths given directly (or in
/// a closure) get their realisations too while their derivers are still in the store.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct UploadArgs {
    /// Store paths, files inside them, or symlinks to them (like ./result). A floating
    /// content-addressed `.drv` stands for its outputs and their realisations.
    #[arg(required_unless_present = "stdin", value_name = "PATH")]
    paths: Vec<String>,

    /// Where to upload: s3://BUCKET?endpoint=URL&region=R&profile=P (add &anonymous=true
    /// for servers that take unsigned writes), or file:///DIR. Default: `target` from the
    /// config file. Nix's cache settings work in it too, e.g. &write-nar-listing=true (also
    /// write <hash>.ls listings) and &ls-compression=zstd (S3); see docs/configuration.md.
    #[arg(long, value_name = "TARGET")]
    to: Option<String>,

    /// Secret signing key file (Nix format, as from `narpush keygen` or
    /// `nix key generate-secret`); repeat to sign with several. Default: `secret_key_files`,
    /// else the key text in $NARPUSH_SIGNING_KEY.
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,

    /// Upload only the named paths, not their closures. Their references must already be in
    /// the cache, otherwise the path is not published.
    #[arg(long)]
    no_closure: bool,

    /// NARs over 1 MiB compressed at once, and as many PUTs of compressed ones (each holds up
    /// to 8 MiB in memory). Default: `jobs` from the config file, else 2.
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,

    /// Small requests in flight at once: lookups, narinfos and NARs up to 1 MiB. Raise it for
    /// wide closures on a high-latency link. Default: `parallel_requests`, else 128.
    #[arg(long, value_name = "N")]
    parallel_requests: Option<usize>,

    /// zstd, xz or none. Default: `compression` from the config file, else zstd.
    #[arg(long, value_name = "METHOD")]
    compression: Option<Compression>,

    /// Compression level (zstd 1-19, xz 0-9). Default: `compression_level`, else 3 for zstd.
    #[arg(long, value_name = "N")]
    compression_level: Option<i32>,

    /// A cache clients already substitute from (https://, http:// or file://): paths it
    /// serves, with a narinfo signed by an upstream key, are not uploaded. Repeatable; added
    /// to `upstream_caches` from the config file.
    #[arg(long = "upstream", value_name = "URL")]
    upstream_caches: Vec<String>,

    /// A public key (NAME:BASE64) of an upstream cache: a path the store holds with a valid
    /// signature by it came from that cache and is not uploaded. Repeatable; added to
    /// `upstream_public_keys` (default: cache.nixos.org's key).
    #[arg(long = "upstream-key", value_name = "KEY")]
    upstream_keys: Vec<String>,

    /// Upload every path, whatever upstream caches serve (ignores the upstream settings).
    #[arg(long, conflicts_with_all = ["upstream_caches", "upstream_keys"])]
    no_upstream: bool,
    /// Also read paths from standard input, separated by whitespace or newlines
    /// (`nix build --print-out-paths | narpush upload --stdin`).
    #[arg(long)]
    stdin: bool,

    #[command(flatten)]
    filters: FilterArgs,

    /// Print only failures and errors: no progress, no line per path, no summary.
    #[arg(short, long)]
    quiet: bool,

    /// Also print the summary as one JSON document on standard output: paths uploaded,
    /// present, served upstream and failed, `skipped` (by the push filters: counts by_reason
    /// and every path with its reason, as in `status --json`), bytes, seconds, and `requests`
    /// (the requests sent to the target by class and operation, with their estimated cost).
    /// Fields: docs/configuration.md, "narpush upload --json".
    #[arg(long)]
    json: bool,
}

pub fn run(args: UploadArgs, config_path: Option<&Path>) -> anyhow::Result<Outcome> {
    let config = Config::load(config_path)?;
    let mut args = args;
    if args.stdin {
        args.paths.extend(paths_from_stdin()?);
    }
    let settings = Settings::from(args, config)?;
    tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(upload(settings))
}

/// The checked result of flags over config.
struct Settings {
    paths: Vec<StorePath>,
    target: TargetUrl,
    keys: Vec<SigningKey>,
    closure: bool,
    jobs: usize,
    parallel_requests: usize,
    stream: StreamSettings,
    cache_info: CacheInfo,
    upstream: Upstream,
    refresh_after: Duration,
    own_public_keys: Vec<VerifyingKey>,
    cache_control: CacheControl,
    filter: PushFilter,
    quiet: bool,
    json: bool,
    request_prices: RequestPrices,
    request_timeout: Duration,
}

impl Settings {
    fn from(args: UploadArgs, mut config: Config) -> anyhow::Result<Settings> {
        let paths = store::resolve_store_path_args(&args.paths)?;
        let target = match args.to {
            Some(url) => TargetUrl::parse(&url)?,
            None => match &config.target {
                Some(target) => target.clone(),
                None => bail!(
                    "no target: pass --to s3://BUCKET?endpoint=… (or file:///DIR), or set `target` in {}",
                    config_name(&config)
                ),
            },
        };
        // Settings in the URL win over the config file; flags win over both.
        config.apply_target_params(target.params());
        let Some((keys, _)) = configured_keys(&args.keys, &config.secret_key_files)? else {
            bail!(
                "no signing key: pass --key FILE, set `secret_key_files` in {}, or put the key \
                 text in ${} (make one with `narpush keygen NAME > FILE`)",
                config_name(&config),
                narpush_protocol::env::SIGNING_KEY
            );
        };
        let compression = args.compression.unwrap_or(config.compression);
        let level = match (args.compression_level, args.compression) {
            (Some(level), _) => level,
            (None, Some(method)) if method != config.compression => method.default_level(),
            (None, _) => config.compression_level,
        };
        check_level(compression, level)
            .map_err(|reason| anyhow::anyhow!("--compression-level: {reason}"))?;
        let jobs = check_concurrency(args.jobs.unwrap_or(config.jobs))
            .map_err(|reason| anyhow::anyhow!("--jobs: {reason}"))?;
        let parallel_requests =
            check_concurrency(args.parallel_requests.unwrap_or(config.parallel_requests))
                .map_err(|reason| anyhow::anyhow!("--parallel-requests: {reason}"))?;
        let upstream = if args.no_upstream {
            Upstream::off()
        } else {
            let mut caches = config.upstream_caches.clone();
            for url in &args.upstream_caches {
                caches.push(UpstreamUrl::parse(url).context("--upstream")?.into());
            }
            let mut upstream_keys = config.upstream_public_keys.clone();
            for key in &args.upstream_keys {
                upstream_keys.push(
                    VerifyingKey::parse(key)
                        .with_context(|| format!("--upstream-key '{key}' is not a public key"))?,
                );
            }
            Upstream::new(caches, upstream_keys)
        };
        let mut filter = config.filter.clone();
        args.filters.apply(&mut filter)?;
        Ok(Settings {
            filter,
            paths,
            target,
            keys,
            closure: !args.no_closure,
            jobs,
            parallel_requests,
            stream: config.stream_settings(compression, level),
            cache_info: config.cache_info(),
            upstream,
            refresh_after: config.refresh_after,
            own_public_keys: config.own_public_keys.clone(),
            cache_control: config.cache_control.clone(),
            quiet: args.quiet,
            json: args.json,
            request_prices: config.request_prices,
            request_timeout: config.request_timeout,
        })
    }
}

/// Paths from standard input, separated by any whitespace (one per line, or several on a
/// line as `nix build --print-out-paths` prints them).
fn paths_from_stdin() -> anyhow::Result<Vec<String>> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .context("cannot read paths from standard input")?;
    let paths: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    if paths.is_empty() {
        bail!("--stdin: no paths on standard input");
    }
    Ok(paths)
}

fn config_name(config: &Config) -> String {
    match &config.source {
        Some(path) => path.display().to_string(),
        None => narpush::config::DEFAULT_CONFIG_PATH.to_owned(),
    }
}

async fn upload(mut settings: Settings) -> anyhow::Result<Outcome> {
    let (paths, mut realisations) = store::expand_derivations(settings.paths).await?;
    settings.paths = paths;
    let infos = store::query_path_infos(&settings.paths, settings.closure).await?;
    realisations.extend(store::realisations_of_outputs(&infos).await);
    let mut sink = Sink::open(&settings.target, settings.request_timeout)
        .await
        .with_context(|| format!("cannot use target {}", settings.target))?;
    sink.set_cache_control(settings.cache_control.clone());
    let config = EngineConfig::new(
        Arc::new(sink),
        settings.target.to_string(),
        Arc::new(settings.keys),
        settings.stream,
        settings.jobs,
        settings.parallel_requests,
        settings.closure,
    )
    .with_upstream(settings.upstream)
    .with_refresh_after(settings.refresh_after)
    .with_own_public_keys(&settings.own_public_keys)
    .with_filter(settings.filter)
    .with_cache_info(settings.cache_info);
    config
        .ensure_cache_info()
        .await
        .with_context(|| format!("cannot use target {}", settings.target))?;

    let nar_bytes: u64 = infos.iter().map(|i| i.nar_size).sum();
    if !settings.quiet {
        eprintln!(
            "narpush: {} path(s) ({} NAR) for {}",
            infos.len(),
            HumanBytes(nar_bytes),
            settings.target
        );
    }
    let (engine, mut reports, task) =
        Engine::start(Arc::new(config), CancellationToken::new(), Duration::ZERO);
    let mut display = Display::new(
        infos.len(),
        nar_bytes,
        engine.view().clone(),
        settings.quiet,
    );
    // Each path is reported done only after its realisations are published.
    engine.submit_resolved(infos, settings.paths, realisations);
    let mut skipped = Vec::new();
    // The engine ends, and closes the reports, once the work is done and no handle is left.
    drop(engine);
    while let Some(report) = reports.recv().await {
        match report {
            Report::Uploaded {
                path,
                nar_size,
                file_size,
            } => display.uploaded(&path.to_absolute(), nar_size, file_size),
            Report::Present(_) => display.present(),
            Report::Upstream { nar_size, .. } => display.upstream(nar_size),
            Report::Failed { path, error } => {
                display.failed(&path.to_absolute(), &narpush::error_chain(error.as_ref()));
            }
            Report::Skipped { path, reason } => {
                display.skipped(&path.to_absolute(), &reason);
                skipped.push((Instant::now(), path, reason));
            }
            Report::TopDone(_) | Report::TopFailed { .. } | Report::TopSkipped { .. } => {}
        }
    }
    task.await.context("the upload engine failed")?;
    let (totals, elapsed) = display.finish();
    // The whole process is this upload: the tally holds its requests alone.
    let requests = narpush::sink::requests::tally().counts(&settings.request_prices);
    if settings.json {
        let summary = JsonSummary {
            target: settings.target.to_string(),
            uploaded: totals.uploaded,
            uploaded_nar_bytes: totals.uploaded_nar_bytes,
            uploaded_stored_bytes: totals.uploaded_file_bytes,
            present: totals.present,
            upstream: totals.upstream,
            failed: totals.failed,
            skipped: skipped_document(&totals.skipped, skipped),
            elapsed_secs: elapsed.as_secs_f64(),
            requests: &requests,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    let outcome = if totals.failed == 0 {
        Outcome::Success
    } else {
        Outcome::PartialFailure
    };
    if settings.quiet {
        return Ok(outcome);
    }
    eprintln!(
        "narpush: uploaded {} path(s), {} NAR as {} in {:.1}s ({}); {} already in {}; \
         {} ({} NAR) served upstream; {}; {} failed",
        totals.uploaded,
        HumanBytes(totals.uploaded_nar_bytes),
        HumanBytes(totals.uploaded_file_bytes),
        elapsed.as_secs_f64(),
        rate(totals.uploaded_nar_bytes, elapsed),
        totals.present,
        settings.target,
        totals.upstream,
        HumanBytes(totals.upstream_nar_bytes),
        totals.skipped_summary(),
        totals.failed
    );
    eprintln!("narpush: {requests}");
    Ok(outcome)
}

/// The document `upload --json` prints.
#[derive(serde::Serialize)]
struct JsonSummary<'a> {
    target: String,
    uploaded: usize,
    uploaded_nar_bytes: u64,
    uploaded_stored_bytes: u64,
    present: usize,
    upstream: usize,
    failed: usize,
    /// What the push filters kept out, as `status --json` has it.
    skipped: SkippedByFilters,
    elapsed_secs: f64,
    requests: &'a RequestCounts,
}

/// `skipped` of `upload --json`: the counts by kind and every path skipped, in order.
fn skipped_document(
    by_kind: &[usize; SKIP_KINDS.len()],
    paths: Vec<(Instant, StorePath, SkipReason)>,
) -> SkippedByFilters {
    let now = Instant::now();
    SkippedByFilters {
        by_reason: SKIP_KINDS
            .iter()
            .zip(by_kind)
            .map(|(kind, count)| ((*kind).to_owned(), *count as u64))
            .collect(),
        paths: paths
            .into_iter()
            .map(|(at, path, reason)| SkippedPath {
                path: path.to_absolute(),
                kind: reason.kind().to_owned(),
                reason: reason.to_string(),
                skipped_secs_ago: now.duration_since(at).as_secs_f64(),
            })
            .collect(),
    }
}

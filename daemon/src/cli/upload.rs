//! `narpush upload`: a one-shot, in-process upload of store paths and their closures, with no
//! daemon involved (CI scripts, filling a new cache).
//!
//! Everything that can be checked before the first byte is sent is checked first, in this
//! order: paths (in the store, valid), signing keys, config, target (reachable, credentials
//! accepted). A failure there exits 2 having written nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::HumanBytes;
use tokio_util::sync::CancellationToken;

use super::progress::{rate, Display};
use super::Outcome;
use narpush::config::{check_concurrency, check_level, Config};
use narpush::engine::compress::Compression;
use narpush::engine::stream::StreamSettings;
use narpush::engine::{Engine, EngineConfig, Report};
use narpush::format::signing::SigningKey;
use narpush::format::store_path::StorePath;
use narpush::sink::{Sink, TargetUrl};
use narpush::store;

/// Upload store paths (and their closures) to a binary cache, then exit.
///
/// Paths already in the cache are skipped. Each narinfo is written only after its NAR and the
/// narinfos of all its references, so the cache is consistent at every moment. Settings come
/// from the config file; flags win.
///
/// Examples:
///   narpush upload --key ./signing-key \
///     --to 's3://nix-cache?endpoint=https://ACCOUNT.r2.cloudflarestorage.com&region=auto' \
///     ./result
///   narpush upload --key ./signing-key --to file:///var/cache/nix ./result
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct UploadArgs {
    /// Store paths, files inside them, or symlinks to them (like ./result).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,

    /// Where to upload: s3://BUCKET?endpoint=URL&region=R&profile=P (add &anonymous=true
    /// for servers that take unsigned writes), or file:///DIR. Default: `target` from the
    /// config file.
    #[arg(long, value_name = "TARGET")]
    to: Option<String>,

    /// Secret signing key file (Nix format, as from `narpush keygen` or
    /// `nix key generate-secret`); repeat to sign with several. Default: `secret_key_files`.
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,

    /// Upload only the named paths, not their closures. Their references must already be in
    /// the cache, otherwise the path is not published.
    #[arg(long)]
    no_closure: bool,

    /// NARs over 1 MiB streamed at once (each holds up to two 8 MiB parts in memory).
    /// Default: `jobs` from the config file, else 2.
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,

    /// Small requests in flight at once: lookups, narinfos and NARs up to 1 MiB. Raise it for
    /// wide closures on a high-latency link. Default: `parallel_requests`, else 64.
    #[arg(long, value_name = "N")]
    parallel_requests: Option<usize>,

    /// zstd, xz or none. Default: `compression` from the config file, else zstd.
    #[arg(long, value_name = "METHOD")]
    compression: Option<Compression>,

    /// Compression level (zstd 1-19, xz 0-9). Default: `compression_level`, else 3 for zstd.
    #[arg(long, value_name = "N")]
    compression_level: Option<i32>,
}

pub fn run(args: UploadArgs, config_path: Option<&Path>) -> anyhow::Result<Outcome> {
    let config = Config::load(config_path)?;
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
    request_timeout: Duration,
}

impl Settings {
    fn from(args: UploadArgs, config: Config) -> anyhow::Result<Settings> {
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
        let key_files = if args.keys.is_empty() {
            config.secret_key_files.clone()
        } else {
            args.keys
        };
        if key_files.is_empty() {
            bail!(
                "no signing key: pass --key FILE or set `secret_key_files` in {} \
                 (make one with `narpush keygen NAME > FILE`)",
                config_name(&config)
            );
        }
        let keys = key_files
            .iter()
            .map(|file| SigningKey::load(file))
            .collect::<Result<Vec<_>, _>>()?;
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
        Ok(Settings {
            paths,
            target,
            keys,
            closure: !args.no_closure,
            jobs,
            parallel_requests,
            stream: StreamSettings::new(compression, level),
            request_timeout: config.request_timeout,
        })
    }
}

fn config_name(config: &Config) -> String {
    match &config.source {
        Some(path) => path.display().to_string(),
        None => narpush::config::DEFAULT_CONFIG_PATH.to_owned(),
    }
}

async fn upload(settings: Settings) -> anyhow::Result<Outcome> {
    let infos = store::query_path_infos(&settings.paths, settings.closure).await?;
    let sink = Sink::open(&settings.target, settings.request_timeout)
        .await
        .with_context(|| format!("cannot use target {}", settings.target))?;
    let config = EngineConfig::new(
        Arc::new(sink),
        settings.target.to_string(),
        Arc::new(settings.keys),
        settings.stream,
        settings.jobs,
        settings.parallel_requests,
        settings.closure,
    );
    config
        .ensure_cache_info()
        .await
        .with_context(|| format!("cannot use target {}", settings.target))?;

    let nar_bytes: u64 = infos.iter().map(|i| i.nar_size).sum();
    eprintln!(
        "narpush: {} path(s) ({} NAR) for {}",
        infos.len(),
        HumanBytes(nar_bytes),
        settings.target
    );
    let (engine, mut reports, task) =
        Engine::start(Arc::new(config), CancellationToken::new(), Duration::ZERO);
    let mut display = Display::new(infos.len(), nar_bytes, engine.view().clone());
    engine.submit_resolved(infos, settings.paths);
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
            Report::Failed { path, error } => {
                display.failed(&path.to_absolute(), &narpush::error_chain(error.as_ref()));
            }
            Report::TopDone(_) | Report::TopFailed { .. } => {}
        }
    }
    task.await.context("the upload engine failed")?;
    let (totals, elapsed) = display.finish();
    eprintln!(
        "narpush: uploaded {} path(s), {} NAR as {} in {:.1}s ({}); {} already in {}; {} failed",
        totals.uploaded,
        HumanBytes(totals.uploaded_nar_bytes),
        HumanBytes(totals.uploaded_file_bytes),
        elapsed.as_secs_f64(),
        rate(totals.uploaded_nar_bytes, elapsed),
        totals.present,
        settings.target,
        totals.failed
    );
    if totals.failed == 0 {
        Ok(Outcome::Success)
    } else {
        Ok(Outcome::PartialFailure)
    }
}

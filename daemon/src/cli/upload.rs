//! `narpush upload`: a one-shot, in-process upload of store paths and their closures, with no
//! daemon involved (CI scripts, filling a new cache).
//!
//! Everything that can be checked before the first byte is sent is checked first, in this
//! order: paths (in the store, valid), signing keys, config, target (reachable, credentials
//! accepted). A failure there exits 2 having written nothing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::HumanBytes;

use super::Outcome;
use narpush::config::{check_level, Config};
use narpush::format::signing::SigningKey;
use narpush::format::store_path::StorePath;
use narpush::store;
use narpush::target::{Target, TargetUrl};
use narpush::upload::compress::Compression;
use narpush::upload::present_in_target;
use narpush::upload::progress::Progress;
use narpush::upload::schedule::{upload_all, Uploader};
use narpush::upload::stream::{StreamSettings, DEFAULT_PART_SIZE};

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

    /// Paths uploaded at once. Default: `jobs` from the config file, else 4.
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,

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
    stream: StreamSettings,
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
        let jobs = args.jobs.unwrap_or(config.jobs);
        if jobs == 0 {
            bail!("--jobs must be at least 1");
        }
        Ok(Settings {
            paths,
            target,
            keys,
            closure: !args.no_closure,
            jobs,
            stream: StreamSettings {
                compression,
                level,
                base_part_size: DEFAULT_PART_SIZE,
            },
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
    let target = Target::open(&settings.target)
        .await
        .with_context(|| format!("cannot use target {}", settings.target))?;
    target
        .ensure_cache_info()
        .await
        .with_context(|| format!("cannot use target {}", settings.target))?;

    let lookahead = settings.jobs * 8;
    let present = present_in_target(
        &target,
        infos.iter().map(|i| i.path.clone()).collect(),
        lookahead,
    )
    .await?;
    // Without the closure, references outside the batch must already be in the cache.
    let in_batch: HashSet<&StorePath> = infos.iter().map(|i| &i.path).collect();
    let outside: HashSet<StorePath> = infos
        .iter()
        .flat_map(|i| i.references.iter())
        .filter(|r| !in_batch.contains(r))
        .cloned()
        .collect();
    let mut available =
        present_in_target(&target, outside.into_iter().collect(), lookahead).await?;
    available.extend(present.iter().cloned());

    let missing: Vec<_> = infos
        .into_iter()
        .filter(|i| !present.contains(&i.path))
        .collect();
    let total_bytes = missing.iter().map(|i| i.nar_size).sum();
    eprintln!(
        "narpush: {} path(s) to upload ({} NAR), {} already in {}",
        missing.len(),
        HumanBytes(total_bytes),
        present.len(),
        settings.target
    );
    let progress = Arc::new(Progress::new(missing.len() as u64, total_bytes, false));
    let uploader = Uploader {
        target: Arc::new(target),
        keys: Arc::new(settings.keys),
        settings: settings.stream,
        jobs: settings.jobs,
    };
    let report = upload_all(&uploader, missing, &available, progress.clone()).await;
    let totals = progress.finish();

    eprintln!(
        "narpush: uploaded {} path(s), {} NAR as {} in {:.1}s ({}); {} failed",
        report.uploaded.len(),
        HumanBytes(totals.nar_bytes),
        HumanBytes(report.uploaded.iter().map(|u| u.file_size).sum()),
        totals.elapsed.as_secs_f64(),
        totals.rate(),
        report.failed.len()
    );
    if report.failed.is_empty() {
        return Ok(Outcome::Success);
    }
    for (path, error) in &report.failed {
        eprintln!("narpush: failed: {path}: {}", narpush::error_chain(error));
    }
    Ok(Outcome::PartialFailure)
}

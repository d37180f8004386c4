//! `narpush verify`: reads a cache and reports whether it is whole (the checks are in the
//! library's `verify` module); exit status 0 whole, 1 problems found, 2 could not read.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use super::progress::Spinner;
use super::Outcome;
use narpush::config::Config;
use narpush::format::signing::{SigningKey, VerifyingKey};
use narpush::keys::configured_keys;
use narpush::sink::{Sink, TargetUrl};
use narpush::upstream::{Upstream, UpstreamUrl};
use narpush::verify::{self, Options};

/// Check that a cache is whole: every narinfo parses and is signed by a trusted key, its NAR is
/// there with its FileSize (with --nar-hash: its FileHash, NarHash and NarSize), its
/// references have narinfos here or upstream, and nothing is left over.
///
/// Without --repair it only reads, and needs no secret key. Signatures are verified with the
/// public halves of the configured signing keys (`secret_key_files`, else
/// $NARPUSH_SIGNING_KEY, else the embedded default key if it exists; with --repair, also
/// those of --key), the config's `own_public_keys` and every --trusted-key. A reference with
/// no narinfo here is asked of `upstream_caches` and every --upstream (their narinfos
/// verified with `upstream_public_keys` and the trusted keys); with no upstream cache it is
/// reported as unchecked, which is not a problem. Objects younger than --grace are in flight
/// (uploads and collections at work), not problems.
///
/// With --repair it then makes the cache whole from the local store, beside running daemons
/// and `gc`: the path of every narinfo whose NAR is missing or damaged, or whose signature
/// does not verify, is uploaded again (NAR first, then the narinfo) when the local store holds
/// it with the same NarHash, and so is every missing reference valid locally, each with its
/// closure; they are signed with --key (else the configured keys). With --delete-broken, the
/// narinfos whose closure cannot be made whole are deleted, with every narinfo referring to
/// them, referrers first, under gc's rules (a narinfo an uploader rewrote meanwhile stays;
/// what a pin needs stays), then the NARs and listings nothing names. --dry-run prints the
/// plan and changes nothing. The cache is then verified again, and the exit status is that
/// run's.
///
/// Exit status: 0 whole (unchecked references allowed), 1 problems found (after --repair:
/// problems remain), 2 could not read (or could not repair). The --json document is described
/// in docs/verify.md.
///
/// Examples:
///   narpush verify --to s3://cache?endpoint=https://...
///   narpush verify --to file:///srv/cache --trusted-key cache-1:AbC...= --nar-hash --json
///   narpush verify --repair --dry-run --nar-hash --key ./signing-key
///   narpush verify --repair --delete-broken --nar-hash --key ./signing-key
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    /// The cache: s3://BUCKET?endpoint=URL&region=R or file:///DIR. Default: `target` from the
    /// config file, else the daemon's default cache, file://<state_dir>/cache.
    #[arg(long, value_name = "URL")]
    to: Option<String>,

    /// A public key (NAME:BASE64) whose signatures count. Repeatable; added to the public halves
    /// of the configured signing keys.
    #[arg(long = "trusted-key", value_name = "NAME:KEY")]
    trusted_keys: Vec<String>,

    /// An upstream cache (https://, http:// or file://) asked about references with no
    /// narinfo here. Repeatable; added to `upstream_caches` from the config file.
    #[arg(long = "upstream", value_name = "URL")]
    upstream_caches: Vec<String>,

    /// Also read every NAR (streamed, in bounded memory) and check its FileHash, NarHash and
    /// NarSize.
    #[arg(long)]
    nar_hash: bool,

    /// Objects younger than this are in flight, not problems: `1h`, `30m`, `0s`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "1h")]
    grace: Duration,

    /// Print the report as JSON (docs/verify.md) instead of text.
    #[arg(long)]
    pub(super) json: bool,

    /// Make the cache whole: upload again from the local store what it can, then verify
    /// again (see above).
    #[arg(long)]
    repair: bool,

    /// With --repair: delete the narinfos whose closure cannot be made whole, referrers
    /// first, and the NARs and listings nothing names (needs --grace of at least 15m).
    #[arg(long, requires = "repair")]
    pub(super) delete_broken: bool,

    /// With --repair: print what would be uploaded and deleted, change nothing.
    #[arg(long, requires = "repair")]
    pub(super) dry_run: bool,

    /// With --repair: secret signing key file for what is uploaded again; repeatable.
    /// Default: `secret_key_files`, else $NARPUSH_SIGNING_KEY.
    #[arg(long = "key", value_name = "FILE", requires = "repair")]
    pub(super) keys: Vec<std::path::PathBuf>,
}

pub fn run(args: &VerifyArgs, config_path: Option<&Path>) -> anyhow::Result<Outcome> {
    let config = Config::load(config_path)?;
    let target = match &args.to {
        Some(url) => TargetUrl::parse(url)?,
        None => config.target_or_default(),
    };
    let signing = if args.repair {
        Some(super::verify_repair::signing_keys(args, &config)?)
    } else {
        None
    };
    let own: Vec<VerifyingKey> = signing
        .iter()
        .flatten()
        .map(SigningKey::public_key)
        .collect();
    let keys = trusted_keys(&config, &args.trusted_keys, &own)?;
    let mut caches = config.upstream_caches.clone();
    for url in &args.upstream_caches {
        caches.push(UpstreamUrl::parse(url).context("--upstream")?.into());
    }
    let upstream = (!caches.is_empty()).then(|| {
        let mut upstream_keys = config.upstream_public_keys.clone();
        upstream_keys.extend(keys.iter().cloned());
        Upstream::new(caches.clone(), upstream_keys)
    });
    let mut options = Options {
        keys,
        grace: args.grace,
        nar_hash: args.nar_hash,
        upstream,
        now: SystemTime::now(),
        settled: Default::default(),
    };
    if let Some(signing) = signing {
        let repair = super::verify_repair::Repair {
            args,
            config: &config,
            target: &target,
            keys: signing,
            upstream_caches: &caches,
        };
        return repair.run(&mut options);
    }
    let report = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(async {
            let sink = Sink::open_for_reading(&target, config.request_timeout)
                .await
                .with_context(|| format!("cannot use target {target}"))?;
            let spinner = Spinner::on_terminal();
            let progress = |what: &str| spinner.say(what);
            let report = verify::verify(&sink, &target.to_string(), &options, &progress).await;
            spinner.finish();
            report.with_context(|| format!("cannot verify {target}"))
        })?;
    // The whole process is this run: the tally holds its requests alone.
    let requests = narpush::sink::requests::tally().counts(&config.request_prices);
    if args.json {
        let mut document = serde_json::to_value(&report)?;
        if let Some(fields) = document.as_object_mut() {
            fields.insert("requests".to_owned(), serde_json::to_value(&requests)?);
        }
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        print!("{}", report.to_text());
        println!("{requests}");
    }
    Ok(Outcome::Code(report.exit_code()))
}

/// `signing` (the keys --repair signs with), the public halves of the configured signing
/// keys, and `flags`; at least one.
fn trusted_keys(
    config: &Config,
    flags: &[String],
    signing: &[VerifyingKey],
) -> anyhow::Result<Vec<VerifyingKey>> {
    let mut keys = signing.to_vec();
    for text in flags {
        keys.push(
            VerifyingKey::parse(text)
                .with_context(|| format!("--trusted-key '{text}' is not a public key"))?,
        );
    }
    let configured = match configured_keys(&[], &config.secret_key_files) {
        Ok(Some((secret, _))) => secret,
        Ok(None) => {
            let file = config.default_key_file();
            match file.exists().then(|| SigningKey::load(&file)) {
                Some(Ok(key)) => vec![key],
                Some(Err(e)) if keys.is_empty() => return Err(e.into()),
                Some(Err(e)) => {
                    tracing::warn!("not trusting the default key: {e}");
                    Vec::new()
                }
                None => Vec::new(),
            }
        }
        Err(e) if keys.is_empty() => return Err(e.into()),
        Err(e) => {
            tracing::warn!("not trusting the configured signing keys: {e}");
            Vec::new()
        }
    };
    let own = config.own_public_keys.iter().cloned();
    for key in configured.iter().map(SigningKey::public_key).chain(own) {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    anyhow::ensure!(
        !keys.is_empty(),
        "no public key to verify signatures with: pass --trusted-key NAME:KEY, or set \
         `secret_key_files` in the config file"
    );
    Ok(keys)
}

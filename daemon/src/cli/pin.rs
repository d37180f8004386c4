//! `narpush pin`: names a path whose closure `narpush gc` keeps whatever its age, lists the
//! pins and removes them (the object and its rule are the library's `pins` module).

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::Outcome;
use narpush::config::Config;
use narpush::pins::{self, PinName};
use narpush::sink::{Sink, TargetUrl};
use narpush::store;
use narpush::upstream::Upstream;

/// Keep a path's closure in the cache for good: `narpush gc` treats pins as roots.
///
/// A pin is the object `pins/NAME` naming one store path. It is refused, with the path that is
/// missing, unless the path's closure is whole in the cache (every narinfo, each with its NAR;
/// a reference that an `upstream_caches` entry serves may be missing here): upload it first. Pinning checks the closure again a few seconds after writing the pin, so a
/// `narpush gc` running beside it either sees the pin or leaves a gap that makes the pin fail.
/// Pinning a NAME again moves it to the new path.
///
/// Examples:
///   narpush pin release-1.4 ./result
///   narpush pin --list
///   narpush pin --remove release-1.3
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct PinArgs {
    /// The pin's name: 1 to 100 characters of A-Z a-z 0-9 . _ + - (not starting with '.').
    #[arg(value_name = "NAME", required_unless_present_any = ["list", "remove"])]
    name: Option<String>,

    /// The path to keep: a store path, or a symlink to one like ./result (it need not be in the
    /// local store, only in the cache).
    #[arg(value_name = "PATH", required_unless_present_any = ["list", "remove"])]
    path: Option<String>,

    /// List the pins: name and path, one per line.
    #[arg(long, conflicts_with_all = ["name", "path", "remove"])]
    list: bool,

    /// Remove the pin NAME (the paths it kept go in a later `narpush gc` if nothing else keeps
    /// them).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["name", "path"])]
    remove: Option<String>,

    /// Require every path of the closure in this cache, even those an upstream cache
    /// (`upstream_caches`) serves.
    #[arg(long)]
    no_upstream: bool,

    /// With --list: print JSON, `[{"name": ..., "path": ...}]`.
    #[arg(long, requires = "list")]
    json: bool,

    /// The cache: s3://BUCKET?endpoint=URL&region=R or file:///DIR. Default: `target` from the
    /// config file, else the daemon's default cache, file://<state_dir>/cache.
    #[arg(long, value_name = "TARGET")]
    to: Option<String>,
}

#[derive(Serialize)]
struct Listed<'a> {
    name: &'a str,
    path: String,
}

pub fn run(args: &PinArgs, config_path: Option<&Path>) -> anyhow::Result<Outcome> {
    let config = Config::load(config_path)?;
    let target = match &args.to {
        Some(url) => TargetUrl::parse(url)?,
        None => config.target_or_default(),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut sink = Sink::open(&target, config.request_timeout)
            .await
            .with_context(|| format!("cannot use target {target}"))?;
        sink.set_cache_control(config.cache_control.clone());
        if args.list {
            let pins = pins::list(&sink).await?;
            if args.json {
                let listed: Vec<Listed> = pins
                    .values()
                    .map(|pin| Listed {
                        name: pin.name.as_str(),
                        path: pin.path.to_absolute(),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                for pin in pins.values() {
                    println!("{}\t{}", pin.name.as_str(), pin.path.to_absolute());
                }
            }
        } else if let Some(name) = &args.remove {
            let was = pins::remove(&sink, &PinName::parse(name)?).await?;
            match was {
                Some(path) => println!("{target}: removed pin {name} ({})", path.to_absolute()),
                None => println!("{target}: removed pin {name} (its body named no store path)"),
            }
        } else {
            let (Some(name), Some(path)) = (&args.name, &args.path) else {
                unreachable!("clap requires NAME and PATH without --list or --remove");
            };
            let name = PinName::parse(name)?;
            let path = store::resolve_store_path_arg(path)?;
            let upstream = if args.no_upstream {
                Upstream::off()
            } else {
                config.upstream()
            };
            let previous = pins::pin(&sink, &name, &path, &upstream).await?;
            let moved = match previous {
                Some(previous) if previous != path => {
                    format!(" (it pinned {} before)", previous.to_absolute())
                }
                _ => String::new(),
            };
            println!(
                "{target}: pinned {} as {}{moved}",
                path.to_absolute(),
                name.as_str()
            );
        }
        anyhow::Ok(Outcome::Success)
    })
}

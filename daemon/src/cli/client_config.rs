//! `narpush client-config`: the lines a consumer of the cache needs, printed from the writer's
//! own configuration so the two cannot disagree.

use super::Outcome;
use narpush::config::Config;
use narpush::consumer::ConsumerSettings;

/// Print the nix.conf lines a consumer of the cache needs, then a flake's nixConfig block.
///
/// The lines work as they are in /etc/nix/nix.conf or in NIX_CONFIG; the flake block follows
/// as comments.
///
/// The URL is --public-url, else `public_url` from the config file, else the target itself
/// when it is a directory (file://; with no config, the embedded default cache). An s3://
/// target needs one of the first two. The keys are the public halves of the signing keys:
/// `secret_key_files`, else $NARPUSH_SIGNING_KEY, else the embedded default key.
///
/// Example: NIX_CONFIG="$(narpush client-config)" nix build …
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ClientConfigArgs {
    /// The URL consumers substitute from, e.g. https://cache.example.org (an R2 bucket's
    /// public URL). Default: `public_url` from the config file.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
}

pub fn run(args: &ClientConfigArgs, config: Option<&std::path::Path>) -> anyhow::Result<Outcome> {
    let config = Config::load(config)?;
    let settings = ConsumerSettings::of(&config, args.public_url.as_deref())?;
    print!("{}", settings.render());
    Ok(Outcome::Success)
}

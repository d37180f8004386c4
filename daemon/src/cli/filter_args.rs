//! The push filter flags shared by `upload` and `exec`: they add to the config's `exclude`
//! and `exclude_outputs`, and `--max-nar-bytes` replaces `max_nar_bytes` (see
//! [`narpush::filter`]). A bad value is an error naming the flag and the value, before any
//! work starts.

use anyhow::Context;

use narpush::filter::PushFilter;

#[derive(Debug, Default, clap::Args)]
pub struct FilterArgs {
    /// Never upload paths whose name (after `<hash>-`) matches REGEX (unanchored; `-doc$`
    /// anchors; a leading `-` is part of the pattern). Paths that need an excluded path no upstream cache serves are skipped too.
    /// Repeatable; added to `exclude` from the config file.
    #[arg(long = "exclude", value_name = "REGEX", allow_hyphen_values = true)]
    pub exclude: Vec<String>,

    /// Never upload the outputs named NAME (`doc`, `debug`, …) as their derivation's `.drv`
    /// records them (a path whose `.drv` is not in the store is not excluded by this).
    /// Repeatable; added to `exclude_outputs` from the config file.
    #[arg(long = "exclude-output", value_name = "NAME")]
    pub exclude_outputs: Vec<String>,

    /// Never upload NARs bigger than N bytes (uncompressed). Replaces `max_nar_bytes` from
    /// the config file.
    #[arg(long, value_name = "N")]
    pub max_nar_bytes: Option<u64>,
}

impl FilterArgs {
    /// Adds the flags to `filter` (the config's).
    pub fn apply(&self, filter: &mut PushFilter) -> anyhow::Result<()> {
        for pattern in &self.exclude {
            filter.add_exclude(pattern).context("--exclude")?;
        }
        for name in &self.exclude_outputs {
            filter
                .add_exclude_output(name)
                .context("--exclude-output")?;
        }
        if let Some(max) = self.max_nar_bytes {
            filter.set_max_nar_bytes(max).context("--max-nar-bytes")?;
        }
        Ok(())
    }
}

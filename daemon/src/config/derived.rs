//! What the checked configuration implies for the rest of the program: the target written
//! to, the settings a target URL overrides, how NARs are streamed, what `nix-cache-info` says.
//!
//! Invariant: everything here is derived from a [`Config`] on demand, never stored beside it.

use std::path::PathBuf;

use super::Config;
use crate::engine::stream::StreamSettings;
use crate::format::compression::Compression;
use crate::layout::CacheInfo;
use crate::sink::params::CacheParams;
use crate::sink::url::TargetUrl;

impl Config {
    /// The cache written to: `target`, else the embedded default `file://<state_dir>/cache`.
    pub fn target_or_default(&self) -> TargetUrl {
        self.target.clone().unwrap_or_else(|| TargetUrl::File {
            dir: self.state_dir.join("cache"),
            params: CacheParams::default(),
        })
    }

    /// Applies the settings a target URL gives (`?compression=xz&priority=30`): the URL wins
    /// over the config file, as command-line flags win over both.
    pub fn apply_target_params(&mut self, params: &CacheParams) {
        if let Some(compression) = params.compression {
            self.compression = compression;
            self.compression_level = compression.default_level();
        }
        if let Some(level) = params.compression_level {
            self.compression_level = level;
        }
        if let Some(parallel) = params.parallel_compression {
            self.parallel_compression = parallel;
        }
        if let Some(key) = &params.secret_key {
            self.secret_key_files = vec![key.clone()];
        }
        if let Some(priority) = params.priority {
            self.priority = priority;
        }
        if let Some(want_mass_query) = params.want_mass_query {
            self.want_mass_query = want_mass_query;
        }
        if let Some(part_size) = params.part_size {
            self.part_size = Some(part_size);
        }
        if let Some(max) = params.single_put_max {
            self.single_put_max = max;
        }
        if let Some(write) = params.write_nar_listing {
            self.write_nar_listing = write;
        }
        if let Some(compression) = params.ls_compression {
            self.ls_compression = compression;
        }
    }

    /// How NARs are streamed with these settings.
    pub fn stream_settings(&self, compression: Compression, level: i32) -> StreamSettings {
        let mut stream = StreamSettings::new(compression, level);
        if let Some(part_size) = self.part_size {
            stream.part_size = part_size;
        }
        if !self.parallel_compression {
            stream.workers = 0;
        }
        stream.listing = self.write_nar_listing.then_some(self.ls_compression);
        stream.single_put_max = self.single_put_max;
        stream
    }

    /// What `nix-cache-info` says with these settings.
    pub fn cache_info(&self) -> CacheInfo {
        CacheInfo {
            priority: self.priority,
            want_mass_query: self.want_mass_query,
        }
    }

    /// Where the embedded default signing key is (generated on first use).
    pub fn default_key_file(&self) -> PathBuf {
        self.state_dir.join("signing-key")
    }
}

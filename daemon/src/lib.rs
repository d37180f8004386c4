//! narpush: puts every path Nix builds into a signed binary cache on S3-compatible storage.
//!
//! # Layout
//!
//! - [`format`]: the Nix formats (store paths, nixbase32, NAR, narinfo, signing keys). No I/O
//!   beyond reading the tree being archived, no tokio, no S3, no config.
//! - [`store`]: what the local Nix store knows about paths (metadata, closures), asked of the
//!   `nix` commands, one process per batch.
//! - [`target`]: where objects go (`s3://…` through aws-sdk-s3, `file:///…`), and the one place
//!   that decides whether a failure is worth retrying.
//! - [`upload`]: turning store paths into cache objects: the NAR stream (hash check, compression,
//!   fixed-size parts), narinfo signing, and the ordering that keeps the closure invariant.
//! - [`config`]: the TOML config file, checked in one pass.
//!
//! The binary (`main.rs`, `cli/`) only wires these together.

pub mod config;
pub mod control;
pub mod daemon;
pub mod format;
pub mod gcroots;
pub mod queue;
pub mod store;
pub mod target;
pub mod upload;

/// An error and its causes on one line (`outer: cause: root cause`), for logs, the status
/// document and protocol responses, which are all single lines.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

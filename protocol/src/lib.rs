//! What the narpush hook, the daemon and the CLI say to each other, defined once.
//!
//! - [`request`]: the socket protocol's grammar, its encoder and its parser;
//! - [`client`]: one request/response exchange with the daemon, bounded by a deadline;
//! - [`spool`]: spool files, the requests the hook leaves on disk when the daemon does not
//!   answer (naming, atomic writing, which names a reader takes);
//! - [`env`] and [`defaults`]: the environment variables every program reads and the paths
//!   they fall back to.
//!
//! The crate uses the standard library only, because the hook must stay small and start fast;
//! the daemon and the CLI use the same code, so the two sides cannot drift apart.

pub mod client;
pub mod request;
pub mod spool;

pub use request::{ProtocolError, Request, Response, Source, MAX_LINE, MAX_REQUEST, VERSION};

/// Names of the environment variables the hook, the CLI and the daemon read.
pub mod env {
    /// The daemon's socket.
    pub const SOCKET: &str = "NARPUSH_SOCKET";
    /// Where the hook leaves requests the daemon did not take.
    pub const SPOOL_DIR: &str = "NARPUSH_SPOOL_DIR";
    /// The daemon's and the CLI's config file.
    pub const CONFIG: &str = "NARPUSH_CONFIG";
    /// The daemon's state directory (queue, embedded default cache and key).
    pub const STATE_DIR: &str = "NARPUSH_STATE_DIR";
    /// A secret signing key's text, for when no key file is configured.
    pub const SIGNING_KEY: &str = "NARPUSH_SIGNING_KEY";
    /// What Nix sets for a post-build hook: the derivation built, and its outputs.
    pub const DRV_PATH: &str = "DRV_PATH";
    pub const OUT_PATHS: &str = "OUT_PATHS";

    /// The value of an environment variable holding a path; empty counts as unset.
    pub fn path(name: &str) -> Option<std::path::PathBuf> {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(std::path::PathBuf::from)
    }
}

/// Where things are when neither the environment nor a config file says otherwise.
pub mod defaults {
    pub const SOCKET: &str = "/run/narpush/narpush.sock";
    pub const STATE_DIR: &str = "/var/lib/narpush";
    pub const SPOOL_DIR: &str = "/var/lib/narpush/spool";
    pub const CONFIG: &str = "/etc/narpush/narpush.toml";
}

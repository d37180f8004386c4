//! Where narpush keeps its state when neither the environment nor a config file says: the
//! machine's directories for root (the system daemon), the user's own for anyone else (`exec`
//! and `client-config` run by a user), so that a user's embedded default cache and key are
//! found again by the next command of the same user.

use std::path::PathBuf;

use narpush_protocol::{defaults, env};

/// `$NARPUSH_STATE_DIR`; else for root `/var/lib/narpush`; else, for a user running narpush
/// for themselves (`narpush exec`, `client-config`), `$XDG_DATA_HOME/narpush` or
/// `~/.local/share/narpush`.
pub fn default_state_dir() -> PathBuf {
    if let Some(from_env) = env::path(env::STATE_DIR) {
        return from_env;
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(defaults::STATE_DIR);
    }
    env::path("XDG_DATA_HOME")
        .filter(|dir| dir.is_absolute())
        .or_else(|| env::path("HOME").map(|home| home.join(".local/share")))
        .map_or_else(
            || PathBuf::from(defaults::STATE_DIR),
            |dir| dir.join("narpush"),
        )
}

/// Root's GC roots directory: one Nix's collector scans.
pub const DEFAULT_GC_ROOTS_DIR: &str = "/nix/var/nix/gcroots/narpush";

/// For root the shared directory Nix's collector scans; for another user their own
/// `per-user/<name>` directory there, which Nix lets them write.
pub fn default_gc_roots_dir() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from(DEFAULT_GC_ROOTS_DIR);
    }
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |user| user.name);
    PathBuf::from(format!("/nix/var/nix/gcroots/per-user/{name}/narpush"))
}

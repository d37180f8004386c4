//! Did COMMAND build anything? Nix 2.8 cannot tell whether it will run a `post-build-hook` set
//! by this user (nix-daemon ignores it for users not in `trusted-users`), so `exec` checks
//! afterwards: Nix writes a log for every derivation it builds under
//! `/nix/var/log/nix/drvs/<2 chars>/`, so a log file newer than COMMAND's start is a build
//! that happened while it ran.
//!
//! Best effort, and only for the warning: another user's build counts too, and with
//! `keep-build-log = false` nothing is seen. Only subdirectories modified since the start are
//! read, so a big log directory costs one `stat` per subdirectory.

use std::path::Path;
use std::time::SystemTime;

pub const LOG_DIR: &str = "/nix/var/log/nix/drvs";

/// How many derivation logs under `log_dir` were written at or after `since`.
pub fn logs_written_since(log_dir: &Path, since: SystemTime) -> usize {
    let modified_since = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since)
    };
    let Ok(subdirs) = std::fs::read_dir(log_dir) else {
        return 0;
    };
    subdirs
        .flatten()
        .map(|e| e.path())
        .filter(|dir| modified_since(dir))
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|files| files.flatten())
        .filter(|file| modified_since(&file.path()))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_logs_written_after_the_start_count() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("ab");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("old.drv.bz2"), "").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let start = SystemTime::now();
        assert_eq!(logs_written_since(dir.path(), start), 0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(sub.join("new.drv.bz2"), "").unwrap();
        assert_eq!(logs_written_since(dir.path(), start), 1);
        assert_eq!(logs_written_since(&dir.path().join("missing"), start), 0);
    }
}

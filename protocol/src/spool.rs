//! Spool files: a request the hook could not hand to the daemon, left on disk for the daemon to
//! take later. The file holds exactly the bytes of the request (see [`crate::request`]).
//!
//! - **Name**: `<nanoseconds since the Unix epoch>-<pid of the writer>` + [`SUFFIX`], so names
//!   sort by age and two writers never collide.
//! - **Writing** ([`write`]): a hidden temporary file `.<name>.tmp` created with
//!   `O_CREAT|O_EXCL` (it never follows a symlink planted at that name), fsynced, renamed into
//!   place, and the directory fsynced: a reader sees a whole file or none.
//! - **A missing directory** is created mode 0750 and given the owner and group of its parent
//!   (the hook runs as root; the parent is normally the daemon's state directory, owned by
//!   the `narpush` user), so the daemon can remove what it has queued. A root-owned spool
//!   directory would leave the daemon unable to remove any file, taking each again forever.
//! - **Reading**: a reader takes the names [`is_request_file_name`] accepts, and leaves names
//!   starting with `.` (writes in progress) alone.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The suffix of finished spool files.
pub const SUFFIX: &str = ".request";

/// The name of a new spool file.
pub fn file_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos}-{}{SUFFIX}", std::process::id())
}

/// Whether a reader should take the file called `name`.
pub fn is_request_file_name(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(SUFFIX)
}

/// Writes `request` atomically into `dir` (created if missing, see the module doc) and
/// returns the file's path.
pub fn write(dir: &Path, request: &[u8]) -> std::io::Result<PathBuf> {
    if !dir.is_dir() {
        create_dir(dir)?;
    }
    let name = file_name();
    let temporary = dir.join(format!(".{name}.tmp"));
    let final_path = dir.join(&name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temporary)?;
    let written = file.write_all(request).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&temporary, &final_path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(final_path)
}

/// Creates `dir` mode 0750, owned like its parent (created first if missing).
fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)?;
    match std::fs::DirBuilder::new().mode(0o750).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        created => created?,
    }
    let owner = std::fs::metadata(parent)?;
    // Fails unless we are root or already the owner; then the directory is ours, as before.
    let _ = std::os::unix::fs::chown(dir, Some(owner.uid()), Some(owner.gid()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_holds_the_request_under_a_name_readers_take() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir.path().join("spool"), b"narpush 1 status\nend\n").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"narpush 1 status\nend\n");
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(is_request_file_name(name), "{name}");
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("spool"))
            .unwrap()
            .collect();
        assert_eq!(entries.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_missing_directory_is_owned_like_its_parent() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        if std::os::unix::fs::chown(&state, Some(4242), Some(4243)).is_err() {
            eprintln!("not root: ownership cannot be checked here");
            return;
        }
        write(&state.join("spool"), b"narpush 1 status\nend\n").unwrap();
        let meta = std::fs::metadata(state.join("spool")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4242, 4243));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    }

    #[test]
    fn temporary_and_foreign_names_are_not_taken() {
        assert!(!is_request_file_name(".1-2.request.tmp"));
        assert!(!is_request_file_name(".1-2.request"));
        assert!(!is_request_file_name("1-2.request.reason"));
        assert!(is_request_file_name("1795570365596136616-25952.request"));
    }

    #[test]
    fn names_sort_by_age() {
        let first = file_name();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = file_name();
        assert!(first < second, "{first} {second}");
    }
}

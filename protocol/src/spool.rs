//! Spool files: a request the hook could not hand to the daemon, left on disk for the daemon to
//! take later. The file holds exactly the bytes of the request (see [`crate::request`]).
//!
//! - **Name**: `<nanoseconds since the Unix epoch>-<pid of the writer>` + [`SUFFIX`], so names
//!   sort by age and two writers never collide.
//! - **Writing** ([`write`]): a hidden temporary file `.<name>.tmp` created with
//!   `O_CREAT|O_EXCL` (it never follows a symlink planted at that name), fsynced, renamed into
//!   place, and the directory fsynced: a reader sees a whole file or none.
//! - **The directory is never a symlink**: the hook runs as root and the spool's parent
//!   belongs to the daemon's user, who could otherwise point the spool anywhere. The name is
//!   checked with `lstat`, the directory opened and compared with it (device and inode), and
//!   the file made and renamed through that open directory (`/proc/self/fd/N/…`), so a swap
//!   after the check does not redirect the write either. A refused directory is an error:
//!   the hook says why on stderr and still exits 0.
//! - **Stale temporary files** (a writer killed between create and rename) are named by
//!   [`is_temporary_file_name`]; the daemon removes those older than [`STALE_AFTER`].
//! - **A missing directory** is created mode 0750 and given the owner and group of its parent
//!   (the hook runs as root; the parent is normally the daemon's state directory, owned by
//!   the `narpush` user), so the daemon can remove what it has queued. A root-owned spool
//!   directory would leave the daemon unable to remove any file, taking each again forever.
//!   The parent's owner may swap the new name for a symlink right after `mkdir`, so the
//!   ownership is given through the directory opened and checked as above (`fchown`), never
//!   by name: a swapped name is refused and nothing else changes owner.
//! - **Reading**: a reader takes the names [`is_request_file_name`] accepts, and leaves names
//!   starting with `.` (writes in progress) alone.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The suffix of finished spool files.
pub const SUFFIX: &str = ".request";
/// The suffix of a spool file being written.
pub const TEMPORARY_SUFFIX: &str = ".tmp";
/// A temporary file this old was left by a writer that died: no hook writes for this long.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

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

/// Whether `name` is a writer's temporary file (finished or abandoned).
pub fn is_temporary_file_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMPORARY_SUFFIX)
}

/// Writes `request` atomically into `dir` (created if missing, see the module doc) and
/// returns the file's path. A `dir` that is a symlink, or is swapped while it is opened, is
/// refused ([`std::io::ErrorKind::InvalidInput`]) and nothing is written.
pub fn write(dir: &Path, request: &[u8]) -> std::io::Result<PathBuf> {
    if matches!(std::fs::symlink_metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    {
        create_dir(dir)?;
    }
    let opened = open_dir(dir)?;
    // The same directory, reached through the open descriptor rather than by its name.
    let through = PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()));
    let base = if through.is_dir() {
        through
    } else {
        dir.to_owned()
    };
    let name = file_name();
    let temporary = base.join(format!(".{name}{TEMPORARY_SUFFIX}"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temporary)?;
    let written = file.write_all(request).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&temporary, base.join(&name))) {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    opened.sync_all()?;
    Ok(dir.join(name))
}

/// Opens `dir`, refusing a symlink or anything but a directory, and a name that stopped
/// naming the directory opened (a swap between the check and the open).
fn open_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let refuse = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the spool directory {} {why}; refusing to write",
                dir.display()
            ),
        )
    };
    let named = std::fs::symlink_metadata(dir)?;
    if named.file_type().is_symlink() {
        return Err(refuse("is a symbolic link"));
    }
    if !named.is_dir() {
        return Err(refuse("is not a directory"));
    }
    let opened = std::fs::File::open(dir)?;
    let meta = opened.metadata()?;
    if !meta.is_dir() || (meta.dev(), meta.ino()) != (named.dev(), named.ino()) {
        return Err(refuse("was replaced while it was opened"));
    }
    Ok(opened)
}

/// Creates `dir` mode 0750, owned like its parent (created first if missing).
fn create_dir(dir: &Path) -> std::io::Result<()> {
    create_dir_with(dir, || {})
}

/// [`create_dir`], running `after_mkdir` between making the directory and giving it away
/// (tests swap the name there).
fn create_dir_with(dir: &Path, after_mkdir: impl FnOnce()) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)?;
    match std::fs::DirBuilder::new().mode(0o750).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        created => created?,
    }
    after_mkdir();
    // The parent's owner can swap the name for a symlink at any moment: give away the
    // directory through a descriptor checked to be a directory the name named, never by name
    // (`chown` would follow a link to, say, /etc/shadow).
    let opened = open_dir(dir)?;
    let owner = std::fs::metadata(parent)?;
    // Fails unless we are root or already the owner; then the directory is ours, as before.
    let _ = std::os::unix::fs::fchown(&opened, Some(owner.uid()), Some(owner.gid()));
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
    fn a_directory_swapped_for_a_symlink_after_mkdir_is_not_given_away() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, b"root:x:\n").unwrap();
        let before = std::fs::metadata(&secret).unwrap();
        // The parent's owner is who the spool would be given to; as root, someone else.
        let _ = std::os::unix::fs::chown(&state, Some(4242), Some(4243));
        let spool = state.join("spool");
        let created = create_dir_with(&spool, || {
            std::fs::rename(&spool, state.join("moved")).unwrap();
            std::os::unix::fs::symlink(&secret, &spool).unwrap();
        });
        let after = std::fs::metadata(&secret).unwrap();
        assert_eq!(
            (after.uid(), after.gid()),
            (before.uid(), before.gid()),
            "the file the symlink names keeps its owner"
        );
        let error = created.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
        assert!(error.to_string().contains("symbolic link"), "{error}");
    }

    #[test]
    fn a_symlinked_spool_directory_is_refused_and_nothing_is_written_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let spool = dir.path().join("spool");
        std::os::unix::fs::symlink(&elsewhere, &spool).unwrap();
        let error = write(&spool, b"narpush 1 status\nend\n").unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);

        // A dangling link is not "missing": it is not created through either.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("absent"), &dangling).unwrap();
        assert!(write(&dangling, b"narpush 1 status\nend\n").is_err());
        assert!(!dir.path().join("absent").exists());
    }

    #[test]
    fn temporary_names_are_recognised() {
        assert!(is_temporary_file_name(".1-2.request.tmp"));
        assert!(!is_temporary_file_name("1-2.request"));
        assert!(!is_temporary_file_name(".1-2.request"));
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

//! GC roots for queued paths: from the moment a path is acknowledged until it is uploaded, a
//! symlink `<gc_roots_dir>/<basename> -> /nix/store/<basename>` keeps Nix's garbage collector
//! from deleting it (and, with it, its closure). Nix scans every symlink under
//! `/nix/var/nix/gcroots/` that points into the store, so the directory must live there.
//!
//! Invariant: a root is added before the request that names its path is acknowledged, and
//! removed only after the path's narinfo is in the cache. Adding and removing are idempotent.

use std::io;
use std::path::{Path, PathBuf};

use crate::format::store_path::StorePath;

#[derive(Clone, Debug)]
pub struct GcRoots {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} GC root {link}")]
pub struct GcRootError {
    action: &'static str,
    link: PathBuf,
    #[source]
    source: io::Error,
}

impl GcRoots {
    pub fn open(dir: &Path) -> Result<GcRoots, GcRootError> {
        std::fs::create_dir_all(dir).map_err(|source| GcRootError {
            action: "create the directory for",
            link: dir.to_owned(),
            source,
        })?;
        Ok(GcRoots {
            dir: dir.to_owned(),
        })
    }

    fn link(&self, path: &StorePath) -> PathBuf {
        self.dir.join(path.basename())
    }

    pub fn add(&self, path: &StorePath) -> Result<(), GcRootError> {
        let link = self.link(path);
        match std::os::unix::fs::symlink(path.to_absolute(), &link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(GcRootError {
                action: "create",
                link,
                source,
            }),
        }
    }

    pub fn remove(&self, path: &StorePath) -> Result<(), GcRootError> {
        let link = self.link(path);
        match std::fs::remove_file(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(GcRootError {
                action: "remove",
                link,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_symlinks_into_the_store_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let roots = GcRoots::open(&dir.path().join("narpush")).unwrap();
        let path = StorePath::from_basename("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep").unwrap();
        roots.add(&path).unwrap();
        roots.add(&path).unwrap();
        let link = dir
            .path()
            .join("narpush/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from(path.to_absolute())
        );
        roots.remove(&path).unwrap();
        roots.remove(&path).unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err());
    }
}

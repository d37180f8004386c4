//! The closure invariant, NAR bytes included, checked over and over while a cache is written:
//! every narinfo's NAR exists with its `FileSize` and `FileHash`, and every reference has a
//! narinfo. A violation seen at any moment fails the test that started the watch.
//!
//! s3s-fs writes each object to a temporary file and renames it into place, so a file seen
//! under its key is complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::narinfos;

/// A background thread checking a cache directory until [`CacheWatch::finish`].
pub struct CacheWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64, String>>>,
}

impl CacheWatch {
    pub fn start(cache: PathBuf) -> CacheWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut hashed = HashMap::new();
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) {
                    check_cache(&cache, &mut hashed)?;
                    rounds += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                check_cache(&cache, &mut hashed)?;
                Ok(rounds + 1)
            })
        };
        CacheWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the watch after one last check; panics with the first violation seen. Returns
    /// how many times the whole cache was checked.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("finished once");
        match thread.join().expect("the watch thread panicked") {
            Ok(rounds) => rounds,
            Err(violation) => panic!("closure invariant broken: {violation}"),
        }
    }
}

impl Drop for CacheWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One check of the whole cache; returns how many narinfos it checked. `hashed` remembers
/// the hash of each NAR file by size, so unchanged NARs are hashed once.
pub fn check_cache(
    cache: &Path,
    hashed: &mut HashMap<PathBuf, (u64, String)>,
) -> Result<usize, String> {
    let narinfos = narinfos(cache);
    for narinfo in &narinfos {
        let text = std::fs::read_to_string(narinfo)
            .map_err(|e| format!("cannot read {}: {e}", narinfo.display()))?;
        check_narinfo(cache, narinfo, &text, hashed)?;
    }
    Ok(narinfos.len())
}

/// One narinfo's share of the invariant: `text`, read from `narinfo` in `cache`, names a NAR
/// that exists with its `FileSize` and `FileHash`, and references that have narinfos.
/// `hashed` remembers each NAR's hash by size, so a NAR is read once.
pub fn check_narinfo(
    cache: &Path,
    narinfo: &Path,
    text: &str,
    hashed: &mut HashMap<PathBuf, (u64, String)>,
) -> Result<(), String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .ok_or_else(|| format!("{} has no {name} line", narinfo.display()))
    };
    let nar = cache.join(field("URL: ")?);
    let size = std::fs::metadata(&nar)
        .map_err(|e| format!("{} points at {}: {e}", narinfo.display(), nar.display()))?
        .len();
    let file_size: u64 = field("FileSize: ")?
        .parse()
        .map_err(|e| format!("{}: FileSize: {e}", narinfo.display()))?;
    if size != file_size {
        return Err(format!(
            "{}: FileSize {file_size}, but {} has {size} bytes",
            narinfo.display(),
            nar.display()
        ));
    }
    let file_hash = field("FileHash: ")?;
    let actual = match hashed.get(&nar) {
        Some((hashed_size, hash)) if *hashed_size == size => hash.clone(),
        _ => {
            let bytes =
                std::fs::read(&nar).map_err(|e| format!("cannot read {}: {e}", nar.display()))?;
            let hash = format!("sha256:{}", nix32(&Sha256::digest(&bytes)));
            hashed.insert(nar.clone(), (size, hash.clone()));
            hash
        }
    };
    if actual != file_hash {
        return Err(format!(
            "{}: FileHash {file_hash}, but {} hashes to {actual}",
            narinfo.display(),
            nar.display()
        ));
    }
    for reference in field("References: ")?.split(' ').filter(|r| !r.is_empty()) {
        let hash_part = reference.get(..32).unwrap_or(reference);
        if !cache.join(format!("{hash_part}.narinfo")).exists() {
            return Err(format!(
                "{} references {reference}, which has no narinfo",
                narinfo.display()
            ));
        }
    }
    Ok(())
}

/// Nix's base-32 (its alphabet, least significant 5 bits last).
fn nix32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let length = (bytes.len() * 8).div_ceil(5);
    (0..length)
        .rev()
        .map(|n| {
            let bit = n * 5;
            let (byte, shift) = (bit / 8, bit % 8);
            let low = u16::from(bytes[byte]) >> shift;
            let high = bytes
                .get(byte + 1)
                .map_or(0, |b| u16::from(*b) << (8 - shift));
            char::from(ALPHABET[usize::from((low | high) & 0x1f)])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAR_HASH: &str = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";

    /// A cache with one NAR of `bytes` and a narinfo claiming `size`, `hash`, `references`.
    fn cache(bytes: &[u8], size: usize, hash: &str, references: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("nar")).unwrap();
        std::fs::write(dir.path().join("nar/x.nar"), bytes).unwrap();
        let narinfo = format!(
            "StorePath: /nix/store/{a}-x\nURL: nar/x.nar\nCompression: none\nFileHash: {hash}\n\
             FileSize: {size}\nNarHash: {NAR_HASH}\nNarSize: {size}\nReferences: {references}\n",
            a = "a".repeat(32)
        );
        std::fs::write(
            dir.path().join(format!("{}.narinfo", "a".repeat(32))),
            narinfo,
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_consistent_cache_passes_and_each_kind_of_break_is_caught() {
        let bytes = b"nar bytes";
        let hash = format!("sha256:{}", nix32(&Sha256::digest(bytes)));
        let itself = format!("{}-x", "a".repeat(32));
        let good = cache(bytes, bytes.len(), &hash, &itself);
        assert_eq!(check_cache(good.path(), &mut HashMap::new()), Ok(1));

        let wrong_size = cache(bytes, bytes.len() + 1, &hash, "");
        let wrong_hash = cache(bytes, bytes.len(), NAR_HASH, "");
        let missing_reference = cache(bytes, bytes.len(), &hash, &format!("{}-y", "b".repeat(32)));
        for (broken, why) in [
            (wrong_size, "FileSize"),
            (wrong_hash, "FileHash"),
            (missing_reference, "has no narinfo"),
        ] {
            let violation = check_cache(broken.path(), &mut HashMap::new()).unwrap_err();
            assert!(violation.contains(why), "{violation}");
        }
    }

    #[test]
    fn nix32_matches_nix() {
        // `nix hash to-base32 sha256:` of the empty string's SHA-256.
        let digest = <sha2::Sha256 as sha2::Digest>::digest(b"");
        assert_eq!(
            super::nix32(&digest),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
    }
}

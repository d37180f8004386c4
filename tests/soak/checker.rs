//! The closure invariant, sampled over the bucket's files for the whole run: every narinfo's
//! NAR exists with its FileSize and FileHash, and every reference has a narinfo.
//!
//! Writers and the collector change the bucket while it is read, so a problem counts only if
//! it is still there when looked at again with the narinfo unchanged: a narinfo read just
//! before a collection deleted it (and then its NAR) is not a violation, a narinfo that stays
//! published without its NAR is.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use narpush_e2e::cache_watch::check_narinfo;
use narpush_e2e::narinfos;

/// What the checker saw.
#[derive(Default)]
pub struct Sampled {
    /// Whole passes over the bucket.
    pub passes: u64,
    /// narinfos checked, over all passes.
    pub checked: u64,
    pub violations: Vec<String>,
}

pub fn watch(bucket: &Path, stop: &AtomicBool) -> Sampled {
    let mut sampled = Sampled::default();
    let mut hashed = HashMap::new();
    loop {
        // One last whole pass after the stop.
        let last = stop.load(Ordering::Relaxed);
        for narinfo in narinfos(bucket) {
            let Ok(text) = std::fs::read_to_string(&narinfo) else {
                continue;
            };
            sampled.checked += 1;
            if check_narinfo(bucket, &narinfo, &text, &mut hashed).is_ok() {
                continue;
            }
            match std::fs::read_to_string(&narinfo) {
                Ok(again) if again == text => {
                    if let Err(problem) = check_narinfo(bucket, &narinfo, &again, &mut hashed) {
                        eprintln!("soak: VIOLATION {problem}");
                        sampled.violations.push(problem);
                    }
                }
                _ => {}
            }
        }
        sampled.passes += 1;
        if last {
            return sampled;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

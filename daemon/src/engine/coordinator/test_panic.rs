//! A hook for tests of the daemon's supervision: in debug builds, a submitted path can make
//! the coordinator panic as a bug would. Release builds compile it to nothing.

use crate::format::store_path::StorePath;

/// Debug builds only, for tests: a submitted path whose basename contains the value of this
/// variable makes the coordinator panic, as a bug would (see `daemon::supervise`).
#[cfg(debug_assertions)]
pub const PANIC_ENV: &str = "NARPUSH_TEST_PANIC_ON";

pub(super) fn panic_if_asked(tops: &[StorePath]) {
    #[cfg(debug_assertions)]
    if let Some(needle) = std::env::var(PANIC_ENV).ok().filter(|n| !n.is_empty()) {
        if let Some(top) = tops.iter().find(|top| top.basename().contains(&needle)) {
            panic!("{PANIC_ENV}: a test asked the engine to panic on {top}");
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = tops;
}

//! R2's limit on writes to one key, as the fault proxy plays it: a PutObject of a key that an
//! accepted PutObject wrote less than the window ago (R2: about one second) is answered 429
//! with R2's error body, and never reaches the server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The body R2 sends with its 429 to a write of a key written less than a second ago.
pub const R2_SAME_KEY_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\
<Code>ServiceUnavailable</Code><Message>Reduce your concurrent request rate for the same \
object.</Message></Error>";

/// The accepted writes of each key, when the limit is on.
#[derive(Debug, Default)]
pub(super) struct SameKeyWrites {
    window: Option<Duration>,
    accepted: HashMap<String, Instant>,
    /// Writes answered 429, by key.
    pub(super) throttled: HashMap<String, u64>,
}

impl SameKeyWrites {
    /// Answers 429 to a write of a key written less than `window` ago (`None`: never).
    pub(super) fn limit(&mut self, window: Option<Duration>) {
        self.window = window;
    }

    /// Whether a PutObject of `key` arriving now is accepted; a refused one is counted.
    pub(super) fn admit(&mut self, key: &str) -> bool {
        let Some(window) = self.window else {
            return true;
        };
        let now = Instant::now();
        match self.accepted.get(key) {
            Some(at) if now.duration_since(*at) < window => {
                *self.throttled.entry(key.to_owned()).or_default() += 1;
                false
            }
            _ => {
                self.accepted.insert(key.to_owned(), now);
                true
            }
        }
    }
}

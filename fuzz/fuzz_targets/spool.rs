//! Spool files, as the daemon reads them (`daemon::spool`): at most `MAX_REQUEST` bytes, a
//! request in the socket grammar, which must be an `enqueue` whose paths are store paths
//! (checked by `daemon::enqueue::store_path` before anything touches the store). Any file
//! gives paths to queue or a reason to reject it, never a panic; a path that is accepted
//! prints back as the text it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush::daemon::enqueue;
use narpush_protocol::{Request, MAX_REQUEST};

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_REQUEST {
        return;
    }
    let Ok(Request::Enqueue { drv, outs, .. }) = Request::parse(data) else {
        return;
    };
    for value in drv.iter().chain(&outs) {
        if let Ok(path) = enqueue::store_path(value) {
            assert_eq!(&path.to_absolute(), value);
        }
    }
});

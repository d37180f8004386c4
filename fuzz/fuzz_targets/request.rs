//! The socket protocol (`narpush_protocol::request`): any bytes a local peer sends give a
//! request or an error, never a panic; whatever parses encodes back to itself; the same holds
//! for response lines, which the CLI and the hook read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush_protocol::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = Request::is_complete(data);
    if let Ok(request) = Request::parse(data) {
        let encoded = request.encode();
        assert!(
            Request::is_complete(&encoded),
            "an encoded request is complete"
        );
        assert_eq!(
            Request::parse(&encoded),
            Ok(request),
            "parse(encode(x)) == x"
        );
    }
    if let Some(response) = Response::parse(data) {
        let encoded = response.encode();
        assert_eq!(
            Response::parse(&encoded),
            Some(response),
            "parse(encode(x)) == x"
        );
    }
});

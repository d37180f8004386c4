//! Property tests of the request grammar (what the socket and spool files carry): any bytes
//! give a request or an error, never a panic; near-valid requests (the right frame, arbitrary
//! fields) likewise; and whatever parses encodes back to itself.

use proptest::prelude::*;

use super::*;
use crate::spool;

/// A line of a request: a known field name with an arbitrary value, a bare word, or noise.
fn field_line() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("source".to_owned()),
        Just("drv".to_owned()),
        Just("out".to_owned()),
        Just("all".to_owned()),
        Just("end".to_owned()),
        Just("narpush".to_owned()),
        "[a-z]{1,8}",
    ];
    prop_oneof![
        (name.clone(), any::<String>()).prop_map(|(n, v)| format!("{n} {v}")),
        name,
        ".*",
    ]
}

fn near_valid_request() -> impl Strategy<Value = Vec<u8>> {
    let command = prop_oneof![
        Just("enqueue".to_owned()),
        Just("status".to_owned()),
        Just("retry".to_owned()),
        ".{0,12}",
    ];
    let version = prop_oneof![Just("1".to_owned()), "[0-9]{1,3}", ".{0,4}"];
    (
        version,
        command,
        prop::collection::vec(field_line(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(version, command, fields, end)| {
            let mut text = format!("narpush {version} {command}\n");
            for field in fields {
                text.push_str(&field);
                text.push('\n');
            }
            if end {
                text.push_str("end\n");
            }
            text.into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Request::is_complete(&bytes);
        let _ = Request::parse(&bytes);
        let _ = Response::parse(&bytes);
    }

    #[test]
    fn near_valid_requests_parse_or_fail_and_what_parses_round_trips(bytes in near_valid_request()) {
        let _ = Request::is_complete(&bytes);
        if let Ok(request) = Request::parse(&bytes) {
            let encoded = request.encode();
            prop_assert_eq!(Request::parse(&encoded), Ok(request));
        }
    }

    #[test]
    fn responses_round_trip(ok in any::<bool>(), text in ".*") {
        // Encoding puts the text on one line: a newline becomes a space.
        let one_line = text.replace('\n', " ");
        let (response, expected) = if ok {
            (Response::Ok(text), Response::Ok(one_line))
        } else {
            (Response::Error(text), Response::Error(one_line))
        };
        prop_assert_eq!(Response::parse(&response.encode()), Some(expected));
    }

    #[test]
    fn spool_file_names_never_panic(name in ".*") {
        let _ = spool::is_request_file_name(&name);
    }
}

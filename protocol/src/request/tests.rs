//! Round trips and every rejection of the protocol parser.

use super::*;

const DRV: &str = "/nix/store/lkb8q51gz5lbr6pf1q7yzyxnim1c6lca-top.drv";
const OUT: &str = "/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-top";

#[test]
fn every_request_survives_encode_then_parse() {
    let requests = [
        Request::Enqueue {
            source: Source::Hook,
            drv: Some(DRV.to_owned()),
            outs: vec![OUT.to_owned(), format!("{OUT}-dev")],
        },
        Request::Enqueue {
            source: Source::Spool,
            drv: Some(DRV.to_owned()),
            outs: vec![],
        },
        Request::Status,
        Request::Retry {
            all: true,
            outs: vec![],
        },
        Request::Retry {
            all: false,
            outs: vec![OUT.to_owned()],
        },
    ];
    for request in requests {
        assert_eq!(Request::parse(&request.encode()), Ok(request));
    }
}

#[test]
fn hook_env_with_empty_out_paths_keeps_the_drv_only() {
    let request = Request::from_hook_env(Some(DRV), Some(""));
    assert_eq!(
        request,
        Request::Enqueue {
            source: Source::Hook,
            drv: Some(DRV.to_owned()),
            outs: vec![]
        }
    );
    let both = Request::from_hook_env(Some(DRV), Some(&format!("{OUT} {OUT}-dev")));
    let Request::Enqueue { outs, .. } = both else {
        panic!("enqueue")
    };
    assert_eq!(outs.len(), 2);
}

#[test]
fn the_wire_text_is_what_the_protocol_document_shows() {
    let request = Request::from_hook_env(Some(DRV), Some(OUT));
    assert_eq!(
        String::from_utf8(request.encode()).unwrap(),
        format!("narpush 1 enqueue\nsource hook\ndrv {DRV}\nout {OUT}\nend\n")
    );
}

#[test]
fn completeness_is_detected_only_at_the_end_line() {
    let bytes = Request::Status.encode();
    assert!(Request::is_complete(&bytes));
    assert!(!Request::is_complete(&bytes[..bytes.len() - 1]));
    assert!(!Request::is_complete(b"narpush 1 status\nendx\n"));
}

fn rejects(text: &[u8]) -> ProtocolError {
    Request::parse(text).expect_err("must be rejected")
}

#[test]
fn malformed_requests_are_rejected_with_the_reason() {
    assert_eq!(
        rejects(b"GET / HTTP/1.1\nend\n"),
        ProtocolError::BadHeader {
            found: "GET / HTTP/1.1".into()
        }
    );
    assert_eq!(
        rejects(b"narpush 2 status\nend\n"),
        ProtocolError::UnsupportedVersion { found: "2".into() }
    );
    assert_eq!(
        rejects(b"narpush 1 delete\nend\n"),
        ProtocolError::UnknownCommand {
            found: "delete".into()
        }
    );
    assert_eq!(rejects(b"narpush 1 status\n"), ProtocolError::MissingEnd);
    assert_eq!(
        rejects(b"narpush 1 status\nend\nmore\n"),
        ProtocolError::TrailingData
    );
    assert_eq!(
        rejects(b"narpush 1 enqueue\nsource hook\nend\n"),
        ProtocolError::NothingToEnqueue
    );
    assert_eq!(
        rejects(b"narpush 1 enqueue\nsource robot\nout /x\nend\n"),
        ProtocolError::BadValue {
            field: "source",
            value: "robot".into()
        }
    );
    assert_eq!(
        rejects(b"narpush 1 enqueue\ndrv /a\ndrv /b\nend\n"),
        ProtocolError::DuplicateField { field: "drv" }
    );
    assert_eq!(
        rejects(b"narpush 1 status\nout /x\nend\n"),
        ProtocolError::UnknownField {
            command: "status",
            field: "out".into()
        }
    );
    assert_eq!(
        rejects(b"narpush 1 enqueue\nout /a b\nend\n"),
        ProtocolError::BadValue {
            field: "out",
            value: "/a b".into()
        }
    );
}

#[test]
fn binary_garbage_and_oversized_input_are_rejected() {
    assert_eq!(
        rejects(b"narpush 1 enqueue\nout \xff\xfe\nend\n"),
        ProtocolError::NotUtf8 { line: 2 }
    );
    assert_eq!(
        rejects(b"narpush 1 enqueue\nout /a\x07\nend\n"),
        ProtocolError::ControlCharacter { line: 2 }
    );
    let long_line = format!("narpush 1 enqueue\nout /{}\nend\n", "a".repeat(MAX_LINE));
    assert_eq!(
        rejects(long_line.as_bytes()),
        ProtocolError::LineTooLong {
            line: 2,
            limit: MAX_LINE
        }
    );
    let huge = vec![b'a'; MAX_REQUEST + 1];
    assert_eq!(
        rejects(&huge),
        ProtocolError::TooLarge { limit: MAX_REQUEST }
    );
}

#[test]
fn responses_round_trip_and_garbage_is_not_a_response() {
    for response in [
        Response::Ok(String::new()),
        Response::Ok("queued 2 paths".into()),
        Response::Error("uid 1000 may not enqueue".into()),
    ] {
        assert_eq!(Response::parse(&response.encode()), Some(response));
    }
    assert_eq!(Response::parse(b"HTTP/1.1 200 OK\n"), None);
    assert_eq!(Response::parse(b"ok\nok\n"), None);
    assert_eq!(Response::parse(&[0xff, 0x0a]), None);
}

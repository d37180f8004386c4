//! Property tests of target URLs: any text, and `s3://`/`file://` URLs with arbitrary
//! parameters, give a target or an error, never a panic. (`Display` is a description for
//! logs, not the URL, so there is no round trip to check.)

use proptest::prelude::*;

use super::*;

fn target_text() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![Just("s3://"), Just("file://"), Just("http://"), Just("")];
    let parameter = prop_oneof![
        Just("endpoint"),
        Just("region"),
        Just("profile"),
        Just("anonymous"),
        Just("priority"),
        Just("other"),
    ];
    let parameters = prop::collection::vec((parameter, ".{0,20}"), 0..5);
    (scheme, ".{0,20}", parameters).prop_map(|(scheme, base, parameters)| {
        let query: Vec<String> = parameters
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if query.is_empty() {
            format!("{scheme}{base}")
        } else {
            format!("{scheme}{base}?{}", query.join("&"))
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in ".*") {
        let _ = TargetUrl::parse(&text);
    }

    #[test]
    fn url_shaped_text_parses_or_fails(text in target_text()) {
        if let Ok(TargetUrl::File { dir, .. }) = TargetUrl::parse(&text) {
            prop_assert!(dir.is_absolute(), "{}", dir.display());
        }
    }
}

//! Target URLs (`s3://BUCKET?…`, `file:///DIR`, `sink::url`) and upstream cache URLs
//! (`https://…`, `file://…`, `upstream`), from the config file and the command line. Any text
//! gives a URL or an error, never a panic; a target names a bucket or an absolute directory,
//! and an upstream's HTTP base ends in `/` (object keys are joined to it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush::sink::url::TargetUrl;
use narpush::upstream::UpstreamUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(target) = TargetUrl::parse(text) {
        let _ = target.to_string();
        let _ = target.params();
        match &target {
            TargetUrl::File { dir, .. } => assert!(dir.is_absolute(), "{dir:?}"),
            TargetUrl::S3(s3) => {
                assert!(!s3.bucket.is_empty());
                assert!(!s3.region.is_empty());
                if let Some(endpoint) = &s3.endpoint {
                    assert!(endpoint.contains("://"), "{endpoint}");
                }
            }
        }
    }
    if let Ok(upstream) = UpstreamUrl::parse(text) {
        let _ = upstream.to_string();
        match &upstream {
            UpstreamUrl::Http(url) => assert!(url.path().ends_with('/'), "{url}"),
            UpstreamUrl::File(dir) => assert!(dir.is_absolute(), "{dir:?}"),
        }
    }
});

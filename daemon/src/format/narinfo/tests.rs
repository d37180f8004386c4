//! Golden tests for the narinfo format: real Nix 2.8 output and a cache.nixos.org signature.

use super::*;

/// Written by Nix 2.8.0 `nix copy --to file://…` (reference §3.1); note `References: `.
const NIX_2_8_OUTPUT: &str = "\
StorePath: /nix/store/gzdb5s0g38fn1wbbpf59ln6najdlyzv1-probe-a
URL: nar/1390xzjjp1rbfi9ndw3cckm8psi751pmjg2ljkml5wp9lrvmp2bn.nar.xz
Compression: xz
FileHash: sha256:1390xzjjp1rbfi9ndw3cckm8psi751pmjg2ljkml5wp9lrvmp2bn
FileSize: 128
NarHash: sha256:0gf7wp8fgn0vfj61m6iqffj3lgm3v48kif2mbixv7ra55vwf6j51
NarSize: 120
References: \n\
Deriver: 19jhrclzk7pxp1cymdyqw7pgx2ng5za8-probe-a.drv
Sig: test-1:EjU8K9rMLpKuKyDybSL191zbAJYtd+jCWS0zN8ly0gshEgfHXcQc9OPjJAbNtsK0z+0RICUGBRRMkkDAqWN9CQ==
";

/// The curl-7.82.0-bin path from cache.nixos.org (reference §4.1). StorePath, NarHash,
/// NarSize, References and Sig are the real values; the other fields are illustrative.
/// References are deliberately unsorted here.
const CURL: &str = "\
StorePath: /nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin
URL: nar/05ra3y72i3qjri7xskf9qj8kb29r6naqy1sqpbs3azi3xcigmj56.nar.xz
Compression: xz
NarHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0
NarSize: 196040
References: yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n 0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0 j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12 6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115
Sig: cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ==
";

const CURL_FINGERPRINT: &str = "1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n";

const CACHE_NIXOS_ORG_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

fn probe() -> NarInfo {
    NarInfo::parse(NIX_2_8_OUTPUT).unwrap()
}

#[test]
fn real_nix_output_round_trips_byte_for_byte() {
    let info = probe();
    assert!(info.references.is_empty());
    assert_eq!(
        info.deriver.as_deref(),
        Some("19jhrclzk7pxp1cymdyqw7pgx2ng5za8-probe-a.drv")
    );
    assert_eq!(info.file_size, Some(128));
    assert_eq!(info.nar_size, 120);
    assert_eq!(info.to_string(), NIX_2_8_OUTPUT);
    info.validate().unwrap();
    assert_eq!(NarInfo::parse(&info.to_string()).unwrap(), info);
}

#[test]
fn empty_references_are_written_with_the_trailing_space() {
    assert!(probe().to_string().contains("\nReferences: \nDeriver: "));
}

#[test]
fn curl_fingerprint_matches_the_golden_string_and_its_signature_verifies() {
    let info = NarInfo::parse(CURL).unwrap();
    assert_eq!(info.fingerprint().unwrap(), CURL_FINGERPRINT);
    let key = VerifyingKey::parse(CACHE_NIXOS_ORG_KEY).unwrap();
    assert!(info.verify_signature(&key));

    let mut tampered = info.clone();
    tampered.nar_size += 1;
    assert!(!tampered.verify_signature(&key));
}

#[test]
fn references_are_written_as_sorted_deduplicated_basenames() {
    let mut info = NarInfo::parse(CURL).unwrap();
    info.references.push(info.references[0].clone());
    let text = info.to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("References: "))
        .unwrap();
    assert_eq!(
        line,
        "References: 0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0 \
         6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115 \
         j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12 \
         yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
    );
    assert_eq!(info.fingerprint().unwrap(), CURL_FINGERPRINT);
}

#[test]
fn fields_are_written_in_nix_order_with_optional_ones_omitted() {
    let mut info = probe();
    info.file_hash = None;
    info.file_size = None;
    info.deriver = None;
    info.system = Some("x86_64-linux".into());
    info.ca = Some("fixed:r:sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0".into());
    info.signatures.insert(0, "z-2:AAAA".into());
    let text = info.to_string();
    let keys: Vec<&str> = text
        .lines()
        .map(|l| l.split_once(": ").unwrap().0)
        .collect();
    let expected = [
        "StorePath",
        "URL",
        "Compression",
        "NarHash",
        "NarSize",
        "References",
        "System",
        "Sig",
        "Sig",
        "CA",
    ];
    assert_eq!(keys, expected);
    assert!(text.contains("Sig: test-1:EjU8K9rM"));
    assert!(text.ends_with(
        "Sig: z-2:AAAA\nCA: fixed:r:sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0\n"
    ));
}

#[test]
fn parsing_is_lenient_where_nix_is() {
    let text = "\
Sig: test-1:abc
X-Unknown: whatever
Unknown-Without-Space:x
NarSize: 120
NarHash: sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=
FileHash: sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13
URL: nar/x.nar
Deriver: unknown-deriver
StorePath: /nix/store/gzdb5s0g38fn1wbbpf59ln6najdlyzv1-probe-a
";
    let info = NarInfo::parse(text).unwrap();
    assert_eq!(info.compression, "bzip2");
    assert_eq!(info.deriver, None);
    assert_eq!(info.nar_hash, info.file_hash.unwrap());
    assert_eq!(
        info.nar_hash.to_string(),
        "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
    );
    assert_eq!(info.signatures, ["test-1:abc"]);
    assert!(info.references.is_empty());
}

#[test]
fn malformed_narinfos_are_rejected_with_the_field_named() {
    let without = |key: &str| -> String {
        NIX_2_8_OUTPUT
            .lines()
            .filter(|l| !l.starts_with(key))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let with_line = |line: &str| format!("{NIX_2_8_OUTPUT}{line}\n");
    let replaced = |from: &str, to: &str| NIX_2_8_OUTPUT.replace(from, to);

    let cases: Vec<(String, &str)> = vec![
        (without("StorePath"), "narinfo has no StorePath field"),
        (without("URL"), "narinfo has no URL field"),
        (without("NarHash"), "narinfo has no NarHash field"),
        (without("NarSize"), "narinfo has no NarSize field"),
        (
            replaced("NarSize: 120", "NarSize: 0"),
            "NarSize of /nix/store/gzdb5s0g38fn1wbbpf59ln6najdlyzv1-probe-a is 0",
        ),
        (
            replaced(
                "URL: nar/1390xzjjp1rbfi9ndw3cckm8psi751pmjg2ljkml5wp9lrvmp2bn.nar.xz",
                "URL: ",
            ),
            "narinfo field URL is empty",
        ),
        (
            with_line("References: "),
            "narinfo has more than one References field",
        ),
        (
            with_line("CA: text:sha256:x") + "CA: text:sha256:y\n",
            "narinfo has more than one CA field",
        ),
        (
            NIX_2_8_OUTPUT.trim_end().to_owned(),
            "narinfo does not end with a newline",
        ),
        (
            replaced("NarSize: 120", "NarSize:120"),
            "lacks the space after 'NarSize:'",
        ),
        (with_line("no colon here"), "has no ':': 'no colon here'"),
        (
            replaced("NarSize: 120", "NarSize: 12x"),
            "invalid number '12x'",
        ),
        (
            replaced("NarHash: sha256:", "NarHash: md5:"),
            "field NarHash holds an invalid hash 'md5:",
        ),
        (
            replaced("Deriver: ", "Deriver: /nix/store/"),
            "field Deriver holds an invalid store path '/nix/store/19jh",
        ),
        (
            replaced(
                "References: ",
                "References: /nix/store/gzdb5s0g38fn1wbbpf59ln6najdlyzv1-probe-a",
            ),
            "field References holds an invalid store path '/nix/store/gzdb",
        ),
        (
            replaced("\n", "\r\n"),
            "StorePath holds an invalid store path",
        ),
    ];
    for (text, expected) in cases {
        let err = NarInfo::parse(&text).unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "got '{err}', wanted '{expected}' for:\n{text}"
        );
    }
}

#[test]
fn fingerprint_of_an_unknown_size_is_an_error_not_a_panic() {
    let mut info = probe();
    info.nar_size = 0;
    assert!(matches!(
        info.fingerprint(),
        Err(NarInfoError::ZeroNarSize { .. })
    ));
    let key = SigningKey::generate("k-1").unwrap();
    assert!(info.add_signature(&key).is_err());
    assert!(!info.verify_signature(&key.public_key()));
}

#[test]
fn added_signature_verifies_and_is_not_added_twice() {
    let mut info = NarInfo::parse(CURL).unwrap();
    let key = SigningKey::generate("narpush-test-1").unwrap();
    assert!(!info.verify_signature(&key.public_key()));
    info.add_signature(&key).unwrap();
    info.add_signature(&key).unwrap();
    assert_eq!(info.signatures.len(), 2);
    assert!(info.verify_signature(&key.public_key()));
    assert!(info.verify_signature(&VerifyingKey::parse(CACHE_NIXOS_ORG_KEY).unwrap()));
    let reparsed = NarInfo::parse(&info.to_string()).unwrap();
    assert!(reparsed.verify_signature(&key.public_key()));
}

#[test]
fn validate_catches_what_display_cannot_report() {
    let mut info = probe();
    info.system = Some("x86_64-linux\nSig: forged:AAAA".into());
    assert!(matches!(
        info.validate(),
        Err(NarInfoError::LineBreak {
            field: "System",
            ..
        })
    ));
    let mut info = probe();
    info.url.clear();
    assert!(matches!(
        info.validate(),
        Err(NarInfoError::EmptyField { field: "URL" })
    ));
}

use super::*;

/// `nix realisation info --json` for two floating content-addressed derivations (golden-b
/// refers to golden-a), built by Nix 2.8.0 with `secret-key-files` = [`GOLDEN_SECRET`].
const NIX_SIGNED: &str = r#"[{"dependentRealisations":{"sha256:b1021ac854064baf92539967e6b2e2adf7c57eac9fb7b6a2ee282af888ac9905!out":"azdyzx3nvc6202vriq7ydhf5d8bsd2w8-golden-a"},"id":"sha256:24003fc25ae2f95419aaf579b7d0403a7a77a4b7dc17fd490b7aac42f2107332!out","outPath":"b480g4b0vfxrd6blrl3mfrrd012hrgqf-golden-b","signatures":["golden-test-1:tzDchKGA3/7m38UiRcAapM7Qz9bg/GPD+nytxRhDKqgyDvyDBM8fm6cd89cKhSVSSyWWmcIh+Fl7ElJRsactAQ=="]},{"dependentRealisations":{},"id":"sha256:b1021ac854064baf92539967e6b2e2adf7c57eac9fb7b6a2ee282af888ac9905!out","outPath":"azdyzx3nvc6202vriq7ydhf5d8bsd2w8-golden-a","signatures":["golden-test-1:Le7Zf22FIbjbUUk3AtJ6PEykuTfndxGT4vO2QL+4/gV0d4cIXZ+dqGsNbZkIuUs6MrenDEUmTZ1XWKvSkVkTCQ=="]}]"#;

/// The key of `nix key generate-secret --key-name golden-test-1` that signed [`NIX_SIGNED`]
/// (a throwaway test key).
const GOLDEN_SECRET: &str = "golden-test-1:WScKYgEhxrZ0cgXrWtcZ27AdpTlFw3QCEoU7Bio7j++I+UuolfQhHEyLwnTRCWEu0f/IJGVg0LLpwX2G7hlu/Q==";
const GOLDEN_PUBLIC: &str = "golden-test-1:iPlLqJX0IRxMi8J00QlhLtH/yCRlYNCy6cF9hu4Zbv0=";

fn golden() -> Vec<Realisation> {
    Realisation::list_from_json(NIX_SIGNED).unwrap()
}

#[test]
fn nix_realisation_info_is_parsed_with_its_dependencies() {
    let [b, a] = <[Realisation; 2]>::try_from(golden()).unwrap();
    assert_eq!(
        b.id.to_string(),
        "sha256:24003fc25ae2f95419aaf579b7d0403a7a77a4b7dc17fd490b7aac42f2107332!out"
    );
    assert_eq!(b.out_path.name(), "golden-b");
    assert_eq!(
        b.dependent_realisations.get(&a.id),
        Some(&a.out_path),
        "golden-b depends on golden-a's realisation"
    );
    assert!(a.dependent_realisations.is_empty());
}

#[test]
fn our_signature_is_the_one_nix_made() {
    let key = SigningKey::parse(GOLDEN_SECRET).unwrap();
    for nix_signed in golden() {
        let mut ours = nix_signed.clone();
        ours.signatures.clear();
        ours.sign(&key);
        assert_eq!(ours.signatures, nix_signed.signatures, "{}", nix_signed.id);
        let public = VerifyingKey::parse(GOLDEN_PUBLIC).unwrap();
        assert!(nix_signed.verify_signature(&public));
    }
}

#[test]
fn fingerprint_is_nix_json_without_signatures() {
    let b = &golden()[0];
    assert_eq!(
        b.fingerprint(),
        r#"{"dependentRealisations":{"sha256:b1021ac854064baf92539967e6b2e2adf7c57eac9fb7b6a2ee282af888ac9905!out":"azdyzx3nvc6202vriq7ydhf5d8bsd2w8-golden-a"},"id":"sha256:24003fc25ae2f95419aaf579b7d0403a7a77a4b7dc17fd490b7aac42f2107332!out","outPath":"b480g4b0vfxrd6blrl3mfrrd012hrgqf-golden-b"}"#
    );
}

#[test]
fn doi_json_round_trips_byte_for_byte() {
    let list: Vec<Value> = serde_json::from_str(NIX_SIGNED).unwrap();
    for (value, realisation) in list.iter().zip(golden()) {
        // What Nix prints is what it writes to `realisations/<id>.doi`.
        assert_eq!(realisation.to_json(), value.to_string());
        assert_eq!(
            Realisation::from_json(realisation.to_json().as_bytes()).unwrap(),
            realisation
        );
    }
}

#[test]
fn absolute_out_paths_are_accepted() {
    let json = r#"{"id":"sha256:b1021ac854064baf92539967e6b2e2adf7c57eac9fb7b6a2ee282af888ac9905!out","outPath":"/nix/store/azdyzx3nvc6202vriq7ydhf5d8bsd2w8-golden-a"}"#;
    let parsed = Realisation::from_json(json.as_bytes()).unwrap();
    assert_eq!(parsed.out_path.name(), "golden-a");
    assert!(parsed.signatures.is_empty());
}

#[test]
fn malformed_realisations_are_errors_naming_the_problem() {
    let cases = [
        (
            r#"{"outPath":"azdyzx3nvc6202vriq7ydhf5d8bsd2w8-a"}"#,
            "field 'id'",
        ),
        (
            r#"{"id":"sha256:b1021ac854064baf92539967e6b2e2adf7c57eac9fb7b6a2ee282af888ac9905","outPath":"azdyzx3nvc6202vriq7ydhf5d8bsd2w8-a"}"#,
            "no '!'",
        ),
        (
            r#"{"id":"sha256:b1021a!out","outPath":"azdyzx3nvc6202vriq7ydhf5d8bsd2w8-a"}"#,
            "64 hex",
        ),
        (
            r#"{"id":"sha256:b1021ac854064baf92539967e6b2e2adf7c57eac9fb7b6a2ee282af888ac9905!../x","outPath":"azdyzx3nvc6202vriq7ydhf5d8bsd2w8-a"}"#,
            "output name",
        ),
        (
            r#"{"id":"sha256:b1021ac854064baf92539967e6b2e2adf7c57eac9fb7b6a2ee282af888ac9905!out","outPath":"not-a-path"}"#,
            "'not-a-path'",
        ),
        ("[", "not valid JSON"),
    ];
    for (json, expected) in cases {
        let error = Realisation::from_json(json.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{json}: {error}");
    }
}

#[test]
fn the_queue_keeps_the_resolved_derivation_and_the_cache_object_does_not() {
    let mut realisation = golden()[1].clone();
    let drv = StorePath::from_basename("azdyzx3nvc6202vriq7ydhf5d8bsd2w8-golden-a.drv").unwrap();
    realisation.drv = Some(drv);
    let kept = realisation.to_queue_json();
    assert_eq!(
        Realisation::from_json(kept.as_bytes()).unwrap(),
        realisation
    );
    assert!(!realisation.to_json().contains(QUEUE_DRV_FIELD));
    assert_eq!(
        kept,
        format!(
            "{},\"narpushResolvedDrv\":\"azdyzx3nvc6202vriq7ydhf5d8bsd2w8-golden-a.drv\"}}",
            &realisation.to_json()[..realisation.to_json().len() - 1]
        )
    );
    // Records written before the field existed read back without it.
    let old = golden()[1].to_json();
    assert_eq!(Realisation::from_json(old.as_bytes()).unwrap().drv, None);
}

#[test]
fn a_bad_resolved_drv_field_costs_the_field_not_the_realisation() {
    let text = format!(
        "{{\"dependentRealisations\":{{}},\"id\":\"sha256:{}!out\",\"outPath\":\"azdyzx3nvc6202vriq7ydhf5d8bsd2w8-golden-a\",\"signatures\":[],\"narpushResolvedDrv\":3}}",
        "1".repeat(64)
    );
    let realisation = Realisation::from_json(text.as_bytes()).unwrap();
    assert_eq!(realisation.drv, None);
    assert_eq!(realisation.out_path.name(), "golden-a");
}

//! `nix path-info` output of every shape, store-path arguments, and running `nix` itself.

use super::*;

/// Real output of `nix path-info --json -r` on Nix 2.8.0 (array shape).
const NIX_2_8: &str = r#"[{"path":"/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep","narHash":"sha256-EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY=","narSize":120,"references":[],"deriver":"/nix/store/jwihwvfi1z8bz011531wwz4zp9kwkax2-dep.drv","registrationTime":1795567007,"ultimate":true},{"path":"/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-top","narHash":"sha256-HCLuJvZsL5HuW5SY3bg4T4lgE5Af1pWjZHsm2aaoigQ=","narSize":520,"references":["/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep"],"deriver":"/nix/store/lkb8q51gz5lbr6pf1q7yzyxnim1c6lca-top.drv","registrationTime":1795567007,"ultimate":true}]"#;

/// The same paths in the shape of Nix 2.19–2.32: an object keyed by path, with signatures
/// and a content address.
const NIX_2_19: &str = r#"{"/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep":{"ca":"fixed:r:sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0","deriver":"/nix/store/jwihwvfi1z8bz011531wwz4zp9kwkax2-dep.drv","narHash":"sha256-EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY=","narSize":120,"references":[],"registrationTime":1795567007,"signatures":["test-1:abc"],"ultimate":false},"/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-top":{"ca":null,"deriver":"/nix/store/lkb8q51gz5lbr6pf1q7yzyxnim1c6lca-top.drv","narHash":"sha256-HCLuJvZsL5HuW5SY3bg4T4lgE5Af1pWjZHsm2aaoigQ=","narSize":520,"references":["/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep"],"registrationTime":1795567007,"signatures":[],"ultimate":true}}"#;

/// Format v2 (Nix 2.33+): basenames and structured hashes.
const NIX_V2: &str = r#"{"wzvc6ccn1xj0k81dchnwx909za0xxqpx-top":{"version":2,"path":"wzvc6ccn1xj0k81dchnwx909za0xxqpx-top","ca":{"method":"nar","hash":{"algorithm":"sha256","format":"base64","hash":"QHvNm2CLenj5iFkwws4fyvrgl30xzNQ/wemYy0damqw="}},"deriver":"lkb8q51gz5lbr6pf1q7yzyxnim1c6lca-top.drv","narHash":{"algorithm":"sha256","format":"base16","hash":"1c22ee26f66c2f91ee5b9498ddb8384f896013901fd695a3647b26d9a6a88a04"},"narSize":520,"references":["9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep"],"storeDir":"/nix/store"}}"#;

fn top_of(infos: &[PathInfo]) -> &PathInfo {
    infos
        .iter()
        .find(|i| i.path.name() == "top")
        .expect("top is in the parsed output")
}

#[test]
fn nix_2_8_array_shape_parses_with_references_and_deriver() {
    let infos = parse_path_info_json(NIX_2_8).unwrap();
    assert_eq!(infos.len(), 2);
    let top = top_of(&infos);
    assert_eq!(top.nar_size, 520);
    assert_eq!(
        top.nar_hash.to_string(),
        Sha256::parse("sha256-HCLuJvZsL5HuW5SY3bg4T4lgE5Af1pWjZHsm2aaoigQ=")
            .unwrap()
            .to_string()
    );
    assert_eq!(
        top.references[0].to_absolute(),
        "/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep"
    );
    assert_eq!(
        top.deriver.as_ref().unwrap().basename(),
        "lkb8q51gz5lbr6pf1q7yzyxnim1c6lca-top.drv"
    );
}

#[test]
fn nix_2_19_object_shape_gives_the_same_metadata_as_2_8() {
    let old = parse_path_info_json(NIX_2_8).unwrap();
    let new = parse_path_info_json(NIX_2_19).unwrap();
    assert_eq!(top_of(&old), top_of(&new));
    let dep = new.iter().find(|i| i.path.name() == "dep").unwrap();
    assert_eq!(dep.signatures, vec!["test-1:abc".to_owned()]);
    assert_eq!(
        dep.ca.as_deref(),
        Some("fixed:r:sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0")
    );
}

#[test]
fn format_v2_basenames_and_structured_hashes_parse() {
    let infos = parse_path_info_json(NIX_V2).unwrap();
    let top = &infos[0];
    let old = parse_path_info_json(NIX_2_8).unwrap();
    assert_eq!(top.nar_hash, top_of(&old).nar_hash);
    assert_eq!(top.references, top_of(&old).references);
    assert_eq!(top.deriver, top_of(&old).deriver);
    assert_eq!(
        top.ca.as_deref(),
        Some("fixed:r:sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0")
    );
}

#[test]
fn invalid_path_in_object_shape_is_an_error_naming_it() {
    let err = parse_path_info_json(r#"{"/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep":null}"#)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep"),
        "{err}"
    );
}

#[test]
fn the_path_nix_calls_invalid_is_found_in_its_message() {
    let error = StoreError::CommandFailed {
        command: "nix path-info".to_owned(),
        stderr: "don't know how to build these paths:\n  /nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep\nerror: path '/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep' is not valid".to_owned(),
    };
    assert_eq!(invalid_path_in(&error).unwrap().name(), "dep");
    let other = StoreError::CommandFailed {
        command: "nix path-info".to_owned(),
        stderr: "error: cannot open connection to remote store 'daemon'".to_owned(),
    };
    assert!(invalid_path_in(&other).is_none());
}

#[test]
fn zero_nar_size_is_rejected_with_the_field_name() {
    let json = NIX_2_8.replace("\"narSize\":120", "\"narSize\":0");
    let err = parse_path_info_json(&json).unwrap_err();
    assert!(err.to_string().contains("narSize"), "{err}");
}

#[test]
fn arguments_inside_a_store_path_resolve_to_that_path() {
    let p =
        resolve_store_path_arg("/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep/bin/x").unwrap();
    assert_eq!(p.basename(), "9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep");
}

#[test]
fn arguments_outside_the_store_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = resolve_store_path_arg(dir.path().to_str().unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::OutsideStore { .. }), "{err}");
    assert!(err.to_string().contains("is not in the Nix store"));
}

#[test]
fn dot_dot_tricks_do_not_escape_the_check() {
    let err = resolve_store_path_arg("/nix/store/../../etc/passwd").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OutsideStore { .. } | StoreError::InvalidStorePath { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_and_reported() {
    let marker = format!("{}", 3_000_000 + std::process::id());
    let started = std::time::Instant::now();
    let result = run_command(
        "sleep",
        std::slice::from_ref(&marker),
        std::time::Duration::from_millis(200),
    )
    .await;
    assert!(
        matches!(result, Err(StoreError::TimedOut { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // kill_on_drop sends SIGKILL at once; give the kernel a moment to reap it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let alive = std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|cmdline| cmdline == format!("sleep\0{marker}\0").into_bytes())
    });
    assert!(!alive, "the timed-out child is still running");
}

#[tokio::test]
async fn a_timed_out_command_takes_the_processes_it_started_with_it() {
    let marker = format!("{}", 4_000_000 + std::process::id());
    // Like a `nix` that started a helper of its own and waits for it.
    let script = format!("sleep {marker} & wait");
    let result = run_command(
        "/bin/sh",
        &["-c".to_owned(), script],
        std::time::Duration::from_millis(300),
    )
    .await;
    assert!(
        matches!(result, Err(StoreError::TimedOut { .. })),
        "{result:?}"
    );
    let grandchild_alive = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|cmdline| cmdline == format!("sleep\0{marker}\0").into_bytes())
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while grandchild_alive() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!grandchild_alive(), "the command's child outlived it");
}

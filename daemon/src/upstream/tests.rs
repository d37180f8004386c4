use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::format::hash::Sha256;
use crate::format::narinfo::NarInfo;
use crate::format::signing::SigningKey;

fn path(name: &str) -> StorePath {
    StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-{name}")).unwrap()
}

fn info(signatures: Vec<String>) -> PathInfo {
    PathInfo {
        path: path("hello"),
        nar_hash: Sha256::digest(b"nar"),
        nar_size: 120,
        references: vec![path("hello")],
        deriver: None,
        ca: None,
        signatures,
    }
}

fn signed_info(key: &SigningKey) -> PathInfo {
    let mut info = info(Vec::new());
    let sig = key.sign(&fingerprint(
        &info.path,
        &info.nar_hash,
        info.nar_size,
        &info.references,
    ));
    info.signatures.push(sig);
    info
}

/// The NAR every narinfo of [`narinfo_text`] names.
const NAR: &str = "nar/x.nar.zst";

fn narinfo_text(key: Option<&SigningKey>, of: &StorePath) -> String {
    narinfo_at(key, of, NAR)
}

fn narinfo_at(key: Option<&SigningKey>, of: &StorePath, nar_url: &str) -> String {
    let mut narinfo = NarInfo {
        store_path: of.clone(),
        url: nar_url.to_owned(),
        compression: "zstd".to_owned(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256::digest(b"nar"),
        nar_size: 120,
        references: Vec::new(),
        deriver: None,
        system: None,
        signatures: Vec::new(),
        ca: None,
    };
    if let Some(key) = key {
        narinfo.add_signature(key).unwrap();
    }
    narinfo.to_string()
}

#[test]
fn urls_of_the_three_kinds_parse_and_others_are_refused() {
    let UpstreamUrl::Http(url) = UpstreamUrl::parse("https://cache.example.org/sub").unwrap()
    else {
        panic!("not http");
    };
    assert_eq!(url.as_str(), "https://cache.example.org/sub/");
    assert_eq!(
        UpstreamUrl::parse("file:///srv/cache").unwrap(),
        UpstreamUrl::File(PathBuf::from("/srv/cache"))
    );
    let err = UpstreamUrl::parse("s3://bucket").unwrap_err().to_string();
    assert!(err.contains("s3"), "{err}");
    assert!(UpstreamUrl::parse("not a url").is_err());
}

#[test]
fn a_valid_signature_by_an_upstream_key_marks_the_path_as_upstream() {
    let upstream_key = SigningKey::generate("upstream-1").unwrap();
    let upstream = Upstream::new(Vec::new(), vec![upstream_key.public_key()]);
    assert!(upstream.signed_by_upstream(&signed_info(&upstream_key)));
    assert!(!upstream.signed_by_upstream(&info(Vec::new())));
}

#[test]
fn a_signature_under_the_right_name_by_another_key_does_not() {
    let upstream_key = SigningKey::generate("upstream-1").unwrap();
    let impostor = SigningKey::generate("upstream-1").unwrap();
    let upstream = Upstream::new(Vec::new(), vec![upstream_key.public_key()]);
    assert!(!upstream.signed_by_upstream(&signed_info(&impostor)));
    // Nor does a signature of other data.
    let mut tampered = signed_info(&upstream_key);
    tampered.nar_size += 1;
    assert!(!upstream.signed_by_upstream(&tampered));
    assert!(!Upstream::off().signed_by_upstream(&signed_info(&upstream_key)));
}

#[tokio::test]
async fn a_file_cache_serves_only_narinfos_of_the_path_signed_by_an_upstream_key() {
    let key = SigningKey::generate("upstream-1").unwrap();
    let other = SigningKey::generate("other-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |of: &StorePath, text: String| {
        std::fs::write(dir.path().join(format!("{}.narinfo", of.hash_part())), text).unwrap()
    };
    let caches = || vec![UpstreamUrl::File(dir.path().to_owned()).into()];
    std::fs::create_dir_all(dir.path().join("nar")).unwrap();
    std::fs::write(dir.path().join(NAR), b"nar").unwrap();

    let served = path("served");
    write(&served, narinfo_text(Some(&key), &served));
    let upstream = Upstream::new(caches(), vec![key.public_key()]);
    assert_eq!(upstream.serves(&served).await, Some(120));

    let unsigned = StorePath::from_basename("0jm1vj6j3ixsz2x5s77jxchbljjfn6s6-unsigned").unwrap();
    write(&unsigned, narinfo_text(Some(&other), &unsigned));
    assert_eq!(upstream.serves(&unsigned).await, None);

    let absent = StorePath::from_basename("1jm1vj6j3ixsz2x5s77jxchbljjfn6s6-absent").unwrap();
    assert_eq!(upstream.serves(&absent).await, None);

    let mismatched = StorePath::from_basename("2jm1vj6j3ixsz2x5s77jxchbljjfn6s6-mine").unwrap();
    write(&mismatched, narinfo_text(Some(&key), &served));
    assert_eq!(upstream.serves(&mismatched).await, None);
}

#[tokio::test]
async fn a_cache_that_does_not_answer_is_asked_once_per_outage() {
    // A port nothing listens on: the connection is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = SigningKey::generate("upstream-1").unwrap();
    let url = UpstreamUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let upstream = Upstream::new(vec![url.into()], vec![key.public_key()]);
    assert_eq!(upstream.serves(&path("a")).await, None);
    assert!(lock(&upstream.caches[0].down_until).is_some());
    // Listening now, but down: the second lookup must not connect.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    assert_eq!(upstream.serves(&path("b")).await, None);
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a cache marked down was asked: {accepted:?}"
    );
}

#[tokio::test]
async fn no_answer_is_told_from_not_served_and_not_remembered() {
    // Found by the simulation with push filters: an upstream outage taken for "not served"
    // made the engine skip (for good) an excluded path that the upstream serves.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = SigningKey::generate("upstream-1").unwrap();
    let url = UpstreamUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let upstream = Upstream::new(vec![url.into()], vec![key.public_key()]);
    assert_eq!(upstream.answer(&path("a")).await, Answer::NoAnswer);
    assert!(
        lock(&upstream.answers).is_empty(),
        "no answer is not remembered as \"not served\""
    );
    // Marked down: not asked, and still no answer (not "not served").
    assert_eq!(upstream.answer(&path("a")).await, Answer::NoAnswer);
    assert_eq!(upstream.serves(&path("a")).await, None);

    let dir = tempfile::tempdir().unwrap();
    let answering = Upstream::new(
        vec![
            UpstreamUrl::parse(&format!("file://{}", dir.path().display()))
                .unwrap()
                .into(),
        ],
        vec![key.public_key()],
    );
    assert_eq!(answering.answer(&path("a")).await, Answer::NotServed);
    assert_eq!(lock(&answering.answers).len(), 1, "an answer is remembered");
}

#[tokio::test]
async fn an_endless_answer_is_cut_off_at_the_narinfo_limit_not_read_until_the_timeout() {
    use tokio::io::AsyncWriteExt;
    // A server that sends more than any narinfo, then holds the connection open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/x-nix-narinfo\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..(2 * MAX_NARINFO / chunk.len()) {
            if socket.write_all(&chunk).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(REQUEST_TIMEOUT * 2).await;
    });
    let key = SigningKey::generate("upstream-1").unwrap();
    let url = UpstreamUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let upstream = Upstream::new(vec![url.into()], vec![key.public_key()]);
    let started = Instant::now();
    assert_eq!(upstream.serves(&path("a")).await, None);
    assert!(
        started.elapsed() < REQUEST_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert!(
        lock(&upstream.caches[0].down_until).is_none(),
        "it answered (too much): not down"
    );
    server.abort();
}

#[tokio::test]
async fn a_file_cache_answer_beyond_the_limit_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate("upstream-1").unwrap();
    let served = path("a");
    let mut text = narinfo_text(Some(&key), &served);
    text.push_str(&"x".repeat(MAX_NARINFO));
    std::fs::write(
        dir.path().join(format!("{}.narinfo", served.hash_part())),
        text,
    )
    .unwrap();
    let file = dir.path().join(format!("{}.narinfo", served.hash_part()));
    assert!(matches!(read_file(&file).await, Reply::TooLarge(at) if at.contains(".narinfo")));
}

#[tokio::test]
async fn a_cache_url_with_credentials_is_shown_and_reported_without_them() {
    let url = UpstreamUrl::parse("http://user:SECRETtoken@127.0.0.1:1/").unwrap();
    assert_eq!(url.to_string(), "http://user:***@127.0.0.1:1/");
    let UpstreamUrl::Http(base) = &url else {
        panic!("expected an http cache")
    };
    let upstream = Upstream::new(vec![url.clone().into()], Vec::new());
    match upstream
        .request(reqwest::Method::GET, base, "x.narinfo")
        .await
    {
        Reply::Unreachable(reason) => assert!(!reason.contains("SECRETtoken"), "{reason}"),
        _ => panic!("nothing listens on port 1"),
    }
    let error = UpstreamUrl::parse("gopher://user:SECRETtoken@host/").unwrap_err();
    assert!(!error.to_string().contains("SECRETtoken"), "{error}");
}

/// A directory cache: `narinfos` written as given, and the NARs named in `nars`.
fn file_cache(narinfos: &[(&StorePath, String)], nars: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (of, text) in narinfos {
        std::fs::write(dir.path().join(format!("{}.narinfo", of.hash_part())), text).unwrap();
    }
    for nar in nars {
        let file = dir.path().join(nar);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, b"nar").unwrap();
    }
    dir
}

fn file_url(dir: &tempfile::TempDir) -> UpstreamUrl {
    UpstreamUrl::File(dir.path().to_owned())
}

#[tokio::test]
async fn a_trusted_narinfo_without_its_nar_serves_nothing() {
    let key = SigningKey::generate("upstream-1").unwrap();
    let with_nar = path("with-nar");
    let without = StorePath::from_basename("0jm1vj6j3ixsz2x5s77jxchbljjfn6s6-without-nar").unwrap();
    let dir = file_cache(
        &[
            (
                &with_nar,
                narinfo_at(Some(&key), &with_nar, "nar/with.nar.zst"),
            ),
            (
                &without,
                narinfo_at(Some(&key), &without, "nar/gone.nar.zst"),
            ),
        ],
        &["nar/with.nar.zst"],
    );
    let upstream = Upstream::new(vec![file_url(&dir).into()], vec![key.public_key()]);
    assert_eq!(upstream.serves(&with_nar).await, Some(120));
    assert_eq!(upstream.serves(&without).await, None);
}

#[tokio::test]
async fn a_narinfo_naming_a_nar_outside_its_cache_serves_nothing() {
    let key = SigningKey::generate("upstream-1").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x.nar"), b"nar").unwrap();
    let escaping = format!(
        "../{}/x.nar",
        outside.path().file_name().unwrap().to_string_lossy()
    );
    for (i, url) in [
        escaping.as_str(),
        "/etc/hostname",
        "https://elsewhere.example/nar/x.nar",
        "nar//x.nar",
    ]
    .into_iter()
    .enumerate()
    {
        let of =
            StorePath::from_basename(&format!("{i}jm1vj6j3ixsz2x5s77jxchbljjfn6s6-out")).unwrap();
        let dir = file_cache(&[(&of, narinfo_at(Some(&key), &of, url))], &[]);
        let upstream = Upstream::new(vec![file_url(&dir).into()], vec![key.public_key()]);
        assert_eq!(upstream.serves(&of).await, None, "{url}");
    }
    assert_eq!(
        address::nar_location("nar/1abc.nar.xz"),
        Some("nar/1abc.nar.xz")
    );
}

#[tokio::test]
async fn a_key_tied_to_a_cache_counts_only_for_that_cache() {
    let ours = SigningKey::generate("company-1").unwrap();
    let theirs = SigningKey::generate("other-1").unwrap();
    let a = path("a");
    let b = StorePath::from_basename("1jm1vj6j3ixsz2x5s77jxchbljjfn6s6-b").unwrap();
    // The company cache holds `a` signed by its key; the other cache replays that narinfo
    // and holds `b` signed by the company key too.
    let company = file_cache(&[(&a, narinfo_text(Some(&ours), &a))], &[NAR]);
    let other = file_cache(
        &[
            (&a, narinfo_text(Some(&ours), &a)),
            (&b, narinfo_text(Some(&ours), &b)),
        ],
        &[NAR],
    );
    let caches = vec![
        UpstreamCache {
            url: file_url(&other),
            keys: Some(vec![theirs.public_key()]),
        },
        UpstreamCache {
            url: file_url(&company),
            keys: Some(vec![ours.public_key()]),
        },
    ];
    // No general upstream key: only the tables' keys count, each for its own cache.
    let upstream = Upstream::new(caches.clone(), Vec::new());
    assert!(upstream.is_on());
    assert_eq!(upstream.serves(&a).await, Some(120));
    assert_eq!(upstream.serves(&b).await, None);
    // A plain entry takes the general keys, as before.
    let plain = Upstream::new(vec![file_url(&other).into()], vec![ours.public_key()]);
    assert_eq!(plain.serves(&b).await, Some(120));
    // Tied keys are not store-signature keys.
    assert!(!upstream.signed_by_upstream(&signed_info(&ours)));
}

#[test]
fn trust_is_the_same_only_with_the_same_caches_and_keys() {
    let key = SigningKey::generate("upstream-1").unwrap().public_key();
    let other = SigningKey::generate("upstream-2").unwrap().public_key();
    let url = UpstreamUrl::parse("https://cache.example.org").unwrap();
    let plain = || Upstream::new(vec![url.clone().into()], vec![key.clone()]);
    assert!(plain().same_trust(&plain()));
    assert!(Upstream::off().same_trust(&Upstream::off()));
    assert!(!plain().same_trust(&Upstream::off()));
    assert!(!plain().same_trust(&Upstream::new(
        vec![url.clone().into()],
        vec![other.clone()]
    )));
    let tied = Upstream::new(
        vec![UpstreamCache {
            url: url.clone(),
            keys: Some(vec![other]),
        }],
        vec![key.clone()],
    );
    assert!(!plain().same_trust(&tied));
}

#[tokio::test(start_paused = true)]
async fn a_path_found_upstream_is_believed_for_positive_for_at_most() {
    let key = SigningKey::generate("upstream-1").unwrap();
    let served = path("served");
    let dir = file_cache(&[(&served, narinfo_text(Some(&key), &served))], &[NAR]);
    let upstream = Upstream::new(vec![file_url(&dir).into()], vec![key.public_key()]);
    assert_eq!(upstream.serves(&served).await, Some(120));
    // The upstream collects it; the answer stands until POSITIVE_FOR has passed.
    std::fs::remove_file(dir.path().join(NAR)).unwrap();
    tokio::time::advance(POSITIVE_FOR - Duration::from_secs(1)).await;
    assert_eq!(upstream.serves(&served).await, Some(120));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(upstream.serves(&served).await, None);
    assert!(POSITIVE_FOR <= Duration::from_secs(3600));
}

#[test]
fn remembered_answers_stay_within_their_capacity() {
    let upstream = Upstream::off();
    for i in 0..=ANSWERS_CAPACITY {
        let of = StorePath::from_basename(&format!("{:0>32}-p{i}", "")).unwrap();
        upstream.remember(&of, Some(1));
    }
    assert!(lock(&upstream.answers).len() <= ANSWERS_CAPACITY);
}

/// An HTTP cache on 127.0.0.1 serving `objects` (GET and HEAD; anything else is a 404), and
/// the requests it got, as "METHOD /path".
fn http_cache(objects: HashMap<String, String>) -> (UpstreamUrl, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url =
        UpstreamUrl::parse(&format!("http://{}/cache", listener.local_addr().unwrap())).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let request = String::from_utf8_lossy(&request);
            let mut words = request.split_whitespace();
            let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            lock(&seen).push(format!("{method} {target}"));
            let body = target
                .strip_prefix("/cache/")
                .and_then(|name| objects.get(name));
            let response = match body {
                Some(body) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    body.len(),
                    if method == "HEAD" { "" } else { body }
                ),
                None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (url, log)
}

#[tokio::test]
async fn an_http_cache_serves_a_path_only_once_a_head_finds_its_nar() {
    let key = SigningKey::generate("upstream-1").unwrap();
    let (with_nar, without) = (
        path("with-nar"),
        StorePath::from_basename("0jm1vj6j3ixsz2x5s77jxchbljjfn6s6-without").unwrap(),
    );
    let objects = HashMap::from([
        (
            format!("{}.narinfo", with_nar.hash_part()),
            narinfo_at(Some(&key), &with_nar, "nar/with.nar.zst"),
        ),
        (
            format!("{}.narinfo", without.hash_part()),
            narinfo_at(Some(&key), &without, "nar/gone.nar.zst"),
        ),
        ("nar/with.nar.zst".to_owned(), "nar".to_owned()),
    ]);
    let (url, log) = http_cache(objects);
    let upstream = Upstream::new(vec![url.into()], vec![key.public_key()]);
    assert_eq!(upstream.serves(&with_nar).await, Some(120));
    assert_eq!(upstream.serves(&without).await, None);
    let requests = lock(&log).clone();
    assert!(
        requests.contains(&"HEAD /cache/nar/with.nar.zst".to_owned())
            && requests.contains(&"HEAD /cache/nar/gone.nar.zst".to_owned()),
        "{requests:?}"
    );
    // A missing NAR is an answer, not an outage.
    assert!(lock(&upstream.caches[0].down_until).is_none());
}

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

fn narinfo_text(key: Option<&SigningKey>, of: &StorePath) -> String {
    let mut narinfo = NarInfo {
        store_path: of.clone(),
        url: "nar/x.nar.zst".to_owned(),
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
    let caches = || vec![UpstreamUrl::File(dir.path().to_owned())];

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
    let upstream = Upstream::new(vec![url], vec![key.public_key()]);
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
    let upstream = Upstream::new(vec![url], vec![key.public_key()]);
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
    assert!(matches!(read_file(&file).await, Answer::TooLarge(at) if at.contains(".narinfo")));
}

#[tokio::test]
async fn a_cache_url_with_credentials_is_shown_and_reported_without_them() {
    let url = UpstreamUrl::parse("http://user:SECRETtoken@127.0.0.1:1/").unwrap();
    assert_eq!(url.to_string(), "http://user:***@127.0.0.1:1/");
    let UpstreamUrl::Http(base) = &url else {
        panic!("expected an http cache")
    };
    let upstream = Upstream::new(vec![url.clone()], Vec::new());
    match upstream.fetch(base, "x.narinfo").await {
        Answer::Unreachable(reason) => assert!(!reason.contains("SECRETtoken"), "{reason}"),
        _ => panic!("nothing listens on port 1"),
    }
    let error = UpstreamUrl::parse("gopher://user:SECRETtoken@host/").unwrap_err();
    assert!(!error.to_string().contains("SECRETtoken"), "{error}");
}

use super::*;

#[test]
fn listings_are_compressed_as_their_content_encoding_says() {
    let listing = br#"{"version":1,"root":{"type":"regular","size":0,"narOffset":96}}"#;
    let plain = encode_listing(listing, Compression::None).unwrap();
    assert_eq!(&plain[..], &listing[..]);
    let zstd = encode_listing(listing, Compression::Zstd).unwrap();
    assert_eq!(zstd::decode_all(&zstd[..]).unwrap(), listing);
    let xz = encode_listing(listing, Compression::Xz).unwrap();
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut liblzma::read::XzDecoder::new(&xz[..]), &mut decoded).unwrap();
    assert_eq!(decoded, listing);
}

#[test]
fn part_size_stays_at_base_for_ordinary_nars() {
    assert_eq!(part_size_for(100 << 20, 8 << 20), 8 << 20);
    assert_eq!(part_size_for(1, 8 << 20), 8 << 20);
}

#[test]
fn huge_nars_get_parts_large_enough_for_ten_thousand_parts() {
    let nar_size = 200u64 << 30;
    let part = part_size_for(nar_size, 8 << 20);
    assert!(
        compressed_bound(nar_size).div_ceil(part) <= MAX_PARTS,
        "{part}"
    );
    assert_eq!(part % (1 << 20), 0);
}
